//! Admissions answered without the store charge nothing, even when Redis runs them later.
//!
//! An admission that passes the store's timeout is answered without the store (let through or
//! refused, as `on_store_error` says), and one whose request went away is not answered at all. Yet
//! its script was sent, and a stalled Redis runs it when it resumes. Two things keep such a script
//! from charging the org for a request the store never admitted:
//!
//! - **A deadline.** Every admission carries the instant, on Redis's clock, at which the instance
//!   stops waiting (its send time plus the timeout, moved onto Redis's clock by the offset that the
//!   last reply showed, [`ServerClock`]). A script that runs later charges nothing and says so.
//!   The offset is measured when replies arrive, after the script ran, so the deadline errs early.
//!   A call that waited for a lost connection and is sent once it is back runs past its deadline
//!   too, so an outage's unanswered admissions are not charged when Redis returns.
//! - **A refund.** The call is not cancelled when the caller stops waiting: [`Unanswered`] hands
//!   it to a background task, which reads the reply and, if the script admitted after all (it ran
//!   before the deadline but its reply came too late, or its request went away), runs the settle
//!   script with a refund of exactly what each tier took (only into windows still open, never
//!   below zero). The lease the script added is removed as before, by the admission's pending
//!   lease, whose `ZREM` follows the script on the same connection.
//!
//! Until a refund lands, the org's counters hold the extra charge: a request arriving in that
//! moment sees less capacity, never more. A reply lost with its connection cannot be read, and
//! whatever its script did stays. The background task waits [`LATE_REPLY_WAIT`] at most; a call
//! still queued for a connection that is not back by then is dropped unsent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use tollhouse_core::BoxFuture;

use super::*;

/// How long a background task waits for a late reply before it gives up.
const LATE_REPLY_WAIT: Duration = Duration::from_secs(10);

/// Refunds of admissions answered too late or to nobody.
const LATE_REFUNDS: &str = "tollhouse_store_late_refunds_total";

/// This instance's wall clock in Unix milliseconds (not the engine's clock, which tests replace:
/// this one is compared with Redis's).
pub(super) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// How far Redis's clock is ahead of this instance's, as the last reply showed.
///
/// Until a reply came, the clocks are taken to agree. If Redis's runs ahead by more than the
/// timeout (or jumps ahead later), an admission's script runs past its deadline and charges
/// nothing; its reply sets the offset, and the store sends the admission once more within what is
/// left of the timeout. If Redis's clock runs behind, deadlines are late by as much, and the
/// refund covers what they let through.
///
/// On a Redis Cluster every node has a clock of its own: the offset is kept per hash slot (an
/// org's scripts all run on the node that owns its slot), so a node whose clock is ahead sets
/// the deadlines of its own orgs only.
#[derive(Debug)]
pub(super) struct ServerClock {
    /// Per slot (one for a single server): Redis's time when a script ran minus this instance's
    /// when its reply arrived.
    offsets_ms: Box<[AtomicI64]>,
}

impl Default for ServerClock {
    fn default() -> Self {
        Self::new(1)
    }
}

