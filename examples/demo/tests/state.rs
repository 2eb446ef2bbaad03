//! The demo keeps its books across a restart: a graceful stop writes everything, a crash loses at
//! most the last flush interval and leaves a file that opens, a second demo on the same state
//! directory is refused, and a damaged file is refused with a clear message.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEMO, Demo, fresh_state_dir, temp_policy};
use futures_util::future::join_all;

const CAPACITY: u64 = 2_500;

fn policy(name: &str) -> std::path::PathBuf {
    temp_policy(
        name,
        &format!(
            r#"
[[plans.daily.limits]]
name = "daily"
dimension = "requests"
zone = "UTC"
tiers = [{{ window = "day", capacity = {CAPACITY} }}]

[[orgs]]
id = "acme"
plan = "daily"
keys = ["acme-key-1"]
"#
        ),
    )
}

fn start(policy: &std::path::Path, state: &std::path::Path) -> Demo {
    Demo::start(&[
        "--config",
        policy.to_str().expect("UTF-8 path"),
        "--state",
        state.to_str().expect("UTF-8 path"),
    ])
}

async fn usage(demo: &Demo, path: &str) -> serde_json::Value {
    demo.get(path, "acme-key-1")
        .await
        .json()
        .await
        .expect("usage JSON")
}

/// Sends `count` requests, `parallel` at a time; the instants at which each admitted one was
/// answered.
async fn load(demo: &Demo, count: usize, parallel: usize) -> Vec<Instant> {
    let client = reqwest::Client::new();
    let mut admitted = Vec::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(parallel) {
        let answers = join_all(batch.iter().map(|_| {
            client
                .get(demo.url("/v1/items"))
                .bearer_auth("acme-key-1")
                .send()
        }))
        .await;
        for answer in answers {
            match answer {
                Ok(response) if response.status() == 200 => admitted.push(Instant::now()),
                _ => {}
            }
        }
    }
    admitted
}

fn signal(demo: &Demo, name: &str) {
    let status = Command::new("kill")
        .args([name, &demo.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn a_graceful_stop_and_a_restart_keep_counts_billing_and_the_call_log() {
    let (policy, state) = (policy("state-restart.toml"), fresh_state_dir());
    let mut demo = start(&policy, &state);
    let admitted = load(&demo, 2_400, 16).await;
    assert_eq!(admitted.len(), 2_400);
    signal(&demo, "-TERM");
    assert!(demo.wait().success(), "SIGTERM is a graceful stop");

    let demo = start(&policy, &state);
    let summary = usage(&demo, "/v1/usage").await;
    assert_eq!(summary["limits"][0]["remaining"], 100, "{summary}");
    assert_eq!(summary["calls_today"], 2_400);
    assert_eq!(summary["billable_today"], 2_400);
    let billing = usage(&demo, "/v1/usage/billing?days=1").await;
    assert_eq!(billing["days"][0]["billable"], 2_400);
    let calls = usage(&demo, "/v1/usage/calls").await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(100));
    // The 100 left, and not one more.
    assert_eq!(load(&demo, 150, 16).await.len(), 100);
}

#[tokio::test]
async fn a_crash_loses_at_most_the_last_flush_interval_and_the_file_opens() {
    let (policy, state) = (policy("state-crash.toml"), fresh_state_dir());
    let mut demo = start(&policy, &state);
    let before = load(&demo, 1_500, 16).await;
    signal(&demo, "-KILL");
    let killed = Instant::now();
    let _ = demo.wait();
    // What was admitted in the last flush interval (500 ms) before the kill, with a margin for
    // the time the request took to be answered.
    let recent = before
        .iter()
        .filter(|at| killed.duration_since(**at) <= Duration::from_millis(700))
        .count();

    let demo = start(&policy, &state);
    let kept = usage(&demo, "/v1/usage").await["limits"][0]["tiers"][0]["used"]
        .as_u64()
        .expect("a count");
    let lost = u64::try_from(before.len()).expect("small") - kept;
    assert!(
        lost <= u64::try_from(recent).expect("small"),
        "{lost} admissions lost, more than the {recent} of the last flush interval"
    );
    let after = load(&demo, 2_000, 16).await.len();
    let total = before.len() + after;
    println!(
        "admitted {} before the crash, {after} after; {lost} lost of the last interval's {recent}",
        before.len()
    );
    assert!(
        u64::try_from(total).expect("small") <= CAPACITY + lost,
        "{total} admitted in all: over capacity by more than what the crash lost"
    );
}

#[tokio::test]
async fn a_second_demo_on_the_same_state_directory_is_refused() {
    let (policy, state) = (policy("state-twice.toml"), fresh_state_dir());
    let first = start(&policy, &state);
    let second = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&policy)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("the demo runs");
    assert_eq!(second.status.code(), Some(1));
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains(&state.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("process {}", first.pid())),
        "names the holder: {message}"
    );
}

#[tokio::test]
async fn a_damaged_state_file_is_refused_with_what_to_do() {
    let (policy, state) = (policy("state-damaged.toml"), fresh_state_dir());
    let mut demo = start(&policy, &state);
    assert_eq!(load(&demo, 10, 4).await.len(), 10);
    signal(&demo, "-TERM");
    assert!(demo.wait().success());
    let database = state.join("tollhouse.sqlite3");
    let bytes = std::fs::read(&database).expect("the state file");
    std::fs::write(&database, &bytes[..bytes.len() / 3]).expect("truncate");
    let refused = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&policy)
        .arg("--state")
        .arg(&state)
        .output()
        .expect("the demo runs");
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains(&database.display().to_string()),
        "{message}"
    );
    assert!(message.contains("move it away"), "{message}");
}
