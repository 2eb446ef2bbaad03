//! The seed policies, day by day, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use chrono_tz::Tz;
use tollhouse_core::{
    Adjustment, Charge, Clock, Concurrency, Correction, Dimension, Environment, Ledger, Limit,
    LimitZone, ManualClock, MemoryStore, Org, Override, Plan, Policy, ResolvedOrg, ServerSettings,
    Settlement, Tier, Timestamp, Verdict, Window,
};

fn tier(window: Window, capacity: u64) -> Tier {
    Tier::new(window, capacity).expect("a valid tier")
}

fn local(zone: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
    let tz: Tz = zone.parse().expect("zone");
    Timestamp::from(
        tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .expect("a local time that exists"),
    )
}

fn rfc3339(text: &str) -> Timestamp {
    Timestamp::from(chrono::DateTime::parse_from_rfc3339(text).expect("rfc3339"))
}

fn single_org(plan: Plan, org: Org, server: ServerSettings) -> Arc<ResolvedOrg> {
    let id = org.id().clone();
    let policy = Policy::builder()
        .server(server)
        .plan(plan)
        .org(org)
        .build()
        .expect("policy");
    Arc::clone(policy.org(id.as_str()).expect("org"))
}

/// An org in `zone` (the server's when `None`) on a plan of one org-zone limit with one tier.
fn one_tier_org(
    dimension: Dimension,
    window: Window,
    capacity: u64,
    zone: Option<&str>,
) -> Arc<ResolvedOrg> {
    let limit = Limit::new(
        "limit",
        dimension,
        LimitZone::Org,
        vec![tier(window, capacity)],
    )
    .expect("limit");
    let mut org = Org::new("o", "p");
    if let Some(zone) = zone {
        org = org.with_time_zone(zone.parse().expect("an IANA zone"));
    }
    single_org(
        Plan::new("p", vec![limit]).expect("plan"),
        org,
        ServerSettings::default(),
    )
}

/// Sends as fast as allowed from `start` until `end`: whenever rejected, jumps to the retry time.
fn send_whenever_admitted(
    store: &MemoryStore,
    org: &Arc<ResolvedOrg>,
    clock: &ManualClock,
    end: Timestamp,
) -> u64 {
    let mut admitted = 0;
    while clock.now() < end {
        match store.admit_now(org, Charge::default(), clock.now()).verdict {
            Verdict::Admitted { .. } => admitted += 1,
            Verdict::Rejected {
                retry_at: Some(at), ..
            } => {
                assert!(at > clock.now(), "a rejection must point to the future");
                clock.set(at);
            }
            Verdict::Rejected { retry_at: None, .. } => break,
        }
    }
    admitted
}

fn data_plan() -> Plan {
    let count = Limit::new(
        "count",
        Dimension::Requests,
        LimitZone::Server,
        vec![
            tier(Window::Minute, 100),
            tier(Window::Hour, 2600),
            tier(Window::Day, 1150),
        ],
    )
    .expect("limit");
    Plan::new("data", vec![count]).expect("plan")
}

#[test]
fn seed_002_a_whole_day_admits_exactly_207_550() {
    let org = single_org(
        data_plan(),
        Org::new("app", "data"),
        ServerSettings::default(),
    );
    let store = MemoryStore::new();
    let start = local("UTC", 2026, 11, 24, 0, 0);
    let clock = ManualClock::new(start);
    let end = local("UTC", 2026, 11, 25, 0, 0);
    assert_eq!(
        send_whenever_admitted(&store, &org, &clock, end),
        100 * 60 * 24 + 2600 * 24 + 1150
    );
    assert_eq!(207_550, 100 * 60 * 24 + 2600 * 24 + 1150);
}

#[test]
fn seed_002_day_in_the_server_zone_follows_its_dst() {
    // A server in Amsterdam: 25 October 2026 has 25 hours, so one more hour of minute and hour buckets.
    let server = ServerSettings {
        time_zone: "Europe/Amsterdam".parse().expect("tz"),
        ..ServerSettings::default()
    };
    let org = single_org(data_plan(), Org::new("app", "data"), server);
    let store = MemoryStore::new();
    let clock = ManualClock::new(local("Europe/Amsterdam", 2026, 10, 25, 0, 0));
    let end = local("Europe/Amsterdam", 2026, 10, 26, 0, 0);
    assert_eq!(
        send_whenever_admitted(&store, &org, &clock, end),
        100 * 60 * 25 + 2600 * 25 + 1150
    );
}

