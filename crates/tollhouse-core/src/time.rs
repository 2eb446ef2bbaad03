//! Instants and the clock every decision reads.
//!
//! All arithmetic in tollhouse works on [`Timestamp`]s: milliseconds since the Unix epoch, UTC. Time
//! comes from a [`Clock`] the caller chooses, so tests and benchmarks travel across midnight, DST
//! changes and month ends without sleeping.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollhouse_core::{Clock, ManualClock, Timestamp};
//!
//! let clock = ManualClock::new(Timestamp::from_millis(1_000));
//! clock.advance(Duration::from_secs(59));
//! assert_eq!(clock.now(), Timestamp::from_millis(60_000));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};

/// An instant: whole milliseconds since the Unix epoch, in UTC.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// The instant `secs` seconds after the Unix epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Microseconds since the Unix epoch (the unit of a rate's arithmetic).
    pub const fn as_micros(self) -> i64 {
        self.0.saturating_mul(1000)
    }

    /// The instant `micros` microseconds after the Unix epoch, rounded up to a millisecond.
    pub const fn from_micros_ceil(micros: i64) -> Self {
        Self(micros.div_euclid(1000) + if micros.rem_euclid(1000) == 0 { 0 } else { 1 })
    }

    /// Whole seconds since the Unix epoch, rounded up (a reset announced in seconds never comes early).
    pub const fn as_secs_ceil(self) -> i64 {
        self.0.div_euclid(1000) + if self.0.rem_euclid(1000) == 0 { 0 } else { 1 }
    }

    /// This instant as a chrono UTC date-time. Instants more than 2^52 ms (about 142,000 years)
    /// from 1970 are read as that bound, so that any zone's local time of it stays inside chrono's
    /// range (a conversion past it would panic).
    pub fn to_utc(self) -> DateTime<Utc> {
        const BOUND: i64 = 1 << 52;
        Utc.timestamp_millis_opt(self.0.clamp(-BOUND, BOUND))
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The instant a chrono date-time in any zone stands for.
    pub fn from_datetime<Z: TimeZone>(at: &DateTime<Z>) -> Self {
        Self(at.timestamp_millis())
    }

    /// This instant plus `duration`, saturating.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// Milliseconds from `earlier` to `self` (negative when `earlier` is later).
    pub const fn millis_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl<Z: TimeZone> From<DateTime<Z>> for Timestamp {
    fn from(at: DateTime<Z>) -> Self {
        Self::from_datetime(&at)
    }
}

/// Where every decision reads the current time from.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;

    /// A reading that never goes back, for measuring how long something took: the time since an
    /// origin of the clock's choosing. A wall clock can be stepped (by NTP, by an operator) while
    /// requests are in flight; durations measured on this reading are not. The default reads
    /// [`now`](Self::now), for clocks whose instants never step back.
    fn monotonic(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.now().0).unwrap_or(0))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn monotonic(&self) -> Duration {
        (**self).monotonic()
    }
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// The operating system's monotonic clock, since the first reading in this process.
    fn monotonic(&self) -> Duration {
        static ORIGIN: std::sync::LazyLock<std::time::Instant> =
            std::sync::LazyLock::new(std::time::Instant::now);
        ORIGIN.elapsed()
    }
}

/// A clock that moves only when told to: for tests and benchmarks.
///
/// Clones share the same time, so a test can keep one handle and give another to the engine.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Moves the clock to `at` (forwards or backwards).
    pub fn set(&self, at: Timestamp) {
        self.millis.store(at.0, Ordering::SeqCst);
    }

    /// Moves the clock forwards by `by`.
    pub fn advance(&self, by: Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.millis.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(Timestamp::from_millis(1_000).as_secs_ceil(), 1);
        assert_eq!(Timestamp::from_millis(1_001).as_secs_ceil(), 2);
        assert_eq!(Timestamp::from_millis(-1).as_secs_ceil(), 0);
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(Timestamp::from_secs(10));
        let other = clock.clone();
        other.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now(), Timestamp::from_millis(11_500));
        clock.set(Timestamp::from_secs(5));
        assert_eq!(other.now(), Timestamp::from_secs(5));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > Timestamp::from_secs(1_577_836_800));
    }
}
