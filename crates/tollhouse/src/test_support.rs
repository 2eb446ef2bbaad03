//! Helpers for the unit tests: a policy, a layer on a manual clock, handlers, requests.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use tokio::sync::mpsc;
use tollhouse_core::{ManualClock, MemoryStore, Policy, Timestamp};

use crate::layer::RateLimitLayer;

/// 2026-01-15 10:00:30 UTC: thirty seconds into a minute.
pub(crate) const T0: i64 = 1_768_471_230;

pub(crate) fn policy(extra: &str) -> Policy {
    let text = format!(
        r#"
[plans.build]
concurrency = 2

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{{ window = "minute", capacity = 20 }}]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{{ window = "day", capacity = 2500 }}]

[[plans.build.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{{ window = "minute", capacity = 1000 }}]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1", "acme-key-2"]

[[routes]]
match = "GET /reports"
cost = 5

[[routes]]
match = "GET /files/{{id}}"
exempt = true

[[routes]]
match = "POST /hooks/{{name}}"
exempt = true
billable = false
{extra}
"#
    );
    Policy::from_toml_str(&text, "test.toml".as_ref()).expect("a valid test policy")
}

pub(crate) struct Fixture {
    pub(crate) layer: RateLimitLayer,
    pub(crate) clock: ManualClock,
    pub(crate) store: Arc<MemoryStore>,
}

pub(crate) fn fixture(policy: Policy) -> Fixture {
    let clock = ManualClock::new(Timestamp::from_secs(T0));
    let store = Arc::new(MemoryStore::new());
    let layer = RateLimitLayer::new(policy)
        .with_store(Arc::clone(&store) as Arc<dyn tollhouse_core::DynStore>)
        .with_clock(clock.clone());
    Fixture {
        layer,
        clock,
        store,
    }
}

pub(crate) fn get(path: &str, key: Option<&str>) -> Request<Body> {
    request("GET", path, key)
}

pub(crate) fn request(method: &str, path: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    builder.body(Body::empty()).expect("a valid request")
}

/// A body that yields what is sent on the returned channel and ends when it is dropped.
pub(crate) fn channel_body() -> (mpsc::UnboundedSender<Bytes>, Body) {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let chunks = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    (tx, Body::from_stream(chunks))
}

pub(crate) fn ok(body: Body) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(body))
}
