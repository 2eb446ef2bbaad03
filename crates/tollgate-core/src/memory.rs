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
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::StoreError;
use crate::ledger::{Charge, Ledger, Verdict};
use crate::org::OrgId;
use crate::permit::{Permit, ReleasePermit};
use crate::policy::ResolvedOrg;
use crate::status::LimitStatus;
use crate::store::{Decision, OrgUsage, Settlement, Store};
use crate::time::Timestamp;
use crate::usage::{CallRecord, UsageLedger};

/// How often (in the store's clock) idle ledgers are swept, in milliseconds.
const SWEEP_EVERY_MS: i64 = 60_000;

/// The org map's hasher: org ids come from the policy (unknown callers never reach the store), so a
/// fast seeded hash is enough.
type Hasher = foldhash::fast::RandomState;

/// Counts in this process: exact, per-org locks, bounded memory.
#[derive(Debug)]
pub struct MemoryStore {
    slots: DashMap<OrgId, Arc<Slot>, Hasher>,
    usage: DashMap<OrgId, Mutex<UsageLedger>, Hasher>,
    calls_kept: usize,
    last_sweep: AtomicI64,
}

#[derive(Debug, Default)]
struct Slot {
    ledger: Mutex<Option<Ledger>>,
    /// Permits held. Raised only under the `ledger` lock (after checking the maximum), lowered by
    /// permits as they drop, without the lock.
    in_flight: AtomicU32,
    /// Requests registered to hear of a freed permit ([`Store::permit_freed`] futures alive).
    waiters: AtomicU32,
    freed: Notify,
}

impl ReleasePermit for Slot {
    fn release(&self, _lease: u64) {
        // Sequentially consistent with the waiter's side: a waiter raises `waiters` and then reads
        // `in_flight`; here `in_flight` is lowered and then `waiters` read. Either the waiter sees
        // the freed slot, or this sees the waiter and wakes it.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Wake every waiter (one may be turned away by a limit and must not swallow the wake-up),
        // and keep one wake-up for a waiter that is about to wait: none is lost.
        self.freed.notify_waiters();
        self.freed.notify_one();
    }
}

/// A registered waiter of a slot: counted from [`Store::permit_freed`] until its future is dropped.
struct Waiter(Arc<Slot>);

impl Waiter {
    fn new(slot: Arc<Slot>) -> Self {
        slot.waiters.fetch_add(1, Ordering::SeqCst);
        Self(slot)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
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
            slots: DashMap::with_hasher(Hasher::default()),
            usage: DashMap::with_hasher(Hasher::default()),
            calls_kept: calls_kept.max(1),
            last_sweep: AtomicI64::new(i64::MIN),
        }
    }

    /// Orgs whose counts are held now.
    pub fn tracked_orgs(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, org: &OrgId) -> Arc<Slot> {
        self.with_slot(org, Arc::clone)
    }

    /// Runs `f` on the org's slot while holding its map shard for reading, so a sweep (which takes
    /// the shard for writing) cannot retire the slot in between.
    fn with_slot<T>(&self, org: &OrgId, f: impl FnOnce(&Arc<Slot>) -> T) -> T {
        if let Some(slot) = self.slots.get(org) {
            return f(slot.value());
        }
        let slot = self.slots.entry(org.clone()).or_default().downgrade();
        f(slot.value())
    }

    /// Runs `f` on the org's ledger under its lock.
    fn with_ledger<T>(&self, org: &Arc<ResolvedOrg>, f: impl FnOnce(&mut Ledger) -> T) -> T {
        self.with_slot(org.id(), |slot| {
            let mut ledger = slot.ledger.lock();
            f(ledger.get_or_insert_with(|| Ledger::new(org)))
        })
    }

    /// Runs `f` on the org's usage under its lock (usage is never swept, so no handle is kept).
    fn with_usage<T>(&self, org: &OrgId, f: impl FnOnce(&mut UsageLedger) -> T) -> T {
        if let Some(usage) = self.usage.get(org) {
            return f(&mut usage.value().lock());
        }
        let usage = self
            .usage
            .entry(org.clone())
            .or_insert_with(|| Mutex::new(UsageLedger::new(self.calls_kept)))
            .downgrade();
        f(&mut usage.value().lock())
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
            // Permits only ever lower `in_flight` without the shard; raising it needs the shard,
            // which `retain` holds for writing: a zero seen here stays zero.
            slot.in_flight.load(Ordering::Acquire) > 0
                || slot
                    .ledger
                    .lock()
                    .as_ref()
                    .is_some_and(|ledger| !ledger.is_idle(now))
        });
    }

    /// Admits synchronously (what the async [`Store::admit`] does, without a future).
    pub fn admit_now(&self, org: &Arc<ResolvedOrg>, charge: Charge, now: Timestamp) -> Decision {
        self.maybe_sweep(now);
        self.with_slot(org.id(), |slot| {
            let mut guard = slot.ledger.lock();
            let ledger = guard.get_or_insert_with(|| Ledger::new(org));
            let Some(concurrency) = org.concurrency() else {
                return Decision {
                    verdict: ledger.admit(org, charge, now),
                    permit: None,
                };
            };
            // Sequentially consistent: see `Slot::release`.
            if slot.in_flight.load(Ordering::SeqCst) >= concurrency.max() {
                return Decision {
                    verdict: Verdict::concurrency(ledger.snapshot(org, now), now),
                    permit: None,
                };
            }
            let verdict = ledger.admit(org, charge, now);
            let permit = verdict.is_admitted().then(|| {
                let in_flight = slot.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                let owner: Arc<dyn ReleasePermit> = Arc::clone(slot) as Arc<dyn ReleasePermit>;
                Permit::new(owner, 0).with_in_flight(in_flight)
            });
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
            self.with_ledger(org, |ledger| ledger.settle(org, &receipt, correction, at));
        }
        if let Some(call) = call {
            self.record_now(org, call);
        }
    }

    /// Records a call synchronously.
    pub fn record_now(&self, org: &Arc<ResolvedOrg>, call: CallRecord) {
        self.with_usage(org.id(), |usage| usage.record(org.time_zone(), call));
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
        let statuses = self.with_ledger(org, |ledger| ledger.peek(org, now));
        std::future::ready(Ok(statuses))
    }

    fn reset(
        &self,
        org: &Arc<ResolvedOrg>,
        limit: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.with_ledger(org, |ledger| ledger.reset(org, limit));
        std::future::ready(Ok(()))
    }

    fn usage(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        let usage = self.with_usage(org.id(), |usage| usage.snapshot(org.time_zone(), now, days));
        let in_flight = self
            .slots
            .get(org.id())
            .map_or(0, |slot| slot.in_flight.load(Ordering::Acquire));
        std::future::ready(Ok(OrgUsage { usage, in_flight }))
    }

    fn permit_freed(&self, org: &OrgId) -> impl Future<Output = ()> + Send {
        // Registered now, not at the first poll: a release from here on wakes this future.
        let waiter = Waiter::new(self.slot(org));
        async move { waiter.0.freed.notified().await }
    }

    fn try_admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.admit_now(org, charge, now)))
    }

    fn try_settle(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) -> Option<Settlement> {
        self.settle_now(org, settlement);
        None
    }

    fn try_record(&self, org: &Arc<ResolvedOrg>, call: CallRecord) -> Option<CallRecord> {
        self.record_now(org, call);
        None
    }
}
