//! [`DurableStore`]: the memory store's speed, with its state written behind to SQLite in a state
//! directory, so a restart keeps the books.
//!
//! Admission stays in memory: a [`MemoryStore`] decides every request. Every change marks its org,
//! and a background thread writes the marked orgs' state, merged per org, in one transaction every
//! flush interval (500 ms by default): the counts of every window still open, the billable calls
//! of the last 31 days, the call log and the report's counts. On start the store reads them back,
//! and each org's state is put in place before its first request; windows that ended while the
//! process was down start fresh. Requests in flight are not kept (they died with the process).
//!
//! - **A graceful stop** ([`DurableStore::close`], or [`shutdown`](DurableStore::shutdown) in async
//!   code) writes everything first. **A crash** (SIGKILL, power loss) loses at most the last flush
//!   interval of changes, and never leaves a file that will not open (SQLite in WAL mode).
//! - **One process per state directory**: a second one is refused with a message naming the
//!   directory and the process that holds it.
//! - **The schema carries a version** (`PRAGMA user_version`): a file of a later schema, or a
//!   damaged one, is refused with its path and what to do.
//! - **Bounded**: windows that ended and billing past 31 days are pruned; an org silent for 32
//!   days leaves nothing. What one org takes in the file is bounded as its memory is (targets cut
//!   to 256 bytes, report rows capped): see [`FILE_BYTES_PER_ORG`].
//!
//! The database (`tollhouse.sqlite3` in the state directory) can be read with `sqlite3` while the
//! service runs: `SELECT org, date, billable FROM billing ORDER BY date`.
//!
//! # Example
//!
//! ```no_run
//! use tollhouse_core::durable::DurableStore;
//!
//! let store = DurableStore::builder().open("policy.state".as_ref())?;
//! // ... serve with it; then, on SIGTERM:
//! store.close()?;
//! # Ok::<(), tollhouse_core::durable::DurableError>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::StoreError;
use crate::ledger::Charge;
use crate::memory::{MemoryStore, SavedOrg};
use crate::org::OrgId;
use crate::policy::ResolvedOrg;
use crate::status::LimitStatus;
use crate::store::{Decision, OrgUsage, Settlement, Store, UsageView};
use crate::time::{Clock, SystemClock, Timestamp};
use crate::usage::CallRecord;

mod codec;
mod file;
mod rows;

use file::StateDir;
use rows::Loaded;

/// How often changes are written by default: a crash loses at most this much.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// The most bytes one org's state takes in the database with the default call log, whatever it
/// sends: its counters, its call log, a day's report and 31 days of billing. Tested with byte
/// counts.
pub const FILE_BYTES_PER_ORG: u64 = 256 * 1024;

/// Why a state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The directory or its lock file cannot be created or written.
    #[error("cannot use the state directory {}: {source}; check that it can be created and written", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error(
        "the state directory {} is in use by another tollhouse ({holder}); stop that one, or give this one a state directory of its own",
        path.display()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// What the holder wrote in the lock file.
        holder: String,
    },
    /// The database cannot be opened or read: damaged, truncated, or not a tollhouse file.
    #[error(
        "the state file {} cannot be read ({source}); it is damaged or not a tollhouse state file: move it away to start with empty state, or restore it from a backup",
        path.display()
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a later version of tollhouse.
    #[error(
        "the state file {} has schema version {version}, newer than this tollhouse reads ({}); run the newer tollhouse, or move the file away",
        path.display(),
        file::SCHEMA_VERSION
    )]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        version: i64,
    },
}

/// Settings of a [`DurableStore`].
#[derive(Clone, Debug)]
pub struct DurableStoreBuilder {
    flush_interval: Duration,
    calls_kept: usize,
    clock: Arc<dyn Clock>,
}

impl Default for DurableStoreBuilder {
    fn default() -> Self {
        Self {
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            calls_kept: 100,
            clock: Arc::new(SystemClock),
        }
    }
}

impl DurableStoreBuilder {
    /// How often changes are written (at most a second, at least a millisecond): a crash loses
    /// at most this much.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every.clamp(Duration::from_millis(1), Duration::from_secs(1));
        self
    }

    /// The last calls kept per org (the policy's `calls_kept`).
    pub fn calls_kept(mut self, calls_kept: usize) -> Self {
        self.calls_kept = calls_kept;
        self
    }

    /// The clock that decides which windows have ended (the layer's, in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Opens the state directory `dir` (created if missing) and reads its state back.
    pub fn open(self, dir: &Path) -> Result<DurableStore, DurableError> {
        let state = StateDir::lock(dir)?;
        let mut connection = state.open()?;
        let database = state.path.join(file::DATABASE);
        let loaded =
            rows::read(&connection, self.clock.now()).map_err(|source| DurableError::Damaged {
                path: database.clone(),
                source,
            })?;
        let memory = Arc::new(MemoryStore::written_behind(self.calls_kept));
        let (stop, stopped) = mpsc::channel();
        let writer = {
            let (memory, clock) = (Arc::clone(&memory), Arc::clone(&self.clock));
            let every = self.flush_interval;
            std::thread::Builder::new()
                .name("tollhouse-durable".to_owned())
                .spawn(move || write_behind(&mut connection, &memory, &*clock, every, &stopped))
                .map_err(|source| DurableError::Io {
                    path: database.clone(),
                    source,
                })?
        };
        Ok(DurableStore {
            memory,
            pending_count: AtomicUsize::new(loaded.len()),
            pending: Mutex::new(loaded),
            writer: Mutex::new(Some((stop, writer))),
            database,
            _state: state,
        })
    }
}

