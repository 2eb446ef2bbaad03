//! The rate-limit headers of a metered response.
//!
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`: the most constraining limit
//!   of the org's plan (the lowest remaining share, ties to the first in plan order); on a 429 the
//!   limit that rejected, or the concurrency limit. Limit is the sum of the limit's tiers'
//!   capacities, Remaining what can still be charged now, Reset when Remaining next goes up: epoch
//!   seconds by default, an IMF-fixdate or a delta in seconds as the policy's `reset_format` says.
//! - `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured-field
//!   lists of RFC 9651): one item per tier of every limit, named after the limit (`limit.window`
//!   when it has several tiers), with `q` its capacity and `w` its window's nominal length, and
//!   `r` what that tier still holds and `t` the seconds until it refills; plus an item
//!   `"concurrency"` with `qu="concurrent-requests"` whose `r` is the free slots.
//!   `RateLimit-Policy` is written by the [`sfv`] serializer once per org and plan; `RateLimit`,
//!   which changes on every response, by hand from the items' serialized names and integers (the
//!   unit tests parse it back with `sfv` and compare it with the serializer's output).
//! - `Retry-After` on a 429: whole seconds until enough capacity is back, at least 1.
//!
//! Each family can be switched off with `legacy_headers` / `ietf_headers` in `[server]`. Exempt
//! routes and 401 responses carry none of them.
//!
//! # Example
//!
//! Reading the headers back with a structured-field parser:
//!
//! ```
//! use sfv::{List, ListEntry, Parser};
//! use tollhouse::headers::RATELIMIT_POLICY;
//!
//! let value = r#""points";q=100;w=60, "concurrency";q=3;qu="concurrent-requests""#;
//! let list: List = Parser::new(value).parse()?;
//! let ListEntry::Item(points) = &list[0] else { unreachable!() };
//! assert_eq!(points.params.get("q").and_then(|q| q.as_integer()).map(i64::from), Some(100));
//! assert_eq!(RATELIMIT_POLICY.as_str(), "ratelimit-policy");
//! # Ok::<(), sfv::Error>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use http::header::RETRY_AFTER as RETRY_AFTER_NAME;
use http::{HeaderMap, HeaderName, HeaderValue};
use sfv::{Integer, KeyRef, ListSerializer, StringRef};
use tollhouse_core::{
    Dimension, LimitStatus, ResetFormat, ResolvedOrg, ServerSettings, TierStatus, Timestamp,
    item_name,
};

/// `X-RateLimit-Limit`: the most constraining limit's total capacity.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: what it can still be charged now.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: when Remaining next goes up.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy`: every quota of the plan.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what each quota still holds and when it refills.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `Retry-After`: whole seconds until a rejected request would be admitted.
pub const RETRY_AFTER: HeaderName = RETRY_AFTER_NAME;

/// The name of the concurrency item in `RateLimit-Policy` and `RateLimit`, and the `limit` of a
/// concurrency rejection.
pub use tollhouse_core::CONCURRENCY;

const Q: &KeyRef = KeyRef::constant("q");
const W: &KeyRef = KeyRef::constant("w");
const QU: &KeyRef = KeyRef::constant("qu");
const CONCURRENT_REQUESTS: &StringRef = StringRef::constant("concurrent-requests");
const CONCURRENCY_ITEM: &StringRef = StringRef::constant(CONCURRENCY);

/// An org's concurrency limit and its free slots at the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slots {
    /// Requests in flight at most.
    pub(crate) max: u32,
    /// Slots free after the decision.
    pub(crate) free: u32,
}

impl Slots {
    /// The org's slots, when its plan limits concurrency and `in_flight` is known.
    pub(crate) fn of(org: &ResolvedOrg, in_flight: Option<u32>) -> Option<Self> {
        let max = org.concurrency()?.max();
        Some(Self {
            max,
            free: max.saturating_sub(in_flight?),
        })
    }

    /// `X-RateLimit-*` for a plan whose only limit is concurrency: the slots, reset now while one
    /// is free (as the `RateLimit` item's `t=0` says), else when one may be.
    pub(crate) fn legacy(self, now: Timestamp) -> Legacy {
        Legacy {
            limit: u64::from(self.max),
            remaining: u64::from(self.free),
            reset: if self.free > 0 { now } else { slot_retry(now) },
        }
    }
}

/// The store's hint for when a concurrency slot may be free again.
const SLOT_RETRY_MS: i64 = 1_000;

/// When a concurrency slot may be free again, seen at `now`, when the store gave no time.
pub(crate) fn slot_retry(now: Timestamp) -> Timestamp {
    Timestamp::from_millis(now.as_millis().saturating_add(SLOT_RETRY_MS))
}

/// What `X-RateLimit-*` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Legacy {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset: Timestamp,
}

impl Legacy {
    /// The numbers of a limit.
    pub(crate) fn of(status: &LimitStatus) -> Self {
        Self {
            limit: status.limit,
            remaining: status.remaining,
            reset: status.reset,
        }
    }
}

