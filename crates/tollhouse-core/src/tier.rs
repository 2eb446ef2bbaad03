//! Spill-over across the tiers of one limit: pure arithmetic that reads no clock.
//!
//! A limit's tiers are drained shortest window first; when one is empty the next pays, and a charge
//! may be split across tiers. Only the last tier may go below zero (a latency debit or a cost
//! correction larger than what is left); that debt stays until its window ends.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::tier::LimitState;
//!
//! let capacities = [100, 2600, 1150];
//! let mut state = LimitState::fresh(3);
//! state.set_used(0, 99);
//! let split = state.charge(&capacities, 3);
//! assert_eq!(split, [1, 2, 0, 0, 0, 0, 0, 0]);
//! assert_eq!(state.available(&capacities), 100 + 2600 + 1150 - 102);
//! ```

use crate::time::Timestamp;

/// At most eight tiers a limit, each window longer than the one before.
pub const MAX_TIERS: usize = 8;

/// The state of one tier: the window it counts in and what it used there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TierState {
    /// First instant of the window the count belongs to.
    pub start: Timestamp,
    /// First instant after it; at or after this the tier is fresh again.
    pub end: Timestamp,
    /// Units used in the window (above the capacity only for the last tier's debt).
    pub used: i64,
}

/// The state of every tier of one limit.
// `len` first: a one-tier limit's state is then read from one cache line, not two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct LimitState {
    len: u8,
    tiers: [TierState; MAX_TIERS],
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl LimitState {
    /// A state of `len` fresh tiers whose windows have already ended (so the first use opens them).
    pub fn fresh(len: usize) -> Self {
        Self {
            tiers: [TierState::default(); MAX_TIERS],
            len: len.min(MAX_TIERS) as u8,
        }
    }

    /// The tiers, shortest window first.
    pub fn tiers(&self) -> &[TierState] {
        &self.tiers[..usize::from(self.len)]
    }

    /// The tiers, mutably.
    pub fn tiers_mut(&mut self) -> &mut [TierState] {
        &mut self.tiers[..usize::from(self.len)]
    }

    /// Sets what tier `tier` used (for tests and stores that keep counts elsewhere).
    pub fn set_used(&mut self, tier: usize, used: i64) {
        if let Some(state) = self.tiers_mut().get_mut(tier) {
            state.used = used;
        }
    }

    /// A rate limit's state, its theoretical arrival time in microseconds (see
    /// [`Gcra`](crate::rate::Gcra)); kept in its one slot's `used`.
    pub fn tat(&self) -> i64 {
        self.tiers[0].used
    }

    /// Sets a rate limit's state; its slot's `end` becomes the instant the bucket is full again,
    /// so that the slot is kept (saved, not idle) exactly while it is not.
    pub fn set_tat(&mut self, tat: i64) {
        self.len = self.len.max(1);
        self.tiers[0] = TierState {
            start: Timestamp::default(),
            end: Timestamp::from_micros_ceil(tat),
            used: tat,
        };
    }

    /// What tier `tier` still holds; negative for the last tier's debt.
    pub fn remaining(&self, capacities: &[u64], tier: usize) -> i64 {
        signed(capacities[tier]) - self.tiers[tier].used
    }

    /// What the tiers hold together: every tier but the last counts what it holds (never less than
    /// zero); the last counts its debt too.
    pub fn available(&self, capacities: &[u64]) -> i64 {
        self.available_where(capacities, |_| false)
    }

    /// What the tiers will hold together at `at`, when every window that ends by then has
    /// refilled (and nothing more was charged).
    pub fn available_at(&self, capacities: &[u64], at: Timestamp) -> i64 {
        self.available_where(capacities, |state| state.end <= at)
    }

    /// [`available`](Self::available), counting the tiers for which `fresh` holds as unused.
    fn available_where(&self, capacities: &[u64], fresh: impl Fn(&TierState) -> bool) -> i64 {
        let last = usize::from(self.len).saturating_sub(1);
        self.tiers()
            .iter()
            .enumerate()
            .map(|(tier, state)| {
                let used = if fresh(state) { 0 } else { state.used };
                let remaining = signed(capacities[tier]) - used;
                if tier == last {
                    remaining
                } else {
                    remaining.max(0)
                }
            })
            .sum()
    }

    /// Charges `amount`, shortest window first; what the tiers cannot hold goes on the last tier as
    /// debt. Returns what each tier took.
    pub fn charge(&mut self, capacities: &[u64], amount: u64) -> [u64; MAX_TIERS] {
        let mut split = [0u64; MAX_TIERS];
        let mut left = amount;
        let last = usize::from(self.len).saturating_sub(1);
        for (tier, taken) in split.iter_mut().enumerate().take(usize::from(self.len)) {
            if left == 0 {
                break;
            }
            let take = if tier == last {
                left
            } else {
                left.min(u64::try_from(self.remaining(capacities, tier).max(0)).unwrap_or(0))
            };
            self.tiers[tier].used = self.tiers[tier].used.saturating_add(signed(take));
            *taken = take;
            left -= take;
        }
        split
    }

    /// Gives back up to `amount` of what a charge took (`split`, taken in the windows starting at
    /// `starts`), longest window first, skipping tiers whose window has since changed. Returns what
    /// was given back.
    pub fn refund(
        &mut self,
        split: &[u64; MAX_TIERS],
        starts: &[Timestamp; MAX_TIERS],
        amount: u64,
    ) -> u64 {
        let mut left = amount;
        for tier in (0..usize::from(self.len)).rev() {
            if left == 0 {
                break;
            }
            let state = &mut self.tiers[tier];
            if state.start != starts[tier] {
                continue;
            }
            let back = left
                .min(split[tier])
                .min(u64::try_from(state.used.max(0)).unwrap_or(0));
            state.used -= signed(back);
            left -= back;
        }
        amount - left
    }

    /// The earliest instant at or after `now` at which the tiers hold enough, if no one else charges:
    /// `need` units, or (with `need == 0`) more than zero. Tiers refill when their windows end;
    /// `capacity_at(tier, instant)` gives the capacity then. `None` if refilling every tier is not enough.
    pub fn ready_at(
        &self,
        capacities: &[u64],
        need: u64,
        now: Timestamp,
        capacity_at: impl Fn(usize, Timestamp) -> u64,
    ) -> Option<Timestamp> {
        let enough = |available: i64| {
            if need == 0 {
                available > 0
            } else {
                available >= signed(need)
            }
        };
        self.ready_when(capacities, now, capacity_at, enough)
    }

    /// The earliest instant at or after `now` at which what the tiers hold satisfies `enough`, if
    /// no one else charges; tiers refill as in [`ready_at`](Self::ready_at).
    pub fn ready_when(
        &self,
        capacities: &[u64],
        now: Timestamp,
        capacity_at: impl Fn(usize, Timestamp) -> u64,
        enough: impl Fn(i64) -> bool,
    ) -> Option<Timestamp> {
        if enough(self.available(capacities)) {
            return Some(now);
        }
        let len = usize::from(self.len);
        let mut order: [usize; MAX_TIERS] = std::array::from_fn(|tier| tier);
        order[..len].sort_by_key(|&tier| self.tiers[tier].end);
        let mut future = *self;
        let mut caps = [0u64; MAX_TIERS];
        caps[..len].copy_from_slice(&capacities[..len]);
        for &tier in &order[..len] {
            let at = self.tiers[tier].end.max(now);
            future.tiers[tier].used = 0;
            caps[tier] = capacity_at(tier, at);
            if enough(future.available(&caps[..len])) {
                return Some(at);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_spills_over_in_order() {
        let caps = [100, 2600, 1150];
        let mut state = LimitState::fresh(3);
        assert_eq!(state.charge(&caps, 150), [100, 50, 0, 0, 0, 0, 0, 0]);
        assert_eq!(state.charge(&caps, 2600), [0, 2550, 50, 0, 0, 0, 0, 0]);
        assert_eq!(state.available(&caps), 1100);
    }

    #[test]
    fn only_the_last_tier_goes_into_debt() {
        let caps = [10, 20];
        let mut state = LimitState::fresh(2);
        assert_eq!(state.charge(&caps, 45), [10, 35, 0, 0, 0, 0, 0, 0]);
        assert_eq!(state.remaining(&caps, 1), -15);
        assert_eq!(state.available(&caps), -15);
    }

    #[test]
    fn refund_returns_to_the_tiers_that_paid_longest_first() {
        let caps = [10, 20];
        let mut state = LimitState::fresh(2);
        state.charge(&caps, 8);
        let starts = [Timestamp::default(); MAX_TIERS];
        let split = state.charge(&caps, 5);
        assert_eq!(split, [2, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(state.refund(&split, &starts, 4), 4);
        assert_eq!(state.tiers()[1].used, 0);
        assert_eq!(state.tiers()[0].used, 9);
    }

    #[test]
    fn refund_skips_a_window_that_changed() {
        let caps = [10];
        let mut state = LimitState::fresh(1);
        let split = state.charge(&caps, 5);
        let old = [Timestamp::from_millis(1); MAX_TIERS];
        assert_eq!(state.refund(&split, &old, 5), 0);
        assert_eq!(state.tiers()[0].used, 5);
    }

    #[test]
    fn ready_at_walks_refills_in_time_order() {
        let caps = [100, 2600];
        let mut state = LimitState::fresh(2);
        state.tiers_mut()[0] = TierState {
            start: Timestamp::from_secs(0),
            end: Timestamp::from_secs(60),
            used: 100,
        };
        state.tiers_mut()[1] = TierState {
            start: Timestamp::from_secs(0),
            end: Timestamp::from_secs(3600),
            used: 2600,
        };
        let now = Timestamp::from_secs(30);
        assert_eq!(
            state.ready_at(&caps, 1, now, |t, _| caps[t]),
            Some(Timestamp::from_secs(60))
        );
        assert_eq!(
            state.ready_at(&caps, 101, now, |t, _| caps[t]),
            Some(Timestamp::from_secs(3600))
        );
        assert_eq!(state.ready_at(&caps, 2701, now, |t, _| caps[t]), None);
    }
}
