//! [`RedisStore`]: the counts of every org in Redis, shared by every instance that uses it.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tollhouse_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollhouse_redis::ConnectError> {
//! let store = RedisStore::builder()
//!     .prefix("billing-api:")
//!     .timeout(Duration::from_millis(50))
//!     .connect("redis://127.0.0.1:6379/")
//!     .await?;
//! assert!(store.health().healthy);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, SystemTime};

use chrono::{Datelike, NaiveDate};
use parking_lot::Mutex;
use redis::{RedisResult, Script, Value};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tollhouse_core::ledger::decide;
use tollhouse_core::tier::LimitState;
use tollhouse_core::usage::local_date;
use tollhouse_core::{
    CallRecord, Charge, Clock, Decision, Dimension, LimitStatus, OrgId, OrgUsage, ResolvedOrg,
    Settlement, Snapshot, Store, StoreError, Timestamp, UsageView, Verdict, Window,
};

use crate::conn::Conn;
use crate::error::ConnectError;
use crate::health::{Health, HealthState};
use crate::keys::OrgKeys;

mod batch;
mod builder;
mod grants;
mod late;
mod lease;
mod reply;
mod settle;
mod usage;
mod waiting;

pub use batch::{FLUSH_AT, FLUSH_EVERY};
pub use builder::RedisStoreBuilder;
pub use grants::Grants;
use late::{AdmissionReply, Late, ServerClock, Unanswered, wall_ms};
use lease::PendingLease;
use reply::{array, int, protocol, text};
use settle::Job;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The counts of every org in Redis: exact across every instance that shares it.
///
/// Implements [`Store`] with the semantics of [`MemoryStore`](tollhouse_core::MemoryStore); see
/// [the crate documentation](crate) for keys, leases, clocks and failures. Clones share one
/// connection; the leases' renewal and the write-behind stop when the last clone is dropped
/// (what is queued then is written once more, in the background; [`flush`](Self::flush) before
/// exiting to be sure it is).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("calls_kept", &self.inner.calls_kept)
            .field("lease_ttl_ms", &self.inner.lease_ttl_ms)
            .field("health", &self.inner.health.snapshot())
            .finish_non_exhaustive()
    }
}

/// The store's background tasks: stopped when the last clone of the store is dropped, after one
/// last write of what is queued.
#[derive(Debug)]
struct Tasks {
    handles: Vec<AbortHandle>,
    inner: Weak<Inner>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
        if let Some(inner) = self.inner.upgrade()
            && (!inner.batcher.is_empty() || inner.grants.is_some())
        {
            let runtime = inner.runtime.clone();
            runtime.spawn(async move { inner.flush().await });
        }
    }
}

/// The scripts every store runs (static, so that an admission's call can outlive the store's
/// borrow: see [`late`]).
#[derive(Debug)]
struct Scripts {
    admit: Script,
    settle: Script,
    usage: Script,
    renew: Script,
    reset: Script,
    give_back: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    admit: Script::new(concat!(
        include_str!("gcra.lua"),
        include_str!("grants.lua"),
        include_str!("admit.lua")
    )),
    settle: Script::new(concat!(
        include_str!("gcra.lua"),
        include_str!("settle.lua")
    )),
    usage: Script::new(include_str!("usage.lua")),
    renew: Script::new(include_str!("renew.lua")),
    reset: Script::new(concat!(
        include_str!("grants.lua"),
        include_str!("reset.lua")
    )),
    give_back: Script::new(concat!(
        include_str!("grants.lua"),
        include_str!("give_back.lua")
    )),
});

/// The most Redis memory (as `MEMORY USAGE` counts it) one org's keys take with the default call
/// log of 100 calls, whatever the org sends: its counters and leases, its call log (targets cut
/// to 256 bytes), two days of report (each at most 128 endpoints and 256 repeated requests, with
/// short displays) and 31 days of billing. Tested against a real Redis.
pub const REDIS_BYTES_PER_ORG: u64 = 512 * 1024;

struct Inner {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    calls_kept: usize,
    lease_ttl_ms: i64,
    margin_ms: i64,
    /// The leases this instance holds: lease id -> the org's lease set.
    leases: Mutex<HashMap<u64, Arc<str>>>,
    instance: u64,
    next_lease: AtomicU64,
    /// Requests waiting for a concurrency slot, by org.
    lines: waiting::Lines,
    health: HealthState,
    /// How far Redis's clock is ahead of this instance's, for admission deadlines.
    server_clock: ServerClock,
    /// Settlements, records and releases waiting to be written.
    batcher: batch::Batcher,
    /// Quota grants, when they are on.
    grants: Option<grants::Book>,
    runtime: Handle,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder with the default settings.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connects with the default settings; see [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder().connect(url).await
    }

