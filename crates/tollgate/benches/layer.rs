//! Per-request overhead of the full layer against the same router bare and behind tower_governor.
//!
//! Every request goes through `tower::ServiceExt::oneshot` on an axum `Router` (no sockets) and its
//! body is read to the end, so the layer's settle step (latency, usage record, permit release) is
//! measured too. The tollgate case runs the complete path: bearer-key identification (SHA-256),
//! route classification, an all-or-nothing admission against 3 limits plus a concurrency permit
//! in the `MemoryStore`, both header families, the usage record and the settlement. tower_governor
//! runs with its headers on (`use_headers`) and a per-key extractor on the same bearer header.
//!
//! ```text
//! cargo bench -p tollgate --bench layer -- --warm-up-time 1 --measurement-time 3
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use http_body_util::BodyExt;
use tollgate::{DynStore, ManualClock, MemoryStore, Policy, RateLimitLayer, Timestamp};
use tower::ServiceExt;
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

/// A plan with 3 limits (points, a daily request quota, a latency budget) and concurrency.
const POLICY: &str = r#"
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

fn router() -> Router {
    Router::new()
        .route("/v1/items", get(|| async { "[]" }))
        .route("/v1/reports", get(|| async { "report" }))
}

fn request() -> Request<Body> {
    Request::get("/v1/items")
        .header("authorization", "Bearer acme-key-1")
        .body(Body::empty())
        .expect("a valid request")
}

/// tower_governor keyed by the bearer header, like tollgate's per-org limits.
#[derive(Clone, Copy, Debug)]
struct BearerKey;

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

async fn drive(app: Router) {
    let response = app.oneshot(request()).await.expect("infallible");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.expect("the body");
    std::hint::black_box(body);
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    let bare = router();

    let policy = Policy::from_toml_str(POLICY, "bench.toml".as_ref()).expect("the bench policy");
    let clock = ManualClock::new(Timestamp::from_secs(1_768_471_230));
    let limits = RateLimitLayer::new(policy)
        .with_store(Arc::new(MemoryStore::new()) as Arc<dyn DynStore>)
        .with_clock(clock);
    let metered = router().layer(limits);

    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(BearerKey)
        .use_headers()
        .finish()
        .expect("a governor config");
    let governed = router().layer(tower_governor::GovernorLayer::new(config));

    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));
    for (name, app) in [
        ("bare", bare),
        ("tollgate", metered),
        ("tower_governor", governed),
    ] {
        group.bench_with_input(BenchmarkId::new("oneshot", name), &app, |b, app| {
            b.to_async(&runtime).iter(|| drive(app.clone()));
        });
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
