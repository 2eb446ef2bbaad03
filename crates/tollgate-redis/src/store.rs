//! [`RedisStore`]: the counts of every org in Redis, shared by every instance that uses it.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tollgate_redis::ConnectError> {
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
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, SystemTime};

use chrono::{Datelike, Days, NaiveDate};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script, Value};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tollgate_core::ledger::decide;
use tollgate_core::tier::LimitState;
use tollgate_core::usage::{
    DAYS_KEPT, EndpointUsage, MAX_ENDPOINTS, MAX_REPEATED, REPEAT_THRESHOLD, RepeatedRequest,
    local_date, sort_newest_first,
};
use tollgate_core::{
    CallRecord, Charge, Decision, Dimension, LimitStatus, OrgId, OrgUsage, Outcome, Permit,
    ReleasePermit, ResolvedOrg, Settlement, Snapshot, Store, StoreError, Timestamp, UsageSnapshot,
    Verdict,
};

use crate::codec;
use crate::error::ConnectError;
use crate::health::{Health, HealthState};
use crate::keys::OrgKeys;

mod late;

use late::{AdmissionReply, Late, ServerClock, Unanswered, wall_ms};

/// How long [`Store::permit_freed`] waits at most before the caller tries again.
pub const PERMIT_POLL: Duration = Duration::from_millis(10);

const DAY_MS: i64 = 86_400_000;
/// Billable counts live this long after their date's last call.
const DAY_TTL_MS: i64 = (DAYS_KEPT as i64 + 1) * DAY_MS;
/// Today's report (endpoints, repeated requests) lives this long after its last call.
const REPORT_TTL_MS: i64 = 2 * DAY_MS;
/// The endpoint that collects every endpoint past the [`MAX_ENDPOINTS`]th of a day.
const OTHER_ENDPOINT: &str = "*\n(other)";

/// Configures and connects a [`RedisStore`].
///
/// Every setting has a default; see each method.
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    prefix: String,
    timeout: Duration,
    calls_kept: usize,
    lease_ttl: Duration,
    key_margin: Duration,
    connect_timeout: Duration,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: "tollgate:".to_owned(),
            timeout: Duration::from_millis(50),
            calls_kept: 100,
            lease_ttl: Duration::from_secs(15),
            key_margin: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisStoreBuilder {
    /// The start of every key (default `tollgate:`). It may not contain `{` or `}`: the org's hash
    /// tag follows it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest any call to Redis may take (default 50 ms); past it the call fails with
    /// [`StoreError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many recent calls each org's log keeps (default 100).
    pub fn calls_kept(mut self, calls_kept: usize) -> Self {
        self.calls_kept = calls_kept;
        self
    }

    /// How long a concurrency lease lives without renewal (default 15 s, at least 30 ms). The store
    /// renews the leases it holds every third of this; the slots of an instance that died free
    /// within this time.
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl;
        self
    }

    /// How long a counter outlives its window (default 60 s), so that an instance whose clock is
    /// behind still finds the window it is in.
    pub fn key_margin(mut self, key_margin: Duration) -> Self {
        self.key_margin = key_margin;
        self
    }

    /// How long [`connect`](Self::connect) waits for Redis, and each reconnection attempt may take
    /// (default 2 s).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    fn validate(&self) -> Result<(), ConnectError> {
        let invalid = |problem: String| Err(ConnectError::Config(problem));
        if self.prefix.contains(['{', '}']) {
            return invalid(format!(
                "the key prefix {:?} contains a brace; the org's hash tag must be the first {{...}} \
                 of every key, so use a prefix without {{ and }}",
                self.prefix
            ));
        }
        if self.timeout.is_zero() {
            return invalid("a timeout of 0 fails every call; set at least 1 ms".to_owned());
        }
        if self.calls_kept == 0 {
            return invalid("a call log of 0 keeps nothing; keep at least 1 call".to_owned());
        }
        if self.lease_ttl < Duration::from_millis(30) {
            return invalid(format!(
                "a lease time to live of {:?} is too short to renew; set at least 30 ms",
                self.lease_ttl
            ));
        }
        Ok(())
    }

    /// Connects to Redis at `url` (`redis://host:port/db`), checks that it answers and loads the
    /// scripts. Must be called inside a Tokio runtime.
    pub async fn connect(self, url: &str) -> Result<RedisStore, ConnectError> {
        let wait = self.connect_timeout;
        let store = self.connect_lazy(url)?;
        match tokio::time::timeout(wait, store.inner.load_scripts()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(error)) => Err(ConnectError::Redis(error)),
            Err(_) => Err(ConnectError::Timeout(wait)),
        }
    }

    /// A store that connects on its first call, so a service can start while Redis is down (its
    /// calls fail, and follow `on_store_error`, until Redis answers). Must be called inside a Tokio
    /// runtime; does no I/O.
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, ConnectError> {
        self.validate()?;
        let runtime = Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let client = redis::Client::open(url).map_err(ConnectError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(8);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(ConnectError::Redis)?;
        let random = RandomState::new().hash_one((SystemTime::now(), std::process::id()));
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            conn,
            prefix: self.prefix,
            timeout: self.timeout,
            calls_kept: self.calls_kept,
            lease_ttl_ms: millis(self.lease_ttl),
            margin_ms: millis(self.key_margin),
            leases: Mutex::new(HashMap::new()),
            instance: random,
            next_lease: AtomicU64::new(1),
            freed: Notify::new(),
            health: HealthState::new(),
            server_clock: ServerClock::default(),
            runtime: runtime.clone(),
        });
        let every = self.lease_ttl / 3;
        let task = runtime.spawn(renew_leases(Arc::downgrade(&inner), every));
        Ok(RedisStore {
            inner,
            _renewal: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The counts of every org in Redis: exact across every instance that shares it.
///
/// Implements [`Store`] with the semantics of [`MemoryStore`](tollgate_core::MemoryStore); see
/// [the crate documentation](crate) for keys, leases, clocks and failures. Clones share one
/// connection; the leases' renewal stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    _renewal: Arc<AbortOnDrop>,
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

#[derive(Debug)]
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    admit: Script::new(include_str!("admit.lua")),
    settle: Script::new(include_str!("settle.lua")),
    usage: Script::new(include_str!("usage.lua")),
    renew: Script::new(include_str!("renew.lua")),
    reset: Script::new(include_str!("reset.lua")),
});

