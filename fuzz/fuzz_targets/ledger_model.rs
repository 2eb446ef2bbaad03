//! A `Ledger` for a random small plan, driven by random operations and checked against a reference
//! model written here from the documented rules.
//!
//! The plan has one to three limits (requests, points or latency_ms), each with one to three tiers
//! from minute, hour and day, with capacities from 1 up to `MAX_CAPACITY` (asked for up to
//! `u64::MAX`: a tier above `MAX_CAPACITY` must be refused). The operations admit a charge (up to
//! `u64::MAX` points), settle an earlier admission with a latency and a cost correction (up to
//! `u64::MAX` and `i64::MIN..=i64::MAX`), advance the time (a little, to just before or at a
//! window's end, or by days), and reset a limit or every limit.
//!
//! The model keeps, per tier, its window and what it used, and follows the rules of `tier.rs`:
//! - a limit holds what its tiers hold: every tier but the last counts what it has left (never
//!   below zero), the last counts its debt too; a request admits when that covers its charge (a
//!   latency limit: when it is above zero), and every limit must admit;
//! - a charge drains the tiers shortest window first, the last tier taking what is left;
//! - a refund goes back to the tiers that paid, longest window first, only into windows that have
//!   not changed, never more than a tier paid or still uses;
//! - a window that has ended is replaced by the one holding the current instant, fresh.
//!
//! Counts saturate at `i64::MAX` in the ledger (a debt that large is already 290 million years of
//! latency); the model saturates there too.
//!
//! Checked after every operation: the ledger's windows and counts equal the model's; a rejection
//! charges nothing; an admission's receipt holds the model's split; the statuses agree with the
//! model; the `violated` limits are the model's. Checked independently of the model's arithmetic:
//! - in every stretch of time in which none of a requests or points limit's windows changes (and
//!   no reset), what it admitted, less what was refunded, is at most the sum of its capacities;
//! - `retry_at` is exact: a copy of the ledger admits the same charge at `retry_at`, and (when it
//!   is after now) refuses it one millisecond before; no `retry_at` means some violated limit's
//!   capacity, every tier full, is below the charge.

#![no_main]

use arbitrary::{Result, Unstructured};
use chrono_tz::Tz;
use libfuzzer_sys::fuzz_target;
use tollhouse_core::{
    Charge, Correction, Dimension, Ledger, Limit, LimitZone, MAX_CAPACITY, Org, Plan, Policy,
    Receipt, RejectReason, ResolvedOrg, Tier, Timestamp, Verdict, Window,
};

/// Zones with DST changes, half-hour offsets and a half-hour clock change.
const ZONES: [&str; 6] = [
    "UTC",
    "America/Los_Angeles",
    "Europe/Amsterdam",
    "America/Santiago",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
];
/// The windows tiers are picked from.
const WINDOWS: [Window; 3] = [Window::Minute, Window::Hour, Window::Day];
/// 2000-01-01T00:00:00Z in milliseconds: the earliest start.
const EPOCH_2000: i64 = 946_684_800_000;
/// A century in milliseconds: the spread of starts.
const CENTURY: u64 = 3_155_760_000_000;
/// Operations per input at most.
const MAX_OPS: usize = 96;

fuzz_target!(|data: &[u8]| {
    let mut input = Unstructured::new(data);
    let _ = run(&mut input);
});

/// One tier of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ModelTier {
    window: Option<Window>,
    capacity: u64,
    start: i64,
    end: i64,
    used: i128,
}

/// One limit of the model.
#[derive(Clone, Debug)]
struct ModelLimit {
    dimension: Dimension,
    zone: Tz,
    tiers: Vec<ModelTier>,
    /// Admitted less refunded since the last window change or reset of this limit.
    admitted: i128,
}

/// What the model took from each tier of each points limit for one admission.
#[derive(Clone, Debug)]
struct ModelReceipt {
    /// Per limit: the split and the window starts, for points limits that took something.
    parts: Vec<Option<(Vec<u128>, Vec<i64>)>>,
}

/// Everything one run keeps.
struct Run<'a> {
    org: &'a ResolvedOrg,
    ledger: Ledger,
    limits: Vec<ModelLimit>,
    receipts: Vec<(Receipt, ModelReceipt)>,
    now: i64,
}

