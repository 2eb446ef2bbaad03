//! A smooth rate with a burst: the generic cell rate algorithm (GCRA), in integer microseconds.
//!
//! A [`Rate`] of A units per window, with a burst of B, holds up to B units and gives one back
//! every `per / A` (the emission interval T, rounded up to a whole microsecond so the rate is never
//! exceeded). Its whole state is one instant, the theoretical arrival time `tat`: the bucket is
//! full when `tat` is at or before now, and holds `B - ⌈(tat - now) / T⌉` units otherwise. A
//! charge of n units is admitted when they are there, and moves `tat` to `max(tat, now) + n·T`.
//!
//! The same integer arithmetic runs in the Redis store's script, where numbers are doubles: every
//! value stays below 2^53 (instants until the year 2255; a bucket takes at most [`MAX_FILL_US`] to
//! fill, and a debt is capped at that), so both decide alike.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Rate, Window};
//!
//! // 2 a second with a burst of 6: 6 at once, then one every 0.5 s.
//! let rate = Rate::new(2, Window::Second, Some(6))?;
//! let gcra = rate.gcra();
//! let mut tat = 0;
//! let now = 1_000_000_000_000; // µs
//! for _ in 0..6 {
//!     assert!(gcra.fits(tat, now, 1));
//!     tat = gcra.charged(tat, now, 1);
//! }
//! assert!(!gcra.fits(tat, now, 1));
//! assert_eq!(gcra.ready_at(tat, 1), Some(now + 500_000));
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use crate::error::PolicyError;
use crate::plan::MAX_CAPACITY;
use crate::window::Window;

/// The longest an empty bucket may take to fill, and the deepest debt it may hold: 2^50 µs
/// (about 35 years). Keeps every instant of the arithmetic exact in a double.
pub const MAX_FILL_US: i64 = 1 << 50;

/// A smooth rate: `amount` units per `per` (at its nominal length), holding up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    amount: u64,
    per: Window,
    burst: u64,
    /// The emission interval in µs, worked out once: a division is the dearest step of a decision.
    interval: i64,
}

impl Rate {
    /// A rate of `amount` units per `per`, holding up to `burst` (default: `amount`).
    pub fn new(amount: u64, per: Window, burst: Option<u64>) -> Result<Self, PolicyError> {
        let burst = burst.unwrap_or(amount);
        for (field, value) in [("amount", amount), ("burst", burst)] {
            if value == 0 {
                return Err(PolicyError::invalid(
                    field,
                    format!("a rate with {field} 0 admits nothing"),
                    format!("set {field} to at least 1"),
                ));
            }
            if value > MAX_CAPACITY {
                return Err(PolicyError::invalid(
                    field,
                    format!("{field} {value} is more than tollhouse counts ({MAX_CAPACITY})"),
                    format!("set {field} to at most {MAX_CAPACITY}"),
                ));
            }
        }
        let rate = Self::of(amount, per, burst);
        let per_us = rate.per_us();
        // A unit comes back every whole microsecond: a finer interval would be rounded up and the
        // rate run slower than declared. Refused past a thousandth of a difference.
        if rate
            .interval
            .saturating_mul(i64::try_from(amount).unwrap_or(i64::MAX))
            > per_us.saturating_add(per_us / 1000)
        {
            let exact = per_us / rate.interval;
            return Err(PolicyError::invalid(
                "amount",
                format!(
                    "{amount} per {per} gives a unit back every {:.3} µs, finer than the \
                     microsecond tollhouse counts in; it would run at {exact} per {per}",
                    per_us as f64 / amount as f64
                ),
                format!(
                    "give the amount per a longer window (per = \"{}\"), or use an amount whose \
                     units come back a whole number of microseconds apart, such as {exact}",
                    Window::Minute
                ),
            ));
        }
        if rate.gcra().fill_us() > MAX_FILL_US {
            return Err(PolicyError::invalid(
                "burst",
                format!(
                    "a burst of {burst} at {amount} per {per} takes more than 35 years to fill"
                ),
                "lower the burst, or raise the amount or shorten `per`",
            ));
        }
        Ok(rate)
    }

    /// Units given back per `per`.
    pub const fn amount(&self) -> u64 {
        self.amount
    }

    /// The window whose nominal length the amount is given back over.
    pub const fn per(&self) -> Window {
        self.per
    }

    /// The most units the bucket holds.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The nominal length of `per` in microseconds.
    fn per_us(&self) -> i64 {
        per_us(self.per)
    }

    /// The rate, its interval worked out.
    fn of(amount: u64, per: Window, burst: u64) -> Self {
        let per_us = per_us(per);
        let interval = ceil_div(per_us, i64::try_from(amount).unwrap_or(i64::MAX).max(1)).max(1);
        Self {
            amount,
            per,
            burst,
            interval,
        }
    }

