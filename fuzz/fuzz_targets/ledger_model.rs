//! A `Ledger` for a random small plan, driven by random operations and checked against a reference
//! model written here from the documented rules.
//!
//! The plan has one to three limits (requests, points or latency_ms), each with tiers or a smooth
//! rate:
//! - tiers: one to `MAX_TIERS`, picked in order from twelve windows (second, 5 seconds, 30 seconds,
//!   minute, 5 minutes, 15 minutes, hour, 6 hours, day, week, month, year), with capacities from 1
//!   up to `MAX_CAPACITY` (asked for up to `u64::MAX`: a tier above `MAX_CAPACITY` must be refused,
//!   and so must a limit of more than `MAX_TIERS` tiers, which then keeps its first `MAX_TIERS`);
//! - a rate: 1 to 1,000 units per one of those windows, with a burst of 1 to 2,000 (a burst whose
//!   empty bucket would take more than 2^50 µs to fill must be refused, and is then lowered to the
//!   largest that fills in time, which must be accepted).
//!
//! The operations admit a charge (up to `u64::MAX` points), settle an earlier admission with a
//! latency and a cost correction (up to `u64::MAX` and `i64::MIN..=i64::MAX`), advance the time in
//! milliseconds (a little; to a window's end or to the instant a rate's bucket holds a given number
//! of units, or one millisecond short of it; or by days), and reset a limit or every limit.
//!
//! The model keeps, per tier, its window and what it used, and follows the rules of `tier.rs`:
//! - a limit holds what its tiers hold: every tier but the last counts what it has left (never
//!   below zero), the last counts its debt too; a request admits when that covers its charge (a
//!   latency limit: when it is above zero), and every limit must admit;
//! - a charge drains the tiers shortest window first, the last tier taking what is left;
//! - a refund goes back to the tiers that paid, longest window first, only into windows that have
//!   not changed, never more than a tier paid or still uses;
//! - a window that has ended is replaced by the one holding the current instant, fresh (the window
//!   holding an instant is `Window::bounds`, which has a fuzz target of its own).
//!
//! Counts saturate at `i64::MAX` in the ledger (a debt that large is already 290 million years of
//! latency); the model saturates there too.
//!
//! For a rate the model follows the module doc of `rate.rs` (GCRA in integer microseconds), in its
//! own `i128` arithmetic, without calling `Gcra`:
//! - the interval T is the window's nominal length (a month counts 30 days, a year 365) in
//!   microseconds over the amount, rounded up; the state is one instant `tat`, 0 when fresh;
//! - at `now` the bucket holds `burst - ⌈max(tat - now, 0) / T⌉` (below zero in debt);
//! - a requests or points charge of n admits when n is at most that (a latency limit: when it is
//!   above zero); a charge of n, or a debit after the response (latency, a higher cost), moves `tat`
//!   to `max(tat, now) + n·T`, never past `now + 2^50 µs` (the debt cap, `MAX_FILL_US`);
//! - a lower cost gives back n, at most what the receipt took from the rate (nothing without a
//!   receipt): `tat` moves to `max(tat - n·T, now)`, never fuller than full;
//! - a reset makes it full; its status has limit = burst, remaining = what it holds (never below
//!   zero), reset = when remaining next rises (now when full; in debt, when one unit is there),
//!   full_at = `max(tat, now)` (rounded up to a millisecond), and one tier (window = per, capacity
//!   = burst, used = burst less what it holds).
//!
//! Checked after every operation: the ledger's windows and counts, and a rate's `tat` (and its
//! slot's end, `tat` rounded up to a millisecond), equal the model's; every limit's status (peeked)
//! agrees with the model. On an admission: a rejection charges nothing; an admission's receipt
//! holds the model's split (a rate: all of it in its one slot); the statuses of the verdict agree
//! with the model; the `violated` limits are the model's.
//! Checked independently of the model's arithmetic:
//! - in every stretch of time in which none of a requests or points limit's windows changes (and
//!   no reset), what it admitted, less what was refunded, is at most the sum of its capacities;
//! - for a requests or points rate, from any instant of an admission to a later one (S µs apart,
//!   no reset between), what it admitted less what refunds gave back (⌈what each moved `tat` back /
//!   T⌉ units) is at most `burst + ⌊S / T⌋ + 1` units, and counted in microseconds (units × T, less
//!   what refunds moved `tat` back) at most `burst·T + S`;
//! - `retry_at` is exact: a copy of the ledger admits the same charge at `retry_at`, and (when it
//!   is after now) refuses it one millisecond before; no `retry_at` means some violated limit's
//!   capacity (a rate's burst), every tier full, is below the charge; and `retry_at` is no earlier
//!   than the first millisecond at which a violated rate holds the charge (the latest of those when
//!   only rates are violated).
//!
//! To see what an input does, run it with `LEDGER_MODEL_TRACE` set: the plan, every operation and
//! every verdict go to stderr.

