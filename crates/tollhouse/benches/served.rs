//! The layer benchmark's routers served over HTTP/1.1 on loopback and loaded with `wrk`, in one run.
//!
//! The same routers as the `layer` and `instructions` benchmarks (`benches/common`): bare,
//! tollhouse's full path, tower_governor with its headers, tollhouse on an exempt route, tollhouse
//! with a plan like tower_governor's, and the bare router writing tollhouse's five header lines.
//! Each is served by `axum::serve` on its own port, in one tokio runtime with two worker threads
//! (`SERVER_THREADS`), and loaded in turn with `wrk --latency` (wrk and the server share the
//! machine's cores), the rounds interleaved so that a slow spell of the machine hits every router
//! alike. For every router it prints requests per second, p50 and p99 of each round,
//! and the machine time per request beyond the bare router's (cores ÷ requests per second: wrk's
//! share, such as parsing the extra headers, is in it).
//!
//! ```text
//! cargo bench -p tollhouse --bench served     # DURATION=8s CONNECTIONS=32 ROUNDS=2
//! ROUTERS=bare,tollhouse SERVER_THREADS=1 cargo bench -p tollhouse --bench served
//! ```
//!
//! Without `wrk` on the `PATH` it says so and measures nothing.

mod common;

use std::net::SocketAddr;
use std::process::Command;

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("served: SKIP, wrk is not installed (apt-get install wrk)");
        return;
    }
    let duration = std::env::var("DURATION").unwrap_or_else(|_| "8s".to_owned());
    let connections = std::env::var("CONNECTIONS").unwrap_or_else(|_| "32".to_owned());
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(2);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);

    let threads: usize = std::env::var("SERVER_THREADS")
        .ok()
        .and_then(|threads| threads.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime");
    let only = std::env::var("ROUTERS").ok();
    let servers: Vec<(&str, SocketAddr)> = common::NAMES
        .into_iter()
        .filter(|name| {
            only.as_deref()
                .is_none_or(|only| only.split(',').any(|n| n == *name))
        })
        .map(|name| (name, runtime.block_on(serve(name))))
        .collect();

    println!(
        "served: {cores} cores, {threads} server threads, wrk -t2 -c{connections} -d{duration}, GET /v1/items"
    );
    let mut results: Vec<Vec<Load>> = vec![Vec::new(); servers.len()];
    for _ in 0..rounds {
        for ((_, address), results) in servers.iter().zip(&mut results) {
            if let Some(load) = wrk(*address, &duration, &connections) {
                results.push(load);
            }
        }
    }
    let best = |loads: &[Load]| loads.iter().map(|load| load.per_second).fold(0.0, f64::max);
    let bare = servers
        .iter()
        .position(|(name, _)| *name == "bare")
        .map_or(0.0, |at| best(&results[at]));
    for ((name, _), loads) in servers.iter().zip(&results) {
        let rounds: Vec<String> = loads
            .iter()
            .map(|load| format!("{:.0}/s p50 {} p99 {}", load.per_second, load.p50, load.p99))
            .collect();
        let extra = if bare > 0.0 && best(loads) > 0.0 {
            format!(
                "{:+.2} µs",
                (cores as f64 / best(loads) - cores as f64 / bare) * 1e6
            )
        } else {
            "?".to_owned()
        };
        println!(
            "{name:>22}: {extra:>10} per request | {}",
            rounds.join(" | ")
        );
    }
}

/// Serves the router called `name` on a free loopback port.
async fn serve(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("a bound address");
    eprintln!("served: {name} on http://{address}");
    let app = common::router_named(name);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("served: {name} stopped: {error}");
        }
    });
    address
}

/// One wrk run's throughput and latency percentiles.
#[derive(Clone, Debug)]
struct Load {
    per_second: f64,
    p50: String,
    p99: String,
}

fn wrk(address: SocketAddr, duration: &str, connections: &str) -> Option<Load> {
    let output = Command::new("wrk")
        .args(["-t2", "-c", connections, "-d", duration, "--latency"])
        .args(["-H", "Authorization: Bearer acme-key-1"])
        .arg(format!("http://{address}/v1/items"))
        .output()
        .ok()?;
    let report = String::from_utf8_lossy(&output.stdout);
    if report.contains("Non-2xx") {
        eprintln!("served: {address} answered errors:\n{report}");
        return None;
    }
    let field = |prefix: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
            .map(str::to_owned)
    };
    Some(Load {
        per_second: field("Requests/sec:")?.parse().ok()?,
        p50: field("50%")?,
        p99: field("99%")?,
    })
}
