//! What a 429 says: the limit that rejected, its numbers for `X-RateLimit-*`, the seconds for
//! `Retry-After` and the problem body's violated policies.

use std::sync::{Arc, LazyLock};

use tollgate_core::{Charge, LimitStatus, RejectReason, ResolvedOrg, Timestamp};

use crate::headers::{CONCURRENCY, Legacy, Slots, item_names, secs_until, slot_retry};

/// What a 429 says.
pub(crate) struct Rejection {
    pub(crate) limit: Arc<str>,
    pub(crate) legacy: Legacy,
    pub(crate) slots: Option<Slots>,
    /// When a concurrency slot may be free, for the concurrency item's `t` when none is.
    pub(crate) slot_retry: Timestamp,
    pub(crate) retry_after: u64,
    pub(crate) violated: Vec<String>,
}

static CONCURRENCY_NAME: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(CONCURRENCY));

impl Rejection {
    pub(crate) fn new(
        org: &ResolvedOrg,
        reason: RejectReason,
        retry_at: Option<Timestamp>,
        violated: &[usize],
        statuses: &[LimitStatus],
        slots: Option<Slots>,
        now: Timestamp,
    ) -> Self {
        let slot_retry = slot_retry(now);
        match reason {
            RejectReason::Concurrency => {
                let max = org.concurrency().map_or(0, |c| c.max());
                let reset = retry_at.unwrap_or(slot_retry);
                Self {
                    limit: Arc::clone(&CONCURRENCY_NAME),
                    legacy: Legacy {
                        limit: u64::from(max),
                        remaining: 0,
                        reset,
                    },
                    slots: Some(Slots { max, free: 0 }),
                    slot_retry: reset,
                    retry_after: secs_until(reset, now).max(1),
                    violated: vec![CONCURRENCY.to_owned()],
                }
            }
            RejectReason::Limit(index) => {
                let status = statuses.iter().find(|status| status.index == index);
                let legacy = status.map_or(
                    Legacy {
                        limit: 0,
                        remaining: 0,
                        reset: now,
                    },
                    Legacy::of,
                );
                // `None`: the charge exceeds what the limit can ever hold; point at the last
                // window's end, when the most capacity is back.
                let retry_at = retry_at.unwrap_or_else(|| {
                    status
                        .and_then(|status| status.tiers().last())
                        .map_or(legacy.reset, |tier| tier.reset)
                });
                let violated = statuses
                    .iter()
                    .filter(|status| violated.contains(&status.index))
                    .flat_map(|status| item_names(org, status))
                    .collect();
                Self {
                    limit: org
                        .limits()
                        .get(index)
                        .map_or_else(|| Arc::from("?"), |limit| Arc::clone(limit.name_arc())),
                    legacy,
                    // Concurrency was checked first and was not the reason: the item shows the
                    // slots the store saw (left out if it did not say).
                    slots,
                    slot_retry,
                    retry_after: secs_until(retry_at, now).max(1),
                    violated,
                }
            }
        }
    }

    pub(crate) fn detail(&self, org: &ResolvedOrg, charge: Charge) -> String {
        if *self.limit == *CONCURRENCY {
            format!(
                "organisation {:?} already has {} requests in flight, its plan's maximum; retry when one has finished (in about {} s)",
                org.id().as_str(),
                self.legacy.limit,
                self.retry_after
            )
        } else {
            format!(
                "limit {:?} of organisation {:?} has {} of {} left and this request needs {}; retry in {} s",
                &*self.limit,
                org.id().as_str(),
                self.legacy.remaining,
                self.legacy.limit,
                charge.points,
                self.retry_after
            )
        }
    }
}
