//! A tenant that hammers past its quota: its rejections are logged in full only up to a rate, and
//! always billed and counted in the report, so polling past the quota still shows up.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tollhouse::headers::REJECTIONS_LOGGED_PER_SECOND;
use tollhouse::{ManualClock, Outcome, Policy, RateLimitLayer, Timestamp};
use tower::ServiceExt;

#[tokio::test]
async fn rejections_past_a_few_a_second_are_counted_not_logged() {
    let policy = Policy::from_toml_str(
        r#"
[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 5 }]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
"#,
        "test.toml".as_ref(),
    )
    .expect("a valid policy");
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let limits = RateLimitLayer::new(policy).with_clock(clock.clone());
    let app = Router::new()
        .route("/v1/poll", get(|| async { "ok" }))
        .layer(limits.clone());
    let mut statuses = Vec::new();
    for _ in 0..500 {
        let response = app
            .clone()
            .oneshot(
                Request::get("/v1/poll?since=0")
                    .header("authorization", "Bearer acme-key-1")
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await
            .expect("infallible");
        statuses.push(response.status());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::OK)
            .count(),
        5
    );
    let org = std::sync::Arc::clone(limits.engine().policy().org("acme").expect("acme"));
    let usage = limits.engine().store().usage(&org, clock.now_ts(), 1).await;
    let usage = usage.expect("the memory store answers").usage;
    assert_eq!(usage.billable_today, 500, "every rejection is billable");
    let logged_rejections = usage
        .calls
        .iter()
        .filter(|call| matches!(call.outcome, Outcome::Rejected { .. }))
        .count();
    assert_eq!(
        u64::try_from(logged_rejections).expect("small"),
        REJECTIONS_LOGGED_PER_SECOND,
        "in one second, only the first rejections are logged in full"
    );
    assert_eq!(
        usage.repeated[0].count, 500,
        "the report still sees the polling"
    );
    assert_eq!(usage.endpoints[0].calls, 500);
}

trait NowTs {
    fn now_ts(&self) -> Timestamp;
}

impl NowTs for ManualClock {
    fn now_ts(&self) -> Timestamp {
        tollhouse::Clock::now(self)
    }
}
