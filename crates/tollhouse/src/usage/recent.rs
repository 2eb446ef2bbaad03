//! The usage routes' last answers: an org that reads its usage more often than a few times a
//! second gets the last answer (at most a second old) instead of another read of the store.
//!
//! Reading usage is never limited and never billed, so nothing else stops a key holder from
//! polling it in a loop; this bounds what that loop costs the store to
//! [`FRESH_READS_PER_SECOND`] reads per org and route, whatever the rate.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;
use tollhouse_core::{OrgId, UsageView};

/// Reads of the store per org, route and second; past them, the last answer is served.
pub const FRESH_READS_PER_SECOND: u32 = 4;
/// The oldest answer served instead of a fresh read.
pub const MAX_ANSWER_AGE: Duration = Duration::from_secs(1);
/// Orgs and routes remembered before the stale ones are swept.
const SWEEP_AT: usize = 4_096;

/// The last answers, per org and route.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    answers: Mutex<HashMap<(OrgId, UsageView), Answers>>,
}

/// One org's answers on one route.
#[derive(Debug)]
struct Answers {
    second: Instant,
    fresh: u32,
    last: Option<(Instant, Bytes)>,
}

impl Recent {
    /// The last answer to serve instead of a fresh read, if `org` has read `view` more than
    /// [`FRESH_READS_PER_SECOND`] times this second; `None` counts a fresh read.
    pub(crate) fn reuse(&self, org: &OrgId, view: UsageView) -> Option<Bytes> {
        let now = Instant::now();
        let mut answers = self.answers.lock();
        if answers.len() >= SWEEP_AT {
            answers.retain(|_, answers| now.duration_since(answers.second) < MAX_ANSWER_AGE);
        }
        let entry = answers.entry((org.clone(), view)).or_insert(Answers {
            second: now,
            fresh: 0,
            last: None,
        });
        if now.duration_since(entry.second) >= Duration::from_secs(1) {
            entry.second = now;
            entry.fresh = 0;
        }
        if entry.fresh >= FRESH_READS_PER_SECOND
            && let Some((at, body)) = &entry.last
            && now.duration_since(*at) < MAX_ANSWER_AGE
        {
            return Some(body.clone());
        }
        entry.fresh += 1;
        None
    }

    /// Keeps `body`, a fresh answer, to serve for a while.
    pub(crate) fn keep(&self, org: &OrgId, view: UsageView, body: Bytes) {
        if let Some(entry) = self.answers.lock().get_mut(&(org.clone(), view)) {
            entry.last = Some((Instant::now(), body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_few_fresh_reads_a_second_then_the_last_answer_then_fresh_again() {
        let recent = Recent::default();
        let org = OrgId::new("acme");
        for read in 0..FRESH_READS_PER_SECOND {
            assert_eq!(recent.reuse(&org, UsageView::Summary), None, "read {read}");
            recent.keep(
                &org,
                UsageView::Summary,
                Bytes::from(format!("answer {read}")),
            );
        }
        for _ in 0..100 {
            assert_eq!(
                recent.reuse(&org, UsageView::Summary).as_deref(),
                Some(&b"answer 3"[..])
            );
        }
        // Another route and another org are counted on their own.
        assert_eq!(recent.reuse(&org, UsageView::Calls), None);
        assert_eq!(
            recent.reuse(&OrgId::new("globex"), UsageView::Summary),
            None
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            recent.reuse(&org, UsageView::Summary),
            None,
            "a new second reads fresh"
        );
    }
}
