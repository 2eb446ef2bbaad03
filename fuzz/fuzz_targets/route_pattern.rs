//! Arbitrary route rules and paths: parsing and matching never panic, a rule matches the paths
//! built from its own segments, and `covers` keeps its promise: when rule `a` covers rule `b`, `a`
//! matches every request `b` matches (checked on paths built from `b`'s segments and on `b`'s own
//! template).
//!
//! The input is lines: rule `a` (`METHOD /pattern`), rule `b`, a request path, then the segments
//! that fill `b`'s parameters and rest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollhouse_core::{RoutePattern, RouteRule, Treatment};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let a_spec = lines.next().unwrap_or_default();
    let b_spec = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let fills: Vec<&str> = lines.collect();

    // A pattern matches its own text, as it matches the template axum reports for its route.
    if let Ok(pattern) = RoutePattern::parse(path) {
        assert!(
            pattern.matches(path),
            "{pattern:?} does not match its own text"
        );
    }
    let a = RouteRule::parse(a_spec, Treatment::default());
    if let Ok(a) = &a {
        let _ = a.matches("GET", path);
        let _ = a.matches("HEAD", path);
        let shown = a.to_string();
        let again = RouteRule::parse(&shown, Treatment::default()).expect("a rule's own text");
        assert_eq!(&again, a, "{shown:?} parses to another rule");
    }
    let (Ok(a), Ok(b)) = (a, RouteRule::parse(b_spec, Treatment::default())) else {
        return;
    };
    let method = b.method().unwrap_or("DELETE").to_owned();
    let built = path_of(b.pattern(), &fills);
    assert!(
        b.matches(&method, &built),
        "{b} does not match {method} {built:?}, built from its own segments"
    );
    if a.covers(&b) {
        assert!(
            a.matches(&method, &built),
            "{a} covers {b}, which matches {method} {built:?}, but {a} does not"
        );
        let template = b.pattern().as_str();
        if b.matches(&method, template) {
            assert!(
                a.matches(&method, template),
                "{a} covers {b}, which matches its template {template:?}, but {a} does not"
            );
        }
    }
});

/// `fill` without the characters a path segment cannot hold (`/`, and `?` or `#`, which end it).
fn clean(fill: &str) -> String {
    fill.chars()
        .filter(|c| !matches!(c, '/' | '?' | '#'))
        .collect()
}

/// A path that `pattern` matches: its literal segments as written, a non-empty filled segment for
/// each `{param}`, and up to three segments (empty ones too) for a `{*rest}`.
fn path_of(pattern: &RoutePattern, fills: &[&str]) -> String {
    let rest = pattern.as_str().strip_prefix('/').unwrap_or_default();
    if rest.is_empty() {
        return "/".to_owned();
    }
    let mut fills = fills.iter();
    let mut parts: Vec<String> = Vec::new();
    for part in rest.split('/') {
        if part.starts_with("{*") {
            parts.extend(fills.by_ref().take(3).map(|fill| clean(fill)));
        } else if part.starts_with('{') {
            let fill = fills.next().map(|fill| clean(fill)).unwrap_or_default();
            parts.push(if fill.is_empty() {
                "x".to_owned()
            } else {
                fill
            });
        } else {
            parts.push(part.to_owned());
        }
    }
    // One empty segment alone would read as the root path, which has none: `//{*rest}` with
    // nothing for the rest is matched by `//`.
    if parts == [""] {
        parts.push(String::new());
    }
    format!("/{}", parts.join("/"))
}
