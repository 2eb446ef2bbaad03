//! The Redis store writes what follows the responses in batches: every settlement and call record
//! an org hands over within one flush interval is one settle script, every lease released while
//! one `ZREM` is on its way goes in the next, and what is queued is never lost on a graceful stop.
//! The usage a burst leaves is the one the memory store keeps for the same calls.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tollhouse_core::{
    CallRecord, Charge, MemoryStore, Outcome, Policy, ResolvedOrg, Store, Timestamp, UsageSnapshot,
    UsageView,
};
use tollhouse_redis::RedisStore;
use tollhouse_tests::redis_server::{
    command_calls, connection, own_redis_server, redis_for, unique_prefix,
};

/// Orgs `a`, `b` and `c`: 1,000 requests a minute, at most 100 in flight.
fn policy() -> Policy {
    let mut text = String::from(
        "[plans.p]\nconcurrency = 100\n[[plans.p.limits]]\nname = \"per_minute\"\n\
         dimension = \"requests\"\ntiers = [{ window = \"minute\", capacity = 1000 }]\n",
    );
    for org in ["a", "b", "c"] {
        text.push_str(&format!("[[orgs]]\nid = \"{org}\"\nplan = \"p\"\n"));
    }
    Policy::from_toml_str(&text, "batching.toml".as_ref()).expect("a valid policy")
}

fn org(policy: &Policy, id: &str) -> Arc<ResolvedOrg> {
    Arc::clone(policy.org(id).expect("defined"))
}

/// 2026-03-02 10:00:00 UTC.
fn t0() -> Timestamp {
    Timestamp::from_secs(1_772_445_600)
}

/// The `n`th call of a burst: three endpoints, repeated queries, a few rejected or not billable.
fn call(n: u64) -> CallRecord {
    let at = Timestamp::from_millis(t0().as_millis() + i64::try_from(n).unwrap_or(0));
    let (method, route) = match n % 3 {
        0 => ("GET", "/v1/items"),
        1 => ("POST", "/v1/items"),
        _ => ("GET", "/v1/items/{id}"),
    };
    let mut call = CallRecord::new(at, method, &format!("{route}?page={}", n % 4))
        .with_route(route)
        .with_key("sk_live_…7f3a");
    call.cost = 1 + n % 3;
    call.status = 200;
    if n.is_multiple_of(7) {
        call = call.with_outcome(Outcome::Rejected {
            limit: Arc::from("per_minute"),
        });
        call.status = 429;
        call.logged = n.is_multiple_of(14);
    }
    call.billable = !n.is_multiple_of(5);
    call
}

async fn store_at(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect to the test Redis")
}

/// Hands over `calls` of each of `orgs`, all at once: none is written before the last is queued.
async fn record_all<S: Store>(store: &S, orgs: &[Arc<ResolvedOrg>], calls: u64) {
    let recorded = join_all(
        orgs.iter()
            .flat_map(|org| (0..calls).map(move |n| store.record(org, call(n)))),
    )
    .await;
    assert!(recorded.iter().all(Result::is_ok), "{recorded:?}");
}

// A current-thread runtime: the store's writer runs only when the test awaits, so every call of
// the burst is queued before the first batch is written.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_records_is_one_script_per_org_and_keeps_the_same_usage() {
    let Some(server) = own_redis_server("a_burst_of_records") else {
        return;
    };
    let url = server.url();
    let store = store_at(&url, &unique_prefix("burst")).await;
    let policy = policy();
    let orgs: Vec<_> = ["a", "b", "c"].iter().map(|id| org(&policy, id)).collect();
    let mut stats = connection(&url).await;
    let before = command_calls(&mut stats, "evalsha").await;

    // 50 calls per org: below the size that flushes an org early, so one batch per org.
    record_all(&store, &orgs, 50).await;
    let scripts = command_calls(&mut stats, "evalsha").await - before;
    assert_eq!(scripts, 3, "150 calls of 3 orgs: one settle script per org");

    // The same calls, one by one, in the memory store: the same usage, row for row.
    let usage = same_usage_as_one_by_one(&store, &orgs[0], 50).await;
    assert_eq!(usage.calls_today, 50 - 8, "the 8 rejected are not admitted");
}

