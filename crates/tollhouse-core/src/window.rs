//! Calendar windows aligned to the wall clock of a time zone.
//!
//! A [`Window`] is a second, a minute, an hour, a day, an ISO week (from Monday's local midnight), a
//! month or a year of some zone's local clock, or a clock multiple: `"N seconds"` and `"N minutes"`
//! (N = 2, 3, 4, 5, 6, 10, 12, 15, 20 or 30) and `"N hours"` (N = 2, 3, 4, 6, 8 or 12), which start
//! where the enclosing unit starts (`"5 minutes"`: :00, :05, …; `"6 hours"`: 00:00, 06:00, … local).
//! For any instant, [`Window::bounds`] gives the window that contains it as [`Bounds`]: its first
//! instant and the first instant of the next one. A window is identified by its start instant in UTC.
//!
//! The rules across clock changes:
//! - A day runs from local midnight to the next local midnight: 23 or 25 hours across DST changes.
//!   Where midnight does not exist (the clock jumps from 23:59:59 to 01:00), the day starts at the
//!   first instant of that date. A month likewise starts at the first instant of its first day.
//! - An hour (and a minute) is a local clock hour. When the clock is set back, the repeated hour is a
//!   window of its own, so no hour lasts longer than 60 minutes; when it jumps forward, the hour that
//!   straddles the jump is cut short. (Where a clock is set back by less than an hour, as on Lord
//!   Howe Island by 30 minutes, the repeated minutes are a window of their own: that clock hour is
//!   cut into 60 minutes and the repeated 30.)
//! - Seconds, `"N seconds"` and `"N minutes"` windows are cut on the local clock like minutes (a
//!   repeated hour repeats them). An `"N hours"` window is N local clock hours from its start, like a
//!   day: one that holds a DST change is as much longer or shorter as the change.
//! - A week starts at Monday's local midnight (ISO 8601), a year at the first instant of 1 January.
//! - Zones with offsets of :30 or :45 (Asia/Kolkata, Asia/Kathmandu) start their hours at those
//!   minutes of UTC hours.
//!
//! # Example
//!
//! ```
//! use chrono::TimeZone;
//! use tollhouse_core::{Timestamp, Window};
//!
//! let tz: chrono_tz::Tz = "America/Los_Angeles".parse().expect("an IANA zone");
//! // 8 March 2026, the day US clocks spring forward, has 23 hours.
//! let noon = Timestamp::from(tz.with_ymd_and_hms(2026, 3, 8, 12, 0, 0).single().expect("noon exists"));
//! let day = Window::Day.bounds(tz, noon);
//! assert_eq!(day.len().as_secs(), 23 * 3600);
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{
    Datelike, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike,
};
use chrono_tz::Tz;

use crate::time::Timestamp;

/// The first instant whose window follows the calendar: 2^52 ms (about 142,000 years) before 1970.
///
/// Chrono represents dates up to about 262,000 years either side of 1970; keeping the calendar
/// arithmetic (local times, the next window's name, the searches around a clock change) well inside
/// that range means none of it can overflow.
const CALENDAR_FIRST: Timestamp = Timestamp::from_millis(-(1 << 52));
/// The first instant after the range in which windows follow the calendar (2^52 ms after 1970).
const CALENDAR_END: Timestamp = Timestamp::from_millis(1 << 52);

/// A calendar window of a zone's wall clock.
///
/// Windows are ordered by their nominal length ([`Window::nominal_secs`]), which no two share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// A clock second.
    Second,
    /// A clock minute.
    Minute,
    /// A clock hour.
    Hour,
    /// A calendar day, from local midnight to local midnight.
    Day,
    /// An ISO week, from Monday's local midnight.
    Week,
    /// A calendar month, from the first instant of its first day.
    Month,
    /// A calendar year, from the first instant of 1 January.
    Year,
    /// `"N seconds"`: N clock seconds, starting at the seconds of the minute N divides.
    Seconds(Multiple),
    /// `"N minutes"`: N clock minutes, starting at the minutes of the hour N divides.
    Minutes(Multiple),
    /// `"N hours"`: N local clock hours, starting at the hours of the day N divides.
    Hours(Multiple),
}