impl ServerClock {
    /// Offsets for `slots` slots (16,384 on a cluster, 1 for a single server).
    pub(super) fn new(slots: usize) -> Self {
        Self {
            offsets_ms: (0..slots.max(1)).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    fn offset(&self, slot: u16) -> &AtomicI64 {
        &self.offsets_ms[usize::from(slot) % self.offsets_ms.len()]
    }

    /// The deadline, on the clock of the node that owns `slot`, of an admission sent at `sent`
    /// (this instance's clock) and waited for `timeout`.
    pub(super) fn deadline(&self, slot: u16, sent: i64, timeout: Duration) -> i64 {
        sent.saturating_add(self.offset(slot).load(Ordering::Relaxed))
            .saturating_add(millis(timeout))
            .max(1)
    }

    /// `at` on this instance's clock, as the clock of the node that owns `slot` read then (by the
    /// offset the last reply from it showed).
    pub(super) fn now_on(&self, slot: u16, at: i64) -> i64 {
        at.saturating_add(self.offset(slot).load(Ordering::Relaxed))
    }

    /// A reply arrived at `received` from a script that ran at `server_ms` on the clock of the
    /// node that owns `slot`.
    pub(super) fn observe(&self, slot: u16, server_ms: i64, received: i64) {
        self.offset(slot)
            .store(server_ms.saturating_sub(received), Ordering::Relaxed);
    }
}

/// The reply of the admission script (`admit.lua`).
#[derive(Debug)]
pub(super) struct AdmissionReply {
    pub(super) status: i64,
    /// The org's leases after the script.
    pub(super) in_flight: i64,
    /// Redis's clock when the script ran, in milliseconds.
    pub(super) server_ms: i64,
    /// The same, in microseconds (a rate's state is counted in them).
    pub(super) server_us: i64,
    /// What each counter held before the script (none when it came too late).
    pub(super) used: Vec<i64>,
    /// What a quota grant took of each limit, when one was taken (see [`super::grants`]).
    pub(super) granted: Vec<i64>,
}

impl AdmissionReply {
    /// Admitted and charged.
    pub(super) const ADMITTED: i64 = 1;
    /// Rejected for concurrency.
    pub(super) const CONCURRENCY: i64 = 2;
    /// Run past its deadline: nothing charged.
    pub(super) const TOO_LATE: i64 = 3;

    /// Reads `reply`, sent for an admission with `counters` counters.
    pub(super) fn parse(reply: Value, counters: usize) -> Result<Self, StoreError> {
        let reply = array(reply)?;
        let [status, in_flight, server_us, used @ ..] = reply.as_slice() else {
            return Err(protocol("an admission reply without its status"));
        };
        let status = int(status)?;
        let mut used = used.iter().map(int).collect::<Result<Vec<_>, _>>()?;
        if status != Self::TOO_LATE && used.len() < counters {
            return Err(protocol(
                "an admission reply with the wrong number of counts",
            ));
        }
        let granted = used.split_off(counters.min(used.len()));
        Ok(Self {
            status,
            in_flight: int(in_flight)?,
            server_ms: int(server_us)?.div_euclid(1000),
            server_us: int(server_us)?,
            used,
            granted,
        })
    }
}

/// What giving back a late admission needs.
pub(super) struct Late {
    pub(super) inner: Arc<Inner>,
    pub(super) org: Arc<ResolvedOrg>,
    /// The counters the admission was sent with, and their windows.
    pub(super) layout: Layout,
    pub(super) charge: Charge,
    pub(super) now: Timestamp,
    /// What giving back a quota grant the admission asked for needs.
    pub(super) asked: Option<super::grants::Asked>,
}

/// An admission script sent to Redis whose reply has not been read.
///
/// Dropped before [`reply`](Self::reply) returned the reply (the timeout passed, or the request
/// went away), it leaves the call to a background task that gives back what the script charged.
pub(super) struct Unanswered {
    call: Option<BoxFuture<'static, RedisResult<Value>>>,
    late: Option<Late>,
}

impl Unanswered {
    pub(super) fn new(call: BoxFuture<'static, RedisResult<Value>>, late: Late) -> Self {
        Self {
            call: Some(call),
            late: Some(late),
        }
    }

    /// The reply within `budget` (at most the store's timeout), with the admission's state handed
    /// back.
    pub(super) async fn reply(mut self, budget: Duration) -> Result<(Value, Late), StoreError> {
        let (Some(call), Some(late)) = (self.call.as_mut(), self.late.as_ref()) else {
            return Err(protocol("an admission without its call"));
        };
        let inner = Arc::clone(&late.inner);
        let outcome = tokio::time::timeout(budget, call).await;
        if outcome.is_ok() {
            // Answered (a reply or an error): nothing is left to wait for.
            self.call = None;
        }
        let value = inner.checked(outcome)?;
        match self.late.take() {
            Some(late) => Ok((value, late)),
            None => Err(protocol("an admission without its state")),
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let (Some(call), Some(late)) = (self.call.take(), self.late.take()) else {
            return;
        };
        let runtime = late.inner.runtime.clone();
        runtime.spawn(late.give_back(call));
    }
}

impl Late {
    /// Waits for the reply of `call` and gives back what its script charged, if it admitted.
    async fn give_back(mut self, call: BoxFuture<'static, RedisResult<Value>>) {
        let Ok(Ok(reply)) = tokio::time::timeout(LATE_REPLY_WAIT, call).await else {
            tracing::debug!(
                org = self.org.id().as_str(),
                "tollhouse: a late admission's reply never came; whether it charged is unknown"
            );
            return;
        };
        let reply = match AdmissionReply::parse(reply, self.layout.keys.len()) {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, "tollhouse: a late admission's reply could not be read");
                return;
            }
        };
        self.give_grant_back(&reply);
        let job = match self.refund(reply) {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "tollhouse: a late admission's reply could not be read");
                return;
            }
        };
        let result = self.inner.enqueue(Some(job)).await;
        match result {
            Ok(()) => {
                metrics::counter!(LATE_REFUNDS, "store" => "redis").increment(1);
                tracing::info!(
                    org = self.org.id().as_str(),
                    "tollhouse: an admission that ran after its request was answered without the \
                     store was given back"
                );
            }
            Err(error) => tracing::warn!(
                %error,
                org = self.org.id().as_str(),
                "tollhouse: giving back a late admission failed; its charge stays until its windows end"
            ),
        }
    }

    /// Gives back, whole, the quota grant a reply nobody read took.
    fn give_grant_back(&mut self, reply: &AdmissionReply) {
        if reply.status != AdmissionReply::ADMITTED {
            return;
        }
        if let Some(asked) = self.asked.take() {
            self.inner
                .give_back_asked(self.org.id(), asked, reply.granted.clone());
        }
    }

    /// The settle job that gives back what the admission answered by `reply` took from each tier,
    /// or `None` if it took nothing (it was rejected).
    fn refund(&mut self, reply: AdmissionReply) -> Result<Option<Job>, StoreError> {
        if reply.status != AdmissionReply::ADMITTED {
            return Ok(None);
        }
        self.layout.fill(reply.used, reply.server_us, self.now)?;
        let now = self.now;
        let keys = self.inner.keys(self.org.id());
        let mut job = self
            .inner
            .job(&keys, local_date(self.org.time_zone(), now), now);
        let mut first = 0;
        for (limit, state) in self.org.limits().iter().zip(&mut self.layout.states) {
            let tiers = limit.tiers().len();
            let counters = self
                .layout
                .keys
                .get(first..first + tiers)
                .unwrap_or_default();
            first += tiers;
            if let Some(rate) = limit.rate(now) {
                // What the script took from a rate: the charge, given back in full.
                let taken = self.charge.amount(limit.dimension());
                if let (Some(key), true) = (counters.first(), taken > 0) {
                    job.n_corrections += 1;
                    job.corrections.extend(["r".to_owned(), taken.to_string()]);
                    job.push_rate(key.clone(), rate.gcra().interval);
                }
                continue;
            }
            // What the script took: the same split, from the same counts.
            let caps = limit.capacities(now);
            let split = state.charge(&caps[..tiers], self.charge.amount(limit.dimension()));
            let taken: u64 = split.iter().sum();
            if taken == 0 {
                continue;
            }
            job.n_corrections += 1;
            job.corrections
                .extend(["r".to_owned(), taken.to_string(), tiers.to_string()]);
            let windows = limit.tiers().iter().map(|tier| tier.window());
            for (((tier, slot), counter), window) in
                state.tiers().iter().enumerate().zip(counters).zip(windows)
            {
                job.counters.push(counter.clone());
                let keep_until = self.inner.keep_until(window, slot.end);
                job.corrections.extend([
                    caps[tier].to_string(),
                    ttl(keep_until, now).to_string(),
                    keep_until.as_millis().to_string(),
                    split[tier].to_string(),
                ]);
            }
        }
        if job.n_corrections == 0 {
            return Ok(None);
        }
        Ok(Some(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_onto_redis_clock() {
        let clock = ServerClock::default();
        let timeout = Duration::from_millis(50);
        // Until a reply came, the clocks are taken to agree.
        assert_eq!(clock.deadline(0, 10_000, timeout), 10_050);
        // Redis ran the script at 20,500 on its clock; the reply arrived at 20,000 on ours.
        clock.observe(0, 20_500, 20_000);
        assert_eq!(clock.deadline(0, 30_000, timeout), 30_550);
        clock.observe(0, 39_900, 40_000);
        assert_eq!(clock.deadline(0, 50_000, timeout), 49_950);
    }

    #[test]
    fn each_cluster_slot_keeps_the_offset_of_its_node() {
        let clock = ServerClock::new(16_384);
        let timeout = Duration::from_millis(50);
        // The node of slot 7 runs a second ahead; the node of slot 9,000 agrees with us.
        clock.observe(7, 21_000, 20_000);
        clock.observe(9_000, 20_000, 20_000);
        assert_eq!(clock.deadline(7, 30_000, timeout), 31_050);
        assert_eq!(clock.deadline(9_000, 30_000, timeout), 30_050);
    }

    fn reply(values: &[i64]) -> Value {
        Value::Array(values.iter().map(|&value| Value::Int(value)).collect())
    }

    #[test]
    fn admission_replies_are_checked() -> Result<(), StoreError> {
        let admitted = AdmissionReply::parse(reply(&[1, 2, 1_000_999, 5, 6]), 2)?;
        assert_eq!(admitted.status, AdmissionReply::ADMITTED);
        assert_eq!(admitted.in_flight, 2);
        assert_eq!(admitted.server_ms, 1_000);
        assert_eq!(admitted.server_us, 1_000_999);
        assert_eq!(admitted.used, vec![5, 6]);
        let late = AdmissionReply::parse(reply(&[3, 0, 1_000]), 2)?;
        assert_eq!(late.status, AdmissionReply::TOO_LATE);
        assert!(late.used.is_empty());
        assert!(AdmissionReply::parse(reply(&[1, 2, 1_000, 5]), 2).is_err());
        assert!(AdmissionReply::parse(reply(&[1, 2]), 0).is_err());
        Ok(())
    }

    /// Redis at `TOLLHOUSE_REDIS_URL`; without it, `None` after a skip notice (a failure under
    /// `CI`, where Redis must be there). The end-to-end suite, which can also start a
    /// `redis-server` of its own, is in the `tests` crate.
    fn redis_url(test: &str) -> Option<String> {
        use std::io::Write as _;
        if let Ok(url) = std::env::var("TOLLHOUSE_REDIS_URL")
            && !url.is_empty()
        {
            return Some(url);
        }
        let message = format!(
            "SKIP: {test}: TOLLHOUSE_REDIS_URL is not set. Set TOLLHOUSE_REDIS_URL=redis://127.0.0.1:6379/"
        );
        let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
        assert!(!ci, "{message} (CI=true: a missing Redis fails the tests)");
        // Straight to stderr: the test harness captures `eprintln!`, and a skip should be seen.
        let _ = writeln!(std::io::stderr(), "{message}");
        None
    }

    #[tokio::test]
    async fn a_clock_offset_that_moved_costs_a_round_trip_not_an_error()
    -> Result<(), Box<dyn std::error::Error>> {
        let Some(url) = redis_url("a_clock_offset_that_moved_costs_a_round_trip_not_an_error")
        else {
            return Ok(());
        };
        let prefix = format!(
            "test:clock-offset:{:016x}:",
            wall_ms() ^ i64::from(std::process::id())
        );
        let store = RedisStore::builder()
            .prefix(prefix)
            .timeout(Duration::from_secs(2))
            .connect(&url)
            .await?;
        let policy = super::super::tests::daily_policy(5);
        let org = policy.org("acme").ok_or("no org acme")?;
        // This instance takes Redis's clock to be a minute behind its own, as if Redis's clock had
        // jumped a minute ahead since the last reply: every deadline it sends is a minute early.
        let at = wall_ms();
        store.inner.server_clock.observe(0, at - 60_000, at);
        let now = Timestamp::from_millis(at);
        let decision = store.admit(org, Charge::default(), now).await?;
        assert!(decision.is_admitted(), "{decision:?}");
        // The refused script's reply measured the offset anew (both clocks are this machine's).
        let offset = store.inner.server_clock.offset(0).load(Ordering::Relaxed);
        assert!(offset.abs() < 1_000, "offset {offset} ms");
        // Charged once: the script that ran past its deadline took nothing.
        let statuses = store.peek(org, now).await?;
        assert_eq!(statuses[0].remaining, 4);
        assert!(store.health().healthy);
        Ok(())
    }
}
