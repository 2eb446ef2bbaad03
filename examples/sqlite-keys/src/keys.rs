//! Orgs and API keys in SQLite, and the bounded cache the layer looks keys up through.
//!
//! The database holds each key's SHA-256 digest, never the key. A lookup runs on Tokio's blocking
//! pool (rusqlite is synchronous); the cache keeps each answer, found or not, for its time to live,
//! and loads each key once however many requests ask for it at the same time.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use rusqlite::{Connection, OptionalExtension, params};
use tollhouse::tollhouse_core::parse_zone;
use tollhouse::{KeyDigest, Org, Policy, ResolvedOrg};

/// Why the database could not answer.
#[derive(Debug)]
pub(crate) enum LookupError {
    /// SQLite failed (the file is gone, locked, corrupt, or its tables are missing).
    Sqlite(rusqlite::Error),
    /// The blocking task running the query died.
    Task(tokio::task::JoinError),
    /// A row names a plan or zone the policy does not have.
    Policy(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::Sqlite(error) => write!(f, "sqlite: {error}"),
            LookupError::Task(error) => write!(f, "the lookup task failed: {error}"),
            LookupError::Policy(error) => write!(f, "the org does not fit the policy: {error}"),
        }
    }
}

impl std::error::Error for LookupError {}

impl From<rusqlite::Error> for LookupError {
    fn from(error: rusqlite::Error) -> Self {
        LookupError::Sqlite(error)
    }
}

/// The SQLite file of orgs and keys.
#[derive(Clone, Debug)]
pub(crate) struct KeyDatabase {
    connection: Arc<Mutex<Connection>>,
}

/// An org's row.
struct OrgRow {
    id: String,
    plan: String,
    time_zone: String,
}