    /// The same rate with `amount` and `burst` replaced (for sandbox and overrides; both at least
    /// 1), checked as [`Rate::new`] checks a rate: a bucket that takes too long to fill, or an
    /// amount too fine to count, is refused.
    pub(crate) fn with(self, amount: u64, burst: u64) -> Result<Self, PolicyError> {
        Self::new(amount.max(1), self.per, Some(burst.max(1)))
    }

    /// Its arithmetic.
    pub fn gcra(&self) -> Gcra {
        Gcra {
            interval: self.interval,
            burst: i64::try_from(self.burst).unwrap_or(i64::MAX),
        }
    }

    /// The seconds an empty bucket takes to fill as declared, ⌈burst · per / amount⌉, rounded up:
    /// the `w` of the headers.
    pub fn fill_secs(&self) -> u64 {
        let seconds = u128::from(self.burst) * u128::from(self.per.nominal_secs());
        u64::try_from(seconds.div_ceil(u128::from(self.amount.max(1)))).unwrap_or(u64::MAX)
    }
}

/// The nominal length of `per` in microseconds.
fn per_us(per: Window) -> i64 {
    i64::try_from(per.nominal_secs())
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000)
}

/// `a / b` rounded up, for `a >= 0` and `b >= 1`.
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The arithmetic of a [`Rate`]: an emission interval and a burst. Instants are microseconds
/// since 1970.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gcra {
    /// Microseconds per unit given back (at least 1).
    pub interval: i64,
    /// The most units the bucket holds.
    pub burst: i64,
}

impl Gcra {
    /// How long an empty bucket takes to fill.
    pub fn fill_us(&self) -> i64 {
        self.burst.saturating_mul(self.interval)
    }

    /// The units there at `now` for state `tat`: below zero while a debt is paid off.
    pub fn available(&self, tat: i64, now: i64) -> i64 {
        let backlog = tat.saturating_sub(now);
        if backlog <= 0 {
            // Full: no division.
            return self.burst;
        }
        self.burst - ceil_div(backlog, self.interval)
    }

    /// Whether `units` are there at `now` (0 units fit while no debt is owed).
    pub fn fits(&self, tat: i64, now: i64, units: u64) -> bool {
        i64::try_from(units).is_ok_and(|units| units <= self.available(tat, now))
    }

    /// Whether anything is there at `now`: what a latency budget asks.
    pub fn has_any(&self, tat: i64, now: i64) -> bool {
        self.available(tat, now) > 0
    }

