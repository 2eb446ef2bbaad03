//! The numbers a decision shows: per limit and per tier, what is left and when it refills.
//!
//! A store decides under the org's lock; it only copies the org's counts into a [`Snapshot`] there.
//! The numbers (the headers' limit, remaining and reset; the usage page's tiers) are computed from
//! the snapshot when someone asks, outside the lock, and not at all when nobody does.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Charge, Dimension, Ledger, Limit, LimitZone, Org, Plan, Policy, Tier, Timestamp, Window};
//!
//! let count = Limit::new("count", Dimension::Requests, LimitZone::Org, vec![
//!     Tier::new(Window::Minute, 10)?,
//!     Tier::new(Window::Hour, 100)?,
//! ])?;
//! let policy = Policy::builder().plan(Plan::new("build", vec![count])?).org(Org::new("acme", "build")).build()?;
//! let acme = policy.org("acme").expect("defined above");
//! let mut ledger = Ledger::new(acme);
//! let verdict = ledger.admit(acme, Charge::points(1), Timestamp::from_secs(30));
//! let count = verdict.snapshot().status(acme, 0).expect("one limit");
//! assert_eq!((count.limit, count.remaining), (110, 109));
//! assert_eq!(count.tiers()[0].remaining, 9);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use smallvec::SmallVec;

use crate::policy::{ResolvedLimit, ResolvedOrg};
use crate::rate::Rate;
use crate::tier::{LimitState, MAX_TIERS};
use crate::time::Timestamp;
use crate::window::Window;

/// One tier's numbers, as the `RateLimit` header and the usage page show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TierStatus {
    /// The tier's window.
    pub window: Window,
    /// Its capacity now.
    pub capacity: u64,
    /// What it used in the current window (more than the capacity only for debt).
    pub used: i64,
    /// What it still holds (never below zero).
    pub remaining: u64,
    /// When the current window ends and the tier refills.
    pub reset: Timestamp,
}

/// One limit's numbers, as `X-RateLimit-*` and the usage page show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitStatus {
    /// Index of the limit in the org's plan.
    pub index: usize,
    /// The sum of the tiers' capacities.
    pub limit: u64,
    /// What can still be charged now (never below zero).
    pub remaining: u64,
    /// When `remaining` next goes up.
    pub reset: Timestamp,
    /// For a rate limit, when its bucket is full again (now, if it is full).
    pub full_at: Option<Timestamp>,
    /// For a rate limit, the rate in force.
    pub rate: Option<Rate>,
    tiers: [TierStatus; MAX_TIERS],
    len: u8,
}

impl LimitStatus {
    /// Each tier's numbers, shortest window first.
    pub fn tiers(&self) -> &[TierStatus] {
        &self.tiers[..usize::from(self.len)]
    }

    /// Remaining as a share of the limit (0.0 to 1.0), for picking the most constraining limit.
    pub fn ratio(&self) -> f64 {
        if self.limit == 0 {
            0.0
        } else {
            self.remaining as f64 / self.limit as f64
        }
    }
}

/// Every limit's numbers from `states` (one per limit of `org`, in plan order) at `now`.
pub fn statuses(org: &ResolvedOrg, states: &[LimitState], now: Timestamp) -> Vec<LimitStatus> {
    org.limits()
        .iter()
        .zip(states)
        .enumerate()
        .map(|(index, (limit, state))| status(index, limit, state, now))
        .collect()
}

/// The numbers of one limit from its state (stores that keep state elsewhere use this too).
#[inline]
pub fn status(
    index: usize,
    limit: &ResolvedLimit,
    state: &LimitState,
    now: Timestamp,
) -> LimitStatus {
    // Unused slots stay all zero, so equal statuses compare equal whenever they were taken.
    let mut tiers = [TierStatus {
        window: Window::Minute,
        capacity: 0,
        used: 0,
        remaining: 0,
        reset: Timestamp::default(),
    }; MAX_TIERS];
    if let Some(rate) = limit.rate(now) {
        return rate_status(index, rate, state, now, tiers);
    }
    let caps = limit.capacities(now);
    let len = limit.tiers().len();
    let caps = &caps[..len];
    for (tier, (slot, tier_state)) in tiers.iter_mut().zip(state.tiers()).enumerate() {
        let remaining = state.remaining(caps, tier);
        *slot = TierStatus {
            window: limit.tiers()[tier].window(),
            capacity: caps[tier],
            used: tier_state.used,
            remaining: u64::try_from(remaining.max(0)).unwrap_or(0),
            reset: tier_state.end.max(now),
        };
    }
    let available = state.available(caps).max(0);
    LimitStatus {
        index,
        limit: caps.iter().sum(),
        remaining: u64::try_from(available).unwrap_or(0),
        // Nothing used: remaining cannot rise; announce the shortest window's end.
        reset: next_rise(state, caps, available, now).unwrap_or(tiers[0].reset),
        full_at: None,
        rate: None,
        tiers,
        len: len as u8,
    }
}

