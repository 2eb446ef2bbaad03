//! What happens after the responses, merged per org and written in batches.
//!
//! Settlements (latency debits, cost corrections) and call records are queued per org and date.
//! An org's queue goes to Redis as one settle script: within [`FLUSH_EVERY`] when it holds a
//! settlement (a debit counts against the org's limits, so it is never held long), once it holds
//! [`FLUSH_AT`] calls, when someone awaits it, and otherwise when its oldest call is one record
//! interval old ([`RedisStoreBuilder::record_interval`], 250 ms by default). A usage read through
//! this instance writes the org's queue first, so an instance always reads its own calls.
//!
//! Lease releases are never held back: each is sent at once, and those that arrive while one
//! `ZREM` is on its way go together in the next, one per org.
//!
//! Admissions are never deferred: only what follows a response is. A crash loses at most the
//! queued work: settlements of the last [`FLUSH_EVERY`], records of the last record interval
//! ([`RedisStore::flush`] writes everything first).
//!
//! [`RedisStore::flush`]: crate::RedisStore::flush
//! [`RedisStoreBuilder::record_interval`]: crate::RedisStoreBuilder::record_interval

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value;
use tokio::sync::{Notify, oneshot};
use tollhouse_core::usage::{DISPLAY_BYTES, MAX_ENDPOINTS, MAX_REPEATED, cut, entry_hash};
use tollhouse_core::{CallRecord, Outcome, StoreError};

use super::settle::{DAY_TTL_MS, Job, OTHER_ENDPOINT, REPORT_TTL_MS};
use super::{Inner, SCRIPTS};
use crate::codec;

/// How soon a queued settlement is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// An org with this many calls or settlements queued is written at once.
pub const FLUSH_AT: usize = 64;
/// How long a failed batch's warning keeps others quiet.
const WARN_EVERY_MS: u64 = 10_000;

/// One org's work for one date, merged as it arrives.
struct Batch {
    job: Job,
    calls: Vec<CallRecord>,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    opened: Instant,
}

impl Batch {
    /// Whether it is time to write it.
    fn due(&self, now: Instant, record_every: Duration) -> bool {
        !self.waiters.is_empty()
            || self.job.n_corrections > 0
            || self.calls.len() >= FLUSH_AT
            || now.duration_since(self.opened) >= record_every
    }
}

/// The queues of every org, and the leases to give back.
pub(super) struct Batcher {
    batches: Mutex<HashMap<(Arc<str>, i32), Batch>>,
    releases: Mutex<HashMap<Arc<str>, Vec<String>>>,
    record_every: Duration,
    /// A queue must be written now (it is full, or awaited).
    kick: Notify,
    /// A lease was released.
    freed: Notify,
    /// When a failed batch was last warned of (ms since the Unix epoch).
    warned_ms: AtomicU64,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("orgs", &self.batches.lock().len())
            .field("record_every", &self.record_every)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Queues that write calls every `record_every`.
    pub(super) fn new(record_every: Duration) -> Self {
        Self {
            batches: Mutex::default(),
            releases: Mutex::default(),
            record_every,
            kick: Notify::new(),
            freed: Notify::new(),
            warned_ms: AtomicU64::new(0),
        }
    }

    /// Queues `job`, merged into its org's batch for its date; `done` hears how the batch went.
    pub(super) fn push(&self, mut job: Job, done: Option<oneshot::Sender<Result<(), StoreError>>>) {
        let awaited = done.is_some();
        let mut batches = self.batches.lock();
        let batch = match batches.entry((Arc::clone(&job.set), job.day)) {
            Entry::Vacant(entry) => entry.insert(Batch {
                calls: job.call.take().into_iter().collect(),
                job,
                waiters: Vec::new(),
                opened: Instant::now(),
            }),
            Entry::Occupied(entry) => {
                let batch = entry.into_mut();
                batch.job.at = batch.job.at.max(job.at);
                batch.job.counters.append(&mut job.counters);
                batch.job.corrections.append(&mut job.corrections);
                batch.job.n_corrections += job.n_corrections;
                batch.calls.extend(job.call);
                batch
            }
        };
        batch.waiters.extend(done);
        if awaited || batch.calls.len() + batch.job.n_corrections >= FLUSH_AT {
            self.kick.notify_one();
        }
    }

