//! One behavioural suite, run on every store: [`MemoryStore`] and [`RedisStore`] must agree.
//!
//! Every case below is a generic `async fn case<S: Store>(store: &S)` with exact expectations; the
//! `suite!` macro runs each one on a fresh `MemoryStore` (`memory::case`) and on a `RedisStore`
//! with a key prefix of its own (`redis::case`). A difference between the stores fails one of
//! them. `redis::differential_random_ops` also replays one random sequence on both stores and
//! compares every decision verbatim.
//!
//! The Redis-only tests (`redis_only::*`) check what the memory store has no counterpart for: one
//! round trip per admission, several instances on one Redis, Redis stopped and started in the
//! middle of a run, leases of a crashed instance, key slots and expiry, clock skew.
//!
//! Redis comes from `TOLLHOUSE_REDIS_URL`, else a `redis-server` started per test; with neither,
//! Redis tests print `SKIP:` and pass (under `CI=true` they fail).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use tollhouse_core::{
    CallRecord, Charge, Clock, Correction, Decision, LimitStatus, Outcome, Policy, RejectReason,
    ResolvedOrg, Settlement, Store, SystemClock, Timestamp, Verdict,
};
use tollhouse_redis::{Grants, RedisStore};
use tollhouse_tests::redis_server::{TestRedis, own_redis_server, redis_for, unique_prefix};

// ------------------------------------------------------------------------------------------------
// Helpers

/// An instant given in UTC.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
    Timestamp::from(
        chrono::Utc
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("a valid UTC date"),
    )
}

/// An instant given in the local time of `zone`.
fn local(zone: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
    let tz: chrono_tz::Tz = zone.parse().expect("a known zone");
    Timestamp::from(
        tz.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("an unambiguous local time"),
    )
}

/// Tuesday 10 March 2026, 12:00:00 UTC: the start of a minute, an hour and a UTC day.
fn t0() -> Timestamp {
    utc(2026, 3, 10, 12, 0, 0)
}

fn plus(at: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_millis(at.as_millis() + millis)
}

fn secs(at: Timestamp, secs: i64) -> Timestamp {
    plus(at, secs * 1000)
}

/// The org `acme` of a policy whose plan `p` has the given body (its limits and concurrency).
fn acme(plan: &str, org: &str) -> Arc<ResolvedOrg> {
    let toml = format!(
        "[plans.p]\n{plan}\n\n[[orgs]]\nid = \"acme\"\nplan = \"p\"\nkeys = [\"acme-key-1\"]\n{org}\n"
    );
    let policy = Policy::from_toml_str(&toml, "suite.toml".as_ref()).expect("a valid policy");
    Arc::clone(policy.org("acme").expect("acme is defined"))
}

async fn admit<S: Store>(
    store: &S,
    org: &Arc<ResolvedOrg>,
    points: u64,
    at: Timestamp,
) -> Decision {
    store
        .admit(org, Charge::points(points), at)
        .await
        .expect("the store answers")
}

async fn peek<S: Store>(store: &S, org: &Arc<ResolvedOrg>, at: Timestamp) -> Vec<LimitStatus> {
    store.peek(org, at).await.expect("the store answers")
}

fn remaining(statuses: &[LimitStatus]) -> Vec<u64> {
    statuses.iter().map(|s| s.remaining).collect()
}

fn used(status: &LimitStatus) -> Vec<i64> {
    status.tiers().iter().map(|t| t.used).collect()
}

fn receipt(decision: &Decision) -> tollhouse_core::Receipt {
    match &decision.verdict {
        Verdict::Admitted { receipt, .. } => receipt.clone(),
        Verdict::Rejected { .. } => panic!("expected an admission, got {decision:?}"),
    }
}

/// (reason, retry_at, violated) of a rejection.
fn rejection(decision: &Decision) -> (RejectReason, Option<Timestamp>, Vec<usize>) {
    match &decision.verdict {
        Verdict::Rejected {
            reason,
            retry_at,
            violated,
            ..
        } => (*reason, *retry_at, violated.clone()),
        Verdict::Admitted { .. } => panic!("expected a rejection, got {decision:?}"),
    }
}

async fn settle<S: Store>(
    store: &S,
    org: &Arc<ResolvedOrg>,
    receipt: tollhouse_core::Receipt,
    correction: Correction,
    at: Timestamp,
) {
    store
        .settle(
            org,
            Settlement {
                receipt,
                correction,
                call: None,
                at,
            },
        )
        .await
        .expect("the store answers");
}

fn call(at: Timestamp, path: &str) -> CallRecord {
    CallRecord::new(at, "GET", path)
        .with_route("/v1/items")
        .with_key("…-key")
}

async fn record<S: Store>(store: &S, org: &Arc<ResolvedOrg>, call: CallRecord) {
    store.record(org, call).await.expect("the store answers");
}

/// Admits once a slot is free, asking again every few milliseconds (bounded by a deadline).
async fn admit_when_free<S: Store>(store: &S, org: &Arc<ResolvedOrg>, at: Timestamp) -> Decision {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let decision = admit(store, org, 1, at).await;
        if decision.is_admitted() {
            return decision;
        }
        assert!(Instant::now() < deadline, "no slot was freed within 5 s");
        tokio::time::sleep(tollhouse_core::store::FIRST_POLL).await;
    }
}

/// Waits until the org's in-flight count is `expected` (a released lease reaches Redis a moment
/// after its permit is dropped).
async fn in_flight_becomes<S: Store>(store: &S, org: &Arc<ResolvedOrg>, expected: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let usage = store.usage(org, t0(), 1).await.expect("the store answers");
        if usage.in_flight == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "in flight stayed {} (expected {expected})",
            usage.in_flight
        );
        tokio::time::sleep(tollhouse_core::store::FIRST_POLL).await;
    }
}

async fn redis_store(redis: &TestRedis, test: &str) -> RedisStore {
    redis_store_at(redis.url(), test).await
}

/// The settings of a suite store: `test`'s own key prefix, a generous timeout (debug builds of
/// many tests share two cores; the failure tests use 50 ms).
fn suite_builder(test: &str) -> tollhouse_redis::RedisStoreBuilder {
    RedisStore::builder()
        .prefix(unique_prefix(test))
        .timeout(Duration::from_secs(2))
}

/// The same with quota grants for every org from its first request: each case must see what the
/// memory store gives, with most admissions decided from grants.
fn granting_builder(test: &str) -> tollhouse_redis::RedisStoreBuilder {
    suite_builder(test).grants(Grants::new().hot_rps(0))
}

/// A store on the server at `url`, with `test`'s own key prefix.
async fn redis_store_at(url: &str, test: &str) -> RedisStore {
    suite_builder(test)
        .connect(url)
        .await
        .expect("connect to the test server")
}

/// A granting store on the test server.
async fn granting_store(redis: &TestRedis, test: &str) -> RedisStore {
    granting_builder(test)
        .connect(redis.url())
        .await
        .expect("connect to the test server")
}

// ------------------------------------------------------------------------------------------------
// The cases, once, for every store

const PER_MINUTE_5: &str = r#"
[[plans.p.limits]]
name = "per_minute"
dimension = "requests"
tiers = [{ window = "minute", capacity = 5 }]
"#;

async fn admits_until_capacity<S: Store>(store: &S) {
    let org = acme(PER_MINUTE_5, "");
    let now = secs(t0(), 10);
    for left in (0..5).rev() {
        let decision = admit(store, &org, 1, now).await;
        assert!(decision.is_admitted());
        assert_eq!(remaining(&decision.verdict.statuses(&org)), vec![left]);
        assert!(
            decision.permit.is_some(),
            "an admitted request is counted in flight, with or without a concurrency limit"
        );
    }
    let rejected = admit(store, &org, 1, now).await;
    assert_eq!(
        rejection(&rejected),
        (RejectReason::Limit(0), Some(secs(t0(), 60)), vec![0])
    );
    assert!(rejected.permit.is_none());
    let status = rejected.verdict.statuses(&org)[0];
    assert_eq!((status.limit, status.remaining), (5, 0));
    assert_eq!(status.reset, secs(t0(), 60));
    let next = admit(store, &org, 1, secs(t0(), 60)).await;
    assert!(next.is_admitted());
    assert_eq!(remaining(&next.verdict.statuses(&org)), vec![4]);
}

/// A `second` tier with `"5 minutes"`, `week` and `year` behind it: a second admits its capacity
/// and then the longer tiers pay, shortest first; the next second admits its capacity again.
const SECOND_TO_YEAR: &str = r#"
[[plans.p.limits]]
name = "count"
dimension = "requests"
zone = "UTC"
tiers = [
  { window = "second", capacity = 2 },
  { window = "5 minutes", capacity = 3 },
  { window = "week", capacity = 1 },
  { window = "year", capacity = 1 },
]
"#;

async fn second_tiers_spill_into_minutes_weeks_and_years<S: Store>(store: &S) {
    let org = acme(SECOND_TO_YEAR, "");
    let now = plus(t0(), 250);
    for _ in 0..7 {
        assert!(admit(store, &org, 1, now).await.is_admitted());
    }
    let refused = admit(store, &org, 1, now).await;
    assert_eq!(
        rejection(&refused),
        (RejectReason::Limit(0), Some(secs(t0(), 1)), vec![0]),
        "the second's refill is the first capacity back"
    );
    let status = refused.verdict.statuses(&org)[0];
    assert_eq!((status.limit, status.remaining), (7, 0));
    // The next second: its own two, then nothing (the 5 minutes, the week and the year are spent).
    let next = secs(t0(), 1);
    assert!(admit(store, &org, 1, next).await.is_admitted());
    assert!(admit(store, &org, 1, next).await.is_admitted());
    let refused = admit(store, &org, 1, plus(next, 999)).await;
    assert_eq!(rejection(&refused).1, Some(secs(t0(), 2)));
    // Five minutes on (12:05 UTC), the 5-minute tier is full again; the week and the year are not.
    let later = secs(t0(), 300);
    let spent: Vec<bool> =
        futures_util::future::join_all((0..6).map(|_| admit(store, &org, 1, later)))
            .await
            .iter()
            .map(Decision::is_admitted)
            .collect();
    assert_eq!(spent.iter().filter(|admitted| **admitted).count(), 5);
}

/// A smooth rate of 2 a second with a burst of 6, beside a daily quota of 8.
const RATE_AND_DAILY: &str = r#"
[[plans.p.limits]]
name = "smooth"
dimension = "requests"
rate = { amount = 2, per = "second", burst = 6 }

[[plans.p.limits]]
name = "daily"
dimension = "requests"
zone = "UTC"
tiers = [{ window = "day", capacity = 8 }]
"#;