#![no_main]

use std::sync::LazyLock;

use arbitrary::{Result, Unstructured};
use chrono_tz::Tz;
use libfuzzer_sys::fuzz_target;
use tollhouse_core::rate::MAX_FILL_US;
use tollhouse_core::tier::MAX_TIERS;
use tollhouse_core::{
    Charge, Correction, Dimension, Ledger, Limit, LimitStatus, LimitZone, MAX_CAPACITY, Org, Plan,
    Policy, Rate, Receipt, RejectReason, ResolvedOrg, Tier, Timestamp, Verdict, Window,
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
/// The windows tiers and rates are picked from, shortest first, with their nominal lengths in
/// seconds (a month counts 30 days, a year 365).
const WINDOWS: [(&str, i128); 12] = [
    ("second", 1),
    ("5 seconds", 5),
    ("30 seconds", 30),
    ("minute", 60),
    ("5 minutes", 300),
    ("15 minutes", 900),
    ("hour", 3_600),
    ("6 hours", 21_600),
    ("day", 86_400),
    ("week", 604_800),
    ("month", 2_592_000),
    ("year", 31_536_000),
];
/// The windows of `WINDOWS`, parsed (and checked to be in order, of those nominal lengths).
static PARSED: LazyLock<[Window; WINDOWS.len()]> = LazyLock::new(|| {
    let windows = WINDOWS.map(|(name, secs)| {
        let window: Window = name.parse().expect("a window's name");
        assert_eq!(i128::from(window.nominal_secs()), secs, "length of {name}");
        window
    });
    assert!(windows.is_sorted(), "the windows in order");
    windows
});
/// The deepest a rate's debt goes, and the longest its bucket may take to fill: 2^50 µs.
const DEBT_CAP_US: i128 = 1 << 50;
/// 2000-01-01T00:00:00Z in milliseconds: the earliest start.
const EPOCH_2000: i64 = 946_684_800_000;
/// A century in milliseconds: the spread of starts.
const CENTURY: u64 = 3_155_760_000_000;
/// Operations per input at most.
const MAX_OPS: usize = 96;
/// Whether to print the plan and every operation to stderr (set `LEDGER_MODEL_TRACE` to reproduce
/// a crash: `LEDGER_MODEL_TRACE=1 cargo fuzz run ledger_model <artifact>`).
static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("LEDGER_MODEL_TRACE").is_some());

/// Prints to stderr when tracing.
macro_rules! trace {
    ($($arg:tt)*) => {
        if *TRACE {
            eprintln!($($arg)*);
        }
    };
}

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

/// The bucket of a rate limit in the model; instants in microseconds.
#[derive(Clone, Debug)]
struct ModelRate {
    /// The rate as declared.
    rate: Rate,
    burst: i128,
    /// Microseconds per unit given back.
    interval: i128,
    /// The theoretical arrival time: the bucket is full from this instant on.
    tat: i128,
    /// Units admitted, less units that refunds gave back, since the start.
    net: i128,
    /// Microseconds admitted (units × interval), less what refunds moved `tat` back, since the start.
    net_us: i128,
    /// Every instant something was admitted at since the last reset, with `net` and `net_us` just
    /// before the first admission then: the starts of the stretches the exactness check measures.
    marks: Vec<(i128, i128, i128)>,
}

