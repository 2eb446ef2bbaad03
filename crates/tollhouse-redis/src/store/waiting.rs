//! Waiting for a concurrency slot on Redis: first come, first served per org on an instance, one
//! wake per slot freed through the instance, and a bounded poll for slots freed elsewhere.
//!
//! The requests of an org waiting on this instance stand in a line (at most
//! [`MAX_WAITERS`](tollhouse_core::plan::MAX_WAITERS)). Only the first asks Redis: at once when a
//! permit of its org is given back through this instance, otherwise after
//! [`FIRST_POLL`](tollhouse_core::store::FIRST_POLL), then twice as long each time up to
//! [`LONGEST_POLL`](tollhouse_core::store::LONGEST_POLL): a slot freed on another instance is taken
//! within about 100 ms, with at most 10 scripts a second per org and instance, whatever the line's
//! length. A request that arrives while others wait joins the line instead of asking.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tollhouse_core::plan::MAX_WAITERS;
use tollhouse_core::store::{FIRST_POLL, LONGEST_POLL, full};
use tollhouse_core::{Charge, Clock, Decision, ResolvedOrg, StoreError};

use super::Inner;

/// The lines of waiting requests, by the org's lease set.
#[derive(Debug, Default)]
pub(super) struct Lines {
    lines: Mutex<HashMap<Arc<str>, VecDeque<Arc<Notify>>>>,
}

impl Lines {
    /// Wakes the first in `set`'s line: a permit of its org came back through this instance.
    pub(super) fn slot_freed(&self, set: &str) {
        if let Some(first) = self.lines.lock().get(set).and_then(VecDeque::front) {
            first.notify_one();
        }
    }

    /// Joins `set`'s line, unless it already holds [`MAX_WAITERS`].
    fn join(&self, set: &Arc<str>) -> Option<Place<'_>> {
        let mut lines = self.lines.lock();
        let line = lines.entry(Arc::clone(set)).or_default();
        if line.len() >= MAX_WAITERS {
            return None;
        }
        let turn = Arc::new(Notify::new());
        line.push_back(Arc::clone(&turn));
        Some(Place {
            lines: self,
            set: Arc::clone(set),
            turn,
        })
    }

    /// How many wait in `set`'s line.
    pub(super) fn len_of(&self, set: &str) -> usize {
        self.lines.lock().get(set).map_or(0, VecDeque::len)
    }

    /// Whether anyone waits in `set`'s line.
    fn busy(&self, set: &str) -> bool {
        self.lines
            .lock()
            .get(set)
            .is_some_and(|line| !line.is_empty())
    }
}

/// A place in a line, left when dropped (the next in line is then told it is first).
struct Place<'a> {
    lines: &'a Lines,
    set: Arc<str>,
    turn: Arc<Notify>,
}

impl Place<'_> {
    fn is_first(&self) -> bool {
        self.lines
            .lines
            .lock()
            .get(&self.set)
            .and_then(VecDeque::front)
            .is_some_and(|first| Arc::ptr_eq(first, &self.turn))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = self.lines.lines.lock();
        let Some(line) = lines.get_mut(&self.set) else {
            return;
        };
        line.retain(|place| !Arc::ptr_eq(place, &self.turn));
        match line.front() {
            Some(next) => next.notify_one(),
            None => {
                lines.remove(&self.set);
            }
        }
    }
}

impl Inner {
    /// Admits as [`Store::admit_waiting`](tollhouse_core::Store::admit_waiting) says, on Redis.
    pub(super) async fn admit_in_line(
        self: &Arc<Self>,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        clock: &dyn Clock,
    ) -> Result<Decision, StoreError> {
        let wait = org.concurrency().map(|c| c.wait()).unwrap_or_default();
        let set: Arc<str> = Arc::from(self.keys(org.id()).leases());
        let ask = || self.admit(org, charge, clock.now());
        // With no one waiting, ask at once; behind others, join the line without asking.
        let mut first = None;
        if wait.is_zero() || !self.lines.busy(&set) {
            let decision = ask().await?;
            if wait.is_zero() || !full(&decision) {
                return Ok(decision);
            }
            first = Some(decision);
        }
        let Some(place) = self.lines.join(&set) else {
            return match first {
                Some(decision) => Ok(decision),
                None => ask().await,
            };
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = FIRST_POLL;
        loop {
            let first_in_line = place.is_first();
            let until = if first_in_line {
                (tokio::time::Instant::now() + pause).min(deadline)
            } else {
                deadline
            };
            let _ = tokio::time::timeout_at(until, place.turn.notified()).await;
            let over = tokio::time::Instant::now() >= deadline;
            if !place.is_first() && !over {
                continue;
            }
            let decision = ask().await?;
            if !full(&decision) || over {
                return Ok(decision);
            }
            pause = if first_in_line {
                (pause * 2).min(LONGEST_POLL)
            } else {
                FIRST_POLL
            };
        }
    }
}