/// Whether a limit with `remaining` of `limit` left constrains more than `than`: a lower remaining
/// share, compared exactly, without floats (ties stay with `than`).
fn constrains_more(remaining: u64, limit: u64, than: &Legacy) -> bool {
    u128::from(remaining) * u128::from(than.limit.max(1))
        < u128::from(than.remaining) * u128::from(limit.max(1))
}

/// The most constraining limit: the lowest remaining share, ties to the first in plan order (what
/// [`HeaderBuilder::most_constraining`] finds as the limits are added).
#[cfg(test)]
pub(crate) fn most_constraining(statuses: &[LimitStatus]) -> Option<&LimitStatus> {
    let mut best: Option<&LimitStatus> = None;
    for status in statuses {
        if best.is_none_or(|current| {
            constrains_more(status.remaining, status.limit, &Legacy::of(current))
        }) {
            best = Some(status);
        }
    }
    best
}

/// Seconds from `now` to `at`, rounded up, never negative.
pub(crate) fn secs_until(at: Timestamp, now: Timestamp) -> u64 {
    let millis = u64::try_from(at.millis_since(now).max(0)).unwrap_or(0);
    millis.div_ceil(1000)
}

fn integer(value: u64) -> Integer {
    Integer::try_from(value).unwrap_or(Integer::MAX)
}

/// The largest sf-integer (RFC 9651: at most 15 digits); larger values are written as it, as
/// [`integer`] does.
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// Appends `value` in decimal.
fn put_u64(buffer: &mut Vec<u8>, value: u64) {
    buffer.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends `value` as an sf-integer (clamped like [`integer`]).
fn put_sf_integer(buffer: &mut Vec<u8>, value: u64) {
    put_u64(buffer, value.min(SF_INTEGER_MAX));
}

fn limit_name<'a>(org: &'a ResolvedOrg, status: &LimitStatus) -> &'a str {
    org.limits()
        .get(status.index)
        .map_or("", |limit| limit.name())
}

/// The names of the `RateLimit-Policy` items of one rejected limit that `violated-policies` lists:
/// every tier's, or for a latency budget, the tiers with no time left.
pub(crate) fn item_names(org: &ResolvedOrg, status: &LimitStatus) -> Vec<String> {
    let name = limit_name(org, status);
    let tiers = status.tiers();
    // A rejected request or points limit lacks the charge in every tier; a latency budget is
    // refused because its tiers hold nothing together, which leaves out a tier with time left.
    let latency = org
        .limits()
        .get(status.index)
        .is_some_and(|limit| limit.dimension() == Dimension::LatencyMs);
    let empty: Vec<&TierStatus> = tiers
        .iter()
        .filter(|tier| !latency || tier.remaining == 0)
        .collect();
    let listed = if empty.is_empty() {
        tiers.iter().collect()
    } else {
        empty
    };
    listed
        .into_iter()
        .map(|tier| item_name(name, tiers.len(), tier.window).into_owned())
        .collect()
}

fn header(value: Option<String>) -> Option<HeaderValue> {
    value.and_then(|value| HeaderValue::try_from(value).ok())
}

/// What the headers of an org's responses share while its plan and capacities stay the same: the
/// item names and the whole `RateLimit-Policy` value. The engine caches one per org.
#[derive(Debug)]
pub(crate) struct Quotas {
    layout: u64,
    capacities: Vec<u64>,
    concurrency: Option<u32>,
    /// One `RateLimit` item start per tier item, in header order: the name as the `sfv` serializer
    /// writes it, then `;r=`.
    prefixes: Vec<Box<str>>,
    /// The prefixes' total length.
    prefix_bytes: usize,
    policy: Option<HeaderValue>,
    /// The key of the org's `tollhouse_in_flight` gauge (kept here, with the org's other per-request
    /// constants, so that moving the gauge does not build its labels).
    pub(crate) in_flight: metrics::Key,
    /// Rejections logged in full this second: the second in the high bits, the count in the low 8.
    rejections_logged: AtomicU64,
}

/// Rejections of one org logged in full per second; past them, a rejection is only counted
/// (billing, endpoints, repeated requests), not written to the call log.
pub const REJECTIONS_LOGGED_PER_SECOND: u64 = 10;

/// The start of the concurrency item of `RateLimit`.
const CONCURRENCY_PREFIX: &str = "\"concurrency\";r=";

