//! Concurrency permits over real HTTP: held until the response body has ended or been dropped,
//! released when a client hangs up or a handler panics.

use bytes::Bytes;
use tollhouse_tests::http::{POLICY, Placement, TestApp, eventually, int_header};

/// Sends `count` requests to `/v1/held` with `key`, each in a task that reads the body to its end
/// and gives the status.
fn held(
    app: &std::sync::Arc<TestApp>,
    key: &'static str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..count)
        .map(|_| {
            let app = std::sync::Arc::clone(app);
            tokio::spawn(async move {
                let response = app.get("/v1/held", key).await;
                let status = response.status().as_u16();
                response.text().await.expect("the body");
                status
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_3_with_slow_handlers_rejects_a_4th_until_one_ends() {
    let app = std::sync::Arc::new(TestApp::start(POLICY, Placement::Layer).await);
    let slow = held(&app, "acme-key-1", 3);
    app.wait_in_flight("acme", 3).await;

    let fourth = app.get("/v1/items", "acme-key-2").await;
    assert_eq!(fourth.status(), 429);
    assert_eq!(int_header(&fourth, "retry-after"), 1);
    assert_eq!(int_header(&fourth, "x-ratelimit-limit"), 3);
    assert_eq!(int_header(&fourth, "x-ratelimit-remaining"), 0);
    let body: serde_json::Value = fourth.json().await.expect("a problem body");
    assert_eq!(body["limit"], "concurrency");
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["concurrency"])
    );

    app.release(1);
    app.wait_in_flight("acme", 2).await;
    let fifth = app.get("/v1/items", "acme-key-2").await;
    assert_eq!(fifth.status(), 200);

    app.release(2);
    for handler in slow {
        assert_eq!(handler.await.expect("the client task"), 200);
    }
    app.wait_in_flight("acme", 0).await;
}

#[tokio::test]
async fn concurrency_3_with_streaming_bodies_holds_the_permit_until_the_body_ends() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let mut responses = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..3 {
        // `send` returns once the headers arrived: the handlers have returned.
        let response = app.get("/v1/stream", "acme-key-1").await;
        assert_eq!(response.status(), 200);
        responses.push(response);
        senders.push(app.next_stream().await);
    }
    assert_eq!(app.in_flight("acme").await, 3);
    assert_eq!(app.get("/v1/items", "acme-key-1").await.status(), 429);

    // Mid-body the permit is still held.
    senders[0]
        .send(Bytes::from_static(b"part 1"))
        .expect("the body is open");
    let mut first = responses.remove(0);
    assert_eq!(
        first.chunk().await.expect("a chunk").as_deref(),
        Some(&b"part 1"[..])
    );
    assert_eq!(app.get("/v1/items", "acme-key-1").await.status(), 429);

    // The body ends: the permit is free.
    drop(senders.remove(0));
    assert_eq!(first.chunk().await.expect("the end"), None);
    app.wait_in_flight("acme", 2).await;
    assert_eq!(app.get("/v1/items", "acme-key-1").await.status(), 200);
    drop(senders);
    for response in responses {
        response.bytes().await.expect("the rest of the body");
    }
    app.wait_in_flight("acme", 0).await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_body_frees_the_permit() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    let mut response = app.get("/v1/stream", "acme-key-1").await;
    let sender = app.next_stream().await;
    sender
        .send(Bytes::from_static(b"first"))
        .expect("the body is open");
    assert_eq!(
        response.chunk().await.expect("a chunk").as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(app.in_flight("acme").await, 1);

    drop(response); // the client goes away mid-body
    // The server notices when it next writes (or reads EOF); keep the stream going until then.
    eventually("the permit of the abandoned body is released", || {
        let _ = sender.send(Bytes::from_static(b"more"));
        async { app.in_flight("acme").await == 0 }
    })
    .await;
    let last = &app.usage("acme").await.usage.calls[0];
    assert_eq!(last.status, 200, "the status that was sent");
    assert_eq!(app.get("/v1/items", "acme-key-1").await.status(), 200);
}

#[tokio::test]
async fn a_panicking_handler_frees_the_permit() {
    let app = TestApp::start(POLICY, Placement::Layer).await;
    for _ in 0..5 {
        // hyper drops the connection when the handler's task panics.
        let outcome = app
            .client
            .get(format!("{}/v1/panic", app.base))
            .bearer_auth("acme-key-1")
            .send()
            .await;
        assert!(
            outcome.is_err(),
            "no response from a panicked handler: {outcome:?}"
        );
        app.wait_in_flight("acme", 0).await;
    }
    // Five panics later, all three slots are free.
    assert_eq!(app.get("/v1/items", "acme-key-1").await.status(), 200);
}

#[tokio::test]
async fn a_panicking_handler_behind_catch_panic_frees_the_permit() {
    let app = TestApp::start(POLICY, Placement::LayerInsideCatchPanic).await;
    for _ in 0..5 {
        let response = app.get("/v1/panic", "acme-key-1").await;
        assert_eq!(response.status(), 500);
        app.wait_in_flight("acme", 0).await;
    }
    assert_eq!(app.get("/v1/items", "acme-key-1").await.status(), 200);
    // The five panicked calls were charged (admitted) and are in the log.
    assert_eq!(app.statuses("acme").await[0].remaining, 20 - 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_counted_without_a_concurrency_limit() {
    // `flat` has no concurrency limit: nothing is refused for it, but its requests in flight are
    // still counted (the usage shows them).
    let app = std::sync::Arc::new(TestApp::start(POLICY, Placement::Layer).await);
    let slow = held(&app, "flat-key-1", 2);
    app.wait_in_flight("flat", 2).await;
    let response = app.get("/v1/items", "flat-key-1").await;
    assert_eq!(response.status(), 200);
    let ratelimit = response.headers()["ratelimit"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(!ratelimit.contains("concurrency"), "{ratelimit}");
    app.release(2);
    for handler in slow {
        assert_eq!(handler.await.expect("the client task"), 200);
    }
    app.wait_in_flight("flat", 0).await;
}

/// `slots`: concurrency only. `one`: one request in flight and two a minute.
const SLOTS: &str = r#"
[plans.slots]
concurrency = 2

[plans.one]
concurrency = 1

[[plans.one.limits]]
name = "minute"
dimension = "requests"
tiers = [{ window = "minute", capacity = 2 }]

[[orgs]]
id = "slots"
plan = "slots"
keys = ["slots-key-1"]

[[orgs]]
id = "one"
plan = "one"
keys = ["one-key-01"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_only_a_concurrency_limit_sends_it_as_x_ratelimit() {
    let app = std::sync::Arc::new(TestApp::start(SLOTS, Placement::Layer).await);
    // Admitted: the slots are the only limit, so they are the most constraining one.
    let response = app.get("/v1/items", "slots-key-1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(int_header(&response, "x-ratelimit-limit"), 2);
    assert_eq!(int_header(&response, "x-ratelimit-remaining"), 1);
    // A slot is free: Reset is now, as the RateLimit item's t=0 says.
    assert_eq!(
        int_header(&response, "x-ratelimit-reset"),
        tollhouse_tests::http::T0
    );
    let ratelimit = response.headers()["ratelimit"].to_str().expect("ASCII");
    assert_eq!(ratelimit, r#""concurrency";r=1;t=0"#);
    app.wait_in_flight("slots", 0).await;

    let slow = held(&app, "slots-key-1", 2);
    app.wait_in_flight("slots", 2).await;
    let third = app.get("/v1/items", "slots-key-1").await;
    assert_eq!(third.status(), 429);
    assert_eq!(int_header(&third, "x-ratelimit-limit"), 2);
    assert_eq!(int_header(&third, "x-ratelimit-remaining"), 0);
    assert_eq!(int_header(&third, "retry-after"), 1);
    app.release(2);
    for handler in slow {
        assert_eq!(handler.await.expect("the client task"), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_names_a_full_limit_beside_a_full_concurrency_limit() {
    let app = std::sync::Arc::new(TestApp::start(SLOTS, Placement::Layer).await);
    assert_eq!(app.get("/v1/items", "one-key-01").await.status(), 200);
    app.wait_in_flight("one", 0).await;
    // The second and last request of the minute holds the one slot.
    let slow = held(&app, "one-key-01", 1);
    app.wait_in_flight("one", 1).await;

    let third = app.get("/v1/items", "one-key-01").await;
    assert_eq!(third.status(), 429);
    // The minute frees up last (30 s from now; a slot may free in 1 s): it is the reason and
    // Retry-After waits for it, and concurrency is violated too.
    assert_eq!(int_header(&third, "retry-after"), 30);
    assert_eq!(int_header(&third, "x-ratelimit-limit"), 2);
    assert_eq!(int_header(&third, "x-ratelimit-remaining"), 0);
    let body: serde_json::Value = third.json().await.expect("a problem body");
    assert_eq!(body["limit"], "minute");
    assert_eq!(body["retry_after"], 30);
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["minute", "concurrency"])
    );
    let detail = body["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("also has its plan's maximum of requests in flight"),
        "{detail}"
    );
    // Half a second before the minute ends, the slot (a second away at best) frees up last: a
    // concurrency rejection, which still lists the full limit.
    app.clock.advance(std::time::Duration::from_millis(29_500));
    let late = app.get("/v1/items", "one-key-01").await;
    assert_eq!(late.status(), 429);
    assert_eq!(int_header(&late, "retry-after"), 1);
    let body: serde_json::Value = late.json().await.expect("a problem body");
    assert_eq!(body["limit"], "concurrency");
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["concurrency", "minute"])
    );
    app.release(1);
    for handler in slow {
        assert_eq!(handler.await.expect("the client task"), 200);
    }
    // Nothing was charged for the rejection.
    assert_eq!(app.statuses("one").await[0].remaining, 0);
    assert_eq!(app.statuses("one").await[0].tiers()[0].used, 2);
}
