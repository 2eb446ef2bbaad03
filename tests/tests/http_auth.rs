//! Callers that cannot be identified: 401 with a Bearer challenge, a problem body, no rate-limit
//! headers, nothing charged and nothing allocated.

use reqwest::Method;
use tollgate_tests::http::{POLICY, Placement, TestApp};

async fn assert_unauthorized(response: reqwest::Response, challenge: &str) {
    assert_eq!(response.status(), 401);
    let headers = response.headers().clone();
    assert_eq!(headers["www-authenticate"], challenge);
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
    assert!(body["title"].is_string() && body["detail"].is_string());
}

#[tokio::test]
async fn missing_malformed_and_unknown_credentials_get_401() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let missing = app.send(Method::GET, "/v1/items", None).await;
    assert_unauthorized(missing, "Bearer").await;

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
        assert_unauthorized(response, "Bearer error=\"invalid_request\"").await;
    }

    for unknown in ["acme-key-3", "ACME-KEY-1", "x"] {
        let response = app.get("/v1/items", unknown).await;
        assert_unauthorized(response, "Bearer error=\"invalid_token\"").await;
    }
    // Exempt routes identify the caller too.
    let response = app.get("/v1/files/1", "nobody").await;
    assert_unauthorized(response, "Bearer error=\"invalid_token\"").await;

    assert_eq!(
        app.store.tracked_orgs(),
        0,
        "no state for callers who were not identified"
    );
    assert_eq!(app.statuses("acme").await[0].remaining, 20);
    assert_eq!(app.usage("acme").await.usage.billable_today, 0);
}
