//! The decision for one request against every limit of an org's plan: pure, reads no clock.
//!
//! [`Ledger::admit`] checks every limit and, only if all of them admit, charges all of them at once
//! (all-or-nothing); a rejection charges nothing and says exactly when the same request would be
//! admitted. [`Ledger::settle`] debits latency and settles a cost correction after the response.
//! Stores keep one [`Ledger`] per org and run these functions under that org's lock (or in a script).
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Charge, Dimension, Ledger, Limit, LimitZone, Org, Plan, Policy, Tier, Timestamp, Window};
//!
//! let points = Limit::new("points", Dimension::Points, LimitZone::Org, vec![Tier::new(Window::Minute, 100)?])?;
//! let policy = Policy::builder().plan(Plan::new("build", vec![points])?).org(Org::new("acme", "build")).build()?;
//! let acme = policy.org("acme").expect("defined above");
//! let mut ledger = Ledger::new(acme);
//! let now = Timestamp::from_secs(30);
//! let decision = ledger.admit(acme, Charge::points(10), now);
//! assert!(decision.is_admitted());
//! assert_eq!(decision.statuses(acme)[0].remaining, 90);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use smallvec::SmallVec;

use crate::plan::Dimension;
use crate::policy::{ResolvedLimit, ResolvedOrg};
use crate::rate::Rate;
use crate::status::{LimitStatus, Snapshot};
use crate::tier::{LimitState, MAX_TIERS};
use crate::time::Timestamp;
use crate::window::Window;

/// What a request charges when it is admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Charge {
    /// Points charged to `points` limits (the route's cost).
    pub points: u64,
}

impl Charge {
    /// A request costing `points` points.
    pub const fn points(points: u64) -> Self {
        Self { points }
    }

    /// What this charge takes from a limit of `dimension` at admission.
    pub const fn amount(&self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::Requests => 1,
            Dimension::Points => self.points,
            Dimension::LatencyMs => 0,
        }
    }
}

impl Default for Charge {
    fn default() -> Self {
        Self::points(1)
    }
}

/// One tier's counts as a durable store keeps them across a restart (see [`Ledger::saved`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedTier {
    /// The limit's name.
    pub limit: std::sync::Arc<str>,
    /// The tier's window.
    pub window: Window,
    /// Its window and what it used there.
    pub state: crate::tier::TierState,
}

/// Which tier windows a charge went into and how much each took: what a later cost correction
/// gives back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Receipt {
    // One part per `points` limit; plans rarely have more than one, so no allocation.
    parts: SmallVec<[ReceiptPart; 1]>,
}

/// One `points` limit's share of a [`Receipt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiptPart {
    /// Index of the limit in the plan.
    pub limit: usize,
    /// What each tier took.
    pub split: [u64; MAX_TIERS],
    /// The start of each tier's window at the time.
    pub starts: [Timestamp; MAX_TIERS],
}

impl Receipt {
    /// A receipt from its parts (stores that keep state elsewhere rebuild receipts with this).
    pub fn from_parts(parts: Vec<ReceiptPart>) -> Self {
        Self {
            parts: SmallVec::from_vec(parts),
        }
    }

    /// The parts, one per `points` limit.
    pub fn parts(&self) -> &[ReceiptPart] {
        &self.parts
    }
}

/// Why a request was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The limit at this index of the plan could not take the charge.
    Limit(usize),
    /// The org already has its maximum of requests in flight.
    Concurrency,
}

/// The outcome of asking the ledger to admit a request.
#[derive(Debug)]
pub enum Verdict {
    /// Every limit took its charge.
    Admitted {
        /// Every limit's counts after the charge.
        snapshot: Snapshot,
        /// What the charge took, for a later correction.
        receipt: Receipt,
    },
    /// Nothing was charged.
    Rejected {
        /// The binding reason: the violated limit that frees up last, or concurrency.
        reason: RejectReason,
        /// When the same request would be admitted if no one else charged; `None` if never.
        retry_at: Option<Timestamp>,
        /// Indexes of every limit that could not take the charge.
        violated: Vec<usize>,
        /// Every limit's counts (unchanged).
        snapshot: Snapshot,
    },
}