/// The writer thread, and how to tell it to stop.
type Writer = (mpsc::Sender<()>, JoinHandle<rusqlite::Result<()>>);

/// The memory store, written behind to SQLite: see the [module documentation](self).
#[derive(Debug)]
pub struct DurableStore {
    memory: Arc<MemoryStore>,
    /// State read on start, put in place before each org's first request.
    pending: Mutex<HashMap<OrgId, Loaded>>,
    pending_count: AtomicUsize,
    /// The writer thread, and how to tell it to stop.
    writer: Mutex<Option<Writer>>,
    database: PathBuf,
    _state: StateDir,
}

impl DurableStore {
    /// The settings, to change before [`open`](DurableStoreBuilder::open).
    pub fn builder() -> DurableStoreBuilder {
        DurableStoreBuilder::default()
    }

    /// The database file.
    pub fn database(&self) -> &Path {
        &self.database
    }

    /// Writes everything and stops writing: the store keeps serving from memory, but changes from
    /// now on are not kept. What a graceful stop calls; blocking (see
    /// [`shutdown`](Self::shutdown)).
    pub fn close(&self) -> Result<(), DurableError> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((stop, writer)) = writer else {
            return Ok(());
        };
        let _ = stop.send(());
        let damaged = |source| DurableError::Damaged {
            path: self.database.clone(),
            source,
        };
        match writer.join() {
            Ok(result) => result.map_err(damaged),
            Err(_) => Err(damaged(rusqlite::Error::InvalidQuery)),
        }
    }

    /// [`close`](Self::close), off the async runtime's threads.
    pub async fn shutdown(self: &Arc<Self>) -> Result<(), DurableError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap_or(Ok(()))
    }

    /// Puts `org`'s saved state in place before its first request after a start.
    fn ready(&self, org: &Arc<ResolvedOrg>) {
        if self.pending_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let loaded = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(org.id());
        if let Some(loaded) = loaded {
            self.memory.restore(org, &loaded.tiers, loaded.usage);
            self.pending_count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!(%error, "tollhouse: the last changes could not be written");
        }
    }
}

/// The writer thread: every `every`, the changed orgs in one transaction; a last time when told
/// to stop. A write that fails is kept, merged with the next changes, and tried again.
fn write_behind(
    connection: &mut rusqlite::Connection,
    memory: &MemoryStore,
    clock: &dyn Clock,
    every: Duration,
    stop: &mpsc::Receiver<()>,
) -> rusqlite::Result<()> {
    let mut backlog: Vec<SavedOrg> = Vec::new();
    loop {
        let last = !matches!(
            stop.recv_timeout(every),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        let now = clock.now();
        merge(&mut backlog, memory.drain_dirty(now));
        match rows::write(connection, &backlog, now) {
            Ok(()) => backlog.clear(),
            Err(error) if last => return Err(error),
            Err(error) => {
                tracing::warn!(%error, orgs = backlog.len(), "tollhouse: writing the state failed; trying again");
            }
        }
        if last {
            return Ok(());
        }
    }
}

/// `newer` on top of `backlog`: an org's later state replaces its earlier one, part by part.
fn merge(backlog: &mut Vec<SavedOrg>, newer: Vec<SavedOrg>) {
    for saved in newer {
        match backlog.iter_mut().find(|earlier| earlier.org == saved.org) {
            Some(earlier) => {
                if saved.tiers.is_some() {
                    earlier.tiers = saved.tiers;
                }
                if saved.usage.is_some() {
                    earlier.usage = saved.usage;
                }
            }
            None => backlog.push(saved),
        }
    }
}

impl Store for DurableStore {
    fn admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        self.ready(org);
        Store::admit(&*self.memory, org, charge, now)
    }

    fn settle(
        &self,
        org: &Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.ready(org);
        Store::settle(&*self.memory, org, settlement)
    }

    fn record(
        &self,
        org: &Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.ready(org);
        Store::record(&*self.memory, org, call)
    }

    fn peek(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<LimitStatus>, StoreError>> + Send {
        self.ready(org);
        Store::peek(&*self.memory, org, now)
    }

    fn reset(
        &self,
        org: &Arc<ResolvedOrg>,
        limit: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.ready(org);
        Store::reset(&*self.memory, org, limit)
    }

    fn usage(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        self.ready(org);
        Store::usage(&*self.memory, org, now, days)
    }

    fn usage_view(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        view: UsageView,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        self.ready(org);
        Store::usage_view(&*self.memory, org, now, view)
    }

    async fn admit_waiting(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        clock: &dyn Clock,
    ) -> Result<Decision, StoreError> {
        self.ready(org);
        Store::admit_waiting(&*self.memory, org, charge, clock).await
    }

    fn try_admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        self.ready(org);
        Store::try_admit(&*self.memory, org, charge, now)
    }

    fn try_settle(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) -> Option<Settlement> {
        self.ready(org);
        Store::try_settle(&*self.memory, org, settlement)
    }

    fn try_record(&self, org: &Arc<ResolvedOrg>, call: CallRecord) -> Option<CallRecord> {
        self.ready(org);
        Store::try_record(&*self.memory, org, call)
    }
}