/// The usage `store` shows for `org` after `calls` calls of a burst, checked against the memory
/// store's for the same calls recorded one by one.
async fn same_usage_as_one_by_one(
    store: &RedisStore,
    org: &Arc<ResolvedOrg>,
    calls: u64,
) -> UsageSnapshot {
    let memory = MemoryStore::new();
    for n in 0..calls {
        memory.record(org, call(n)).await.expect("memory");
    }
    let now = Timestamp::from_millis(t0().as_millis() + 60_000);
    let view = UsageView::All { days: 31 };
    let batched = store.usage_view(org, now, view).await.expect("redis usage");
    let one_by_one = memory
        .usage_view(org, now, view)
        .await
        .expect("memory usage");
    assert_eq!(batched.usage, one_by_one.usage);
    batched.usage
}

/// A burst far larger than a batch is meant to be (a multi-threaded server can queue one between
/// two flushes): written whole, with only the newest calls of the log sent.
#[tokio::test(flavor = "current_thread")]
async fn a_large_burst_of_one_org_keeps_what_the_memory_store_keeps() {
    let Some(server) = own_redis_server("a_large_burst") else {
        return;
    };
    let url = server.url();
    let store = store_at(&url, &unique_prefix("large_burst")).await;
    let policy = policy();
    let orgs = [org(&policy, "a")];
    let mut stats = connection(&url).await;
    let before = command_calls(&mut stats, "evalsha").await;

    let calls = 12_000;
    record_all(&store, &orgs, calls).await;
    assert_eq!(command_calls(&mut stats, "evalsha").await - before, 1);
    let usage = same_usage_as_one_by_one(&store, &orgs[0], calls).await;
    assert_eq!(usage.billable_today, calls - calls / 5);
    assert_eq!(usage.calls.len(), 100, "the log keeps its last 100");
}

#[tokio::test(flavor = "current_thread")]
async fn leases_released_together_go_back_in_one_command_and_free_their_slots() {
    let Some(server) = own_redis_server("leases_released_together") else {
        return;
    };
    let url = server.url();
    let store = store_at(&url, &unique_prefix("releases")).await;
    let policy = policy();
    let acme = org(&policy, "a");
    let decisions = join_all((0..150).map(|_| store.admit(&acme, Charge::default(), t0()))).await;
    let permits: Vec<_> = decisions
        .into_iter()
        .filter_map(|decision| decision.expect("redis answers").permit)
        .collect();
    assert_eq!(permits.len(), 100, "at most 100 in flight");

    let mut stats = connection(&url).await;
    let before = command_calls(&mut stats, "zrem").await;
    drop(permits);
    store.flush().await;
    assert_eq!(command_calls(&mut stats, "zrem").await - before, 1);
    let usage = store
        .usage_view(&acme, t0(), UsageView::Summary)
        .await
        .expect("usage");
    assert_eq!(usage.in_flight, 0);
    let again = join_all((0..150).map(|_| store.admit(&acme, Charge::default(), t0()))).await;
    let admitted = again
        .iter()
        .filter(|decision| decision.as_ref().is_ok_and(|d| d.is_admitted()))
        .count();
    assert_eq!(admitted, 100, "every slot is free again");
}

/// What a store queued, it wrote before `flush` returned: the runtime that ran its writer is gone
/// right after, and another store reads every call.
#[test]
fn flush_writes_everything_queued_before_the_process_stops() {
    let Some(redis) = redis_for("flush_writes_everything_queued") else {
        return;
    };
    let prefix = unique_prefix("flush");
    let policy = policy();
    let acme = org(&policy, "a");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    };

    let first = runtime();
    let store = first.block_on(async {
        let store = store_at(redis.url(), &prefix).await;
        for n in 0..20 {
            // Handed over and not awaited, like the layer does.
            drop(store.record(&acme, call(n)));
        }
        store.flush().await;
        store
    });
    // The writer and anything the store would still spawn die with their runtime.
    drop(first);
    drop(store);

    let usage = runtime().block_on(async {
        let store = store_at(redis.url(), &prefix).await;
        store
            .usage_view(&acme, t0(), UsageView::All { days: 1 })
            .await
            .expect("usage")
    });
    // Call 7 is a rejection the log leaves out (it logs one rejection in two here).
    assert_eq!(
        usage.usage.calls.len(),
        19,
        "every logged call is in the log"
    );
    assert_eq!(usage.usage.billable_today, 16);
}