#[test]
fn seed_002_2600_at_13_59_then_2600_more_at_14_01() {
    let org = single_org(
        data_plan(),
        Org::new("app", "data"),
        ServerSettings::default(),
    );
    let mut ledger = Ledger::new(&org);
    let at_13_59 = local("UTC", 2026, 11, 24, 13, 59);
    for _ in 0..2600 {
        assert!(
            ledger
                .admit(&org, Charge::default(), at_13_59)
                .is_admitted()
        );
    }
    // The hour bucket is now empty: 100 came from the minute bucket and 2500 from the hour.
    let status = ledger.peek(&org, at_13_59)[0];
    assert_eq!(status.tiers()[0].remaining, 0);
    assert_eq!(status.tiers()[1].remaining, 100);
    let at_14_01 = local("UTC", 2026, 11, 24, 14, 1);
    for _ in 0..2700 {
        assert!(
            ledger
                .admit(&org, Charge::default(), at_14_01)
                .is_admitted()
        );
    }
    // 2600 from the new hour plus the 100 of that minute, and the day bucket is still untouched.
    let status = ledger.peek(&org, at_14_01)[0];
    assert_eq!(status.tiers()[0].remaining, 0);
    assert_eq!(status.tiers()[1].remaining, 0);
    assert_eq!(status.tiers()[2].remaining, 1150);
    assert!(
        ledger
            .admit(&org, Charge::default(), at_14_01)
            .is_admitted()
    );
    assert_eq!(ledger.peek(&org, at_14_01)[0].tiers()[2].remaining, 1149);
}

fn daily_plan() -> Plan {
    let daily = Limit::new(
        "daily",
        Dimension::Requests,
        LimitZone::Org,
        vec![tier(Window::Day, 2500)],
    )
    .expect("limit");
    Plan::new("build", vec![daily])
        .expect("plan")
        .with_concurrency(Concurrency::new(3, Duration::ZERO).expect("c"))
}

/// Exhausts the org's day at `at` and returns when the next request would be admitted: still
/// rejected a millisecond before (a rejection charges nothing, so probing is free).
fn exhausted_until(store: &MemoryStore, org: &Arc<ResolvedOrg>, at: Timestamp) -> Timestamp {
    for _ in 0..2500 {
        let decision = store.admit_now(org, Charge::default(), at);
        assert!(decision.is_admitted());
    }
    match store.admit_now(org, Charge::default(), at).verdict {
        Verdict::Rejected {
            retry_at: Some(retry),
            ..
        } => {
            let before = Timestamp::from_millis(retry.as_millis() - 1);
            assert!(
                !store
                    .admit_now(org, Charge::default(), before)
                    .is_admitted(),
                "still rejected 1 ms before"
            );
            retry
        }
        other => panic!("expected a rejection with a retry time, got {other:?}"),
    }
}

#[test]
fn seed_000_daily_quota_resets_at_each_orgs_own_midnight() {
    let policy = Policy::builder()
        .plan(daily_plan())
        .org(Org::new("auckland", "build").with_time_zone("Pacific/Auckland".parse().expect("tz")))
        .org(Org::new("la", "build").with_time_zone("America/Los_Angeles".parse().expect("tz")))
        .build()
        .expect("policy");
    let auckland = policy.org("auckland").expect("org");
    let la = policy.org("la").expect("org");
    let store = MemoryStore::new();
    let at = rfc3339("2026-11-24T12:00:00Z");
    // Auckland (+13:00) next midnight: 2026-11-25T11:00Z. Los Angeles (-08:00): 2026-11-25T08:00Z.
    // 12:00 UTC is 01:00 on 25 November in Auckland (+13:00) and 04:00 on 24 November in Los Angeles.
    assert_eq!(
        exhausted_until(&store, auckland, at),
        rfc3339("2026-11-26T00:00:00+13:00")
    );
    assert_eq!(
        exhausted_until(&store, la, at),
        rfc3339("2026-11-25T00:00:00-08:00")
    );
    // UTC's midnight resets neither.
    let utc_midnight = rfc3339("2026-11-25T00:00:00Z");
    assert!(
        !store
            .admit_now(auckland, Charge::default(), utc_midnight)
            .is_admitted()
    );
    assert!(
        !store
            .admit_now(la, Charge::default(), utc_midnight)
            .is_admitted()
    );
    // Each resets on its first request after its own midnight.
    assert!(
        store
            .admit_now(la, Charge::default(), rfc3339("2026-11-25T08:00:00Z"))
            .is_admitted()
    );
    assert!(
        !store
            .admit_now(auckland, Charge::default(), rfc3339("2026-11-25T08:00:00Z"))
            .is_admitted()
    );
    assert!(
        store
            .admit_now(auckland, Charge::default(), rfc3339("2026-11-25T11:00:00Z"))
            .is_admitted()
    );
}

