//! Calendar windows of every kind in every zone of the database, at any instant: `Window::bounds`
//! never panics, and for instants in years 1900 to 2400 the window holds the instant, is not too
//! long, and the next window starts where it ends.

#![no_main]

use arbitrary::Arbitrary;
use chrono_tz::{TZ_VARIANTS, Tz};
use libfuzzer_sys::fuzz_target;
use tollhouse_core::{Timestamp, Window};

/// 1900-01-01T00:00:00Z in milliseconds.
const SANE_FROM: i64 = -2_208_988_800_000;
/// 2401-01-01T00:00:00Z in milliseconds.
const SANE_UNTIL: i64 = 13_601_088_000_000;

/// One question to the window arithmetic.
#[derive(Arbitrary, Debug)]
struct Input {
    /// Which window kind (modulo the four kinds).
    window: u8,
    /// Which zone (an index into `chrono_tz::TZ_VARIANTS`, modulo its length).
    zone: u16,
    /// The instant, in milliseconds since the epoch.
    at: i64,
    /// Fold `at` into years 1900..=2400, where the window properties are checked.
    sane: bool,
}

fuzz_target!(|input: Input| {
    let window = Window::ALL[usize::from(input.window) % Window::ALL.len()];
    let tz = TZ_VARIANTS[usize::from(input.zone) % TZ_VARIANTS.len()];
    let at = if input.sane {
        SANE_FROM + input.at.rem_euclid(SANE_UNTIL - SANE_FROM)
    } else {
        input.at
    };
    let bounds = window.bounds(tz, Timestamp::from_millis(at));
    // Formatting reads the instants back through chrono: it must not panic either.
    let _ = format!("{bounds:?}");
    if (SANE_FROM..SANE_UNTIL).contains(&at) {
        check_sane(window, tz, Timestamp::from_millis(at));
    }
});

/// The properties of a window around an ordinary instant.
fn check_sane(window: Window, tz: Tz, at: Timestamp) {
    let bounds = window.bounds(tz, at);
    assert!(
        bounds.start <= at && at < bounds.end,
        "{window} in {tz}: {bounds:?} does not hold {at:?}"
    );
    // A day of a DST change, or a zone moving across the date line, stays well under three extra
    // days (the bound the crate's own continuity test uses).
    let most = window.nominal_secs() + 3 * 86_400;
    assert!(
        bounds.len().as_secs() <= most,
        "{window} in {tz}: {bounds:?} lasts {:?}",
        bounds.len()
    );
    let next = window.bounds(tz, bounds.end);
    assert_eq!(
        next.start, bounds.end,
        "{window} in {tz}: the window after {bounds:?} is {next:?}"
    );
    let last = Timestamp::from_millis(bounds.end.as_millis() - 1);
    assert_eq!(
        window.bounds(tz, last),
        bounds,
        "{window} in {tz}: the last instant of {bounds:?}"
    );
    assert_eq!(
        window.bounds(tz, bounds.start),
        bounds,
        "{window} in {tz}: the first instant of {bounds:?}"
    );
}
