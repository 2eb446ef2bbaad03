//! The layer's tracing events over real HTTP, captured by a subscriber.
//!
//! This test has a process of its own, and installs its subscriber for the whole process: tracing
//! caches, per event site, whether any subscriber wants its events, so a subscriber installed for
//! one thread can miss events of a site first reached by a test on another thread.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tollhouse_tests::http::{POLICY, Placement, TestApp};

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
async fn decisions_the_80_percent_mark_and_rejections_are_logged()
-> Result<(), Box<dyn std::error::Error>> {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )?;

    let app = TestApp::start(POLICY, Placement::Layer).await;
    // 20 points: a 10-point report and five items use 75%, a sixth item takes acme to 80%, and a
    // second report (10 points, 4 left) is rejected.
    let mut paths = vec!["/v1/reports"];
    paths.extend(["/v1/items"; 6]);
    paths.push("/v1/reports");
    for path in &paths {
        app.get(path, "acme-key-1").await;
    }
    let logs = String::from_utf8(captured.0.lock().map_err(|_| "poisoned")?.clone())?;
    assert_eq!(logs.matches("tollhouse: admitted").count(), 7, "{logs}");
    let passed: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("passed 80% of a limit"))
        .collect();
    assert_eq!(passed.len(), 1, "{logs}");
    assert!(passed[0].contains("INFO"), "{}", passed[0]);
    assert!(
        passed[0].contains("limit=\"points\"") && passed[0].contains("remaining=4"),
        "{}",
        passed[0]
    );
    let rejected: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("tollhouse: rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{logs}");
    assert!(rejected[0].contains("WARN"), "{}", rejected[0]);
    assert!(
        rejected[0].contains("remaining=points=4/20 daily=2493/2500"),
        "{}",
        rejected[0]
    );
    Ok(())
}