async fn a_rate_admits_its_burst_then_one_per_interval<S: Store>(store: &S) {
    let org = acme(RATE_AND_DAILY, "");
    let now = plus(t0(), 100);
    for left in (0..6).rev() {
        let decision = admit(store, &org, 1, now).await;
        assert!(decision.is_admitted());
        assert_eq!(
            remaining(&decision.verdict.statuses(&org)),
            vec![left, 7 - (5 - left)]
        );
    }
    let refused = admit(store, &org, 1, now).await;
    assert_eq!(
        rejection(&refused),
        (RejectReason::Limit(0), Some(plus(now, 500)), vec![0])
    );
    let statuses = refused.verdict.statuses(&org);
    // Refused by the rate: the daily quota is charged nothing.
    assert_eq!(remaining(&statuses), vec![0, 2]);
    assert_eq!((statuses[0].limit, statuses[0].reset), (6, plus(now, 500)));
    assert_eq!(statuses[0].full_at, Some(plus(now, 3_000)));
    assert!(!admit(store, &org, 1, plus(now, 499)).await.is_admitted());
    assert!(admit(store, &org, 1, plus(now, 500)).await.is_admitted());
    assert!(admit(store, &org, 1, plus(now, 1_000)).await.is_admitted());
    // Refused by the daily quota: the rate is left untouched (one unit there at 1.5 s).
    let daily = admit(store, &org, 1, plus(now, 1_500)).await;
    assert_eq!(rejection(&daily).0, RejectReason::Limit(1));
    assert_eq!(remaining(&daily.verdict.statuses(&org)), vec![1, 0]);
    assert_eq!(
        remaining(&peek(store, &org, plus(now, 1_500)).await),
        vec![1, 0]
    );
    // A full bucket announces no rise; the next day the quota is back and the bucket is full.
    let tomorrow = secs(t0(), 86_400);
    let full = peek(store, &org, tomorrow).await;
    assert_eq!(remaining(&full), vec![6, 8]);
    assert_eq!(full[0].reset, tomorrow);
}

/// A plan of one rate (a unit back a minute, so none comes back during the case) and a daily
/// quota, with the rate's burst given.
fn rate_plan(burst: u64, daily: u64) -> String {
    format!(
        r#"
[[plans.p.limits]]
name = "smooth"
dimension = "requests"
rate = {{ amount = 1, per = "minute", burst = {burst} }}

[[plans.p.limits]]
name = "daily"
dimension = "requests"
zone = "UTC"
tiers = [{{ window = "day", capacity = {daily} }}]
"#
    )
}

/// On the clock every store shares (a rate on Redis counts on Redis's own, which follows it).
async fn a_reload_that_changes_a_rate_starts_it_fresh<S: Store>(store: &S) {
    let now = SystemClock.now();
    let org = acme(&rate_plan(5, 100), "");
    for _ in 0..5 {
        assert!(admit(store, &org, 1, now).await.is_admitted());
    }
    assert!(!admit(store, &org, 1, now).await.is_admitted());
    // A reload that changes only the daily quota keeps the drained bucket.
    let quota_changed = acme(&rate_plan(5, 200), "");
    let refused = admit(store, &quota_changed, 1, SystemClock.now()).await;
    assert_eq!(rejection(&refused).0, RejectReason::Limit(0));
    assert_eq!(
        remaining(&refused.verdict.statuses(&quota_changed)),
        vec![0, 195]
    );
    // A reload that changes the rate starts it fresh; the daily quota keeps its count.
    let rate_changed = acme(&rate_plan(6, 200), "");
    let fresh = admit(store, &rate_changed, 1, SystemClock.now()).await;
    assert!(fresh.is_admitted(), "{fresh:?}");
    assert_eq!(
        remaining(&fresh.verdict.statuses(&rate_changed)),
        vec![5, 194]
    );
}

async fn a_rate_charges_points_and_refuses_more_than_its_burst<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
rate = { amount = 10, per = "minute", burst = 5 }
"#,
        "",
    );
    let now = plus(t0(), 0);
    let too_big = admit(store, &org, 6, now).await;
    assert_eq!(rejection(&too_big), (RejectReason::Limit(0), None, vec![0]));
    let three = admit(store, &org, 3, now).await;
    assert!(three.is_admitted());
    assert_eq!(remaining(&three.verdict.statuses(&org)), vec![2]);
    // A correction after the response: the call cost 5, not 3. Six seconds each point.
    settle(
        store,
        &org,
        receipt(&three),
        Correction {
            latency_ms: 0,
            cost_delta: 2,
        },
        now,
    )
    .await;
    let after = peek(store, &org, now).await;
    assert_eq!(after[0].remaining, 0);
    assert_eq!(after[0].full_at, Some(secs(now, 30)));
    let refused = admit(store, &org, 1, now).await;
    assert_eq!(rejection(&refused).1, Some(secs(now, 6)));
    // A correction down gives points back, at most what the admission took (3 of the 4), and
    // one without a receipt (nothing was taken) gives nothing.
    settle(
        store,
        &org,
        tollhouse_core::Receipt::default(),
        Correction {
            latency_ms: 0,
            cost_delta: -4,
        },
        now,
    )
    .await;
    assert_eq!(peek(store, &org, now).await[0].remaining, 0);
    settle(
        store,
        &org,
        receipt(&three),
        Correction {
            latency_ms: 0,
            cost_delta: -4,
        },
        now,
    )
    .await;
    let back = peek(store, &org, now).await;
    assert_eq!(back[0].remaining, 3);
}

async fn a_latency_rate_is_debited_after_the_response<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "latency"
dimension = "latency_ms"
rate = { amount = 1000, per = "second", burst = 2000 }
"#,
        "",
    );
    let now = plus(t0(), 0);
    let first = admit(store, &org, 1, now).await;
    assert!(first.is_admitted());
    assert_eq!(remaining(&first.verdict.statuses(&org)), vec![2000]);
    settle(
        store,
        &org,
        receipt(&first),
        Correction {
            latency_ms: 5_000,
            cost_delta: 0,
        },
        now,
    )
    .await;
    // 3 s of debt: refused until the debt and one more millisecond are paid, which is also when
    // what the headers show (0 during the debt) next rises.
    let refused = admit(store, &org, 1, plus(now, 1_000)).await;
    assert_eq!(rejection(&refused).1, Some(plus(now, 3_001)));
    let status = refused.verdict.statuses(&org)[0];
    assert_eq!((status.remaining, status.reset), (0, plus(now, 3_001)));
    assert!(admit(store, &org, 1, plus(now, 3_001)).await.is_admitted());
}

async fn all_or_nothing_across_limits<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 10 }]

[[plans.p.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 5 }]
"#,
        "",
    );
    let now = secs(t0(), 1);
    let first = admit(store, &org, 3, now).await;
    assert_eq!(remaining(&first.verdict.statuses(&org)), vec![9, 2]);
    let second = admit(store, &org, 3, now).await;
    assert_eq!(
        rejection(&second),
        (RejectReason::Limit(1), Some(secs(t0(), 60)), vec![1])
    );
    assert_eq!(
        remaining(&second.verdict.statuses(&org)),
        vec![9, 2],
        "a rejection charges no limit"
    );
    assert_eq!(remaining(&peek(store, &org, now).await), vec![9, 2]);
    let third = admit(store, &org, 2, now).await;
    assert_eq!(remaining(&third.verdict.statuses(&org)), vec![8, 0]);
    let fourth = admit(store, &org, 1, now).await;
    assert_eq!(rejection(&fourth).2, vec![1]);
    assert_eq!(remaining(&peek(store, &org, now).await), vec![8, 0]);
}

async fn spill_over_minute_hour_day<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "count"
dimension = "requests"
tiers = [
  { window = "minute", capacity = 3 },
  { window = "hour", capacity = 5 },
  { window = "day", capacity = 4 },
]
"#,
        "",
    );
    let now = secs(t0(), 5);
    let expected = [
        [1, 0, 0],
        [2, 0, 0],
        [3, 0, 0],
        [3, 1, 0],
        [3, 2, 0],
        [3, 3, 0],
        [3, 4, 0],
        [3, 5, 0],
        [3, 5, 1],
        [3, 5, 2],
        [3, 5, 3],
        [3, 5, 4],
    ];
    for tiers in expected {
        let decision = admit(store, &org, 1, now).await;
        assert!(decision.is_admitted());
        assert_eq!(used(&decision.verdict.statuses(&org)[0]), tiers.to_vec());
    }
    let full = admit(store, &org, 1, now).await;
    assert_eq!(rejection(&full).1, Some(secs(t0(), 60)));
    let status = full.verdict.statuses(&org)[0];
    assert_eq!((status.limit, status.remaining), (12, 0));
    // The next minute refills the minute tier only.
    let next_minute = secs(t0(), 60);
    for _ in 0..3 {
        assert!(admit(store, &org, 1, next_minute).await.is_admitted());
    }
    let full = admit(store, &org, 1, next_minute).await;
    assert_eq!(rejection(&full).1, Some(secs(t0(), 120)));
    assert_eq!(used(&full.verdict.statuses(&org)[0]), vec![3, 5, 4]);
    // The next hour refills minute and hour; the day stays spent.
    let next_hour = secs(t0(), 3600);
    for _ in 0..8 {
        assert!(admit(store, &org, 1, next_hour).await.is_admitted());
    }
    let full = admit(store, &org, 1, next_hour).await;
    assert_eq!(rejection(&full).1, Some(secs(t0(), 3660)));
    let status = full.verdict.statuses(&org)[0];
    assert_eq!(used(&status), vec![3, 5, 4]);
    assert_eq!(status.reset, secs(t0(), 3660));
}

const POINTS_MINUTE_HOUR: &str = r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 100 }, { window = "hour", capacity = 1000 }]
"#;

async fn points_costs_and_corrections<S: Store>(store: &S) {
    let org = acme(POINTS_MINUTE_HOUR, "");
    let first = admit(store, &org, 90, secs(t0(), 1)).await;
    assert_eq!(used(&first.verdict.statuses(&org)[0]), vec![90, 0]);
    let second = admit(store, &org, 30, secs(t0(), 1)).await;
    let part = receipt(&second).parts()[0];
    assert_eq!(&part.split[..2], &[10, 20]);
    // The real cost was 5: 25 back, longest window first.
    let back = Correction {
        latency_ms: 0,
        cost_delta: -25,
    };
    settle(store, &org, receipt(&second), back, secs(t0(), 2)).await;
    assert_eq!(
        used(&peek(store, &org, secs(t0(), 2)).await[0]),
        vec![95, 0]
    );
    // A higher real cost is charged like an admission, spilling over.
    let more = Correction {
        latency_ms: 0,
        cost_delta: 10,
    };
    settle(store, &org, receipt(&first), more, secs(t0(), 3)).await;
    assert_eq!(
        used(&peek(store, &org, secs(t0(), 3)).await[0]),
        vec![100, 5]
    );
    // A refund after the minute changed goes back only to the hour.
    let minute = secs(t0(), 180);
    assert!(admit(store, &org, 95, minute).await.is_admitted());
    let split = admit(store, &org, 10, minute).await;
    assert_eq!(&receipt(&split).parts()[0].split[..2], &[5, 5]);
    assert_eq!(used(&split.verdict.statuses(&org)[0]), vec![100, 10]);
    let back = Correction {
        latency_ms: 0,
        cost_delta: -10,
    };
    settle(store, &org, receipt(&split), back, secs(t0(), 240)).await;
    let later = peek(store, &org, secs(t0(), 240)).await;
    assert_eq!(used(&later[0]), vec![0, 5]);
    assert_eq!(later[0].remaining, 100 + 995);
}

