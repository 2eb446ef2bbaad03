//! A smooth rate through the layer, on a manual clock: its burst, then one request per interval,
//! with honest headers; a charge larger than the burst is refused with that said.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use tollhouse::{ManualClock, Policy, RateLimitLayer, Timestamp};
use tower::ServiceExt;

const POLICY: &str = r#"
[server]
reset_format = "delta"

[[plans.p.limits]]
name = "smooth"
dimension = "requests"
rate = { amount = 2, per = "second", burst = 6 }

[[plans.p.limits]]
name = "points"
dimension = "points"
rate = { amount = 10, per = "minute", burst = 50 }

[[orgs]]
id = "acme"
plan = "p"
keys = ["acme-key-1"]

[[routes]]
match = "GET /v1/export"
cost = 80
"#;

fn app(clock: &ManualClock) -> Router {
    let policy = Policy::from_toml_str(POLICY, "rate.toml".as_ref()).expect("a valid policy");
    Router::new()
        .route("/v1/items", get(|| async { "items" }))
        .route("/v1/export", get(|| async { "export" }))
        .layer(RateLimitLayer::new(policy).with_clock(clock.clone()))
}

async fn get_path(app: &Router, path: &str) -> Response<Body> {
    app.clone()
        .oneshot(
            Request::get(path)
                .header("authorization", "Bearer acme-key-1")
                .body(Body::empty())
                .expect("a request"),
        )
        .await
        .expect("infallible")
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
    response.headers()[name].to_str().expect("ASCII")
}

#[tokio::test]
async fn a_burst_then_one_request_per_interval_with_exact_headers() {
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let app = app(&clock);
    for left in (0..6).rev() {
        let response = get_path(&app, "/v1/items").await;
        assert_eq!(response.status(), 200);
        assert!(
            header(&response, "ratelimit").contains(&format!("\"smooth\";r={left};t=1")),
            "{}",
            header(&response, "ratelimit")
        );
    }
    let refused = get_path(&app, "/v1/items").await;
    assert_eq!(refused.status(), 429);
    // Half a second until a unit is back: 1 s, rounded up, never 0.
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-limit"), "6");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "x-ratelimit-reset"), "1");
    assert!(
        header(&refused, "ratelimit-policy").contains("\"smooth\";q=6;w=3"),
        "{}",
        header(&refused, "ratelimit-policy")
    );
    clock.advance(Duration::from_millis(499));
    assert_eq!(get_path(&app, "/v1/items").await.status(), 429);
    clock.advance(Duration::from_millis(1));
    assert_eq!(get_path(&app, "/v1/items").await.status(), 200);
    assert_eq!(get_path(&app, "/v1/items").await.status(), 429);
    // Three seconds on, the bucket is full: t = 0.
    clock.advance(Duration::from_secs(3));
    let full = get_path(&app, "/v1/items").await;
    assert_eq!(full.status(), 200);
    clock.advance(Duration::from_secs(3));
    let peek = get_path(&app, "/v1/items").await;
    assert!(
        header(&peek, "ratelimit").contains("\"smooth\";r=5;t=1"),
        "{}",
        header(&peek, "ratelimit")
    );
}

#[tokio::test]
async fn a_charge_larger_than_the_burst_is_refused_with_that_said() {
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let app = app(&clock);
    let refused = get_path(&app, "/v1/export").await;
    assert_eq!(refused.status(), 429);
    let body = refused
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem JSON");
    assert_eq!(problem["limit"], "points");
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("holds at most 50 and this request needs 80")
            && detail.contains("cannot be admitted"),
        "{detail}"
    );
    // Nothing was charged: the rate's fifty points are all there (less this request's one, back in
    // six seconds).
    let items = get_path(&app, "/v1/items").await;
    assert!(
        header(&items, "ratelimit").contains("\"points\";r=49;t=6"),
        "{}",
        header(&items, "ratelimit")
    );
}
