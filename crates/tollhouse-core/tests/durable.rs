//! The durable store keeps the books across a restart: counts of open windows, billing, the call
//! log and the report; it refuses a second process, a damaged file and a later schema; and one
//! org's share of the file is bounded.
#![cfg(feature = "durable")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tollhouse_core::durable::{DurableError, DurableStore, FILE_BYTES_PER_ORG};
use tollhouse_core::usage::{CallRecord, Outcome};
use tollhouse_core::{Charge, ManualClock, Policy, ResolvedOrg, Store, Timestamp};

/// 2026-01-15 10:00:00 UTC.
const T0: i64 = 1_768_471_200;

fn policy() -> Policy {
    Policy::from_toml_str(
        r#"
[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 100 }, { window = "day", capacity = 2500 }]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
"#,
        "durable.toml".as_ref(),
    )
    .expect("a valid policy")
}

fn acme(policy: &Policy) -> Arc<ResolvedOrg> {
    Arc::clone(policy.org("acme").expect("defined"))
}

fn state_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollhouse-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &std::path::Path, clock: &ManualClock) -> DurableStore {
    DurableStore::builder()
        .clock(clock.clone())
        .flush_interval(Duration::from_millis(10))
        .open(dir)
        .expect("the state directory opens")
}

fn call(at: Timestamp, path: &str) -> CallRecord {
    CallRecord::new(at, "GET", path).with_route("/v1/items")
}

#[tokio::test]
async fn a_restart_keeps_counts_billing_calls_and_the_report() {
    let dir = state_dir("restart");
    let policy = policy();
    let org = acme(&policy);
    let clock = ManualClock::new(Timestamp::from_secs(T0));
    {
        let store = open(&dir, &clock);
        for i in 0..24 {
            let at = Timestamp::from_secs(T0 + i);
            assert!(
                store
                    .admit(&org, Charge::points(4), at)
                    .await
                    .expect("memory")
                    .is_admitted()
            );
            store
                .record(&org, call(at, "/v1/items?poll=1"))
                .await
                .expect("memory");
        }
        let mut rejected = call(Timestamp::from_secs(T0 + 30), "/v1/items?poll=1");
        rejected.outcome = Outcome::Rejected {
            limit: Arc::from("points"),
        };
        store.record(&org, rejected).await.expect("memory");
        store.close().expect("a graceful stop writes everything");
    }
    let clock_after = ManualClock::new(Timestamp::from_secs(T0 + 40));
    let store = open(&dir, &clock_after);
    let now = Timestamp::from_secs(T0 + 40);
    let statuses = store.peek(&org, now).await.expect("memory");
    assert_eq!(
        statuses[0].tiers()[0].used,
        96,
        "the minute still open keeps its count"
    );
    assert_eq!(
        statuses[0].tiers()[1].used,
        0,
        "spill-over: the day paid nothing"
    );
    let usage = store.usage(&org, now, 31).await.expect("memory").usage;
    assert_eq!(usage.billable_today, 25);
    assert_eq!(usage.calls_today, 24);
    assert_eq!(usage.calls.len(), 25);
    assert_eq!(usage.repeated[0].count, 25, "the polling report survives");
    // The minute ends while the process is down: it starts fresh; the day keeps counting.
    store.close().expect("close");
    drop(store);
    let later = ManualClock::new(Timestamp::from_secs(T0 + 120));
    let store = open(&dir, &later);
    let statuses = store
        .peek(&org, Timestamp::from_secs(T0 + 120))
        .await
        .expect("memory");
    assert_eq!(statuses[0].tiers()[0].used, 0);
    let usage = store
        .usage(&org, Timestamp::from_secs(T0 + 120), 31)
        .await
        .expect("memory");
    assert_eq!(
        usage.usage.billable_today, 25,
        "billing is per day, not per window"
    );
}

