//! Settlements and call records: computed when they are handed over, queued for the org's next
//! batch ([`super::batch`]), written by the settle script.

use std::future::Future;
use std::sync::Arc;

use chrono::NaiveDate;
use tokio::sync::oneshot;
use tollhouse_core::usage::{DAYS_KEPT, local_date};
use tollhouse_core::{CallRecord, Dimension, ResolvedOrg, Settlement, StoreError, Timestamp};

use super::{Inner, day_number, ttl};
use crate::keys::OrgKeys;

const DAY_MS: i64 = 86_400_000;
/// Billable counts live this long after their date's last call.
pub(super) const DAY_TTL_MS: i64 = (DAYS_KEPT as i64 + 1) * DAY_MS;
/// Today's report (endpoints, repeated requests) lives this long after its last call.
pub(super) const REPORT_TTL_MS: i64 = 2 * DAY_MS;
/// The endpoint that collects every endpoint past the `MAX_ENDPOINTS`th of a day.
pub(super) const OTHER_ENDPOINT: &str = "*\n(other)";

/// One settlement or record of one org, ready to merge into its batch.
pub(super) struct Job {
    /// The org's lease set: the name its batches are queued under.
    pub(super) set: Arc<str>,
    /// The org's keys the settle script always names: index, log, today, and the date's day,
    /// endpoint calls and points, repeated requests and what they are.
    pub(super) fixed: [String; 8],
    /// The date (days since 0001-01-01) the job counts on.
    pub(super) day: i32,
    /// When it happened (instance ms).
    pub(super) at: i64,
    /// The counters its corrections charge or refund, in order.
    pub(super) counters: Vec<String>,
    /// Its corrections' arguments, flattened.
    pub(super) corrections: Vec<String>,
    /// How many corrections.
    pub(super) n_corrections: usize,
    /// The call to record.
    pub(super) call: Option<CallRecord>,
}

impl Job {
    /// Ends a correction (its kind and amount pushed) as one of a rate: no tiers (0), the rate's
    /// emission interval in µs, and its key.
    pub(super) fn push_rate(&mut self, key: String, interval: i64) {
        self.corrections.push("0".to_owned());
        self.corrections.push(interval.to_string());
        self.counters.push(key);
    }
}

impl Inner {
    /// A job at `at` on `date`, before its corrections and record.
    pub(super) fn job(&self, keys: &OrgKeys, date: NaiveDate, at: Timestamp) -> Job {
        Job {
            set: Arc::from(keys.leases()),
            fixed: [
                keys.index(),
                keys.log(),
                keys.today(),
                keys.day(date),
                keys.endpoint_calls(date),
                keys.endpoint_points(date),
                keys.repeated(date),
                keys.repeated_info(date),
            ],
            day: day_number(date),
            at: at.as_millis(),
            counters: Vec::new(),
            corrections: Vec::new(),
            n_corrections: 0,
            call: None,
        }
    }

    /// The job of `settlement`, or `None` when it has nothing to do.
    pub(super) fn settle_job(&self, org: &ResolvedOrg, settlement: Settlement) -> Option<Job> {
        let Settlement {
            receipt,
            correction,
            call,
            at,
        } = settlement;
        let keys = self.keys(org.id());
        let date = local_date(org.time_zone(), call.as_ref().map_or(at, |call| call.at));
        let mut job = self.job(&keys, date, at);
        if correction.latency_ms > 0 || correction.cost_delta != 0 {
            for (index, limit) in org.limits().iter().enumerate() {
                let (kind, amount, part) = match limit.dimension() {
                    Dimension::LatencyMs if correction.latency_ms > 0 => {
                        ("c", correction.latency_ms, None)
                    }
                    Dimension::Points if correction.cost_delta > 0 => {
                        ("c", correction.cost_delta.unsigned_abs(), None)
                    }
                    Dimension::Points if correction.cost_delta < 0 => {
                        match receipt.parts().iter().find(|part| part.limit == index) {
                            // A rate gives back at most what the admission took from it.
                            Some(part) if limit.is_rate() => (
                                "r",
                                correction.cost_delta.unsigned_abs().min(part.split[0]),
                                Some(part),
                            ),
                            Some(part) => ("r", correction.cost_delta.unsigned_abs(), Some(part)),
                            None => continue,
                        }
                    }
                    _ => continue,
                };
                job.n_corrections += 1;
                job.corrections.push(kind.to_owned());
                job.corrections.push(amount.to_string());
                if let (Some(rate), Some(declared)) = (limit.rate(at), limit.declared_rate()) {
                    job.push_rate(keys.rate(limit.name(), declared), rate.gcra().interval);
                    continue;
                }
                job.corrections.push(limit.tiers().len().to_string());
                for (tier, resolved) in limit.tiers().iter().enumerate() {
                    let bounds = resolved.window().bounds(limit.zone(), at);
                    job.counters
                        .push(keys.counter(limit.name(), resolved.window(), bounds.start));
                    // A refund goes back only to a tier still in the window it was taken in.
                    let share = part
                        .filter(|part| part.starts[tier] == bounds.start)
                        .map_or(0, |part| part.split[tier]);
                    let keep_until = self.keep_until(resolved.window(), bounds.end);
                    job.corrections.extend([
                        limit.capacity(tier, at).to_string(),
                        ttl(keep_until, at).to_string(),
                        keep_until.as_millis().to_string(),
                        share.to_string(),
                    ]);
                }
            }
        }
        if call.is_none() && job.n_corrections == 0 {
            return None;
        }
        job.call = call;
        Some(job)
    }

    /// The job of recording `call`.
    pub(super) fn record_job(&self, org: &ResolvedOrg, call: CallRecord) -> Option<Job> {
        let at = call.at;
        self.settle_job(
            org,
            Settlement {
                call: Some(call),
                at,
                ..Settlement::default()
            },
        )
    }

    /// Queues `job` for its org's next batch, without anyone waiting to hear how it went (a batch
    /// that fails is counted and logged).
    pub(super) fn enqueue_detached(&self, job: Option<Job>) {
        if let Some(job) = job {
            self.batcher.push(job, None);
        }
    }

    /// Queues `job` for its org's next batch, at once; the returned future says how the batch
    /// went, and dropping it loses nothing.
    pub(super) fn enqueue(
        &self,
        job: Option<Job>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + use<> {
        let done = job.map(|job| {
            let (sender, receiver) = oneshot::channel();
            self.batcher.push(job, Some(sender));
            receiver
        });
        async move {
            match done {
                Some(receiver) => receiver.await.unwrap_or(Ok(())),
                None => Ok(()),
            }
        }
    }
}
