//! Usage and billing per org: calls today, billable calls per local date, the last N calls, and
//! what drives the count (endpoints, and identical requests repeated by a polling integration).
//!
//! Every structure here is bounded per org: 31 days of counts, N recent calls, at most
//! [`MAX_ENDPOINTS`] endpoints and [`MAX_REPEATED`] distinct request paths a day, however many
//! distinct paths arrive.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::usage::{CallRecord, Outcome, UsageLedger};
//! use tollhouse_core::Timestamp;
//!
//! let mut usage = UsageLedger::new(100);
//! let call = CallRecord::new(Timestamp::from_secs(60), "GET", "/v1/items?page=2")
//!     .with_route("/v1/items")
//!     .with_outcome(Outcome::Admitted);
//! usage.record(chrono_tz::UTC, call);
//! let snapshot = usage.snapshot(chrono_tz::UTC, Timestamp::from_secs(120), 31);
//! assert_eq!(snapshot.calls_today, 1);
//! assert_eq!(snapshot.billable_today, 1);
//! ```

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{Days, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::policy::UsageQuery;
use crate::store::UsageView;
use crate::time::Timestamp;
use crate::window::{Bounds, Window};

mod report;

pub use report::{DISPLAY_BYTES, Row, cut, entry_hash};
use report::{Full, Tally};

/// Days of billable counts kept per org.
pub const DAYS_KEPT: usize = 31;
/// Distinct endpoints (method + route) counted per org per day; more fall into one `(other)` row.
pub const MAX_ENDPOINTS: usize = 128;
/// Distinct request paths tracked for repetition per org per day; a new one past this many takes
/// the place of the one seen least.
pub const MAX_REPEATED: usize = 256;
/// Bytes of a request target (path and query) the call log keeps; a longer one is cut at a
/// character boundary, ending with `…`, and its full length is kept as [`CallRecord::path_len`].
pub const MAX_PATH_BYTES: usize = 256;
/// Bytes of a key label the call log keeps (a masked key is 7 at most; a label set by the service
/// is cut to this).
pub const MAX_LABEL_BYTES: usize = 64;
/// The most calls a call log may keep (`calls_kept`).
pub const MAX_CALLS_KEPT: usize = 1_000;
/// The methods the usage keeps by name; any other is counted as [`OTHER_METHOD`].
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];
/// Heap bytes the memory store holds for one org at most, whatever the org sends, with a call
/// log of `calls_kept` calls: its counts, its call log (each call's target cut to
/// [`MAX_PATH_BYTES`]), a day's report tallies ([`MAX_ENDPOINTS`], [`MAX_REPEATED`] rows with
/// displays of [`DISPLAY_BYTES`]) and 31 days of billing. Tested with a counting allocator.
pub const fn bytes_per_org_bound(calls_kept: usize) -> usize {
    BYTES_PER_ORG + calls_kept * BYTES_PER_CALL
}

/// The part of [`bytes_per_org_bound`] that does not grow with the call log.
pub const BYTES_PER_ORG: usize = 256 * 1024;
/// What each call of the log adds to [`bytes_per_org_bound`].
pub const BYTES_PER_CALL: usize = 512;

/// The label of every method not in [`METHODS`].
pub const OTHER_METHOD: &str = "OTHER";
/// The row the endpoints past [`MAX_ENDPOINTS`] are counted in.
pub const OVERFLOW_ENDPOINT: (&str, &str) = ("*", "(other)");
/// Times an identical request must come in a day to be reported as repeated.
pub const REPEAT_THRESHOLD: u64 = 10;
/// Repeated requests the report shows at most, most frequent first.
pub const REPORT_ROWS: usize = 50;
/// Calls the usage routes show at most, newest first.
pub const CALLS_SHOWN: usize = 100;

/// What the layer did with a call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Metered and admitted.
    Admitted,
    /// Rejected by the named limit (or `concurrency`).
    Rejected {
        /// The limit that rejected it.
        limit: Arc<str>,
    },
    /// An exempt route: not limited or charged.
    Exempt,
}

impl Outcome {
    /// `admitted`, `rejected` or `exempt`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Exempt => "exempt",
        }
    }
}