/// How many units a multiple window spans: one of the counts its unit allows (see
/// [`Multiple::seconds`], [`Multiple::minutes`], [`Multiple::hours`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Multiple(u8);

/// The multiples of seconds and minutes a window may span: the divisors of 60 from 2 to 30.
const SIXTIETHS: [u8; 10] = [2, 3, 4, 5, 6, 10, 12, 15, 20, 30];
/// The multiples of hours a window may span: the divisors of 24 from 2 to 12.
const HOURS: [u8; 6] = [2, 3, 4, 6, 8, 12];

impl Multiple {
    /// `n` seconds, if a window may span that many (2, 3, 4, 5, 6, 10, 12, 15, 20 or 30).
    pub fn seconds(n: u32) -> Option<Self> {
        Self::among(&SIXTIETHS, n)
    }

    /// `n` minutes, if a window may span that many (2, 3, 4, 5, 6, 10, 12, 15, 20 or 30).
    pub fn minutes(n: u32) -> Option<Self> {
        Self::among(&SIXTIETHS, n)
    }

    /// `n` hours, if a window may span that many (2, 3, 4, 6, 8 or 12).
    pub fn hours(n: u32) -> Option<Self> {
        Self::among(&HOURS, n)
    }

    fn among(allowed: &[u8], n: u32) -> Option<Self> {
        allowed
            .iter()
            .find(|allowed| u32::from(**allowed) == n)
            .map(|n| Self(*n))
    }

    /// The count.
    pub const fn get(self) -> u32 {
        self.0 as u32
    }
}

/// The bounds of one window: `start` is in it, `end` is the start of the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// The window's first instant; it identifies the window.
    pub start: Timestamp,
    /// The first instant after the window.
    pub end: Timestamp,
}

impl Bounds {
    /// Whether `at` falls inside these bounds.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }

    /// How long the window lasts.
    pub fn len(&self) -> Duration {
        self.end.saturating_since(self.start)
    }

    /// Whether the window is empty (never true for a computed window).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl PartialOrd for Window {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Window {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nominal_secs().cmp(&other.nominal_secs())
    }
}

/// The names of the multiples, as written and without the space (`"5 minutes"`, `"5minutes"`), in
/// the order of [`SIXTIETHS`] and [`HOURS`].
const SECONDS_NAMES: [(&str, &str); 10] = [
    ("2 seconds", "2seconds"),
    ("3 seconds", "3seconds"),
    ("4 seconds", "4seconds"),
    ("5 seconds", "5seconds"),
    ("6 seconds", "6seconds"),
    ("10 seconds", "10seconds"),
    ("12 seconds", "12seconds"),
    ("15 seconds", "15seconds"),
    ("20 seconds", "20seconds"),
    ("30 seconds", "30seconds"),
];
const MINUTES_NAMES: [(&str, &str); 10] = [
    ("2 minutes", "2minutes"),
    ("3 minutes", "3minutes"),
    ("4 minutes", "4minutes"),
    ("5 minutes", "5minutes"),
    ("6 minutes", "6minutes"),
    ("10 minutes", "10minutes"),
    ("12 minutes", "12minutes"),
    ("15 minutes", "15minutes"),
    ("20 minutes", "20minutes"),
    ("30 minutes", "30minutes"),
];
const HOURS_NAMES: [(&str, &str); 6] = [
    ("2 hours", "2hours"),
    ("3 hours", "3hours"),
    ("4 hours", "4hours"),
    ("6 hours", "6hours"),
    ("8 hours", "8hours"),
    ("12 hours", "12hours"),
];

