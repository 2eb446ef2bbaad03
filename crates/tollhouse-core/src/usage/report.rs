//! The report's tallies: calls per endpoint and identical requests per day, bounded in entries
//! and in bytes, and in work per call, however many distinct paths a caller sends.
//!
//! Each entry is keyed by a 64-bit hash of its method and path (or route) and keeps a short
//! display of them ([`DISPLAY_BYTES`]), not the whole string: what one org can make a tally hold
//! is `capacity × (entry + display)`, whatever it sends. A full tally of repeated requests makes
//! room by forgetting the entry seen least (the lowest hash of those, on a tie: the order a Redis
//! sorted set keeps, so every store forgets the same entry), found in an ordered index in
//! O(log n): a polling path that has come twice outlives any number of one-off paths.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher as _};
use std::sync::Arc;

use crate::time::Timestamp;

/// Bytes of a method's and path's display kept per entry; longer ones are cut at a character
/// boundary and end with `…`.
pub const DISPLAY_BYTES: usize = 128;

/// The hash that keys the tallies: fixed, so that every store and instance keys alike (an org's
/// crafted collisions can only merge two of its own rows).
pub fn entry_hash(method: &str, path: &str) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x746f_6c6c_686f_7573).build_hasher();
    hasher.write(method.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(path.as_bytes());
    hasher.finish()
}

/// `text` cut to at most `max` bytes at a character boundary, ending with `…` when cut.
pub fn cut(text: &str, max: usize) -> Arc<str> {
    if text.len() <= max {
        return Arc::from(text);
    }
    let ellipsis = '…'.len_utf8();
    let mut end = max.saturating_sub(ellipsis);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = String::with_capacity(end + ellipsis);
    kept.push_str(&text[..end]);
    kept.push('…');
    Arc::from(kept)
}

/// One row of a tally.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The method.
    pub method: Arc<str>,
    /// The path or route, cut to [`DISPLAY_BYTES`].
    pub path: Arc<str>,
    /// Times counted.
    pub count: u64,
    /// Points counted (endpoints only).
    pub points: u64,
    /// The first and last instants counted.
    pub first: Timestamp,
    /// See `first`.
    pub last: Timestamp,
}

/// A bounded tally of rows keyed by [`entry_hash`].
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    capacity: usize,
    rows: HashMap<u64, Row, foldhash::fast::RandomState>,
    /// `(count, key)` of every row: the least counted first.
    order: BTreeSet<(u64, u64)>,
}

impl Tally {
    /// An empty tally of at most `capacity` rows.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            rows: HashMap::default(),
            order: BTreeSet::new(),
        }
    }

    /// Rows held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Forgets every row.
    pub(crate) fn clear(&mut self) {
        self.rows.clear();
        self.order.clear();
    }

    /// Counts one call of `method` and `path` at `at` with `points`: its row grows, or a new row
    /// takes the place of the least counted one when the tally is full (`evict`), or the call is
    /// counted under `overflow` (a fixed method and display) when it is not.
    pub(crate) fn count(
        &mut self,
        method: &Arc<str>,
        path: &str,
        at: Timestamp,
        points: u64,
        full: Full<'_>,
    ) {
        let key = entry_hash(method, path);
        if let Some(row) = self.rows.get_mut(&key) {
            self.order.remove(&(row.count, key));
            row.count = row.count.saturating_add(1);
            row.points = row.points.saturating_add(points);
            row.first = row.first.min(at);
            row.last = row.last.max(at);
            self.order.insert((row.count, key));
            return;
        }
        match full {
            Full::Evict if self.rows.len() >= self.capacity => self.evict_least(),
            // One row is kept for the overflow, which then always fits.
            Full::Overflow(method, path) if self.rows.len() + 1 >= self.capacity => {
                return self.count(method, path, at, points, Full::Evict);
            }
            _ => {}
        }
        let row = Row {
            method: Arc::clone(method),
            path: cut(path, DISPLAY_BYTES),
            count: 1,
            points,
            first: at,
            last: at,
        };
        self.order.insert((1, key));
        if self.rows.len() + 1 == self.capacity {
            // Full from now on, it will forget a row for each new one: room for twice as many
            // rows lets the table clear its tombstones in place instead of growing again later.
            self.rows.reserve(self.capacity);
        }
        self.rows.insert(key, row);
    }

    /// Forgets the row counted least (the lowest hash of those).
    fn evict_least(&mut self) {
        if let Some((_, key)) = self.order.pop_first() {
            self.rows.remove(&key);
        }
    }

    /// Every row, in no order.
    pub(crate) fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values()
    }

    /// Every row with its key, to keep across a restart.
    pub(crate) fn saved(&self) -> Vec<(u64, Row)> {
        self.rows
            .iter()
            .map(|(key, row)| (*key, row.clone()))
            .collect()
    }

    /// A tally of `capacity` rows holding `saved` (the most counted, if there are more).
    pub(crate) fn restored(capacity: usize, mut saved: Vec<(u64, Row)>) -> Self {
        let mut tally = Self::new(capacity);
        saved.sort_by(|(a_key, a), (b_key, b)| b.count.cmp(&a.count).then(a_key.cmp(b_key)));
        for (key, row) in saved.into_iter().take(tally.capacity) {
            tally.order.insert((row.count, key));
            tally.rows.insert(key, row);
        }
        tally
    }
}

