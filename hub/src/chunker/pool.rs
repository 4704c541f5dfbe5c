//! The threads that scan and hash for [`Chunker::chunk_on`]: two queues (scans before hashes),
//! a task that panics is dropped and reported by its reply, never the end of its worker.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, never, select, unbounded};
use tracing::warn;

#[cfg(doc)]
use super::Chunker;

/// A pool of threads that scan and hash for [`Chunker::chunk_on`]. A snapshot shares one
/// among all the files it reads at once, so that every core is busy however many files there
/// are (one huge file included) and the machine is not oversubscribed: the threads calling
/// `chunk_on` only read and walk; the heavy work runs here, on as many threads as cores.
/// Scans come before hashes (the walk waits for scans). Dropping the pool joins its threads.
pub struct HashPool {
    urgent: Option<Sender<Task>>,
    normal: Option<Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

pub(super) type Task = Box<dyn FnOnce() + Send>;

impl HashPool {
    /// A pool of `workers` threads. With 0 (or if no thread can be started), tasks run on the
    /// thread that submits them.
    pub fn new(workers: usize) -> Self {
        let (urgent, urgent_rx) = unbounded::<Task>();
        let (normal, normal_rx) = unbounded::<Task>();
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (urgent_rx, normal_rx) = (urgent_rx.clone(), normal_rx.clone());
            match std::thread::Builder::new().name(format!("aq-hash-{i}")).spawn(move || work(urgent_rx, normal_rx)) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    warn!(error = %e, started = threads.len(), wanted = workers, "could not start a hashing thread");
                    break;
                }
            }
        }
        Self { urgent: Some(urgent), normal: Some(normal), threads }
    }

    /// A pool of one worker per core.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The number of threads (0: tasks run on the submitting thread).
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    pub(super) fn submit(&self, urgent: bool, task: Task) {
        let queue = if urgent { &self.urgent } else { &self.normal };
        match queue {
            Some(queue) if !self.threads.is_empty() => {
                if let Err(e) = queue.send(task) {
                    run(e.into_inner());
                }
            }
            _ => run(task),
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.urgent.take();
        self.normal.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Runs a task; if it panics, it is dropped (its reply then says so), on a worker as on the
/// submitting thread of a pool of no workers.
fn run(task: Task) {
    drop(std::panic::catch_unwind(AssertUnwindSafe(task)));
}

/// A worker: urgent tasks first, until both queues are closed. A task that panics is dropped
/// (its reply then says so), and the worker goes on.
fn work(urgent: Receiver<Task>, normal: Receiver<Task>) {
    let closed = never();
    let (mut urgent_open, mut normal_open) = (true, true);
    while urgent_open || normal_open {
        if let Ok(task) = urgent.try_recv() {
            run(task);
            continue;
        }
        select! {
            recv(if urgent_open { &urgent } else { &closed }) -> task => match task {
                Ok(task) => run(task),
                Err(_) => urgent_open = false,
            },
            recv(if normal_open { &normal } else { &closed }) -> task => match task {
                Ok(task) => run(task),
                Err(_) => normal_open = false,
            },
        }
    }
}