/// Builds a plan from `input`, then applies operations until it runs out.
fn run(input: &mut Unstructured<'_>) -> Result<()> {
    let zone: Tz = ZONES[usize::from(input.int_in_range(0..=5u8)?)]
        .parse()
        .expect("a zone of the database");
    let limits = plan_limits(input)?;
    let plan = Plan::new("fuzz", limits).expect("distinct limit names");
    let policy = Policy::builder()
        .plan(plan)
        .org(Org::new("org", "fuzz").with_time_zone(zone))
        .build()
        .expect("a valid policy");
    let org = policy.org("org").expect("the org defined above");
    let now = EPOCH_2000 + i64::try_from(input.int_in_range(0..=CENTURY)?).expect("a century");
    let mut state = Run::new(org, now);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        state.step(input)?;
        state.compare();
    }
    Ok(())
}

/// One to three limits named `l0`, `l1`, `l2`.
fn plan_limits(input: &mut Unstructured<'_>) -> Result<Vec<Limit>> {
    let count = input.int_in_range(1..=3usize)?;
    let mut limits = Vec::with_capacity(count);
    for index in 0..count {
        let dimension = match input.int_in_range(0..=2u8)? {
            0 => Dimension::Requests,
            1 => Dimension::Points,
            _ => Dimension::LatencyMs,
        };
        let zone = if input.arbitrary()? {
            LimitZone::Org
        } else {
            let zone = ZONES[usize::from(input.int_in_range(0..=5u8)?)];
            LimitZone::Named(zone.parse().expect("a zone of the database"))
        };
        let mut tiers = Vec::new();
        for window in WINDOWS {
            if input.arbitrary()? {
                tiers.push(tier(window, capacity(input)?));
            }
        }
        if tiers.is_empty() {
            tiers.push(tier(Window::Minute, capacity(input)?));
        }
        let limit = Limit::new(format!("l{index}"), dimension, zone, tiers).expect("a valid limit");
        limits.push(limit);
    }
    Ok(limits)
}

/// A tier, clamping a capacity above `MAX_CAPACITY` (after checking that it is refused).
fn tier(window: Window, capacity: u64) -> Tier {
    if capacity > MAX_CAPACITY {
        assert!(
            Tier::new(window, capacity).is_err(),
            "capacity {capacity} accepted"
        );
        return Tier::new(window, MAX_CAPACITY).expect("MAX_CAPACITY is allowed");
    }
    Tier::new(window, capacity).expect("a capacity of at least 1")
}

/// A capacity: small, near `MAX_CAPACITY`, or anything up to `u64::MAX`.
fn capacity(input: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match input.int_in_range(0..=3u8)? {
        0 => input.int_in_range(1..=5)?,
        1 => input.int_in_range(1..=1_000)?,
        2 => MAX_CAPACITY - input.int_in_range(0..=3)?,
        _ => input.arbitrary::<u64>()?.max(1),
    })
}

/// An amount: small, large, or near `u64::MAX`.
fn amount(input: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match input.int_in_range(0..=3u8)? {
        0 => input.int_in_range(0..=5)?,
        1 => input.int_in_range(0..=2_000)?,
        2 => u64::MAX - input.int_in_range(0..=3)?,
        _ => input.arbitrary()?,
    })
}

/// A cost correction: small either way, or anything.
fn delta(input: &mut Unstructured<'_>) -> Result<i64> {
    Ok(match input.int_in_range(0..=2u8)? {
        0 => input.int_in_range(-5..=5)?,
        1 => input.int_in_range(-2_000..=2_000)?,
        _ => input.arbitrary()?,
    })
}

impl<'a> Run<'a> {
    /// A fresh ledger and model for `org` at `now`.
    fn new(org: &'a ResolvedOrg, now: i64) -> Self {
        let limits = org
            .limits()
            .iter()
            .map(|limit| ModelLimit {
                dimension: limit.dimension(),
                zone: limit.zone(),
                tiers: (0..limit.tiers().len())
                    .map(|tier| ModelTier {
                        window: Some(limit.tiers()[tier].window()),
                        capacity: limit.capacity(tier, Timestamp::from_millis(now)),
                        ..ModelTier::default()
                    })
                    .collect(),
                admitted: 0,
            })
            .collect();
        Self {
            org,
            ledger: Ledger::new(org),
            limits,
            receipts: Vec::new(),
            now,
        }
    }