/// What a full tally does with a new row.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Full<'a> {
    /// Forget the row counted least.
    Evict,
    /// Count it in one overflow row of this method and display.
    Overflow(&'a Arc<str>, &'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    #[test]
    fn cuts_at_a_character_boundary_and_marks_the_cut() {
        assert_eq!(&*cut("/short", 128), "/short");
        let long = "é".repeat(100);
        let kept = cut(&long, 11);
        assert!(kept.len() <= 11, "{kept}");
        assert!(kept.ends_with('…'));
        assert_eq!(&*kept, "éééé…");
    }

    #[test]
    fn a_full_tally_forgets_the_least_counted_and_keeps_a_poller() {
        let get: Arc<str> = Arc::from("GET");
        let mut tally = Tally::new(4);
        tally.count(&get, "/poll", at(0), 0, Full::Evict);
        tally.count(&get, "/poll", at(30), 0, Full::Evict);
        for i in 0..10_000 {
            tally.count(&get, &format!("/unique/{i}"), at(40), 0, Full::Evict);
            assert!(tally.len() <= 4);
        }
        let poll = tally
            .rows()
            .find(|row| &*row.path == "/poll")
            .expect("kept");
        assert_eq!(poll.count, 2);
        assert_eq!((poll.first, poll.last), (at(0), at(30)));
        assert_eq!(tally.order.len(), tally.rows.len());
    }

    #[test]
    fn an_overflow_row_takes_what_does_not_fit() {
        let get: Arc<str> = Arc::from("GET");
        let any: Arc<str> = Arc::from("*");
        let mut tally = Tally::new(3);
        for i in 0..10 {
            tally.count(
                &get,
                &format!("/r/{i}"),
                at(0),
                2,
                Full::Overflow(&any, "(other)"),
            );
        }
        assert_eq!(tally.len(), 3);
        let other = tally
            .rows()
            .find(|row| &*row.path == "(other)")
            .expect("overflow row");
        assert_eq!((other.count, other.points), (8, 16));
    }

    #[test]
    fn long_paths_are_kept_as_short_displays_under_distinct_keys() {
        let get: Arc<str> = Arc::from("GET");
        let mut tally = Tally::new(8);
        let base = "/x".repeat(200);
        tally.count(&get, &format!("{base}?a=1"), at(0), 0, Full::Evict);
        tally.count(&get, &format!("{base}?a=2"), at(0), 0, Full::Evict);
        assert_eq!(
            tally.len(),
            2,
            "paths that differ after the cut are two rows"
        );
        assert!(tally.rows().all(|row| row.path.len() <= DISPLAY_BYTES));
    }
}
