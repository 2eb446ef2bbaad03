//! Settlements and call records: computed when they are handed over, run in the background by the
//! settle script.

use std::future::Future;

use chrono::NaiveDate;
use redis::Value;
use tollhouse_core::usage::{
    DAYS_KEPT, DISPLAY_BYTES, MAX_ENDPOINTS, MAX_REPEATED, cut, entry_hash, local_date,
};
use tollhouse_core::{
    CallRecord, Dimension, Outcome, ResolvedOrg, Settlement, StoreError, Timestamp,
};

use super::{Inner, SCRIPTS, day_number, ttl};
use crate::codec;
use crate::keys::OrgKeys;

const DAY_MS: i64 = 86_400_000;
/// Billable counts live this long after their date's last call.
const DAY_TTL_MS: i64 = (DAYS_KEPT as i64 + 1) * DAY_MS;
/// Today's report (endpoints, repeated requests) lives this long after its last call.
const REPORT_TTL_MS: i64 = 2 * DAY_MS;
/// The endpoint that collects every endpoint past the [`MAX_ENDPOINTS`]th of a day.
const OTHER_ENDPOINT: &str = "*\n(other)";

/// A settlement or a record, computed when it is handed over and run in the background.
pub(super) struct Job {
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<String>,
}

impl Inner {
    /// A settle script's job at `at` on `date`, before its corrections and record: the org's
    /// fixed keys, and room for the number of corrections in `args[2]`.
    pub(super) fn job(&self, keys: &OrgKeys, date: NaiveDate, at: Timestamp) -> Job {
        Job {
            keys: vec![
                keys.index(),
                keys.log(),
                keys.today(),
                keys.day(date),
                keys.endpoint_calls(date),
                keys.endpoint_points(date),
                keys.repeated(date),
                keys.repeated_info(date),
            ],
            args: vec![
                at.as_millis().to_string(),
                self.margin_ms.to_string(),
                String::new(),
            ],
        }
    }

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
        let mut ops = 0usize;
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
                            Some(part) => ("r", correction.cost_delta.unsigned_abs(), Some(part)),
                            None => continue,
                        }
                    }
                    _ => continue,
                };
                ops += 1;
                job.args.push(kind.to_owned());
                job.args.push(amount.to_string());
                job.args.push(limit.tiers().len().to_string());
                for (tier, resolved) in limit.tiers().iter().enumerate() {
                    let bounds = resolved.window().bounds(limit.zone(), at);
                    job.keys
                        .push(keys.counter(limit.name(), resolved.window(), bounds.start));
                    // A refund goes back only to a tier still in the window it was taken in.
                    let share = part
                        .filter(|part| part.starts[tier] == bounds.start)
                        .map_or(0, |part| part.split[tier]);
                    job.args.push(limit.capacity(tier, at).to_string());
                    job.args
                        .push(ttl(bounds.end, at, self.margin_ms).to_string());
                    job.args.push(bounds.end.as_millis().to_string());
                    job.args.push(share.to_string());
                }
            }
        }
        job.args[2] = ops.to_string();
        match call {
            Some(call) => self.record_args(&mut job, &call, date),
            None if ops == 0 => return None,
            None => job.args.push("0".to_owned()),
        }
        Some(job)
    }

    fn record_args(&self, job: &mut Job, call: &CallRecord, date: NaiveDate) {
        let route = call.route.as_deref().unwrap_or(&call.path);
        let admitted = call.outcome == Outcome::Admitted;
        let args = [
            "1".to_owned(),
            codec::encode(call),
            self.calls_kept.to_string(),
            DAY_TTL_MS.to_string(),
            day_number(date).to_string(),
            DAY_TTL_MS.to_string(),
            REPORT_TTL_MS.to_string(),
            if call.billable { "1" } else { "0" }.to_owned(),
            if admitted { "1" } else { "0" }.to_owned(),
            format!("{}\n{}", call.method, cut(route, DISPLAY_BYTES)),
            if admitted { call.cost } else { 0 }.to_string(),
            format!("{:016x}", entry_hash(&call.method, &call.path)),
            format!("{}\n{}", call.method, cut(&call.path, DISPLAY_BYTES)),
            call.at.as_millis().to_string(),
            MAX_ENDPOINTS.to_string(),
            MAX_REPEATED.to_string(),
            OTHER_ENDPOINT.to_owned(),
            if call.logged { "1" } else { "0" }.to_owned(),
        ];
        job.args.extend(args);
    }

    /// Starts `job` now, in the background; the returned future only reports how it went, and
    /// dropping it does not cancel the job.
    pub(super) fn spawn(
        &self,
        job: Option<Job>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let handle = match (job, self.me.upgrade()) {
            (Some(job), Some(inner)) => Some(self.runtime.spawn(async move {
                let mut invocation = SCRIPTS.settle.prepare_invoke();
                for key in &job.keys {
                    invocation.key(key);
                }
                for arg in &job.args {
                    invocation.arg(arg);
                }
                let mut conn = inner.conn.clone();
                inner
                    .run(invocation.invoke_async::<Value>(&mut conn))
                    .await
                    .map(drop)
            })),
            _ => None,
        };
        async move {
            match handle {
                Some(handle) => handle
                    .await
                    .unwrap_or_else(|error| Err(StoreError::Unavailable(Box::new(error)))),
                None => Ok(()),
            }
        }
    }
}
