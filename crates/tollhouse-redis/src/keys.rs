//! Where an org's state lives in Redis: every key starts with the prefix and the org's hash tag.
//!
//! ```text
//! {prefix}{org}:l:<limit>:<window>:<start ms>   a tier's counter in the window starting then
//! {prefix}{org}:l:<limit>:rate:<A>/<per>/<B>   a rate's state (its theoretical arrival time)
//! {prefix}{org}:w                              index of the org's live counters (for reset)
//! {prefix}{org}:c                              leases of requests in flight
//! {prefix}{org}:g / :gx                        quota grants held, and when each lapses
//! {prefix}{org}:f                              requests in flight admitted from grants, per instance
//! {prefix}{org}:u:log                          the last N calls, newest first
//! {prefix}{org}:u:today                        the org's current local date
//! {prefix}{org}:u:d:<date>                     billable (b) and admitted (a) calls of a date
//! {prefix}{org}:u:e:<date> / :u:p:<date>       calls / points per endpoint of a date
//! {prefix}{org}:u:r:<date>                     identical requests of a date
//! ```
//!
//! Names taken from the policy (the org id, limit names) are escaped so that `:`, `{` and `}` in
//! them can neither break the hash tag nor make two keys collide.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::NaiveDate;
use tollhouse_core::{OrgId, Rate, Timestamp, Window};

/// Escapes `%`, `:`, `{` and `}` as `%25`, `%3A`, `%7B` and `%7D`.
pub(crate) fn escape(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', ':', '{', '}']) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The hash tag of an org: its escaped id, never empty (an empty tag would not be one).
pub(crate) fn tag(org: &OrgId) -> Cow<'_, str> {
    if org.as_str().is_empty() {
        return Cow::Borrowed("%");
    }
    escape(org.as_str())
}

/// The keys of one org.
#[derive(Clone, Debug)]
pub(crate) struct OrgKeys {
    /// `{prefix}{tag}`: the start of every key of the org.
    base: String,
}

impl OrgKeys {
    pub(crate) fn new(prefix: &str, org: &OrgId) -> Self {
        let tag = tag(org);
        let mut base = String::with_capacity(prefix.len() + tag.len() + 2);
        base.push_str(prefix);
        base.push('{');
        base.push_str(&tag);
        base.push('}');
        Self { base }
    }

    fn with(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.base.len() + suffix.len());
        key.push_str(&self.base);
        key.push_str(suffix);
        key
    }

    /// The sorted set of leases of requests in flight.
    pub(crate) fn leases(&self) -> String {
        self.with(":c")
    }

    /// The sorted set of the org's counters, scored by their window's end.
    pub(crate) fn index(&self) -> String {
        self.with(":w")
    }

    /// The quota grants instances hold: grant id -> what it charged to which counter.
    pub(crate) fn grants(&self) -> String {
        self.with(":g")
    }

    /// When each quota grant lapses (sorted set: grant id -> Redis server ms).
    pub(crate) fn grant_lapses(&self) -> String {
        self.with(":gx")
    }

    /// Requests in flight that instances admitted from their grants: instance -> count.
    pub(crate) fn granted_in_flight(&self) -> String {
        self.with(":f")
    }

    /// The start shared by the counters of one limit (with `:` at the end), or of all of them.
    pub(crate) fn counters_of(&self, limit: Option<&str>) -> String {
        match limit {
            Some(limit) => {
                let limit = escape(limit);
                let mut key = self.with(":l:");
                key.push_str(&limit);
                key.push(':');
                key
            }
            None => self.with(":l:"),
        }
    }

    /// The state of a rate limit (its theoretical arrival time, µs on Redis's clock), named by the
    /// rate the org's policy declares (`rate:10/second/20`): a reload that changes the rate starts
    /// it fresh, as the memory store's ledger does. Under the limit's counters, so that a reset
    /// finds it.
    pub(crate) fn rate(&self, limit: &str, rate: Rate) -> String {
        let mut key = self.counters_of(Some(limit));
        let _ = write!(
            key,
            "rate:{}/{}/{}",
            rate.amount(),
            rate.per().item_str(),
            rate.burst()
        );
        key
    }

    /// The counter of a limit's tier in the window starting at `start`.
    pub(crate) fn counter(&self, limit: &str, window: Window, start: Timestamp) -> String {
        let mut key = self.counters_of(Some(limit));
        key.push_str(window.item_str());
        key.push(':');
        let _ = write!(key, "{}", start.as_millis());
        key
    }

    /// The call log.
    pub(crate) fn log(&self) -> String {
        self.with(":u:log")
    }

    /// The org's current local date.
    pub(crate) fn today(&self) -> String {
        self.with(":u:today")
    }

    fn dated(&self, kind: &str, date: NaiveDate) -> String {
        let mut key = self.with(kind);
        let _ = write!(key, "{date}");
        key
    }

    /// Billable and admitted calls of a date.
    pub(crate) fn day(&self, date: NaiveDate) -> String {
        self.dated(":u:d:", date)
    }

    /// Calls per endpoint of a date.
    pub(crate) fn endpoint_calls(&self, date: NaiveDate) -> String {
        self.dated(":u:e:", date)
    }

    /// Points per endpoint of a date.
    pub(crate) fn endpoint_points(&self, date: NaiveDate) -> String {
        self.dated(":u:p:", date)
    }

    /// Identical requests of a date: a sorted set of entry hashes by count.
    pub(crate) fn repeated(&self, date: NaiveDate) -> String {
        self.dated(":u:r:", date)
    }

    /// What each identical request of a date is: entry hash -> `first last method\npath`.
    pub(crate) fn repeated_info(&self, date: NaiveDate) -> String {
        self.dated(":u:ri:", date)
    }
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, or of the whole key), as
/// `CLUSTER KEYSLOT` computes it.
pub fn cluster_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(keys: &OrgKeys) -> Vec<String> {
        let date = NaiveDate::from_ymd_opt(2026, 3, 8).expect("date");
        vec![
            keys.leases(),
            keys.index(),
            keys.counter("daily", Window::Day, Timestamp::from_secs(86_400)),
            keys.counter("a:b{c}", Window::Minute, Timestamp::from_secs(60)),
            keys.log(),
            keys.today(),
            keys.day(date),
            keys.endpoint_calls(date),
            keys.endpoint_points(date),
            keys.repeated(date),
            keys.repeated_info(date),
        ]
    }

    #[test]
    fn every_key_of_an_org_is_in_one_slot() {
        for org in ["acme", "a}c{me", "", "%", "org:with:colons"] {
            let keys = OrgKeys::new("tollhouse:", &OrgId::new(org));
            let slots: Vec<u16> = all(&keys)
                .iter()
                .map(|k| cluster_slot(k.as_bytes()))
                .collect();
            assert!(slots.iter().all(|s| *s == slots[0]), "{org}: {slots:?}");
        }
    }

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"user1000")
        );
        assert_eq!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"foo{}{bar}"));
        assert_ne!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"bar"));
    }

    #[test]
    fn limit_names_cannot_collide() {
        let keys = OrgKeys::new("t:", &OrgId::new("acme"));
        let a = keys.counters_of(Some("a"));
        let ab = keys.counter("a:b", Window::Minute, Timestamp::from_secs(0));
        assert!(!ab.starts_with(&a), "{ab} starts with {a}");
        assert_eq!(escape("50%:{x}"), "50%25%3A%7Bx%7D");
    }
}