/// One limit of the model.
#[derive(Clone, Debug)]
struct ModelLimit {
    dimension: Dimension,
    zone: Tz,
    /// The tiers (none for a rate limit).
    tiers: Vec<ModelTier>,
    /// The bucket, for a rate limit.
    rate: Option<ModelRate>,
    /// Admitted less refunded since the last window change or reset of this limit (tiers only).
    admitted: i128,
}

/// What one admission took from one points limit.
#[derive(Clone, Debug)]
enum ModelPart {
    /// From each tier, and the window starts then.
    Tiers(Vec<u128>, Vec<i64>),
    /// From a rate's bucket.
    Rate(u64),
}

/// What the model took from each points limit for one admission.
#[derive(Clone, Debug)]
struct ModelReceipt {
    /// Per limit: what it took, for points limits that took something.
    parts: Vec<Option<ModelPart>>,
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
    assert_eq!(
        i128::from(MAX_FILL_US),
        DEBT_CAP_US,
        "the documented debt cap"
    );
    let zone: Tz = ZONES[usize::from(input.int_in_range(0..=5u8)?)]
        .parse()
        .expect("a zone of the database");
    let limits = plan_limits(input)?;
    trace!("zone {zone}, limits {limits:#?}");
    let rates: Vec<Option<Rate>> = limits.iter().map(Limit::rate).collect();
    let plan = Plan::new("fuzz", limits).expect("distinct limit names");
    let policy = Policy::builder()
        .plan(plan)
        .org(Org::new("org", "fuzz").with_time_zone(zone))
        .build()
        .expect("a valid policy");
    let org = policy.org("org").expect("the org defined above");
    let now = EPOCH_2000 + i64::try_from(input.int_in_range(0..=CENTURY)?).expect("a century");
    trace!("start at {now} ms ({:?})", Timestamp::from_millis(now));
    let mut state = Run::new(org, now, &rates);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        state.step(input)?;
        state.compare();
    }
    Ok(())
}

/// One to three limits named `l0`, `l1`, `l2`, each of tiers or of a rate.
fn plan_limits(input: &mut Unstructured<'_>) -> Result<Vec<Limit>> {
    let count = input.int_in_range(1..=3usize)?;
    let mut limits = Vec::with_capacity(count);
    for index in 0..count {
        let name = format!("l{index}");
        let dimension = match input.int_in_range(0..=2u8)? {
            0 => Dimension::Requests,
            1 => Dimension::Points,
            _ => Dimension::LatencyMs,
        };
        if input.ratio(1, 3)? {
            limits.push(rate_limit(name, dimension, input)?);
            continue;
        }
        let zone = if input.arbitrary()? {
            LimitZone::Org
        } else {
            let zone = ZONES[usize::from(input.int_in_range(0..=5u8)?)];
            LimitZone::Named(zone.parse().expect("a zone of the database"))
        };
        let mut tiers = Vec::new();
        for window in *PARSED {
            if input.arbitrary()? {
                tiers.push(tier(window, capacity(input)?));
            }
        }
        if tiers.is_empty() {
            tiers.push(tier(Window::Minute, capacity(input)?));
        }
        if tiers.len() > MAX_TIERS {
            assert!(
                Limit::new(name.as_str(), dimension, zone, tiers.clone()).is_err(),
                "a limit of {} tiers accepted",
                tiers.len()
            );
            tiers.truncate(MAX_TIERS);
        }
        let limit = Limit::new(name, dimension, zone, tiers).expect("a valid limit");
        limits.push(limit);
    }
    Ok(limits)
}

