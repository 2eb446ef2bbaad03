//! The usage routes and page where the service's API lives: any paths, nested under a prefix,
//! with the service's title and footer.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tollhouse::usage::UsageRouter;
use tollhouse::{Policy, RateLimitLayer};
use tower::ServiceExt;

fn layer() -> RateLimitLayer {
    let policy = Policy::from_toml_str(
        r#"
[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 10 }]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
"#,
        "test.toml".as_ref(),
    )
    .expect("a valid policy");
    RateLimitLayer::new(policy)
}

async fn get(app: &Router, path: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(
            Request::get(path)
                .header("authorization", "Bearer acme-key-1")
                .body(Body::empty())
                .expect("a request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

#[tokio::test]
async fn an_unversioned_api_serves_usage_at_its_own_paths_with_its_own_page() {
    let app = Router::new().nest(
        "/api",
        UsageRouter::new(Arc::new(layer()))
            .api_path("/usage")
            .page_path("/account/usage")
            .title("Acme <API> usage")
            .footer("Acme Inc.")
            .build(),
    );
    let (status, summary) = get(&app, "/api/usage").await;
    assert_eq!(status, StatusCode::OK);
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(summary["org"], "acme");
    for route in [
        "/api/usage/calls",
        "/api/usage/billing?days=3",
        "/api/usage/report",
    ] {
        assert_eq!(get(&app, route).await.0, StatusCode::OK, "{route}");
    }
    assert_eq!(get(&app, "/api/v1/usage").await.0, StatusCode::NOT_FOUND);

    let (status, page) = get(&app, "/api/account/usage").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("<title>Acme &lt;API&gt; usage</title>"),
        "{page}"
    );
    assert!(page.contains("Acme Inc."));
    assert!(!page.contains("Served by tollhouse"));
    // From /api/account/usage, the JSON at /api/usage is one directory up.
    assert!(page.contains(r#"<meta name="usage-api" content="../usage">"#));
    assert!(page.contains(r#"src="usage/page.js""#));
    assert_eq!(
        get(&app, "/api/account/usage/page.js").await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/api/account/usage/page.css").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_json_alone_when_the_page_is_not_wanted() {
    let app = UsageRouter::new(Arc::new(layer())).without_page().build();
    assert_eq!(get(&app, "/v1/usage").await.0, StatusCode::OK);
    assert_eq!(get(&app, "/usage").await.0, StatusCode::NOT_FOUND);
}