impl Verdict {
    /// Whether the request was admitted.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Verdict::Admitted { .. })
    }

    /// A rejection because the org has its maximum of requests in flight, with `org`'s limits in
    /// `states` (counting in the windows containing `now`): nothing charged.
    ///
    /// When a slot frees is not known in advance, so the retry suggested is a second after `now`.
    /// If a limit could not take `charge` either, it is listed in `violated`, and `retry_at` is
    /// the later of that second and the limit's own retry time; `reason` names whichever of the
    /// two frees up last (so a plan that waits for a slot does not wait for one in vain).
    pub fn concurrency(
        org: &ResolvedOrg,
        states: &[LimitState],
        charge: Charge,
        now: Timestamp,
    ) -> Self {
        let slot = Timestamp::from_millis(now.as_millis().saturating_add(1000));
        // A trial decision on a copy: the limits' answer, without charging them.
        let mut trial: SmallVec<[LimitState; 3]> = SmallVec::from_slice(states);
        let (reason, retry_at, violated) = match decide(org, &mut trial, charge, now) {
            Verdict::Rejected {
                reason,
                retry_at,
                violated,
                ..
            } => match retry_at {
                Some(at) if at <= slot => (RejectReason::Concurrency, Some(slot), violated),
                _ => (reason, retry_at, violated),
            },
            Verdict::Admitted { .. } => (RejectReason::Concurrency, Some(slot), Vec::new()),
        };
        Verdict::Rejected {
            reason,
            retry_at,
            violated,
            snapshot: Snapshot::new(states, now),
        }
    }

    /// Every limit's counts as the decision left them.
    pub fn snapshot(&self) -> &Snapshot {
        match self {
            Verdict::Admitted { snapshot, .. } | Verdict::Rejected { snapshot, .. } => snapshot,
        }
    }

    /// Every limit's numbers as the decision left them, for `org` (the org it was made for).
    pub fn statuses(&self, org: &ResolvedOrg) -> Vec<LimitStatus> {
        self.snapshot().statuses(org)
    }
}

/// What happens after the response ended: latency to debit, a cost to correct.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Correction {
    /// Milliseconds from admission to the end of the response body.
    pub latency_ms: u64,
    /// The real cost minus the declared cost (negative gives points back).
    pub cost_delta: i64,
}

/// The counts of one org: one [`LimitState`] per limit of its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
// In this order: what every decision reads first, what only a plan change reads last.
#[repr(C)]
pub struct Ledger {
    layout: u64,
    /// Inline for plans of up to three limits: the counts sit in the org's slot, not behind a
    /// second pointer (one cache miss fewer per decision when many orgs are active).
    limits: SmallVec<[LimitState; 3]>,
    names: Vec<std::sync::Arc<str>>,
    windows: Vec<[Option<Window>; MAX_TIERS]>,
    /// Each limit's rate, for a rate limit: its state carries over a plan change only to the same
    /// rate.
    rates: Vec<Option<Rate>>,
}

impl Ledger {
    /// A fresh ledger for `org`'s plan.
    pub fn new(org: &ResolvedOrg) -> Self {
        Self {
            layout: org.layout(),
            names: org
                .limits()
                .iter()
                .map(|limit| limit.name_arc().clone())
                .collect(),
            windows: org.limits().iter().map(windows_of).collect(),
            rates: org
                .limits()
                .iter()
                .map(ResolvedLimit::declared_rate)
                .collect(),
            limits: org
                .limits()
                .iter()
                .map(|limit| LimitState::fresh(limit.tiers().len()))
                .collect(),
        }
    }

    /// The per-limit states, in plan order.
    pub fn limits(&self) -> &[LimitState] {
        &self.limits
    }

    /// Makes the ledger fit `org`'s plan: a plan changed by a new policy keeps the counts of limits
    /// and tiers that are still there (matched by name and window) and starts the others fresh.
    pub fn conform(&mut self, org: &ResolvedOrg) {
        if self.layout == org.layout() {
            return;
        }
        let mut next = Ledger::new(org);
        for (index, limit) in org.limits().iter().enumerate() {
            let Some(old) = self.names.iter().position(|name| name == limit.name_arc()) else {
                continue;
            };
            if self.rates[old] != next.rates[index] {
                continue;
            }
            for (tier, window) in next.windows[index].iter().enumerate() {
                let Some(window) = window else { continue };
                if let Some(old_tier) = self.windows[old].iter().position(|w| w == &Some(*window)) {
                    next.limits[index].tiers_mut()[tier] = self.limits[old].tiers()[old_tier];
                }
            }
        }
        *self = next;
    }

