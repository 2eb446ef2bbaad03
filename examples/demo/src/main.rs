//! tollhouse-demo: a small API behind the tollhouse layer, configured by a policy file.
//!
//! ```text
//! cargo run --release -p tollhouse-demo -- --config FILE --listen ADDR [--state DIR] [--redis URL] [--redis-timeout-ms MS]
//! tollhouse-demo --check --config FILE
//! ```
//!
//! With no flags it loads a `policy.toml` beside the binary if there is one, else the one shipped
//! beside this crate, and listens on 127.0.0.1:3000. A policy file that fails validation is refused before anything serves: the
//! loader's message (file, line, column, what to change) goes to stderr and the exit code is 1.
//! Once listening, it prints `tollhouse-demo listening on http://ADDR` on stdout; logs go to stderr
//! (`RUST_LOG` filters them). The policy file is read again on SIGHUP and when it changes; counts
//! already made are kept, and a file that fails validation is refused with its error logged while
//! the running policy stays.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use clap::Parser;
use futures_util::stream;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::MetricKindMask;
use serde::Deserialize;
use serde_json::json;
use tollhouse::durable::DurableStore;
use tollhouse::{DynStore, MemoryStore, Policy, RateLimitLayer, ReportCost};
use tollhouse_redis::ConnectError;
use tracing_subscriber::EnvFilter;

mod reload;
mod serve;

/// The policy file shipped with the demo, relative to the workspace root.
const SHIPPED_POLICY: &str = "examples/demo/policy.toml";

/// A small API behind tollhouse, configured by a policy file.
#[derive(Debug, Parser)]
#[command(name = "tollhouse-demo", version, about)]
struct Args {
    /// The policy file [default: the policy.toml shipped beside the demo]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The address to listen on, `HOST:PORT` (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: String,

    /// Keep the counts in Redis, shared with every instance using the same URL
    #[arg(long, value_name = "URL")]
    redis: Option<String>,

    /// Keep the counts, billing and call log in this directory across restarts (`none`: keep
    /// nothing) \[default: beside the policy file, `policy.toml` -> `policy.state/`\]
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,

    /// Keep the counts in a Redis Cluster: any of its nodes, comma-separated
    #[arg(long, value_name = "URL[,URL...]", conflicts_with = "redis")]
    redis_cluster: Option<String>,

    /// With --redis or --redis-cluster and rediss:// URLs: the CA certificate (PEM) that signs
    /// the servers' certificates
    #[arg(long, value_name = "FILE")]
    redis_ca: Option<PathBuf>,

    /// With --redis or --redis-cluster: quota grants, so that a hot org's requests are admitted
    /// from slices of its quota charged to Redis in advance, without a round trip each
    #[arg(long)]
    grants: bool,

    /// With --redis: how long one store call may take before `on_store_error` applies
    #[arg(long, value_name = "MS", default_value_t = 50)]
    redis_timeout_ms: u64,

    /// Validate the policy file and exit: 0 with a one-line summary, 1 with the error start-up gives
    #[arg(long)]
    check: bool,