/// The names of `n` among `allowed`, from `names`.
fn names_of(
    allowed: &[u8],
    names: &[(&'static str, &'static str)],
    n: Multiple,
) -> (&'static str, &'static str) {
    allowed
        .iter()
        .position(|allowed| *allowed == n.0)
        .and_then(|index| names.get(index))
        .copied()
        .unwrap_or(("", ""))
}

impl Window {
    /// The seven calendar units, shortest first.
    pub const UNITS: [Window; 7] = [
        Window::Second,
        Window::Minute,
        Window::Hour,
        Window::Day,
        Window::Week,
        Window::Month,
        Window::Year,
    ];

    /// Every window a tier may have, shortest first: the units and every allowed multiple.
    pub const ALL: [Window; 33] = [
        Window::Second,
        Window::Seconds(Multiple(2)),
        Window::Seconds(Multiple(3)),
        Window::Seconds(Multiple(4)),
        Window::Seconds(Multiple(5)),
        Window::Seconds(Multiple(6)),
        Window::Seconds(Multiple(10)),
        Window::Seconds(Multiple(12)),
        Window::Seconds(Multiple(15)),
        Window::Seconds(Multiple(20)),
        Window::Seconds(Multiple(30)),
        Window::Minute,
        Window::Minutes(Multiple(2)),
        Window::Minutes(Multiple(3)),
        Window::Minutes(Multiple(4)),
        Window::Minutes(Multiple(5)),
        Window::Minutes(Multiple(6)),
        Window::Minutes(Multiple(10)),
        Window::Minutes(Multiple(12)),
        Window::Minutes(Multiple(15)),
        Window::Minutes(Multiple(20)),
        Window::Minutes(Multiple(30)),
        Window::Hour,
        Window::Hours(Multiple(2)),
        Window::Hours(Multiple(3)),
        Window::Hours(Multiple(4)),
        Window::Hours(Multiple(6)),
        Window::Hours(Multiple(8)),
        Window::Hours(Multiple(12)),
        Window::Day,
        Window::Week,
        Window::Month,
        Window::Year,
    ];

