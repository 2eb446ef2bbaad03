//! Whether Redis answers: one log line per transition, and two metrics.
//!
//! - `tollhouse_store_up{store="redis"}` (gauge): 1 while calls succeed, 0 from the first failure
//!   until the next success.
//! - `tollhouse_redis_errors_total{kind="unavailable"|"timeout"|"protocol"}` (counter): every
//!   failed call. (The layer counts the failures it sees, of any store, in
//!   `tollhouse_store_errors_total`; a name of its own keeps the two from being summed.)
//!
//! The first failure after a success logs a warning, and the first success after it logs that the
//! store is back and how long it was down; a store that flaps (a timeout now and then on a busy
//! host) logs this pair at most once every [`LOG_EVERY`].
//!
//! After [`TRIP_AFTER`] failures in a row, Redis is taken to be down: admissions fail at once
//! instead of each waiting out the timeout, and one admission every [`PROBE_INTERVAL`] goes through
//! to see whether Redis answers again; the first that does puts the store back in service.
//! (Settlements, records and refunds always go through.) An occasional timeout between successes,
//! as on a host short of CPU, does not trip it: failing fast would let even more requests through
//! unmetered under `on_store_error = "allow"`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tollhouse_core::StoreError;

const UP: &str = "tollhouse_store_up";
const ERRORS: &str = "tollhouse_redis_errors_total";

/// The store's health as the operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether the last call to Redis succeeded.
    pub healthy: bool,
    /// When the store last became healthy or unhealthy (its creation, if it never changed).
    pub since: SystemTime,
    /// Calls that failed (errors and timeouts) since the store was created.
    pub errors: u64,
}

impl Health {
    /// How long the store has been in its current state.
    pub fn for_how_long(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.since)
            .unwrap_or(Duration::ZERO)
    }
}

/// While Redis is failing, how often an admission is let through to find out whether it answers.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(PROBE_INTERVAL_MS);
const PROBE_INTERVAL_MS: u64 = 250;

/// How many calls must fail in a row, with no success between, before admissions fail fast.
pub const TRIP_AFTER: u32 = 5;

/// At most one "failing" warning (and its "answering again" line) this often.
pub const LOG_EVERY: Duration = Duration::from_millis(LOG_EVERY_MS);
const LOG_EVERY_MS: u64 = 10_000;

/// An admission refused without calling Redis, which failed moments ago.
#[derive(Debug, thiserror::Error)]
#[error(
    "redis failed moments ago; admissions fail at once until one of the probes sent every {:?} gets an answer",
    PROBE_INTERVAL
)]
pub struct FailingFast;

#[derive(Debug)]
pub(crate) struct HealthState {
    up: AtomicBool,
    since: Mutex<SystemTime>,
    errors: AtomicU64,
    /// The instant the millisecond counts below are measured from.
    origin: Instant,
    /// While down: when (ms after `origin`) the next admission may go through as a probe.
    next_probe_ms: AtomicU64,
    /// Calls failed since the last success.
    failures_in_row: AtomicU32,
    /// When (ms after `origin`, plus one; 0 for never) the last "failing" warning was logged.
    warned_ms: AtomicU64,
    /// Whether the current failure was announced, so that its recovery is too.
    announced: AtomicBool,
}