/// A rate limit of 1 to 1,000 units per a window of `WINDOWS`, with a burst of 1 to 2,000; a burst
/// whose bucket takes longer than `DEBT_CAP_US` to fill must be refused, and is lowered to the
/// largest that does not.
fn rate_limit(name: String, dimension: Dimension, input: &mut Unstructured<'_>) -> Result<Limit> {
    let amount = input.int_in_range(1..=1_000u64)?;
    let per = usize::from(input.int_in_range(0..=u8::try_from(WINDOWS.len() - 1).expect("few"))?);
    let mut burst = input.int_in_range(1..=2_000u64)?;
    let interval = interval(WINDOWS[per].1, amount);
    let most = DEBT_CAP_US / interval;
    let window = PARSED[per];
    let accepted = Rate::new(amount, window, Some(burst)).is_ok();
    assert_eq!(
        accepted,
        i128::from(burst) <= most,
        "{amount} per {window} with a burst of {burst}: interval {interval} µs"
    );
    if !accepted {
        burst = u64::try_from(most).expect("a burst below 2,000");
    }
    let rate = Rate::new(amount, window, Some(burst)).expect("a bucket that fills in time");
    assert_eq!(
        (rate.amount(), rate.per(), rate.burst()),
        (amount, window, burst)
    );
    Ok(Limit::with_rate(name, dimension, rate).expect("a valid name"))
}

/// Microseconds per unit of `amount` units per `secs` seconds, rounded up.
fn interval(secs: i128, amount: u64) -> i128 {
    ceil_div(secs * 1_000_000, i128::from(amount)).max(1)
}

/// `a / b` rounded up, for `a >= 0` and `b >= 1`.
fn ceil_div(a: i128, b: i128) -> i128 {
    (a + b - 1) / b
}

/// Milliseconds to microseconds.
fn micros(millis: i64) -> i128 {
    i128::from(millis) * 1_000
}

