//! Exactness under concurrency, and properties of the arithmetic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tollhouse_core::tier::{LimitState, MAX_TIERS, TierState};
use tollhouse_core::{
    Charge, Clock, Concurrency, Correction, Dimension, Ledger, Limit, LimitZone, MemoryStore, Org,
    Plan, Policy, ResolvedOrg, Settlement, Store, Tier, Timestamp, Verdict, Window,
};

fn org_with(limits: Vec<Limit>, concurrency: Option<u32>) -> Arc<ResolvedOrg> {
    let mut plan = Plan::new("p", limits).expect("plan");
    if let Some(max) = concurrency {
        plan = plan.with_concurrency(Concurrency::new(max, Duration::ZERO).expect("c"));
    }
    let policy = Policy::builder()
        .plan(plan)
        .org(Org::new("o", "p"))
        .build()
        .expect("policy");
    Arc::clone(policy.org("o").expect("org"))
}

fn limit(name: &str, dimension: Dimension, tiers: &[(Window, u64)]) -> Limit {
    let tiers = tiers
        .iter()
        .map(|(w, c)| Tier::new(*w, *c).expect("tier"))
        .collect();
    Limit::new(name, dimension, LimitZone::Org, tiers).expect("limit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_one_org_never_exceed_capacity_and_rejections_charge_nothing() {
    let org = org_with(
        vec![
            limit(
                "points",
                Dimension::Points,
                &[(Window::Minute, 997), (Window::Hour, 1500)],
            ),
            limit("count", Dimension::Requests, &[(Window::Day, 800)]),
        ],
        None,
    );
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_secs(1_800_000_000);
    let points = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let (store, org, points, requests) =
            (store.clone(), org.clone(), points.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let cost = 1 + (task * 7 + i) % 10;
                let decision = store
                    .admit(&org, Charge::points(cost), now)
                    .await
                    .expect("memory never fails");
                if decision.is_admitted() {
                    points.fetch_add(cost, Ordering::Relaxed);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let statuses = store.peek(&org, now).await.expect("peek");
    let used_points: i64 = statuses[0].tiers().iter().map(|t| t.used).sum();
    let used_requests: i64 = statuses[1].tiers().iter().map(|t| t.used).sum();
    // What the ledger holds is exactly what admitted requests were charged: rejections charged nothing.
    assert_eq!(used_points as u64, points.load(Ordering::Relaxed));
    assert_eq!(used_requests as u64, requests.load(Ordering::Relaxed));
    assert!(points.load(Ordering::Relaxed) <= 2497);
    assert!(requests.load(Ordering::Relaxed) <= 800);
    // 6 400 attempts with costs 1..=10: one of the two limits must be full to the brim or nearly.
    assert!(requests.load(Ordering::Relaxed) == 800 || points.load(Ordering::Relaxed) > 2497 - 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_capacity_is_admitted_under_contention() {
    let org = org_with(
        vec![limit(
            "count",
            Dimension::Requests,
            &[(Window::Minute, 100), (Window::Hour, 400)],
        )],
        None,
    );
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_secs(1_800_000_000);
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (store, org, admitted) = (store.clone(), org.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                if store
                    .admit(&org, Charge::default(), now)
                    .await
                    .expect("memory")
                    .is_admitted()
                {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permits_cap_requests_in_flight_and_come_back_on_drop() {
    let org = org_with(
        vec![limit(
            "count",
            Dimension::Requests,
            &[(Window::Day, 1_000_000)],
        )],
        Some(3),
    );
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_secs(1_800_000_000);
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, org, in_flight, peak) =
            (store.clone(), org.clone(), in_flight.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                let decision = store
                    .admit(&org, Charge::default(), now)
                    .await
                    .expect("memory");
                if let Some(permit) = decision.permit {
                    let now_in = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now_in, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(store.usage(&org, now, 1).await.expect("usage").in_flight, 0);
}

#[tokio::test]
async fn a_cancelled_future_holding_a_permit_frees_it() {
    let org = org_with(
        vec![limit("count", Dimension::Requests, &[(Window::Day, 10)])],
        Some(1),
    );
    let store = Arc::new(MemoryStore::new());
    let now = Timestamp::from_secs(1_800_000_000);
    let permit = store
        .admit(&org, Charge::default(), now)
        .await
        .expect("memory")
        .permit;
    assert!(permit.is_some());
    let held = tokio::spawn(async move {
        let _permit = permit;
        std::future::pending::<()>().await;
    });
    assert!(
        !store
            .admit(&org, Charge::default(), now)
            .await
            .expect("memory")
            .is_admitted()
    );
    held.abort();
    assert!(held.await.expect_err("aborted").is_cancelled());
    assert!(
        store
            .admit(&org, Charge::default(), now)
            .await
            .expect("memory")
            .is_admitted()
    );
}

#[test]
fn idle_orgs_are_dropped_and_busy_ones_kept() {
    let org = org_with(
        vec![limit("count", Dimension::Requests, &[(Window::Minute, 10)])],
        Some(2),
    );
    let store = MemoryStore::new();
    let now = Timestamp::from_secs(1_800_000_000);
    let held = store.admit_now(&org, Charge::default(), now).permit;
    store.sweep(Timestamp::from_secs(1_800_000_000 + 120));
    assert_eq!(store.tracked_orgs(), 1, "a permit is held");
    drop(held);
    store.sweep(Timestamp::from_secs(1_800_000_000 + 30));
    assert_eq!(store.tracked_orgs(), 1, "its minute has not passed");
    store.sweep(Timestamp::from_secs(1_800_000_000 + 120));
    assert_eq!(store.tracked_orgs(), 0);
    // A later request starts fresh.
    assert!(
        store
            .admit_now(
                &org,
                Charge::default(),
                Timestamp::from_secs(1_800_000_000 + 130)
            )
            .is_admitted()
    );
}

#[test]
fn a_settlement_after_its_org_was_swept_still_counts() {
    // No concurrency: nothing keeps the org's slot while the request runs past its window.
    let org = org_with(
        vec![limit(
            "latency",
            Dimension::LatencyMs,
            &[(Window::Minute, 1_000)],
        )],
        None,
    );
    let store = MemoryStore::new();
    let start = Timestamp::from_secs(1_800_000_000);
    let Verdict::Admitted { receipt, .. } = store.admit_now(&org, Charge::default(), start).verdict
    else {
        panic!("the first request is admitted");
    };
    let later = Timestamp::from_secs(1_800_000_000 + 90);
    store.sweep(later);
    assert_eq!(store.tracked_orgs(), 0, "every window had passed");
    store.settle_now(
        &org,
        Settlement {
            receipt,
            correction: Correction {
                latency_ms: 400,
                cost_delta: 0,
            },
            call: None,
            at: later,
        },
    );
    let Verdict::Admitted { snapshot, .. } =
        store.admit_now(&org, Charge::default(), later).verdict
    else {
        panic!("600 ms of the budget are left");
    };
    assert_eq!(
        snapshot.statuses(&org)[0].remaining,
        600,
        "the latency was debited from the org's live counts"
    );
}

fn tier_states() -> impl Strategy<Value = (Vec<u64>, Vec<i64>)> {
    (1usize..=4).prop_flat_map(|len| {
        (
            proptest::collection::vec(1u64..500, len),
            proptest::collection::vec(0i64..600, len),
        )
            .prop_map(|(caps, used)| {
                let used = used
                    .iter()
                    .zip(&caps)
                    .map(|(u, c)| (*u).min(*c as i64))
                    .collect();
                (caps, used)
            })
    })
}

fn state_of(used: &[i64], ends: &[i64]) -> LimitState {
    let mut state = LimitState::fresh(used.len());
    for (tier, (u, end)) in state.tiers_mut().iter_mut().zip(used.iter().zip(ends)) {
        *tier = TierState {
            start: Timestamp::from_millis(0),
            end: Timestamp::from_millis(*end),
            used: *u,
        };
    }
    state
}

proptest! {
    #[test]
    fn spill_over_conserves_units((caps, used) in tier_states(), amount in 0u64..3000) {
        let ends = vec![1_000; used.len()];
        let mut state = state_of(&used, &ends);
        let before: i64 = state.tiers().iter().map(|t| t.used).sum();
        let split = state.charge(&caps, amount);
        let after: i64 = state.tiers().iter().map(|t| t.used).sum();
        prop_assert_eq!(after - before, amount as i64);
        prop_assert_eq!(split.iter().sum::<u64>(), amount);
        // Shortest first: a tier only pays when every shorter tier is empty.
        for (tier, taken) in split.iter().enumerate().take(used.len()).skip(1) {
            if *taken > 0 {
                for shorter in 0..tier {
                    prop_assert!(state.remaining(&caps, shorter) <= 0);
                }
            }
        }
        // Only the last tier may go below zero.
        for tier in 0..used.len() - 1 {
            prop_assert!(state.remaining(&caps, tier) >= 0);
        }
        let starts = [Timestamp::from_millis(0); MAX_TIERS];
        let back = state.refund(&split, &starts, amount);
        prop_assert_eq!(back, amount);
        let restored: i64 = state.tiers().iter().map(|t| t.used).sum();
        prop_assert_eq!(restored, before);
    }

    #[test]
    fn admission_is_all_or_nothing(a_used in 0u64..50, b_used in 0u64..50, cost in 1u64..20) {
        let org = org_with(
            vec![
                limit("points", Dimension::Points, &[(Window::Minute, 50)]),
                limit("count", Dimension::Requests, &[(Window::Minute, 40)]),
            ],
            None,
        );
        let now = Timestamp::from_secs(1_800_000_000);
        let mut ledger = Ledger::new(&org);
        for _ in 0..a_used { let _ = ledger.admit(&org, Charge::points(1), now); }
        for _ in 0..b_used.saturating_sub(a_used) {
            // Fill the count limit without points: use the other limit's spare room exactly.
            ledger.reset(&org, Some("points"));
            let _ = ledger.admit(&org, Charge::points(1), now);
        }
        let before = ledger.peek(&org, now);
        let verdict = ledger.admit(&org, Charge::points(cost), now);
        let after = ledger.peek(&org, now);
        match verdict {
            Verdict::Admitted { .. } => {
                prop_assert_eq!(before[0].remaining - after[0].remaining, cost);
                prop_assert_eq!(before[1].remaining - after[1].remaining, 1);
            }
            Verdict::Rejected { violated, .. } => {
                prop_assert_eq!(&before, &after);
                prop_assert!(!violated.is_empty());
                prop_assert!(violated.iter().all(|&i| (i == 0 && before[0].remaining < cost) || (i == 1 && before[1].remaining < 1)));
            }
        }
    }

    #[test]
    fn retry_time_is_exact(
        minute_used in 0u64..=30,
        hour_used in 0u64..=90,
        cost in 1u64..40,
        offset_s in 0i64..3600,
    ) {
        let org = org_with(vec![limit("points", Dimension::Points, &[(Window::Minute, 30), (Window::Hour, 90)])], None);
        // 1 800 000 000 is a whole hour: 2027-01-15T08:00:00Z.
        let hour_start = 1_800_000_000;
        let now = Timestamp::from_secs(hour_start + offset_s);
        let mut ledger = Ledger::new(&org);
        // Use the hour tier first (admitting at the start of this hour), then the current minute.
        let _ = ledger.admit(&org, Charge::points(30), Timestamp::from_secs(hour_start));
        if hour_used > 0 { let _ = ledger.admit(&org, Charge::points(hour_used), Timestamp::from_secs(hour_start)); }
        if minute_used > 0 { let _ = ledger.admit(&org, Charge::points(minute_used), now); }
        let probe = ledger.clone();
        match ledger.admit(&org, Charge::points(cost), now) {
            Verdict::Admitted { .. } => {}
            Verdict::Rejected { retry_at: Some(at), .. } => {
                prop_assert!(at > now);
                let mut later = probe.clone();
                prop_assert!(later.admit(&org, Charge::points(cost), at).is_admitted(), "admitted at the retry time");
                let mut earlier = probe.clone();
                let before = Timestamp::from_millis(at.as_millis() - 1);
                prop_assert!(!earlier.admit(&org, Charge::points(cost), before).is_admitted(), "rejected 1 ms before");
            }
            Verdict::Rejected { retry_at: None, .. } => prop_assert!(cost > 120),
        }
    }
}

fn waiting_org(wait_ms: u64) -> Arc<ResolvedOrg> {
    let plan = Plan::new(
        "p",
        vec![limit("count", Dimension::Requests, &[(Window::Day, 100)])],
    )
    .expect("plan")
    .with_concurrency(Concurrency::new(1, Duration::from_millis(wait_ms)).expect("c"));
    let policy = Policy::builder()
        .plan(plan)
        .org(Org::new("o", "p"))
        .build()
        .expect("policy");
    Arc::clone(policy.org("o").expect("org"))
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_gets_the_permit_freed_within_its_wait() {
    let org = waiting_org(500);
    let store = Arc::new(MemoryStore::new());
    let clock = tollhouse_core::ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let held = tollhouse_core::admit_waiting(&*store, &org, Charge::default(), &clock)
        .await
        .expect("memory")
        .permit;
    assert!(held.is_some());
    let waiter = {
        let (store, org, clock) = (store.clone(), org.clone(), clock.clone());
        tokio::spawn(async move {
            tollhouse_core::admit_waiting(&*store, &org, Charge::default(), &clock).await
        })
    };
    // Let the waiter try, find the slot taken, and start waiting.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the permit is held"
    );
    drop(held);
    let decision = waiter.await.expect("task").expect("memory");
    assert!(decision.is_admitted());
    assert!(decision.permit.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_rejected_when_its_wait_ends() {
    let org = waiting_org(500);
    let store = MemoryStore::new();
    let clock = tollhouse_core::ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let _held = store
        .admit(&org, Charge::default(), clock.now())
        .await
        .expect("memory")
        .permit;
    let started = tokio::time::Instant::now();
    let decision = tollhouse_core::admit_waiting(&store, &org, Charge::default(), &clock)
        .await
        .expect("memory");
    assert!(matches!(
        decision.verdict,
        Verdict::Rejected {
            reason: tollhouse_core::RejectReason::Concurrency,
            ..
        }
    ));
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(500),
        "waited exactly the plan's wait"
    );
    // With no wait, the rejection is immediate.
    let org = waiting_org(0);
    let _held = store
        .admit(&org, Charge::default(), clock.now())
        .await
        .expect("memory")
        .permit;
    let started = tokio::time::Instant::now();
    assert!(
        !tollhouse_core::admit_waiting(&store, &org, Charge::default(), &clock)
            .await
            .expect("memory")
            .is_admitted()
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[test]
fn sweeps_running_alongside_requests_never_let_more_in_flight_than_the_plan_allows() {
    // Every window has passed by the sweeps' clock, so each sweep retires the slot whenever no
    // permit is held; a slot retired while a permit was out would let a second one in.
    let org = org_with(
        vec![limit(
            "count",
            Dimension::Requests,
            &[(Window::Minute, 1 << 40)],
        )],
        Some(1),
    );
    let store = MemoryStore::new();
    let now = Timestamp::from_secs(1_800_000_000);
    let later = Timestamp::from_secs(1_800_000_000 + 600);
    let held = AtomicU32::new(0);
    let admitted = AtomicU64::new(0);
    let overlaps = AtomicU64::new(0);
    let workers_left = AtomicU32::new(3);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while workers_left.load(Ordering::Relaxed) > 0 {
                store.sweep(later);
            }
        });
        for _ in 0..3 {
            scope.spawn(|| {
                for _ in 0..20_000 {
                    let decision = store.admit_now(&org, Charge::default(), now);
                    if let Some(permit) = decision.permit {
                        if held.fetch_add(1, Ordering::SeqCst) > 0 {
                            overlaps.fetch_add(1, Ordering::Relaxed);
                        }
                        admitted.fetch_add(1, Ordering::Relaxed);
                        // Hold it a while: the sweeps and the other workers get their turn.
                        std::thread::yield_now();
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                }
                workers_left.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(
        overlaps.load(Ordering::Relaxed),
        0,
        "two permits were out at once"
    );
    assert!(admitted.load(Ordering::Relaxed) > 0);
}