    /// The name used in policy files: `second`, `minute`, `hour`, `day`, `week`, `month`, `year`,
    /// or a multiple such as `5 minutes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
            Window::Year => "year",
            Window::Seconds(n) => names_of(&SIXTIETHS, &SECONDS_NAMES, n).0,
            Window::Minutes(n) => names_of(&SIXTIETHS, &MINUTES_NAMES, n).0,
            Window::Hours(n) => names_of(&HOURS, &HOURS_NAMES, n).0,
        }
    }

    /// The name in header items (`limit.window`): the name as written less its space
    /// (`5minutes`).
    pub fn item_str(self) -> &'static str {
        match self {
            Window::Seconds(n) => names_of(&SIXTIETHS, &SECONDS_NAMES, n).1,
            Window::Minutes(n) => names_of(&SIXTIETHS, &MINUTES_NAMES, n).1,
            Window::Hours(n) => names_of(&HOURS, &HOURS_NAMES, n).1,
            unit => unit.as_str(),
        }
    }

    /// The window's nominal length in seconds (a month counts 30 days, a year 365), as the `w`
    /// parameter of the `RateLimit-Policy` header wants it.
    pub const fn nominal_secs(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
            Window::Week => 604_800,
            Window::Month => 2_592_000,
            Window::Year => 31_536_000,
            Window::Seconds(n) => n.0 as u64,
            Window::Minutes(n) => 60 * n.0 as u64,
            Window::Hours(n) => 3_600 * n.0 as u64,
        }
    }

    /// The window of zone `tz` that contains `at`.
    ///
    /// Windows follow the calendar for about 142,000 years either side of 1970. An instant before
    /// that falls in one window that ends where the calendar's range starts; an instant after it
    /// falls in one window that starts where the range ends and ends at the last instant a
    /// [`Timestamp`] holds (which is therefore in no window).
    pub fn bounds(self, tz: Tz, at: Timestamp) -> Bounds {
        if at < CALENDAR_FIRST {
            return Bounds {
                start: Timestamp::from_millis(i64::MIN),
                end: CALENDAR_FIRST,
            };
        }
        if at >= CALENDAR_END {
            return Bounds {
                start: CALENDAR_END,
                end: Timestamp::from_millis(i64::MAX),
            };
        }
        let start = self.start(tz, at);
        let end = self.end_after(tz, at, start);
        Bounds {
            start: start.max(CALENDAR_FIRST),
            end: end.min(CALENDAR_END),
        }
    }

    /// The local date-time that names the window containing the local time `local`.
    fn truncate(self, local: NaiveDateTime) -> NaiveDateTime {
        let date = local.date();
        let (hour, minute, second) = (local.hour(), local.minute(), local.second());
        let at = |h: u32, m: u32, s: u32| date.and_hms_opt(h, m, s).unwrap_or(local);
        match self {
            Window::Second => at(hour, minute, second),
            Window::Seconds(n) => at(hour, minute, second - second % n.get()),
            Window::Minute => at(hour, minute, 0),
            Window::Minutes(n) => at(hour, minute - minute % n.get(), 0),
            Window::Hour => at(hour, 0, 0),
            Window::Hours(n) => at(hour - hour % n.get(), 0, 0),
            Window::Day => at(0, 0, 0),
            Window::Week => {
                let monday =
                    date - ChronoDuration::days(i64::from(date.weekday().num_days_from_monday()));
                monday.and_hms_opt(0, 0, 0).unwrap_or(local)
            }
            Window::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1)
                .and_then(|first| first.and_hms_opt(0, 0, 0))
                .unwrap_or(local),
            Window::Year => NaiveDate::from_ymd_opt(date.year(), 1, 1)
                .and_then(|first| first.and_hms_opt(0, 0, 0))
                .unwrap_or(local),
        }
    }

    /// The local date-time that names the window after the one named by `floor`.
    fn next(self, floor: NaiveDateTime) -> NaiveDateTime {
        match self {
            Window::Second => floor + ChronoDuration::seconds(1),
            Window::Seconds(n) => floor + ChronoDuration::seconds(i64::from(n.get())),
            Window::Minute => floor + ChronoDuration::minutes(1),
            Window::Minutes(n) => floor + ChronoDuration::minutes(i64::from(n.get())),
            Window::Hour => floor + ChronoDuration::hours(1),
            Window::Hours(n) => floor + ChronoDuration::hours(i64::from(n.get())),
            Window::Day => floor + ChronoDuration::days(1),
            Window::Week => floor + ChronoDuration::days(7),
            Window::Month => {
                let date = floor.date();
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                NaiveDate::from_ymd_opt(year, month, 1)
                    .and_then(|first| first.and_hms_opt(0, 0, 0))
                    .unwrap_or(floor + ChronoDuration::days(31))
            }
            Window::Year => NaiveDate::from_ymd_opt(floor.date().year() + 1, 1, 1)
                .and_then(|first| first.and_hms_opt(0, 0, 0))
                .unwrap_or(floor + ChronoDuration::days(366)),
        }
    }

    /// How far from an instant a search for a window's edge across a clock jump looks: two nominal
    /// windows and a day, in milliseconds.
    const fn search_margin(self) -> i64 {
        (2 * self.nominal_secs() as i64 + 86_400) * 1000
    }

    /// When the clock is set back over a window's name, windows cut on the clock (seconds,
    /// minutes, their multiples, hours) start again (the repeated hour is its own window); `"N
    /// hours"`, days, weeks, months and years keep their first instant.
    pub const fn repeats(self) -> bool {
        matches!(
            self,
            Window::Second
                | Window::Seconds(_)
                | Window::Minute
                | Window::Minutes(_)
                | Window::Hour
        )
    }

    fn local(tz: Tz, at: Timestamp) -> NaiveDateTime {
        tz.from_utc_datetime(&at.to_utc().naive_utc()).naive_local()
    }

    /// The first instant of the window containing `at`.
    fn start(self, tz: Tz, at: Timestamp) -> Timestamp {
        let start = self.named_start(tz, at);
        if self.repeats() {
            after_set_back(tz, start, at)
        } else {
            start
        }
    }

    /// The instant the name of the window containing `at` stands for.
    fn named_start(self, tz: Tz, at: Timestamp) -> Timestamp {
        let floor = self.truncate(Self::local(tz, at));
        match tz.from_local_datetime(&floor) {
            LocalResult::Single(start) => Timestamp::from_datetime(&start).min(at),
            LocalResult::Ambiguous(first, second) => {
                let second = Timestamp::from_datetime(&second);
                if self.repeats() && second <= at {
                    second
                } else {
                    Timestamp::from_datetime(&first).min(at)
                }
            }
            // The window's name was skipped by a jump forward: it starts at the first instant whose
            // local time is at or after its name. Local time only rises across such a jump, so a
            // binary search between an instant before the jump and `at` finds it.
            LocalResult::None => {
                let low = at.as_millis().saturating_sub(self.search_margin());
                first_instant_at_or_after(tz, floor, low, at.as_millis())
            }
        }
    }

    /// The first instant after `at` that belongs to a later window than the one starting at `start`.
    fn end_after(self, tz: Tz, at: Timestamp, start: Timestamp) -> Timestamp {
        let floor = self.truncate(Self::local(tz, at));
        let next = self.next(floor);
        let candidate = match tz.from_local_datetime(&next) {
            LocalResult::Single(t) => Timestamp::from_datetime(&t),
            // In a repeated hour the next name's first occurrence may already be past: the window
            // ends at the first occurrence after `at`.
            LocalResult::Ambiguous(first, second) => {
                let first = Timestamp::from_datetime(&first);
                if first > at {
                    first
                } else {
                    Timestamp::from_datetime(&second)
                }
            }
            LocalResult::None => {
                let high = at.as_millis().saturating_add(self.search_margin());
                first_instant_at_or_after(tz, next, at.as_millis(), high)
            }
        };
        if candidate <= at {
            // Cannot happen with real zone data; a window always ends after the instant it holds.
            return Timestamp::from_millis(at.as_millis().saturating_add(1));
        }
        // A clock set back inside (at, candidate) can start a new window earlier (the repeated
        // hour). Window starts never decrease as time goes on, so search for the first change.
        let before = Timestamp::from_millis(candidate.as_millis() - 1);
        if self.start(tz, before) == start {
            return candidate;
        }
        let (mut low, mut high) = (at.as_millis(), candidate.as_millis() - 1);
        // Invariant: start(low) == start, start(high) != start.
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.start(tz, Timestamp::from_millis(mid)) == start {
                low = mid;
            } else {
                high = mid;
            }
        }
        Timestamp::from_millis(high)
    }
}