#[test]
fn seed_000_across_both_2026_dst_changes() {
    let cases = [
        // (zone, a DST change date, the hours of that local day)
        ("America/Los_Angeles", (2026, 3, 8), 23),
        ("America/Los_Angeles", (2026, 11, 1), 25),
        ("Pacific/Auckland", (2026, 4, 5), 25),
        ("Pacific/Auckland", (2026, 9, 27), 23),
    ];
    for (zone, (y, m, d), hours) in cases {
        let org = single_org(
            daily_plan(),
            Org::new("o", "build").with_time_zone(zone.parse().expect("tz")),
            ServerSettings::default(),
        );
        let store = MemoryStore::new();
        let day_start = local(zone, y, m, d, 0, 0);
        let reset = exhausted_until(
            &store,
            &org,
            Timestamp::from_millis(day_start.as_millis() + 1),
        );
        assert_eq!(
            reset.millis_since(day_start),
            hours * 3_600_000,
            "{zone} {y}-{m}-{d}: the day lasts {hours} hours"
        );
    }
}

#[test]
fn seed_000_santiago_day_without_midnight_starts_at_one() {
    // 6 September 2026: Santiago's clocks jump from 00:00 to 01:00, so that day starts at 01:00.
    let org = single_org(
        daily_plan(),
        Org::new("o", "build").with_time_zone("America/Santiago".parse().expect("tz")),
        ServerSettings::default(),
    );
    let store = MemoryStore::new();
    let reset = exhausted_until(&store, &org, rfc3339("2026-09-05T20:00:00-04:00"));
    assert_eq!(reset, rfc3339("2026-09-06T01:00:00-03:00"));
    // And the short day ends at the next midnight, 23 hours later.
    let next = exhausted_until(&store, &org, rfc3339("2026-09-06T12:00:00-03:00"));
    assert_eq!(next, rfc3339("2026-09-07T00:00:00-03:00"));
}