    /// One random operation.
    fn step(&mut self, input: &mut Unstructured<'_>) -> Result<()> {
        match input.int_in_range(0..=5u8)? {
            0 | 1 => {
                let points = amount(input)?;
                self.admit(points);
            }
            2 => {
                let which = input.arbitrary::<u8>()?;
                let latency_ms = amount(input)?;
                let cost_delta = delta(input)?;
                self.settle(which, latency_ms, cost_delta);
            }
            3 | 4 => {
                let by = self.advance_by(input)?;
                self.now = self.now.saturating_add(by);
            }
            _ => {
                let which = input.int_in_range(0..=3usize)?;
                self.reset(which);
            }
        }
        Ok(())
    }

    /// How far to move the clock: a little, to a window's end (or one millisecond short), or days.
    fn advance_by(&self, input: &mut Unstructured<'_>) -> Result<i64> {
        Ok(match input.int_in_range(0..=3u8)? {
            0 => input.int_in_range(0..=2_000)?,
            1 | 2 => {
                let ends: Vec<i64> = self
                    .limits
                    .iter()
                    .flat_map(|limit| limit.tiers.iter().map(|tier| tier.end))
                    .filter(|end| *end > self.now)
                    .collect();
                if ends.is_empty() {
                    return Ok(1);
                }
                let end = ends[usize::from(input.arbitrary::<u8>()?) % ends.len()];
                let short = input.int_in_range(0..=1)?;
                (end - self.now - short).max(0)
            }
            _ => input.int_in_range(0..=3 * 86_400_000)?,
        })
    }

    /// Opens the current window of every tier whose window has ended, as the ledger does.
    fn refresh(&mut self) {
        let now = Timestamp::from_millis(self.now);
        for limit in &mut self.limits {
            let mut changed = false;
            for tier in &mut limit.tiers {
                if self.now >= tier.end {
                    let window = tier.window.expect("every tier has a window");
                    let bounds = window.bounds(limit.zone, now);
                    tier.start = bounds.start.as_millis();
                    tier.end = bounds.end.as_millis();
                    tier.used = 0;
                    changed = true;
                }
            }
            if changed {
                limit.admitted = 0;
            }
        }
    }

    /// Admits `points` on the ledger and the model, and checks they agree.
    fn admit(&mut self, points: u64) {
        let now = Timestamp::from_millis(self.now);
        let charge = Charge::points(points);
        self.refresh();
        // The ledger opens its windows the same way; a snapshot does only that.
        let _ = self.ledger.snapshot(self.org, now);
        let before = self.ledger.limits().to_vec();
        let verdict = self.ledger.admit(self.org, charge, now);
        let violated: Vec<usize> = (0..self.limits.len())
            .filter(|&index| !self.limits[index].admits(charge))
            .collect();
        match &verdict {
            Verdict::Admitted { receipt, .. } => {
                assert!(
                    violated.is_empty(),
                    "admitted {points} though {violated:?} cannot take it"
                );
                let model = self.charge(charge);
                self.check_receipt(receipt, &model);
                self.receipts.push((receipt.clone(), model));
            }
            Verdict::Rejected {
                reason,
                retry_at,
                violated: theirs,
                ..
            } => {
                assert_eq!(*theirs, violated, "the violated limits for {points} points");
                assert_eq!(
                    self.ledger.limits(),
                    &before[..],
                    "a rejection charged something"
                );
                match reason {
                    RejectReason::Limit(index) => {
                        assert!(violated.contains(index), "reason {index} not violated");
                    }
                    RejectReason::Concurrency => panic!("no concurrency limit in this plan"),
                }
                self.check_retry(charge, *retry_at, &violated);
            }
        }
        self.check_statuses(&verdict);
    }