impl KeyDatabase {
    /// Opens (or creates) the file, in WAL mode so that several processes can share it.
    pub(crate) fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(2))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS orgs (
                 id        TEXT PRIMARY KEY,
                 plan      TEXT NOT NULL,
                 time_zone TEXT NOT NULL DEFAULT 'UTC'
             );
             CREATE TABLE IF NOT EXISTS api_keys (
                 digest     BLOB PRIMARY KEY,
                 org        TEXT NOT NULL REFERENCES orgs(id),
                 created_at INTEGER NOT NULL,
                 revoked_at INTEGER
             );",
        )?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `query` on the connection, on the blocking pool.
    async fn run<T, F>(&self, query: F) -> Result<T, LookupError>
    where
        F: FnOnce(&Connection) -> Result<T, LookupError> + Send + 'static,
        T: Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            // A panic in another query poisons the lock, not the connection.
            let connection = connection
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            query(&connection)
        })
        .await
        .map_err(LookupError::Task)?
    }

    /// Adds (or replaces) an org.
    pub(crate) async fn create_org(
        &self,
        id: String,
        plan: String,
        time_zone: String,
    ) -> Result<(), LookupError> {
        self.run(move |connection| {
            connection.execute(
                "INSERT OR REPLACE INTO orgs (id, plan, time_zone) VALUES (?1, ?2, ?3)",
                params![id, plan, time_zone],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes a new key for `org`; `None` if there is no such org.
    pub(crate) async fn create_key(&self, org: String) -> Result<Option<String>, LookupError> {
        let key = new_key();
        let digest = KeyDigest::of(&key);
        self.run(move |connection| {
            let exists: Option<i64> = connection
                .query_row("SELECT 1 FROM orgs WHERE id = ?1", [&org], |row| row.get(0))
                .optional()?;
            if exists.is_none() {
                return Ok(None);
            }
            connection.execute(
                "INSERT INTO api_keys (digest, org, created_at) VALUES (?1, ?2, ?3)",
                params![digest.as_bytes().as_slice(), org, unix_now()],
            )?;
            Ok(Some(key))
        })
        .await
    }

    /// Revokes `key`; `false` if it was not a live key.
    async fn revoke(&self, digest: KeyDigest) -> Result<bool, LookupError> {
        self.run(move |connection| {
            let changed = connection.execute(
                "UPDATE api_keys SET revoked_at = ?1 WHERE digest = ?2 AND revoked_at IS NULL",
                params![unix_now(), digest.as_bytes().as_slice()],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// The org of a live key, if any.
    async fn org_of(&self, digest: KeyDigest) -> Result<Option<OrgRow>, LookupError> {
        self.run(move |connection| {
            let row = connection
                .query_row(
                    "SELECT orgs.id, orgs.plan, orgs.time_zone
                       FROM api_keys JOIN orgs ON orgs.id = api_keys.org
                      WHERE api_keys.digest = ?1 AND api_keys.revoked_at IS NULL",
                    [digest.as_bytes().as_slice()],
                    |row| {
                        Ok(OrgRow {
                            id: row.get(0)?,
                            plan: row.get(1)?,
                            time_zone: row.get(2)?,
                        })
                    },
                )
                .optional()?;
            Ok(row)
        })
        .await
    }
}

/// Keys looked up through a bounded cache with a time to live.
#[derive(Clone)]
pub(crate) struct KeyCache {
    database: KeyDatabase,
    /// A key's org, or `None` for a key that is unknown or revoked: both are kept for the TTL, so
    /// a client retrying a bad key does not reach the database on every request.
    orgs: Cache<KeyDigest, Option<Arc<ResolvedOrg>>>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("entries", &self.orgs.entry_count())
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache over `database`, of at most `capacity` keys, each trusted for `ttl`.
    pub(crate) fn new(database: KeyDatabase, ttl: Duration, capacity: u64) -> Self {
        Self {
            database,
            orgs: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The database behind the cache.
    pub(crate) fn database(&self) -> &KeyDatabase {
        &self.database
    }

    /// The org of `key` under `policy`: from the cache, else from the database (once, however
    /// many requests wait for it). An error is not cached: the next request asks again.
    pub(crate) async fn org_of(
        &self,
        key: &str,
        policy: &Policy,
    ) -> Result<Option<Arc<ResolvedOrg>>, Arc<LookupError>> {
        let digest = KeyDigest::of(key);
        self.orgs
            .try_get_with(digest, async move {
                let Some(row) = self.database.org_of(digest).await? else {
                    return Ok(None);
                };
                resolve(&row, policy).map(Some)
            })
            .await
    }

    /// Revokes `key` in the database and forgets it here at once; other instances sharing the
    /// database stop accepting it when their cached answer expires.
    pub(crate) async fn revoke(&self, key: &str) -> Result<bool, LookupError> {
        let digest = KeyDigest::of(key);
        let revoked = self.database.revoke(digest).await?;
        self.orgs.invalidate(&digest).await;
        Ok(revoked)
    }
}

/// An org's row, resolved against the policy's plans once, when it is cached.
fn resolve(row: &OrgRow, policy: &Policy) -> Result<Arc<ResolvedOrg>, LookupError> {
    let zone =
        parse_zone(&row.time_zone).map_err(|error| LookupError::Policy(error.to_string()))?;
    let org = Org::new(row.id.as_str(), row.plan.as_str()).with_time_zone(zone);
    policy
        .resolve(&org)
        .map(Arc::new)
        .map_err(|error| LookupError::Policy(error.to_string()))
}

/// A new API key: `sk_` and 48 hex digits of the operating system's randomness.
fn new_key() -> String {
    let mut bytes = [0u8; 24];
    if let Err(error) = getrandom::fill(&mut bytes) {
        // Without randomness no key is safe to hand out: stop rather than make a guessable one.
        panic!("sqlite-keys: the operating system gave no randomness: {error}");
    }
    let mut key = String::from("sk_");
    for byte in bytes {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// Whether two secrets are equal, compared by their digests (no early exit on the secret's
/// bytes).
pub(crate) fn same_secret(given: &str, expected: &str) -> bool {
    KeyDigest::of(given) == KeyDigest::of(expected)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}