    /// How long a client may take to send a request head (and an idle connection stays open)
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    header_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let path = args.config.clone().unwrap_or_else(shipped_policy);
    let policy = match Policy::from_toml_file(&path) {
        Ok(policy) => policy,
        Err(error) if args.check => {
            eprintln!("tollhouse-demo: {error}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("tollhouse-demo: refusing to start: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("{}: ok, {}", path.display(), summary(&policy));
        return ExitCode::SUCCESS;
    }

    if args.grants && redis_target(&args).is_none() {
        eprintln!(
            "tollhouse-demo: refusing to start: --grants takes quota from Redis in advance; give \
             --redis or --redis-cluster too"
        );
        return ExitCode::FAILURE;
    }

    // ---- The store: where the counts live. -------------------------------------------------
    let mut durable: Option<Arc<DurableStore>> = None;
    let mut redis: Option<tollhouse_redis::RedisStore> = None;
    let store: Arc<dyn DynStore> = match redis_target(&args) {
        Some(target) => match redis_store(&args, &policy, target).await {
            Ok(store) => {
                redis = Some(store.clone());
                Arc::new(store)
            }
            Err(code) => return code,
        },
        None => match state_dir(args.state.as_deref(), &path) {
            None => {
                tracing::warn!(
                    "tollhouse-demo: --state none: counts, billing and the call log are kept in \
                     memory only and start empty on every restart"
                );
                Arc::new(MemoryStore::with_calls_kept(policy.server().calls_kept))
            }
            Some(dir) => match DurableStore::builder()
                .calls_kept(policy.server().calls_kept)
                .open(&dir)
            {
                Ok(store) => {
                    tracing::info!(state = %dir.display(), "tollhouse-demo: keeping state");
                    let store = Arc::new(store);
                    durable = Some(Arc::clone(&store));
                    store
                }
                Err(error) => {
                    eprintln!("tollhouse-demo: refusing to start: {error}");
                    return ExitCode::FAILURE;
                }
            },
        },
    };

    // ---- Metrics: the layer and the store report through the `metrics` facade. -------------
    // Series not updated for 10 minutes are dropped: an org that has gone quiet leaves nothing.
    let metrics = match PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(600)))
        .install_recorder()
    {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("tollhouse-demo: cannot install the metrics recorder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    let limits = RateLimitLayer::new(policy).with_store(store);
    tokio::spawn(reload::watch(path.clone(), limits.clone()));
    let app = app(limits.clone())
        // ---- Usage and billing: never limited or billed, so outside the layer. ----
        .merge(tollhouse::usage::usage_router(Arc::new(limits)))
        // ---- Prometheus text format, outside the layer. ----
        .route(
            "/metrics",
            get(move || {
                std::future::ready((
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                ))
            }),
        );

    let listener = match tokio::net::TcpListener::bind(args.listen.as_str()).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tollhouse-demo: cannot listen on {}: {error}; give HOST:PORT, such as 127.0.0.1:3000",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address.to_string(),
        Err(_) => args.listen.clone(),
    };
    println!("tollhouse-demo listening on http://{address}");
    tracing::info!(policy = %path.display(), %address, "tollhouse-demo serving");
    let header_timeout = Duration::from_millis(args.header_timeout_ms.max(1));
    serve::serve(listener, app, header_timeout, shutdown()).await;
    // A graceful stop writes the state first: what Redis has not been sent yet, or the file.
    if let Some(store) = redis {
        store.flush().await;
    }
    if let Some(store) = durable
        && let Err(error) = store.shutdown().await
    {
        eprintln!("tollhouse-demo: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `url` with its password, if any, replaced by `***`: fit for a log line.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') || user.is_empty() {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Where the counts live when Redis keeps them.
enum RedisTarget<'a> {
    Server(&'a str),
    Cluster(Vec<&'a str>),
}

fn redis_target(args: &Args) -> Option<RedisTarget<'_>> {
    if let Some(nodes) = &args.redis_cluster {
        return Some(RedisTarget::Cluster(
            nodes
                .split(',')
                .map(str::trim)
                .filter(|node| !node.is_empty())
                .collect(),
        ));
    }
    args.redis.as_deref().map(RedisTarget::Server)
}

/// The Redis store: connected now, or, when Redis is only down (an outage to ride out, not a
/// mistake), one that connects when it answers. A mistake (a bad URL, wrong credentials, an
/// untrusted certificate, a cluster where a server was said or the other way round) stops the
/// start with its cause.
async fn redis_store(
    args: &Args,
    policy: &Policy,
    target: RedisTarget<'_>,
) -> Result<tollhouse_redis::RedisStore, ExitCode> {
    let refuse = |what: &str, error: &dyn std::fmt::Display| {
        eprintln!("tollhouse-demo: cannot use Redis at {what}: {error}");
        ExitCode::FAILURE
    };
    let mut builder = tollhouse_redis::RedisStore::builder()
        .calls_kept(policy.server().calls_kept)
        .timeout(Duration::from_millis(args.redis_timeout_ms));
    if args.grants {
        builder = builder.grants(tollhouse_redis::Grants::new());
    }
    if let Some(ca) = &args.redis_ca {
        builder = builder
            .ca_file(ca)
            .map_err(|error| refuse("--redis-ca", &error))?;
    }
    let what = match &target {
        RedisTarget::Server(url) => redacted(url),
        RedisTarget::Cluster(nodes) => nodes
            .iter()
            .map(|node| redacted(node))
            .collect::<Vec<_>>()
            .join(","),
    };
    let (connected, lazy) = match &target {
        RedisTarget::Server(url) => (
            builder.clone().connect(url).await,
            builder.connect_lazy(url),
        ),
        RedisTarget::Cluster(nodes) => (
            builder.clone().cluster(nodes.iter()).await,
            builder.cluster_lazy(nodes.iter()),
        ),
    };
    match connected {
        Ok(store) => Ok(store),
        Err(error @ (ConnectError::Timeout(_) | ConnectError::Refused(_))) => {
            let lazy = lazy.map_err(|error| refuse(&what, &error))?;
            tracing::warn!(
                redis = %what,
                error = &error as &dyn std::error::Error,
                "tollhouse-demo: Redis does not answer yet; serving anyway, with requests \
                 following on_store_error until it does"
            );
            Ok(lazy)
        }
        Err(error) => Err(refuse(&what, &error)),
    }
}

/// The state directory `--state` names (`none`: none), by default one beside `policy`, named
/// after it (`policy.toml` -> `policy.state`).
fn state_dir(state: Option<&Path>, policy: &Path) -> Option<PathBuf> {
    match state {
        Some(dir) if dir == Path::new("none") => None,
        Some(dir) => Some(dir.to_owned()),
        None => Some(policy.with_extension("state")),
    }
}

/// What a policy holds, in one line: `3 plans, 4 orgs, 7 keys, 3 routes`.
fn summary(policy: &Policy) -> String {
    let keys: usize = policy
        .org_definitions()
        .iter()
        .map(|org| org.keys().len())
        .sum();
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    [
        count(policy.plans().len(), "plan", "plans"),
        count(policy.org_definitions().len(), "org", "orgs"),
        count(keys, "key", "keys"),
        count(policy.routes().len(), "route", "routes"),
    ]
    .join(", ")
}

/// The policy file shipped beside the demo: a `policy.toml` next to the binary (a copy installed
/// with it), else the crate's own, from the workspace root or from wherever the crate was built.
fn shipped_policy() -> PathBuf {
    let beside_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("policy.toml")));
    if let Some(path) = beside_binary.filter(|path| path.is_file()) {
        return path;
    }
    let relative = Path::new(SHIPPED_POLICY);
    if relative.is_file() {
        return relative.to_owned();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml")
}

/// Resolves on SIGINT or SIGTERM (what a service manager or a deploy sends).
async fn shutdown() {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The demo's routes: every `/v1` route behind the layer, `/healthz` outside it.
fn app(limits: RateLimitLayer) -> Router {
    Router::new()
        .route("/v1/items", get(list_items).post(create_item))
        .route("/v1/reports", get(report))
        .route("/v1/slow", get(slow))
        .route("/v1/stream", get(stream_chunks))
        .route("/v1/search", get(search))
        .route("/v1/files/{id}", get(file))
        .route("/v1/connectors/{name}", post(connector))
        .route_layer(limits)
        .route("/healthz", get(|| async { "ok" }))
}

async fn list_items() -> Json<serde_json::Value> {
    Json(json!([
        { "id": 1, "name": "alpha" },
        { "id": 2, "name": "beta" },
        { "id": 3, "name": "gamma" },
    ]))
}

async fn create_item() -> impl IntoResponse {
    (StatusCode::CREATED, Json(json!({ "id": 4, "name": "new" })))
}

async fn report() -> Json<serde_json::Value> {
    Json(json!({
        "report": "monthly",
        "rows": 1200,
        "totals": { "calls": 52_113, "errors": 17 },
    }))
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

/// Waits `ms` milliseconds (at most 10,000), then answers.
async fn slow(Query(query): Query<SlowQuery>) -> Json<serde_json::Value> {
    let ms = query.ms.unwrap_or(1_000).min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "slept_ms": ms }))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    chunks: Option<u32>,
    interval_ms: Option<u64>,
}

/// Streams `chunks` lines (at most 1,000), `interval_ms` apart (at most 10,000 ms).
async fn stream_chunks(Query(query): Query<StreamQuery>) -> impl IntoResponse {
    let chunks = query.chunks.unwrap_or(5).min(1_000);
    let interval = Duration::from_millis(query.interval_ms.unwrap_or(200).min(10_000));
    let lines = stream::unfold(0u32, move |sent| async move {
        if sent >= chunks {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(interval).await;
        }
        let line = Bytes::from(format!("chunk {} of {chunks}\n", sent + 1));
        Some((Ok::<_, std::io::Error>(line), sent + 1))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(lines),
    )
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    rows: Option<u64>,
}

/// Searches `rows` rows, then reports the real cost: 1 point per started 1,000 rows beyond the
/// first, 1 + rows/1000, at most 10.
async fn search(cost: ReportCost, Query(query): Query<SearchQuery>) -> Json<serde_json::Value> {
    let rows = query.rows.unwrap_or(0);
    let points = (1 + rows / 1_000).min(10);
    cost.set(points);
    Json(json!({ "rows": rows, "cost": points }))
}

/// Streams a file's bytes: 64 KiB in 8 KiB chunks.
async fn file(UrlPath(id): UrlPath<String>) -> impl IntoResponse {
    const CHUNK: usize = 8 * 1024;
    const CHUNKS: usize = 8;
    let seed = id.bytes().fold(0u8, u8::wrapping_add);
    let chunks = stream::iter((0..CHUNKS).map(move |index| {
        let byte = seed.wrapping_add(index as u8);
        Ok::<_, std::io::Error>(Bytes::from(vec![byte; CHUNK]))
    }));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, attachment(&id)),
        ],
        Body::from_stream(chunks),
    )
}

