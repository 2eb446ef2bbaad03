//! [`MemoryStore`]: exact counts in this process, with a lock per org and none across orgs.
//!
//! Orgs live in a sharded map; each has its own mutex around its [`Ledger`], its in-flight count
//! and its usage. The ledger of an org whose windows have all passed and that holds no permits is
//! dropped by a sweep that runs at most once a minute (of the store's clock), so memory stays
//! bounded by the orgs active recently. Usage (31 days of billing, the last calls) is kept per org
//! in a separate map whose size is bounded by the number of orgs that ever called.
//!
//! # Example
//!
//! See [the `store` module](crate::store).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::StoreError;
use crate::ledger::{Charge, Ledger, LimitStatus, Verdict};
use crate::org::OrgId;
use crate::permit::{Permit, ReleasePermit};
use crate::policy::ResolvedOrg;
use crate::store::{Decision, OrgUsage, Settlement, Store};
use crate::time::Timestamp;
use crate::usage::{CallRecord, UsageLedger};

/// How often (in the store's clock) idle ledgers are swept, in milliseconds.
const SWEEP_EVERY_MS: i64 = 60_000;

/// Counts in this process: exact, per-org locks, bounded memory.
#[derive(Debug)]
pub struct MemoryStore {
    slots: DashMap<OrgId, Arc<Slot>>,
    usage: DashMap<OrgId, Arc<Mutex<UsageLedger>>>,
    calls_kept: usize,
    last_sweep: AtomicI64,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    ledger: Option<Ledger>,
    in_flight: u32,
    retired: bool,
}

impl ReleasePermit for Slot {
    fn release(&self, _lease: u64) {
        {
            let mut state = self.state.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        // `notify_one` keeps a wake-up for a waiter that has not started waiting yet: none is lost.
        self.freed.notify_one();
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping the last 100 calls per org.
    pub fn new() -> Self {
        Self::with_calls_kept(100)
    }

    /// An empty store keeping the last `calls_kept` calls per org.
    pub fn with_calls_kept(calls_kept: usize) -> Self {
        Self {
            slots: DashMap::new(),
            usage: DashMap::new(),
            calls_kept: calls_kept.max(1),
            last_sweep: AtomicI64::new(i64::MIN),
        }
    }

    /// Orgs whose counts are held now.
    pub fn tracked_orgs(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, org: &OrgId) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(org) {
            return Arc::clone(slot.value());
        }
        Arc::clone(
            self.slots
                .entry(org.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        state: Mutex::new(SlotState::default()),
                        freed: Notify::new(),
                    })
                })
                .value(),
        )
    }

    /// Runs `f` on the org's live state: a slot retired by a sweep in between is looked up again.
    fn with_state<T>(&self, org: &OrgId, mut f: impl FnMut(&Arc<Slot>, &mut SlotState) -> T) -> T {
        loop {
            let slot = self.slot(org);
            let mut state = slot.state.lock();
            if !state.retired {
                return f(&slot, &mut state);
            }
        }
    }

    fn usage_ledger(&self, org: &OrgId) -> Arc<Mutex<UsageLedger>> {
        if let Some(usage) = self.usage.get(org) {
            return Arc::clone(usage.value());
        }
        Arc::clone(
            self.usage
                .entry(org.clone())
                .or_insert_with(|| Arc::new(Mutex::new(UsageLedger::new(self.calls_kept))))
                .value(),
        )
    }

    /// Drops the ledgers of orgs with every window passed and no permit held, at most once a
    /// minute of the store's clock.
    fn maybe_sweep(&self, now: Timestamp) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.as_millis() < last.saturating_add(SWEEP_EVERY_MS) {
            return;
        }
        if self
            .last_sweep
            .compare_exchange(last, now.as_millis(), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.sweep(now);
    }

    /// Drops the ledgers of every org whose windows have all passed at `now` and that holds no permit.
    pub fn sweep(&self, now: Timestamp) {
        self.slots.retain(|_, slot| {
            let mut state = slot.state.lock();
            let idle = state.in_flight == 0
                && state
                    .ledger
                    .as_ref()
                    .is_none_or(|ledger| ledger.is_idle(now));
            if idle {
                state.retired = true;
            }
            !idle
        });
    }

    /// Admits synchronously (what the async [`Store::admit`] does, without a future).
    pub fn admit_now(&self, org: &Arc<ResolvedOrg>, charge: Charge, now: Timestamp) -> Decision {
        self.maybe_sweep(now);
        self.with_state(org.id(), |slot, state| {
            let ledger = state.ledger.get_or_insert_with(|| Ledger::new(org));
            if let Some(concurrency) = org.concurrency()
                && state.in_flight >= concurrency.max()
            {
                let statuses = ledger.peek(org, now);
                return Decision {
                    verdict: Verdict::concurrency(statuses, now),
                    permit: None,
                };
            }
            let verdict = ledger.admit(org, charge, now);
            let permit = if verdict.is_admitted() && org.concurrency().is_some() {
                state.in_flight += 1;
                let owner: Arc<dyn ReleasePermit> = Arc::clone(slot) as Arc<dyn ReleasePermit>;
                Some(Permit::new(owner, 0).with_in_flight(state.in_flight))
            } else {
                None
            };
            Decision { verdict, permit }
        })
    }

    /// Settles synchronously (what the async [`Store::settle`] does, without a future).
    pub fn settle_now(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) {
        let Settlement {
            receipt,
            correction,
            call,
            at,
        } = settlement;
        if correction.latency_ms > 0 || correction.cost_delta != 0 {
            self.with_state(org.id(), |_, state| {
                state
                    .ledger
                    .get_or_insert_with(|| Ledger::new(org))
                    .settle(org, &receipt, correction, at);
            });
        }
        if let Some(call) = call {
            self.record_now(org, call);
        }
    }

    /// Records a call synchronously.
    pub fn record_now(&self, org: &Arc<ResolvedOrg>, call: CallRecord) {
        self.usage_ledger(org.id())
            .lock()
            .record(org.time_zone(), call);
    }
}

impl Store for MemoryStore {
    fn admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        std::future::ready(Ok(self.admit_now(org, charge, now)))
    }

    fn settle(
        &self,
        org: &Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.settle_now(org, settlement);
        std::future::ready(Ok(()))
    }

    fn record(
        &self,
        org: &Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_now(org, call);
        std::future::ready(Ok(()))
    }

    fn peek(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<LimitStatus>, StoreError>> + Send {
        let statuses = self.with_state(org.id(), |_, state| match state.ledger.as_mut() {
            Some(ledger) => ledger.peek(org, now),
            None => Ledger::new(org).peek(org, now),
        });
        std::future::ready(Ok(statuses))
    }

    fn reset(
        &self,
        org: &Arc<ResolvedOrg>,
        limit: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.with_state(org.id(), |_, state| {
            if let Some(ledger) = state.ledger.as_mut() {
                ledger.reset(org, limit);
            }
        });
        std::future::ready(Ok(()))
    }

    fn usage(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        let usage = self
            .usage_ledger(org.id())
            .lock()
            .snapshot(org.time_zone(), now, days);
        let in_flight = self
            .slots
            .get(org.id())
            .map_or(0, |slot| slot.state.lock().in_flight);
        std::future::ready(Ok(OrgUsage { usage, in_flight }))
    }

    fn permit_freed(&self, org: &OrgId) -> impl Future<Output = ()> + Send {
        let slot = self.slot(org);
        async move { slot.freed.notified().await }
    }
}