/// One call as the usage log shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallRecord {
    /// When it arrived.
    pub at: Timestamp,
    /// The API key, masked to its last four characters.
    pub key: Arc<str>,
    /// The HTTP method.
    pub method: Arc<str>,
    /// The request target, with its query string, cut to [`MAX_PATH_BYTES`].
    pub path: Arc<str>,
    /// The full length of the request target in bytes, when [`path`](Self::path) was cut.
    pub path_len: Option<u32>,
    /// The matched route pattern, if known.
    pub route: Option<Arc<str>>,
    /// The response status.
    pub status: u16,
    /// Points charged (after correction).
    pub cost: u64,
    /// Milliseconds until the response body ended.
    pub latency_ms: u64,
    /// Admitted, rejected or exempt.
    pub outcome: Outcome,
    /// Whether it counts as a billable call.
    pub billable: bool,
    /// Whether it goes into the call log. A rejection past the org's rate of logged rejections is
    /// only counted (billing, endpoints, repeated requests), not logged.
    pub logged: bool,
}

impl CallRecord {
    /// A billable, admitted call with no key, route, status, cost or latency yet; `path` is cut
    /// to [`MAX_PATH_BYTES`] (see [`bounded_path`]).
    pub fn new(at: Timestamp, method: impl Into<Arc<str>>, path: &str) -> Self {
        let (path, path_len) = bounded_path(path);
        Self {
            at,
            key: Arc::from(""),
            method: method.into(),
            path,
            path_len,
            route: None,
            status: 200,
            cost: 1,
            latency_ms: 0,
            outcome: Outcome::Admitted,
            billable: true,
            logged: true,
        }
    }

    /// With the matched route.
    pub fn with_route(mut self, route: impl Into<Arc<str>>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// With the outcome.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// With the key label (already masked).
    pub fn with_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.key = key.into();
        self
    }
}

/// A request target as the call log keeps it: cut to [`MAX_PATH_BYTES`] at a character boundary
/// (ending with `…`), with its full length when it was cut.
pub fn bounded_path(target: &str) -> (Arc<str>, Option<u32>) {
    if target.len() <= MAX_PATH_BYTES {
        return (Arc::from(target), None);
    }
    let full = u32::try_from(target.len()).unwrap_or(u32::MAX);
    (cut(target, MAX_PATH_BYTES), Some(full))
}

/// A request target as `query` says the usage keeps it: whole, without its query, or with the
/// values of some parameters replaced by `REDACTED`.
pub fn usage_target<'a>(target: &'a str, query: &UsageQuery) -> Cow<'a, str> {
    let Some((path, params)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    match query {
        UsageQuery::Keep => Cow::Borrowed(target),
        UsageQuery::Drop => Cow::Borrowed(path),
        UsageQuery::Redact(names) => {
            let secret = |param: &str| {
                let name = param.split_once('=').map_or(param, |(name, _)| name);
                names.iter().any(|redacted| **redacted == *name)
            };
            if !params.split('&').any(secret) {
                return Cow::Borrowed(target);
            }
            let mut kept = String::with_capacity(target.len());
            kept.push_str(path);
            for (index, param) in params.split('&').enumerate() {
                kept.push(if index == 0 { '?' } else { '&' });
                match param.split_once('=') {
                    Some((name, _)) if secret(param) => {
                        kept.push_str(name);
                        kept.push_str("=REDACTED");
                    }
                    _ => kept.push_str(param),
                }
            }
            Cow::Owned(kept)
        }
    }
}

/// A method as the usage keeps it: its name when it is one of [`METHODS`], else
/// [`OTHER_METHOD`], so a caller's invented methods add no distinct strings.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or(OTHER_METHOD)
}

/// Masks an API key to its last four characters: `…abcd`.
pub fn mask_key(key: &str) -> String {
    // The byte offset of the fourth character from the end (or the start of a shorter key).
    let start = key.char_indices().rev().nth(3).map_or(0, |(at, _)| at);
    let mut masked = String::with_capacity('…'.len_utf8() + key.len() - start);
    masked.push('…');
    masked.push_str(&key[start..]);
    masked
}

