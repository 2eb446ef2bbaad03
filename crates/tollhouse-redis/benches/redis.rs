//! Admissions per second through `RedisStore` on loopback, with many admissions in flight on the
//! one multiplexed connection.
//!
//! Each admission is one `EVALSHA` of `src/admit.lua` for a plan of 2 limits and 3 tiers (`points`:
//! minute + hour; `daily`: day), all admitted (the capacities are huge). `benches/compare.sh`
//! runs this bench and `redis-benchmark` with the same `EVALSHA` on the same Redis, in one run,
//! and prints both rates.
//!
//! Redis comes from `TOLLHOUSE_REDIS_URL`, else a `redis-server` started on a free port; with
//! neither the bench prints `SKIP:` and measures nothing.
//!
//! ```text
//! cargo bench -p tollhouse-redis --bench redis -- --warm-up-time 2 --measurement-time 5
//! crates/tollhouse-redis/benches/compare.sh
//! ```

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollhouse_core::{Charge, Policy, ResolvedOrg, Store, Timestamp};
use tollhouse_redis::RedisStore;

/// 2026-03-10T12:00:30Z: the instant `compare.sh` computes its keys and arguments for.
const NOW_MS: i64 = 1_773_144_030_000;

/// Admissions in flight at once.
const IN_FLIGHT: usize = 64;

fn plan(concurrency: &str) -> String {
    format!(
        r#"
[plans.bench]
{concurrency}

[[plans.bench.limits]]
name = "points"
dimension = "points"
tiers = [{{ window = "minute", capacity = 1000000000000 }}, {{ window = "hour", capacity = 1000000000000 }}]

[[plans.bench.limits]]
name = "daily"
dimension = "requests"
tiers = [{{ window = "day", capacity = 1000000000000 }}]

[[orgs]]
id = "acme"
plan = "bench"
time_zone = "UTC"
"#
    )
}

fn org(concurrency: &str) -> Arc<ResolvedOrg> {
    let policy = Policy::from_toml_str(&plan(concurrency), "bench.toml".as_ref()).expect("policy");
    Arc::clone(policy.org("acme").expect("acme"))
}

/// A redis-server of the bench's own, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_url() -> Option<(String, Option<Server>)> {
    if let Ok(url) = std::env::var("TOLLHOUSE_REDIS_URL") {
        return Some((url, None));
    }
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((format!("redis://127.0.0.1:{port}/"), Some(server)))
}

fn admissions(c: &mut Criterion) {
    let Some((url, _server)) = redis_url() else {
        eprintln!("SKIP: no TOLLHOUSE_REDIS_URL and no redis-server on PATH; nothing measured");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = runtime
        .block_on(
            RedisStore::builder()
                .prefix("bench:")
                .timeout(Duration::from_secs(5))
                .connect(&url),
        )
        .expect("connect to Redis");
    let store = Arc::new(store);
    let now = Timestamp::from_millis(NOW_MS);
    let mut group = c.benchmark_group("redis_store");
    group.throughput(Throughput::Elements(1));
    for (name, concurrency) in [("admit", ""), ("admit_with_lease", "concurrency = 1000000")] {
        let org = org(concurrency);
        group.bench_function(BenchmarkId::new(name, IN_FLIGHT), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let store = Arc::clone(&store);
                let org = Arc::clone(&org);
                async move {
                    let started = Instant::now();
                    let mut tasks = tokio::task::JoinSet::new();
                    let per_task = iters.div_ceil(IN_FLIGHT as u64);
                    let mut left = iters;
                    for _ in 0..IN_FLIGHT {
                        let n = per_task.min(left);
                        left -= n;
                        let store = Arc::clone(&store);
                        let org = Arc::clone(&org);
                        tasks.spawn(async move {
                            for _ in 0..n {
                                let decision = store
                                    .admit(&org, Charge::points(3), now)
                                    .await
                                    .expect("Redis answers");
                                assert!(decision.is_admitted());
                                // The lease is released in the background when the permit drops.
                                drop(decision);
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                    started.elapsed()
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, admissions);
criterion_main!(benches);