/// The largest counts tollhouse takes: capacities of `MAX_CAPACITY`, charges of `MAX_COST`,
/// latency debits of a day per request. Every store counts them exactly, with nothing wrapping,
/// and the stores agree to the unit.
async fn counts_stay_exact_at_the_extremes<S: Store>(store: &S) {
    let max = tollhouse_core::MAX_CAPACITY;
    let org = acme(
        &format!(
            r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
tiers = [{{ window = "minute", capacity = {max} }}, {{ window = "day", capacity = {max} }}]

[[plans.p.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{{ window = "minute", capacity = {max} }}]
"#
        ),
        "",
    );
    let cost = tollhouse_core::MAX_COST;
    let day_ms: u64 = 86_400_000;
    let signed = |value: u64| i64::try_from(value).expect("fits");
    for n in 1..=20u64 {
        let decision = admit(store, &org, cost, secs(t0(), 1)).await;
        assert!(decision.is_admitted());
        let debit = Correction {
            latency_ms: day_ms,
            cost_delta: i64::try_from(cost).expect("small"),
        };
        settle(store, &org, receipt(&decision), debit, secs(t0(), 2)).await;
        let statuses = peek(store, &org, secs(t0(), 2)).await;
        // Each request: its cost at admission, as much again settled after it.
        assert_eq!(used(&statuses[0]), vec![signed(2 * cost * n), 0]);
        assert_eq!(statuses[0].remaining, 2 * max - 2 * cost * n);
        assert_eq!(used(&statuses[1]), vec![signed(day_ms * n)]);
    }
}

async fn latency_debit_overdraft_until_window_end<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{ window = "minute", capacity = 1000 }, { window = "hour", capacity = 2000 }]
"#,
        "",
    );
    let first = admit(store, &org, 1, secs(t0(), 1)).await;
    assert_eq!(
        remaining(&first.verdict.statuses(&org)),
        vec![3000],
        "latency is charged after the response"
    );
    let slow = Correction {
        latency_ms: 3500,
        cost_delta: 0,
    };
    settle(store, &org, receipt(&first), slow, secs(t0(), 2)).await;
    let status = peek(store, &org, secs(t0(), 2)).await[0];
    assert_eq!(used(&status), vec![1000, 2500]);
    assert_eq!(status.remaining, 0);
    assert_eq!(status.tiers()[1].remaining, 0);
    let rejected = admit(store, &org, 1, secs(t0(), 3)).await;
    assert_eq!(
        rejection(&rejected),
        (RejectReason::Limit(0), Some(secs(t0(), 60)), vec![0])
    );
    // The minute refills, but the hour's debt stays until the hour ends.
    let refilled = peek(store, &org, secs(t0(), 60)).await[0];
    assert_eq!(refilled.remaining, 500);
    let again = admit(store, &org, 1, secs(t0(), 60)).await;
    assert!(again.is_admitted());
    let medium = Correction {
        latency_ms: 600,
        cost_delta: 0,
    };
    settle(store, &org, receipt(&again), medium, secs(t0(), 61)).await;
    let rejected = admit(store, &org, 1, secs(t0(), 62)).await;
    assert_eq!(rejection(&rejected).1, Some(secs(t0(), 120)));
    assert_eq!(peek(store, &org, secs(t0(), 3600)).await[0].remaining, 3000);
    // Spent to exactly zero: a latency limit admits only while something is left.
    let hour = secs(t0(), 3600);
    let last = admit(store, &org, 1, hour).await;
    let exact = Correction {
        latency_ms: 3000,
        cost_delta: 0,
    };
    settle(store, &org, receipt(&last), exact, hour).await;
    assert_eq!(used(&peek(store, &org, hour).await[0]), vec![1000, 2000]);
    assert_eq!(
        rejection(&admit(store, &org, 1, hour).await).1,
        Some(secs(hour, 60))
    );
}

async fn retry_time_is_exact<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 10 }, { window = "hour", capacity = 15 }]
"#,
        "",
    );
    let now = secs(t0(), 30);
    for _ in 0..3 {
        assert!(admit(store, &org, 7, now).await.is_admitted());
    }
    let minute_end = secs(t0(), 60);
    assert_eq!(
        rejection(&admit(store, &org, 7, now).await).1,
        Some(minute_end)
    );
    let just_before = admit(store, &org, 7, plus(minute_end, -1)).await;
    assert_eq!(rejection(&just_before).1, Some(minute_end));
    assert!(admit(store, &org, 7, minute_end).await.is_admitted());
    // More than every tier together can ever hold: no retry time.
    assert_eq!(
        rejection(&admit(store, &org, 30, minute_end).await),
        (RejectReason::Limit(0), None, vec![0])
    );
}

async fn reset_forgets_current_windows<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "a"
dimension = "requests"
tiers = [{ window = "minute", capacity = 2 }, { window = "hour", capacity = 1 }]

[[plans.p.limits]]
name = "b"
dimension = "requests"
tiers = [{ window = "minute", capacity = 3 }]
"#,
        "",
    );
    let now = secs(t0(), 10);
    for _ in 0..3 {
        assert!(admit(store, &org, 1, now).await.is_admitted());
    }
    assert_eq!(rejection(&admit(store, &org, 1, now).await).2, vec![0, 1]);
    store.reset(&org, Some("nope")).await.expect("reset");
    assert_eq!(remaining(&peek(store, &org, now).await), vec![0, 0]);
    store.reset(&org, Some("a")).await.expect("reset");
    assert_eq!(remaining(&peek(store, &org, now).await), vec![3, 0]);
    assert_eq!(rejection(&admit(store, &org, 1, now).await).2, vec![1]);
    store.reset(&org, None).await.expect("reset");
    assert_eq!(remaining(&peek(store, &org, now).await), vec![3, 3]);
    assert_eq!(
        remaining(&admit(store, &org, 1, now).await.verdict.statuses(&org)),
        vec![2, 2]
    );
}

async fn peek_charges_nothing<S: Store>(store: &S) {
    let org = acme(POINTS_MINUTE_HOUR, "");
    let now = secs(t0(), 10);
    let fresh = peek(store, &org, now).await;
    assert_eq!(fresh[0].remaining, 1100);
    assert_eq!(fresh[0].reset, secs(t0(), 60));
    assert_eq!(used(&fresh[0]), vec![0, 0]);
    assert_eq!(fresh[0].tiers()[1].reset, secs(t0(), 3600));
    admit(store, &org, 30, now).await;
    let once = peek(store, &org, now).await;
    assert_eq!(peek(store, &org, now).await, once);
    assert_eq!(once[0].remaining, 1070);
    let after = admit(store, &org, 1, now).await;
    assert_eq!(after.verdict.statuses(&org)[0].remaining, 1069);
}

async fn a_limit_rejection_says_how_many_are_in_flight<S: Store>(store: &S) {
    let points = PER_MINUTE_5.replace("\"requests\"", "\"points\"");
    let org = acme(&format!("concurrency = 3\n{points}"), "");
    let now = secs(t0(), 1);
    let mut held = Vec::new();
    for expected in 1..=3 {
        let decision = admit(store, &org, 1, now).await;
        assert_eq!(decision.in_flight, Some(expected));
        held.push(decision.permit.expect("a permit"));
    }
    drop(held.pop());
    in_flight_becomes(store, &org, 2).await;
    let over = admit(store, &org, 3, now).await;
    assert!(matches!(rejection(&over).0, RejectReason::Limit(0)));
    assert!(over.permit.is_none());
    assert_eq!(over.in_flight, Some(2), "the two permits still held");
}

async fn requests_in_flight_count_without_a_concurrency_limit<S: Store>(store: &S) {
    let org = acme(PER_MINUTE_5, "");
    let now = secs(t0(), 1);
    // The usage counts them (a decision need not: the plan does not limit concurrency).
    let first = admit(store, &org, 1, now).await;
    in_flight_becomes(store, &org, 1).await;
    let second = admit(store, &org, 1, now).await;
    in_flight_becomes(store, &org, 2).await;
    drop(first);
    in_flight_becomes(store, &org, 1).await;
    drop(second);
    in_flight_becomes(store, &org, 0).await;
}

async fn concurrency_permits<S: Store>(store: &S) {
    let org = acme(
        &format!("concurrency = 2\n{PER_MINUTE_5}").replace("capacity = 5", "capacity = 100"),
        "",
    );
    let now = secs(t0(), 1);
    let first = admit(store, &org, 1, now).await;
    assert_eq!(first.in_flight, Some(1));
    let p1 = first.permit.expect("a permit");
    let second = admit(store, &org, 1, now).await;
    assert_eq!(second.in_flight, Some(2));
    let p2 = second.permit.expect("a second permit");
    let third = admit(store, &org, 1, now).await;
    assert_eq!(
        third.in_flight,
        Some(2),
        "a rejection says how many are in flight"
    );
    assert_eq!(
        rejection(&third),
        (RejectReason::Concurrency, Some(secs(now, 1)), vec![])
    );
    assert!(third.permit.is_none());
    assert_eq!(
        remaining(&third.verdict.statuses(&org)),
        vec![98],
        "a rejection charges nothing"
    );
    in_flight_becomes(store, &org, 2).await;
    // Released on drop.
    drop(p1);
    let p3 = admit_when_free(store, &org, now)
        .await
        .permit
        .expect("a permit");
    // A forgotten permit keeps its slot for as long as the store lives.
    std::mem::forget(p2);
    assert_eq!(
        rejection(&admit(store, &org, 1, now).await).0,
        RejectReason::Concurrency
    );
    drop(p3);
    let fourth = admit_when_free(store, &org, now).await;
    assert_eq!(fourth.in_flight, Some(2));
    drop(fourth);
    in_flight_becomes(store, &org, 1).await;
}

async fn a_full_concurrency_limit_names_a_full_limit_too<S: Store>(store: &S) {
    let org = acme(&format!("concurrency = 1\n{PER_MINUTE_5}"), "");
    let now = secs(t0(), 10);
    let held = admit(store, &org, 1, now).await;
    let permit = held.permit.expect("a permit");
    // No slot, but the limit has room: concurrency, with a retry a second away.
    let busy = admit(store, &org, 1, now).await;
    assert_eq!(
        rejection(&busy),
        (RejectReason::Concurrency, Some(secs(now, 1)), vec![])
    );
    drop(permit);
    for _ in 0..3 {
        drop(admit_when_free(store, &org, now).await);
    }
    in_flight_becomes(store, &org, 0).await;
    let _last = admit_when_free(store, &org, now)
        .await
        .permit
        .expect("the fifth request of the minute");
    // No slot and no room in the minute: the minute frees up last, so it is the reason, with
    // its retry time (not the second a slot might take), and nothing is charged.
    let both = admit(store, &org, 1, now).await;
    assert_eq!(both.in_flight, Some(1));
    assert_eq!(
        rejection(&both),
        (RejectReason::Limit(0), Some(secs(t0(), 60)), vec![0])
    );
    assert_eq!(remaining(&both.verdict.statuses(&org)), vec![0]);
    // Less than a second before the minute ends, the slot is what frees up last.
    let late = plus(t0(), 59_500);
    assert_eq!(
        rejection(&admit(store, &org, 1, late).await),
        (RejectReason::Concurrency, Some(plus(late, 1000)), vec![0])
    );
}