/// Calls and points of one endpoint today.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointUsage {
    /// The HTTP method.
    pub method: Arc<str>,
    /// The route pattern (or the path when no route matched).
    pub route: Arc<str>,
    /// Calls today.
    pub calls: u64,
    /// Points charged today.
    pub points: u64,
}

/// An identical request (method and path with query) seen again and again today.
#[derive(Clone, Debug, PartialEq)]
pub struct RepeatedRequest {
    /// The HTTP method.
    pub method: Arc<str>,
    /// The request target with its query string.
    pub path: Arc<str>,
    /// Times seen today.
    pub count: u64,
    /// Mean seconds between two of them.
    pub mean_interval_s: f64,
}

impl UsageSnapshot {
    /// Leaves only what `view` shows: no call log unless it shows calls, no report unless it
    /// shows the report, and the last `view.days()` days of billing.
    pub fn keep_only(&mut self, view: UsageView) {
        match view {
            UsageView::All { .. } => {}
            UsageView::Calls => self.calls.truncate(CALLS_SHOWN),
            _ => self.calls = Vec::new(),
        }
        if !view.report() {
            self.endpoints = Vec::new();
            self.repeated = Vec::new();
        }
        self.repeated.truncate(REPORT_ROWS);
        let days = view.days().clamp(1, DAYS_KEPT);
        let extra = self.billable_days.len().saturating_sub(days);
        self.billable_days.drain(..extra);
    }
}

impl RepeatedRequest {
    /// The report's line for a row of the repeated-request tally.
    pub fn of(row: &Row) -> Self {
        Self {
            method: row.method.clone(),
            path: row.path.clone(),
            count: row.count,
            mean_interval_s: row.last.millis_since(row.first) as f64
                / 1000.0
                / row.count.saturating_sub(1).max(1) as f64,
        }
    }
}

/// The method of the endpoints' overflow row, shared.
fn overflow_method() -> Arc<str> {
    static OVERFLOW: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from(OVERFLOW_ENDPOINT.0));
    Arc::clone(&OVERFLOW)
}

/// Everything the usage routes show for one org, at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageSnapshot {
    /// The org's local date.
    pub date: NaiveDate,
    /// Metered calls admitted today.
    pub calls_today: u64,
    /// Billable calls today.
    pub billable_today: u64,
    /// Billable calls per local date, oldest first, today last.
    pub billable_days: Vec<(NaiveDate, u64)>,
    /// The most recent calls to end, newest first by arrival ([`CallRecord::at`]; see
    /// [`sort_newest_first`]).
    pub calls: Vec<CallRecord>,
    /// Endpoints by calls today, most first.
    pub endpoints: Vec<EndpointUsage>,
    /// Identical requests seen at least [`REPEAT_THRESHOLD`] times today, most frequent first.
    pub repeated: Vec<RepeatedRequest>,
}

/// Orders `calls`, given latest-ended first, newest first by arrival ([`CallRecord::at`]): a call
/// is recorded when it ends, so a slow call that arrived before a quick one is recorded after it.
/// Calls that arrived at the same time keep their order. Every store's snapshot goes through this.
pub fn sort_newest_first(calls: &mut [CallRecord]) {
    calls.sort_by_key(|call| std::cmp::Reverse(call.at));
}

/// Orders endpoints as the report shows them, whatever order a store read them in: most calls
/// first, then most points, then by route and method.
pub fn sort_endpoints(endpoints: &mut [EndpointUsage]) {
    endpoints.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then(b.points.cmp(&a.points))
            .then(a.route.cmp(&b.route))
            .then(a.method.cmp(&b.method))
    });
}

/// Orders repeated requests as the report shows them, whatever order a store read them in: most
/// frequent first, then by path and method.
pub fn sort_repeated(repeated: &mut [RepeatedRequest]) {
    repeated.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.path.cmp(&b.path))
            .then(a.method.cmp(&b.method))
    });
}

