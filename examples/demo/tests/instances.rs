//! Three demo instances sharing one Redis: together they admit exactly the capacity, hold the
//! concurrency limit across instances, keep answering when Redis stops, and enforce again when it
//! is back. Each test starts its own `redis-server` (see `tollhouse_tests::redis_server`).

mod common;

use std::time::{Duration, Instant};

use common::{Demo, temp_policy};
use futures_util::future::join_all;
use tollhouse_core::{Clock, SystemClock, Timestamp, Window, parse_zone};
use tollhouse_tests::redis_server::{RedisServer, own_redis_server};

/// `monthly` counts in UTC months, so a run only crosses a window boundary at a month's end; the
/// tests that count exact capacity check they did not.
const POLICY: &str = r#"
[server]
on_store_error = "allow"

[[plans.shared.limits]]
name = "monthly"
dimension = "requests"
zone = "UTC"
tiers = [{ window = "month", capacity = 150 }]

[plans.slots]
concurrency = 3
[[plans.slots.limits]]
name = "monthly"
dimension = "requests"
zone = "UTC"
tiers = [{ window = "month", capacity = 100000 }]

[[orgs]]
id = "acme"
plan = "shared"
keys = ["acme-key-1"]

[[orgs]]
id = "busy"
plan = "slots"
keys = ["busy-key-1"]

# Debited after the response: cost corrections (GET /v1/search reports its cost) and latency.
[[plans.metered.limits]]
name = "points"
dimension = "points"
zone = "UTC"
tiers = [{ window = "month", capacity = 1000000 }]

[[plans.metered.limits]]
name = "latency"
dimension = "latency_ms"
zone = "UTC"
tiers = [{ window = "month", capacity = 100000000 }]

[[orgs]]
id = "meter"
plan = "metered"
keys = ["meter-key-1"]
"#;

/// Three demos on one fresh Redis, with `extra` flags. Store calls may take up to `timeout_ms`
/// before the policy's `on_store_error = "allow"` lets a request through unmetered.
fn three_instances(
    test: &str,
    timeout_ms: &str,
    extra: &[&str],
) -> Option<(RedisServer, Vec<Demo>)> {
    let redis = own_redis_server(test)?;
    let policy = temp_policy(&format!("{test}.toml"), POLICY);
    let policy = policy.to_str().expect("a UTF-8 path").to_owned();
    let url = redis.url();
    let demos = (0..3)
        .map(|_| {
            let mut args = vec![
                "--config",
                &policy,
                "--redis",
                &url,
                "--redis-timeout-ms",
                timeout_ms,
            ];
            args.extend_from_slice(extra);
            Demo::start(&args)
        })
        .collect();
    Some((redis, demos))
}

