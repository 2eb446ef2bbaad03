//! The layer in each place: `Router::layer`, `Router::route_layer`, and around the whole router.

use tollhouse_tests::http::{POLICY, Placement, TestApp, int_header};

#[tokio::test]
async fn router_layer_meters_every_route_and_the_fallback() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let report = app.get("/v1/reports", "flat-key-1").await;
    assert_eq!(int_header(&report, "x-ratelimit-remaining"), 10);
    // The route template matched the exempt rule.
    let file = app.get("/v1/files/abc", "flat-key-1").await;
    assert!(file.headers().get("x-ratelimit-limit").is_none());
    // An unmatched route is metered (by its raw path) and answered by the fallback.
    let missing = app.get("/v1/nowhere", "flat-key-1").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(int_header(&missing, "x-ratelimit-remaining"), 9);
    let calls = app.usage("flat").await.usage.calls;
    assert_eq!(calls[2].route.as_deref(), Some("/v1/reports"));
    assert_eq!(calls[1].route.as_deref(), Some("/v1/files/{id}"));
}

#[tokio::test]
async fn route_layer_does_not_charge_unmatched_routes() {
    let app = TestApp::start(POLICY, Placement::RouteLayer).await;
    let missing = app.get("/v1/nowhere", "flat-key-1").await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().get("x-ratelimit-limit").is_none());
    let unauthenticated = app.send(reqwest::Method::GET, "/v1/nowhere", None).await;
    assert_eq!(
        unauthenticated.status(),
        404,
        "no identification before a route matched"
    );
    let report = app.get("/v1/reports", "flat-key-1").await;
    assert_eq!(int_header(&report, "x-ratelimit-remaining"), 10);
    let file = app.get("/v1/files/abc", "flat-key-1").await;
    assert!(file.headers().get("x-ratelimit-limit").is_none());
    assert_eq!(app.statuses("flat").await[0].remaining, 10);
    assert_eq!(app.usage("flat").await.usage.billable_today, 2);
}

#[tokio::test]
async fn around_the_whole_router_rules_match_the_raw_path() {
    let app = TestApp::start(POLICY, Placement::Service).await;
    let report = app.get("/v1/reports?format=csv", "flat-key-1").await;
    assert_eq!(report.status(), 200);
    assert_eq!(int_header(&report, "x-ratelimit-remaining"), 10);
    let file = app.get("/v1/files/abc", "flat-key-1").await;
    assert_eq!(file.status(), 200);
    assert!(file.headers().get("x-ratelimit-limit").is_none());
    let missing = app.get("/v1/nowhere", "flat-key-1").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(int_header(&missing, "x-ratelimit-remaining"), 9);
    let unauthenticated = app.send(reqwest::Method::GET, "/v1/reports", None).await;
    assert_eq!(unauthenticated.status(), 401);
    let calls = app.usage("flat").await.usage.calls;
    assert_eq!(&*calls[2].path, "/v1/reports?format=csv");
    assert_eq!(
        calls[1].route.as_deref(),
        Some("/v1/files/{id}"),
        "the rule's pattern"
    );
}