/// `Content-Disposition` for a download named after `id`: only safe characters in the quoted
/// name (a quote, a backslash or a line break in the id cannot end the header's value or add
/// one), and the whole id, percent-encoded, in `filename*` (RFC 6266).
fn attachment(id: &str) -> String {
    let plain: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(id.len() * 3);
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{plain}.bin\"; filename*=UTF-8''{encoded}.bin")
}

async fn connector(UrlPath(name): UrlPath<String>) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "connector": name, "status": "accepted" })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_password_never_reaches_a_log_line() {
        assert_eq!(
            redacted("rediss://app:s3cret@redis.example:6380/0"),
            "rediss://app:***@redis.example:6380/0"
        );
        assert_eq!(
            redacted("redis://:s3cret@127.0.0.1:6379/"),
            "redis://:***@127.0.0.1:6379/"
        );
        assert_eq!(
            redacted("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(redacted("redis://app@host/"), "redis://app@host/");
    }

    #[test]
    fn a_download_name_cannot_break_its_header() {
        let value = attachment("a\"; x=\r\nSet-Cookie: y");
        assert!(axum::http::HeaderValue::from_str(&value).is_ok());
        assert!(!value.contains('\r') && !value.contains('\n'));
        assert_eq!(value.matches('"').count(), 2, "{value}");
        assert_eq!(
            attachment("7"),
            "attachment; filename=\"7.bin\"; filename*=UTF-8''7.bin"
        );
    }
}