    /// Whether Redis answers, since when, and how many calls failed.
    pub fn health(&self) -> Health {
        self.inner.health.snapshot()
    }

    /// The start of every key.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Requests of `org` waiting for a concurrency slot on this instance (for tests and
    /// diagnostics).
    pub fn waiting(&self, org: &ResolvedOrg) -> usize {
        self.inner.lines.len_of(&self.inner.keys(org.id()).leases())
    }

    /// Leases this instance holds now (requests in flight through it).
    pub fn leases_held(&self) -> usize {
        self.inner.leases.lock().len()
    }

    /// Renews every lease this instance holds now (the background task does this every third of
    /// the lease time to live).
    pub async fn renew_leases(&self) -> Result<(), StoreError> {
        self.inner.renew_all().await
    }

    /// Writes every settlement, call record and lease release queued now, gives every quota grant
    /// back, and waits until Redis has them: call it when the process stops (after the server has finished its requests), so
    /// that the last [`FLUSH_EVERY`](crate::FLUSH_EVERY) of work is not lost.
    pub async fn flush(&self) {
        self.inner.flush().await;
    }
}

/// The counters of one org at one instant: a state per limit with its windows, and the counter
/// key of every tier in plan order.
struct Layout {
    states: Vec<LimitState>,
    keys: Vec<String>,
    /// Whether each limit is a rate (its one key holds an instant, not a count).
    rates: Vec<bool>,
}

impl Layout {
    fn new(org: &ResolvedOrg, keys: &OrgKeys, now: Timestamp) -> Self {
        let mut layout = Layout {
            states: Vec::with_capacity(org.limits().len()),
            keys: Vec::with_capacity(org.limits().len() * 2),
            rates: Vec::with_capacity(org.limits().len()),
        };
        for limit in org.limits() {
            let mut state = LimitState::fresh(limit.tiers().len());
            layout.rates.push(limit.is_rate());
            if let Some(rate) = limit.declared_rate() {
                layout.keys.push(keys.rate(limit.name(), rate));
                layout.states.push(state);
                continue;
            }
            for (tier, slot) in limit.tiers().iter().zip(state.tiers_mut()) {
                let bounds = tier.window().bounds(limit.zone(), now);
                slot.start = bounds.start;
                slot.end = bounds.end;
                layout
                    .keys
                    .push(keys.counter(limit.name(), tier.window(), bounds.start));
            }
            layout.states.push(state);
        }
        layout
    }

    /// Sets every tier's count, in plan order, and every rate's state: what it held at
    /// `server_us` on Redis's clock, moved to `now` on this instance's, so that the ledger decides
    /// on the same backlog the script saw.
    fn fill(
        &mut self,
        used: impl IntoIterator<Item = i64>,
        server_us: i64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut used = used.into_iter();
        for (state, rate) in self.states.iter_mut().zip(&self.rates) {
            if *rate {
                let tat = used
                    .next()
                    .ok_or_else(|| protocol("fewer counts than tiers"))?;
                let backlog = tat.saturating_sub(server_us).max(0);
                state.set_tat(now.as_micros().saturating_add(backlog));
                continue;
            }
            for tier in state.tiers_mut() {
                tier.used = used
                    .next()
                    .ok_or_else(|| protocol("fewer counts than tiers"))?;
            }
        }
        Ok(())
    }

    /// Takes `units` off the count of counter `key` (what a grant of this instance holds unspent).
    fn give(&mut self, key: &str, units: i64) {
        let Some(position) = self.keys.iter().position(|k| k == key) else {
            return;
        };
        let mut first = 0;
        for (state, rate) in self.states.iter_mut().zip(&self.rates) {
            let len = if *rate { 1 } else { state.tiers().len() };
            if position < first + len {
                if !*rate && let Some(tier) = state.tiers_mut().get_mut(position - first) {
                    tier.used = tier.used.saturating_sub(units);
                }
                return;
            }
            first += len;
        }
    }
}