async fn usage_counts_calls_today<S: Store>(store: &S) {
    let org = acme(PER_MINUTE_5, "");
    let now = secs(t0(), 30);
    let mut calls = Vec::new();
    for i in 0..3 {
        let mut admitted = call(secs(t0(), i), &format!("/v1/items?page={i}"));
        admitted.cost = 2;
        calls.push(admitted.clone());
        store
            .settle(
                &org,
                Settlement {
                    call: Some(admitted),
                    at: secs(t0(), i),
                    ..Settlement::default()
                },
            )
            .await
            .expect("settle");
    }
    for i in 3..5 {
        let rejected = call(secs(t0(), i), "/v1/items").with_outcome(Outcome::Rejected {
            limit: "per_minute".into(),
        });
        calls.push(rejected.clone());
        record(store, &org, rejected).await;
    }
    let exempt = call(secs(t0(), 5), "/v1/files/1").with_outcome(Outcome::Exempt);
    calls.push(exempt.clone());
    record(store, &org, exempt).await;
    let mut free = call(secs(t0(), 6), "/v1/connectors/x").with_outcome(Outcome::Exempt);
    free.billable = false;
    calls.push(free.clone());
    record(store, &org, free).await;

    let usage = store.usage(&org, now, 31).await.expect("usage");
    assert_eq!(usage.in_flight, 0);
    let usage = usage.usage;
    assert_eq!(
        usage.date,
        chrono::NaiveDate::from_ymd_opt(2026, 3, 10).expect("date")
    );
    assert_eq!(usage.calls_today, 3, "admitted calls today");
    assert_eq!(usage.billable_today, 6, "every billable call");
    calls.reverse();
    assert_eq!(usage.calls, calls, "every call, newest first, intact");
    assert_eq!(usage.endpoints.len(), 1);
    assert_eq!(usage.endpoints[0].calls, 7);
    assert_eq!(
        usage.endpoints[0].points, 6,
        "points of admitted calls only"
    );
    assert_eq!(&*usage.endpoints[0].route, "/v1/items");
}

async fn call_log_keeps_the_newest<S: Store>(store: &S) {
    let org = acme(PER_MINUTE_5, "");
    let mut calls = Vec::new();
    for i in 0..101 {
        let call = call(secs(t0(), i), &format!("/v1/items?i={i}"));
        calls.push(call.clone());
        record(store, &org, call).await;
    }
    let usage = store
        .usage(&org, secs(t0(), 200), 31)
        .await
        .expect("usage")
        .usage;
    assert_eq!(usage.calls.len(), 100);
    assert_eq!(&*usage.calls[0].path, "/v1/items?i=100");
    assert_eq!(&*usage.calls[99].path, "/v1/items?i=1");
    calls.reverse();
    assert_eq!(usage.calls, calls[..100]);
    assert_eq!(usage.calls_today, 101);

    // A slow call is recorded when it ends, after a quicker one that arrived later; the log lists
    // calls by arrival.
    record(store, &org, call(secs(t0(), 150), "/quick")).await;
    record(store, &org, call(secs(t0(), 149), "/slow")).await;
    let usage = store
        .usage(&org, secs(t0(), 200), 31)
        .await
        .expect("usage")
        .usage;
    let paths: Vec<&str> = usage.calls[..3].iter().map(|call| &*call.path).collect();
    assert_eq!(paths, ["/quick", "/slow", "/v1/items?i=100"]);
}

async fn billable_days<S: Store>(store: &S) {
    let org = acme(PER_MINUTE_5, "");
    let day = |d: u32| utc(2026, 3, d, 12, 0, 0);
    let date = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 3, d).expect("date");
    record(store, &org, call(day(8), "/a")).await;
    record(store, &org, call(day(10), "/a")).await;
    record(store, &org, call(secs(day(10), 1), "/a")).await;
    let mut free = call(secs(day(10), 2), "/a");
    free.billable = false;
    record(store, &org, free).await;
    let now = secs(day(10), 60);
    let usage = store.usage(&org, now, 3).await.expect("usage").usage;
    assert_eq!(
        usage.billable_days,
        vec![(date(8), 1), (date(9), 0), (date(10), 2)]
    );
    assert_eq!(usage.billable_today, 2);
    // A late call counts on its own date, not in today's report.
    record(store, &org, call(day(9), "/late")).await;
    let usage = store.usage(&org, now, 3).await.expect("usage").usage;
    assert_eq!(
        usage.billable_days,
        vec![(date(8), 1), (date(9), 1), (date(10), 2)]
    );
    assert_eq!(usage.calls_today, 3);
    assert!(usage.endpoints.iter().all(|e| e.calls == 3));
    let month = store.usage(&org, now, 31).await.expect("usage").usage;
    assert_eq!(month.billable_days.len(), 31);
    assert_eq!(month.billable_days[0].0, date(10) - chrono::Days::new(30));
    assert_eq!(month.billable_days[30], (date(10), 2));
    assert_eq!(
        store
            .usage(&org, now, 100)
            .await
            .expect("usage")
            .usage
            .billable_days
            .len(),
        31
    );
    assert_eq!(
        store
            .usage(&org, now, 0)
            .await
            .expect("usage")
            .usage
            .billable_days
            .len(),
        1
    );
    // The next day starts empty.
    let tomorrow = store.usage(&org, day(11), 2).await.expect("usage").usage;
    assert_eq!((tomorrow.calls_today, tomorrow.billable_today), (0, 0));
    assert!(tomorrow.endpoints.is_empty() && tomorrow.repeated.is_empty());
    assert_eq!(tomorrow.billable_days, vec![(date(10), 2), (date(11), 0)]);
}

async fn repeated_requests_report<S: Store>(store: &S) {
    let org = acme(PER_MINUTE_5, "");
    for i in 0..12 {
        record(
            store,
            &org,
            call(secs(t0(), i * 30), "/v1/items?status=open"),
        )
        .await;
    }
    for i in 0..9 {
        record(store, &org, call(secs(t0(), i), "/v1/items?status=closed")).await;
    }
    for i in 0..2 {
        let mut report = CallRecord::new(secs(t0(), 400 + i), "GET", "/v1/reports?id=7")
            .with_route("/v1/reports");
        report.cost = 10;
        record(store, &org, report).await;
    }
    let usage = store
        .usage(&org, secs(t0(), 500), 31)
        .await
        .expect("usage")
        .usage;
    assert_eq!(usage.repeated.len(), 1, "{:?}", usage.repeated);
    let repeated = &usage.repeated[0];
    assert_eq!(
        (&*repeated.method, &*repeated.path, repeated.count),
        ("GET", "/v1/items?status=open", 12)
    );
    assert!((repeated.mean_interval_s - 30.0).abs() < 1e-9);
    let endpoints: Vec<(&str, u64, u64)> = usage
        .endpoints
        .iter()
        .map(|e| (&*e.route, e.calls, e.points))
        .collect();
    assert_eq!(
        endpoints,
        vec![("/v1/items", 21, 21), ("/v1/reports", 2, 20)]
    );
}

async fn windows_roll_at_the_orgs_local_midnight<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2 }]
"#,
        "time_zone = \"America/Los_Angeles\"",
    );
    let zone = "America/Los_Angeles";
    let late = local(zone, 2026, 3, 10, 23, 59, 59);
    let midnight = local(zone, 2026, 3, 11, 0, 0, 0);
    assert_eq!(midnight, utc(2026, 3, 11, 7, 0, 0), "PDT is UTC-7");
    assert!(
        admit(store, &org, 1, local(zone, 2026, 3, 10, 0, 0, 0))
            .await
            .is_admitted()
    );
    assert!(admit(store, &org, 1, late).await.is_admitted());
    assert_eq!(
        rejection(&admit(store, &org, 1, late).await).1,
        Some(midnight)
    );
    assert_eq!(
        rejection(&admit(store, &org, 1, plus(midnight, -1)).await).1,
        Some(midnight)
    );
    let fresh = admit(store, &org, 1, midnight).await;
    assert_eq!(remaining(&fresh.verdict.statuses(&org)), vec![1]);
    assert_eq!(
        fresh.verdict.statuses(&org)[0].reset,
        local(zone, 2026, 3, 12, 0, 0, 0)
    );
    // Usage follows the org's date too.
    record(store, &org, call(late, "/a")).await;
    record(store, &org, call(secs(midnight, 1), "/a")).await;
    let usage = store
        .usage(&org, secs(midnight, 2), 2)
        .await
        .expect("usage")
        .usage;
    let date = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 3, d).expect("date");
    assert_eq!(usage.date, date(11));
    assert_eq!(usage.calls_today, 1);
    assert_eq!(usage.billable_days, vec![(date(10), 1), (date(11), 1)]);
}

async fn a_day_across_a_dst_change<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 1 }]
"#,
        "time_zone = \"America/Los_Angeles\"",
    );
    let zone = "America/Los_Angeles";
    // 8 March 2026: clocks spring forward; the day has 23 hours.
    let noon = local(zone, 2026, 3, 8, 12, 0, 0);
    let next_midnight = local(zone, 2026, 3, 9, 0, 0, 0);
    assert_eq!(
        next_midnight.millis_since(local(zone, 2026, 3, 8, 0, 0, 0)),
        23 * 3_600_000
    );
    assert!(admit(store, &org, 1, noon).await.is_admitted());
    let rejected = admit(store, &org, 1, noon).await;
    assert_eq!(rejection(&rejected).1, Some(next_midnight));
    assert!(admit(store, &org, 1, next_midnight).await.is_admitted());
}

