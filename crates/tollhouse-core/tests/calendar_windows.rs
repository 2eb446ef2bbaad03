//! The windows beyond minute, hour, day and month: seconds, ISO weeks, years and the clock
//! multiples, at DST changes in several zones (Lord Howe's 30-minute shift and :30 and :45
//! offsets among them) and at year ends.

use std::time::Duration;

use chrono::TimeZone;
use chrono_tz::Tz;
use tollhouse_core::{Bounds, Multiple, Timestamp, Window};

fn zone(name: &str) -> Tz {
    name.parse().expect("a zone in the database")
}

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::from(chrono::DateTime::parse_from_rfc3339(rfc3339).expect("rfc3339"))
}

fn window(name: &str) -> Window {
    name.parse().expect("an allowed window")
}

fn bounds(name: &str, tz: &str, instant: &str) -> Bounds {
    window(name).bounds(zone(tz), at(instant))
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

#[test]
fn every_window_parses_from_its_name_and_orders_by_length() {
    for pair in Window::ALL.windows(2) {
        assert!(pair[0] < pair[1], "{} before {}", pair[0], pair[1]);
        assert!(pair[0].nominal_secs() < pair[1].nominal_secs());
    }
    for window in Window::ALL {
        assert_eq!(window.as_str().parse::<Window>(), Ok(window));
        assert_eq!(window.item_str(), window.as_str().replace(' ', ""));
    }
    assert_eq!(
        window("5 minutes"),
        Window::Minutes(Multiple::minutes(5).expect("allowed"))
    );
    assert_eq!(window("5 minutes").nominal_secs(), 300);
    assert_eq!(window("6 hours").nominal_secs(), 21_600);
    assert_eq!(window("30 seconds").nominal_secs(), 30);
    assert_eq!(Window::Week.nominal_secs(), 604_800);
    assert_eq!(Window::Year.nominal_secs(), 31_536_000);
}

#[test]
fn a_window_not_allowed_names_those_that_are() {
    let error = "7 minutes"
        .parse::<Window>()
        .expect_err("7 does not divide 60");
    assert_eq!(
        error.allowed(),
        "allowed: 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 minutes"
    );
    let error = "60 minutes"
        .parse::<Window>()
        .expect_err("an hour is `hour`");
    assert!(error.allowed().ends_with("minutes"), "{error}");
    let error = "5 hours"
        .parse::<Window>()
        .expect_err("5 does not divide 24");
    assert_eq!(error.allowed(), "allowed: 2, 3, 4, 6, 8, 12 hours");
    for refused in [
        "fortnight",
        "1 minutes",
        "2 minute",
        "seconds",
        "",
        "5  minutes",
    ] {
        let error = refused.parse::<Window>().expect_err(refused);
        assert!(error.to_string().contains("allowed"), "{refused}: {error}");
    }
    assert!(Multiple::hours(5).is_none());
    assert!(Multiple::seconds(7).is_none());
}

#[test]
fn seconds_and_their_multiples_are_cut_on_the_clock() {
    let b = bounds("second", "UTC", "2026-12-07T10:00:05.250Z");
    assert_eq!(
        (b.start, b.end),
        (at("2026-12-07T10:00:05Z"), at("2026-12-07T10:00:06Z"))
    );
    let b = bounds("15 seconds", "UTC", "2026-12-07T10:00:44.999Z");
    assert_eq!(
        (b.start, b.end),
        (at("2026-12-07T10:00:30Z"), at("2026-12-07T10:00:45Z"))
    );
    // Kathmandu is 5:45 ahead: its minutes are UTC's, its 5-minute windows too.
    let b = bounds("5 minutes", "Asia/Kathmandu", "2026-12-07T10:23:10Z");
    assert_eq!(
        (b.start, b.end),
        (at("2026-12-07T10:20:00Z"), at("2026-12-07T10:25:00Z"))
    );
    // …but its 6-hour windows start at 00:00, 06:00, 12:00 and 18:00 local (18:15 UTC).
    let b = bounds("6 hours", "Asia/Kathmandu", "2026-12-07T10:23:10Z");
    assert_eq!(
        (b.start, b.end),
        (at("2026-12-07T06:15:00Z"), at("2026-12-07T12:15:00Z"))
    );
    // Kolkata is 5:30 ahead: its 20-minute windows start at :10, :30 and :50 of UTC hours.
    let b = bounds("20 minutes", "Asia/Kolkata", "2026-12-07T10:05:00Z");
    assert_eq!(
        (b.start, b.end),
        (at("2026-12-07T09:50:00Z"), at("2026-12-07T10:10:00Z"))
    );
}

#[test]
fn clock_cut_windows_repeat_in_a_repeated_hour() {
    // Los Angeles, 1 November 2026: 01:00-02:00 happens twice, at -07:00 and then at -08:00.
    let first = bounds(
        "15 minutes",
        "America/Los_Angeles",
        "2026-11-01T01:50:00-07:00",
    );
    let second = bounds(
        "15 minutes",
        "America/Los_Angeles",
        "2026-11-01T01:50:00-08:00",
    );
    assert_eq!(first.start, at("2026-11-01T01:45:00-07:00"));
    assert_eq!(first.end, at("2026-11-01T01:00:00-08:00"));
    assert_eq!(second.start, at("2026-11-01T01:45:00-08:00"));
    assert_eq!(first.len(), Duration::from_secs(900));
    assert_eq!(second.len(), Duration::from_secs(900));
    let a = bounds(
        "second",
        "America/Los_Angeles",
        "2026-11-01T01:59:59.5-07:00",
    );
    assert_eq!(a.end, at("2026-11-01T01:00:00-08:00"));
    // Lord Howe sets its clock back 30 minutes at 02:00 (+11 to +10:30): the half hour from 01:30
    // repeats, and its 10-minute windows with it.
    let before = bounds(
        "10 minutes",
        "Australia/Lord_Howe",
        "2026-04-05T01:55:00+11:00",
    );
    assert_eq!(before.end, at("2026-04-05T01:30:00+10:30"));
    let again = bounds(
        "10 minutes",
        "Australia/Lord_Howe",
        "2026-04-05T01:35:00+10:30",
    );
    assert_eq!(again.start, at("2026-04-05T01:30:00+10:30"));
    assert_eq!(again.len(), Duration::from_secs(600));
}

#[test]
fn hour_multiples_stretch_and_shrink_with_the_clock_as_a_day_does() {
    let la = "America/Los_Angeles";
    // Fall back: 00:00-06:00 local holds the repeated hour, 7 hours.
    let fall = bounds("6 hours", la, "2026-11-01T03:00:00-08:00");
    assert_eq!(fall.start, at("2026-11-01T00:00:00-07:00"));
    assert_eq!(fall.end, at("2026-11-01T06:00:00-08:00"));
    assert_eq!(fall.len(), hours(7));
    // Spring forward: 00:00-06:00 local loses 02:00-03:00, 5 hours; the next window is 6 again.
    let spring = bounds("6 hours", la, "2026-03-08T04:00:00-07:00");
    assert_eq!(spring.len(), hours(5));
    let next = window("6 hours").bounds(zone(la), spring.end);
    assert_eq!(next.len(), hours(6));
    // A 2-hour window at 02:00 when 02:00 does not exist starts at 03:00 (the first instant after).
    let skipped = bounds("2 hours", la, "2026-03-08T03:30:00-07:00");
    assert_eq!(skipped.start, at("2026-03-08T03:00:00-07:00"));
    assert_eq!(skipped.end, at("2026-03-08T04:00:00-07:00"));
    // Lord Howe's 30-minute shift: 00:00-02:00 lasts 2.5 hours, 00:00-03:00 3.5.
    let lh = "Australia/Lord_Howe";
    let two = bounds("2 hours", lh, "2026-04-05T01:45:00+10:30");
    assert_eq!(two.start, at("2026-04-05T00:00:00+11:00"));
    assert_eq!(two.len(), Duration::from_secs(9_000));
    let three = bounds("3 hours", lh, "2026-04-05T01:45:00+10:30");
    assert_eq!(three.len(), Duration::from_secs(12_600));
    // And in October it jumps 30 minutes forward at 02:00: 00:00-04:00 lasts 3.5 hours.
    let four = bounds("4 hours", lh, "2026-10-04T03:00:00+11:00");
    assert_eq!(four.len(), Duration::from_secs(12_600));
}

#[test]
fn weeks_start_at_mondays_local_midnight() {
    let ams = "Europe/Amsterdam";
    // The week of the October change (Sunday 25 October 2026) has 169 hours.
    let week = bounds("week", ams, "2026-10-25T12:00:00+01:00");
    assert_eq!(week.start, at("2026-10-19T00:00:00+02:00"));
    assert_eq!(week.end, at("2026-10-26T00:00:00+01:00"));
    assert_eq!(week.len(), hours(169));
    // The March one (29 March 2026) has 167.
    let week = bounds("week", ams, "2026-03-30T00:00:00+02:00");
    assert_eq!(week.start, at("2026-03-30T00:00:00+02:00"));
    let before = bounds("week", ams, "2026-03-29T23:59:59+02:00");
    assert_eq!(before.len(), hours(167));
    // A Monday midnight on a different UTC day: Auckland's week starts Sunday 11:00 UTC.
    let week = bounds("week", "Pacific/Auckland", "2026-12-06T10:59:59Z");
    assert_eq!(week.start, at("2026-11-29T11:00:00Z"));
    let week = bounds("week", "Pacific/Auckland", "2026-12-06T11:00:00Z");
    assert_eq!(week.start, at("2026-12-06T11:00:00Z"));
    // ISO weeks cross year ends: Thursday 31 December 2026 is in the week of 28 December.
    let week = bounds("week", "UTC", "2026-12-31T12:00:00Z");
    assert_eq!(
        (week.start, week.end),
        (at("2026-12-28T00:00:00Z"), at("2027-01-04T00:00:00Z"))
    );
}

#[test]
fn years_start_at_the_first_instant_of_january_first() {
    let year = bounds("year", "UTC", "2026-12-31T23:59:59.999Z");
    assert_eq!(
        (year.start, year.end),
        (at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    // Kolkata (+5:30) is already in 2027 at 18:30 UTC on 31 December.
    let year = bounds("year", "Asia/Kolkata", "2026-12-31T18:30:00Z");
    assert_eq!(year.start, at("2027-01-01T00:00:00+05:30"));
    assert_eq!(year.start, at("2026-12-31T18:30:00Z"));
    let year = bounds("year", "Asia/Kolkata", "2026-12-31T18:29:59Z");
    assert_eq!(year.end, at("2026-12-31T18:30:00Z"));
    // A leap year has 366 days; Auckland's year starts in summer time (+13).
    let leap = bounds("year", "Pacific/Auckland", "2028-06-01T00:00:00Z");
    assert_eq!(leap.start, at("2028-01-01T00:00:00+13:00"));
    assert_eq!(leap.len(), hours(366 * 24));
    // Year ends on the clock of every window cut there.
    let last = at("2026-12-31T23:59:59.5Z");
    for name in [
        "second",
        "30 seconds",
        "5 minutes",
        "hour",
        "12 hours",
        "day",
        "month",
        "year",
    ] {
        assert_eq!(
            window(name).bounds(zone("UTC"), last).end,
            at("2027-01-01T00:00:00Z"),
            "{name}"
        );
    }
}

#[test]
fn seconds_across_changes_are_contiguous_and_short() {
    // An hour either side of three changes, every window under a minute: contiguous, each at most
    // its nominal length.
    let changes = [
        ("Europe/Amsterdam", "2026-10-25T01:00:00Z"),
        ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
        ("America/Santiago", "2026-09-06T04:00:00Z"),
    ];
    for (name, change) in changes {
        let tz = zone(name);
        for window in Window::ALL.into_iter().filter(|w| w.nominal_secs() < 60) {
            let from = Timestamp::from_millis(at(change).as_millis() - 3_600_000);
            let mut bounds = window.bounds(tz, from);
            while bounds.start.as_millis() < at(change).as_millis() + 3_600_000 {
                assert!(
                    bounds.len() <= Duration::from_secs(window.nominal_secs()),
                    "{name} {window} {bounds:?}"
                );
                let next = window.bounds(tz, bounds.end);
                assert_eq!(next.start, bounds.end, "{name} {window}");
                bounds = next;
            }
        }
    }
    // Local times are whole seconds in every zone, so a second window is exactly a second.
    let tz = zone("Asia/Kathmandu");
    let b = Window::Second.bounds(
        tz,
        Timestamp::from(
            tz.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("exists"),
        ),
    );
    assert_eq!(b.len(), Duration::from_secs(1));
}