/// The start of the current UTC month, by the engine's own calendar.
fn this_month() -> Timestamp {
    let utc = parse_zone("UTC").expect("UTC is a zone");
    Window::Month.bounds(utc, SystemClock.now()).start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_admit_exactly_the_capacity_together() {
    let Some((_redis, demos)) = three_instances("three_instances_admit_exactly", "2000", &[])
    else {
        return;
    };
    let Some(admitted) = admit_at_most_the_capacity(&demos).await else {
        return;
    };
    assert_eq!(
        admitted, 150,
        "exactly the capacity, across three instances"
    );
    every_instance_sees_it_spent(&demos).await;
}

/// With quota grants, most of acme's requests are admitted from slices taken in advance: never
/// more than the capacity, and all of it once every instance has been asked until it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_with_grants_admit_exactly_the_capacity_together() {
    let Some((_redis, demos)) =
        three_instances("three_instances_with_grants", "2000", &["--grants"])
    else {
        return;
    };
    let Some(burst) = admit_at_most_the_capacity(&demos).await else {
        return;
    };
    assert!(burst <= 150, "{burst} admitted, for a capacity of 150");
    // Units another instance held unspent were refused to the burst (early, never beyond); asked
    // until each refuses (each gives its grant back first), the instances admit the rest.
    let client = reqwest::Client::new();
    let mut admitted = burst;
    for demo in &demos {
        loop {
            let response = client
                .get(demo.url("/v1/items"))
                .bearer_auth("acme-key-1")
                .send()
                .await
                .expect("a response");
            if response.status() != 200 {
                break;
            }
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 150,
        "the whole capacity, and no more ({burst} in the burst)"
    );
    every_instance_sees_it_spent(&demos).await;
}

/// 400 requests of acme at once, spread over `demos`: how many were admitted (the others refused,
/// every answer decided by the store), or `None` if the run crossed a month's end.
async fn admit_at_most_the_capacity(demos: &[Demo]) -> Option<usize> {
    let client = reqwest::Client::new();
    let month = this_month();
    let requests = (0..400).map(|i| {
        let url = demos[i % 3].url("/v1/items");
        let client = client.clone();
        async move {
            let response = client
                .get(url)
                .bearer_auth("acme-key-1")
                .send()
                .await
                .expect("a response");
            let metered = response.headers().contains_key("x-ratelimit-remaining");
            (response.status().as_u16(), metered)
        }
    });
    let statuses = join_all(requests).await;
    if this_month() != month {
        eprintln!("SKIP: the run crossed a month boundary, so the monthly window refilled");
        return None;
    }
    // A store call past its timeout would let a request through unmetered (fail open) and hide in
    // the count: with a generous timeout there must be none.
    let unmetered = statuses.iter().filter(|(_, metered)| !*metered).count();
    assert_eq!(unmetered, 0, "every answer was decided by the shared store");
    let admitted = statuses.iter().filter(|(s, _)| *s == 200).count();
    let rejected = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(admitted + rejected, 400, "every answer is a 200 or a 429");
    Some(admitted)
}

/// Every instance sees the same, shared count: nothing left.
async fn every_instance_sees_it_spent(demos: &[Demo]) {
    let client = reqwest::Client::new();
    for demo in demos {
        let usage = usage(&client, demo, "acme-key-1").await;
        assert_eq!(usage["limits"][0]["remaining"], 0, "{usage}");
    }
}

/// The org's `/v1/usage` as one instance reports it.
async fn usage(client: &reqwest::Client, demo: &Demo, key: &str) -> serde_json::Value {
    let response = client
        .get(demo.url("/v1/usage"))
        .bearer_auth(key)
        .send()
        .await
        .expect("usage");
    response.json().await.expect("json")
}

async fn in_flight(client: &reqwest::Client, demo: &Demo) -> u64 {
    usage(client, demo, "busy-key-1").await["in_flight"]
        .as_u64()
        .expect("in_flight is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_concurrency_limit_holds_across_instances() {
    let Some((_redis, demos)) = three_instances("concurrency_across_instances", "2000", &[]) else {
        return;
    };
    let client = reqwest::Client::new();
    // Three streams, one per instance, each holding its permit until its last chunk (5 s away).
    let mut held = Vec::new();
    for demo in &demos {
        let response = client
            .get(demo.url("/v1/stream?chunks=2&interval_ms=5000"))
            .bearer_auth("busy-key-1")
            .send()
            .await
            .expect("a streaming response");
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    assert_eq!(in_flight(&client, &demos[0]).await, 3);
    for demo in &demos {
        let fourth = client
            .get(demo.url("/v1/items"))
            .bearer_auth("busy-key-1")
            .send()
            .await
            .expect("a response");
        assert_eq!(fourth.status(), 429);
        let problem: serde_json::Value = fourth.json().await.expect("problem+json");
        assert_eq!(problem["limit"], "concurrency");
    }
    // One client hangs up: its instance releases the lease, and any instance admits again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight(&client, &demos[1]).await != 2 {
        assert!(
            Instant::now() < deadline,
            "the dropped stream's lease was never released"
        );
        tokio::task::yield_now().await;
    }
    let admitted = client
        .get(demos[1].url("/v1/items"))
        .bearer_auth("busy-key-1")
        .send()
        .await
        .expect("a response");
    assert_eq!(admitted.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopping_and_coming_back() {
    let Some((mut redis, demos)) = three_instances("redis_stopping_and_coming_back", "50", &[])
    else {
        return;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let admitted = client
        .get(demos[0].url("/v1/items"))
        .bearer_auth("acme-key-1")
        .send()
        .await
        .expect("a response");
    assert_eq!(admitted.status(), 200);
    assert_eq!(admitted.headers()["x-ratelimit-remaining"], "149");

    redis.stop();
    // on_store_error = "allow": every request is still answered, quickly, without rate-limit headers.
    for demo in &demos {
        let started = Instant::now();
        let response = client
            .get(demo.url("/v1/items"))
            .bearer_auth("acme-key-1")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-ratelimit-remaining").is_none());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request waited {:?}",
            started.elapsed()
        );
    }

    redis.restart().expect("redis starts again on its port");
    // Enforcement resumes by itself: the first answered decision comes back with headers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client
            .get(demos[2].url("/v1/items"))
            .bearer_auth("acme-key-1")
            .send()
            .await
            .expect("answered");
        if let Some(remaining) = response.headers().get("x-ratelimit-remaining") {
            // The restarted Redis kept nothing, so the month starts over from 150.
            assert_eq!(remaining, "149");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "enforcement did not resume after Redis came back"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_sends_every_call_to_redis_first() {
    let Some((_redis, mut demos)) = three_instances("a_graceful_stop_sends", "2000", &[]) else {
        return;
    };
    let client = reqwest::Client::new();
    let requests = (0..120).map(|_| {
        client
            .get(demos[0].url("/v1/items"))
            .bearer_auth("acme-key-1")
            .send()
    });
    // Post-response debits: 20 searches declared at 1 point that report 5 (4,000 rows), and 10
    // requests of at least 150 ms each, all settled after their responses.
    let searches = (0..20).map(|_| {
        client
            .get(demos[0].url("/v1/search?rows=4000"))
            .bearer_auth("meter-key-1")
            .send()
    });
    let slow = (0..10).map(|_| {
        client
            .get(demos[0].url("/v1/slow?ms=150"))
            .bearer_auth("meter-key-1")
            .send()
    });
    let (answers, searched, slept) =
        tokio::join!(join_all(requests), join_all(searches), join_all(slow));
    let admitted = answers
        .iter()
        .chain(&searched)
        .chain(&slept)
        .filter(|answer| answer.as_ref().is_ok_and(|r| r.status() == 200))
        .count();
    assert_eq!(admitted, 150);
    // Stopped the moment the last answer is in: its calls' records may still be queued.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &demos[0].pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(demos[0].wait().success(), "SIGTERM is a graceful stop");
    let calls = usage(&client, &demos[1], "acme-key-1").await;
    assert_eq!(calls["calls_today"], 120, "{calls}");
    assert_eq!(calls["billable_today"], 120, "{calls}");
    // Every debit made after a response before the stop is in Redis: the cost corrections to the
    // point, the latency at least what the handlers slept.
    let metered = usage(&client, &demos[1], "meter-key-1").await;
    let used = |limit: usize| metered["limits"][limit]["tiers"][0]["used"].as_i64();
    assert_eq!(used(0), Some(20 * 5 + 10), "{metered}");
    let latency = used(1).expect("a latency count");
    assert!((1_500..5_000).contains(&latency), "{metered}");
}