async fn sandbox_and_override_capacities<S: Store>(store: &S) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 6 }]
"#,
        "environment = \"sandbox\"\noverrides = [{ limit = \"count\", capacity = 10, until = \"2026-03-10T12:00:30Z\" }]",
    );
    // Override 10, halved for the sandbox: 5, until 12:00:30; then 6 halved: 3.
    let now = secs(t0(), 1);
    assert_eq!(peek(store, &org, now).await[0].limit, 5);
    for _ in 0..4 {
        assert!(admit(store, &org, 1, now).await.is_admitted());
    }
    let after = secs(t0(), 30);
    let status = peek(store, &org, after).await[0];
    assert_eq!((status.limit, status.remaining), (3, 0));
    assert_eq!(
        rejection(&admit(store, &org, 1, after).await).1,
        Some(secs(t0(), 60))
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        /// Every case on a fresh [`MemoryStore`].
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&tollhouse_core::MemoryStore::new()).await;
                }
            )*
        }

        /// Every case on a [`RedisStore`] with a key prefix of its own.
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(redis) = super::redis_for(stringify!($case)) else { return };
                    let store = super::redis_store(&redis, stringify!($case)).await;
                    super::$case(&store).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn differential_random_ops() {
                let Some(redis) = super::redis_for("differential_random_ops") else { return };
                let store = super::redis_store(&redis, "differential_random_ops").await;
                super::differential(&tollhouse_core::MemoryStore::new(), &store).await;
            }
        }

        /// Every case on a [`RedisStore`] with quota grants for every org.
        mod grants {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(redis) = super::redis_for(stringify!($case)) else { return };
                    let store = super::granting_store(&redis, stringify!($case)).await;
                    super::$case(&store).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn differential_random_ops() {
                let Some(redis) = super::redis_for("differential_random_ops") else { return };
                let store = super::granting_store(&redis, "differential_random_ops").await;
                super::differential(&tollhouse_core::MemoryStore::new(), &store).await;
            }
        }

        /// Every case on a Redis Cluster of three primaries and three replicas: one cluster for
        /// all of them (it takes seconds to form), a key prefix per case.
        mod cluster {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_case() {
                let Some(cluster) = tollhouse_tests::redis_cluster::cluster_for("cluster_suite")
                else {
                    return;
                };
                $(
                    let store = super::cluster_store(&cluster, stringify!($case)).await;
                    super::$case(&store).await;
                )*
                let store = super::cluster_store(&cluster, "differential_random_ops").await;
                super::differential(&tollhouse_core::MemoryStore::new(), &store).await;
                // And with quota grants for every org.
                $(
                    let store = super::granting_cluster_store(&cluster, stringify!($case)).await;
                    super::$case(&store).await;
                )*
            }
        }

        /// Every case on Valkey: on one `valkey-server`, then on a Valkey cluster of three
        /// primaries and three replicas; a key prefix per case.
        mod valkey {
            use tollhouse_tests::redis_server::Flavor;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_case_on_a_server_and_a_cluster() {
                let Some(server) = tollhouse_tests::redis_server::own_valkey_server("valkey_suite")
                else {
                    return;
                };
                $(
                    let store = super::redis_store_at(&server.url(), stringify!($case)).await;
                    super::$case(&store).await;
                )*
                let store = super::redis_store_at(&server.url(), "differential_random_ops").await;
                super::differential(&tollhouse_core::MemoryStore::new(), &store).await;
                let Some(cluster) =
                    tollhouse_tests::redis_cluster::cluster_of(Flavor::Valkey, "valkey_cluster")
                else {
                    return;
                };
                $(
                    let store = super::cluster_store(&cluster, stringify!($case)).await;
                    super::$case(&store).await;
                )*
            }
        }

        /// Every case on a [`DurableStore`] in a state directory of its own.
        mod durable {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::durable_store(stringify!($case));
                    super::$case(&store).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn differential_random_ops() {
                let (store, _dir) = super::durable_store("differential_random_ops");
                super::differential(&tollhouse_core::MemoryStore::new(), &store).await;
            }
        }
    };
}

/// Cases whose timing comes from the caller's clock, for the stores that count on it: a rate on
/// Redis counts on Redis's own clock (so that instances whose clocks differ agree), and is tested
/// there with real time (`redis_only::rate_*`).
macro_rules! instance_clock_suite {
    ($($case:ident),* $(,)?) => {
        /// Every case on a fresh [`MemoryStore`].
        mod memory_clock {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&tollhouse_core::MemoryStore::new()).await;
                }
            )*
        }

        /// Every case on a [`DurableStore`] in a state directory of its own.
        mod durable_clock {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _dir) = super::durable_store(stringify!($case));
                    super::$case(&store).await;
                }
            )*
        }
    };
}

instance_clock_suite!(
    a_rate_admits_its_burst_then_one_per_interval,
    a_rate_charges_points_and_refuses_more_than_its_burst,
    a_latency_rate_is_debited_after_the_response,
);

/// A store on `cluster` with a key prefix of `test`'s own.
async fn cluster_store(
    cluster: &tollhouse_tests::redis_cluster::TestCluster,
    test: &str,
) -> RedisStore {
    suite_builder(test)
        .cluster(cluster.urls())
        .await
        .expect("connect to the test cluster")
}

/// A store on `cluster` with quota grants for every org.
async fn granting_cluster_store(
    cluster: &tollhouse_tests::redis_cluster::TestCluster,
    test: &str,
) -> RedisStore {
    granting_builder(test)
        .cluster(cluster.urls())
        .await
        .expect("connect to the test cluster")
}