    /// Opens the current window of every tier whose window has ended. A clock that went back
    /// keeps the later window (counts are never reset by skew).
    fn refresh(&mut self, org: &ResolvedOrg, now: Timestamp) {
        for (limit, state) in org.limits().iter().zip(&mut self.limits) {
            if limit.is_rate() {
                // A rate has no windows: its state is an instant, full once it has passed.
                continue;
            }
            for (tier, tier_state) in limit.tiers().iter().zip(state.tiers_mut()) {
                if now >= tier_state.end {
                    let bounds = tier.window().bounds(limit.zone(), now);
                    tier_state.start = bounds.start;
                    tier_state.end = bounds.end;
                    tier_state.used = 0;
                }
            }
        }
    }

    /// The counts worth keeping across a restart: every tier whose window is still open at `now`,
    /// with its limit's name and its window.
    pub fn saved(&self, now: Timestamp) -> Vec<SavedTier> {
        let mut saved = Vec::new();
        for ((name, windows), state) in self.names.iter().zip(&self.windows).zip(&self.limits) {
            for (window, tier) in windows.iter().zip(state.tiers()) {
                if let Some(window) = window
                    && now < tier.end
                    && tier.used != 0
                {
                    saved.push(SavedTier {
                        limit: name.clone(),
                        window: *window,
                        state: *tier,
                    });
                }
            }
        }
        saved
    }

    /// A ledger for `org`'s plan with `saved` counts back in place, where the plan still has a
    /// limit of that name with a tier of that window; the others start fresh.
    pub fn restored(org: &ResolvedOrg, saved: &[SavedTier]) -> Self {
        let mut ledger = Ledger::new(org);
        for tier in saved {
            let Some(limit) = ledger.names.iter().position(|name| *name == tier.limit) else {
                continue;
            };
            let Some(index) = ledger.windows[limit]
                .iter()
                .position(|window| *window == Some(tier.window))
            else {
                continue;
            };
            ledger.limits[limit].tiers_mut()[index] = tier.state;
        }
        ledger
    }

    /// Whether every tier window has ended by `now`: the ledger then holds nothing worth keeping.
    pub fn is_idle(&self, now: Timestamp) -> bool {
        self.limits
            .iter()
            .all(|state| state.tiers().iter().all(|tier| now >= tier.end))
    }

    /// Checks every limit and charges all of them, or none.
    pub fn admit(&mut self, org: &ResolvedOrg, charge: Charge, now: Timestamp) -> Verdict {
        self.conform(org);
        self.refresh(org, now);
        decide(org, &mut self.limits, charge, now)
    }