impl HealthState {
    pub(crate) fn new() -> Self {
        metrics::gauge!(UP, "store" => "redis").set(1.0);
        Self {
            up: AtomicBool::new(true),
            since: Mutex::new(SystemTime::now()),
            errors: AtomicU64::new(0),
            origin: Instant::now(),
            next_probe_ms: AtomicU64::new(0),
            failures_in_row: AtomicU32::new(0),
            warned_ms: AtomicU64::new(0),
            announced: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether an admission may call Redis now: always, unless [`TRIP_AFTER`] calls in a row
    /// failed; then one admission per [`PROBE_INTERVAL`], and the others get [`FailingFast`] at
    /// once.
    pub(crate) fn gate(&self) -> Result<(), StoreError> {
        // The common case is one relaxed load.
        if self.up.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.gate_at(self.elapsed_ms())
    }

    fn gate_at(&self, now_ms: u64) -> Result<(), StoreError> {
        if self.failures_in_row.load(Ordering::Relaxed) < TRIP_AFTER {
            return Ok(());
        }
        let due = self.next_probe_ms.load(Ordering::Acquire);
        if now_ms >= due
            && self
                .next_probe_ms
                .compare_exchange(
                    due,
                    now_ms.saturating_add(PROBE_INTERVAL_MS),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Ok(());
        }
        Err(StoreError::Unavailable(Box::new(FailingFast)))
    }

    pub(crate) fn snapshot(&self) -> Health {
        Health {
            healthy: self.up.load(Ordering::Acquire),
            since: *self.since.lock(),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// A call succeeded.
    pub(crate) fn success(&self) {
        // The common case is one relaxed load: nothing changes while healthy.
        if self.up.load(Ordering::Relaxed) {
            return;
        }
        self.failures_in_row.store(0, Ordering::Relaxed);
        if self.up.swap(true, Ordering::AcqRel) {
            return;
        }
        metrics::gauge!(UP, "store" => "redis").set(1.0);
        if !self.announced.swap(false, Ordering::AcqRel) {
            return;
        }
        let down_for = {
            let mut since = self.since.lock();
            let down_for = SystemTime::now()
                .duration_since(*since)
                .unwrap_or(Duration::ZERO);
            *since = SystemTime::now();
            down_for
        };
        tracing::info!(
            down_for_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
            "redis store is answering again; limits are enforced again"
        );
    }

    /// A call failed with `error`.
    pub(crate) fn failure(&self, error: &StoreError) {
        self.failure_at(error, self.elapsed_ms());
    }

    /// A call made after a response (a settlement, a record, a renewal, a release) failed: it
    /// is counted, but only admissions decide whether the store is failing, so work behind the
    /// responses never makes admissions fail fast.
    pub(crate) fn failure_aside(&self, error: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        count_error(error);
    }

    fn failure_at(&self, error: &StoreError, now_ms: u64) {
        self.next_probe_ms
            .store(now_ms.saturating_add(PROBE_INTERVAL_MS), Ordering::Release);
        self.failures_in_row.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        count_error(error);
        if !self.up.swap(false, Ordering::AcqRel) {
            return;
        }
        *self.since.lock() = SystemTime::now();
        metrics::gauge!(UP, "store" => "redis").set(0.0);
        // A flapping store would log a pair of lines per flap: one warning per LOG_EVERY at most.
        let last = self.warned_ms.load(Ordering::Acquire);
        let due = last == 0 || now_ms.saturating_add(1).saturating_sub(last) >= LOG_EVERY_MS;
        if !due
            || self
                .warned_ms
                .compare_exchange(
                    last,
                    now_ms.saturating_add(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        self.announced.store(true, Ordering::Release);
        let source = std::error::Error::source(error).map(ToString::to_string);
        tracing::warn!(
            %error,
            source = source.as_deref().unwrap_or(""),
            "redis store is failing; requests follow on_store_error until it answers again \
             (logged at most once every 10 s)"
        );
    }

    /// Whether admissions are failing fast now (for tests).
    #[cfg(test)]
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the last failure was announced in the log (for tests).
    #[cfg(test)]
    fn announced(&self) -> bool {
        self.announced.load(Ordering::Acquire)
    }
}

/// Counts a failed call in `tollhouse_redis_errors_total{kind}`.
fn count_error(error: &StoreError) {
    let kind = match error {
        StoreError::Timeout(_) => "timeout",
        StoreError::Protocol(_) => "protocol",
        _ => "unavailable",
    };
    metrics::counter!(ERRORS, "kind" => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_once_per_burst() {
        let health = HealthState::new();
        assert!(health.snapshot().healthy);
        let before = health.snapshot().since;
        health.failure(&StoreError::Timeout(Duration::from_millis(50)));
        health.failure(&StoreError::Timeout(Duration::from_millis(50)));
        let down = health.snapshot();
        assert!(!down.healthy);
        assert_eq!(down.errors, 2);
        assert!(down.since >= before);
        health.success();
        health.success();
        let up = health.snapshot();
        assert!(up.healthy);
        assert!(up.since >= down.since);
        assert_eq!(up.errors, 2);
    }

    #[test]
    fn while_down_one_admission_per_interval_goes_through() {
        let health = HealthState::new();
        let interval = PROBE_INTERVAL_MS;
        assert!(
            health.gate_at(0).is_ok(),
            "healthy: every call goes through"
        );
        let timeout = StoreError::Timeout(Duration::from_millis(50));
        // A failure now and then, between successes, trips nothing.
        for _ in 0..3 {
            health.failure_at(&timeout, 500);
            assert!(health.gate_at(510).is_ok());
            health.success();
        }
        for at in 996..1_000 {
            health.failure_at(&timeout, at);
            assert!(health.gate_at(at).is_ok(), "{} in a row", at - 995);
        }
        health.failure_at(&timeout, 1_000);
        let refused = health.gate_at(1_010).expect_err("failing fast");
        assert!(
            std::error::Error::source(&refused).is_some_and(|source| source.is::<FailingFast>()),
            "{refused:?}"
        );
        assert!(health.gate_at(1_000 + interval - 1).is_err());
        // The interval is up: one probe, and the others keep failing fast while it runs.
        assert!(health.gate_at(1_000 + interval).is_ok());
        assert!(health.gate_at(1_000 + interval + 1).is_err());
        // The probe failed too: the next one comes an interval after it.
        health.failure_at(&StoreError::Timeout(Duration::from_millis(50)), 1_300);
        assert!(health.gate_at(1_300 + interval - 1).is_err());
        assert!(health.gate_at(1_300 + interval).is_ok());
        // It answered: back in service.
        health.success();
        assert!(health.gate().is_ok() && health.gate().is_ok());
        // Refusals are not calls to Redis: only the failures are counted.
        assert_eq!(health.snapshot().errors, 3 + u64::from(TRIP_AFTER) + 1);
    }

    #[test]
    fn a_flapping_store_is_announced_once_every_log_interval() {
        let health = HealthState::new();
        let timeout = StoreError::Timeout(Duration::from_millis(50));
        let every = LOG_EVERY_MS;
        health.failure_at(&timeout, 1_000);
        assert!(health.announced(), "the first failure is announced");
        health.success();
        assert!(!health.announced(), "and so is its recovery");
        // Flaps within the interval are not.
        health.failure_at(&timeout, 1_500);
        assert!(!health.announced());
        health.success();
        health.failure_at(&timeout, 1_000 + every);
        assert!(health.announced(), "the interval is up");
    }

    #[test]
    fn failures_after_responses_never_make_admissions_fail_fast() {
        let health = HealthState::new();
        for _ in 0..100 {
            health.failure_aside(&StoreError::Timeout(Duration::from_millis(50)));
        }
        assert!(health.is_up());
        assert!(health.gate().is_ok());
        assert_eq!(health.snapshot().errors, 100, "still counted");
    }
}