/// Runs `step` on `inner` every `period` (the first time one period from now) until the store is
/// dropped; a step that takes longer delays the next.
async fn every<Step, Done>(inner: Weak<Inner>, period: Duration, mut step: Step)
where
    Step: FnMut(Arc<Inner>) -> Done,
    Done: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        step(inner).await;
    }
}

/// The time to live of a counter kept until `keep_until` (its window's end plus its margin, see
/// [`Inner::keep_until`]), from `now` on the instance's clock: relative, so Redis's own clock does
/// not matter.
fn ttl(keep_until: Timestamp, now: Timestamp) -> i64 {
    keep_until.millis_since(now).max(1)
}

fn day_number(date: NaiveDate) -> i32 {
    date.num_days_from_ce()
}

impl Inner {
    fn keys(&self, org: &OrgId) -> OrgKeys {
        OrgKeys::new(&self.prefix, org)
    }

    /// The slot whose node holds `key` and the rest of its org's keys (0 on a single server): the
    /// node whose clock the server clock offsets are kept for.
    fn slot_of(&self, key: &str) -> u16 {
        if self.conn.is_cluster() {
            crate::keys::cluster_slot(key.as_bytes())
        } else {
            0
        }
    }

    /// When a counter of `window` whose window ends at `end` may go: after the key margin (so an
    /// instance whose clock is behind still finds it), but never later than one more window (at
    /// least a second), so that a `second` tier keeps two counters an org, not sixty.
    fn keep_until(&self, window: Window, end: Timestamp) -> Timestamp {
        let window_ms = i64::try_from(window.nominal_secs())
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let margin = self.margin_ms.min(window_ms.max(1000));
        Timestamp::from_millis(end.as_millis().saturating_add(margin))
    }

