//! Exact enforcement over real HTTP: concurrent clients, shared keys, point costs, exemptions,
//! cost corrections and latency budgets.

use std::sync::Arc;

use tokio::sync::Barrier;
use tollhouse_tests::http::{POLICY, Placement, TestApp, int_header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_capacity_is_admitted_to_32_concurrent_clients() {
    let app = Arc::new(TestApp::start(POLICY, Placement::Layer).await);
    let barrier = Arc::new(Barrier::new(32));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let app = Arc::clone(&app);
        let barrier = Arc::clone(&barrier);
        clients.push(tokio::spawn(async move {
            // A client of its own each: 32 connections at once.
            let client = reqwest::Client::new();
            barrier.wait().await;
            client
                .get(format!("{}/v1/items", app.base))
                .bearer_auth("flat-key-1")
                .send()
                .await
                .expect("the server answers")
                .status()
                .as_u16()
        }));
    }
    let mut admitted = 0;
    let mut rejected = 0;
    for client in clients {
        match client.await.expect("the client task") {
            200 => admitted += 1,
            429 => rejected += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(admitted, 20, "exactly the capacity of 20 points");
    assert_eq!(rejected, 12);
    assert_eq!(app.statuses("flat").await[0].remaining, 0);
    let usage = app.usage("flat").await;
    assert_eq!(usage.usage.calls_today, 20);
    assert_eq!(
        usage.usage.billable_today, 32,
        "rejections are billable calls too"
    );
}

#[tokio::test]
async fn two_keys_of_one_org_share_its_limits() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let first = app.get("/v1/reports", "acme-key-1").await;
    assert_eq!(first.status(), 200);
    assert_eq!(int_header(&first, "x-ratelimit-remaining"), 10);
    let second = app.get("/v1/reports", "acme-key-2").await;
    assert_eq!(second.status(), 200);
    assert_eq!(int_header(&second, "x-ratelimit-remaining"), 0);
    let third = app.get("/v1/items", "acme-key-1").await;
    assert_eq!(
        third.status(),
        429,
        "the first key sees what the second used"
    );
    let keys: Vec<String> = app
        .usage("acme")
        .await
        .usage
        .calls
        .iter()
        .map(|call| call.key.to_string())
        .collect();
    assert_eq!(keys, ["…ey-1", "…ey-2", "…ey-1"], "keys are logged masked");
}

#[tokio::test]
async fn costs_of_1_3_and_10_points_are_charged() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let mut expected = 20;
    for (method, path, cost) in [
        (reqwest::Method::GET, "/v1/items", 1),
        (reqwest::Method::POST, "/v1/items", 3),
        (reqwest::Method::GET, "/v1/reports", 10),
    ] {
        let response = app.send(method, path, Some("flat-key-1")).await;
        assert!(response.status().is_success(), "{path}");
        expected -= cost;
        assert_eq!(
            int_header(&response, "x-ratelimit-remaining"),
            expected,
            "{path}"
        );
    }
    assert_eq!(app.statuses("flat").await[0].remaining, 6);
    // A 10-point report no longer fits in the 6 points left, not even as HEAD (which runs the GET
    // handler, so the GET rule prices it); a 3-point write does.
    assert_eq!(app.get("/v1/reports", "flat-key-1").await.status(), 429);
    let head = app
        .send(reqwest::Method::HEAD, "/v1/reports", Some("flat-key-1"))
        .await;
    assert_eq!(head.status(), 429);
    assert_eq!(app.post("/v1/items", "flat-key-1").await.status(), 201);
    assert_eq!(app.statuses("flat").await[0].remaining, 3);
}

#[tokio::test]
async fn costs_declared_in_code_win_over_the_policy_file() {
    let app = TestApp::start_with(POLICY, Placement::Layer, |layer| {
        layer.cost("GET /v1/reports", 4).cost("GET /v1/items", 2)
    })
    .await;
    let report = app.get("/v1/reports", "flat-key-1").await;
    assert_eq!(int_header(&report, "x-ratelimit-remaining"), 16);
    let items = app.get("/v1/items", "flat-key-1").await;
    assert_eq!(int_header(&items, "x-ratelimit-remaining"), 14);
}

#[tokio::test]
async fn exempt_routes_are_not_counted_but_are_billable() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    for _ in 0..25 {
        let response = app.get("/v1/files/42", "flat-key-1").await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-ratelimit-limit").is_none());
        assert!(response.headers().get("ratelimit").is_none());
        assert_eq!(response.bytes().await.expect("the file").len(), 4096);
    }
    for _ in 0..5 {
        let response = app.post("/v1/connectors/forms", "flat-key-1").await;
        assert_eq!(response.status(), 202);
        assert!(response.headers().get("x-ratelimit-limit").is_none());
    }
    // 25 exempt downloads did not use the 20 points.
    let items = app.get("/v1/items", "flat-key-1").await;
    assert_eq!(int_header(&items, "x-ratelimit-remaining"), 19);
    let usage = app.usage("flat").await;
    assert_eq!(
        usage.usage.billable_today, 26,
        "files are billable, connectors are not"
    );
    assert_eq!(usage.usage.calls_today, 1);
    let outcomes: Vec<&str> = usage
        .usage
        .calls
        .iter()
        .map(|c| c.outcome.as_str())
        .collect();
    assert_eq!(&outcomes[..2], ["admitted", "exempt"]);
}

#[tokio::test]
async fn a_corrected_cost_is_settled_after_the_response() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    // Declared 1 point; the handler reports 7 once it knows.
    let response = app.get("/v1/search?cost=7", "flat-key-1").await;
    assert_eq!(
        int_header(&response, "x-ratelimit-remaining"),
        19,
        "charged as declared"
    );
    assert_eq!(response.text().await.expect("the body"), "cost 7");
    assert_eq!(
        app.statuses("flat").await[0].remaining,
        13,
        "then corrected to 7"
    );
    // A correction downwards gives points back.
    let response = app.get("/v1/search?cost=0", "flat-key-1").await;
    response.bytes().await.expect("the body");
    assert_eq!(app.statuses("flat").await[0].remaining, 13);
    let costs: Vec<u64> = app
        .usage("flat")
        .await
        .usage
        .calls
        .iter()
        .map(|c| c.cost)
        .collect();
    assert_eq!(costs, [0, 7]);
}

#[tokio::test]
async fn a_latency_budget_admits_while_time_is_left_and_then_rejects() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    // The handler "works" 600 ms of the engine's clock.
    let response = app.get("/v1/work?ms=600", "lagging-key").await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("the body");
    assert_eq!(app.statuses("lagging").await[0].remaining, 400);
    assert_eq!(app.usage("lagging").await.usage.calls[0].latency_ms, 600);

    // 400 ms left is more than zero: admitted, and the 500 ms it takes runs into debt.
    let response = app.get("/v1/work?ms=500", "lagging-key").await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("the body");
    assert_eq!(app.statuses("lagging").await[0].remaining, 0);

    let rejected = app.get("/v1/items", "lagging-key").await;
    assert_eq!(rejected.status(), 429);
    // 1.1 s of the minute gone: 28.9 s left, rounded up.
    assert_eq!(int_header(&rejected, "retry-after"), 29);
    let body: serde_json::Value = rejected.json().await.expect("a problem body");
    assert_eq!(body["limit"], "latency");
}
