//! The rate-limit headers over real HTTP, parsed back with a structured-field parser and checked
//! against each other and against the window boundaries.

use tollhouse_tests::http::{POLICY, Placement, T0, TestApp, int_header, parse_list};

#[tokio::test]
async fn headers_parse_as_structured_fields_and_agree_with_each_other() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let response = app.get("/v1/reports", "acme-key-1").await;
    assert_eq!(response.status(), 200);

    let policy = parse_list(&response.headers()["ratelimit-policy"]);
    let names: Vec<&str> = policy.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(names, ["points", "daily", "concurrency"]);
    assert_eq!(policy[0].integers["q"], 20);
    assert_eq!(policy[0].integers["w"], 60);
    assert_eq!(policy[1].integers["q"], 2500);
    assert_eq!(policy[1].integers["w"], 86_400);
    assert_eq!(policy[2].integers["q"], 3);
    assert_eq!(policy[2].strings["qu"], "concurrent-requests");

    let limits = parse_list(&response.headers()["ratelimit"]);
    let names: Vec<&str> = limits.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(names, ["points", "daily", "concurrency"]);
    // The most constraining limit is points (10/20 left vs 2499/2500).
    let remaining = int_header(&response, "x-ratelimit-remaining");
    let limit = int_header(&response, "x-ratelimit-limit");
    let reset = int_header(&response, "x-ratelimit-reset");
    assert_eq!((limit, remaining), (20, 10));
    assert_eq!(limits[0].integers["r"], remaining);
    // Reset is the minute boundary, 30 s after T0; `t` counts the same seconds.
    assert_eq!(reset, T0 + 30);
    assert_eq!(limits[0].integers["t"], reset - T0);
    // The day ends at midnight UTC, 14 hours minus 30 s after T0 (10:00:30).
    assert_eq!(limits[1].integers["r"], 2499);
    assert_eq!(limits[1].integers["t"], 14 * 3600 - 30);
    // Two more slots free while this one was in flight.
    assert_eq!(limits[2].integers["r"], 2);

    // Remaining falls by each request's cost.
    let next = app.get("/v1/items", "acme-key-2").await;
    assert_eq!(int_header(&next, "x-ratelimit-remaining"), remaining - 1);
    assert_eq!(
        parse_list(&next.headers()["ratelimit"])[0].integers["r"],
        remaining - 1
    );

    // 20 s later a 10-point report no longer fits: Retry-After and Reset both point at the boundary.
    app.clock.advance(std::time::Duration::from_secs(20));
    let rejected = app.get("/v1/reports", "acme-key-1").await;
    assert_eq!(rejected.status(), 429);
    let retry_after = int_header(&rejected, "retry-after");
    assert_eq!(retry_after, 10);
    assert_eq!(
        int_header(&rejected, "x-ratelimit-reset"),
        T0 + 20 + retry_after
    );
    assert_eq!(int_header(&rejected, "x-ratelimit-remaining"), 9);
    let limits = parse_list(&rejected.headers()["ratelimit"]);
    assert_eq!(limits[0].integers["t"], retry_after);
    // A 429 still has one `RateLimit` item per `RateLimit-Policy` item: no request is in flight,
    // so every slot is free.
    let names: Vec<&str> = limits.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(names, ["points", "daily", "concurrency"]);
    assert_eq!((limits[2].integers["r"], limits[2].integers["t"]), (3, 0));
    assert_eq!(
        rejected.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = rejected.json().await.expect("a problem body");
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["status"], 429);
    assert_eq!(body["limit"], "points");
    assert_eq!(body["retry_after"], retry_after);
    assert_eq!(body["violated-policies"], serde_json::json!(["points"]));
    assert!(body["title"].is_string() && body["detail"].is_string());

    // Once the boundary passes, the minute is fresh.
    app.clock.advance(std::time::Duration::from_secs(10));
    let fresh = app.get("/v1/reports", "acme-key-1").await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(int_header(&fresh, "x-ratelimit-remaining"), 10);
}

const TIERED: &str = r#"
[server]
reset_format = "http-date"

[[plans.data.limits]]
name = "count"
dimension = "requests"
zone = "server"
tiers = [
  { window = "minute", capacity = 2 },
  { window = "hour", capacity = 3 },
  { window = "day", capacity = 4 },
]

[[orgs]]
id = "globex"
plan = "data"
keys = ["globex-key"]
"#;

#[tokio::test]
async fn tiers_are_items_of_their_own_and_spill_over() {
    let app = TestApp::start(TIERED, Placement::Layer).await;
    let first = app.get("/v1/items", "globex-key").await;
    let policy = parse_list(&first.headers()["ratelimit-policy"]);
    let names: Vec<&str> = policy.iter().map(|item| item.name.as_str()).collect();
    assert_eq!(names, ["count.minute", "count.hour", "count.day"]);
    let windows: Vec<i64> = policy.iter().map(|item| item.integers["w"]).collect();
    assert_eq!(windows, [60, 3600, 86_400]);
    assert_eq!(int_header(&first, "x-ratelimit-limit"), 9);
    assert_eq!(int_header(&first, "x-ratelimit-remaining"), 8);
    // http-date: the minute boundary as an IMF-fixdate.
    let reset = first.headers()["x-ratelimit-reset"]
        .to_str()
        .expect("ASCII");
    assert_eq!(reset, "Thu, 15 Jan 2026 10:01:00 GMT");

    for _ in 0..2 {
        assert_eq!(app.get("/v1/items", "globex-key").await.status(), 200);
    }
    // The minute tier is empty; the hour pays.
    let spilled = app.get("/v1/items", "globex-key").await;
    let tiers = parse_list(&spilled.headers()["ratelimit"]);
    let remaining: Vec<i64> = tiers.iter().map(|item| item.integers["r"]).collect();
    assert_eq!(remaining, [0, 1, 4]);
}

#[tokio::test]
async fn delta_resets_and_switched_off_families() {
    let text = POLICY.replacen(
        "[plans.build]",
        "[server]\nreset_format = \"delta\"\nietf_headers = false\n\n[plans.build]",
        1,
    );
    let app = TestApp::start(&text, Placement::Layer).await;
    let response = app.get("/v1/items", "flat-key-1").await;
    assert_eq!(int_header(&response, "x-ratelimit-reset"), 30);
    assert!(response.headers().get("ratelimit").is_none());
    assert!(response.headers().get("ratelimit-policy").is_none());

    let text = POLICY.replacen(
        "[plans.build]",
        "[server]\nlegacy_headers = false\n\n[plans.build]",
        1,
    );
    let app = TestApp::start(&text, Placement::Layer).await;
    let response = app.get("/v1/items", "flat-key-1").await;
    assert!(response.headers().get("x-ratelimit-limit").is_none());
    assert!(response.headers().get("ratelimit").is_some());
}