    /// Runs one call to Redis, bounded by the timeout, and keeps the health up to date.
    /// Runs a call that is not an admission (a settlement, a record, a read, a renewal, a
    /// release) within the timeout: its failures are counted, but never trip the health gate
    /// that makes admissions fail fast.
    async fn run<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        let error = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.health.success();
                return Ok(value);
            }
            Ok(Err(error)) => StoreError::Unavailable(Box::new(error)),
            Err(_) => StoreError::Timeout(self.timeout),
        };
        self.health.failure_aside(&error);
        Err(error)
    }

    /// What a call bounded by the timeout came to, with the health kept up to date.
    fn checked<T>(
        &self,
        outcome: Result<RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let error = match outcome {
            Ok(Ok(value)) => {
                self.health.success();
                return Ok(value);
            }
            Ok(Err(error)) => StoreError::Unavailable(Box::new(error)),
            Err(_) => StoreError::Timeout(self.timeout),
        };
        self.health.failure(&error);
        Err(error)
    }

    /// Whether the server is a node of a cluster (`INFO cluster` says `cluster_enabled:1`). A user
    /// whose ACL refuses `INFO` cannot tell: not a cluster, as far as this check knows.
    async fn is_cluster_node(&self) -> RedisResult<bool> {
        if self.conn.is_cluster() {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let info: String = match redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            Err(error) if error.code() == Some("NOPERM") => return Ok(false),
            Err(error) => return Err(error),
        };
        Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
    }

    /// Loads every script, so that the first admission is one round trip too.
    async fn load_scripts(&self) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let scripts = &*SCRIPTS;
        for script in [
            &scripts.admit,
            &scripts.settle,
            &scripts.usage,
            &scripts.renew,
            &scripts.reset,
            &scripts.give_back,
        ] {
            script.load_async(&mut conn).await?;
        }
        Ok(())
    }

    async fn admit(
        self: &Arc<Self>,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        // A hot org's grant admits without Redis, even while Redis fails.
        if let Some(decision) = self
            .grants
            .as_ref()
            .and_then(|book| book.admit(org, charge, now))
        {
            return Ok(decision);
        }
        // Redis failed moments ago: fail at once, but for the occasional probe.
        self.health.gate()?;
        let started = tokio::time::Instant::now();
        if let Some(decision) = self.admit_within(org, charge, now, self.timeout).await? {
            return Ok(decision);
        }
        // The script ran past its deadline, yet its reply came within the timeout: Redis's clock
        // had moved away from this instance's since the last reply (or none had come yet), and
        // this reply measured the offset anew. Once more, within what is left of the timeout.
        let left = self.timeout.saturating_sub(started.elapsed());
        let decision = if left.is_zero() {
            None
        } else {
            self.admit_within(org, charge, now, left).await?
        };
        decision.ok_or_else(|| {
            let error = StoreError::Timeout(self.timeout);
            self.health.failure(&error);
            error
        })
    }

    /// One admission, waited for `budget` at most; `None` if its script ran past its deadline
    /// (and so charged nothing).
    async fn admit_within(
        self: &Arc<Self>,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
        budget: Duration,
    ) -> Result<Option<Decision>, StoreError> {
        let concurrency = org.concurrency().map_or(0, |c| c.max());
        let keys = self.keys(org.id());
        let layout = Layout::new(org, &keys, now);
        let leases = keys.leases();
        // The node that runs the script is the owner of the org's slot: its clock sets the deadline.
        let slot = self.slot_of(&leases);
        // Every admitted request holds a lease while in flight: the lease set is the org's
        // in-flight count (what the usage shows), and its limit when the plan has one.
        let pending = PendingLease::register(self, &leases);
        let mut grant = self.grant_call(org, charge, now);
        let mut invocation = SCRIPTS.admit.prepare_invoke();
        invocation.key(&leases).key(keys.index());
        for key in &layout.keys {
            invocation.key(key);
        }
        let sent = wall_ms();
        // The grant part follows the limits' arguments: 3 per limit, then 2 per tier (a rate has
        // one: its interval and burst).
        let limit_args: usize = org
            .limits()
            .iter()
            .map(|limit| 3 + 2 * limit.tiers().len())
            .sum();
        invocation
            .arg(now.as_millis())
            // Index entries are scored by when their counter may go: drop those past it.
            .arg(0)
            .arg(concurrency)
            .arg(pending.member())
            .arg(self.lease_ttl_ms)
            .arg(org.limits().len())
            .arg(self.server_clock.deadline(slot, sent, budget))
            .arg(layout.keys.len())
            .arg(grant.as_ref().map_or(0, |_| 10 + limit_args));
        for (limit, state) in org.limits().iter().zip(&layout.states) {
            let latency = limit.dimension() == Dimension::LatencyMs;
            invocation
                .arg(if latency { "1" } else { "0" })
                .arg(charge.amount(limit.dimension()));
            if let Some(rate) = limit.rate(now) {
                let gcra = rate.gcra();
                invocation.arg(0).arg(gcra.interval).arg(gcra.burst);
                continue;
            }
            invocation.arg(limit.tiers().len());
            for (tier, (slot, resolved)) in state.tiers().iter().zip(limit.tiers()).enumerate() {
                invocation
                    .arg(limit.capacity(tier, now))
                    .arg(self.keep_until(resolved.window(), slot.end).as_millis());
            }
        }
        if let Some(grant) = &grant {
            grant.push(&mut invocation);
        }
        let mut conn = self.conn.clone();
        let call = Box::pin(async move { invocation.invoke_async::<Value>(&mut conn).await });
        let asked = grant.as_ref().and_then(|grant| grant.asked(&layout));
        let late = Late {
            inner: Arc::clone(self),
            org: Arc::clone(org),
            layout,
            charge,
            now,
            asked,
        };
        // Given up (the timeout) or dropped (the request went away), the call goes on in the
        // background and what the script charged, if it ran, is given back.
        let (reply, late) = Unanswered::new(call, late).reply(budget).await?;
        let received = wall_ms();
        let mut layout = late.layout;
        let mut reply = AdmissionReply::parse(reply, layout.keys.len())?;
        self.server_clock.observe(slot, reply.server_ms, received);
        if reply.status == AdmissionReply::TOO_LATE {
            pending.forget();
            // Nothing ran, the old grant's give-back neither: it goes back before the retry.
            if let Some(grant) = grant.as_mut() {
                grant.give_back_now().await;
            }
            return Ok(None);
        }
        if let Some(grant) = grant.as_mut() {
            grant.ran();
        }
        let verdict = match self.verdict_of(org, &mut layout, &mut reply, charge, now) {
            Ok(verdict) => verdict,
            Err(error) => {
                // A grant the script took is not spent: it goes back.
                if let Some(grant) = &grant {
                    grant.abandon(&layout, &reply.granted);
                }
                return Err(error);
            }
        };
        let in_flight = reply.in_flight;
        if let Some(grant) = grant.as_mut()
            && verdict.is_admitted()
        {
            grant.install(&layout, &layout.states, &reply.granted, in_flight, now);
        }
        // Counted only when the plan limits concurrency (-1 otherwise).
        let in_flight = u32::try_from(in_flight).ok();
        let permit = if verdict.is_admitted() {
            Some(pending.into_permit())
        } else {
            pending.forget();
            None
        };
        Ok(Some(Decision {
            verdict,
            permit,
            in_flight,
        }))
    }

    /// The verdict of an admission that ran, rebuilt with the ledger's arithmetic from the counts
    /// the script read (its own verdict must agree).
    fn verdict_of(
        &self,
        org: &ResolvedOrg,
        layout: &mut Layout,
        reply: &mut AdmissionReply,
        charge: Charge,
        now: Timestamp,
    ) -> Result<Verdict, StoreError> {
        layout.fill(std::mem::take(&mut reply.used), reply.server_us, now)?;
        if reply.status == AdmissionReply::CONCURRENCY {
            return Ok(Verdict::concurrency(org, &layout.states, charge, now));
        }
        let verdict = decide(org, &mut layout.states, charge, now);
        if verdict.is_admitted() != (reply.status == AdmissionReply::ADMITTED) {
            let error = protocol("the admission script and the ledger disagree");
            self.health.failure(&error);
            return Err(error);
        }
        Ok(verdict)
    }

    async fn peek(
        &self,
        org: &ResolvedOrg,
        now: Timestamp,
    ) -> Result<Vec<LimitStatus>, StoreError> {
        if org.limits().is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys(org.id());
        let mut layout = Layout::new(org, &keys, now);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&layout.keys);
        let mut conn = self.conn.clone();
        let reply = array(self.run(cmd.query_async::<Value>(&mut conn)).await?)?;
        if reply.len() != layout.keys.len() {
            return Err(protocol("a reply with the wrong number of counts"));
        }
        // A rate's state is on Redis's clock: read it with the offset the last admission saw.
        let server_us = self
            .server_clock
            .now_on(self.slot_of(&keys.leases()), now.as_millis())
            .saturating_mul(1000);
        let counts = reply.iter().map(int).collect::<Result<Vec<_>, _>>()?;
        layout.fill(counts, server_us, now)?;
        // What this instance's grant holds unspent is still the org's to use.
        if let Some(book) = &self.grants {
            for (key, left) in book.unspent(org.id()) {
                layout.give(&key, left);
            }
        }
        Ok(Snapshot::new(&layout.states, now).statuses(org))
    }

    async fn reset(&self, org: &ResolvedOrg, limit: Option<&str>) -> Result<(), StoreError> {
        let keys = self.keys(org.id());
        // This instance's grant goes back first; other instances' grants stay counted.
        if let Some(grant) = self.grants.as_ref().and_then(|book| book.take(org.id())) {
            self.return_grant(org.id(), grant.id(), &grant.unspent())
                .await?;
        }
        let index = keys.index();
        let start = keys.counters_of(limit);
        let mut conn = self.conn.clone();
        let mut range = redis::cmd("ZRANGE");
        range.arg(&index).arg(0).arg(-1);
        let counters = array(self.run(range.query_async::<Value>(&mut conn)).await?)?;
        let mut invocation = SCRIPTS.reset.prepare_invoke();
        invocation.key(&index).key(keys.grants());
        let mut any = false;
        for counter in &counters {
            let counter = text(counter)?;
            if counter.starts_with(&start) {
                invocation.key(counter);
                any = true;
            }
        }
        if any {
            self.run(invocation.invoke_async::<Value>(&mut conn))
                .await?;
        }
        Ok(())
    }
}