    /// Queues the release of `member` from the lease set `set`.
    pub(super) fn release(&self, set: Arc<str>, member: String) {
        self.releases.lock().entry(set).or_default().push(member);
        self.freed.notify_one();
    }

    /// Whether nothing waits to be written.
    pub(super) fn is_empty(&self) -> bool {
        self.batches.lock().is_empty() && self.releases.lock().is_empty()
    }
}

impl Inner {
    /// Writes everything queued now: every org's batch and releases, all at once.
    pub(super) async fn flush(&self) {
        // Grants first: giving them back queues the releases of their idle slots.
        self.sweep_grants(true).await;
        futures_util::future::join(self.write_batches(), self.give_back_released()).await;
    }

    /// Writes every org's batch, all at once.
    async fn write_batches(&self) {
        self.write_where(|_, _| true).await;
    }

    /// Writes the batches whose time has come, all at once.
    async fn write_due(&self) {
        let now = Instant::now();
        let record_every = self.batcher.record_every;
        self.write_where(|_, batch| batch.due(now, record_every))
            .await;
    }

    /// Writes what the org whose lease set is `set` has queued (before a read of its usage).
    pub(super) async fn write_org(&self, set: &str) {
        self.write_where(|(of, _), _| &**of == set).await;
    }

    /// Takes the batches `chosen` picks out of the queue and writes them, all at once.
    async fn write_where(&self, mut chosen: impl FnMut(&(Arc<str>, i32), &Batch) -> bool) {
        let batches: Vec<Batch> = self
            .batcher
            .batches
            .lock()
            .extract_if(|key, batch| chosen(key, batch))
            .map(|(_, batch)| batch)
            .collect();
        self.write_all(batches).await;
    }

    async fn write_all(&self, batches: Vec<Batch>) {
        if !batches.is_empty() {
            futures_util::future::join_all(batches.into_iter().map(|batch| self.write(batch)))
                .await;
        }
    }

    /// Removes every released lease from its set, one command per org, all at once.
    async fn give_back_released(&self) {
        let releases = std::mem::take(&mut *self.batcher.releases.lock());
        futures_util::future::join_all(
            releases
                .into_iter()
                .map(|(set, members)| self.give_back(set, members)),
        )
        .await;
    }