/// The offset from UTC of `tz` at `at`, in seconds.
fn offset_at(tz: Tz, at: Timestamp) -> i32 {
    use chrono::Offset;
    tz.offset_from_utc_datetime(&at.to_utc().naive_utc())
        .fix()
        .local_minus_utc()
}

/// `start`, or the instant the clock was set back if that happened in `(start, at]`: a window cut on
/// the clock that straddles a set-back smaller than its unit's divisions (Lord Howe's 30 minutes
/// against 4-minute windows) starts again where the clock went back, never before.
fn after_set_back(tz: Tz, start: Timestamp, at: Timestamp) -> Timestamp {
    let now = offset_at(tz, at);
    if offset_at(tz, start) <= now {
        return start;
    }
    // Invariant: the offset at `low` is larger than now; at `high` it is now's.
    let (mut low, mut high) = (start.as_millis(), at.as_millis());
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if offset_at(tz, Timestamp::from_millis(mid)) == now {
            high = mid;
        } else {
            low = mid;
        }
    }
    Timestamp::from_millis(high)
}

/// The first instant in `(low, high]` whose local time in `tz` is at or after `name`, given that local
/// time rises across the range.
fn first_instant_at_or_after(
    tz: Tz,
    name: NaiveDateTime,
    mut low: i64,
    mut high: i64,
) -> Timestamp {
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if Window::local(tz, Timestamp::from_millis(mid)) >= name {
            high = mid;
        } else {
            low = mid;
        }
    }
    Timestamp::from_millis(high)
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text names no window a tier may have; the message says which are allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("window {text:?} is not allowed; {allowed}")]
pub struct UnknownWindow {
    /// The text as written.
    pub text: String,
    allowed: String,
}

