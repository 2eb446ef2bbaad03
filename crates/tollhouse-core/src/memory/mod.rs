//! [`MemoryStore`]: exact counts in this process, with a lock per org and none across orgs.
//!
//! Orgs live in a lock-free map ([`papaya`]): finding an org's slot writes to no memory that other
//! threads share, so threads working for different orgs do not slow each other down (a sharded
//! map's read lock is a shared word every lookup writes). Each org has its own mutex around its
//! [`Ledger`], and its in-flight count. The slot of an org whose windows have all passed and that
//! holds no permits is retired by a sweep that runs at most once a minute (of the store's clock),
//! so memory stays bounded by the orgs active recently; a request that finds a retired slot looks
//! again and starts a fresh one. Usage (31 days of billing, the last calls) is kept per org in a
//! separate map whose size is bounded by the number of orgs that ever called.
//!
//! # Example
//!
//! See [the `store` module](crate::store).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use parking_lot::Mutex;

use crate::error::StoreError;
use crate::ledger::{Charge, Ledger};
use crate::org::OrgId;
use crate::org_map::{OrgMap, Pinned};
use crate::permit::{Permit, ReleasePermit};
use crate::policy::ResolvedOrg;
use crate::status::LimitStatus;
use crate::store::{Decision, OrgUsage, Settlement, Store, UsageView};
use crate::time::Clock;
use crate::time::Timestamp;
use crate::usage::{CallRecord, UsageLedger};

mod saved;
mod waiting;

pub use saved::SavedOrg;
use waiting::Permits;

/// An org's usage, with the marks of a sweep and of a write-behind.
#[derive(Debug)]
struct UsageCell {
    ledger: UsageLedger,
    /// A sweep took it out of the map: whoever locks it looks the org up again.
    retired: bool,
    /// Changed since [`MemoryStore::drain_dirty`] last took it.
    dirty: bool,
}

impl UsageCell {
    fn new(ledger: UsageLedger) -> Self {
        Self {
            ledger,
            retired: false,
            dirty: false,
        }
    }
}

/// How often (in the store's clock) idle ledgers are swept, in milliseconds.
const SWEEP_EVERY_MS: i64 = 60_000;
/// How long an org's usage is kept after its last call: the days billing shows, and one more.
const USAGE_KEPT_MS: i64 = (crate::usage::DAYS_KEPT as i64 + 1) * 86_400_000;

/// Counts in this process: exact, per-org locks, bounded memory.
#[derive(Debug)]
pub struct MemoryStore {
    slots: OrgMap<Slot>,
    /// Each org's usage.
    usage: OrgMap<Mutex<UsageCell>>,
    calls_kept: usize,
    last_sweep: AtomicI64,
    /// A durable store writes this one behind: state changed since its last write is not swept.
    writes_behind: bool,
}

/// An org's state, held in the map itself (one pointer fewer to follow per request).
// In this order: the small fields share the lock's cache line instead of following the ledger.
#[derive(Debug, Default)]
#[repr(C)]
struct Slot {
    /// Shared with the permits, which outlive any look into the map.
    permits: Arc<Permits>,
    /// Set, under the `ledger` lock, by the sweep that takes this slot out of the map. Whoever
    /// locks a retired slot looks the org up again: its counts are no longer the org's.
    retired: AtomicBool,
    /// Set when the counts change, for a store that writes them behind ([`MemoryStore::drain_dirty`]).
    dirty: AtomicBool,
    ledger: Mutex<Option<Ledger>>,
}