    /// Debits latency and settles a cost correction for a request admitted earlier.
    pub fn settle(
        &mut self,
        org: &ResolvedOrg,
        receipt: &Receipt,
        correction: Correction,
        now: Timestamp,
    ) {
        self.conform(org);
        self.refresh(org, now);
        for (index, (limit, state)) in org.limits().iter().zip(&mut self.limits).enumerate() {
            if let Some(rate) = limit.rate(now) {
                // A refund gives back at most what the admission took from this rate.
                let taken = receipt
                    .parts
                    .iter()
                    .find(|part| part.limit == index)
                    .map_or(0, |part| part.split[0]);
                settle_rate(rate, limit.dimension(), state, correction, taken, now);
                continue;
            }
            let caps = limit.capacities(now);
            let caps = &caps[..limit.tiers().len()];
            match limit.dimension() {
                Dimension::LatencyMs if correction.latency_ms > 0 => {
                    state.charge(caps, correction.latency_ms);
                }
                Dimension::Points if correction.cost_delta > 0 => {
                    state.charge(caps, correction.cost_delta.unsigned_abs());
                }
                Dimension::Points if correction.cost_delta < 0 => {
                    if let Some(part) = receipt.parts.iter().find(|part| part.limit == index) {
                        state.refund(
                            &part.split,
                            &part.starts,
                            correction.cost_delta.unsigned_abs(),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Every limit's numbers at `now`, charging nothing.
    pub fn peek(&mut self, org: &ResolvedOrg, now: Timestamp) -> Vec<LimitStatus> {
        self.snapshot(org, now).statuses(org)
    }

    /// Rejects a request because the org has its maximum in flight; see [`Verdict::concurrency`].
    pub fn reject_for_concurrency(
        &mut self,
        org: &ResolvedOrg,
        charge: Charge,
        now: Timestamp,
    ) -> Verdict {
        self.conform(org);
        self.refresh(org, now);
        Verdict::concurrency(org, &self.limits, charge, now)
    }

    /// Every limit's counts at `now`, charging nothing.
    pub fn snapshot(&mut self, org: &ResolvedOrg, now: Timestamp) -> Snapshot {
        self.conform(org);
        self.refresh(org, now);
        Snapshot::new(&self.limits, now)
    }

    /// Forgets what limit `name` (or every limit, with `None`) used in its current windows.
    pub fn reset(&mut self, org: &ResolvedOrg, name: Option<&str>) {
        self.conform(org);
        for (limit, state) in org.limits().iter().zip(&mut self.limits) {
            if name.is_none_or(|name| name == limit.name()) {
                if limit.is_rate() {
                    state.set_tat(0);
                    continue;
                }
                for tier in state.tiers_mut() {
                    tier.used = 0;
                }
            }
        }
    }
}

/// Checks every limit of `org` and charges all of them, or none: the arithmetic of
/// [`Ledger::admit`], on `states` (one per limit, in plan order) that already count in the windows
/// containing `now`.
///
/// Stores that keep counts elsewhere (the Redis store) rebuild the states from their counters and
/// call this, so every store decides with the same arithmetic.
pub fn decide(
    org: &ResolvedOrg,
    states: &mut [LimitState],
    charge: Charge,
    now: Timestamp,
) -> Verdict {
    let mut violated = Vec::new();
    for (index, (limit, state)) in org.limits().iter().zip(states.iter()).enumerate() {
        let fits = match limit.rate(now) {
            Some(rate) => {
                let (gcra, tat, micros) = (rate.gcra(), state.tat(), now.as_micros());
                match limit.dimension() {
                    Dimension::LatencyMs => gcra.has_any(tat, micros),
                    dimension => gcra.fits(tat, micros, charge.amount(dimension)),
                }
            }
            None => {
                let caps = limit.capacities(now);
                let caps = &caps[..limit.tiers().len()];
                admits(limit.dimension(), charge, state.available(caps))
            }
        };
        if !fits {
            violated.push(index);
        }
    }
    if violated.is_empty() {
        let mut parts = SmallVec::new();
        for (index, (limit, state)) in org.limits().iter().zip(states.iter_mut()).enumerate() {
            let amount = charge.amount(limit.dimension());
            if amount == 0 {
                continue;
            }
            let split = match limit.rate(now) {
                Some(rate) => {
                    let now = now.as_micros();
                    state.set_tat(rate.gcra().charged(state.tat(), now, amount));
                    let mut split = [0; MAX_TIERS];
                    split[0] = amount;
                    split
                }
                None => {
                    let caps = limit.capacities(now);
                    state.charge(&caps[..limit.tiers().len()], amount)
                }
            };
            if limit.dimension() == Dimension::Points {
                let mut starts = [Timestamp::default(); MAX_TIERS];
                for (start, tier) in starts.iter_mut().zip(state.tiers()) {
                    *start = tier.start;
                }
                parts.push(ReceiptPart {
                    limit: index,
                    split,
                    starts,
                });
            }
        }
        return Verdict::Admitted {
            snapshot: Snapshot::new(states, now),
            receipt: Receipt { parts },
        };
    }
    let mut binding: Option<(usize, Option<Timestamp>)> = None;
    for &index in &violated {
        let retry = ready_at(org, states, index, charge, now);
        let later = match (binding, retry) {
            (None, _) => true,
            (Some((_, Some(_))), None) => true,
            (Some((_, Some(current))), Some(retry)) => retry > current,
            (Some((_, None)), _) => false,
        };
        if later {
            binding = Some((index, retry));
        }
    }
    let (index, retry_at) = binding.unwrap_or((violated[0], None));
    Verdict::Rejected {
        reason: RejectReason::Limit(index),
        retry_at,
        violated,
        snapshot: Snapshot::new(states, now),
    }
}

/// When limit `index` would admit `charge` if no one else charged.
fn ready_at(
    org: &ResolvedOrg,
    states: &[LimitState],
    index: usize,
    charge: Charge,
    now: Timestamp,
) -> Option<Timestamp> {
    let limit = &org.limits()[index];
    if let Some(rate) = limit.rate(now) {
        // A latency budget asks for anything: one unit.
        let units = match limit.dimension() {
            Dimension::LatencyMs => 1,
            dimension => charge.amount(dimension),
        };
        return rate
            .gcra()
            .ready_at(states[index].tat(), units)
            .map(|at| Timestamp::from_micros_ceil(at).max(now));
    }
    let caps = limit.capacities(now);
    let dimension = limit.dimension();
    states[index].ready_when(
        &caps[..limit.tiers().len()],
        now,
        |tier, at| limit.capacity(tier, at),
        |available| admits(dimension, charge, available),
    )
}

/// Whether a limit of `dimension` whose tiers hold `available` admits `charge`: a latency budget
/// while anything is left, any other when the charge fits (a charge of 0 while nothing is owed).
fn admits(dimension: Dimension, charge: Charge, available: i64) -> bool {
    match dimension {
        Dimension::LatencyMs => available > 0,
        dimension => available >= i64::try_from(charge.amount(dimension)).unwrap_or(i64::MAX),
    }
}

/// Debits a rate after the response: latency and cost added to its state, a lower cost given
/// back up to what the admission `taken` (never fuller than full).
fn settle_rate(
    rate: Rate,
    dimension: Dimension,
    state: &mut LimitState,
    correction: Correction,
    taken: u64,
    now: Timestamp,
) {
    let gcra = rate.gcra();
    let (tat, now) = (state.tat(), now.as_micros());
    let next = match dimension {
        Dimension::LatencyMs if correction.latency_ms > 0 => {
            gcra.charged(tat, now, correction.latency_ms)
        }
        Dimension::Points if correction.cost_delta > 0 => {
            gcra.charged(tat, now, correction.cost_delta.unsigned_abs())
        }
        Dimension::Points if correction.cost_delta < 0 && taken > 0 => {
            gcra.refunded(tat, now, correction.cost_delta.unsigned_abs().min(taken))
        }
        _ => return,
    };
    state.set_tat(next);
}

fn windows_of(limit: &ResolvedLimit) -> [Option<Window>; MAX_TIERS] {
    let mut windows = [None; MAX_TIERS];
    for (slot, tier) in windows.iter_mut().zip(limit.tiers()) {
        *slot = Some(tier.window());
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limit, LimitZone, Org, Plan, Policy, Tier};

    #[test]
    fn a_zero_point_charge_retries_when_nothing_is_owed() {
        // Minute 1 and hour 5 points; a cost correction leaves the hour 1 point in debt. A charge
        // of 0 points is refused while the limit owes, and admitted from the minute's end (the
        // minute's refill pays the debt), not only from the hour's.
        let points = Limit::new(
            "points",
            Dimension::Points,
            LimitZone::Org,
            vec![
                Tier::new(Window::Minute, 1).expect("tier"),
                Tier::new(Window::Hour, 5).expect("tier"),
            ],
        )
        .expect("limit");
        let policy = Policy::builder()
            .plan(Plan::new("p", vec![points]).expect("plan"))
            .org(Org::new("o", "p"))
            .build()
            .expect("policy");
        let org = policy.org("o").expect("org");
        let mut ledger = Ledger::new(org);
        let now = Timestamp::from_secs(946_684_830);
        let Verdict::Admitted { receipt, .. } = ledger.admit(org, Charge::points(1), now) else {
            panic!("the first point is admitted");
        };
        let correction = Correction {
            latency_ms: 0,
            cost_delta: 6,
        };
        ledger.settle(org, &receipt, correction, now);
        let Verdict::Rejected { retry_at, .. } = ledger.admit(org, Charge::points(0), now) else {
            panic!("refused while the limit owes a point");
        };
        let minute_end = Timestamp::from_secs(946_684_860);
        assert_eq!(retry_at, Some(minute_end));
        let before = Timestamp::from_millis(minute_end.as_millis() - 1);
        assert!(
            !ledger
                .clone()
                .admit(org, Charge::points(0), before)
                .is_admitted()
        );
        assert!(
            ledger
                .admit(org, Charge::points(0), minute_end)
                .is_admitted()
        );
    }
}