/// A durable store in a fresh state directory of the test's own, removed when the guard drops.
fn durable_store(test: &str) -> (tollhouse_core::durable::DurableStore, TempDir) {
    let dir = TempDir(
        std::env::temp_dir().join(format!("tollhouse-suite-{}-{test}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    let store = tollhouse_core::durable::DurableStore::builder()
        .flush_interval(Duration::from_millis(5))
        .open(&dir.0)
        .expect("a state directory");
    (store, dir)
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

suite!(
    admits_until_capacity,
    a_reload_that_changes_a_rate_starts_it_fresh,
    second_tiers_spill_into_minutes_weeks_and_years,
    all_or_nothing_across_limits,
    spill_over_minute_hour_day,
    points_costs_and_corrections,
    latency_debit_overdraft_until_window_end,
    counts_stay_exact_at_the_extremes,
    retry_time_is_exact,
    reset_forgets_current_windows,
    peek_charges_nothing,
    concurrency_permits,
    a_limit_rejection_says_how_many_are_in_flight,
    a_full_concurrency_limit_names_a_full_limit_too,
    requests_in_flight_count_without_a_concurrency_limit,
    usage_counts_calls_today,
    call_log_keeps_the_newest,
    billable_days,
    repeated_requests_report,
    windows_roll_at_the_orgs_local_midnight,
    a_day_across_a_dst_change,
    sandbox_and_override_capacities,
);

/// A small deterministic generator, so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Replays one random sequence of admissions, settlements, peeks, resets and clock moves on two
/// stores and requires identical decisions, byte for byte (their `Debug` output).
async fn differential<A: Store, B: Store>(a: &A, b: &B) {
    let org = acme(
        r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
zone = "Asia/Kolkata"
tiers = [
  { window = "minute", capacity = 40 },
  { window = "hour", capacity = 300 },
  { window = "day", capacity = 1000 },
]

[[plans.p.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 15 }, { window = "day", capacity = 400 }]

[[plans.p.limits]]
name = "latency"
dimension = "latency_ms"
zone = "server"
tiers = [{ window = "minute", capacity = 3000 }, { window = "hour", capacity = 20000 }]

[[plans.p.limits]]
name = "windows"
dimension = "requests"
zone = "Australia/Lord_Howe"
tiers = [
  { window = "30 seconds", capacity = 6 },
  { window = "20 minutes", capacity = 40 },
  { window = "6 hours", capacity = 120 },
  { window = "week", capacity = 300 },
  { window = "year", capacity = 50 },
]
"#,
        "time_zone = \"America/New_York\"",
    );
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    // Just before US clocks spring forward (07:00 UTC), so the org's day has 23 hours.
    let mut now = utc(2026, 3, 8, 6, 50, 0);
    let mut receipts = Vec::new();
    for step in 0..400 {
        let roll = rng.below(100);
        if roll < 55 {
            let cost = 1 + rng.below(12);
            let x = admit(a, &org, cost, now).await;
            let y = admit(b, &org, cost, now).await;
            assert_eq!(
                format!("{:?}", x.verdict),
                format!("{:?}", y.verdict),
                "step {step}: admit {cost} at {now}"
            );
            if x.is_admitted() && receipts.len() < 20 {
                receipts.push(receipt(&x));
            }
        } else if roll < 75 && !receipts.is_empty() {
            let index = usize::try_from(rng.below(receipts.len() as u64)).expect("small");
            let receipt = receipts.swap_remove(index);
            let correction = Correction {
                latency_ms: rng.below(1500),
                cost_delta: i64::try_from(rng.below(13)).expect("small") - 6,
            };
            settle(a, &org, receipt.clone(), correction, now).await;
            settle(b, &org, receipt, correction, now).await;
        } else if roll < 85 {
            assert_eq!(
                peek(a, &org, now).await,
                peek(b, &org, now).await,
                "step {step}: peek at {now}"
            );
        } else if roll < 88 {
            let limit = ["points", "count", "latency"]
                .get(usize::try_from(rng.below(4)).expect("small"))
                .copied();
            a.reset(&org, limit).await.expect("reset");
            b.reset(&org, limit).await.expect("reset");
        } else if roll < 98 {
            now = secs(now, i64::try_from(1 + rng.below(70)).expect("small"));
        } else {
            now = secs(
                now,
                i64::try_from(3600 + rng.below(3 * 3600)).expect("small"),
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Redis only

mod redis_only {
    use super::*;
    use futures_util::future::join_all;
    use tollhouse_core::StoreError;
    use tollhouse_redis::{FailingFast, PROBE_INTERVAL, TRIP_AFTER, cluster_slot};
    use tollhouse_tests::redis_server::RedisServer;

    use tollhouse_tests::redis_server::{command_calls, connection as raw};

    /// The commands Redis receives from clients, as `MONITOR` shows them (commands that scripts
    /// run are told apart: they come from `lua`).
    struct Monitor {
        stream: std::net::TcpStream,
        reader: std::thread::JoinHandle<Vec<String>>,
    }

    impl Monitor {
        fn start(port: u16) -> Self {
            use std::io::{BufRead, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.write_all(b"MONITOR\r\n").expect("MONITOR");
            let mut lines = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut ok = String::new();
            lines.read_line(&mut ok).expect("+OK");
            assert_eq!(ok.trim_end(), "+OK");
            let reader = std::thread::spawn(move || {
                let mut seen = Vec::new();
                for line in lines.lines() {
                    let Ok(line) = line else { break };
                    let done = line.contains("\"end-of-count\"");
                    seen.push(line);
                    if done {
                        break;
                    }
                }
                seen
            });
            Self { stream, reader }
        }

        /// Every command clients sent until now, in order (the marker excluded).
        async fn client_commands(
            self,
            conn: &mut ::redis::aio::MultiplexedConnection,
        ) -> Vec<String> {
            let _: String = ::redis::cmd("ECHO")
                .arg("end-of-count")
                .query_async(conn)
                .await
                .expect("ECHO");
            let seen = self.reader.join().expect("the monitor thread");
            drop(self.stream);
            seen.into_iter()
                .filter(|line| !line.contains(" lua]") && !line.contains("\"end-of-count\""))
                .map(|line| {
                    // +1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" "..." ...
                    line.split_once("] ")
                        .map(|(_, command)| command.split(' ').next().unwrap_or("").to_owned())
                        .unwrap_or(line)
                })
                .collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_on_redis_is_first_come_first_served_with_a_bounded_poll() {
        let Some(server) = own_redis_server("waiting_on_redis") else {
            return;
        };
        let prefix = unique_prefix("waiting");
        let url = server.url();
        let connect = || {
            RedisStore::builder()
                .prefix(prefix.clone())
                .timeout(Duration::from_secs(2))
                .connect(&url)
        };
        let (here, elsewhere) = (
            Arc::new(connect().await.expect("connect")),
            connect().await.expect("connect"),
        );
        let org = acme(
            &format!("concurrency = 1\nconcurrency_wait_ms = 5000\n{PER_MINUTE_5}")
                .replace("capacity = 5 }", "capacity = 100 }"),
            "",
        );
        // The slot is held on the other instance: nothing freed here tells the waiters.
        let held = admit(&elsewhere, &org, 1, t0()).await.permit;
        assert!(held.is_some());
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for place in 0..5 {
            let (store, mine, served) = (Arc::clone(&here), Arc::clone(&org), Arc::clone(&served));
            waiters.push(tokio::spawn(async move {
                let clock = tollhouse_core::ManualClock::new(t0());
                let decision = store
                    .admit_waiting(&mine, Charge::default(), &clock)
                    .await
                    .expect("the store answers");
                assert!(
                    decision.is_admitted(),
                    "waiter {place} is served in its wait"
                );
                served.lock().expect("lock").push(place);
                // Held a moment, then freed through this instance: the next in line is woken.
                tokio::task::yield_now().await;
                drop(decision.permit);
            }));
            // Each joins the line before the next arrives.
            while here.waiting(&org) < place + 1 {
                tokio::task::yield_now().await;
            }
        }
        let mut info = raw(&server.url()).await;
        let before = command_calls(&mut info, "evalsha").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = command_calls(&mut info, "evalsha").await;
        // Only the first in line asks: after 10 ms, then twice as long up to 100 ms.
        assert!(
            after - before <= 15,
            "{} scripts in a second for five waiters",
            after - before
        );
        drop(held);
        for waiter in waiters {
            waiter.await.expect("a waiter");
        }
        assert_eq!(
            *served.lock().expect("lock"),
            vec![0, 1, 2, 3, 4],
            "first come, first served"
        );
    }

    /// A TCP proxy to Redis that holds every chunk a client sends for `delay` before passing it
    /// on: what a far-away Redis looks like. Returns its URL.
    async fn slow_proxy(redis_url: &str, delay: Duration) -> String {
        let target = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let n = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            tokio::time::sleep(delay).await;
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut server_read, &mut client_write);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        format!("redis://{address}/")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lease_renewals_are_sent_at_once_not_one_org_after_another() {
        let Some(redis) = redis_for("renewals_at_once") else {
            return;
        };
        const DELAY: Duration = Duration::from_millis(100);
        let url = slow_proxy(redis.url(), DELAY).await;
        let store = RedisStore::builder()
            .prefix(unique_prefix("renewals"))
            .timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .expect("connect through the proxy");
        let mut permits = Vec::new();
        for n in 0..10 {
            let org = acme_named(&format!("org-{n}"));
            let decision = admit(&store, &org, 1, t0()).await;
            permits.push(decision.permit.expect("a lease"));
        }
        assert_eq!(store.leases_held(), 10);
        let started = Instant::now();
        store.renew_leases().await.expect("renewed");
        let took = started.elapsed();
        // One org after another, ten round trips would take at least ten delays.
        assert!(
            took < DELAY * 5,
            "renewing ten orgs' leases took {took:?}: one round trip per org in sequence?"
        );
        drop(permits);
    }

    /// An org called `id` with one slot-free plan.
    fn acme_named(id: &str) -> Arc<ResolvedOrg> {
        let toml = format!("[plans.p]\n{PER_MINUTE_5}\n[[orgs]]\nid = \"{id}\"\nplan = \"p\"\n");
        let policy = Policy::from_toml_str(&toml, "suite.toml".as_ref()).expect("a valid policy");
        Arc::clone(policy.org(id).expect("defined"))
    }

    /// Bytes Redis uses for the keys of one org (`MEMORY USAGE`, summed over a `SCAN`).
    async fn redis_bytes_of(
        conn: &mut ::redis::aio::MultiplexedConnection,
        prefix: &str,
        org: &str,
    ) -> u64 {
        let mut cursor = 0u64;
        let mut total = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}{{{org}}}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .expect("SCAN");
            for key in keys {
                let bytes: Option<u64> = ::redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("MEMORY USAGE");
                total += bytes.unwrap_or(0);
            }
            if next == 0 {
                return total;
            }
            cursor = next;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hostile_org_holds_no_more_redis_memory_than_the_bound_and_others_are_served_exactly()
    {
        let Some(redis) = redis_for("hostile_org_redis") else {
            return;
        };
        let prefix = unique_prefix("hostile");
        let store = RedisStore::builder()
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(2))
            .connect(redis.url())
            .await
            .expect("connect");
        let policy = Policy::from_toml_str(
            &format!(
                "[plans.p]\n{PER_MINUTE_5}\n[[orgs]]\nid = \"mallory\"\nplan = \"p\"\n\
                 [[orgs]]\nid = \"alice\"\nplan = \"p\"\n"
            ),
            "hostile.toml".as_ref(),
        )
        .expect("a valid policy");
        let mallory = Arc::clone(policy.org("mallory").expect("defined"));
        let alice = Arc::clone(policy.org("alice").expect("defined"));
        // Long paths, a new query every time, odd methods, floods of rejections and usage reads.
        for i in 0..3_000u64 {
            let at = secs(t0(), 1);
            let decision = admit(&store, &mallory, 1, at).await;
            let pad = "q".repeat(usize::try_from(i % 30).unwrap_or(0) * 1_000);
            let method = if i % 5 == 0 { "OTHER" } else { "GET" };
            let mut call = CallRecord::new(at, method, &format!("/v1/x/{i}?pad={pad}&i={i}"));
            if !decision.is_admitted() {
                call.outcome = Outcome::Rejected {
                    limit: Arc::from("per_minute"),
                };
                call.logged = i % 50 == 0;
            }
            record(&store, &mallory, call).await;
            if i % 100 == 0 {
                store
                    .usage_view(&mallory, at, tollhouse_core::UsageView::Report)
                    .await
                    .expect("the store answers");
            }
        }
        let mut conn = raw(redis.url()).await;
        let bytes = redis_bytes_of(&mut conn, &prefix, "mallory").await;
        let bound = tollhouse_redis::REDIS_BYTES_PER_ORG;
        println!("mallory holds {bytes} bytes of Redis memory (bound {bound})");
        assert!(
            bytes <= bound,
            "{bytes} bytes in Redis for one org, over the bound of {bound}"
        );
        // Another org is served, and limited exactly, as if nothing happened.
        let admitted = join_all((0..8).map(|_| admit(&store, &alice, 1, secs(t0(), 2))))
            .await
            .iter()
            .filter(|decision| decision.is_admitted())
            .count();
        assert_eq!(admitted, 5, "alice gets exactly her five a minute");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_round_trip_per_admission() {
        let Some(server) = own_redis_server("one_round_trip_per_admission") else {
            return;
        };
        let store = RedisStore::builder()
            .prefix(unique_prefix("round_trips"))
            .timeout(Duration::from_secs(2))
            .lease_ttl(Duration::from_secs(120))
            .connect(&server.url())
            .await
            .expect("connect");
        let org = acme(
            &format!("concurrency = 1000\n{POINTS_MINUTE_HOUR}\n{PER_MINUTE_5}")
                .replace("capacity = 5 }", "capacity = 5000 }"),
            "",
        );
        let mut info = raw(&server.url()).await;
        let evalsha_before = command_calls(&mut info, "evalsha").await;
        let monitor = Monitor::start(server.port());
        let mut permits = Vec::new();
        const N: usize = 40;
        for i in 0..N {
            let decision = admit(&store, &org, 1 + i as u64 % 3, secs(t0(), 1)).await;
            assert!(decision.is_admitted());
            // A concurrency lease is taken in the same round trip.
            permits.push(decision.permit.expect("a permit"));
        }
        let commands = monitor.client_commands(&mut info).await;
        let evalsha_after = command_calls(&mut info, "evalsha").await;
        assert_eq!(
            evalsha_after - evalsha_before,
            N as u64,
            "INFO commandstats: one EVALSHA per admission"
        );
        assert_eq!(
            commands.len(),
            N,
            "MONITOR: one command per admission: {commands:?}"
        );
        assert!(
            commands
                .iter()
                .all(|c| c == "\"EVALSHA\"" || c == "\"evalsha\""),
            "{commands:?}"
        );

        // Settling (correction, call log, billing) is one more round trip.
        let decision = admit(&store, &org, 2, secs(t0(), 2)).await;
        let monitor = Monitor::start(server.port());
        store
            .settle(
                &org,
                Settlement {
                    receipt: receipt(&decision),
                    correction: Correction {
                        latency_ms: 0,
                        cost_delta: -1,
                    },
                    call: Some(call(secs(t0(), 2), "/v1/items")),
                    at: secs(t0(), 2),
                },
            )
            .await
            .expect("settle");
        assert_eq!(monitor.client_commands(&mut info).await.len(), 1);
        drop(decision);
        drop(permits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_instances_share_capacity_exactly() {
        let Some(redis) = redis_for("three_instances_share_capacity_exactly") else {
            return;
        };
        let prefix = unique_prefix("three_instances");
        let mut stores = Vec::new();
        for _ in 0..3 {
            stores.push(
                RedisStore::builder()
                    .prefix(prefix.clone())
                    .timeout(Duration::from_secs(5))
                    .connect(redis.url())
                    .await
                    .expect("connect"),
            );
        }
        let org = acme(
            r#"
[[plans.p.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 100 }, { window = "hour", capacity = 50 }]

[[plans.p.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 1000 }]
"#,
            "",
        );
        let now = secs(t0(), 5);
        let tasks = (0..400).map(|i| {
            let store = stores[i % 3].clone();
            let org = Arc::clone(&org);
            tokio::spawn(async move {
                let cost = 1 + (i as u64 % 5);
                let decision = admit(&store, &org, cost, now).await;
                decision.is_admitted().then_some(cost)
            })
        });
        let admitted: Vec<u64> = join_all(tasks)
            .await
            .into_iter()
            .filter_map(|r| r.expect("task"))
            .collect();
        let points: u64 = admitted.iter().sum();
        let statuses = peek(&stores[0], &org, now).await;
        assert!(admitted.len() <= 150 && points <= 1000);
        assert_eq!(statuses[0].remaining, 150 - admitted.len() as u64);
        assert_eq!(statuses[1].remaining, 1000 - points);
        // Requests are cheaper than points here: the request limit is the one that ran out.
        assert_eq!(admitted.len(), 150, "exactly the capacity, together");

        // The concurrency limit is shared too.
        let org = acme(
            &format!("concurrency = 5\n{PER_MINUTE_5}").replace("= 5 }", "= 500 }"),
            "",
        );
        let tasks = (0..60).map(|i| {
            let store = stores[i % 3].clone();
            let org = Arc::clone(&org);
            tokio::spawn(async move { admit(&store, &org, 1, now).await.permit })
        });
        let permits: Vec<_> = join_all(tasks)
            .await
            .into_iter()
            .filter_map(|r| r.expect("task"))
            .collect();
        assert_eq!(permits.len(), 5, "5 in flight across 3 instances");
        drop(permits);
        in_flight_becomes(&stores[1], &org, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stopped_mid_run_fails_fast_then_recovers() {
        let Some(mut server) = own_redis_server("redis_stopped_mid_run") else {
            return;
        };
        let timeout = Duration::from_millis(50);
        let store = RedisStore::builder()
            .prefix(unique_prefix("stopped"))
            .timeout(timeout)
            .connect(&server.url())
            .await
            .expect("connect");
        let org = acme(&format!("concurrency = 10\n{PER_MINUTE_5}"), "");
        let now = secs(t0(), 1);
        assert!(admit(&store, &org, 1, now).await.is_admitted());
        assert!(store.health().healthy);

        let errors_before = store.health().errors;
        server.stop();
        let slack = Duration::from_millis(400);
        let mut failing_fast: u64 = 0;
        let stopped = Instant::now();
        for _ in 0..10 {
            let started = Instant::now();
            let result = store.admit(&org, Charge::default(), now).await;
            let Err(error) = result else {
                panic!("Redis is down: {result:?}");
            };
            assert!(
                started.elapsed() < timeout + slack,
                "took {:?}",
                started.elapsed()
            );
            if std::error::Error::source(&error).is_some_and(|source| source.is::<FailingFast>()) {
                failing_fast += 1;
            }
        }
        // The first TRIP_AFTER admissions found Redis gone; the others failed at once, without
        // calling it, but for one probe per interval.
        let probes = stopped.elapsed().as_millis() / PROBE_INTERVAL.as_millis() + 1;
        let called = 10 - failing_fast;
        assert!(
            u128::from(called) <= u128::from(TRIP_AFTER) + probes,
            "{called} admissions called Redis in {:?}",
            stopped.elapsed()
        );
        let started = Instant::now();
        assert!(store.peek(&org, now).await.is_err());
        assert!(store.usage(&org, now, 31).await.is_err());
        assert!(store.record(&org, call(now, "/a")).await.is_err());
        assert!(started.elapsed() < 3 * (timeout + slack));
        let health = store.health();
        assert!(!health.healthy);
        // Reads and records always call Redis (and failed background jobs count too).
        assert!(health.errors >= errors_before + called + 3, "{health:?}");

        server.restart().expect("restart redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Ok(decision) = store.admit(&org, Charge::default(), now).await {
                break decision;
            }
            assert!(
                Instant::now() < deadline,
                "the store did not recover within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(store.health().healthy);
        // Enforcement resumes (the restarted Redis is empty: the minute starts over).
        assert!(first.is_admitted());
        let mut admitted = 1;
        let mut permits = vec![first.permit];
        while admitted < 10 {
            let decision = admit(&store, &org, 1, now).await;
            if !decision.is_admitted() {
                break;
            }
            admitted += 1;
            permits.push(decision.permit);
        }
        assert_eq!(admitted, 5, "the limit is enforced again");
    }

    /// Runs `admission` while Redis holds back scripts for a second, then lets them run: the
    /// admission gives up (or is dropped) before its script runs. Redis must then run exactly
    /// `scripts` scripts (the admission, and a refund if it charged) and the org's counts and
    /// leases, as `observer` reads them on its own connection, must be as before.
    async fn late_admission_charges_nothing(
        server: &RedisServer,
        observer: &RedisStore,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        scripts: u64,
        admission: impl Future<Output = ()>,
    ) {
        let mut conn = raw(&server.url()).await;
        let before = peek(observer, org, now).await;
        let evalsha_before = command_calls(&mut conn, "evalsha").await;
        let _: () = ::redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1000)
            .arg("WRITE")
            .query_async(&mut conn)
            .await
            .expect("CLIENT PAUSE");
        admission.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let ran = loop {
            let evalsha = command_calls(&mut conn, "evalsha").await;
            // `peek` reads the counters with MGET: it runs no script.
            let statuses = peek(observer, org, now).await;
            if evalsha >= evalsha_before + scripts && statuses == before {
                break evalsha - evalsha_before;
            }
            assert!(
                Instant::now() < deadline,
                "the late admission charged: {} scripts ran, {statuses:?} (before: {before:?})",
                evalsha - evalsha_before
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(ran, scripts, "scripts run after the admission gave up");
        in_flight_becomes(observer, org, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_admission_answered_without_the_store_is_never_charged() {
        let Some(server) = own_redis_server("late_admission") else {
            return;
        };
        let url = server.url();
        let prefix = unique_prefix("late");
        let connect = |timeout| {
            RedisStore::builder()
                .prefix(prefix.clone())
                .timeout(timeout)
                .connect(&url)
        };
        let hasty = connect(Duration::from_millis(200)).await.expect("connect");
        let patient = connect(Duration::from_secs(5)).await.expect("connect");
        let observer = connect(Duration::from_secs(5)).await.expect("connect");
        let org = acme(
            &format!("concurrency = 5\n{POINTS_MINUTE_HOUR}{PER_MINUTE_5}"),
            "",
        );
        let now = secs(t0(), 1);
        // 30 points are left in the minute: a charge of 50 would take 30 there and 20 from the
        // hour. The reply also tells `hasty` how Redis's clock stands to its own.
        let first = admit(&hasty, &org, 70, now).await;
        drop(first);
        in_flight_becomes(&hasty, &org, 0).await;

        // Past the store's timeout: the caller gets an error at once, and the script, run after
        // its deadline, charges nothing (one script: nothing to give back).
        late_admission_charges_nothing(&server, &observer, &org, now, 1, async {
            let started = Instant::now();
            let result = hasty.admit(&org, Charge::points(50), now).await;
            assert!(
                matches!(result, Err(StoreError::Timeout(_))),
                "the admission times out: {result:?}"
            );
            assert!(started.elapsed() < Duration::from_millis(900));
        })
        .await;

        // The request went away while its admission waited, well within the store's timeout: the
        // script runs before its deadline and charges, and what it took is given back (two
        // scripts).
        late_admission_charges_nothing(&server, &observer, &org, now, 2, async {
            let gone = tokio::time::timeout(
                Duration::from_millis(50),
                patient.admit(&org, Charge::points(50), now),
            )
            .await;
            assert!(gone.is_err(), "the admission waits for the paused Redis");
        })
        .await;

        let statuses = peek(&hasty, &org, now).await;
        assert_eq!(used(&statuses[0]), vec![70, 0]);
        assert_eq!(used(&statuses[1]), vec![1]);
        assert!(admit(&hasty, &org, 50, now).await.is_admitted());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_instances_leases_expire() {
        let Some(redis) = redis_for("a_crashed_instances_leases_expire") else {
            return;
        };
        let prefix = unique_prefix("crashed");
        let ttl = Duration::from_millis(300);
        let org = acme(
            &format!("concurrency = 2\n{PER_MINUTE_5}").replace("= 5 }", "= 100 }"),
            "",
        );
        let now = secs(t0(), 1);
        let connect = |ttl: Duration| {
            RedisStore::builder()
                .prefix(prefix.clone())
                .timeout(Duration::from_secs(2))
                .lease_ttl(ttl)
                .connect(redis.url())
        };
        let crashing = connect(ttl).await.expect("connect");
        for _ in 0..2 {
            let permit = admit(&crashing, &org, 1, now)
                .await
                .permit
                .expect("a permit");
            // The instance dies with the request in flight: nothing is ever released.
            std::mem::forget(permit);
        }
        drop(crashing);
        let survivor = connect(Duration::from_secs(15)).await.expect("connect");
        let started = Instant::now();
        assert_eq!(
            rejection(&admit(&survivor, &org, 1, now).await).0,
            RejectReason::Concurrency
        );
        let deadline = started + Duration::from_secs(5);
        let freed = loop {
            let decision = admit(&survivor, &org, 1, now).await;
            if decision.is_admitted() {
                break started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "the dead instance's leases never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            freed <= ttl + Duration::from_secs(2),
            "freed after {freed:?}"
        );

        // A live instance renews its leases: a long request keeps its slot past the time to live.
        let org = acme(&format!("concurrency = 1\n{PER_MINUTE_5}"), "");
        let other = unique_prefix("renewed");
        let connect = |ttl: Duration| {
            RedisStore::builder()
                .prefix(other.clone())
                .timeout(Duration::from_secs(2))
                .lease_ttl(ttl)
                .connect(redis.url())
        };
        let survivor = connect(Duration::from_secs(15)).await.expect("connect");
        let live = connect(ttl).await.expect("connect");
        let permit = admit(&live, &org, 1, now).await.permit.expect("a permit");
        tokio::time::sleep(ttl * 4).await;
        assert_eq!(
            rejection(&admit(&survivor, &org, 1, now).await).0,
            RejectReason::Concurrency,
            "the lease was renewed"
        );
        drop(permit);
        in_flight_becomes(&survivor, &org, 0).await;
    }

    /// Two stores on one Redis with one key prefix: two instances of one service.
    async fn two_instances(redis: &TestRedis, test: &str) -> (RedisStore, RedisStore) {
        let prefix = unique_prefix(test);
        let connect = || {
            RedisStore::builder()
                .prefix(prefix.clone())
                .timeout(Duration::from_secs(2))
                .connect(redis.url())
        };
        (
            connect().await.expect("connect"),
            connect().await.expect("connect"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_two_instances_admit_exactly_one_burst_and_a_fast_clock_admits_no_more() {
        let Some(redis) = redis_for("rate_two_instances") else {
            return;
        };
        let (first, second) = two_instances(&redis, "rate_two_instances").await;
        // One unit back a minute: the burst is all there is during the test.
        let org = acme(
            r#"
[[plans.p.limits]]
name = "smooth"
dimension = "requests"
rate = { amount = 1, per = "minute", burst = 20 }
"#,
            "",
        );
        let now = SystemClock.now();
        let decisions = join_all((0..60).map(|n| {
            let store = if n % 2 == 0 { &first } else { &second };
            let org = &org;
            async move { admit(store, org, 1, now).await }
        }))
        .await;
        let admitted = decisions.iter().filter(|d| d.is_admitted()).count();
        assert_eq!(admitted, 20);
        // An instance whose clock runs ten minutes ahead (ten units' worth) admits nothing: the
        // bucket's instants are Redis's.
        let ahead = secs(now, 600);
        let refused = admit(&second, &org, 1, ahead).await;
        let (reason, retry_at, _) = rejection(&refused);
        assert_eq!(reason, RejectReason::Limit(0));
        // Its retry time is told on its own clock: a minute from its now, give or take the
        // moments the test took.
        let wait = retry_at
            .expect("one unit fits the burst")
            .millis_since(ahead);
        assert!((55_000..=60_000).contains(&wait), "{wait} ms");
        assert_eq!(refused.verdict.statuses(&org)[0].remaining, 0);
        // An operator's reset fills the bucket, on every instance.
        first.reset(&org, Some("smooth")).await.expect("reset");
        let after = admit(&second, &org, 1, SystemClock.now()).await;
        assert!(after.is_admitted());
        assert_eq!(after.verdict.statuses(&org)[0].remaining, 19);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_debits_and_refunds_reach_redis() {
        let Some(redis) = redis_for("rate_debits") else {
            return;
        };
        let (store, _) = two_instances(&redis, "rate_debits").await;
        let org = acme(
            r#"
[[plans.p.limits]]
name = "latency"
dimension = "latency_ms"
rate = { amount = 1000, per = "second", burst = 2000 }

[[plans.p.limits]]
name = "points"
dimension = "points"
rate = { amount = 1, per = "hour", burst = 10 }
"#,
            "",
        );
        let now = SystemClock.now();
        let too_big = admit(&store, &org, 11, now).await;
        assert_eq!(rejection(&too_big), (RejectReason::Limit(1), None, vec![1]));
        let first = admit(&store, &org, 4, now).await;
        assert!(first.is_admitted());
        assert_eq!(remaining(&first.verdict.statuses(&org)), vec![2000, 6]);
        // After the response: 5 s of handler time, and the call cost 1 point, not 4.
        settle(
            &store,
            &org,
            receipt(&first),
            Correction {
                latency_ms: 5_000,
                cost_delta: -3,
            },
            now,
        )
        .await;
        store.flush().await;
        let refused = admit(&store, &org, 1, SystemClock.now()).await;
        let (reason, retry_at, violated) = rejection(&refused);
        assert_eq!((reason, violated), (RejectReason::Limit(0), vec![0]));
        // The debt of 3 s and one more millisecond, counted from the debit (which Redis made
        // between `now` and the refusal).
        let took = SystemClock.now().millis_since(now);
        let wait = retry_at
            .expect("a latency rate admits again")
            .millis_since(now);
        assert!(
            (3_001..=3_002 + took).contains(&wait),
            "{wait} ms, {took} ms"
        );
        assert_eq!(refused.verdict.statuses(&org)[1].remaining, 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_tier_keeps_a_few_counters_not_sixty() {
        let Some(redis) = redis_for("a_second_tier_keeps_a_few_counters") else {
            return;
        };
        let prefix = unique_prefix("second");
        let store = RedisStore::builder()
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(2))
            .connect(redis.url())
            .await
            .expect("connect");
        let org = acme(SECOND_TO_YEAR, "");
        // One request a second for a minute.
        for second in 0..60 {
            assert!(
                admit(&store, &org, 1, plus(secs(t0(), second), 500))
                    .await
                    .is_admitted()
            );
        }
        let mut conn = raw(redis.url()).await;
        let counters: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}*:l:count:second:*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        // Each counter lives what is left of its second plus one more (1.5 s here), not 60 s.
        for key in &counters {
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("PTTL");
            assert!(ttl <= 1_500, "{key}: {ttl} ms");
        }
        // The index of live counters holds the second tier's last one or two, and the longer tiers'.
        let index: u64 = ::redis::cmd("ZCARD")
            .arg(format!("{prefix}{{acme}}:w"))
            .query_async(&mut conn)
            .await
            .expect("ZCARD");
        assert!(index <= 5, "{index} index entries");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_share_a_slot_expire_and_stay_bounded() {
        let Some(redis) = redis_for("keys_share_a_slot") else {
            return;
        };
        let prefix = unique_prefix("slots");
        let store = RedisStore::builder()
            .prefix(prefix.clone())
            .calls_kept(5)
            .timeout(Duration::from_secs(2))
            .connect(redis.url())
            .await
            .expect("connect");
        let plan = format!("concurrency = 3\n{POINTS_MINUTE_HOUR}\n{PER_MINUTE_5}");
        let ids = ["acme", "globex:eu", "{weird}"];
        let mut toml = format!("[plans.p]\n{plan}\n");
        for id in ids {
            toml.push_str(&format!(
                "[[orgs]]\nid = \"{id}\"\nplan = \"p\"\ntime_zone = \"Europe/Amsterdam\"\n"
            ));
        }
        let policy = Policy::from_toml_str(&toml, "slots.toml".as_ref()).expect("policy");
        let mut permits = Vec::new();
        for id in ids {
            let org = policy.org(id).expect("defined above");
            for i in 0..8 {
                let decision = admit(&store, org, 2, secs(t0(), i)).await;
                let settlement = Settlement {
                    receipt: if decision.is_admitted() {
                        receipt(&decision)
                    } else {
                        tollhouse_core::Receipt::default()
                    },
                    correction: Correction {
                        latency_ms: 10,
                        cost_delta: 1,
                    },
                    call: Some(call(secs(t0(), i), "/v1/items?x=1")),
                    at: secs(t0(), i),
                };
                store.settle(org, settlement).await.expect("settle");
                permits.extend(decision.permit);
            }
            store.usage(org, secs(t0(), 10), 31).await.expect("usage");
        }
        let mut conn = raw(redis.url()).await;
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        assert!(keys.len() >= 3 * 8, "{keys:?}");
        let mut slots: std::collections::HashMap<String, u16> = std::collections::HashMap::new();
        for key in &keys {
            let tag_end = key.find('}').expect("every key has a hash tag");
            let org_part = key[..=tag_end].to_owned();
            // Redis Cluster's own answer when this Redis has cluster support; else the same CRC16.
            let slot = match ::redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async::<u16>(&mut conn)
                .await
            {
                Ok(slot) => slot,
                Err(_) => cluster_slot(key.as_bytes()),
            };
            let first = *slots.entry(org_part.clone()).or_insert(slot);
            assert_eq!(first, slot, "{key} is not in the slot of {org_part}");
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("PTTL");
            assert!(ttl > 0, "{key} never expires");
        }
        assert_eq!(slots.len(), 3, "{slots:?}");
        let logs: Vec<&String> = keys.iter().filter(|k| k.ends_with(":u:log")).collect();
        assert_eq!(logs.len(), 3);
        for log in logs {
            let len: u64 = ::redis::cmd("LLEN")
                .arg(log)
                .query_async(&mut conn)
                .await
                .expect("LLEN");
            assert_eq!(len, 5, "the call log is capped");
        }
        drop(permits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clock_skew_of_one_second() {
        let Some(redis) = redis_for("clock_skew_of_one_second") else {
            return;
        };
        let prefix = unique_prefix("skew");
        let connect = || {
            RedisStore::builder()
                .prefix(prefix.clone())
                .timeout(Duration::from_secs(2))
                .connect(redis.url())
        };
        let (ahead, behind) = (
            connect().await.expect("connect"),
            connect().await.expect("connect"),
        );
        let ahead_clock = tollhouse_core::ManualClock::new(plus(secs(t0(), 60), 500));
        let behind_clock = tollhouse_core::ManualClock::new(plus(secs(t0(), 60), -500));
        use tollhouse_core::Clock;
        let org = acme(&PER_MINUTE_5.replace("capacity = 5", "capacity = 3"), "");
        // The lagging instance used 1 of the previous minute (12:00) before the boundary.
        assert!(
            admit(&behind, &org, 1, plus(behind_clock.now(), -1000))
                .await
                .is_admitted()
        );
        // The instance ahead is in 12:01 already and fills it.
        for _ in 0..3 {
            assert!(
                admit(&ahead, &org, 1, ahead_clock.now())
                    .await
                    .is_admitted()
            );
        }
        assert!(
            !admit(&ahead, &org, 1, ahead_clock.now())
                .await
                .is_admitted()
        );
        // Still in 12:00 by its clock, the lagging instance keeps charging 12:00's counter.
        for _ in 0..2 {
            assert!(
                admit(&behind, &org, 1, behind_clock.now())
                    .await
                    .is_admitted()
            );
        }
        let full = admit(&behind, &org, 1, behind_clock.now()).await;
        assert_eq!(rejection(&full).1, Some(secs(t0(), 60)));
        // One second later its clock passes the boundary: it joins 12:01, already full.
        ahead_clock.advance(Duration::from_secs(1));
        behind_clock.advance(Duration::from_secs(1));
        let joined = admit(&behind, &org, 1, behind_clock.now()).await;
        assert_eq!(rejection(&joined).1, Some(secs(t0(), 120)));
        let tiers = |statuses: Vec<LimitStatus>| statuses[0].tiers().to_vec();
        assert_eq!(
            tiers(peek(&behind, &org, behind_clock.now()).await),
            tiers(peek(&ahead, &org, ahead_clock.now()).await),
            "both instances count in 12:01 now"
        );
        assert_eq!(
            remaining(&peek(&ahead, &org, ahead_clock.now()).await),
            vec![0]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_settlement_is_not_lost() {
        let Some(redis) = redis_for("a_dropped_settlement_is_not_lost") else {
            return;
        };
        let store = redis_store(&redis, "dropped_settlement").await;
        let org = acme(&format!("concurrency = 1\n{POINTS_MINUTE_HOUR}"), "");
        let now = secs(t0(), 1);
        let decision = admit(&store, &org, 50, now).await;
        let started = Instant::now();
        let future = store.settle(
            &org,
            Settlement {
                receipt: receipt(&decision),
                correction: Correction {
                    latency_ms: 0,
                    cost_delta: -40,
                },
                call: Some(call(now, "/v1/items")),
                at: now,
            },
        );
        // The response finished first: the future is never polled.
        drop(future);
        drop(decision);
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "settle returns at once"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let usage = store.usage(&org, now, 1).await.expect("usage");
            let statuses = peek(&store, &org, now).await;
            if usage.usage.calls.len() == 1
                && statuses[0].remaining == 1100 - 10
                && usage.in_flight == 0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the settlement was lost: {usage:?} {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lazy_store_starts_while_redis_is_down() {
        let Some(mut server) = own_redis_server("a_lazy_store_starts_while_redis_is_down") else {
            return;
        };
        let url = server.url();
        server.stop();
        // A refused connection fails at once; the generous timeout only keeps a slow admission
        // after the restart from timing out here after Redis charged it (which would make the
        // count below one lower).
        let store = RedisStore::builder()
            .prefix(unique_prefix("lazy"))
            .timeout(Duration::from_secs(2))
            .connect_lazy(&url)
            .expect("no I/O yet");
        let org = acme(PER_MINUTE_5, "");
        assert!(store.admit(&org, Charge::default(), t0()).await.is_err());
        assert!(!store.health().healthy);
        server.restart().expect("restart");
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.admit(&org, Charge::default(), t0()).await.is_err() {
            assert!(Instant::now() < deadline, "never recovered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store.health().healthy);
        assert_eq!(remaining(&peek(&store, &org, t0()).await), vec![4]);
    }
}