impl Quotas {
    /// The quotas of `org` at `now` (capacities can change with time: an override ends).
    pub(crate) fn new(org: &ResolvedOrg, now: Timestamp) -> Self {
        let mut prefixes = Vec::new();
        let mut capacities = Vec::new();
        let mut list = ListSerializer::new();
        for limit in org.limits() {
            let tiers = limit.tiers();
            for (index, tier) in tiers.iter().enumerate() {
                let capacity = limit.capacity(index, now);
                capacities.push(capacity);
                let item = item_name(limit.name(), tiers.len(), tier.window());
                // Limit names are letters, digits, '_', '-' and '.': always valid sf-strings.
                let Ok(item) = sfv::String::try_from(item.into_owned()) else {
                    continue;
                };
                let _ = list
                    .bare_item(&*item)
                    .parameter(Q, integer(capacity))
                    .parameter(W, integer(window_secs(limit, tier.window(), now)));
                let mut name = ListSerializer::new();
                let _ = name.bare_item(&*item);
                let mut prefix = name.finish().unwrap_or_default();
                prefix.push_str(";r=");
                prefixes.push(prefix.into_boxed_str());
            }
        }
        let concurrency = org.concurrency().map(|concurrency| concurrency.max());
        if let Some(max) = concurrency {
            let _ = list
                .bare_item(CONCURRENCY_ITEM)
                .parameter(Q, integer(u64::from(max)))
                .parameter(QU, CONCURRENT_REQUESTS);
        }
        Self {
            layout: org.layout(),
            capacities,
            concurrency,
            prefix_bytes: prefixes.iter().map(|prefix| prefix.len()).sum(),
            prefixes,
            policy: header(list.finish()),
            in_flight: crate::telemetry::in_flight_key(org, true),
            rejections_logged: AtomicU64::new(0),
        }
    }

    /// Whether a rejection at `now` goes into the call log: the first
    /// [`REJECTIONS_LOGGED_PER_SECOND`] of each second do.
    pub(crate) fn log_rejection(&self, now: Timestamp) -> bool {
        let second = u64::try_from(now.as_millis().div_euclid(1000)).unwrap_or(0) & (u64::MAX >> 8);
        let mut current = self.rejections_logged.load(Ordering::Relaxed);
        loop {
            let next = if current >> 8 == second {
                if current & 0xff >= REJECTIONS_LOGGED_PER_SECOND {
                    return false;
                }
                current + 1
            } else {
                (second << 8) | 1
            };
            match self.rejections_logged.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// These quotas with the org's in-flight gauge in the one series all orgs share
    /// (`metrics_org_label = false`).
    pub(crate) fn without_org_label(mut self, org: &ResolvedOrg) -> Self {
        self.in_flight = crate::telemetry::in_flight_key(org, false);
        self
    }

    /// Whether these quotas have `org`'s limits, tiers and concurrency (capacities are checked as
    /// the headers are written: see [`HeaderBuilder::fits`]).
    pub(crate) fn shape_fits(&self, org: &ResolvedOrg) -> bool {
        self.layout == org.layout()
            && self.concurrency == org.concurrency().map(|concurrency| concurrency.max())
    }

    /// Whether these quotas still describe `org` as `statuses` show it.
    pub(crate) fn fits(&self, org: &ResolvedOrg, statuses: &[LimitStatus]) -> bool {
        self.shape_fits(org)
            && self.capacities.iter().copied().eq(statuses
                .iter()
                .flat_map(|status| status.tiers().iter().map(|tier| tier.capacity)))
    }
}

/// The `w` of an item: a tier's nominal window, or the seconds a rate's empty bucket takes to
/// fill (⌈burst · per / amount⌉).
fn window_secs(
    limit: &tollhouse_core::ResolvedLimit,
    window: tollhouse_core::Window,
    now: Timestamp,
) -> u64 {
    limit
        .rate(now)
        .map_or_else(|| window.nominal_secs(), |rate| rate.fill_secs())
}

/// `X-RateLimit-Reset` in the configured format, appended to `buffer`.
fn put_reset(buffer: &mut Vec<u8>, format: ResetFormat, reset: Timestamp, now: Timestamp) {
    match format {
        ResetFormat::Epoch => {
            buffer.extend_from_slice(itoa::Buffer::new().format(reset.as_secs_ceil()).as_bytes());
        }
        ResetFormat::Delta => put_u64(buffer, secs_until(reset, now)),
        ResetFormat::HttpDate => {
            // An IMF-fixdate has a four-digit year: instants past 9999 are written as its end
            // (and before 1970 as the epoch), never a panic.
            const LAST_HTTP_DATE: u64 = 253_402_300_799;
            let secs = u64::try_from(reset.as_secs_ceil())
                .unwrap_or(0)
                .min(LAST_HTTP_DATE);
            let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            buffer.extend_from_slice(date.as_bytes());
        }
    }
}

/// Writes the values of a [`HeaderSet`] limit by limit, so that a decision's numbers are computed,
/// written and dropped one limit at a time.
///
/// `RateLimit` comes first in the buffer, then the three `X-RateLimit-*` values once the most
/// constraining limit is known; every value is a part of the one buffer, copied out when the
/// headers are written.
#[derive(Debug)]
pub(crate) struct HeaderBuilder<'a> {
    server: &'a ServerSettings,
    quotas: &'a Quotas,
    now: Timestamp,
    buffer: Vec<u8>,
    /// Tier items seen so far.
    tiers: usize,
    /// Whether every tier so far had the capacity `quotas` was built with.
    fits: bool,
    /// The most constraining limit so far.
    most: Option<Legacy>,
}

impl<'a> HeaderBuilder<'a> {
    pub(crate) fn new(server: &'a ServerSettings, quotas: &'a Quotas, now: Timestamp) -> Self {
        // Room for the longest values: every number at its widest, an HTTP date for the reset.
        const NUMBER: usize = 20;
        let capacity = if server.legacy_headers {
            2 * NUMBER + 29
        } else {
            0
        } + if server.ietf_headers {
            quotas.prefix_bytes
                + (quotas.prefixes.len() + 1) * (", ;t=".len() + 2 * NUMBER)
                + CONCURRENCY_PREFIX.len()
        } else {
            0
        };
        Self {
            server,
            quotas,
            now,
            buffer: Vec::with_capacity(capacity),
            tiers: 0,
            fits: true,
            most: None,
        }
    }