#[test]
fn seed_000_kathmandu_hours_turn_at_quarter_past_utc() {
    let org = one_tier_org(Dimension::Requests, Window::Hour, 5, Some("Asia/Kathmandu"));
    let mut ledger = Ledger::new(&org);
    let at = rfc3339("2026-06-01T10:20:00Z");
    for _ in 0..5 {
        assert!(ledger.admit(&org, Charge::default(), at).is_admitted());
    }
    match ledger.admit(&org, Charge::default(), at) {
        Verdict::Rejected { retry_at, .. } => {
            assert_eq!(retry_at, Some(rfc3339("2026-06-01T11:15:00Z")))
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn seed_000_reset_is_lazy_on_the_first_request_after_midnight() {
    let org = single_org(
        daily_plan(),
        Org::new("o", "build"),
        ServerSettings::default(),
    );
    let store = MemoryStore::new();
    exhausted_until(&store, &org, rfc3339("2026-11-24T23:00:00Z"));
    // Nothing ran at midnight: the ledger still holds yesterday's window until a request comes.
    let dump = format!(
        "{:?}",
        store
            .admit_now(&org, Charge::default(), rfc3339("2026-11-25T09:00:00Z"))
            .verdict
    );
    assert!(dump.contains("Admitted"));
}

fn points_plan(capacity: u64) -> Plan {
    let points = Limit::new(
        "points",
        Dimension::Points,
        LimitZone::Org,
        vec![tier(Window::Minute, capacity)],
    )
    .expect("limit");
    Plan::new("build", vec![points]).expect("plan")
}

#[test]
fn seed_003_points_per_minute_with_costs_1_3_and_10() {
    let org = single_org(
        points_plan(100),
        Org::new("o", "build"),
        ServerSettings::default(),
    );
    let mut ledger = Ledger::new(&org);
    let now = rfc3339("2026-11-24T10:00:30Z");
    for _ in 0..9 {
        assert!(ledger.admit(&org, Charge::points(10), now).is_admitted());
    }
    for _ in 0..3 {
        assert!(ledger.admit(&org, Charge::points(3), now).is_admitted());
    }
    assert_eq!(ledger.peek(&org, now)[0].remaining, 1);
    // A 3-point request does not fit in 1 point: rejected, nothing charged.
    match ledger.admit(&org, Charge::points(3), now) {
        Verdict::Rejected { retry_at, .. } => {
            assert_eq!(retry_at, Some(rfc3339("2026-11-24T10:01:00Z")))
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(ledger.peek(&org, now)[0].remaining, 1);
    assert!(ledger.admit(&org, Charge::points(1), now).is_admitted());
    assert_eq!(ledger.peek(&org, now)[0].remaining, 0);
    // The next minute, the whole budget is back.
    let next = rfc3339("2026-11-24T10:01:00Z");
    assert_eq!(ledger.peek(&org, next)[0].remaining, 100);
}

#[test]
fn seed_003_cost_corrected_after_the_fact() {
    let org = single_org(
        points_plan(100),
        Org::new("o", "build"),
        ServerSettings::default(),
    );
    let store = MemoryStore::new();
    let now = rfc3339("2026-11-24T10:00:30Z");
    let decision = store.admit_now(&org, Charge::points(10), now);
    let Verdict::Admitted { receipt, snapshot } = decision.verdict else {
        panic!("admitted")
    };
    assert_eq!(snapshot.statuses(&org)[0].remaining, 90);
    // The work turned out to cost 4: 6 points come back.
    store.settle_now(
        &org,
        Settlement {
            receipt,
            correction: Correction {
                latency_ms: 0,
                cost_delta: -6,
            },
            call: None,
            at: now,
        },
    );
    let Verdict::Admitted { receipt, snapshot } =
        store.admit_now(&org, Charge::points(1), now).verdict
    else {
        panic!("admitted")
    };
    assert_eq!(snapshot.statuses(&org)[0].remaining, 95);
    // This one turned out to cost 5 instead of 1: 4 more are charged.
    store.settle_now(
        &org,
        Settlement {
            receipt,
            correction: Correction {
                latency_ms: 0,
                cost_delta: 4,
            },
            call: None,
            at: now,
        },
    );
    let Verdict::Admitted { snapshot, .. } = store.admit_now(&org, Charge::points(1), now).verdict
    else {
        panic!("admitted")
    };
    assert_eq!(snapshot.statuses(&org)[0].remaining, 90);
}

#[test]
fn latency_admits_while_above_zero_and_carries_overdraft_to_the_window_end() {
    // Seed 002's latency buckets: 30 s a minute, 390 s an hour, 172.5 s a day.
    let latency = Limit::new(
        "latency",
        Dimension::LatencyMs,
        LimitZone::Server,
        vec![
            tier(Window::Minute, 30_000),
            tier(Window::Hour, 390_000),
            tier(Window::Day, 172_500),
        ],
    )
    .expect("limit");
    let org = single_org(
        Plan::new("data", vec![latency]).expect("plan"),
        Org::new("o", "data"),
        ServerSettings::default(),
    );
    let store = MemoryStore::new();
    let now = rfc3339("2026-11-24T10:00:00Z");
    let Verdict::Admitted { receipt, snapshot } =
        store.admit_now(&org, Charge::default(), now).verdict
    else {
        panic!("admitted")
    };
    // Admission charges nothing: latency is debited after the response.
    assert_eq!(snapshot.statuses(&org)[0].remaining, 592_500);
    let end = rfc3339("2026-11-24T10:00:05Z");
    store.settle_now(
        &org,
        Settlement {
            receipt,
            correction: Correction {
                latency_ms: 700_000,
                cost_delta: 0,
            },
            call: None,
            at: end,
        },
    );
    // 30 000 + 390 000 + 172 500 = 592 500 taken in order; the day tier carries 107 500 of debt.
    let Verdict::Rejected {
        retry_at, snapshot, ..
    } = store.admit_now(&org, Charge::default(), end).verdict
    else {
        panic!("rejected")
    };
    assert_eq!(
        snapshot.statuses(&org)[0].tiers()[2].used,
        172_500 + 107_500
    );
    // Remaining (0) next rises when the hour refills, not at the end of the minute, whose 30 000
    // only pays off part of the debt: Reset says so, and agrees with the retry time.
    let status = snapshot.statuses(&org)[0];
    assert_eq!(status.remaining, 0);
    assert_eq!(status.tiers()[0].reset, rfc3339("2026-11-24T10:01:00Z"));
    assert_eq!(status.reset, rfc3339("2026-11-24T11:00:00Z"));
    // A new minute (30 000) does not cover the day's debt (-107 500); a new hour (390 000) does.
    assert!(
        !store
            .admit_now(&org, Charge::default(), rfc3339("2026-11-24T10:30:00Z"))
            .is_admitted()
    );
    assert_eq!(retry_at, Some(rfc3339("2026-11-24T11:00:00Z")));
    let Verdict::Admitted { snapshot, .. } = store
        .admit_now(&org, Charge::default(), rfc3339("2026-11-24T11:00:00Z"))
        .verdict
    else {
        panic!("admitted")
    };
    // The debt is still there at 11:00: it is carried to the end of the day.
    assert_eq!(snapshot.statuses(&org)[0].tiers()[2].used, 280_000);
    assert_eq!(
        snapshot.statuses(&org)[0].remaining,
        30_000 + 390_000 - 107_500
    );
    // Nothing of this minute or hour is used yet, so the next rise is the day's refill.
    assert_eq!(
        snapshot.statuses(&org)[0].reset,
        rfc3339("2026-11-25T00:00:00Z")
    );
    let next_day = store.admit_now(&org, Charge::default(), rfc3339("2026-11-25T00:00:00Z"));
    assert_eq!(next_day.verdict.statuses(&org)[0].tiers()[2].used, 0);
}

#[test]
fn latency_still_admits_with_a_little_left() {
    let org = one_tier_org(Dimension::LatencyMs, Window::Minute, 1_000, None);
    let mut ledger = Ledger::new(&org);
    let now = rfc3339("2026-11-24T10:00:00Z");
    let Verdict::Admitted { receipt, .. } = ledger.admit(&org, Charge::default(), now) else {
        panic!("admitted")
    };
    ledger.settle(
        &org,
        &receipt,
        Correction {
            latency_ms: 999,
            cost_delta: 0,
        },
        now,
    );
    assert!(
        ledger.admit(&org, Charge::default(), now).is_admitted(),
        "1 ms left is above zero"
    );
    ledger.settle(
        &org,
        &receipt,
        Correction {
            latency_ms: 1,
            cost_delta: 0,
        },
        now,
    );
    assert!(
        !ledger.admit(&org, Charge::default(), now).is_admitted(),
        "zero left rejects"
    );
}

#[test]
fn sandbox_halves_capacities_and_concurrency() {
    let policy = Policy::builder()
        .plan(daily_plan())
        .org(Org::new("prod", "build"))
        .org(Org::new("sandbox", "build").with_environment(Environment::Sandbox))
        .build()
        .expect("policy");
    let store = MemoryStore::new();
    let clock = ManualClock::new(rfc3339("2026-11-24T10:00:00Z"));
    let end = rfc3339("2026-11-25T00:00:00Z");
    let sandbox = policy.org("sandbox").expect("org");
    let mut permits = Vec::new();
    for _ in 0..3 {
        let decision = store.admit_now(sandbox, Charge::default(), clock.now());
        if let Some(permit) = decision.permit {
            permits.push(permit);
        }
    }
    // Concurrency 3 halved (rounded down) is 1: one permit, then rejections for concurrency.
    assert_eq!(permits.len(), 1);
    drop(permits);
    let admitted = send_whenever_admitted(&store, sandbox, &clock, end);
    assert_eq!(admitted + 1, 1250, "2500 halved, one already taken above");
    clock.set(rfc3339("2026-11-24T10:00:00Z"));
    assert_eq!(
        send_whenever_admitted(&store, policy.org("prod").expect("org"), &clock, end),
        2500
    );
}

#[test]
fn override_applies_until_its_until() {
    let until = rfc3339("2026-12-31T00:00:00Z");
    let org = single_org(
        daily_plan(),
        Org::new("acme", "build")
            .with_override(Override::new("daily", Adjustment::Capacity(5000)).until(until)),
        ServerSettings::default(),
    );
    let store = MemoryStore::new();
    let clock = ManualClock::new(rfc3339("2026-12-30T00:00:00Z"));
    assert_eq!(
        send_whenever_admitted(&store, &org, &clock, rfc3339("2026-12-31T00:00:00Z")),
        5000
    );
    clock.set(until);
    assert_eq!(
        send_whenever_admitted(&store, &org, &clock, rfc3339("2027-01-01T00:00:00Z")),
        2500
    );
}

#[test]
fn month_windows_roll_at_month_end_in_the_org_zone() {
    let org = one_tier_org(Dimension::Requests, Window::Month, 3, Some("Asia/Tokyo"));
    let mut ledger = Ledger::new(&org);
    let at = rfc3339("2027-02-28T14:59:59Z"); // 23:59:59 on 28 February in Tokyo
    for _ in 0..3 {
        assert!(ledger.admit(&org, Charge::default(), at).is_admitted());
    }
    match ledger.admit(&org, Charge::default(), at) {
        Verdict::Rejected { retry_at, .. } => {
            assert_eq!(retry_at, Some(rfc3339("2027-03-01T00:00:00+09:00")))
        }
        other => panic!("expected rejection, got {other:?}"),
    }
}