struct Inner {
    me: Weak<Inner>,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    calls_kept: usize,
    lease_ttl_ms: i64,
    margin_ms: i64,
    /// The leases this instance holds: lease id -> the org's lease set.
    leases: Mutex<HashMap<u64, Arc<str>>>,
    instance: u64,
    next_lease: AtomicU64,
    freed: Notify,
    health: HealthState,
    /// How far Redis's clock is ahead of this instance's, for admission deadlines.
    server_clock: ServerClock,
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

    /// Leases this instance holds now (requests in flight through it).
    pub fn leases_held(&self) -> usize {
        self.inner.leases.lock().len()
    }

    /// Renews every lease this instance holds now (the background task does this every third of
    /// the lease time to live).
    pub async fn renew_leases(&self) -> Result<(), StoreError> {
        self.inner.renew_all().await
    }
}

/// A lease registered before its admission is sent: if the admission fails, times out or is
/// cancelled, the lease (which the script may have added) is released.
struct PendingLease<'a> {
    inner: &'a Arc<Inner>,
    lease: u64,
    armed: bool,
}

impl PendingLease<'_> {
    /// The script said no: nothing was added.
    fn forget(mut self) {
        self.armed = false;
        self.inner.leases.lock().remove(&self.lease);
    }

    /// Admitted: the lease now belongs to a permit.
    fn into_permit(mut self) -> Permit {
        self.armed = false;
        let owner: Arc<dyn ReleasePermit> = Arc::clone(self.inner) as Arc<dyn ReleasePermit>;
        Permit::new(owner, self.lease)
    }
}

impl Drop for PendingLease<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.release(self.lease);
        }
    }
}

impl ReleasePermit for Inner {
    fn release(&self, lease: u64) {
        let Some(set) = self.leases.lock().remove(&lease) else {
            return;
        };
        let Some(inner) = self.me.upgrade() else {
            return;
        };
        let member = self.member(lease);
        // Never block in `Drop`: the lease is removed in the background. If that fails, the lease
        // expires on its own (it is no longer renewed).
        self.runtime.spawn(async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&*set).arg(&member);
            let _ = inner.run(cmd.query_async::<Value>(&mut conn)).await;
            inner.freed.notify_waiters();
        });
    }
}