/// An org's usage as a durable store keeps it across a restart (see [`UsageLedger::saved`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SavedUsage {
    /// The org's current local date.
    pub today: Option<NaiveDate>,
    /// Metered calls admitted today.
    pub admitted_today: u64,
    /// Billable calls per local date, oldest first.
    pub billable_days: Vec<(NaiveDate, u64)>,
    /// The call log, oldest first.
    pub calls: Vec<CallRecord>,
    /// Today's endpoints, with their keys.
    pub endpoints: Vec<(u64, Row)>,
    /// Today's repeated requests, with their keys.
    pub repeated: Vec<(u64, Row)>,
    /// When the latest call arrived.
    pub latest: Option<Timestamp>,
}

/// The usage of one org; bounded whatever arrives.
#[derive(Clone, Debug)]
pub struct UsageLedger {
    kept: usize,
    calls: VecDeque<CallRecord>,
    days: VecDeque<(NaiveDate, u64)>,
    today: Option<NaiveDate>,
    /// The local day of the latest call: its zone, its bounds and its date (most calls fall in it,
    /// and comparing two instants is cheaper than converting one to a local date).
    day: Option<(Tz, Bounds, NaiveDate)>,
    admitted_today: u64,
    endpoints: Tally,
    repeated: Tally,
    latest: Option<Timestamp>,
}

/// The local date of `at` in `tz`.
pub fn local_date(tz: Tz, at: Timestamp) -> NaiveDate {
    tz.from_utc_datetime(&at.to_utc().naive_utc()).date_naive()
}

impl UsageLedger {
    /// An empty ledger keeping the last `kept` calls (from 1 to [`MAX_CALLS_KEPT`]).
    pub fn new(kept: usize) -> Self {
        let kept = kept.clamp(1, MAX_CALLS_KEPT);
        Self {
            kept,
            calls: VecDeque::new(),
            days: VecDeque::new(),
            today: None,
            day: None,
            admitted_today: 0,
            endpoints: Tally::new(MAX_ENDPOINTS),
            repeated: Tally::new(MAX_REPEATED),
            latest: None,
        }
    }

    fn roll(&mut self, date: NaiveDate) {
        if self.today.is_some_and(|today| today >= date) {
            return;
        }
        self.today = Some(date);
        self.admitted_today = 0;
        self.endpoints.clear();
        self.repeated.clear();
    }

    /// The local date of `at` in `tz`, from the cached day when it contains `at`.
    fn date_of(&mut self, tz: Tz, at: Timestamp) -> NaiveDate {
        if let Some((zone, bounds, date)) = self.day
            && zone == tz
            && bounds.start <= at
            && at < bounds.end
        {
            return date;
        }
        let date = local_date(tz, at);
        if self
            .day
            .is_none_or(|(zone, _, latest)| zone != tz || latest < date)
        {
            self.day = Some((tz, Window::Day.bounds(tz, at), date));
        }
        date
    }

    /// What to keep across a restart.
    pub fn saved(&self) -> SavedUsage {
        SavedUsage {
            today: self.today,
            admitted_today: self.admitted_today,
            billable_days: self.days.iter().copied().collect(),
            calls: self.calls.iter().cloned().collect(),
            endpoints: self.endpoints.saved(),
            repeated: self.repeated.saved(),
            latest: self.latest,
        }
    }

    /// A ledger keeping `kept` calls with `saved` back in place, bounded as a live one is.
    pub fn restored(kept: usize, saved: SavedUsage) -> Self {
        let mut ledger = Self::new(kept);
        ledger.today = saved.today;
        ledger.admitted_today = saved.admitted_today;
        let mut days = saved.billable_days;
        days.sort_by_key(|(date, _)| *date);
        let extra = days.len().saturating_sub(DAYS_KEPT);
        ledger.days = days.into_iter().skip(extra).collect();
        let extra = saved.calls.len().saturating_sub(ledger.kept);
        ledger.calls = saved.calls.into_iter().skip(extra).collect();
        ledger.endpoints = Tally::restored(MAX_ENDPOINTS, saved.endpoints);
        ledger.repeated = Tally::restored(MAX_REPEATED, saved.repeated);
        ledger.latest = saved.latest;
        ledger
    }

    /// When the latest call recorded arrived, if any.
    pub fn latest(&self) -> Option<Timestamp> {
        self.latest
    }

