//! What one org can make the memory store hold, counted in heap bytes by a counting allocator:
//! a hostile caller sending long paths, random queries and invented methods, admitted and
//! rejected, makes the store hold no more than the documented bound per org, however long it goes
//! on; and a quiet org's state goes once it has nothing left to show.

use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tollhouse_core::usage::{CallRecord, Outcome, bytes_per_org_bound};
use tollhouse_core::{Charge, MemoryStore, Policy, ResolvedOrg, Timestamp};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const T0: i64 = 1_800_000_000;

fn org(calls_kept: usize) -> (Policy, Arc<ResolvedOrg>) {
    let policy = Policy::from_toml_str(
        &format!(
            r#"
[server]
calls_kept = {calls_kept}

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{{ window = "minute", capacity = 100 }}, {{ window = "day", capacity = 2000 }}]

[[orgs]]
id = "mallory"
plan = "build"
keys = ["mallory-key-1"]
"#
        ),
        "bounds.toml".as_ref(),
    )
    .expect("a valid policy");
    let org = Arc::clone(policy.org("mallory").expect("defined"));
    (policy, org)
}

/// A hostile call: a path of up to 60 KB with a random query and an invented method now and then.
fn hostile(i: u64, at: Timestamp) -> CallRecord {
    let method = if i.is_multiple_of(7) { "OTHER" } else { "GET" };
    let pad = "x".repeat(usize::try_from(i % 61).unwrap_or(0) * 1000);
    let mut call = CallRecord::new(at, method, &format!("/v1/items/{i}?q={pad}&n={i}"));
    if i.is_multiple_of(3) {
        call.outcome = Outcome::Rejected {
            limit: Arc::from("points"),
        };
        call.logged = i.is_multiple_of(9);
    }
    call
}

/// The allocator counts every thread: one test at a time, each holding this for its whole run.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Net heap bytes held after `work`.
fn held_after(work: impl FnOnce()) -> i64 {
    let region = Region::new(ALLOCATOR);
    work();
    let change = region.change();
    // A reallocation's growth is counted in `bytes_allocated` too, and freed in
    // `bytes_deallocated`: what is held is their difference.
    i64::try_from(change.bytes_allocated).unwrap_or(i64::MAX)
        - i64::try_from(change.bytes_deallocated).unwrap_or(i64::MAX)
}

#[test]
fn a_hostile_org_holds_no_more_than_the_bound() {
    let _serial = serial();
    for calls_kept in [100, 1_000] {
        let (_policy, org) = org(calls_kept);
        let store = MemoryStore::with_calls_kept(calls_kept);
        let mut i = 0u64;
        let mut step = |count: u64| {
            for _ in 0..count {
                let at = Timestamp::from_millis(T0 * 1000 + i64::try_from(i).unwrap_or(0));
                let _ = store.admit_now(&org, Charge::points(1 + i % 5), at);
                store.record_now(&org, hostile(i, at));
                i += 1;
            }
        };
        // The first call of the process sets up what every org shares (zone data, thread-local
        // memos): counted once, outside the org's bytes.
        step(1);
        let first = held_after(|| step(20_000));
        let bound = i64::try_from(bytes_per_org_bound(calls_kept)).unwrap_or(i64::MAX);
        assert!(
            first <= bound,
            "calls_kept {calls_kept}: {first} bytes held for one org, over the bound of {bound}"
        );
        // However long it goes on, it holds no more.
        let more = held_after(|| step(20_000));
        assert!(
            more <= 16 * 1024,
            "calls_kept {calls_kept}: {more} more bytes after 20,000 more calls"
        );
        println!("calls_kept {calls_kept}: {first} bytes held (bound {bound}), then {more} more");
    }
}

#[test]
fn quiet_orgs_hold_nothing_once_their_billing_days_have_passed() {
    let _serial = serial();
    let policy = Policy::from_toml_str(
        &(0..1_000).fold(
            String::from(
                "[[plans.build.limits]]\nname = \"points\"\ndimension = \"points\"\n\
                 tiers = [{ window = \"minute\", capacity = 100 }]\n",
            ),
            |text, n| text + &format!("[[orgs]]\nid = \"org-{n}\"\nplan = \"build\"\n"),
        ),
        "quiet.toml".as_ref(),
    )
    .expect("a valid policy");
    let orgs: Vec<Arc<ResolvedOrg>> = (0..1_000)
        .map(|n| Arc::clone(policy.org(&format!("org-{n}")).expect("defined")))
        .collect();
    let store = MemoryStore::new();
    let at = Timestamp::from_secs(T0);
    let warm = Arc::clone(&orgs[0]);
    let _ = store.admit_now(&warm, Charge::points(1), at);
    let mut busy = 0;
    let held = held_after(|| {
        busy = held_after(|| {
            for (n, org) in orgs.iter().enumerate() {
                let _ = store.admit_now(org, Charge::points(1), at);
                store.record_now(org, hostile(u64::try_from(n).unwrap_or(0), at));
            }
        });
        assert_eq!(store.tracked_orgs(), 1_000);
        // 33 days later every window and every billing day is behind them.
        store.sweep(Timestamp::from_secs(T0 + 33 * 86_400));
    });
    assert_eq!(store.tracked_orgs(), 0);
    assert_eq!(store.usage_orgs(), 0);
    // What the orgs held is gone; the maps keep their capacity (a slot per org seen at once) and
    // a few entries wait for the maps' deferred reclamation.
    println!("1,000 orgs held {busy} bytes, and {held} after the sweep");
    assert!(
        held <= 1_000 * 512 && held * 4 <= busy,
        "{held} bytes still held for 1,000 quiet orgs (they held {busy})"
    );
}
