//! Enrolment tokens ([`EnrolStore`]): the bootstrap tokens `aq region token` makes, kept only
//! as a hash with their region, expiry and uses left, and taken one use at a time, atomically,
//! when a spoke enrols. Its SQL (both engines) is here too (one
//! conditional UPDATE takes a use, so two spokes racing for the last use cannot both win).

use super::StoreError;
use super::meta::SqlStore;
use super::sql::args;

/// A token as the hub keeps it: its hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's hash (hex), as [`crate::enrol`] makes it.
    pub hash: String,
    pub region: String,
    pub expires_unix_ms: i64,
    /// Uses it was made with.
    pub uses: u32,
    pub created_unix_ms: i64,
}

/// What taking a use of a token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenUse {
    /// One use was taken: enrol a node of this region.
    Taken { region: String, uses_left: u32 },
    /// No token has this hash.
    Unknown,
    /// The token expired at this time (unix ms).
    Expired { region: String, expired_unix_ms: i64 },
    /// Every use of the token was taken.
    UsedUp { region: String, uses: u32 },
    /// The token's region was removed since it was made.
    RegionGone { region: String },
}

/// The enrolment tokens of a hub's database.
pub trait EnrolStore {
    fn add_enrol_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// Takes one use of the token whose hash is `hash`, if it has one left, has not expired at
    /// `now_unix_ms` and its region still exists; says what it found either way.
    fn take_enrol_token(&self, hash: &str, now_unix_ms: i64) -> Result<TokenUse, StoreError>;
}

impl EnrolStore for SqlStore {
    fn add_enrol_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.db.write(|tx| {
            let exists: bool =
                tx.query_one("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", args![&token.region])?.get(0)?;
            if !exists {
                return Err(StoreError::NotFound { kind: "region", name: token.region.clone() });
            }
            tx.execute(
                "INSERT INTO enrol_tokens (hash, region, expires_ms, uses, uses_left, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                args![&token.hash, &token.region, token.expires_unix_ms, token.uses, token.created_unix_ms],
            )?;
            Ok(())
        })
    }

    fn take_enrol_token(&self, hash: &str, now_unix_ms: i64) -> Result<TokenUse, StoreError> {
        self.db.write(|tx| {
            let Some(found) =
                tx.query_opt("SELECT region, expires_ms, uses FROM enrol_tokens WHERE hash = ?1", args![hash])?
            else {
                return Ok(TokenUse::Unknown);
            };
            let (region, expires, uses): (String, i64, u32) = (found.get(0)?, found.get(1)?, found.get(2)?);
            if expires <= now_unix_ms {
                return Ok(TokenUse::Expired { region, expired_unix_ms: expires });
            }
            let exists: bool =
                tx.query_one("SELECT EXISTS(SELECT 1 FROM regions WHERE name = ?1)", args![&region])?.get(0)?;
            if !exists {
                return Ok(TokenUse::RegionGone { region });
            }
            let taken = tx.execute(
                "UPDATE enrol_tokens SET uses_left = uses_left - 1 WHERE hash = ?1 AND uses_left > 0 AND expires_ms > ?2",
                args![hash, now_unix_ms],
            )?;
            if taken == 0 {
                return Ok(TokenUse::UsedUp { region, uses });
            }
            let uses_left: u32 =
                tx.query_one("SELECT uses_left FROM enrol_tokens WHERE hash = ?1", args![hash])?.get(0)?;
            Ok(TokenUse::Taken { region, uses_left })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::on_both_engines;
    use crate::store::{MetaStore, RegionRecord};

    fn store() -> SqlStore {
        let db = crate::store::tests::fresh_store();
        db.add_region(&RegionRecord { name: "eu".into(), rate: 1, created_unix_ms: 0, schedule: None }).unwrap();
        db
    }

    fn token(hash: &str, uses: u32, expires: i64) -> TokenRecord {
        TokenRecord { hash: hash.into(), region: "eu".into(), expires_unix_ms: expires, uses, created_unix_ms: 0 }
    }

    on_both_engines! {
        fn a_token_is_taken_as_many_times_as_it_has_uses_and_not_after_it_expires() {
            let db = store();
            db.add_enrol_token(&token("a", 2, 1000)).unwrap();
            let taken = |left| TokenUse::Taken { region: "eu".into(), uses_left: left };
            assert_eq!(db.take_enrol_token("a", 10).unwrap(), taken(1));
            assert_eq!(db.take_enrol_token("a", 10).unwrap(), taken(0));
            assert_eq!(db.take_enrol_token("a", 10).unwrap(), TokenUse::UsedUp { region: "eu".into(), uses: 2 });
            assert_eq!(db.take_enrol_token("b", 10).unwrap(), TokenUse::Unknown);
            db.add_enrol_token(&token("c", 5, 1000)).unwrap();
            assert_eq!(
                db.take_enrol_token("c", 1000).unwrap(),
                TokenUse::Expired { region: "eu".into(), expired_unix_ms: 1000 }
            );
            let err = db.add_enrol_token(&TokenRecord { region: "nowhere".into(), ..token("d", 1, 1000) }).unwrap_err();
            assert!(matches!(err, StoreError::NotFound { kind: "region", .. }), "{err}");
        }
    }

    on_both_engines! {
        fn a_token_of_a_removed_region_enrols_no_one() {
            use crate::store::LifecycleStore;
            let db = store();
            db.add_enrol_token(&token("a", 1, 1000)).unwrap();
            db.remove_region("eu", false).unwrap();
            assert_eq!(db.take_enrol_token("a", 10).unwrap(), TokenUse::RegionGone { region: "eu".into() });
        }
    }
}