    /// One org's batch as one settle script; its waiters hear how it went.
    async fn write(&self, batch: Batch) {
        let Batch {
            job,
            calls,
            waiters,
            ..
        } = batch;
        let mut invocation = SCRIPTS.settle.prepare_invoke();
        for key in job.fixed.iter().chain(&job.counters) {
            invocation.key(key);
        }
        invocation
            .arg(job.at)
            // Index entries are scored by when their counter may go: drop those past it.
            .arg(0)
            .arg(job.n_corrections);
        for arg in &job.corrections {
            invocation.arg(arg);
        }
        if !calls.is_empty() {
            self.record_args(&mut invocation, job.day, &calls);
        }
        let mut conn = self.conn.clone();
        let result = self
            .run(invocation.invoke_async::<Value>(&mut conn))
            .await
            .map(drop);
        if let Err(error) = &result {
            self.batch_failed(error, calls.len(), job.n_corrections);
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone_error());
        }
    }

    /// Counts a batch that could not be written, and warns of it (once in a while: a Redis that is
    /// down fails every batch).
    fn batch_failed(&self, error: &StoreError, calls: usize, settlements: usize) {
        metrics::counter!("tollhouse_store_errors_total").increment(1);
        let now_ms = u64::try_from(super::late::wall_ms()).unwrap_or(0);
        let last = self.batcher.warned_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .batcher
                .warned_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = error as &dyn std::error::Error,
                calls,
                settlements,
                "tollhouse: a batch of call records and settlements could not be written to Redis; \
                 they are lost (further failures are counted in tollhouse_store_errors_total)"
            );
        }
    }

    /// The record part of the settle script's arguments: `calls`, merged.
    fn record_args(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        day: i32,
        calls: &[CallRecord],
    ) {
        let billable = calls.iter().filter(|call| call.billable).count();
        let admitted = calls
            .iter()
            .filter(|call| call.outcome == Outcome::Admitted)
            .count();
        invocation
            .arg(day)
            .arg(self.calls_kept)
            .arg(DAY_TTL_MS)
            .arg(DAY_TTL_MS)
            .arg(REPORT_TTL_MS)
            .arg(billable)
            .arg(admitted)
            .arg(MAX_ENDPOINTS)
            .arg(MAX_REPEATED)
            .arg(OTHER_ENDPOINT);
        // Only the newest entries the log keeps: a batch of any size is one bounded push.
        let logged: Vec<&CallRecord> = calls.iter().filter(|call| call.logged).collect();
        let newest = logged.len().saturating_sub(self.calls_kept);
        let logged: Vec<String> = logged[newest..]
            .iter()
            .map(|call| codec::encode(call))
            .collect();
        invocation.arg(logged.len());
        for entry in &logged {
            invocation.arg(entry);
        }
        // Each endpoint once, with its calls and points summed.
        let mut endpoints: Vec<(String, u64, u64)> = Vec::new();
        for call in calls {
            let route = call.route.as_deref().unwrap_or(&call.path);
            let field = format!("{}\n{}", call.method, cut(route, DISPLAY_BYTES));
            let points = if call.outcome == Outcome::Admitted {
                call.cost
            } else {
                0
            };
            match endpoints.iter_mut().find(|(known, ..)| *known == field) {
                Some((_, count, sum)) => {
                    *count += 1;
                    *sum += points;
                }
                None => endpoints.push((field, 1, points)),
            }
        }
        invocation.arg(endpoints.len());
        for (field, count, points) in &endpoints {
            invocation.arg(field).arg(count).arg(points);
        }
        // Each identical request once, with its count and first and last instants.
        let mut repeated: Vec<(u64, u64, i64, i64, &CallRecord)> = Vec::new();
        for call in calls {
            let hash = entry_hash(&call.method, &call.path);
            let at = call.at.as_millis();
            match repeated.iter_mut().find(|(known, ..)| *known == hash) {
                Some((_, count, first, last, _)) => {
                    *count += 1;
                    *first = (*first).min(at);
                    *last = (*last).max(at);
                }
                None => repeated.push((hash, 1, at, at, call)),
            }
        }
        invocation.arg(repeated.len());
        for (hash, count, first, last, call) in &repeated {
            invocation
                .arg(format!("{hash:016x}"))
                .arg(count)
                .arg(first)
                .arg(last)
                .arg(format!(
                    "{}\n{}",
                    call.method,
                    cut(&call.path, DISPLAY_BYTES)
                ));
        }
    }

    /// Removes `members` from the lease set `set` in one command, then wakes the first request of
    /// the org waiting here for a slot.
    async fn give_back(&self, set: Arc<str>, members: Vec<String>) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&*set).arg(&members);
        // If it fails, the leases expire on their own (they are no longer renewed).
        let _ = self.run(cmd.query_async::<Value>(&mut conn)).await;
        self.lines.slot_freed(&set);
    }
}

/// A result whose error can be handed to several waiters.
trait CloneError {
    fn clone_error(&self) -> Self;
}

impl CloneError for Result<(), StoreError> {
    fn clone_error(&self) -> Self {
        match self {
            Ok(()) => Ok(()),
            Err(StoreError::Timeout(after)) => Err(StoreError::Timeout(*after)),
            Err(error) => Err(StoreError::Protocol(error.to_string())),
        }
    }
}

/// Writes `inner`'s batches when they are due (looking every [`FLUSH_EVERY`], and at once when
/// one is full or awaited), until the store is dropped.
pub(super) async fn write_behind(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _ = tokio::time::timeout(FLUSH_EVERY, inner.batcher.kick.notified()).await;
        if !inner.batcher.batches.lock().is_empty() {
            inner.write_due().await;
        }
    }
}

/// Gives back `inner`'s released leases as soon as they are released, until the store is
/// dropped.
pub(super) async fn give_back_freed(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.batcher.freed.notified().await;
        inner.give_back_released().await;
    }
}