impl UnknownWindow {
    fn new(text: &str) -> Self {
        let allowed = match text.split_once(' ').map(|(_, unit)| unit.trim()) {
            Some("seconds") => format!("allowed: {} seconds", list(&SIXTIETHS)),
            Some("minutes") => format!("allowed: {} minutes", list(&SIXTIETHS)),
            Some("hours") => format!("allowed: {} hours", list(&HOURS)),
            _ => format!(
                "allowed: second, minute, hour, day, week, month, year, \"N seconds\" or \
                 \"N minutes\" (N = {}) and \"N hours\" (N = {})",
                list(&SIXTIETHS),
                list(&HOURS)
            ),
        };
        Self {
            text: text.to_owned(),
            allowed,
        }
    }

    /// The windows allowed instead (`allowed: 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 minutes`).
    pub fn allowed(&self) -> &str {
        &self.allowed
    }
}

/// `2, 3, 4`.
fn list(counts: &[u8]) -> String {
    counts
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Window {
    type Err = UnknownWindow;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Window::ALL
            .into_iter()
            .find(|window| window.as_str() == text)
            .ok_or_else(|| UnknownWindow::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> Tz {
        name.parse().expect("a zone in the database")
    }

    fn local(tz: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        Timestamp::from(
            tz.with_ymd_and_hms(y, mo, d, h, mi, 0)
                .earliest()
                .expect("a valid local time"),
        )
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Timestamp {
        local(Tz::UTC, y, mo, d, h, mi)
    }

    #[test]
    fn utc_windows() {
        let at = utc(2026, 11, 24, 13, 59).saturating_add(Duration::from_millis(30_500));
        assert_eq!(
            Window::Minute.bounds(Tz::UTC, at),
            Bounds {
                start: utc(2026, 11, 24, 13, 59),
                end: utc(2026, 11, 24, 14, 0)
            }
        );
        assert_eq!(
            Window::Hour.bounds(Tz::UTC, at),
            Bounds {
                start: utc(2026, 11, 24, 13, 0),
                end: utc(2026, 11, 24, 14, 0)
            }
        );
        assert_eq!(
            Window::Day.bounds(Tz::UTC, at),
            Bounds {
                start: utc(2026, 11, 24, 0, 0),
                end: utc(2026, 11, 25, 0, 0)
            }
        );
        assert_eq!(
            Window::Month.bounds(Tz::UTC, at),
            Bounds {
                start: utc(2026, 11, 1, 0, 0),
                end: utc(2026, 12, 1, 0, 0)
            }
        );
        let december = utc(2026, 12, 31, 23, 59);
        assert_eq!(
            Window::Month.bounds(Tz::UTC, december).end,
            utc(2027, 1, 1, 0, 0)
        );
    }

    #[test]
    fn an_instant_on_the_boundary_opens_the_next_window() {
        let midnight = utc(2026, 11, 25, 0, 0);
        assert_eq!(Window::Day.bounds(Tz::UTC, midnight).start, midnight);
        let before = Timestamp::from_millis(midnight.as_millis() - 1);
        assert_eq!(Window::Day.bounds(Tz::UTC, before).end, midnight);
    }

    #[test]
    fn spring_forward_day_has_23_hours_and_fall_back_day_25() {
        let la = tz("America/Los_Angeles");
        let spring = Window::Day.bounds(la, local(la, 2026, 3, 8, 12, 0));
        assert_eq!(spring.len(), Duration::from_secs(23 * 3600));
        assert_eq!(spring.start, local(la, 2026, 3, 8, 0, 0));
        let fall = Window::Day.bounds(la, local(la, 2026, 11, 1, 12, 0));
        assert_eq!(fall.len(), Duration::from_secs(25 * 3600));
    }

    #[test]
    fn repeated_hour_is_its_own_window() {
        let la = tz("America/Los_Angeles");
        // 1 November 2026: 01:00-02:00 happens twice, first at -07:00 then at -08:00.
        let first = Timestamp::from(
            chrono::DateTime::parse_from_rfc3339("2026-11-01T01:30:00-07:00").expect("rfc3339"),
        );
        let second = Timestamp::from(
            chrono::DateTime::parse_from_rfc3339("2026-11-01T01:30:00-08:00").expect("rfc3339"),
        );
        let a = Window::Hour.bounds(la, first);
        let b = Window::Hour.bounds(la, second);
        assert_eq!(a.len(), Duration::from_secs(3600));
        assert_eq!(b.len(), Duration::from_secs(3600));
        assert_eq!(a.end, b.start);
        // The day is still one window.
        assert_eq!(
            Window::Day.bounds(la, first),
            Window::Day.bounds(la, second)
        );
    }

    #[test]
    fn skipped_hour_is_cut_short() {
        let la = tz("America/Los_Angeles");
        // 8 March 2026: 02:00 becomes 03:00; the hour before the jump is 01:00-02:00 (-08:00).
        let before = Timestamp::from(
            chrono::DateTime::parse_from_rfc3339("2026-03-08T01:59:00-08:00").expect("rfc3339"),
        );
        let hour = Window::Hour.bounds(la, before);
        assert_eq!(hour.len(), Duration::from_secs(3600));
        let after = Timestamp::from(
            chrono::DateTime::parse_from_rfc3339("2026-03-08T03:10:00-07:00").expect("rfc3339"),
        );
        assert_eq!(Window::Hour.bounds(la, after).start, hour.end);
    }

    #[test]
    fn santiago_day_without_midnight_starts_at_one() {
        let santiago = tz("America/Santiago");
        // 6 September 2026: clocks jump from 00:00 (-04) to 01:00 (-03); the day starts at 01:00.
        let noon = local(santiago, 2026, 9, 6, 12, 0);
        let day = Window::Day.bounds(santiago, noon);
        assert_eq!(day.start, utc(2026, 9, 6, 4, 0));
        assert_eq!(day.len(), Duration::from_secs(23 * 3600));
        // The day before ends where this one starts.
        let eve = local(santiago, 2026, 9, 5, 23, 30);
        assert_eq!(Window::Day.bounds(santiago, eve).end, day.start);
    }

    #[test]
    fn kathmandu_hours_start_at_a_quarter_past_utc() {
        let kathmandu = tz("Asia/Kathmandu");
        let at = utc(2026, 6, 1, 10, 20);
        let hour = Window::Hour.bounds(kathmandu, at);
        assert_eq!(hour.start, utc(2026, 6, 1, 10, 15));
        assert_eq!(hour.end, utc(2026, 6, 1, 11, 15));
        let day = Window::Day.bounds(kathmandu, at);
        assert_eq!(day.start, utc(2026, 5, 31, 18, 15));
    }

    #[test]
    fn extreme_instants_fall_in_windows_without_panicking() {
        // A month of zone 100 at i64::MAX ms overflowed `NaiveDateTime + TimeDelta`: instants
        // outside chrono's range were read as its last one, and the next month is past it.
        let edges = [
            i64::MIN,
            i64::MIN + 1,
            CALENDAR_FIRST.as_millis() - 1,
            CALENDAR_FIRST.as_millis(),
            CALENDAR_FIRST.as_millis() + 1,
            chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis(),
            chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis(),
            CALENDAR_END.as_millis() - 1,
            CALENDAR_END.as_millis(),
            i64::MAX - 1,
            i64::MAX,
        ];
        let zones = [
            Tz::UTC,
            chrono_tz::TZ_VARIANTS[100],
            tz("Pacific/Kiritimati"),
            tz("Pacific/Niue"),
            tz("America/Los_Angeles"),
        ];
        for zone in zones {
            for window in Window::ALL {
                for millis in edges {
                    let at = Timestamp::from_millis(millis);
                    let bounds = window.bounds(zone, at);
                    assert!(bounds.start <= at, "{zone} {window} {millis}: {bounds:?}");
                    if millis < i64::MAX {
                        assert!(at < bounds.end, "{zone} {window} {millis}: {bounds:?}");
                    }
                    if bounds.end.as_millis() < i64::MAX {
                        // The next window starts where this one ends, at the seams too.
                        assert_eq!(window.bounds(zone, bounds.end).start, bounds.end);
                    }
                }
            }
        }
        let month = Window::Month.bounds(
            chrono_tz::TZ_VARIANTS[100],
            Timestamp::from_millis(i64::MAX),
        );
        assert_eq!(month.start, CALENDAR_END);
        let first = Window::Day.bounds(Tz::UTC, Timestamp::from_millis(i64::MIN));
        assert_eq!(first.end, CALENDAR_FIRST);
    }

    #[test]
    fn parses_names() {
        assert_eq!("hour".parse::<Window>(), Ok(Window::Hour));
        assert_eq!("week".parse::<Window>(), Ok(Window::Week));
        assert!("fortnight".parse::<Window>().is_err());
    }
}

#[cfg(test)]
mod continuity {
    use super::*;

    /// Every window of every kind, walked across a zone's DST days: contiguous, containing, short.
    fn walk(zone: &str, from: &str, hours: i64) {
        let tz: Tz = zone.parse().expect("zone");
        let start = Timestamp::from(chrono::DateTime::parse_from_rfc3339(from).expect("rfc3339"));
        // Windows shorter than a minute are walked near the changes only (`seconds_across_changes`).
        for window in Window::ALL.into_iter().filter(|w| w.nominal_secs() >= 60) {
            let mut at = start;
            let mut steps = 0;
            while at.millis_since(start) < hours * 3_600_000 {
                let bounds = window.bounds(tz, at);
                assert!(
                    bounds.contains(at),
                    "{zone} {window}: {bounds:?} does not contain {at:?}"
                );
                assert!(
                    bounds.len() <= Duration::from_secs(window.nominal_secs() + 86_400 * 3),
                    "{zone} {window} {bounds:?}"
                );
                let next = window.bounds(tz, bounds.end);
                assert_eq!(
                    next.start, bounds.end,
                    "{zone} {window}: windows must be contiguous at {at:?}"
                );
                // A window that a set-back repeats is never longer than its nominal length (Lord
                // Howe's 30-minute set-back included: the repeated minutes start a window).
                if window.repeats() {
                    assert!(
                        bounds.len() <= Duration::from_secs(window.nominal_secs()),
                        "{zone} {window} {bounds:?}"
                    );
                }
                at = bounds.end;
                steps += 1;
                assert!(steps < 100_000, "{zone} {window}: too many windows");
            }
        }
    }

    #[test]
    fn windows_are_contiguous_across_dst_changes() {
        walk("Europe/Amsterdam", "2026-10-24T12:00:00Z", 48);
        walk("Europe/Amsterdam", "2026-03-28T12:00:00Z", 48);
        walk("America/Santiago", "2026-09-05T00:00:00Z", 72);
        walk("America/Santiago", "2026-04-04T00:00:00Z", 72);
        walk("Pacific/Auckland", "2026-04-04T00:00:00Z", 48);
        walk("Australia/Lord_Howe", "2026-04-04T00:00:00Z", 48);
        walk("Asia/Kathmandu", "2026-01-01T00:00:00Z", 24);
    }
}