/// The numbers of a rate limit: its bucket as the one item, holding `burst`, with what is there
/// now and when that next rises (now, when it is full).
fn rate_status(
    index: usize,
    rate: Rate,
    state: &LimitState,
    now: Timestamp,
    mut tiers: [TierStatus; MAX_TIERS],
) -> LimitStatus {
    let gcra = rate.gcra();
    let (tat, micros) = (state.tat(), now.as_micros());
    let available = gcra.available(tat, micros);
    let remaining = u64::try_from(available.max(0)).unwrap_or(0);
    let reset = gcra
        .next_rise(tat, micros)
        .map_or(now, |at| Timestamp::from_micros_ceil(at).max(now));
    tiers[0] = TierStatus {
        window: rate.per(),
        capacity: rate.burst(),
        used: gcra.burst - available,
        remaining,
        reset,
    };
    LimitStatus {
        index,
        limit: rate.burst(),
        remaining,
        reset,
        full_at: Some(Timestamp::from_micros_ceil(gcra.full_at(tat, micros))),
        rate: Some(rate),
        tiers,
        len: 1,
    }
}

/// When what `state` holds next rises above `available`: the first end of a used tier's window
/// after which the tiers hold more. A refill that only pays off the last tier's debt (a latency
/// budget overdrawn into the hour) does not raise it; the window that clears the debt does.
fn next_rise(
    state: &LimitState,
    caps: &[u64],
    available: i64,
    now: Timestamp,
) -> Option<Timestamp> {
    // The next window end of a used tier after `after`, in time order (at most one per tier).
    let next_end = |after: Option<Timestamp>| {
        state
            .tiers()
            .iter()
            .filter(|tier| tier.used > 0)
            .map(|tier| tier.end.max(now))
            .filter(|end| after.is_none_or(|after| *end > after))
            .min()
    };
    let mut next = next_end(None)?;
    // Without debt every refill of a used tier raises what the tiers hold: the first one is it.
    let in_debt = state
        .tiers()
        .last()
        .zip(caps.last())
        .is_some_and(|(last, cap)| last.used > i64::try_from(*cap).unwrap_or(i64::MAX));
    if !in_debt {
        return Some(next);
    }
    loop {
        if state.available_at(caps, next) > available {
            return Some(next);
        }
        next = next_end(Some(next))?;
    }
}

/// An org's counts as a decision left them, and the instant of the decision.
///
/// Cheap to take: a copy of each tier's window end and use (sixteen bytes a tier), without an
/// allocation for plans of up to six tiers in all. The numbers come from
/// [`statuses`](Self::statuses) and [`status`](Self::status), given the org the snapshot was
/// taken for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every tier of every limit, in plan order.
    tiers: SmallVec<[TierCount; INLINE_TIERS]>,
    at: Timestamp,
}

/// Tiers a snapshot holds without allocating.
const INLINE_TIERS: usize = 6;

/// What a snapshot keeps of one tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TierCount {
    end: Timestamp,
    used: i64,
}

impl Snapshot {
    /// A snapshot of `states` (one per limit, in plan order) at `at`.
    pub fn new(states: &[LimitState], at: Timestamp) -> Self {
        let counts = states
            .iter()
            .flat_map(LimitState::tiers)
            .map(|tier| TierCount {
                end: tier.end,
                used: tier.used,
            });
        let total: usize = states.iter().map(|state| state.tiers().len()).sum();
        let tiers = if total <= INLINE_TIERS {
            // Filled as a plain array: this runs under the org's lock on every decision.
            let mut buffer = [TierCount::default(); INLINE_TIERS];
            for (slot, count) in buffer.iter_mut().zip(counts) {
                *slot = count;
            }
            SmallVec::from_buf_and_len(buffer, total)
        } else {
            counts.collect()
        };
        Self { tiers, at }
    }

    /// When the snapshot was taken.
    pub const fn at(&self) -> Timestamp {
        self.at
    }

    /// Every limit's numbers, in plan order; `org` is the org the snapshot was taken for.
    pub fn statuses(&self, org: &ResolvedOrg) -> Vec<LimitStatus> {
        self.iter(org).collect()
    }

    /// Every limit's numbers, in plan order, computed one by one as the iterator is advanced.
    pub fn iter<'a>(&'a self, org: &'a ResolvedOrg) -> impl Iterator<Item = LimitStatus> + 'a {
        let mut first = 0;
        org.limits()
            .iter()
            .enumerate()
            .map_while(move |(index, limit)| {
                let state = self.state(first, limit)?;
                first += limit.tiers().len();
                Some(status(index, limit, &state, self.at))
            })
    }

    /// The numbers of the limit at `index` in `org`'s plan.
    pub fn status(&self, org: &ResolvedOrg, index: usize) -> Option<LimitStatus> {
        let limit = org.limits().get(index)?;
        let first = org.limits()[..index]
            .iter()
            .map(|limit| limit.tiers().len())
            .sum();
        let state = self.state(first, limit)?;
        Some(status(index, limit, &state, self.at))
    }

    /// The state of `limit`, whose tiers start at `first`.
    fn state(&self, first: usize, limit: &ResolvedLimit) -> Option<LimitState> {
        let counts = self.tiers.get(first..first + limit.tiers().len())?;
        let mut state = LimitState::fresh(counts.len());
        for (tier, count) in state.tiers_mut().iter_mut().zip(counts) {
            tier.end = count.end;
            tier.used = count.used;
        }
        Some(state)
    }
}