/// The counters of one org at one instant: a state per limit with its windows, and the counter
/// key of every tier in plan order.
struct Layout {
    states: Vec<LimitState>,
    keys: Vec<String>,
}

impl Layout {
    fn new(org: &ResolvedOrg, keys: &OrgKeys, now: Timestamp) -> Self {
        let mut layout = Layout {
            states: Vec::with_capacity(org.limits().len()),
            keys: Vec::with_capacity(org.limits().len() * 2),
        };
        for limit in org.limits() {
            let mut state = LimitState::fresh(limit.tiers().len());
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

    /// Sets every tier's count, in plan order.
    fn fill(&mut self, used: impl IntoIterator<Item = i64>) -> Result<(), StoreError> {
        let mut used = used.into_iter();
        for state in &mut self.states {
            for tier in state.tiers_mut() {
                tier.used = used
                    .next()
                    .ok_or_else(|| protocol("fewer counts than tiers"))?;
            }
        }
        Ok(())
    }
}

fn protocol(what: &str) -> StoreError {
    StoreError::Protocol(what.to_owned())
}

fn int(value: &Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::Nil => Ok(0),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| protocol("a count that is not a number")),
        Value::SimpleString(text) => text
            .parse()
            .map_err(|_| protocol("a count that is not a number")),
        _ => Err(protocol("a count that is not a number")),
    }
}

fn array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(protocol("a reply that is not a list")),
    }
}