    /// The state after charging `units` at `now` (a debt deeper than [`MAX_FILL_US`] is capped).
    pub fn charged(&self, tat: i64, now: i64, units: u64) -> i64 {
        let from = tat.max(now);
        let cost = i64::try_from(units)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.interval);
        from.saturating_add(cost.min(MAX_FILL_US))
            .min(now.saturating_add(MAX_FILL_US))
    }

    /// The state after giving back `units` at `now` (never fuller than full).
    pub fn refunded(&self, tat: i64, now: i64, units: u64) -> i64 {
        if tat <= now {
            return tat;
        }
        let back = i64::try_from(units)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.interval);
        tat.saturating_sub(back).max(now)
    }

    /// The first instant at which `units` are there (0 units: no debt), if no one else charges;
    /// `None` if they never can be (more than the burst). A latency budget, which asks for
    /// anything, asks for 1.
    pub fn ready_at(&self, tat: i64, units: u64) -> Option<i64> {
        let needed = i64::try_from(units).ok()?;
        if needed > self.burst {
            return None;
        }
        Some(tat.saturating_sub((self.burst - needed).saturating_mul(self.interval)))
    }

    /// When the units there next rise above what they are at `now` (from a debt, when one is
    /// there again); `None` when the bucket is full.
    pub fn next_rise(&self, tat: i64, now: i64) -> Option<i64> {
        let backlog = tat.saturating_sub(now);
        if backlog <= 0 {
            return None;
        }
        if self.available(tat, now) <= 0 {
            // What is there shows as 0 until the debt is paid and one unit is back.
            return self.ready_at(tat, 1).map(|at| at.max(now + 1));
        }
        Some(now + (backlog - 1) % self.interval + 1)
    }

    /// When the bucket is full again: `tat`, or `now` if it is full already.
    pub fn full_at(&self, tat: i64, now: i64) -> i64 {
        tat.max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000_000;

    fn rate(amount: u64, per: Window, burst: u64) -> Gcra {
        Rate::new(amount, per, Some(burst))
            .expect("a valid rate")
            .gcra()
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let gcra = rate(2, Window::Second, 6);
        assert_eq!(gcra.interval, 500_000);
        let mut tat = 0;
        for left in (0..6).rev() {
            assert!(gcra.fits(tat, NOW, 1));
            tat = gcra.charged(tat, NOW, 1);
            assert_eq!(gcra.available(tat, NOW), left);
        }
        assert_eq!(gcra.ready_at(tat, 1), Some(NOW + 500_000));
        assert!(!gcra.fits(tat, NOW + 499_999, 1));
        assert!(gcra.fits(tat, NOW + 500_000, 1));
        assert_eq!(gcra.next_rise(tat, NOW + 100_000), Some(NOW + 500_000));
        assert_eq!(gcra.full_at(tat, NOW), NOW + 3_000_000);
        assert_eq!(gcra.next_rise(tat, NOW + 3_000_000), None);
    }

    #[test]
    fn ten_a_second_with_a_burst_of_twenty_admits_thirty_in_the_first_second() {
        let gcra = rate(10, Window::Second, 20);
        let mut tat = 0;
        let mut admitted = 0;
        // One try every millisecond from 0 to 1 s inclusive.
        for ms in 0..=1_000 {
            let now = NOW + ms * 1_000;
            while gcra.fits(tat, now, 1) {
                tat = gcra.charged(tat, now, 1);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 30);
    }

    #[test]
    fn a_charge_larger_than_the_burst_never_fits() {
        let gcra = rate(10, Window::Second, 20);
        assert!(!gcra.fits(0, NOW, 21));
        assert_eq!(gcra.ready_at(0, 21), None);
        assert_eq!(gcra.ready_at(0, 20), Some(0));
        // An empty bucket fits a charge of 0.
        let empty = gcra.charged(0, NOW, 20);
        assert!(gcra.fits(empty, NOW, 0));
        assert!(!gcra.has_any(empty, NOW));
    }

    #[test]
    fn a_latency_budget_admits_while_anything_is_there_and_may_go_into_debt() {
        // 1,000 ms of handler time a second, bursts of 2,000.
        let gcra = rate(1_000, Window::Second, 2_000);
        let tat = gcra.charged(0, NOW, 5_000);
        assert_eq!(gcra.available(tat, NOW), -3_000);
        assert!(!gcra.has_any(tat, NOW));
        // Something is there once the debt and one unit are paid: 3.001 s later, which is also
        // when what shows (0 during a debt) next rises.
        assert_eq!(gcra.ready_at(tat, 1), Some(NOW + 3_001_000));
        assert_eq!(gcra.next_rise(tat, NOW), Some(NOW + 3_001_000));
        assert!(gcra.has_any(tat, NOW + 3_001_000));
        // A charge of 0 fits once the debt is paid, not before.
        assert!(!gcra.fits(tat, NOW, 0));
        assert_eq!(gcra.ready_at(tat, 0), Some(NOW + 3_000_000));
    }

    #[test]
    fn refunds_never_fill_past_full() {
        let gcra = rate(1, Window::Second, 5);
        let tat = gcra.charged(0, NOW, 3);
        assert_eq!(gcra.refunded(tat, NOW, 2), NOW + 1_000_000);
        assert_eq!(gcra.refunded(tat, NOW, 10), NOW);
        assert_eq!(gcra.refunded(NOW - 5, NOW, 1), NOW - 5);
    }

    #[test]
    fn the_interval_rounds_up_and_debts_are_capped() {
        // 3 a second: 333,334 µs each, never more than 3 a second.
        assert_eq!(rate(3, Window::Second, 3).interval, 333_334);
        let yearly = rate(1, Window::Year, 1);
        let tat = yearly.charged(0, NOW, u64::MAX);
        assert_eq!(tat, NOW + MAX_FILL_US);
        assert!(Rate::new(1, Window::Year, Some(100)).is_err());
        assert!(Rate::new(0, Window::Second, None).is_err());
        assert_eq!(
            Rate::new(10, Window::Second, Some(25))
                .expect("valid")
                .fill_secs(),
            3
        );
    }

    #[test]
    fn w_is_the_declared_fill_time_rounded_up() {
        let w = |amount, per, burst| {
            Rate::new(amount, per, burst)
                .expect("a valid rate")
                .fill_secs()
        };
        // ⌈B·per/A⌉, not the sum of rounded-up intervals (3 × 333,334 µs is a hair over 1 s).
        assert_eq!(w(3, Window::Second, None), 1);
        assert_eq!(w(7, Window::Minute, None), 60);
        let ten_seconds = "10 seconds".parse().expect("a window");
        assert_eq!(w(3, ten_seconds, None), 10);
        assert_eq!(w(2, Window::Second, Some(5)), 3);
    }

    #[test]
    fn an_amount_finer_than_a_microsecond_apart_is_refused() {
        // 600,000 a second would be a unit every 1.667 µs: rounded up to 2, it would run at
        // 500,000 a second.
        let error = Rate::new(600_000, Window::Second, None).expect_err("too fine");
        let text = error.to_string();
        assert!(text.contains("500000 per second"), "{text}");
        assert_eq!(error.place(), Some("amount"));
        // Whole microseconds apart, or within a thousandth: accepted.
        assert!(Rate::new(1_000_000, Window::Second, None).is_ok());
        assert!(Rate::new(500_000, Window::Second, None).is_ok());
        assert!(Rate::new(999_999, Window::Hour, None).is_ok());
        assert!(Rate::new(999_999, Window::Minute, None).is_err());
        assert!(Rate::new(600_000, Window::Minute, None).is_ok());
    }
}