    /// Charges `charge` to the model; returns what the points limits' tiers took.
    fn charge(&mut self, charge: Charge) -> ModelReceipt {
        let mut parts = Vec::with_capacity(self.limits.len());
        for limit in &mut self.limits {
            let amount = charge.amount(limit.dimension);
            if limit.dimension != Dimension::LatencyMs {
                limit.admitted += i128::from(amount);
                assert!(
                    limit.admitted <= limit.total(),
                    "admitted {} in one stretch of windows, holding {}",
                    limit.admitted,
                    limit.total()
                );
            }
            let split = limit.spend(u128::from(amount));
            let starts = limit.tiers.iter().map(|tier| tier.start).collect();
            let took = limit.dimension == Dimension::Points && amount > 0;
            parts.push(took.then_some((split, starts)));
        }
        ModelReceipt { parts }
    }

    /// The receipt holds a part for every points limit that took something, with the model's split.
    fn check_receipt(&self, receipt: &Receipt, model: &ModelReceipt) {
        let expected: Vec<usize> = (0..model.parts.len())
            .filter(|&index| model.parts[index].is_some())
            .collect();
        let parts: Vec<usize> = receipt.parts().iter().map(|part| part.limit).collect();
        assert_eq!(parts, expected, "receipt parts");
        for part in receipt.parts() {
            let (split, starts) = model.parts[part.limit].as_ref().expect("a model part");
            for (tier, (took, start)) in split.iter().zip(starts).enumerate() {
                assert_eq!(u128::from(part.split[tier]), *took, "split of tier {tier}");
                assert_eq!(
                    part.starts[tier].as_millis(),
                    *start,
                    "start of tier {tier}"
                );
            }
        }
    }

    /// The statuses the verdict shows agree with the model (charged, for an admission).
    fn check_statuses(&self, verdict: &Verdict) {
        let statuses = verdict.statuses(self.org);
        assert_eq!(statuses.len(), self.limits.len());
        for (status, limit) in statuses.iter().zip(&self.limits) {
            let total = limit.total();
            assert_eq!(
                i128::from(status.limit),
                total,
                "the limit's sum of capacities"
            );
            assert_eq!(
                i128::from(status.remaining),
                limit.available().max(0),
                "remaining: {status:?}"
            );
            assert!(
                status.reset.as_millis() >= self.now,
                "a reset in the past: {status:?}"
            );
            for (tier, mine) in status.tiers().iter().zip(&limit.tiers) {
                assert_eq!(i128::from(tier.used), mine.used, "a tier's use: {status:?}");
            }
        }
    }

    /// `retry_at` is exact, or absent only when some violated limit can never hold the charge.
    fn check_retry(&self, charge: Charge, retry_at: Option<Timestamp>, violated: &[usize]) {
        let never = violated.iter().any(|&index| {
            let limit = &self.limits[index];
            i128::from(charge.amount(limit.dimension)) > limit.total()
        });
        let Some(at) = retry_at else {
            assert!(
                never,
                "no retry time, though every violated limit could refill enough"
            );
            return;
        };
        assert!(
            !never,
            "a retry time {at:?} for a charge that can never be admitted"
        );
        assert!(
            at.as_millis() > self.now,
            "a retry time {at:?} not after now"
        );
        let mut then = self.ledger.clone();
        assert!(
            then.admit(self.org, charge, at).is_admitted(),
            "not admitted at its retry time {at:?}"
        );
        let before = Timestamp::from_millis(at.as_millis() - 1);
        if before.as_millis() >= self.now {
            let mut then = self.ledger.clone();
            assert!(
                !then.admit(self.org, charge, before).is_admitted(),
                "admitted at {before:?}, before its retry time {at:?}"
            );
        }
    }

