//! What a 429 says: the limit that rejected, its numbers for `X-RateLimit-*`, the seconds for
//! `Retry-After` and the problem body's violated policies.

use std::sync::{Arc, LazyLock};

use tollhouse_core::{Charge, Dimension, LimitStatus, RejectReason, ResolvedOrg, Timestamp};

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
    /// The charge is more than the limit holds even when full: no retry will be admitted.
    pub(crate) never: bool,
    /// The org also has its maximum of requests in flight.
    pub(crate) slots_full: bool,
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
        // The items of every limit that could not take the charge.
        let limits_violated = statuses
            .iter()
            .filter(|status| violated.contains(&status.index))
            .flat_map(|status| item_names(org, status));
        match reason {
            RejectReason::Concurrency => {
                let max = org.concurrency().map_or(0, |c| c.max());
                let reset = retry_at.unwrap_or(slot_retry);
                // A limit that is full too, but frees up first, is listed after concurrency.
                let violated = std::iter::once(CONCURRENCY.to_owned())
                    .chain(limits_violated)
                    .collect();
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
                    violated,
                    never: false,
                    slots_full: true,
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
                // window's end, when the most capacity is back (the detail says it won't do).
                let never = retry_at.is_none();
                let retry_at = retry_at.unwrap_or_else(|| {
                    status
                        .and_then(|status| status.tiers().last())
                        .map_or(legacy.reset, |tier| tier.reset)
                });
                let mut violated: Vec<String> = limits_violated.collect();
                // No slot free either (the store found both): the concurrency limit is violated
                // too, though the limit frees up later.
                let slots_full = slots.is_some_and(|slots| slots.free == 0);
                if slots_full {
                    violated.push(CONCURRENCY.to_owned());
                }
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
                    never,
                    slots_full,
                }
            }
        }
    }

    pub(crate) fn detail(&self, org: &ResolvedOrg, charge: Charge) -> String {
        if *self.limit == *CONCURRENCY {
            let requests = if self.legacy.limit == 1 {
                "request"
            } else {
                "requests"
            };
            format!(
                "organisation {:?} already has {} {requests} in flight, its plan's maximum; retry when one has finished (in about {} s)",
                org.id().as_str(),
                self.legacy.limit,
                self.retry_after
            )
        } else if let Some(need) = self.need(org, charge)
            && self.never
        {
            format!(
                "limit {:?} of organisation {:?} holds at most {} and this request needs {}: it \
                 cannot be admitted under this plan, however long it waits",
                &*self.limit,
                org.id().as_str(),
                self.legacy.limit,
                need,
            )
        } else {
            let (remaining, limit) = (self.legacy.remaining, self.legacy.limit);
            let left = match self.need(org, charge) {
                Some(need) => {
                    format!("has {remaining} of {limit} left and this request needs {need}")
                }
                // A latency budget admits while any time is left; the request's own is measured later.
                None => format!("has {remaining} of {limit} ms left"),
            };
            let in_flight = if self.slots_full {
                "; it also has its plan's maximum of requests in flight"
            } else {
                ""
            };
            format!(
                "limit {:?} of organisation {:?} {left}{in_flight}; retry in {} s",
                &*self.limit,
                org.id().as_str(),
                self.retry_after
            )
        }
    }

    /// What the request needs of the limit that rejected it: 1 of a `requests` limit, its cost
    /// of a `points` limit, `None` of a latency budget (measured after the response).
    fn need(&self, org: &ResolvedOrg, charge: Charge) -> Option<u64> {
        let limit = org
            .limits()
            .iter()
            .find(|limit| limit.name() == &*self.limit)?;
        Some(charge.amount(limit.dimension())).filter(|_| limit.dimension() != Dimension::LatencyMs)
    }
}