/// Microseconds to milliseconds, rounded up.
fn ceil_millis(micros: i128) -> i64 {
    let millis = micros.div_euclid(1_000) + i128::from(micros.rem_euclid(1_000) != 0);
    i64::try_from(millis).expect("an instant in milliseconds")
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
    /// A fresh ledger and model for `org` at `now`; `rates` are the plan's limits' rates.
    fn new(org: &'a ResolvedOrg, now: i64, rates: &[Option<Rate>]) -> Self {
        let at = Timestamp::from_millis(now);
        assert_eq!(org.limits().len(), rates.len());
        let limits = org
            .limits()
            .iter()
            .zip(rates)
            .map(|(limit, rate)| {
                let rate = rate.map(|rate| {
                    // A rate limit has one pseudo-tier, its bucket: window per, capacity burst.
                    assert_eq!(limit.rate(at), Some(rate), "the rate in force");
                    assert!(limit.is_rate());
                    assert_eq!(limit.tiers().len(), 1, "a rate's one slot");
                    assert_eq!(limit.tiers()[0].window(), rate.per());
                    assert_eq!(limit.capacity(0, at), rate.burst());
                    ModelRate::new(rate)
                });
                let tiers = if rate.is_some() {
                    Vec::new()
                } else {
                    assert_eq!(limit.rate(at), None);
                    (0..limit.tiers().len())
                        .map(|tier| ModelTier {
                            window: Some(limit.tiers()[tier].window()),
                            capacity: limit.capacity(tier, at),
                            ..ModelTier::default()
                        })
                        .collect()
                };
                ModelLimit {
                    dimension: limit.dimension(),
                    zone: limit.zone(),
                    tiers,
                    rate,
                    admitted: 0,
                }
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
                trace!("admit {points} points");
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
                trace!(
                    "advance by {by} ms to {} ({:?})",
                    self.now,
                    Timestamp::from_millis(self.now)
                );
            }
            _ => {
                let which = input.int_in_range(0..=3usize)?;
                trace!("reset {which} (3: every limit)");
                self.reset(which);
            }
        }
        Ok(())
    }

    /// How far to move the clock: a little; to a window's end or to the instant a rate's bucket
    /// holds some number of units (or one millisecond short of either); or days.
    fn advance_by(&self, input: &mut Unstructured<'_>) -> Result<i64> {
        Ok(match input.int_in_range(0..=3u8)? {
            0 => input.int_in_range(0..=2_000)?,
            1 | 2 => {
                let units = input.arbitrary::<u16>()?;
                let ends: Vec<i64> = self
                    .limits
                    .iter()
                    .flat_map(|limit| {
                        let rate = limit.rate.as_ref().map(|rate| rate.moment(units));
                        limit.tiers.iter().map(|tier| tier.end).chain(rate)
                    })
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
        if *TRACE {
            match &verdict {
                Verdict::Admitted { .. } => eprintln!("  admitted"),
                Verdict::Rejected {
                    violated, retry_at, ..
                } => eprintln!("  rejected by {violated:?}, retry at {retry_at:?}"),
            }
        }
        let violated: Vec<usize> = (0..self.limits.len())
            .filter(|&index| !self.limits[index].admits(charge, micros(self.now)))
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
        self.check_statuses(&verdict.statuses(self.org));
    }

    /// Charges `charge` to the model; returns what the points limits took.
    fn charge(&mut self, charge: Charge) -> ModelReceipt {
        let now = micros(self.now);
        let mut parts = Vec::with_capacity(self.limits.len());
        for limit in &mut self.limits {
            let amount = charge.amount(limit.dimension);
            let took = limit.dimension == Dimension::Points && amount > 0;
            if let Some(rate) = &mut limit.rate {
                // Only requests and points charge at admission.
                if amount > 0 {
                    rate.admit(amount, now);
                }
                parts.push(took.then_some(ModelPart::Rate(amount)));
                continue;
            }
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
            parts.push(took.then_some(ModelPart::Tiers(split, starts)));
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
            match model.parts[part.limit].as_ref().expect("a model part") {
                ModelPart::Tiers(split, starts) => {
                    for (tier, (took, start)) in split.iter().zip(starts).enumerate() {
                        assert_eq!(u128::from(part.split[tier]), *took, "split of tier {tier}");
                        assert_eq!(
                            part.starts[tier].as_millis(),
                            *start,
                            "start of tier {tier}"
                        );
                    }
                    assert!(
                        part.split[split.len()..].iter().all(|took| *took == 0),
                        "a split beyond the tiers: {part:?}"
                    );
                }
                ModelPart::Rate(amount) => {
                    assert_eq!(part.split[0], *amount, "a rate's part: {part:?}");
                    assert!(
                        part.split[1..].iter().all(|took| *took == 0),
                        "a rate's part beyond its slot: {part:?}"
                    );
                }
            }
        }
    }

    /// The statuses (a verdict's, or peeked) agree with the model.
    fn check_statuses(&self, statuses: &[LimitStatus]) {
        assert_eq!(statuses.len(), self.limits.len());
        for (status, limit) in statuses.iter().zip(&self.limits) {
            assert!(
                status.reset.as_millis() >= self.now,
                "a reset in the past: {status:?}"
            );
            if let Some(rate) = &limit.rate {
                rate.check_status(status, self.now);
                continue;
            }
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
            assert_eq!(status.full_at, None, "a full_at for tiers: {status:?}");
            assert_eq!(status.rate, None, "a rate for tiers: {status:?}");
            assert_eq!(status.tiers().len(), limit.tiers.len());
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
        // Every violated rate holds the charge from its own instant on, if nothing else is charged.
        let mut latest = None;
        let mut only_rates = true;
        for &index in violated {
            let limit = &self.limits[index];
            let Some(rate) = &limit.rate else {
                only_rates = false;
                continue;
            };
            let ready = rate
                .ready(limit.dimension, charge.amount(limit.dimension))
                .expect("a charge within the burst");
            let ready = ceil_millis(ready).max(self.now);
            assert!(
                at.as_millis() >= ready,
                "a retry time {at:?} before limit {index}'s bucket holds the charge ({ready} ms)"
            );
            latest = latest.max(Some(ready));
        }
        if only_rates {
            assert_eq!(Some(at.as_millis()), latest, "the retry time of rates");
        }
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
        if self.receipts.is_empty() {
            trace!("settle an empty receipt: latency {latency_ms} ms, cost delta {cost_delta}");
        } else {
            let index = usize::from(which) % self.receipts.len();
            trace!("settle admission {index}: latency {latency_ms} ms, cost delta {cost_delta}");
        }
        let correction = Correction {
            latency_ms,
            cost_delta,
        };
        self.ledger.settle(self.org, &receipt, correction, now);
        self.refresh();
        let micros = micros(self.now);
        for (limit, part) in self.limits.iter_mut().zip(&model.parts) {
            if let Some(rate) = &mut limit.rate {
                // A rate is debited whatever the receipt; it gives back at most what the receipt
                // took from it (nothing without one), and never past full.
                match limit.dimension {
                    Dimension::LatencyMs if latency_ms > 0 => rate.debit(latency_ms, micros),
                    Dimension::Points if cost_delta > 0 => {
                        rate.debit(cost_delta.unsigned_abs(), micros);
                    }
                    Dimension::Points if cost_delta < 0 => {
                        if let Some(ModelPart::Rate(taken)) = part
                            && *taken > 0
                        {
                            rate.give_back(cost_delta.unsigned_abs().min(*taken), micros);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match limit.dimension {
                Dimension::LatencyMs if latency_ms > 0 => {
                    limit.spend(u128::from(latency_ms));
                }
                Dimension::Points if cost_delta > 0 => {
                    limit.spend(u128::from(cost_delta.unsigned_abs()));
                }
                Dimension::Points if cost_delta < 0 => {
                    if let Some(ModelPart::Tiers(split, starts)) = part {
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
                if let Some(rate) = &mut limit.rate {
                    rate.reset();
                }
                limit.admitted = 0;
            }
        }
    }

    /// The ledger's windows, counts and rate states are the model's, and so are the statuses.
    fn compare(&mut self) {
        // Peeking opens the windows that ended, as the next operation would.
        self.refresh();
        let statuses = self.ledger.peek(self.org, Timestamp::from_millis(self.now));
        self.check_statuses(&statuses);
        for (index, (state, limit)) in self.ledger.limits().iter().zip(&self.limits).enumerate() {
            if let Some(rate) = &limit.rate {
                let at = format!("limit {index} (a rate) at {}", self.now);
                assert_eq!(i128::from(state.tat()), rate.tat, "tat of {at}");
                assert_eq!(state.tiers().len(), 1, "the slots of {at}");
                // The slot's end is the instant the bucket is full again (see `set_tat`).
                let end = state.tiers()[0].end.as_millis();
                assert_eq!(end, ceil_millis(rate.tat), "end of {at}");
                continue;
            }
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
    /// The sum of the capacities (a rate's burst).
    fn total(&self) -> i128 {
        if let Some(rate) = &self.rate {
            return rate.burst;
        }
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

    /// Whether this limit admits `charge` at `now` (µs).
    fn admits(&self, charge: Charge, now: i128) -> bool {
        if let Some(rate) = &self.rate {
            return rate.fits(self.dimension, charge.amount(self.dimension), now);
        }
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

impl ModelRate {
    /// A full bucket for `rate`, its interval computed from `WINDOWS`' nominal lengths.
    fn new(rate: Rate) -> Self {
        let secs = WINDOWS
            .iter()
            .zip(PARSED.iter())
            .find(|(_, window)| **window == rate.per())
            .map(|((_, secs), _)| *secs)
            .expect("a window of WINDOWS");
        Self {
            rate,
            burst: i128::from(rate.burst()),
            interval: interval(secs, rate.amount()),
            tat: 0,
            net: 0,
            net_us: 0,
            marks: Vec::new(),
        }
    }

    /// The units there at `now`: below zero in debt.
    fn available(&self, now: i128) -> i128 {
        self.burst - ceil_div((self.tat - now).max(0), self.interval)
    }

    /// Whether a charge of `units` fits at `now`: a requests or points charge when that many are
    /// there, a latency limit's when anything is.
    fn fits(&self, dimension: Dimension, units: u64, now: i128) -> bool {
        let available = self.available(now);
        match dimension {
            Dimension::LatencyMs => available > 0,
            _ => i128::from(units) <= available,
        }
    }

    /// Takes `units` at `now` (an admission's charge, or a debit after the response), the debt
    /// capped at `DEBT_CAP_US`.
    fn debit(&mut self, units: u64, now: i128) {
        let tat = self.tat.max(now) + i128::from(units) * self.interval;
        self.tat = tat.min(now + DEBT_CAP_US);
    }

    /// Admits `units` at `now`, checking that in every stretch from an earlier admission (since
    /// the last reset) it admitted, less what refunds gave back, no more than the bucket allows.
    fn admit(&mut self, units: u64, now: i128) {
        if self.marks.last().is_none_or(|mark| mark.0 != now) {
            self.marks.push((now, self.net, self.net_us));
        }
        self.debit(units, now);
        self.net += i128::from(units);
        self.net_us += i128::from(units) * self.interval;
        for &(start, net, net_us) in &self.marks {
            let span = now - start;
            let (burst, interval) = (self.burst, self.interval);
            assert!(
                self.net - net <= burst + span / interval + 1,
                "{} units admitted in {span} µs by a burst of {burst}, one every {interval} µs",
                self.net - net,
            );
            assert!(
                self.net_us - net_us <= burst * interval + span,
                "{} µs of bucket admitted in {span} µs by a burst of {burst} × {interval} µs",
                self.net_us - net_us,
            );
        }
    }

    /// Gives back `units` at `now`: never fuller than full.
    fn give_back(&mut self, units: u64, now: i128) {
        if self.tat <= now {
            return;
        }
        let tat = (self.tat - i128::from(units) * self.interval).max(now);
        let back = self.tat - tat;
        self.net -= ceil_div(back, self.interval);
        self.net_us -= back;
        self.tat = tat;
    }

    /// Full again.
    fn reset(&mut self) {
        self.tat = 0;
        self.marks.clear();
    }

    /// The first instant (µs) at which a charge of `units` fits, if nothing else is charged;
    /// `None` if it never does (more than the burst).
    fn ready(&self, dimension: Dimension, units: u64) -> Option<i128> {
        let need = match dimension {
            Dimension::LatencyMs => 1,
            _ => i128::from(units),
        };
        (need <= self.burst).then(|| self.tat - (self.burst - need) * self.interval)
    }

    /// When what is there (never counted below zero) next rises, after `now`; `None` when full.
    fn next_rise(&self, now: i128) -> Option<i128> {
        if self.tat <= now {
            return None;
        }
        // Units missing from a full bucket; in debt, remaining rises only once one unit is there.
        let missing = ceil_div(self.tat - now, self.interval).min(self.burst);
        Some(self.tat - (missing - 1) * self.interval)
    }

    /// The millisecond at which the bucket holds `burst - units % (burst + 1)` units (full, for 0).
    fn moment(&self, units: u16) -> i64 {
        let missing = i128::from(units) % (self.burst + 1);
        ceil_millis(self.tat - missing * self.interval)
    }

    /// A rate limit's status at `now` (ms) is the model's.
    fn check_status(&self, status: &LimitStatus, now: i64) {
        let micros = micros(now);
        let available = self.available(micros);
        let reset = self
            .next_rise(micros)
            .map_or(now, |at| ceil_millis(at).max(now));
        let full_at = ceil_millis(self.tat.max(micros));
        let at = format!("{status:?} at {now}, tat {}", self.tat);
        assert_eq!(i128::from(status.limit), self.burst, "limit: {at}");
        assert_eq!(
            i128::from(status.remaining),
            available.max(0),
            "remaining: {at}"
        );
        assert_eq!(status.reset.as_millis(), reset, "reset: {at}");
        assert_eq!(
            status.full_at.map(Timestamp::as_millis),
            Some(full_at),
            "full_at: {at}"
        );
        assert_eq!(status.rate, Some(self.rate), "rate: {at}");
        let [tier] = status.tiers() else {
            panic!("a rate's status has one tier: {at}");
        };
        assert_eq!(tier.window, self.rate.per(), "tier window: {at}");
        assert_eq!(i128::from(tier.capacity), self.burst, "tier capacity: {at}");
        assert_eq!(
            i128::from(tier.used),
            self.burst - available,
            "tier used: {at}"
        );
        assert_eq!(tier.remaining, status.remaining, "tier remaining: {at}");
        assert_eq!(tier.reset, status.reset, "tier reset: {at}");
    }
}