    /// Settles a stored admission (or none) on the ledger and the model.
    fn settle(&mut self, which: u8, latency_ms: u64, cost_delta: i64) {
        let now = Timestamp::from_millis(self.now);
        let (receipt, model) = if self.receipts.is_empty() {
            let empty = ModelReceipt {
                parts: vec![None; self.limits.len()],
            };
            (Receipt::default(), empty)
        } else {
            self.receipts[usize::from(which) % self.receipts.len()].clone()
        };
        let correction = Correction {
            latency_ms,
            cost_delta,
        };
        self.ledger.settle(self.org, &receipt, correction, now);
        self.refresh();
        for (limit, part) in self.limits.iter_mut().zip(&model.parts) {
            match limit.dimension {
                Dimension::LatencyMs if latency_ms > 0 => {
                    limit.spend(u128::from(latency_ms));
                }
                Dimension::Points if cost_delta > 0 => {
                    limit.spend(u128::from(cost_delta.unsigned_abs()));
                }
                Dimension::Points if cost_delta < 0 => {
                    if let Some((split, starts)) = part {
                        let back = limit.refund(split, starts, cost_delta.unsigned_abs());
                        limit.admitted -= i128::from(back);
                    }
                }
                _ => {}
            }
        }
    }

    /// Resets limit `which` (3: every limit) on the ledger and the model.
    fn reset(&mut self, which: usize) {
        let name = (which < self.limits.len()).then(|| format!("l{which}"));
        self.ledger.reset(self.org, name.as_deref());
        for (index, limit) in self.limits.iter_mut().enumerate() {
            if name.is_none() || index == which {
                for tier in &mut limit.tiers {
                    tier.used = 0;
                }
                limit.admitted = 0;
            }
        }
    }

    /// The ledger's windows and counts are the model's.
    fn compare(&self) {
        for (index, (state, limit)) in self.ledger.limits().iter().zip(&self.limits).enumerate() {
            assert_eq!(state.tiers().len(), limit.tiers.len());
            for (tier, (theirs, mine)) in state.tiers().iter().zip(&limit.tiers).enumerate() {
                let at = format!("limit {index} tier {tier} at {}", self.now);
                assert_eq!(theirs.start.as_millis(), mine.start, "start of {at}");
                assert_eq!(theirs.end.as_millis(), mine.end, "end of {at}");
                assert_eq!(i128::from(theirs.used), mine.used, "used of {at}");
            }
        }
    }
}

impl ModelLimit {
    /// The sum of the capacities.
    fn total(&self) -> i128 {
        self.tiers
            .iter()
            .map(|tier| i128::from(tier.capacity))
            .sum()
    }

    /// What the tiers hold together.
    fn available(&self) -> i128 {
        let last = self.tiers.len() - 1;
        self.tiers
            .iter()
            .enumerate()
            .map(|(index, tier)| {
                let left = i128::from(tier.capacity) - tier.used;
                if index == last { left } else { left.max(0) }
            })
            .sum()
    }

    /// Whether this limit admits `charge` now.
    fn admits(&self, charge: Charge) -> bool {
        match self.dimension {
            Dimension::LatencyMs => self.available() > 0,
            dimension => self.available() >= i128::from(charge.amount(dimension)),
        }
    }

    /// Drains `amount`, shortest window first, the last tier taking the rest; returns the split.
    fn spend(&mut self, amount: u128) -> Vec<u128> {
        let last = self.tiers.len() - 1;
        let mut left = amount;
        let mut split = Vec::with_capacity(self.tiers.len());
        for (index, tier) in self.tiers.iter_mut().enumerate() {
            let room = (i128::from(tier.capacity) - tier.used).max(0);
            let take = if index == last {
                left
            } else {
                left.min(u128::try_from(room).expect("not negative"))
            };
            let used = tier.used + i128::try_from(take).expect("a u64 amount");
            tier.used = used.min(i128::from(i64::MAX));
            split.push(take);
            left -= take;
        }
        split
    }

    /// Gives back up to `amount` of a charge split as `split` in windows starting at `starts`,
    /// longest window first; returns what was given back.
    fn refund(&mut self, split: &[u128], starts: &[i64], amount: u64) -> u64 {
        let mut left = u128::from(amount);
        for (index, tier) in self.tiers.iter_mut().enumerate().rev() {
            if tier.start != starts[index] {
                continue;
            }
            let still = u128::try_from(tier.used.max(0)).expect("not negative");
            let back = left.min(split[index]).min(still);
            tier.used -= i128::try_from(back).expect("a u64 amount");
            left -= back;
        }
        amount - u64::try_from(left).expect("at most the amount")
    }
}