/// Org `acme`: 100 points a minute and 1,000 an hour, and a latency budget of 5,000 ms a minute.
fn points_policy() -> Policy {
    Policy::from_toml_str(
        r#"
[[plans.p.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 100 }, { window = "hour", capacity = 1000 }]

[[plans.p.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{ window = "minute", capacity = 5000 }]

[[orgs]]
id = "acme"
plan = "p"
"#,
        "points.toml".as_ref(),
    )
    .expect("a valid policy")
}

/// Admits 40 requests of 2 points, then settles them all at once with real costs above and below
/// the declared one and latency debits; the counts left are the memory store's, which settled
/// them one by one.
async fn settle_a_burst<S: Store>(store: &S, org: &Arc<ResolvedOrg>) -> Vec<Vec<i64>> {
    let mut receipts = Vec::new();
    for _ in 0..40 {
        let decision = store
            .admit(org, Charge::points(2), t0())
            .await
            .expect("the store answers");
        match decision.verdict {
            tollhouse_core::Verdict::Admitted { receipt, .. } => receipts.push(receipt),
            tollhouse_core::Verdict::Rejected { .. } => panic!("40 × 2 points fit a minute"),
        }
    }
    let settled = join_all(receipts.into_iter().enumerate().map(|(n, receipt)| {
        let correction = tollhouse_core::Correction {
            latency_ms: 100 + n as u64,
            cost_delta: [-1, 0, 3][n % 3],
        };
        store.settle(
            org,
            tollhouse_core::Settlement {
                receipt,
                correction,
                call: Some(call(n as u64)),
                at: t0(),
            },
        )
    }))
    .await;
    assert!(settled.iter().all(Result::is_ok), "{settled:?}");
    store
        .peek(org, t0())
        .await
        .expect("the store answers")
        .iter()
        .map(|status| status.tiers().iter().map(|tier| tier.used).collect())
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_corrections_charges_what_one_by_one_would() {
    let Some(redis) = redis_for("a_burst_of_corrections") else {
        return;
    };
    let store = store_at(redis.url(), &unique_prefix("corrections")).await;
    let policy = points_policy();
    let acme = org(&policy, "acme");
    let batched = settle_a_burst(&store, &acme).await;
    let one_by_one = settle_a_burst(&MemoryStore::new(), &acme).await;
    assert_eq!(batched, one_by_one);
    // 80 points declared, 14 given back, 39 more charged: 105 in all, the hour taking what the
    // minute could not when a charge came (a later refund goes back to the minute); 100 ms + n of
    // latency each.
    assert_eq!(batched[0], vec![99, 6]);
    assert_eq!(batched[1], vec![4_780]);
}

/// The layer hands calls over without waiting ([`Store::try_record`]): they wait up to the record
/// interval to be merged, another instance sees them after it, and the instance that took them
/// reads them at once (its usage read writes the org's queue first).
#[tokio::test(flavor = "current_thread")]
async fn calls_handed_over_wait_for_the_record_interval_but_their_instance_reads_them_at_once() {
    let Some(redis) = redis_for("calls_handed_over") else {
        return;
    };
    let prefix = unique_prefix("handed_over");
    let taking = RedisStore::builder()
        .prefix(prefix.as_str())
        .record_interval(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .connect(redis.url())
        .await
        .expect("connect");
    let other = store_at(redis.url(), &prefix).await;
    let policy = policy();
    let acme = org(&policy, "a");
    for n in 1..=5 {
        assert!(
            Store::try_record(&taking, &acme, call(n)).is_none(),
            "taken"
        );
    }
    // The writer has run (the other store's reads yield to it), and left the calls queued.
    let calls_seen_by = |store: &RedisStore| {
        let store = store.clone();
        let acme = Arc::clone(&acme);
        async move {
            store
                .usage_view(&acme, t0(), UsageView::Summary)
                .await
                .expect("usage")
                .usage
                .calls_today
        }
    };
    assert_eq!(calls_seen_by(&other).await, 0, "not written yet");
    assert_eq!(calls_seen_by(&taking).await, 5, "its own calls, at once");
    assert_eq!(calls_seen_by(&other).await, 5, "written by that read");

    // More than ten seconds is refused.
    let refused = RedisStore::builder()
        .record_interval(Duration::from_secs(11))
        .connect(redis.url())
        .await;
    assert!(
        matches!(&refused, Err(tollhouse_redis::ConnectError::Config(message)) if message.contains("at most 10 s")),
        "{refused:?}"
    );
}