    /// Adds the next limit of the plan, in plan order.
    pub(crate) fn limit(&mut self, status: &LimitStatus) {
        if self
            .most
            .as_ref()
            .is_none_or(|most| constrains_more(status.remaining, status.limit, most))
        {
            self.most = Some(Legacy::of(status));
        }
        for tier in status.tiers() {
            let at = self.tiers;
            self.tiers += 1;
            if self.quotas.capacities.get(at) != Some(&tier.capacity) {
                self.fits = false;
            }
            if !self.server.ietf_headers {
                continue;
            }
            let Some(prefix) = self.quotas.prefixes.get(at) else {
                continue;
            };
            if !self.buffer.is_empty() {
                self.buffer.extend_from_slice(b", ");
            }
            self.buffer.extend_from_slice(prefix.as_bytes());
            put_sf_integer(&mut self.buffer, tier.remaining);
            self.buffer.extend_from_slice(b";t=");
            put_sf_integer(&mut self.buffer, secs_until(tier.reset, self.now));
        }
    }

    /// Whether the quotas matched every limit added: if not, `RateLimit-Policy` must come from
    /// quotas built afresh (the names, and so `RateLimit`, are right either way).
    pub(crate) fn fits(&self) -> bool {
        self.fits && self.tiers == self.quotas.capacities.len()
    }

    /// The most constraining limit added.
    pub(crate) fn most_constraining(&self) -> Option<Legacy> {
        self.most
    }

    /// The headers: `RateLimit-Policy` from `quotas`, `X-RateLimit-*` from `legacy`, the
    /// concurrency item from `slots` (`slot_retry` being when a slot may be free), and
    /// `Retry-After` if `retry_after` is given.
    pub(crate) fn finish(
        mut self,
        quotas: &Quotas,
        legacy: Option<Legacy>,
        slots: Option<Slots>,
        slot_retry: Timestamp,
        retry_after: Option<u64>,
    ) -> HeaderSet {
        let server = self.server;
        let now = self.now;
        let buffer = &mut self.buffer;
        if server.ietf_headers
            && let Some(slots) = slots
        {
            // A slot frees when some request ends, which nobody knows in advance: 0 while one is
            // free, otherwise the store's retry hint.
            let t = if slots.free > 0 {
                0
            } else {
                secs_until(slot_retry, now).max(1)
            };
            if !buffer.is_empty() {
                buffer.extend_from_slice(b", ");
            }
            buffer.extend_from_slice(CONCURRENCY_PREFIX.as_bytes());
            put_sf_integer(buffer, u64::from(slots.free));
            buffer.extend_from_slice(b";t=");
            put_sf_integer(buffer, t);
        }
        let ratelimit = buffer.len();
        let legacy = legacy.filter(|_| server.legacy_headers).map(|legacy| {
            put_u64(buffer, legacy.limit);
            let limit = buffer.len();
            put_u64(buffer, legacy.remaining);
            let remaining = buffer.len();
            put_reset(buffer, server.reset_format, legacy.reset, now);
            [limit, remaining, buffer.len()]
        });
        HeaderSet {
            values: self.buffer,
            ratelimit,
            legacy,
            policy: quotas.policy.clone().filter(|_| server.ietf_headers),
            retry_after,
        }
    }
}

/// The rate-limit headers of one response, computed at the decision and written into the response
/// by [`apply`](Self::apply).
#[derive(Clone, Debug, Default)]
pub(crate) struct HeaderSet {
    /// `RateLimit` (`..ratelimit`), then `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    values: Vec<u8>,
    ratelimit: usize,
    /// Where the three `X-RateLimit-*` values end, if they are sent.
    legacy: Option<[usize; 3]>,
    policy: Option<HeaderValue>,
    retry_after: Option<u64>,
}

/// Everything a [`HeaderSet`] is computed from, when every limit's numbers are at hand.
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    pub(crate) server: &'a ServerSettings,
    pub(crate) quotas: &'a Quotas,
    pub(crate) statuses: &'a [LimitStatus],
    /// What `X-RateLimit-*` shows (the most constraining or the rejecting limit).
    pub(crate) legacy: Option<Legacy>,
    pub(crate) slots: Option<Slots>,
    /// When a concurrency slot may be free (the store's hint), for the concurrency item's `t`.
    pub(crate) slot_retry: Timestamp,
    /// Seconds for `Retry-After`, on a rejection.
    pub(crate) retry_after: Option<u64>,
    pub(crate) now: Timestamp,
}