/// Takes a retired `slot` out of the map if it is still there (the sweep that retired it does so
/// too; whoever comes first), so that the next look finds no slot or a fresh one.
fn retire(slots: &Pinned<'_, Slot>, org: &OrgId, slot: &Slot) {
    slots.remove_if(org, |current| std::ptr::eq(current, slot));
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
            slots: OrgMap::new(),
            usage: OrgMap::new(),
            calls_kept: calls_kept.max(1),
            last_sweep: AtomicI64::new(i64::MIN),
            writes_behind: false,
        }
    }

    /// Orgs whose counts are held now.
    pub fn tracked_orgs(&self) -> usize {
        self.slots.len()
    }

    /// Orgs whose usage (billing, call log, report) is held now.
    pub fn usage_orgs(&self) -> usize {
        self.usage.len()
    }

    /// Runs `f` on the org's live slot with its ledger locked (a fresh ledger if it has none).
    fn with_ledger<T>(&self, org: &Arc<ResolvedOrg>, f: impl FnOnce(&Slot, &mut Ledger) -> T) -> T {
        let slots = self.slots.pin();
        loop {
            let slot = slots.get_or_insert_with(org.id(), Slot::default);
            let mut ledger = slot.ledger.lock();
            if slot.retired.load(Ordering::Relaxed) {
                drop(ledger);
                retire(&slots, org.id(), slot);
                continue;
            }
            return f(slot, ledger.get_or_insert_with(|| Ledger::new(org)));
        }
    }

    /// Runs `f` on the org's usage under its lock (a fresh one if a sweep retired it).
    fn with_usage<T>(&self, org: &OrgId, f: impl FnOnce(&mut UsageCell) -> T) -> T {
        let usage = self.usage.pin();
        loop {
            let cell = usage.get_or_insert_with(org, || {
                Mutex::new(UsageCell::new(UsageLedger::new(self.calls_kept)))
            });
            let mut locked = cell.lock();
            if !locked.retired {
                return f(&mut locked);
            }
            drop(locked);
            usage.remove_if(org, |current| std::ptr::eq(current, cell));
        }
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
        self.slots.pin().retain(|slot| {
            let ledger = slot.ledger.lock();
            // Permits only ever lower `in_flight` without the lock; raising it needs the lock and
            // a slot that is not retired: a zero seen here stays zero.
            let keep = slot.permits.in_flight.load(Ordering::Acquire) > 0
                || slot.permits.has_waiters()
                || (self.writes_behind && slot.dirty.load(Ordering::Acquire))
                || ledger.as_ref().is_some_and(|ledger| !ledger.is_idle(now));
            if !keep {
                slot.retired.store(true, Ordering::Relaxed);
            }
            keep
        });
        // Usage is kept as long as billing looks back: an org silent for longer has nothing left
        // to show, and holds nothing here.
        self.usage.pin().retain(|cell| {
            let mut locked = cell.lock();
            let keep = (self.writes_behind && locked.dirty)
                || locked
                    .ledger
                    .latest()
                    .is_some_and(|latest| now.millis_since(latest) < USAGE_KEPT_MS);
            locked.retired = !keep;
            keep
        });
    }

    /// Admits synchronously (what the async [`Store::admit`] does, without a future).
    pub fn admit_now(&self, org: &Arc<ResolvedOrg>, charge: Charge, now: Timestamp) -> Decision {
        self.maybe_sweep(now);
        self.with_ledger(org, |slot, ledger| {
            // Sequentially consistent: see `Permits::release`.
            let held = slot.permits.in_flight.load(Ordering::SeqCst);
            let verdict = match org.concurrency() {
                Some(concurrency) if held >= concurrency.max() => {
                    ledger.reject_for_concurrency(org, charge, now)
                }
                _ => ledger.admit(org, charge, now),
            };
            if !verdict.is_admitted() {
                return Decision {
                    verdict,
                    permit: None,
                    in_flight: Some(held),
                };
            }
            let in_flight = slot.permits.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            slot.dirty.store(true, Ordering::Release);
            let owner: Arc<dyn ReleasePermit> = Arc::clone(&slot.permits) as Arc<dyn ReleasePermit>;
            Decision {
                verdict,
                permit: Some(Permit::new(owner, 0)),
                in_flight: Some(in_flight),
            }
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
            self.with_ledger(org, |slot, ledger| {
                ledger.settle(org, &receipt, correction, at);
                slot.dirty.store(true, Ordering::Release);
            });
        }
        if let Some(call) = call {
            self.record_now(org, call);
        }
    }

    /// Records a call synchronously.
    pub fn record_now(&self, org: &Arc<ResolvedOrg>, call: CallRecord) {
        self.with_usage(org.id(), |usage| {
            usage.ledger.record(org.time_zone(), call);
            usage.dirty = true;
        });
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
        let statuses = self.with_ledger(org, |_, ledger| ledger.peek(org, now));
        std::future::ready(Ok(statuses))
    }

    fn reset(
        &self,
        org: &Arc<ResolvedOrg>,
        limit: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.with_ledger(org, |slot, ledger| {
            ledger.reset(org, limit);
            slot.dirty.store(true, Ordering::Release);
        });
        std::future::ready(Ok(()))
    }

    fn usage(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        self.usage_view(org, now, UsageView::All { days })
    }

    fn usage_view(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        view: UsageView,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        let usage = self.with_usage(org.id(), |usage| {
            usage.ledger.view(org.time_zone(), now, view)
        });
        let in_flight = self
            .slots
            .pin()
            .get(org.id())
            .map_or(0, |slot| slot.permits.in_flight.load(Ordering::Acquire));
        std::future::ready(Ok(OrgUsage { usage, in_flight }))
    }

    async fn admit_waiting(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        clock: &dyn Clock,
    ) -> Result<Decision, StoreError> {
        Ok(self.admit_queued(org, charge, clock).await)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::MemoryStore;
    use crate::{Charge, Policy, ResolvedOrg, Timestamp};

    const T0: i64 = 1_800_000_000;

    /// An org whose plan admits one request a minute and one at a time.
    fn org() -> Arc<ResolvedOrg> {
        let policy = Policy::from_toml_str(
            r#"
            [plans.p]
            concurrency = 1
            [[plans.p.limits]]
            name = "count"
            dimension = "requests"
            tiers = [{ window = "minute", capacity = 1 }]
            [[orgs]]
            id = "o"
            plan = "p"
            "#,
            "memory.toml".as_ref(),
        )
        .expect("policy");
        Arc::clone(policy.org("o").expect("org"))
    }

    /// Marks the org's slot retired without taking it out of the map: what a request sees between
    /// a sweep's mark and its removal.
    /// Returns the retired slot's permits, by which it is told apart from a fresh slot.
    fn retire_in_place(store: &MemoryStore, org: &ResolvedOrg) -> Arc<super::Permits> {
        let slots = store.slots.pin();
        let slot = slots.get(org.id()).expect("the org has a slot");
        let _ledger = slot.ledger.lock();
        slot.retired.store(true, Ordering::Relaxed);
        Arc::clone(&slot.permits)
    }

    #[test]
    fn an_admission_that_finds_a_retired_slot_starts_a_fresh_one() {
        let org = org();
        let store = MemoryStore::new();
        let first = store.admit_now(&org, Charge::default(), Timestamp::from_secs(T0));
        assert!(first.verdict.is_admitted());
        drop(first.permit);
        let retired = retire_in_place(&store, &org);
        // The minute's one request is used in the retired slot; a fresh slot admits.
        let second = store.admit_now(&org, Charge::default(), Timestamp::from_secs(T0 + 1));
        assert!(second.verdict.is_admitted());
        let slots = store.slots.pin();
        let live = slots.get(org.id()).expect("a fresh slot");
        assert!(
            !Arc::ptr_eq(&live.permits, &retired),
            "the retired slot was replaced"
        );
        assert_eq!(live.permits.in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(
            retired.in_flight.load(Ordering::SeqCst),
            0,
            "never raised once retired"
        );
    }
}
