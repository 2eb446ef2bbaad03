//! Quota grants on a real Redis: a hot org is admitted mostly without a round trip, every unit an
//! instance spends was charged to Redis first (so instances together admit exactly the capacity),
//! what a grant did not use goes back, and what is in flight still shows in the usage.
//!
//! The store suite also runs every case on a granting store (`store_suite::grants`): the same
//! answers as the memory store.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tollhouse_core::{Charge, Policy, ResolvedOrg, Store, SystemClock, Timestamp};
use tollhouse_core::{Clock, RejectReason, Verdict};
use tollhouse_redis::{Grants, RedisStore};
use tollhouse_tests::redis_server::{
    RedisServer, command_calls, connection, own_redis_server, unique_prefix,
};

fn org(plan: &str) -> Arc<ResolvedOrg> {
    org_as("acme", plan)
}

fn org_as(id: &str, plan: &str) -> Arc<ResolvedOrg> {
    let text = format!("[plans.p]\n{plan}\n[[orgs]]\nid = \"{id}\"\nplan = \"p\"\n");
    let policy = Policy::from_toml_str(&text, "grants.toml".as_ref()).expect("a valid policy");
    Arc::clone(policy.org(id).expect("defined"))
}

/// A plan of `requests` a minute and `points` per `points_window`.
fn requests_and_points(requests: u64, points_window: &str, points: u64) -> String {
    format!(
        r#"
[[plans.p.limits]]
name = "per_minute"
dimension = "requests"
zone = "UTC"
tiers = [{{ window = "minute", capacity = {requests} }}]

[[plans.p.limits]]
name = "points"
dimension = "points"
zone = "UTC"
tiers = [{{ window = "{points_window}", capacity = {points} }}]
"#
    )
}

/// 1,000 requests a minute and 100,000 points a day.
fn minute_and_day() -> String {
    requests_and_points(1000, "day", 100_000)
}

async fn granting(server: &RedisServer, prefix: &str, grants: Grants) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
        .grants(grants)
        .connect(&server.url())
        .await
        .expect("connect")
}

/// Ten seconds into a minute: the cases that must stay in one window do.
fn in_a_minute() -> Timestamp {
    let now = SystemClock.now().as_millis();
    Timestamp::from_millis(now - now.rem_euclid(60_000) + 10_000)
}