impl HeaderSet {
    /// Computes the headers the server settings ask for.
    pub(crate) fn new(inputs: &Inputs<'_>) -> Self {
        let mut builder = HeaderBuilder::new(inputs.server, inputs.quotas, inputs.now);
        for status in inputs.statuses {
            builder.limit(status);
        }
        builder.finish(
            inputs.quotas,
            inputs.legacy,
            inputs.slots,
            inputs.slot_retry,
            inputs.retry_after,
        )
    }

    /// Writes the headers into `headers`, replacing any of the same names.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        // What is added, and room for the `content-length` the server adds after the layer: a map
        // that must grow grows once, here, while it holds the handler's few headers, rather than
        // once they are joined by these (which it would then copy).
        let ratelimit = self.ratelimit > 0;
        let count = self.legacy.map_or(0, |legacy| legacy.len())
            + usize::from(self.policy.is_some())
            + usize::from(ratelimit)
            + usize::from(self.retry_after.is_some());
        headers.reserve(count + 1);
        // Every value is a copy of a part of `values`, which holds only digits and the names the
        // `sfv` serializer wrote, so none fails the header-value check. A copy of its own rather
        // than a shared slice: a small allocation costs less than the reference count that every
        // slice of one buffer would increment and decrement, an atomic operation each.
        let value = |from: usize, to: usize| {
            self.values
                .get(from..to)
                .and_then(|part| HeaderValue::from_bytes(part).ok())
        };
        if let Some([limit, remaining, reset]) = self.legacy {
            let start = self.ratelimit;
            if let Some(value) = value(start, limit) {
                headers.insert(X_RATELIMIT_LIMIT, value);
            }
            if let Some(value) = value(limit, remaining) {
                headers.insert(X_RATELIMIT_REMAINING, value);
            }
            if let Some(value) = value(remaining, reset) {
                headers.insert(X_RATELIMIT_RESET, value);
            }
        }
        if let Some(policy) = self.policy {
            headers.insert(RATELIMIT_POLICY, policy);
        }
        if ratelimit && let Some(value) = value(0, self.ratelimit) {
            headers.insert(RATELIMIT, value);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use sfv::{BareItem, KeyRef, List, ListEntry, Parser};
    use tollhouse_core::{
        Charge, Concurrency, Dimension, Ledger, Limit, LimitZone, Org, Plan, Policy, Tier, Window,
    };

    use super::*;

    fn policy() -> Policy {
        let points = Limit::new(
            "points",
            Dimension::Points,
            LimitZone::Org,
            vec![Tier::new(Window::Minute, 100).expect("tier")],
        )
        .expect("limit");
        let count = Limit::new(
            "count",
            Dimension::Requests,
            LimitZone::Server,
            vec![
                Tier::new(Window::Minute, 10).expect("tier"),
                Tier::new(Window::Hour, 20).expect("tier"),
            ],
        )
        .expect("limit");
        let plan = Plan::new("build", vec![points, count])
            .expect("plan")
            .with_concurrency(Concurrency::new(3, StdDuration::ZERO).expect("concurrency"));
        Policy::builder()
            .plan(plan)
            .org(Org::new("acme", "build"))
            .build()
            .expect("policy")
    }

    const R: &KeyRef = KeyRef::constant("r");
    const T: &KeyRef = KeyRef::constant("t");

    /// `RateLimit` as the `sfv` serializer writes it: what the hand-written encoder must match.
    fn reference_ratelimit(
        org: &ResolvedOrg,
        statuses: &[LimitStatus],
        slots: Option<Slots>,
        slot_retry: Timestamp,
        now: Timestamp,
    ) -> Option<String> {
        let mut list = ListSerializer::new();
        for status in statuses {
            let name = limit_name(org, status);
            for tier in status.tiers() {
                let item = item_name(name, status.tiers().len(), tier.window);
                let item = sfv::String::try_from(item.into_owned()).expect("a valid sf-string");
                let _ = list
                    .bare_item(&*item)
                    .parameter(R, integer(tier.remaining))
                    .parameter(T, integer(secs_until(tier.reset, now)));
            }
        }
        if let Some(slots) = slots {
            let t = if slots.free > 0 {
                0
            } else {
                secs_until(slot_retry, now).max(1)
            };
            let _ = list
                .bare_item(CONCURRENCY_ITEM)
                .parameter(R, integer(u64::from(slots.free)))
                .parameter(T, integer(t));
        }
        list.finish()
    }

    fn param(entry: &ListEntry, key: &str) -> Option<BareItem> {
        match entry {
            ListEntry::Item(item) => item.params.get(key).cloned(),
            ListEntry::InnerList(_) => None,
        }
    }

    fn name(entry: &ListEntry) -> String {
        match entry {
            ListEntry::Item(item) => item
                .bare_item
                .as_string()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            ListEntry::InnerList(_) => String::new(),
        }
    }

    #[test]
    fn structured_fields_list_every_tier_and_concurrency() {
        let policy = policy();
        let org = policy.org("acme").expect("org");
        let now = Timestamp::from_millis(1_800_000_030_500);
        let mut ledger = Ledger::new(org);
        let verdict = ledger.admit(org, Charge::points(7), now);
        let statuses = &verdict.statuses(org);
        let mut map = HeaderMap::new();
        HeaderSet::new(&Inputs {
            server: policy.server(),
            quotas: &Quotas::new(org, now),
            statuses,
            legacy: most_constraining(statuses).map(Legacy::of),
            slots: Some(Slots { max: 3, free: 2 }),
            slot_retry: now,
            retry_after: None,
            now,
        })
        .apply(&mut map);

        let policy_list: List = Parser::new(map[RATELIMIT_POLICY].to_str().expect("ascii"))
            .parse()
            .expect("a structured list");
        let names: Vec<String> = policy_list.iter().map(name).collect();
        assert_eq!(
            names,
            ["points", "count.minute", "count.hour", "concurrency"]
        );
        assert_eq!(
            param(&policy_list[0], "q").and_then(|q| q.as_integer()),
            Some(Integer::constant(100))
        );
        assert_eq!(
            param(&policy_list[2], "w").and_then(|w| w.as_integer()),
            Some(Integer::constant(3600))
        );
        assert_eq!(
            param(&policy_list[3], "qu")
                .and_then(|qu| qu.as_string().map(|s| s.as_str().to_owned())),
            Some("concurrent-requests".to_owned())
        );

        let list: List = Parser::new(map[RATELIMIT].to_str().expect("ascii"))
            .parse()
            .expect("a structured list");
        assert_eq!(
            param(&list[0], "r").and_then(|r| r.as_integer()),
            Some(Integer::constant(93))
        );
        // 30.5 s into the minute: 29.5 s left, rounded up.
        assert_eq!(
            param(&list[0], "t").and_then(|t| t.as_integer()),
            Some(Integer::constant(30))
        );
        assert_eq!(
            param(&list[1], "r").and_then(|r| r.as_integer()),
            Some(Integer::constant(9))
        );
        assert_eq!(
            param(&list[3], "r").and_then(|r| r.as_integer()),
            Some(Integer::constant(2))
        );

        // The most constraining: count at 29/30 vs points at 93/100 -> points.
        assert_eq!(map[X_RATELIMIT_LIMIT], "100");
        assert_eq!(map[X_RATELIMIT_REMAINING], "93");
        assert_eq!(map[X_RATELIMIT_RESET], "1800000060");
        assert!(map.get(RETRY_AFTER).is_none());
    }

    /// The hand-written `RateLimit` (and the `X-RateLimit-*` values sharing its buffer) equal what
    /// `sfv` writes and parse back with `sfv`, for every shape of plan and extreme numbers.
    #[test]
    fn the_fast_encoder_matches_sfv_and_parses_back() {
        let big = Limit::new(
            "big-limit_2.x",
            Dimension::Points,
            LimitZone::Org,
            vec![
                Tier::new(Window::Minute, 1_125_899_906_842_624).expect("tier"),
                Tier::new(Window::Day, 999_999_999_999_999).expect("tier"),
                Tier::new(Window::Month, 1_000_000_000_000_000).expect("tier"),
            ],
        )
        .expect("limit");
        let lone = Limit::new(
            "lone",
            Dimension::Requests,
            LimitZone::Org,
            vec![Tier::new(Window::Minute, 1).expect("tier")],
        )
        .expect("limit");
        let plans = [
            Plan::new("a", vec![big.clone(), lone.clone()]).expect("plan"),
            Plan::new("b", vec![lone.clone()])
                .expect("plan")
                .with_concurrency(Concurrency::new(1, StdDuration::ZERO).expect("c")),
            Plan::new("c", vec![big]).expect("plan"),
        ];
        for plan in plans {
            let plan_name = plan.name().to_owned();
            let policy = Policy::builder()
                .plan(plan)
                .org(Org::new("acme", plan_name.as_str()))
                .build()
                .expect("policy");
            let org = policy.org("acme").expect("org");
            for (step, now) in [0_i64, 999, 1_000, 59_999, 86_400_001, 1_800_000_030_500]
                .into_iter()
                .map(Timestamp::from_millis)
                .enumerate()
            {
                let mut ledger = Ledger::new(org);
                let mut verdict = ledger.admit(org, Charge::points(7), now);
                for _ in 0..step {
                    verdict = ledger.admit(org, Charge::points(400_000_000_000_000), now);
                }
                let statuses = &verdict.statuses(org);
                let quotas = Quotas::new(org, now);
                for slots in [
                    None,
                    Some(Slots { max: 1, free: 0 }),
                    Some(Slots { max: 9, free: 9 }),
                ] {
                    for format in [
                        ResetFormat::Epoch,
                        ResetFormat::Delta,
                        ResetFormat::HttpDate,
                    ] {
                        let server = ServerSettings {
                            reset_format: format,
                            ..ServerSettings::default()
                        };
                        let legacy = most_constraining(statuses).map(Legacy::of);
                        let slot_retry = Timestamp::from_millis(now.as_millis() + 1_500);
                        let mut map = HeaderMap::new();
                        HeaderSet::new(&Inputs {
                            server: &server,
                            quotas: &quotas,
                            statuses,
                            legacy,
                            slots,
                            slot_retry,
                            retry_after: Some(3),
                            now,
                        })
                        .apply(&mut map);
                        let expected = reference_ratelimit(org, statuses, slots, slot_retry, now)
                            .expect("a non-empty list");
                        let written = map[RATELIMIT].to_str().expect("ascii");
                        assert_eq!(written, expected);
                        let parsed: List = Parser::new(written).parse().expect("a structured list");
                        let reference: List =
                            Parser::new(&expected).parse().expect("a structured list");
                        assert_eq!(parsed, reference);
                        assert_eq!(
                            parsed.len(),
                            quotas.prefixes.len() + usize::from(slots.is_some())
                        );
                        let policy_list: List =
                            Parser::new(map[RATELIMIT_POLICY].to_str().expect("ascii"))
                                .parse()
                                .expect("a structured list");
                        let tiers = quotas.prefixes.len();
                        assert_eq!(
                            parsed.iter().take(tiers).map(name).collect::<Vec<_>>(),
                            policy_list.iter().take(tiers).map(name).collect::<Vec<_>>()
                        );
                        let legacy = legacy.expect("a limit");
                        assert_eq!(map[X_RATELIMIT_LIMIT], legacy.limit.to_string().as_str());
                        assert_eq!(
                            map[X_RATELIMIT_REMAINING],
                            legacy.remaining.to_string().as_str()
                        );
                        assert_eq!(
                            map[X_RATELIMIT_RESET],
                            reset_value(format, legacy.reset, now).as_str()
                        );
                        assert_eq!(map[RETRY_AFTER], "3");
                    }
                }
            }
        }
    }

    /// What a [`HeaderBuilder`] fed `statuses` picks for `X-RateLimit-*`, and whether the quotas
    /// fit.
    fn built(
        org: &ResolvedOrg,
        statuses: &[LimitStatus],
        now: Timestamp,
    ) -> (Option<Legacy>, bool) {
        let server = ServerSettings::default();
        let quotas = Quotas::new(org, now);
        let mut builder = HeaderBuilder::new(&server, &quotas, now);
        for status in statuses {
            builder.limit(status);
        }
        (builder.most_constraining(), builder.fits())
    }

    #[test]
    fn ties_go_to_the_first_limit_and_ratios_compare_exactly() {
        let policy = policy();
        let org = policy.org("acme").expect("org");
        let mut ledger = Ledger::new(org);
        let now = Timestamp::from_secs(1_800_000_000);
        let statuses = ledger.peek(org, now);
        assert_eq!(most_constraining(&statuses).map(|s| s.index), Some(0));
        assert_eq!(built(org, &statuses, now).0, Some(Legacy::of(&statuses[0])));
        let statuses = ledger.admit(org, Charge::points(1), now).statuses(org);
        // points 99/100 = 0.99, count 29/30 = 0.9667 -> count.
        assert_eq!(most_constraining(&statuses).map(|s| s.index), Some(1));
        assert_eq!(built(org, &statuses, now).0, Some(Legacy::of(&statuses[1])));
        // Equal shares (98/100 and 29.4/30 cannot tie; 0/100 and 0/30 do): the first wins.
        let mut tied = statuses.clone();
        tied[0].remaining = 0;
        tied[1].remaining = 0;
        assert_eq!(most_constraining(&tied).map(|s| s.index), Some(0));
        assert_eq!(built(org, &tied, now).0, Some(Legacy::of(&tied[0])));
    }

    #[test]
    fn the_builder_sees_capacities_change() {
        // `points` doubled until t = 60 s: quotas built before then no longer fit after it.
        let policy = policy()
            .with_org_overrides(
                "acme",
                vec![
                    tollhouse_core::Override::new(
                        "points",
                        tollhouse_core::Adjustment::Capacity(200),
                    )
                    .until(Timestamp::from_secs(60)),
                ],
            )
            .expect("an override");
        let org = policy.org("acme").expect("org");
        let (before, after) = (Timestamp::from_secs(0), Timestamp::from_secs(61));
        let quotas = Quotas::new(org, before);
        let server = ServerSettings::default();
        let fits = |statuses: &[LimitStatus], now| {
            let mut builder = HeaderBuilder::new(&server, &quotas, now);
            for status in statuses {
                builder.limit(status);
            }
            builder.fits()
        };
        let mut ledger = Ledger::new(org);
        assert!(fits(&ledger.peek(org, before), before));
        assert!(!fits(&ledger.peek(org, after), after), "the override ended");
        assert!(
            !fits(&ledger.peek(org, before)[..1], before),
            "a limit missing"
        );
        assert!(Quotas::new(org, after).fits(org, &ledger.peek(org, after)));
    }

    #[test]
    fn quotas_fit_until_capacities_change() {
        let policy = policy();
        let org = policy.org("acme").expect("org");
        let now = Timestamp::from_secs(0);
        let statuses = Ledger::new(org).peek(org, now);
        let quotas = Quotas::new(org, now);
        assert!(quotas.fits(org, &statuses));
        let mut changed = statuses.clone();
        changed.truncate(1);
        assert!(!quotas.fits(org, &changed));
    }

    /// `X-RateLimit-Reset` as [`put_reset`] writes it.
    fn reset_value(format: ResetFormat, reset: Timestamp, now: Timestamp) -> String {
        let mut buffer = Vec::new();
        put_reset(&mut buffer, format, reset, now);
        String::from_utf8(buffer).expect("ascii")
    }

    #[test]
    fn a_latency_budget_lists_only_its_tiers_without_time_left() {
        let latency = Limit::new(
            "latency",
            Dimension::LatencyMs,
            LimitZone::Org,
            vec![
                Tier::new(Window::Minute, 100).expect("tier"),
                Tier::new(Window::Hour, 100).expect("tier"),
            ],
        )
        .expect("limit");
        let policy = Policy::builder()
            .plan(Plan::new("slow", vec![latency]).expect("plan"))
            .org(Org::new("acme", "slow"))
            .build()
            .expect("policy");
        let org = policy.org("acme").expect("acme");
        let mut ledger = Ledger::new(org);
        let start = Timestamp::from_secs(1_768_471_200);
        let tollhouse_core::Verdict::Admitted { receipt, .. } =
            ledger.admit(org, Charge::points(1), start)
        else {
            panic!("admitted")
        };
        // 800 ms: the minute's 100, the hour's 100, and 600 of debt on the hour.
        let correction = tollhouse_core::Correction {
            latency_ms: 800,
            cost_delta: 0,
        };
        ledger.settle(org, &receipt, correction, start);
        let verdict = ledger.admit(org, Charge::points(1), start);
        let statuses = verdict.statuses(org);
        assert_eq!(
            item_names(org, &statuses[0]),
            ["latency.minute", "latency.hour"]
        );
        // A minute later the minute has time again, but the hour's debt still refuses.
        let later = Timestamp::from_secs(1_768_471_260);
        let verdict = ledger.admit(org, Charge::points(1), later);
        assert!(!verdict.is_admitted());
        let statuses = verdict.statuses(org);
        assert_eq!(statuses[0].tiers()[0].remaining, 100);
        assert_eq!(item_names(org, &statuses[0]), ["latency.hour"]);
    }

    #[test]
    fn reset_formats() {
        let now = Timestamp::from_millis(1_000_500);
        let reset = Timestamp::from_secs(1_060);
        assert_eq!(reset_value(ResetFormat::Epoch, reset, now), "1060");
        assert_eq!(reset_value(ResetFormat::Delta, reset, now), "60");
        assert_eq!(
            reset_value(
                ResetFormat::HttpDate,
                Timestamp::from_secs(784_111_777),
                now
            ),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn families_switch_off() {
        let policy = policy();
        let org = policy.org("acme").expect("org");
        let server = ServerSettings {
            legacy_headers: false,
            ietf_headers: false,
            ..ServerSettings::default()
        };
        let now = Timestamp::from_secs(0);
        let statuses = Ledger::new(org).peek(org, now);
        let mut map = HeaderMap::new();
        HeaderSet::new(&Inputs {
            server: &server,
            quotas: &Quotas::new(org, now),
            statuses: &statuses,
            legacy: most_constraining(&statuses).map(Legacy::of),
            slots: None,
            slot_retry: now,
            retry_after: Some(0),
            now,
        })
        .apply(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map[RETRY_AFTER], "1");
    }

    #[test]
    fn an_http_date_far_out_or_long_ago_is_written_not_a_panic() {
        for (reset, expected) in [
            (
                Timestamp::from_millis(i64::MAX),
                "Fri, 31 Dec 9999 23:59:59 GMT",
            ),
            (
                Timestamp::from_millis(i64::MIN),
                "Thu, 01 Jan 1970 00:00:00 GMT",
            ),
            (
                Timestamp::from_secs(1_768_471_260),
                "Thu, 15 Jan 2026 10:01:00 GMT",
            ),
        ] {
            let mut buffer = Vec::new();
            put_reset(
                &mut buffer,
                ResetFormat::HttpDate,
                reset,
                Timestamp::from_secs(0),
            );
            assert_eq!(std::str::from_utf8(&buffer), Ok(expected));
        }
    }
}
