//! The router, policy and requests both layer benchmarks measure, so that they measure the same.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use tollhouse::{DynStore, ManualClock, MemoryStore, Policy, RateLimitLayer, Timestamp};
use tower::ServiceExt;
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

/// A plan with 3 limits (points, a daily request quota, a latency budget) and concurrency.
pub(crate) const POLICY: &str = r#"
[server]
legacy_headers = true
ietf_headers = true

[plans.bench]
concurrency = 64

[[plans.bench.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 1000000000000 }]

[[plans.bench.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 1000000000000 }]

[[plans.bench.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{ window = "minute", capacity = 1000000000000 }]

[[orgs]]
id = "acme"
plan = "bench"
keys = ["acme-key-1"]

[[routes]]
match = "GET /v1/reports"
cost = 10
"#;

pub(crate) fn router() -> Router {
    Router::new()
        .route("/v1/items", get(|| async { "[]" }))
        .route("/v1/reports", get(|| async { "report" }))
}

#[allow(dead_code, reason = "the served benchmark sends its requests with wrk")]
pub(crate) fn request() -> Request<Body> {
    Request::get("/v1/items")
        .header("authorization", "Bearer acme-key-1")
        .body(Body::empty())
        .expect("a valid request")
}

/// tower_governor keyed by the bearer header, like tollhouse's per-org limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BearerKey;

impl KeyExtractor for BearerKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, GovernorError> {
        req.headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

#[allow(dead_code, reason = "the served benchmark sends its requests with wrk")]
pub(crate) async fn drive(app: Router) {
    let response = app.oneshot(request()).await.expect("infallible");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.expect("the body");
    std::hint::black_box(body);
}

/// The router behind tollhouse with the bench policy (`policy` edited by `edit`).
pub(crate) fn metered(edit: impl Fn(&str) -> String) -> Router {
    let policy =
        Policy::from_toml_str(&edit(POLICY), "bench.toml".as_ref()).expect("the bench policy");
    let clock = ManualClock::new(Timestamp::from_secs(1_768_471_230));
    let limits = RateLimitLayer::new(policy)
        .with_store(Arc::new(MemoryStore::new()) as Arc<dyn DynStore>)
        .with_clock(clock);
    router().layer(limits)
}

/// The router behind tower_governor, keyed by the bearer header, with its headers on.
pub(crate) fn governed() -> Router {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(BearerKey)
        .use_headers()
        .finish()
        .expect("a governor config");
    router().layer(tower_governor::GovernorLayer::new(config))
}

/// tower_governor at one request a microsecond with a burst of `u32::MAX`, keyed by the bearer
/// header, with its headers on: the peer of [`RATE_LIKE_GOVERNOR`].
pub(crate) fn governed_per_microsecond() -> Router {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1_000)
        .burst_size(u32::MAX)
        .key_extractor(BearerKey)
        .use_headers()
        .finish()
        .expect("a governor config");
    router().layer(tower_governor::GovernorLayer::new(config))
}

/// One smooth rate, the same as [`governed_per_microsecond`]'s (a million a second, a burst of
/// `u32::MAX`), with the `X-RateLimit-*` headers only and no concurrency limit.
pub(crate) const RATE_LIKE_GOVERNOR: &str = r#"
[server]
legacy_headers = true
ietf_headers = false

[[plans.bench.limits]]
name = "rate"
dimension = "requests"
rate = { amount = 1000000, per = "second", burst = 4294967295 }

[[orgs]]
id = "acme"
plan = "bench"
keys = ["acme-key-1"]
"#;

/// A plan doing what the tower_governor router does: one limit, the `X-RateLimit-*` headers only,
/// no concurrency limit (identity, the `Metered` extension and the usage record remain).
pub(crate) const LIKE_GOVERNOR: &str = r#"
[server]
legacy_headers = true
ietf_headers = false

[[plans.bench.limits]]
name = "requests"
dimension = "requests"
tiers = [{ window = "minute", capacity = 1000000000000 }]

[[orgs]]
id = "acme"
plan = "bench"
keys = ["acme-key-1"]
"#;

/// The five rate-limit header lines the tollhouse router sends, with values of the same length,
/// built at compile time: what writing them costs a router that computes nothing.
static HEADER_LINES: [(HeaderName, HeaderValue); 5] = [
    (
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from_static("1000000000000"),
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from_static("999999999999"),
    ),
    (
        HeaderName::from_static("x-ratelimit-reset"),
        HeaderValue::from_static("1768471260"),
    ),
    (
        HeaderName::from_static("ratelimit-policy"),
        HeaderValue::from_static(
            r#""points";q=1000000000000;w=60, "daily";q=1000000000000;w=86400, "latency";q=1000000000000;w=60, "concurrency";q=64;qu="concurrent-requests""#,
        ),
    ),
    (
        HeaderName::from_static("ratelimit"),
        HeaderValue::from_static(
            r#""points";r=999999999999;t=30, "daily";r=999999999999;t=50430, "latency";r=1000000000000;t=30, "concurrency";r=63;t=0"#,
        ),
    ),
];

/// The bare router with [`HEADER_LINES`] added to every response, as a layer adds headers.
fn with_header_lines() -> Router {
    router().layer(tower::util::MapResponseLayer::new(
        |mut response: axum::response::Response| {
            let headers = response.headers_mut();
            headers.reserve(HEADER_LINES.len() + 1);
            for (name, value) in &HEADER_LINES {
                headers.insert(name.clone(), value.clone());
            }
            response
        },
    ))
}

/// The routers compared: bare, tollhouse (the full path), tower_governor, tollhouse on a route
/// exempt from limits (identification, the usage record and the settlement only), and tollhouse
/// with a plan like the tower_governor router's ([`LIKE_GOVERNOR`]), and the bare router sending
/// the tollhouse router's five header lines as constants ([`HEADER_LINES`]); then one smooth rate
/// through each: tower_governor at one a microsecond, tollhouse with the same rate and burst
/// ([`RATE_LIKE_GOVERNOR`]).
pub(crate) const NAMES: [&str; 8] = [
    "bare",
    "tollhouse",
    "tower_governor",
    "tollhouse_exempt",
    "tollhouse_like_governor",
    "bare_with_headers",
    "tower_governor_1_per_us",
    "tollhouse_rate_like_governor",
];

/// The router called `name` (one of [`NAMES`]), prepared as `axum::serve` prepares a router for a
/// connection (`with_state(())` turns every handler into a route with its layers applied once),
/// so that a request measures serving, not re-applying the layers.
pub(crate) fn router_named(name: &str) -> Router {
    let router = match name {
        "bare" => router(),
        "tollhouse" => metered(str::to_owned),
        "tower_governor" => governed(),
        "tollhouse_exempt" => metered(|policy| {
            format!("{policy}\n[[routes]]\nmatch = \"GET /v1/items\"\nexempt = true\n")
        }),
        "tollhouse_like_governor" => metered(|_| LIKE_GOVERNOR.to_owned()),
        "bare_with_headers" => with_header_lines(),
        "tower_governor_1_per_us" => governed_per_microsecond(),
        "tollhouse_rate_like_governor" => metered(|_| RATE_LIKE_GOVERNOR.to_owned()),
        other => panic!("no router called {other:?} in the benchmark"),
    };
    router.with_state(())
}

/// Every router of [`NAMES`], by name.
#[allow(
    dead_code,
    reason = "the timed benchmark uses it, the instruction count and the served one do not"
)]
pub(crate) fn routers() -> Vec<(&'static str, Router)> {
    NAMES
        .into_iter()
        .map(|name| (name, router_named(name)))
        .collect()
}