#[test]
fn a_second_process_on_the_same_directory_is_refused() {
    let dir = state_dir("locked");
    let clock = ManualClock::new(Timestamp::from_secs(T0));
    let first = open(&dir, &clock);
    let second = DurableStore::builder().open(&dir);
    match second {
        Err(error @ DurableError::Locked { .. }) => {
            let message = error.to_string();
            assert!(message.contains(&dir.display().to_string()), "{message}");
            assert!(
                message.contains(&format!("process {}", std::process::id())),
                "names the holder: {message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(first);
    assert!(
        DurableStore::builder().open(&dir).is_ok(),
        "free again once the first is gone"
    );
}

#[test]
fn a_damaged_file_and_a_later_schema_are_refused_with_their_path() {
    let dir = state_dir("damaged");
    let clock = ManualClock::new(Timestamp::from_secs(T0));
    let database = {
        let store = open(&dir, &clock);
        store.database().to_owned()
    };
    // Truncated in the middle of its header.
    let bytes = std::fs::read(&database).expect("the file");
    std::fs::write(&database, &bytes[..bytes.len().min(50)]).expect("truncate");
    let _ = std::fs::remove_file(database.with_extension("sqlite3-wal"));
    match DurableStore::builder().open(&dir) {
        Err(error @ DurableError::Damaged { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&database.display().to_string()),
                "{message}"
            );
            assert!(message.contains("move it away"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let dir = state_dir("newer");
    let database = {
        let store = open(&dir, &clock);
        store.database().to_owned()
    };
    let connection = rusqlite::Connection::open(&database).expect("open");
    connection
        .pragma_update(None, "user_version", 99)
        .expect("a later schema");
    drop(connection);
    match DurableStore::builder().open(&dir) {
        Err(error @ DurableError::Newer { version: 99, .. }) => {
            assert!(error.to_string().contains("newer"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn one_orgs_share_of_the_file_is_bounded() {
    let dir = state_dir("bounded");
    let policy = policy();
    let org = acme(&policy);
    let clock = ManualClock::new(Timestamp::from_secs(T0));
    let store = open(&dir, &clock);
    let pad = "x".repeat(30_000);
    for i in 0..5_000i64 {
        let at = Timestamp::from_millis(T0 * 1000 + i);
        let _ = store.admit(&org, Charge::points(1), at).await;
        let method = if i % 3 == 0 { "OTHER" } else { "GET" };
        let call = CallRecord::new(at, method, &format!("/v1/x/{i}?q={pad}&i={i}"));
        store.record(&org, call).await.expect("memory");
    }
    store.close().expect("close");
    let used = file_bytes(store.database());
    let empty = {
        let dir = state_dir("bounded-empty");
        let store = open(&dir, &clock);
        store.close().expect("close");
        file_bytes(store.database())
    };
    let bytes = used.saturating_sub(empty);
    println!("one hostile org: {bytes} bytes of the file's pages (bound {FILE_BYTES_PER_ORG})");
    assert!(bytes <= FILE_BYTES_PER_ORG, "{bytes} bytes for one org");
}

/// The bytes of the database's pages in use (its size, less free pages).
fn file_bytes(database: &std::path::Path) -> u64 {
    let connection = rusqlite::Connection::open(database).expect("open");
    let pragma = |name: &str| -> i64 {
        connection
            .pragma_query_value(None, name, |row| row.get(0))
            .expect("a pragma")
    };
    let pages = pragma("page_count") - pragma("freelist_count");
    u64::try_from(pages * pragma("page_size")).expect("positive")
}

#[tokio::test]
async fn a_restart_keeps_a_rate_until_its_bucket_is_full() {
    let dir = state_dir("rate");
    let policy = Policy::from_toml_str(
        r#"
[[plans.smooth.limits]]
name = "rate"
dimension = "requests"
rate = { amount = 1, per = "second", burst = 10 }

[[orgs]]
id = "acme"
plan = "smooth"
"#,
        "durable-rate.toml".as_ref(),
    )
    .expect("a valid policy");
    let org = acme(&policy);
    let clock = ManualClock::new(Timestamp::from_secs(T0));
    {
        let store = open(&dir, &clock);
        for _ in 0..10 {
            let decision = store
                .admit(&org, Charge::default(), Timestamp::from_secs(T0))
                .await;
            assert!(decision.expect("memory").is_admitted());
        }
        store.close().expect("a graceful stop writes everything");
    }
    // Three seconds later, three units are back: not ten (a fresh bucket), not none.
    let later = Timestamp::from_secs(T0 + 3);
    let store = open(&dir, &ManualClock::new(later));
    let statuses = store.peek(&org, later).await.expect("memory");
    assert_eq!(statuses[0].remaining, 3);
    assert_eq!(statuses[0].full_at, Some(Timestamp::from_secs(T0 + 10)));
    store.close().expect("close");
    drop(store);
    // Once full, nothing of it need be kept.
    let full = Timestamp::from_secs(T0 + 60);
    let store = open(&dir, &ManualClock::new(full));
    assert_eq!(
        store.peek(&org, full).await.expect("memory")[0].remaining,
        10
    );
}
