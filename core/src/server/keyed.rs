//! Per-key work limits: each key (a region at the hub, a peer at a spoke) takes turns under
//! its own semaphore, so that one key's callers cannot make a server hold more than its share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per key (a region, a peer), at most `per_key` holders at once; a holder past it waits up to
/// `wait` for a turn, in order of arrival, and is refused after that.
pub struct KeyedLimit {
    per_key: usize,
    wait: Duration,
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A key had no turn free within the wait.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key} already has {held} at once, the most allowed; none ended within {waited:?}")]
pub struct Busy {
    pub key: String,
    pub held: usize,
    pub waited: Duration,
}

impl KeyedLimit {
    pub fn new(per_key: usize, wait: Duration) -> Self {
        Self { per_key: per_key.max(1), wait, keys: Mutex::default() }
    }

    pub fn per_key(&self) -> usize {
        self.per_key
    }

    fn semaphore(&self, key: &str) -> Arc<Semaphore> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = keys.get(key) {
            return s.clone();
        }
        // Keys nobody holds or waits for are forgotten as new ones come.
        keys.retain(|_, s| Arc::strong_count(s) > 1);
        keys.entry(key.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_key))).clone()
    }

    /// Takes `n` of `key`'s turns (at most all of them), waiting up to the limit's wait.
    pub async fn enter_many(&self, key: &str, n: usize) -> Result<OwnedSemaphorePermit, Busy> {
        let n = n.clamp(1, self.per_key).min(u32::MAX as usize) as u32;
        let semaphore = self.semaphore(key);
        match tokio::time::timeout(self.wait, semaphore.acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Busy { key: key.to_string(), held: self.per_key, waited: self.wait }),
        }
    }

    /// Takes `n` of `key`'s turns (at most all of them), waiting as long as it takes (or until
    /// the caller gives up: the future can be dropped).
    pub async fn wait_many(&self, key: &str, n: usize) -> OwnedSemaphorePermit {
        let n = n.clamp(1, self.per_key).min(u32::MAX as usize) as u32;
        let semaphore = self.semaphore(key);
        match semaphore.acquire_many_owned(n).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("a key's semaphore is never closed"),
        }
    }

    /// Takes one of `key`'s turns, waiting up to the limit's wait.
    pub async fn enter(&self, key: &str) -> Result<OwnedSemaphorePermit, Busy> {
        self.enter_many(key, 1).await
    }

    /// Turns of `key` taken now.
    pub fn held(&self, key: &str) -> usize {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key).map_or(0, |s| self.per_key - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_take_turns_apart_and_a_key_past_its_share_is_refused_after_the_wait() {
        let limit = KeyedLimit::new(2, Duration::from_millis(50));
        let first = limit.enter("eu").await.unwrap();
        let _second = limit.enter("eu").await.unwrap();
        assert_eq!(limit.held("eu"), 2);
        let busy = limit.enter("eu").await.unwrap_err();
        assert_eq!((busy.key.as_str(), busy.held), ("eu", 2));
        assert!(busy.to_string().contains("eu already has 2"), "{busy}");
        // Another key is not held up by eu.
        let _us = limit.enter("us").await.unwrap();
        // A turn given back is the next waiter's.
        let waiter = tokio::spawn(async move {
            let limit = limit;
            let got = limit.enter("eu").await.is_ok();
            (got, limit)
        });
        drop(first);
        let (got, limit) = waiter.await.unwrap();
        assert!(got);
        // Asking for more than a key has takes all of them, not forever.
        drop(_us);
        assert!(limit.enter_many("us", 10).await.is_ok());
    }

    #[tokio::test]
    async fn unused_keys_are_forgotten() {
        let limit = KeyedLimit::new(1, Duration::from_millis(10));
        for i in 0..100 {
            drop(limit.enter(&format!("k{i}")).await.unwrap());
        }
        let held = limit.enter("k-last").await.unwrap();
        assert!(limit.keys.lock().unwrap().len() <= 2, "keys nobody holds are pruned");
        drop(held);
    }
}
