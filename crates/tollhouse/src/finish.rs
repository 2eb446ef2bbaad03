//! What happens when a response has ended or was dropped: settle latency and cost, record the call,
//! release the permit. Runs exactly once, from `Drop`, so every way a response can end (body done,
//! client gone, handler panicked, timeout, future cancelled) is covered.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tollhouse_core::{
    CallRecord, Correction, Permit, Receipt, ResolvedOrg, Settlement, StoreError,
};

use crate::cost::ReportCost;
use crate::engine::Engine;
use crate::headers::{HeaderSet, Quotas};
use crate::telemetry;

/// Status recorded for a response that never came because the client went away.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Runs `future` to completion without blocking the caller: at once if it is ready (the memory
/// store), otherwise on the tokio runtime.
pub(crate) fn run_detached(future: impl Future<Output = ()> + Send + 'static) {
    let mut future = Box::pin(future);
    if (&mut future).now_or_never().is_some() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(future);
        }
        Err(_) => tracing::warn!(
            "tollhouse: a store call could not finish at once and no tokio runtime is running; it was dropped"
        ),
    }
}

/// Records `call` in the store without blocking.
///
/// The engine and the org are borrowed, and shared with a task only when the store must be waited
/// for: every reference count taken is an atomic write to a line that all of an org's requests
/// share.
pub(crate) fn record(engine: &Arc<Engine>, org: &Arc<ResolvedOrg>, call: CallRecord) {
    // A store that records at once needs no task.
    let Some(call) = engine.store().try_record(org, call) else {
        return;
    };
    let engine = Arc::clone(engine);
    let org = Arc::clone(org);
    run_detached(async move {
        if let Err(error) = engine.store().record(&org, call).await {
            engine.store_failed("record", &error);
        }
    });
}

/// Settles without blocking (borrowing as [`record`] does).
fn settle(engine: &Arc<Engine>, org: &Arc<ResolvedOrg>, settlement: Settlement) {
    let Some(settlement) = engine.store().try_settle(org, settlement) else {
        return;
    };
    let engine = Arc::clone(engine);
    let org = Arc::clone(org);
    run_detached(async move {
        let result: Result<(), StoreError> = engine.store().settle(&org, settlement).await;
        if let Err(error) = result {
            engine.store_failed("settle", &error);
        }
    });
}

// `Finish` lives in a box already, so the larger variant (a receipt of up to eight tiers) costs
// no allocation of its own; boxing it would add one per request.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// Admitted and charged: settle latency and a cost correction, then free the permit.
    Metered {
        receipt: Receipt,
        declared: u64,
        report: ReportCost,
        permit: Option<Permit>,
        /// The org's header constants, with the key of its in-flight gauge.
        quotas: Arc<Quotas>,
    },
    /// Exempt (or let through by a shadow plan): record the call only.
    Recorded,
}

/// The end of one request's life in the layer.
pub(crate) struct Finish {
    engine: Arc<Engine>,
    org: Arc<ResolvedOrg>,
    /// The engine clock's monotonic reading when the request was let through.
    started: Duration,
    call: Option<CallRecord>,
    status: Option<u16>,
    kind: Kind,
    /// The rate-limit headers for the response, until it is ready (kept here, in the box, so that
    /// the response future stays small).
    headers: Option<HeaderSet>,
}

impl fmt::Debug for Finish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finish")
            .field("org", self.org.id())
            .field("started", &self.started)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Finish {
    /// A request whose call is recorded when it ends (an exempt route, until
    /// [`charge`](Self::charge)).
    pub(crate) fn recorded(engine: Arc<Engine>, org: Arc<ResolvedOrg>, call: CallRecord) -> Self {
        let started = engine.clock().monotonic();
        Self {
            engine,
            org,
            started,
            call: Some(call),
            status: None,
            kind: Kind::Recorded,
            headers: None,
        }
    }

    /// The same request, admitted: `declared` points were charged as `receipt` says, and the
    /// permit (if the plan limits concurrency) is held until it ends.
    pub(crate) fn charge(
        &mut self,
        receipt: Receipt,
        declared: u64,
        report: ReportCost,
        permit: Option<Permit>,
        quotas: Arc<Quotas>,
    ) {
        telemetry::in_flight(&quotas.in_flight, 1.0);
        self.kind = Kind::Metered {
            receipt,
            declared,
            report,
            permit,
            quotas,
        };
    }

    /// With the headers the response gets.
    pub(crate) fn set_headers(&mut self, headers: HeaderSet) {
        self.headers = Some(headers);
    }

    /// The headers the response gets, once.
    pub(crate) fn take_headers(&mut self) -> Option<HeaderSet> {
        self.headers.take()
    }

    /// Notes the response's status.
    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// Notes a real cost carried by the response, which wins over one reported by the handler.
    pub(crate) fn set_actual_cost(&mut self, points: u64) {
        if let Kind::Metered { report, .. } = &self.kind {
            report.set(points);
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let end = self.engine.now();
        // On the monotonic reading: a wall clock stepped meanwhile charges nothing for it. At most
        // the policy's `max_latency_ms`, whatever happened.
        let took = self.engine.clock().monotonic().saturating_sub(self.started);
        let latency_ms = u64::try_from(took.as_millis())
            .unwrap_or(u64::MAX)
            .min(self.engine.policy_for_decision().server().max_latency_ms);
        call.latency_ms = latency_ms;
        call.status = self.status.unwrap_or(if std::thread::panicking() {
            500
        } else {
            CLIENT_CLOSED_REQUEST
        });
        match std::mem::replace(&mut self.kind, Kind::Recorded) {
            Kind::Metered {
                receipt,
                declared,
                report,
                permit,
                quotas,
            } => {
                let actual = report.get();
                let cost_delta = actual.map_or(0, |actual| {
                    i64::try_from(actual)
                        .unwrap_or(i64::MAX)
                        .saturating_sub(i64::try_from(declared).unwrap_or(i64::MAX))
                });
                call.cost = actual.unwrap_or(declared);
                tracing::debug!(
                    org = self.org.id().as_str(),
                    status = call.status,
                    latency_ms,
                    cost = call.cost,
                    cost_delta,
                    "tollhouse: settled"
                );
                settle(
                    &self.engine,
                    &self.org,
                    Settlement {
                        receipt,
                        correction: Correction {
                            latency_ms,
                            cost_delta,
                        },
                        call: Some(call),
                        at: end,
                    },
                );
                telemetry::in_flight(&quotas.in_flight, -1.0);
                // Released after the settlement, so a request waiting for the slot sees the
                // latency debited.
                drop(permit);
            }
            Kind::Recorded => record(&self.engine, &self.org, call),
        }
    }
}
