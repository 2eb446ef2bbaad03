//! A load test against the demo, on the memory store and on Redis: thousands of orgs, mixed costs,
//! exempt and streaming routes, a concurrency limit, day windows, and demand of twice the
//! capacity. At the end every org's points limit has admitted exactly its capacity, no more and
//! no less, and exactly what the clients saw admitted; it prints throughput and latency
//! percentiles.
//!
//! All along, a hostile tenant (`mallory`) sends long paths with a new query every time,
//! invented methods, a flood of requests past its quota and usage reads, at a fixed rate: the
//! other orgs are still served and limited exactly.
//!
//! Bounded in count and time, loopback only. `LOAD_ORGS` (default 200), `LOAD_CONNECTIONS`
//! (default 32) and `LOAD_HOSTILE_PER_SECOND` (default 200; 0 for a quiet run) size it; the CI run
//! is the default. For the numbers in BENCHMARKS.md, a quiet run and a hostile one:
//!
//! ```text
//! LOAD_ORGS=3000 LOAD_HOSTILE_PER_SECOND=0 cargo test --release -p tollhouse-demo --test load -- --nocapture
//! LOAD_ORGS=3000 cargo test --release -p tollhouse-demo --test load -- --nocapture
//! ```

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Demo, temp_policy};
use futures_util::stream::{self, StreamExt};
use tollhouse_tests::redis_server::redis_for;

/// Points each org may spend in a day: its binding limit.
const POINTS: u64 = 50;
/// Metered requests each org sends: with the costs below, at least twice its points.
const REQUESTS: usize = 30;
/// Requests each org may have in flight.
const CONCURRENCY: u64 = 2;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A policy of `orgs` orgs, each with its key `key-<n>-load`.
fn policy(orgs: usize) -> String {
    let mut text = format!(
        r#"
[server]
on_store_error = "deny"

[plans.load]
concurrency = {CONCURRENCY}

[[plans.load.limits]]
name = "points"
dimension = "points"
zone = "UTC"
tiers = [{{ window = "day", capacity = {POINTS} }}]

[[plans.load.limits]]
name = "daily"
dimension = "requests"
zone = "UTC"
tiers = [{{ window = "day", capacity = 100000 }}]

[[routes]]
match = "GET /v1/reports"
cost = 10

[[routes]]
match = "GET /v1/files/{{id}}"
exempt = true
"#
    );
    for n in 0..orgs {
        text.push_str(&format!(
            "\n[[orgs]]\nid = \"org-{n}\"\nplan = \"load\"\nkeys = [\"key-{n}-load\"]\n"
        ));
    }
    text.push_str("\n[[orgs]]\nid = \"mallory\"\nplan = \"load\"\nkeys = [\"mallory-key-1\"]\n");
    text
}

/// The hostile tenant: `per_second` requests a second until `done`, each a long path with a new
/// query, an invented method, or a read of its usage.
async fn hostile(base: String, per_second: usize, done: tokio::sync::watch::Receiver<bool>) -> u64 {
    if per_second == 0 {
        return 0;
    }
    let client = reqwest::Client::new();
    let mut tick =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(per_second).unwrap_or(1));
    let pad = "p".repeat(8_000);
    let mut sent = 0u64;
    while !*done.borrow() {
        tick.tick().await;
        let request = match sent % 4 {
            0 => client.get(format!("{base}/v1/items/{sent}?q={pad}&n={sent}")),
            1 => client.request(
                reqwest::Method::from_bytes(b"BREW").expect("a token"),
                format!("{base}/v1/items?n={sent}"),
            ),
            2 => client.get(format!("{base}/v1/usage/report")),
            _ => client.get(format!("{base}/v1/reports?n={sent}")),
        };
        if let Ok(response) = request.bearer_auth("mallory-key-1").send().await {
            let _ = response.bytes().await;
        }
        sent += 1;
    }
    sent
}