    /// Records one call on its local date in `tz`.
    pub fn record(&mut self, tz: Tz, call: CallRecord) {
        self.latest = Some(self.latest.map_or(call.at, |latest| latest.max(call.at)));
        let date = self.date_of(tz, call.at);
        self.roll(date);
        let is_today = self.today == Some(date);
        if call.billable {
            match self.days.iter_mut().rev().find(|(day, _)| *day == date) {
                Some((_, count)) => *count += 1,
                None => {
                    let at = self
                        .days
                        .iter()
                        .position(|(day, _)| *day > date)
                        .unwrap_or(self.days.len());
                    self.days.insert(at, (date, 1));
                    while self.days.len() > DAYS_KEPT {
                        self.days.pop_front();
                    }
                }
            }
        }
        if is_today {
            if call.outcome == Outcome::Admitted {
                self.admitted_today += 1;
            }
            self.count_endpoint(&call);
            self.count_repeat(&call);
        }
        if !call.logged {
            return;
        }
        if self.calls.len() == self.kept {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }

    fn count_endpoint(&mut self, call: &CallRecord) {
        let route = call.route.as_ref().unwrap_or(&call.path);
        let points = if call.outcome == Outcome::Admitted {
            call.cost
        } else {
            0
        };
        let overflow = overflow_method();
        self.endpoints.count(
            &call.method,
            route,
            call.at,
            points,
            Full::Overflow(&overflow, OVERFLOW_ENDPOINT.1),
        );
    }

    fn count_repeat(&mut self, call: &CallRecord) {
        self.repeated
            .count(&call.method, &call.path, call.at, 0, Full::Evict);
    }

    /// Everything the usage routes show, as of `now` in `tz`, with `days` days of billing (at most 31).
    pub fn snapshot(&self, tz: Tz, now: Timestamp, days: usize) -> UsageSnapshot {
        self.view(tz, now, UsageView::All { days })
    }

    /// What `view` shows, as of `now` in `tz`: nothing is copied that the view does not show.
    pub fn view(&self, tz: Tz, now: Timestamp, view: UsageView) -> UsageSnapshot {
        let date = local_date(tz, now);
        let current = self.today == Some(date);
        let billable_days = self.billable_days(date, view.days());
        let (endpoints, repeated) = if current && view.report() {
            (self.endpoint_rows(), self.repeated_rows())
        } else {
            (Vec::new(), Vec::new())
        };
        let calls = match view {
            UsageView::All { .. } => self.newest_calls(self.calls.len()),
            UsageView::Calls => self.newest_calls(CALLS_SHOWN),
            _ => Vec::new(),
        };
        UsageSnapshot {
            date,
            calls_today: if current { self.admitted_today } else { 0 },
            billable_today: billable_days.last().map_or(0, |(_, count)| *count),
            billable_days,
            calls,
            endpoints,
            repeated,
        }
    }

    /// Billable calls of the `days` days up to `date`, oldest first.
    fn billable_days(&self, date: NaiveDate, days: usize) -> Vec<(NaiveDate, u64)> {
        (0..days.clamp(1, DAYS_KEPT))
            .rev()
            .filter_map(|back| date.checked_sub_days(Days::new(back as u64)))
            .map(|day| {
                let count = self
                    .days
                    .iter()
                    .find(|(d, _)| *d == day)
                    .map_or(0, |(_, count)| *count);
                (day, count)
            })
            .collect()
    }

    /// Today's endpoints, most called first.
    fn endpoint_rows(&self) -> Vec<EndpointUsage> {
        let mut endpoints: Vec<EndpointUsage> = self
            .endpoints
            .rows()
            .map(|row| EndpointUsage {
                method: row.method.clone(),
                route: row.path.clone(),
                calls: row.count,
                points: row.points,
            })
            .collect();
        sort_endpoints(&mut endpoints);
        endpoints
    }

    /// Today's most repeated requests, at most [`REPORT_ROWS`], most frequent first.
    fn repeated_rows(&self) -> Vec<RepeatedRequest> {
        let mut repeated: Vec<RepeatedRequest> = self
            .repeated
            .rows()
            .filter(|row| row.count >= REPEAT_THRESHOLD)
            .map(RepeatedRequest::of)
            .collect();
        sort_repeated(&mut repeated);
        repeated.truncate(REPORT_ROWS);
        repeated
    }

    /// The last `count` calls logged, newest first by arrival.
    fn newest_calls(&self, count: usize) -> Vec<CallRecord> {
        let mut calls: Vec<CallRecord> = self.calls.iter().rev().take(count).cloned().collect();
        sort_newest_first(&mut calls);
        calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(secs: i64, path: &str) -> CallRecord {
        CallRecord::new(Timestamp::from_secs(secs), "GET", path).with_route("/v1/items")
    }

    #[test]
    fn keeps_the_newest_calls_newest_first() {
        let mut usage = UsageLedger::new(100);
        for i in 0..101 {
            usage.record(Tz::UTC, call(i, &format!("/v1/items?i={i}")));
        }
        let snapshot = usage.snapshot(Tz::UTC, Timestamp::from_secs(200), 31);
        assert_eq!(snapshot.calls.len(), 100);
        assert_eq!(&*snapshot.calls[0].path, "/v1/items?i=100");
        assert_eq!(&*snapshot.calls[99].path, "/v1/items?i=1");
        assert_eq!(snapshot.calls_today, 101);
    }

    #[test]
    fn calls_are_listed_by_arrival_not_by_end() {
        let mut usage = UsageLedger::new(10);
        // A slow call arrives at 10 s and ends after a quick one that arrived at 11 s.
        usage.record(Tz::UTC, call(11, "/quick"));
        usage.record(Tz::UTC, call(10, "/slow"));
        usage.record(Tz::UTC, call(12, "/later"));
        let snapshot = usage.snapshot(Tz::UTC, Timestamp::from_secs(20), 31);
        let paths: Vec<&str> = snapshot.calls.iter().map(|call| &*call.path).collect();
        assert_eq!(paths, ["/later", "/quick", "/slow"]);
    }

    #[test]
    fn billable_days_in_order_today_last() {
        let mut usage = UsageLedger::new(10);
        let day = 86_400;
        usage.record(Tz::UTC, call(0, "/a"));
        usage.record(Tz::UTC, call(2 * day, "/a"));
        usage.record(
            Tz::UTC,
            call(2 * day + 5, "/a").with_outcome(Outcome::Exempt),
        );
        let snapshot = usage.snapshot(Tz::UTC, Timestamp::from_secs(2 * day + 10), 3);
        let counts: Vec<u64> = snapshot
            .billable_days
            .iter()
            .map(|(_, count)| *count)
            .collect();
        assert_eq!(counts, vec![1, 0, 2]);
        assert_eq!(snapshot.billable_today, 2);
        assert_eq!(snapshot.calls_today, 1);
        assert_eq!(snapshot.billable_days[2].0, snapshot.date);
    }

    #[test]
    fn repeated_requests_are_reported_with_their_interval() {
        let mut usage = UsageLedger::new(10);
        for i in 0..12 {
            usage.record(Tz::UTC, call(i * 30, "/v1/items?status=open"));
        }
        for i in 0..9 {
            usage.record(Tz::UTC, call(i, "/v1/items?status=closed"));
        }
        let snapshot = usage.snapshot(Tz::UTC, Timestamp::from_secs(400), 31);
        assert_eq!(snapshot.repeated.len(), 1);
        assert_eq!(snapshot.repeated[0].count, 12);
        assert!((snapshot.repeated[0].mean_interval_s - 30.0).abs() < 1e-9);
        assert_eq!(snapshot.endpoints[0].calls, 21);
    }

    #[test]
    fn distinct_paths_stay_bounded_and_repeats_survive() {
        let mut usage = UsageLedger::new(10);
        for i in 0..20 {
            usage.record(Tz::UTC, call(i, "/poll"));
        }
        for i in 0..10_000 {
            usage.record(Tz::UTC, call(100, &format!("/unique/{i}")));
        }
        assert!(usage.repeated.len() <= MAX_REPEATED);
        let snapshot = usage.snapshot(Tz::UTC, Timestamp::from_secs(200), 31);
        assert_eq!(snapshot.repeated[0].path.as_ref(), "/poll");
        assert_eq!(snapshot.repeated[0].count, 20);
    }

    #[test]
    fn calls_are_billed_on_their_local_date_across_midnights_and_dst() {
        // Santiago skips from 00:00 to 01:00 on 6 Sep 2026: the day starts at 01:00 local.
        let tz: Tz = "America/Santiago".parse().expect("zone");
        let start = 1_788_750_000; // 2026-09-05T... UTC, a day before the change
        let mut usage = UsageLedger::new(10);
        let mut expected: Vec<(NaiveDate, u64)> = Vec::new();
        // Every 17 minutes for three days, and once a second around each local midnight.
        let mut instants: Vec<i64> = (0..3 * 24 * 60 / 17).map(|i| start + i * 17 * 60).collect();
        for day in 0..3 {
            let at = Timestamp::from_secs(start + day * 86_400);
            let midnight = Window::Day.bounds(tz, at).end.as_millis() / 1000;
            instants.extend(midnight - 3..midnight + 3);
        }
        instants.sort_unstable();
        for secs in instants {
            let date = local_date(tz, Timestamp::from_secs(secs));
            match expected.last_mut() {
                Some((last, count)) if *last == date => *count += 1,
                _ => expected.push((date, 1)),
            }
            usage.record(tz, call(secs, "/a"));
        }
        let now = Timestamp::from_secs(start + 3 * 86_400);
        let snapshot = usage.snapshot(tz, now, 31);
        let billed: Vec<(NaiveDate, u64)> = snapshot
            .billable_days
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .collect();
        assert_eq!(billed, expected);
        assert!(expected.len() >= 3, "{expected:?}");
    }

    #[test]
    fn long_targets_are_cut_with_their_length_and_odd_methods_folded() {
        let long = format!("/v1/items?q={}", "x".repeat(60_000));
        let call = CallRecord::new(Timestamp::from_secs(0), "GET", &long);
        assert!(call.path.len() <= MAX_PATH_BYTES);
        assert!(call.path.ends_with('…'));
        assert_eq!(
            call.path_len,
            Some(u32::try_from(long.len()).expect("small"))
        );
        assert_eq!(
            CallRecord::new(Timestamp::from_secs(0), "GET", "/a").path_len,
            None
        );
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("BREW"), OTHER_METHOD);
        assert_eq!(method_label("get"), OTHER_METHOD);
    }

    #[test]
    fn queries_are_kept_dropped_or_redacted() {
        let target = "/v1/items?page=2&token=s3cret&tokens=x&token";
        assert_eq!(usage_target(target, &UsageQuery::Keep), target);
        assert_eq!(usage_target(target, &UsageQuery::Drop), "/v1/items");
        let redact = UsageQuery::Redact(vec![Box::from("token")].into());
        assert_eq!(
            usage_target(target, &redact),
            "/v1/items?page=2&token=REDACTED&tokens=x&token"
        );
        assert_eq!(
            usage_target("/v1/items?page=2", &redact),
            "/v1/items?page=2"
        );
        assert_eq!(usage_target("/v1/items", &UsageQuery::Drop), "/v1/items");
    }

    #[test]
    fn dates_of_extreme_instants_are_read_without_a_panic() {
        for zone in ["Pacific/Kiritimati", "Etc/GMT+12", "UTC"] {
            let tz: Tz = zone.parse().expect("zone");
            for at in [i64::MIN, i64::MIN / 2, -1, 0, i64::MAX / 2, i64::MAX] {
                let _ = local_date(tz, Timestamp::from_millis(at));
                let mut usage = UsageLedger::new(10);
                usage.record(tz, call(0, "/a").with_key("k"));
                let _ = usage.snapshot(tz, Timestamp::from_millis(at), 31);
            }
        }
    }

    #[test]
    fn masks_keys() {
        assert_eq!(mask_key("acme-key-1"), "…ey-1");
        assert_eq!(mask_key("ab"), "…ab");
        assert_eq!(mask_key(""), "…");
        assert_eq!(mask_key("clé-ünï"), "…-ünï");
    }
}
