//! Arbitrary text as a policy file: loading never panics, and an error that names a line and a
//! column names a place inside the text. A policy that loads is then used once per org (a ledger
//! admission and its statuses, a route lookup), so that the numbers any valid file can set go
//! through the engine's arithmetic too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollhouse_core::{Charge, Ledger, Policy, PolicyError, Timestamp};

/// The path the loader's errors name.
const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = utf8_prefix(data);
    match Policy::from_toml_str(text, ORIGIN.as_ref()) {
        Ok(policy) => use_policy(&policy),
        Err(error) => check_place(text, &error),
    }
});

/// The longest prefix of `data` that is UTF-8 (mutations that break a character keep the rest).
fn utf8_prefix(data: &[u8]) -> &str {
    match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&data[..error.valid_up_to()]).expect("a valid prefix"),
    }
}

/// An error's `line:column` is 1-based and inside `text` (the column may point one past the last
/// character of its line, where a missing value or an unclosed string is reported).
fn check_place(text: &str, error: &PolicyError) {
    let PolicyError::File { line, column, .. } = *error else {
        return;
    };
    let shown = error.to_string();
    let expected = format!("{ORIGIN}:{line}:{column}: ");
    assert!(
        shown.starts_with(&expected),
        "{shown:?} does not start with {expected:?}"
    );
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "line {line} of a text of {} lines: {shown}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        (1..=width + 1).contains(&column),
        "column {column} of line {line}, which has {width} characters: {shown}"
    );
}

/// Admits one request for every org of a loaded policy and reads the numbers back.
fn use_policy(policy: &Policy) {
    let now = Timestamp::from_secs(1_800_000_000);
    for definition in policy.org_definitions() {
        let Some(org) = policy.org(definition.id().as_str()) else {
            panic!("org {:?} was defined but not resolved", definition.id());
        };
        let mut ledger = Ledger::new(org);
        let verdict = ledger.admit(org, Charge::default(), now);
        let statuses = verdict.statuses(org);
        assert_eq!(statuses.len(), org.limits().len());
        for status in statuses {
            assert!(status.remaining <= status.limit, "{status:?}");
        }
    }
    let _ = policy.treatment("GET", "/v1/items/7?x=1");
}