/// The route of an org's `i`th request: reports (10 points), items and short streams (1 point),
/// and an exempt download now and then; the last third are 1-point items, so that whatever the
/// order the points are spent to the last one.
fn route(i: usize) -> (&'static str, u64) {
    if i >= REQUESTS * 2 / 3 {
        return ("/v1/items", 1);
    }
    match i % 4 {
        0 => ("/v1/reports", 10),
        1 => ("/v1/stream?chunks=2&interval_ms=1", 1),
        2 => ("/v1/files/7", 0),
        _ => ("/v1/items", 1),
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    admitted_points: Vec<AtomicU64>,
    requests: AtomicU64,
    store_errors: AtomicU64,
    latencies_us: Latencies,
}

/// Every request's latency, in microseconds.
#[derive(Debug, Default)]
struct Latencies(Mutex<Vec<u64>>);

impl Latencies {
    fn push(&self, micros: u64) {
        self.0.lock().expect("latencies").push(micros);
    }

    /// The median, 90th and 99th percentiles and the maximum.
    fn percentiles(&self) -> [u64; 4] {
        let mut all = self.0.lock().expect("latencies").clone();
        all.sort_unstable();
        let at = |q: f64| {
            let index = ((all.len().saturating_sub(1)) as f64 * q).round() as usize;
            all.get(index).copied().unwrap_or(0)
        };
        [at(0.5), at(0.9), at(0.99), all.last().copied().unwrap_or(0)]
    }
}

/// Sends one request, again while the org is busy (429 for concurrency) or the store failed
/// (503): those are not answers about the quota.
async fn send(client: &reqwest::Client, base: &str, org: usize, i: usize, tally: &Tally) {
    let (path, cost) = route(i);
    loop {
        let started = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(format!("key-{org}-load"))
            .send()
            .await
            .expect("the demo answers");
        let status = response.status().as_u16();
        let limit = if status == 429 {
            response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|body| body["limit"].as_str().map(str::to_owned))
        } else {
            let _ = response.bytes().await;
            None
        };
        tally
            .latencies_us
            .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        tally.requests.fetch_add(1, Ordering::Relaxed);
        match (status, limit.as_deref()) {
            (200, _) => {
                tally.admitted_points[org].fetch_add(cost, Ordering::Relaxed);
                return;
            }
            (429, Some("concurrency")) => tokio::task::yield_now().await,
            (503, _) => {
                tally.store_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (429, _) => return,
            (other, _) => panic!("unexpected status {other} for {path}"),
        }
    }
}

/// Every org's requests, `connections` at a time, three at once per org (one more than its
/// concurrency limit).
async fn run(demo: &Demo, orgs: usize, connections: usize, store: &str) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("a client");
    let tally = Arc::new(Tally {
        admitted_points: (0..orgs).map(|_| AtomicU64::new(0)).collect(),
        ..Tally::default()
    });
    let (stop, done) = tokio::sync::watch::channel(false);
    let attacker = tokio::spawn(hostile(
        demo.base.clone(),
        env("LOAD_HOSTILE_PER_SECOND", 200),
        done,
    ));
    let started = Instant::now();
    let work: Vec<(usize, Vec<usize>)> = (0..orgs)
        .map(|org| (org, (0..REQUESTS).collect()))
        .collect();
    stream::iter(work.into_iter().flat_map(|(org, requests)| {
        // Three streams per org: requests 0, 3, 6, ...; 1, 4, 7, ...; 2, 5, 8, ...
        (0..3).map(move |lane| {
            (
                org,
                requests
                    .iter()
                    .copied()
                    .filter(|i| i % 3 == lane)
                    .collect::<Vec<_>>(),
            )
        })
    }))
    .for_each_concurrent(connections, |(org, lane)| {
        let (client, tally, base) = (client.clone(), Arc::clone(&tally), demo.base.clone());
        async move {
            for i in lane {
                send(&client, &base, org, i, &tally).await;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let hostile = attacker.await.expect("the hostile tenant");
    let requests = tally.requests.load(Ordering::Relaxed);
    let [p50, p90, p99, max] = tally.latencies_us.percentiles();
    println!(
        "{store}: {orgs} orgs, {requests} requests in {:.2} s: {:.0} req/s; latency p50 {p50} us, \
         p90 {p90} us, p99 {p99} us, max {max} us; {} store errors (retried); {hostile} hostile \
         requests beside them",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        tally.store_errors.load(Ordering::Relaxed),
    );
    // Exact: each org's points limit used to its capacity, and by what the clients saw admitted.
    for org in 0..orgs {
        let seen = tally.admitted_points[org].load(Ordering::Relaxed);
        let usage: serde_json::Value = client
            .get(format!("{}/v1/usage", demo.base))
            .bearer_auth(format!("key-{org}-load"))
            .send()
            .await
            .expect("the demo answers")
            .json()
            .await
            .expect("usage JSON");
        let used = usage["limits"][0]["tiers"][0]["used"].as_u64();
        assert_eq!(
            seen, POINTS,
            "{store}: org-{org} was admitted {seen} points"
        );
        assert_eq!(used, Some(POINTS), "{store}: org-{org}'s counts: {usage}");
        assert_eq!(
            usage["in_flight"], 0,
            "{store}: org-{org} left requests in flight"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_org_gets_exactly_its_capacity_under_load_on_memory() {
    let orgs = env("LOAD_ORGS", 200);
    let path = temp_policy("load-memory.toml", &policy(orgs));
    let demo = Demo::start(&[
        "--config",
        path.to_str().expect("UTF-8 path"),
        "--state",
        "none",
    ]);
    run(&demo, orgs, env("LOAD_CONNECTIONS", 32), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_org_gets_exactly_its_capacity_under_load_on_redis() {
    let Some(redis) = redis_for("load_on_redis") else {
        return;
    };
    // A fresh key prefix (the demo's default) per run would need a flag; a fresh database does.
    let orgs = env("LOAD_ORGS", 200);
    let path = temp_policy("load-redis.toml", &policy(orgs));
    let url = format!("{}/{}", redis.url().trim_end_matches('/'), 9);
    let mut flush = redis::Client::open(url.as_str())
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut flush)
        .await
        .expect("FLUSHDB");
    let demo = Demo::start(&[
        "--config",
        path.to_str().expect("UTF-8 path"),
        "--redis",
        &url,
        "--redis-timeout-ms",
        "1000",
    ]);
    run(&demo, orgs, env("LOAD_CONNECTIONS", 32), "redis").await;
}