fn remaining(statuses: &[tollhouse_core::LimitStatus]) -> Vec<u64> {
    statuses.iter().map(|status| status.remaining).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_org_is_admitted_from_grants_and_redis_counts_exactly() {
    let Some(server) = own_redis_server("a_hot_org_is_admitted_from_grants") else {
        return;
    };
    let store = granting(&server, &unique_prefix("hot"), Grants::new().hot_rps(0)).await;
    let org = org(&minute_and_day());
    let now = in_a_minute();
    let mut info = connection(&server.url()).await;
    let before = command_calls(&mut info, "evalsha").await;
    for n in 1..=300_u64 {
        let decision = store
            .admit(&org, Charge::points(2), now)
            .await
            .expect("answers");
        let Verdict::Admitted { snapshot, .. } = &decision.verdict else {
            panic!("admission {n} refused: {decision:?}");
        };
        // Honest headers: what the org may still use, its grant's unspent units included.
        let statuses = snapshot.statuses(&org);
        assert_eq!(remaining(&statuses), vec![1000 - n, 100_000 - 2 * n]);
    }
    let scripts = command_calls(&mut info, "evalsha").await - before;
    // Grants double with the demand: about log2(300) refills, not 300 round trips.
    assert!(scripts <= 20, "{scripts} scripts for 300 admissions");
    // Exact: the grant's unspent units count as the org's own.
    let statuses = store.peek(&org, now).await.expect("peek");
    assert_eq!(remaining(&statuses), vec![700, 99_400]);
    // Given back, Redis holds exactly what was admitted.
    store.flush().await;
    let other = granting(&server, store.prefix(), Grants::new()).await;
    let statuses = other.peek(&org, now).await.expect("peek");
    assert_eq!(remaining(&statuses), vec![700, 99_400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_grants_admit_exactly_the_capacity() {
    let Some(server) = own_redis_server("three_instances_with_grants") else {
        return;
    };
    let prefix = unique_prefix("three");
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(granting(&server, &prefix, Grants::new().hot_rps(0)).await);
    }
    let org = org(&requests_and_points(600, "minute", 5000));
    let now = in_a_minute();
    // Four tasks an instance, each until 30 refusals in a row; costs of 1 to 3 points.
    let tasks = (0..12_u64).map(|task| {
        let store = stores[usize::try_from(task % 3).expect("small")].clone();
        let org = Arc::clone(&org);
        async move {
            let (mut requests, mut points, mut refused_in_a_row) = (0_u64, 0_u64, 0);
            let mut n = task;
            while refused_in_a_row < 30 {
                n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let cost = 1 + (n >> 33) % 3;
                let decision = store
                    .admit(&org, Charge::points(cost), now)
                    .await
                    .expect("answers");
                if decision.is_admitted() {
                    requests += 1;
                    points += cost;
                    refused_in_a_row = 0;
                } else {
                    refused_in_a_row += 1;
                }
                tokio::task::yield_now().await;
            }
            (requests, points)
        }
    });
    let counts = join_all(tasks.map(tokio::spawn)).await;
    let (requests, points) = counts
        .into_iter()
        .map(|joined| joined.expect("a task"))
        .fold((0, 0), |(r, p), (tr, tp)| (r + tr, p + tp));
    // Never more than capacity, and the whole of it: every instance went on until Redis refused
    // it (its own grant given back first).
    assert_eq!(requests, 600, "{points} points");
    for store in &stores {
        store.flush().await;
    }
    // Every unit an instance spent was charged to Redis, and every unit it did not went back.
    let statuses = stores[0].peek(&org, now).await.expect("peek");
    assert_eq!(remaining(&statuses), vec![0, 5000 - points]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_ends_gives_its_grant_back() {
    let Some(server) = own_redis_server("a_window_that_ends") else {
        return;
    };
    let store = granting(&server, &unique_prefix("roll"), Grants::new().hot_rps(0)).await;
    let org = org(&minute_and_day());
    let now = in_a_minute();
    for _ in 0..50 {
        assert!(
            store
                .admit(&org, Charge::points(1), now)
                .await
                .expect("answers")
                .is_admitted()
        );
    }
    // The next minute: the grant's minute part ended, and what it did not use went back with the
    // request that found it so.
    let next = Timestamp::from_millis(now.as_millis() + 60_000);
    assert!(
        store
            .admit(&org, Charge::points(1), next)
            .await
            .expect("answers")
            .is_admitted()
    );
    let other = granting(&server, store.prefix(), Grants::new()).await;
    let minute = other.peek(&org, now).await.expect("peek");
    assert_eq!(
        minute[0].remaining, 950,
        "the old minute holds what it admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_admits_while_redis_is_paused() {
    let Some(server) = own_redis_server("a_grant_admits_while_redis_is_paused") else {
        return;
    };
    let store = RedisStore::builder()
        .prefix(unique_prefix("paused"))
        .timeout(Duration::from_millis(100))
        .grants(Grants::new().hot_rps(0))
        .connect(&server.url())
        .await
        .expect("connect");
    let org = org(&minute_and_day());
    let now = in_a_minute();
    // Demand grows the grant: after 64 admissions in one second it covers 64 more.
    for _ in 0..64 {
        assert!(
            store
                .admit(&org, Charge::points(1), now)
                .await
                .expect("answers")
                .is_admitted()
        );
    }
    // What the grant holds now: what Redis counted beyond the admissions. A request that found the
    // grant spent takes a new one.
    let reader = granting(&server, store.prefix(), Grants::new()).await;
    let unspent = |statuses: Vec<tollhouse_core::LimitStatus>, admitted: u64| {
        1000 - statuses[0].remaining - admitted
    };
    let mut admitted = 64;
    let mut left = unspent(reader.peek(&org, now).await.expect("peek"), admitted);
    if left == 0 {
        assert!(
            store
                .admit(&org, Charge::points(1), now)
                .await
                .expect("answers")
                .is_admitted()
        );
        admitted += 1;
        left = unspent(reader.peek(&org, now).await.expect("peek"), admitted);
    }
    assert!(left > 0);
    let mut admin = connection(&server.url()).await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_000)
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    // Redis answers nothing for two seconds, and the store's timeout is 100 ms: admissions
    // that needed Redis would fail. Exactly what the grant holds is admitted without it.
    for n in 0..left {
        let decision = store
            .try_admit(&org, Charge::points(1), now)
            .unwrap_or_else(|| panic!("admission {n} of {left} needed Redis"))
            .expect("answers");
        assert!(decision.is_admitted());
    }
    assert!(store.try_admit(&org, Charge::points(1), now).is_none());
    // The pause ends by itself; the server goes with the test.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_from_grants_show_in_the_usage_of_every_instance() {
    let Some(server) = own_redis_server("requests_in_flight_from_grants") else {
        return;
    };
    let prefix = unique_prefix("flight");
    let grants = Grants::new().hot_rps(0).period(Duration::from_millis(50));
    let first = granting(&server, &prefix, grants.clone()).await;
    let second = granting(&server, &prefix, grants).await;
    let org = org(&minute_and_day());
    let now = in_a_minute();
    // The first goes to Redis (a lease), the next two come from the grant.
    let mut permits = Vec::new();
    for _ in 0..3 {
        let decision = first
            .admit(&org, Charge::points(1), now)
            .await
            .expect("answers");
        permits.push(decision.permit.expect("a permit"));
    }
    assert_eq!(first.usage(&org, now, 1).await.expect("usage").in_flight, 3);
    // The other instance sees them once they are published (every period).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = second.usage(&org, now, 1).await.expect("usage").in_flight;
        if seen == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "seen {seen}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(permits);
    // The granted two at once; the lease's release reaches Redis a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while first.usage(&org, now, 1).await.expect("usage").in_flight != 0 {
        assert!(std::time::Instant::now() < deadline, "still in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_with_a_rate_stay_one_round_trip() {
    let Some(server) = own_redis_server("plans_with_a_rate") else {
        return;
    };
    let store = granting(
        &server,
        &unique_prefix("ungranted"),
        Grants::new().hot_rps(0),
    )
    .await;
    // A smooth rate beside the tiers: every request is one round trip.
    let org = org(&format!(
        "{}\n[[plans.p.limits]]\nname = \"smooth\"\ndimension = \"requests\"\n\
         rate = {{ amount = 1000, per = \"second\" }}\n",
        minute_and_day()
    ));
    let now = in_a_minute();
    let mut info = connection(&server.url()).await;
    let before = command_calls(&mut info, "evalsha").await;
    for _ in 0..20 {
        let decision = store
            .admit(&org, Charge::points(1), now)
            .await
            .expect("answers");
        assert!(decision.is_admitted());
        assert!(store.try_admit(&org, Charge::points(1), now).is_none());
    }
    assert_eq!(command_calls(&mut info, "evalsha").await - before, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_limit_admissions_are_exact_and_refusals_say_when() {
    let Some(server) = own_redis_server("near_the_limit") else {
        return;
    };
    let store = granting(&server, &unique_prefix("near"), Grants::new().hot_rps(0)).await;
    let tight = org_as(
        "tight",
        "[[plans.p.limits]]\nname = \"per_minute\"\ndimension = \"requests\"\nzone = \"UTC\"\n\
         tiers = [{ window = \"minute\", capacity = 10 }]\n",
    );
    let now = in_a_minute();
    for _ in 0..10 {
        let decision = store
            .admit(&tight, Charge::default(), now)
            .await
            .expect("answers");
        assert!(decision.is_admitted());
    }
    let refused = store
        .admit(&tight, Charge::default(), now)
        .await
        .expect("answers");
    let Verdict::Rejected {
        reason, retry_at, ..
    } = refused.verdict
    else {
        panic!("admitted past capacity");
    };
    assert_eq!(reason, RejectReason::Limit(0));
    // The next minute, as the memory store says.
    let next_minute = now.as_millis() - now.as_millis().rem_euclid(60_000) + 60_000;
    assert_eq!(retry_at, Some(Timestamp::from_millis(next_minute)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_taken_for_a_request_that_went_away_is_given_back() {
    let Some(server) = own_redis_server("a_grant_taken_for_a_request_that_went_away") else {
        return;
    };
    let store = granting(&server, &unique_prefix("gone"), Grants::new().hot_rps(0)).await;
    let observer = granting(&server, store.prefix(), Grants::new()).await;
    let org = org(&minute_and_day());
    let now = in_a_minute();
    let mut admin = connection(&server.url()).await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(500)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    // The request goes away while its admission waits; the script runs once the pause ends,
    // admits, and takes a grant, and nobody reads its reply.
    let gone = tokio::time::timeout(
        Duration::from_millis(50),
        store.admit(&org, Charge::points(3), now),
    )
    .await;
    assert!(gone.is_err(), "the admission waits for the paused Redis");
    // Both the request's charge and the grant go back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = observer.peek(&org, now).await.expect("peek");
        let scripts = command_calls(&mut admin, "evalsha").await;
        if remaining(&statuses) == vec![1000, 100_000] && scripts >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still charged: {statuses:?}, {scripts} scripts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_from_grants_keep_every_instance_within_the_concurrency_limit() {
    let Some(server) = own_redis_server("slots_from_grants") else {
        return;
    };
    let prefix = unique_prefix("slots");
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(granting(&server, &prefix, Grants::new().hot_rps(0)).await);
    }
    let org = org(&format!("concurrency = 20\n{}", minute_and_day()));
    let now = in_a_minute();
    // Two tasks an instance, each holding every request it gets in until 50 refusals in a row.
    let tasks = (0..6).map(|task| {
        let store = stores[task % 3].clone();
        let org = Arc::clone(&org);
        tokio::spawn(async move {
            let mut permits = Vec::new();
            let mut refused_in_a_row = 0;
            while refused_in_a_row < 50 {
                let decision = store
                    .admit(&org, Charge::points(1), now)
                    .await
                    .expect("answers");
                if decision.is_admitted() {
                    permits.push(decision.permit);
                    refused_in_a_row = 0;
                } else {
                    refused_in_a_row += 1;
                }
                tokio::task::yield_now().await;
            }
            permits
        })
    });
    let mut held = Vec::new();
    for joined in join_all(tasks).await {
        held.extend(joined.expect("a task"));
    }
    // Exactly the limit: never more, and no slot left idle in a grant at the end (an instance
    // gives its grant back before Redis refuses it).
    assert_eq!(held.len(), 20);
    drop(held);
    // Every slot goes back: nothing is left in flight.
    for store in &stores {
        store.flush().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stores[0]
        .usage(&org, now, 1)
        .await
        .expect("usage")
        .in_flight
        != 0
    {
        assert!(std::time::Instant::now() < deadline, "slots still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses = stores[0].peek(&org, now).await.expect("peek");
    assert_eq!(remaining(&statuses), vec![980, 99_980]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_a_concurrency_limit_is_granted_slots() {
    let Some(server) = own_redis_server("granted_slots") else {
        return;
    };
    let store = granting(
        &server,
        &unique_prefix("granted_slots"),
        Grants::new().hot_rps(0),
    )
    .await;
    let org = org(&format!("concurrency = 100\n{}", minute_and_day()));
    let now = in_a_minute();
    let mut info = connection(&server.url()).await;
    let before = command_calls(&mut info, "evalsha").await;
    let mut permits = Vec::new();
    for n in 1..=300_u32 {
        let decision = store
            .admit(&org, Charge::points(1), now)
            .await
            .expect("answers");
        assert!(decision.is_admitted(), "admission {n}");
        // Three held at a time.
        permits.push(decision.permit);
        if permits.len() > 3 {
            permits.remove(0);
        }
    }
    let scripts = command_calls(&mut info, "evalsha").await - before;
    assert!(scripts <= 20, "{scripts} scripts for 300 admissions");
    drop(permits);
    let statuses = store.peek(&org, now).await.expect("peek");
    assert_eq!(remaining(&statuses), vec![700, 99_700]);
}

/// Points a minute, spilling into a day that corrections have put in debt.
const MINUTE_INTO_DAY: &str = r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
zone = "UTC"
tiers = [{ window = "minute", capacity = 100 }, { window = "day", capacity = 1000 }]
"#;

/// What `store` admits of `org` one point at a time at `at`, until it refuses.
async fn admitted_until_refused(
    store: &dyn tollhouse_core::DynStore,
    org: &Arc<ResolvedOrg>,
    at: Timestamp,
) -> u64 {
    let mut admitted = 0;
    while store
        .admit(org, Charge::points(1), at)
        .await
        .expect("answers")
        .is_admitted()
    {
        admitted += 1;
        assert!(admitted <= 2_000, "no end");
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debt_on_the_last_tier_bounds_grants_as_it_bounds_the_memory_store() {
    let Some(server) = own_redis_server("a_debt_on_the_last_tier") else {
        return;
    };
    let granting = granting(&server, &unique_prefix("debt"), Grants::new().hot_rps(0)).await;
    let memory = tollhouse_core::MemoryStore::new();
    let org = org(MINUTE_INTO_DAY);
    let now = in_a_minute();
    let next = Timestamp::from_millis(now.as_millis() + 60_000);
    let mut answers = Vec::new();
    for store in [&granting as &dyn tollhouse_core::DynStore, &memory] {
        // 10 points, then the handler reports 1,180 more: the minute fills (90), the day takes
        // 1,090, 90 beyond its capacity (only the last tier may go into debt).
        let decision = store
            .admit(&org, Charge::points(10), now)
            .await
            .expect("answers");
        let Verdict::Admitted { receipt, .. } = decision.verdict else {
            panic!("refused");
        };
        costs_more(store, &org, receipt, 1_180, now).await;
        // The next minute holds 100, less the day's debt of 90.
        answers.push(admitted_until_refused(store, &org, next).await);
    }
    assert_eq!(answers, vec![10, 10], "granting store, memory store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_found_higher_ends_the_grant_before_it_is_charged() {
    let Some(server) = own_redis_server("a_cost_found_higher") else {
        return;
    };
    let granting = granting(&server, &unique_prefix("higher"), Grants::new().hot_rps(0)).await;
    let memory = tollhouse_core::MemoryStore::new();
    let org = org(MINUTE_INTO_DAY);
    let now = in_a_minute();
    let mut answers = Vec::new();
    for store in [&granting as &dyn tollhouse_core::DynStore, &memory] {
        // 20 points, the granting store holding a grant of the minute by then.
        let mut last = None;
        for _ in 0..20 {
            let decision = store
                .admit(&org, Charge::points(1), now)
                .await
                .expect("answers");
            let Verdict::Admitted { receipt, .. } = decision.verdict else {
                panic!("refused");
            };
            last = Some(receipt);
        }
        // The last call cost 1,200 more: the minute's 80 and 1,120 of the day, 120 beyond it.
        costs_more(store, &org, last.expect("admitted"), 1_200, now).await;
        answers.push(admitted_until_refused(store, &org, now).await);
    }
    // Nothing more this minute: the grant went back before the charge, as if there had been none.
    assert_eq!(answers, vec![0, 0], "granting store, memory store");
}

/// Settles the call of `receipt` at `at`, its cost found `more` points higher.
async fn costs_more(
    store: &dyn tollhouse_core::DynStore,
    org: &Arc<ResolvedOrg>,
    receipt: tollhouse_core::Receipt,
    more: i64,
    at: Timestamp,
) {
    let settlement = tollhouse_core::Settlement {
        receipt,
        correction: tollhouse_core::Correction {
            latency_ms: 0,
            cost_delta: more,
        },
        call: None,
        at,
    };
    store.settle(org, settlement).await.expect("settles");
}
