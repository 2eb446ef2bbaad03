//! The layer's tracing events, captured by a subscriber.
//!
//! This test has a process of its own: tracing caches, per event site, whether any subscriber
//! wants its events, and a site first reached by a test on another thread (with no subscriber)
//! while this one installs its own can be cached as unwanted, so its events would be lost.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Request, Response};
use tollgate::{ManualClock, MemoryStore, Policy, RateLimitLayer, Timestamp};
use tower::{Layer, Service, ServiceExt};

/// 2026-01-15 10:00:30 UTC: thirty seconds into a minute.
const T0: i64 = 1_768_471_230;

const POLICY: &str = r#"
[plans.build]
concurrency = 2

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 20 }]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2500 }]

[[plans.build.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{ window = "minute", capacity = 1000 }]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]

[[routes]]
match = "GET /reports"
cost = 5
"#;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_decisions_the_80_percent_mark_and_rejections()
-> Result<(), Box<dyn std::error::Error>> {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let policy = Policy::from_toml_str(POLICY, "events.toml".as_ref())?;
    let layer = RateLimitLayer::new(policy)
        .with_store(Arc::new(MemoryStore::new()) as Arc<dyn tollgate::DynStore>)
        .with_clock(ManualClock::new(Timestamp::from_secs(T0)));
    let mut svc = layer.layer(tower::service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    }));
    // 20 points: three 5-point reports use 75%, one 1-point item takes the org to 80%, and a
    // fifth report (5 points, 4 left) is rejected.
    for path in ["/reports", "/reports", "/reports", "/items", "/reports"] {
        let request = Request::get(path)
            .header("authorization", "Bearer acme-key-1")
            .body(Body::empty())?;
        let response = svc.ready().await?.call(request).await?;
        drop(response);
    }
    let logs = String::from_utf8(captured.0.lock().map_err(|_| "poisoned")?.clone())?;
    assert_eq!(logs.matches("tollgate: admitted").count(), 4, "{logs}");
    let passed: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("passed 80% of a limit"))
        .collect();
    assert_eq!(passed.len(), 1, "{logs}");
    assert!(passed[0].contains("INFO"), "{}", passed[0]);
    assert!(passed[0].contains("limit=\"points\"") && passed[0].contains("remaining=4"));
    let rejected: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("tollgate: rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{logs}");
    assert!(rejected[0].contains("WARN"), "{}", rejected[0]);
    assert!(
        rejected[0].contains("remaining=points=4/20 daily=2496/2500"),
        "{}",
        rejected[0]
    );
    Ok(())
}