fn text(value: &Value) -> Result<&str, StoreError> {
    match value {
        Value::BulkString(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| protocol("a name that is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text),
        _ => Err(protocol("a name that is not a string")),
    }
}

/// The time to live of a counter whose window ends at `end`: what is left of the window on the
/// instance's clock, plus the margin. Relative, so Redis's own clock does not matter.
fn ttl(end: Timestamp, now: Timestamp, margin_ms: i64) -> i64 {
    end.millis_since(now)
        .max(0)
        .saturating_add(margin_ms)
        .max(1)
}

fn day_number(date: NaiveDate) -> i32 {
    date.num_days_from_ce()
}

/// A settlement or a record, computed when it is handed over and run in the background.
struct Job {
    keys: Vec<String>,
    args: Vec<String>,
}

impl Inner {
    fn member(&self, lease: u64) -> String {
        format!("{:016x}:{lease}", self.instance)
    }

    fn keys(&self, org: &OrgId) -> OrgKeys {
        OrgKeys::new(&self.prefix, org)
    }

    /// Runs one call to Redis, bounded by the timeout, and keeps the health up to date.
    async fn run<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        self.checked(tokio::time::timeout(self.timeout, call).await)
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
        let concurrency = org.concurrency().map_or(0, |c| c.max());
        let keys = self.keys(org.id());
        let layout = Layout::new(org, &keys, now);
        let leases = keys.leases();
        // Every admitted request holds a lease while in flight: the lease set is the org's
        // in-flight count (what the usage shows), and its limit when the plan has one.
        let lease = self.next_lease.fetch_add(1, Ordering::Relaxed);
        self.leases.lock().insert(lease, Arc::from(leases.as_str()));
        let pending = PendingLease {
            inner: self,
            lease,
            armed: true,
        };
        let mut invocation = SCRIPTS.admit.prepare_invoke();
        invocation.key(&leases).key(keys.index());
        for key in &layout.keys {
            invocation.key(key);
        }
        let sent = wall_ms();
        invocation
            .arg(now.as_millis())
            .arg(self.margin_ms)
            .arg(concurrency)
            .arg(self.member(pending.lease))
            .arg(self.lease_ttl_ms)
            .arg(org.limits().len())
            .arg(self.server_clock.deadline(sent, self.timeout));
        for (limit, state) in org.limits().iter().zip(&layout.states) {
            let latency = limit.dimension() == Dimension::LatencyMs;
            invocation
                .arg(if latency { "1" } else { "0" })
                .arg(charge.amount(limit.dimension()))
                .arg(limit.tiers().len());
            for (tier, slot) in state.tiers().iter().enumerate() {
                invocation
                    .arg(limit.capacity(tier, now))
                    .arg(ttl(slot.end, now, self.margin_ms))
                    .arg(slot.end.as_millis());
            }
        }
        let mut conn = self.conn.clone();
        let call = Box::pin(async move { invocation.invoke_async::<Value>(&mut conn).await });
        let late = Late {
            inner: Arc::clone(self),
            org: Arc::clone(org),
            layout,
            charge,
            now,
        };
        // Given up (the timeout) or dropped (the request went away), the call goes on in the
        // background and what the script charged, if it ran, is given back.
        let (reply, late) = Unanswered::new(call, late).reply().await?;
        let received = wall_ms();
        let mut layout = late.layout;
        let AdmissionReply {
            status,
            in_flight,
            server_ms,
            used,
        } = AdmissionReply::parse(reply, layout.keys.len())?;
        self.server_clock.observe(server_ms, received);
        if status == AdmissionReply::TOO_LATE {
            // The script ran past the deadline (the clocks' offset moved): nothing was charged.
            pending.forget();
            let error = StoreError::Timeout(self.timeout);
            self.health.failure(&error);
            return Err(error);
        }
        layout.fill(used)?;
        let verdict = if status == AdmissionReply::CONCURRENCY {
            Verdict::concurrency(Snapshot::new(&layout.states, now), now)
        } else {
            let verdict = decide(org, &mut layout.states, charge, now);
            if verdict.is_admitted() != (status == AdmissionReply::ADMITTED) {
                let error = protocol("the admission script and the ledger disagree");
                self.health.failure(&error);
                return Err(error);
            }
            verdict
        };
        let in_flight = Some(u32::try_from(in_flight).unwrap_or(u32::MAX));
        let permit = if verdict.is_admitted() {
            Some(pending.into_permit())
        } else {
            pending.forget();
            None
        };
        Ok(Decision {
            verdict,
            permit,
            in_flight,
        })
    }

    async fn peek(
        &self,
        org: &ResolvedOrg,
        now: Timestamp,
    ) -> Result<Vec<LimitStatus>, StoreError> {
        if org.limits().is_empty() {
            return Ok(Vec::new());
        }
        let mut layout = Layout::new(org, &self.keys(org.id()), now);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&layout.keys);
        let mut conn = self.conn.clone();
        let reply = array(self.run(cmd.query_async::<Value>(&mut conn)).await?)?;
        if reply.len() != layout.keys.len() {
            return Err(protocol("a reply with the wrong number of counts"));
        }
        layout.fill(reply.iter().map(int).collect::<Result<Vec<_>, _>>()?)?;
        Ok(Snapshot::new(&layout.states, now).statuses(org))
    }

    async fn reset(&self, org: &ResolvedOrg, limit: Option<&str>) -> Result<(), StoreError> {
        let keys = self.keys(org.id());
        let index = keys.index();
        let start = keys.counters_of(limit);
        let mut conn = self.conn.clone();
        let mut range = redis::cmd("ZRANGE");
        range.arg(&index).arg(0).arg(-1);
        let counters = array(self.run(range.query_async::<Value>(&mut conn)).await?)?;
        let mut invocation = SCRIPTS.reset.prepare_invoke();
        invocation.key(&index);
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

    /// A settle script's job at `at` on `date`, before its corrections and record: the org's
    /// fixed keys, and room for the number of corrections in `args[2]`.
    fn job(&self, keys: &OrgKeys, date: NaiveDate, at: Timestamp) -> Job {
        Job {
            keys: vec![
                keys.index(),
                keys.log(),
                keys.today(),
                keys.day(date),
                keys.endpoint_calls(date),
                keys.endpoint_points(date),
                keys.repeated(date),
            ],
            args: vec![
                at.as_millis().to_string(),
                self.margin_ms.to_string(),
                String::new(),
            ],
        }
    }

    fn settle_job(&self, org: &ResolvedOrg, settlement: Settlement) -> Option<Job> {
        let Settlement {
            receipt,
            correction,
            call,
            at,
        } = settlement;
        let keys = self.keys(org.id());
        let date = local_date(org.time_zone(), call.as_ref().map_or(at, |call| call.at));
        let mut job = self.job(&keys, date, at);
        let mut ops = 0usize;
        if correction.latency_ms > 0 || correction.cost_delta != 0 {
            for (index, limit) in org.limits().iter().enumerate() {
                let (kind, amount, part) = match limit.dimension() {
                    Dimension::LatencyMs if correction.latency_ms > 0 => {
                        ("c", correction.latency_ms, None)
                    }
                    Dimension::Points if correction.cost_delta > 0 => {
                        ("c", correction.cost_delta.unsigned_abs(), None)
                    }
                    Dimension::Points if correction.cost_delta < 0 => {
                        match receipt.parts().iter().find(|part| part.limit == index) {
                            Some(part) => ("r", correction.cost_delta.unsigned_abs(), Some(part)),
                            None => continue,
                        }
                    }
                    _ => continue,
                };
                ops += 1;
                job.args.push(kind.to_owned());
                job.args.push(amount.to_string());
                job.args.push(limit.tiers().len().to_string());
                for (tier, resolved) in limit.tiers().iter().enumerate() {
                    let bounds = resolved.window().bounds(limit.zone(), at);
                    job.keys
                        .push(keys.counter(limit.name(), resolved.window(), bounds.start));
                    // A refund goes back only to a tier still in the window it was taken in.
                    let share = part
                        .filter(|part| part.starts[tier] == bounds.start)
                        .map_or(0, |part| part.split[tier]);
                    job.args.push(limit.capacity(tier, at).to_string());
                    job.args
                        .push(ttl(bounds.end, at, self.margin_ms).to_string());
                    job.args.push(bounds.end.as_millis().to_string());
                    job.args.push(share.to_string());
                }
            }
        }
        job.args[2] = ops.to_string();
        match call {
            Some(call) => self.record_args(&mut job, &call, date),
            None if ops == 0 => return None,
            None => job.args.push("0".to_owned()),
        }
        Some(job)
    }

    fn record_args(&self, job: &mut Job, call: &CallRecord, date: NaiveDate) {
        let route = call.route.as_deref().unwrap_or(&call.path);
        let admitted = call.outcome == Outcome::Admitted;
        let args = [
            "1".to_owned(),
            codec::encode(call),
            self.calls_kept.to_string(),
            DAY_TTL_MS.to_string(),
            day_number(date).to_string(),
            DAY_TTL_MS.to_string(),
            REPORT_TTL_MS.to_string(),
            if call.billable { "1" } else { "0" }.to_owned(),
            if admitted { "1" } else { "0" }.to_owned(),
            format!("{}\n{route}", call.method),
            if admitted { call.cost } else { 0 }.to_string(),
            format!("{}\n{}", call.method, call.path),
            call.at.as_millis().to_string(),
            MAX_ENDPOINTS.to_string(),
            MAX_REPEATED.to_string(),
            OTHER_ENDPOINT.to_owned(),
        ];
        job.args.extend(args);
    }

    /// Starts `job` now, in the background; the returned future only reports how it went, and
    /// dropping it does not cancel the job.
    fn spawn(&self, job: Option<Job>) -> impl Future<Output = Result<(), StoreError>> + Send {
        let handle = match (job, self.me.upgrade()) {
            (Some(job), Some(inner)) => Some(self.runtime.spawn(async move {
                let mut invocation = SCRIPTS.settle.prepare_invoke();
                for key in &job.keys {
                    invocation.key(key);
                }
                for arg in &job.args {
                    invocation.arg(arg);
                }
                let mut conn = inner.conn.clone();
                inner
                    .run(invocation.invoke_async::<Value>(&mut conn))
                    .await
                    .map(drop)
            })),
            _ => None,
        };
        async move {
            match handle {
                Some(handle) => handle
                    .await
                    .unwrap_or_else(|error| Err(StoreError::Unavailable(Box::new(error)))),
                None => Ok(()),
            }
        }
    }

    async fn usage(
        &self,
        org: &ResolvedOrg,
        now: Timestamp,
        days: usize,
    ) -> Result<OrgUsage, StoreError> {
        let keys = self.keys(org.id());
        let date = local_date(org.time_zone(), now);
        let days = days.clamp(1, DAYS_KEPT);
        let dates: Vec<NaiveDate> = (0..days)
            .rev()
            .filter_map(|back| date.checked_sub_days(Days::new(back as u64)))
            .collect();
        let mut invocation = SCRIPTS.usage.prepare_invoke();
        invocation
            .key(keys.leases())
            .key(keys.today())
            .key(keys.day(date))
            .key(keys.endpoint_calls(date))
            .key(keys.endpoint_points(date))
            .key(keys.repeated(date))
            .key(keys.log());
        for day in &dates {
            invocation.key(keys.day(*day));
        }
        invocation.arg(day_number(date));
        let mut conn = self.conn.clone();
        let reply = array(
            self.run(invocation.invoke_async::<Value>(&mut conn))
                .await?,
        )?;
        let Ok::<[Value; 8], _>(
            [
                in_flight,
                current,
                admitted,
                billable,
                calls,
                points,
                repeated,
                log,
            ],
        ) = reply.try_into()
        else {
            return Err(protocol("a usage reply of the wrong shape"));
        };
        let current = int(&current)? == 1;
        let billable = array(billable)?;
        if billable.len() != dates.len() {
            return Err(protocol("a usage reply with the wrong number of days"));
        }
        let billable_days = dates
            .iter()
            .zip(&billable)
            .map(|(day, count)| Ok((*day, u64::try_from(int(count)?).unwrap_or(0))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut endpoints = endpoints(array(calls)?, array(points)?)?;
        endpoints.sort_by(|a, b| {
            b.calls
                .cmp(&a.calls)
                .then(b.points.cmp(&a.points))
                .then(a.route.cmp(&b.route))
        });
        let mut repeated = repeated_requests(array(repeated)?)?;
        repeated.sort_by(|a, b| b.count.cmp(&a.count).then(a.path.cmp(&b.path)));
        let mut calls = array(log)?
            .iter()
            .map(|entry| match entry {
                Value::BulkString(bytes) => codec::decode(bytes),
                _ => Err(protocol("a call log entry that is not a string")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        sort_newest_first(&mut calls);
        let usage = UsageSnapshot {
            date,
            calls_today: if current {
                u64::try_from(int(&admitted)?).unwrap_or(0)
            } else {
                0
            },
            billable_today: billable_days.last().map_or(0, |(_, count)| *count),
            billable_days,
            calls,
            endpoints,
            repeated,
        };
        Ok(OrgUsage {
            usage,
            in_flight: u32::try_from(int(&in_flight)?).unwrap_or(u32::MAX),
        })
    }

    /// Renews every lease this instance holds, one round trip per org.
    async fn renew_all(&self) -> Result<(), StoreError> {
        let mut by_set: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (lease, set) in self.leases.lock().iter() {
            by_set
                .entry(Arc::clone(set))
                .or_default()
                .push(self.member(*lease));
        }
        let mut result = Ok(());
        for (set, members) in by_set {
            let mut invocation = SCRIPTS.renew.prepare_invoke();
            invocation.key(&*set).arg(self.lease_ttl_ms);
            for member in &members {
                invocation.arg(member);
            }
            let mut conn = self.conn.clone();
            if let Err(error) = self.run(invocation.invoke_async::<Value>(&mut conn)).await {
                result = Err(error);
            }
        }
        result
    }
}

fn split_field(field: &str) -> (&str, &str) {
    field.split_once('\n').unwrap_or(("", field))
}

fn endpoints(calls: Vec<Value>, points: Vec<Value>) -> Result<Vec<EndpointUsage>, StoreError> {
    let mut points_of = HashMap::with_capacity(points.len() / 2);
    for pair in points.chunks(2) {
        if let [field, value] = pair {
            points_of.insert(text(field)?.to_owned(), int(value)?);
        }
    }
    let mut out = Vec::with_capacity(calls.len() / 2);
    for pair in calls.chunks(2) {
        let [field, value] = pair else {
            return Err(protocol("an endpoint without its count"));
        };
        let field = text(field)?;
        let (method, route) = split_field(field);
        out.push(EndpointUsage {
            method: method.into(),
            route: route.into(),
            calls: u64::try_from(int(value)?).unwrap_or(0),
            points: u64::try_from(points_of.get(field).copied().unwrap_or(0)).unwrap_or(0),
        });
    }
    Ok(out)
}

fn repeated_requests(entries: Vec<Value>) -> Result<Vec<RepeatedRequest>, StoreError> {
    let mut out = Vec::new();
    for pair in entries.chunks(2) {
        let [field, value] = pair else {
            return Err(protocol("a repeated request without its count"));
        };
        let mut numbers = text(value)?.split(' ').map(str::parse::<i64>);
        let (Some(Ok(count)), Some(Ok(first)), Some(Ok(last))) =
            (numbers.next(), numbers.next(), numbers.next())
        else {
            return Err(protocol(
                "a repeated request that is not 'count first last'",
            ));
        };
        let count = u64::try_from(count).unwrap_or(0);
        if count < REPEAT_THRESHOLD {
            continue;
        }
        let (method, path) = split_field(text(field)?);
        out.push(RepeatedRequest {
            method: method.into(),
            path: path.into(),
            count,
            mean_interval_s: Timestamp::from_millis(last)
                .millis_since(Timestamp::from_millis(first)) as f64
                / 1000.0
                / (count - 1) as f64,
        });
    }
    Ok(out)
}

/// Renews the leases of `inner` every `every` until the store is dropped.
async fn renew_leases(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.leases.lock().is_empty() {
            continue;
        }
        // Failures are counted and logged by the health; the next tick tries again.
        let _ = inner.renew_all().await;
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

    /// Starts the settlement at once, in the background: awaiting the future reports how it went
    /// (within the timeout), dropping it does not cancel it.
    fn settle(
        &self,
        org: &Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let job = self.inner.settle_job(org, settlement);
        self.inner.spawn(job)
    }

    /// Starts recording at once, in the background, like [`settle`](Store::settle).
    fn record(
        &self,
        org: &Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let at = call.at;
        let job = self.inner.settle_job(
            org,
            Settlement {
                call: Some(call),
                at,
                ..Settlement::default()
            },
        );
        self.inner.spawn(job)
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
        self.inner.usage(org, now, days)
    }

    /// Resolves when a permit released through this instance has been given back to Redis, or
    /// after [`PERMIT_POLL`] (a permit released by another instance is seen on the next try).
    fn permit_freed(&self, _org: &OrgId) -> impl Future<Output = ()> + Send {
        let inner = Arc::clone(&self.inner);
        async move {
            let _ = tokio::time::timeout(PERMIT_POLL, inner.freed.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_settings() {
        let prefix = RedisStore::builder().prefix("a{b}").validate();
        assert!(matches!(prefix, Err(ConnectError::Config(message)) if message.contains("brace")));
        assert!(
            RedisStore::builder()
                .timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(RedisStore::builder().calls_kept(0).validate().is_err());
        assert!(
            RedisStore::builder()
                .lease_ttl(Duration::from_millis(5))
                .validate()
                .is_err()
        );
        assert!(RedisStore::builder().validate().is_ok());
    }

    #[test]
    fn counter_ttl_is_what_is_left_plus_the_margin() {
        let now = Timestamp::from_secs(30);
        assert_eq!(ttl(Timestamp::from_secs(60), now, 1_000), 31_000);
        assert_eq!(ttl(Timestamp::from_secs(10), now, 1_000), 1_000);
        assert_eq!(ttl(Timestamp::from_secs(10), now, 0), 1);
    }

    #[tokio::test]
    async fn lazy_store_fails_fast_without_redis() {
        // Nothing listens on port 1: calls fail (or time out) within the timeout, never hang.
        let store = RedisStore::builder()
            .timeout(Duration::from_millis(50))
            .connect_lazy("redis://127.0.0.1:1/")
            .expect("valid settings");
        let policy = tollgate_core::Policy::from_toml_str(
            r#"
            [plans.p]
            [[plans.p.limits]]
            name = "daily"
            dimension = "requests"
            tiers = [{ window = "day", capacity = 2 }]
            [[orgs]]
            id = "acme"
            plan = "p"
            "#,
            "policy.toml".as_ref(),
        )
        .expect("policy");
        let org = policy.org("acme").expect("org");
        let started = std::time::Instant::now();
        let result = store
            .admit(org, Charge::default(), Timestamp::from_secs(0))
            .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(!store.health().healthy);
        // The layer takes any store as a trait object.
        let dynamic: Arc<dyn tollgate_core::DynStore> = Arc::new(store);
        assert!(format!("{dynamic:?}").contains("RedisStore"));
    }
}
