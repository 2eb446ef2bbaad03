//! Latency is measured on the clock's monotonic reading: a wall clock stepped while a request is
//! in flight charges nothing for the step, and one request counts for at most `max_latency_ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use http_body_util::BodyExt;
use tollhouse::{Clock, Policy, RateLimitLayer, Timestamp};
use tower::ServiceExt;

/// A wall clock and a monotonic reading that the test moves apart.
#[derive(Clone, Debug, Default)]
struct SteppedClock {
    wall_ms: Arc<AtomicI64>,
    monotonic_ms: Arc<AtomicU64>,
}

impl Clock for SteppedClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.wall_ms.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.monotonic_ms.load(Ordering::SeqCst))
    }
}

async fn latency_charged(server: &str, wall_step_ms: i64, monotonic_step_ms: u64) -> u64 {
    let policy = Policy::from_toml_str(
        &format!(
            r#"
[server]
{server}

[[plans.build.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{{ window = "day", capacity = 100000000 }}]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
"#
        ),
        "test.toml".as_ref(),
    )
    .expect("a valid policy");
    let clock = SteppedClock::default();
    clock.wall_ms.store(1_800_000_000_000, Ordering::SeqCst);
    let limits = RateLimitLayer::new(policy).with_clock(clock.clone());
    let app = Router::new()
        .route("/v1/items", get(|| async { "items" }))
        .layer(limits.clone());
    let response = app
        .oneshot(
            Request::get("/v1/items")
                .header("authorization", "Bearer acme-key-1")
                .body(Body::empty())
                .expect("a request"),
        )
        .await
        .expect("infallible");
    // While the body is still unread, the clocks move.
    clock.wall_ms.fetch_add(wall_step_ms, Ordering::SeqCst);
    clock
        .monotonic_ms
        .fetch_add(monotonic_step_ms, Ordering::SeqCst);
    let _ = response.into_body().collect().await.expect("the body");
    let org = Arc::clone(limits.engine().policy().org("acme").expect("acme"));
    let statuses = limits
        .engine()
        .store()
        .peek(&org, clock.now())
        .await
        .expect("the memory store answers");
    u64::try_from(statuses[0].tiers()[0].used).expect("positive")
}

#[tokio::test]
async fn a_wall_clock_step_charges_nothing_for_the_step() {
    // An hour's step of the wall clock while the request took 5 ms.
    assert_eq!(latency_charged("", 3_600_000, 5).await, 5);
    // A step back neither.
    assert_eq!(latency_charged("", -3_600_000, 7).await, 7);
}

#[tokio::test]
async fn one_request_counts_for_at_most_max_latency_ms() {
    assert_eq!(latency_charged("", 0, 10 * 3_600_000).await, 3_600_000);
    assert_eq!(
        latency_charged("max_latency_ms = 60000", 0, 3_600_000).await,
        60_000
    );
}
