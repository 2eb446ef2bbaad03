//! Callers that cannot be identified: 401 with a Bearer challenge, a problem body, no rate-limit
//! headers, nothing charged and nothing allocated.

use reqwest::Method;
use tollhouse_tests::http::{POLICY, Placement, TestApp};

/// A 401 with `WWW-Authenticate: Bearer`, no rate-limit headers, and a problem body whose detail
/// contains `why` (the body, not the challenge, tells the cases apart).
async fn assert_unauthorized(response: reqwest::Response, why: &str) {
    assert_eq!(response.status(), 401);
    let headers = response.headers().clone();
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["content-type"], "application/problem+json");
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
    ] {
        assert!(headers.get(name).is_none(), "{name} on a 401");
    }
    let body: serde_json::Value = response.json().await.expect("a problem body");
    assert_eq!(body["status"], 401);
    assert!(body["title"].is_string());
    let detail = body["detail"].as_str().expect("a detail");
    assert!(detail.contains(why), "{detail:?} should say {why:?}");
}

#[tokio::test]
async fn missing_malformed_and_unknown_credentials_get_401() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let missing = app.send(Method::GET, "/v1/items", None).await;
    assert_unauthorized(missing, "send your API key").await;

    for malformed in [
        "Basic YWNtZTpzZWNyZXQ=",
        "Bearer",
        "Bearer two tokens",
        "acme-key-1",
    ] {
        let response = app
            .client
            .get(format!("{}/v1/items", app.base))
            .header("authorization", malformed)
            .send()
            .await
            .expect("the server answers");
        assert_unauthorized(response, "one Authorization header, `Bearer <key>`").await;
    }
    // Two keys of different orgs (or one key twice): which org pays is not guessed.
    for second in ["flat-key-1", "acme-key-1"] {
        let response = app
            .client
            .get(format!("{}/v1/items", app.base))
            .header("authorization", "Bearer acme-key-1")
            .header("authorization", format!("Bearer {second}"))
            .send()
            .await
            .expect("the server answers");
        assert_unauthorized(response, "one Authorization header").await;
    }

    for unknown in ["acme-key-3", "ACME-KEY-1", "x"] {
        let response = app.get("/v1/items", unknown).await;
        assert_unauthorized(response, "belongs to no organisation").await;
    }
    // Exempt routes identify the caller too.
    let response = app.get("/v1/files/1", "nobody").await;
    assert_unauthorized(response, "belongs to no organisation").await;

    assert_eq!(
        app.store.tracked_orgs(),
        0,
        "no state for callers who were not identified"
    );
    assert_eq!(app.statuses("acme").await[0].remaining, 20);
    assert_eq!(app.usage("acme").await.usage.billable_today, 0);
}