impl Store for RedisStore {
    fn admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        self.inner.admit(org, charge, now)
    }

    /// Queues the settlement for its org's next batch at once, and writes that batch at once:
    /// awaiting the future reports how it went (within the timeout), dropping it does not cancel
    /// it. The layer uses [`try_settle`](Store::try_settle) instead, which writes within
    /// [`FLUSH_EVERY`](crate::FLUSH_EVERY).
    fn settle(
        &self,
        org: &Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let ended = self.inner.grant_ended_by(org, &settlement);
        let job = self.inner.settle_job(org, settlement);
        // Queued at once, or, when a grant must go back first, by a task of its own: dropping
        // the returned future never loses the settlement.
        match ended {
            None => futures_util::future::Either::Left(self.inner.enqueue(job)),
            Some(grant) => {
                let task = self.inner.settle_after_give_back(org.id(), grant, job);
                futures_util::future::Either::Right(async move {
                    task.await
                        .unwrap_or_else(|_| Err(protocol("a settlement's task ended early")))
                })
            }
        }
    }

    /// Queues the record like [`settle`](Store::settle). The layer uses
    /// [`try_record`](Store::try_record) instead, which writes within the
    /// [record interval](RedisStoreBuilder::record_interval).
    fn record(
        &self,
        org: &Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let job = self.inner.record_job(org, call);
        self.inner.enqueue(job)
    }

    /// Admits from the org's quota grant, when [grants](RedisStoreBuilder::grants) are on and it
    /// holds the charge; `None` otherwise.
    fn try_admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        self.inner.grants.as_ref()?.admit(org, charge, now).map(Ok)
    }

    /// Queues the settlement for its org's next batch, written within
    /// [`FLUSH_EVERY`](crate::FLUSH_EVERY); a batch that fails is counted in
    /// `tollhouse_store_errors_total` and logged.
    fn try_settle(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) -> Option<Settlement> {
        let ended = self.inner.grant_ended_by(org, &settlement);
        let job = self.inner.settle_job(org, settlement);
        match ended {
            None => self.inner.enqueue_detached(job),
            Some(grant) => drop(self.inner.settle_after_give_back(org.id(), grant, job)),
        }
        None
    }

    /// Queues the record for its org's next batch, written within the
    /// [record interval](RedisStoreBuilder::record_interval), like
    /// [`try_settle`](Store::try_settle).
    fn try_record(&self, org: &Arc<ResolvedOrg>, call: CallRecord) -> Option<CallRecord> {
        let job = self.inner.record_job(org, call);
        self.inner.enqueue_detached(job);
        None
    }

    fn peek(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<LimitStatus>, StoreError>> + Send {
        self.inner.peek(org, now)
    }

    fn reset(
        &self,
        org: &Arc<ResolvedOrg>,
        limit: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.reset(org, limit)
    }

    fn usage(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        self.inner.usage(org, now, UsageView::All { days })
    }

    fn usage_view(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        view: UsageView,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        self.inner.usage(org, now, view)
    }

    fn admit_waiting<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        charge: Charge,
        clock: &'a dyn Clock,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a {
        self.inner.admit_in_line(org, charge, clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One org, `acme`, whose plan allows `capacity` requests a day.
    pub(super) fn daily_policy(capacity: u64) -> tollhouse_core::Policy {
        let text = format!(
            r#"
            [plans.p]
            [[plans.p.limits]]
            name = "daily"
            dimension = "requests"
            tiers = [{{ window = "day", capacity = {capacity} }}]
            [[orgs]]
            id = "acme"
            plan = "p"
            "#
        );
        tollhouse_core::Policy::from_toml_str(&text, "policy.toml".as_ref()).expect("policy")
    }

    #[test]
    fn counter_ttl_is_what_is_left_until_it_may_go() {
        let now = Timestamp::from_secs(30);
        assert_eq!(ttl(Timestamp::from_secs(61), now), 31_000);
        assert_eq!(ttl(Timestamp::from_secs(10), now), 1);
    }

    #[tokio::test]
    async fn a_counter_outlives_its_window_by_at_most_the_window() {
        let store = RedisStore::builder()
            .connect_lazy("redis://127.0.0.1:1/")
            .expect("valid settings");
        let end = Timestamp::from_secs(1_000);
        let keep = |window: &str| {
            let window = window.parse().expect("a window");
            store.inner.keep_until(window, end).millis_since(end)
        };
        assert_eq!(keep("second"), 1_000);
        assert_eq!(keep("5 seconds"), 5_000);
        assert_eq!(keep("minute"), 60_000);
        assert_eq!(keep("day"), 60_000);
    }

    #[tokio::test]
    async fn lazy_store_fails_fast_without_redis() {
        // Nothing listens on port 1: calls fail (or time out) within the timeout, never hang.
        let store = RedisStore::builder()
            .timeout(Duration::from_millis(50))
            .connect_lazy("redis://127.0.0.1:1/")
            .expect("valid settings");
        let policy = daily_policy(2);
        let org = policy.org("acme").expect("org");
        let started = std::time::Instant::now();
        let result = store
            .admit(org, Charge::default(), Timestamp::from_secs(0))
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(!store.health().healthy);
        // The layer takes any store as a trait object.
        let dynamic: Arc<dyn tollhouse_core::DynStore> = Arc::new(store);
        assert!(format!("{dynamic:?}").contains("RedisStore"));
    }
}
