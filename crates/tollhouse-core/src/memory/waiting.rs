//! Waiting for a concurrency slot in the memory store: first come, first served per org, and each
//! freed slot handed to exactly one waiter.
//!
//! An org's [`Permits`] count its requests in flight and keep a queue of the requests waiting for
//! one (at most [`MAX_WAITERS`]). A permit that is dropped while someone waits is not given back:
//! it is handed to the first waiter still there, so a request arriving meanwhile cannot take it
//! (the org stays full) and no other waiter is woken for nothing. The waiter then checks the
//! plan's limits with the slot in hand; if a limit refuses it, the slot goes on to the next waiter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::MemoryStore;
use crate::ledger::Charge;
use crate::permit::{Permit, ReleasePermit};
use crate::plan::MAX_WAITERS;
use crate::policy::ResolvedOrg;
use crate::store::{Decision, full};
use crate::time::{Clock, Timestamp};

/// An org's permits in flight and the requests waiting for one.
#[derive(Debug, Default)]
pub(super) struct Permits {
    /// Permits held. Raised only under the slot's ledger lock (after checking the maximum and
    /// that the slot is not retired); lowered only under `queue`'s lock, when no one waits.
    pub(super) in_flight: AtomicU32,
    queue: Mutex<Queue>,
}

/// The requests of an org waiting for a slot, in the order they came.
#[derive(Debug, Default)]
struct Queue {
    next: u64,
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Permits {
    /// Whether any request waits for a slot (a slot with waiters is never swept).
    pub(super) fn has_waiters(&self) -> bool {
        !self.queue.lock().waiting.is_empty()
    }
}

impl ReleasePermit for Permits {
    fn release(&self, _lease: u64) {
        let mut queue = self.queue.lock();
        // The first waiter still there takes the slot as it is: `in_flight` does not change.
        while let Some((_, handoff)) = queue.waiting.pop_front() {
            if handoff.send(()).is_ok() {
                return;
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A slot handed to a waiter: counted in flight, released (to the next waiter) when dropped
/// unless it becomes a [`Permit`].
struct Handed(Option<Arc<Permits>>);

impl Handed {
    fn into_permit(mut self) -> Option<Permit> {
        let permits = self.0.take()?;
        let owner: Arc<dyn ReleasePermit> = permits;
        Some(Permit::new(owner, 0))
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let Some(permits) = self.0.take() {
            permits.release(0);
        }
    }
}

/// A place in an org's queue; leaving it (when dropped) gives back a slot handed meanwhile.
struct Ticket {
    permits: Arc<Permits>,
    id: u64,
    handoff: oneshot::Receiver<()>,
    done: bool,
}

impl Ticket {
    /// Waits for a slot to be handed over.
    async fn handed(&mut self) -> Handed {
        let received = (&mut self.handoff).await;
        self.done = true;
        // Senders are dropped only after a send, or with the queue itself (never while a
        // ticket holds its `Arc`): a receive error cannot happen; it is taken as no slot.
        Handed(received.ok().map(|()| Arc::clone(&self.permits)))
    }

    /// Leaves the queue: the slot handed over meanwhile, if one was.
    fn leave(&mut self) -> Option<Handed> {
        if self.done {
            return None;
        }
        self.done = true;
        let mut queue = self.permits.queue.lock();
        if let Some(at) = queue.waiting.iter().position(|(id, _)| *id == self.id) {
            queue.waiting.remove(at);
            return None;
        }
        drop(queue);
        // Not in the queue any more: it was handed a slot (or is being, under the lock we just
        // took and released: the send happened before `pop_front` released it).
        self.handoff
            .try_recv()
            .ok()
            .map(|()| Handed(Some(Arc::clone(&self.permits))))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A slot handed to a request that went away goes on to the next one.
        drop(self.leave());
    }
}

/// What joining the queue came to.
enum Joined {
    Waiting(Ticket),
    /// A slot is free after all: try again.
    SlotFree,
    /// [`MAX_WAITERS`] wait already.
    QueueFull,
}

impl MemoryStore {
    /// Admits as [`Store::admit_waiting`](crate::Store::admit_waiting) says: the first request of
    /// the org to wait is the first served.
    pub(super) async fn admit_queued(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        clock: &dyn Clock,
    ) -> Decision {
        let wait = org.concurrency().map(|c| c.wait()).unwrap_or_default();
        let first = self.admit_now(org, charge, clock.now());
        if wait.is_zero() || !full(&first) {
            return first;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut ticket = match self.join(org) {
                Joined::Waiting(ticket) => ticket,
                Joined::QueueFull => return first,
                Joined::SlotFree => {
                    let decision = self.admit_now(org, charge, clock.now());
                    if !full(&decision) || tokio::time::Instant::now() >= deadline {
                        return decision;
                    }
                    continue;
                }
            };
            let handed = match tokio::time::timeout_at(deadline, ticket.handed()).await {
                Ok(handed) => Some(handed),
                Err(_) => ticket.leave(),
            };
            return match handed {
                Some(handed) => self.admit_with(org, charge, clock.now(), handed),
                // The wait is over: one last look.
                None => self.admit_now(org, charge, clock.now()),
            };
        }
    }

    /// Joins the queue of the org's live slot, unless a slot is free or the queue is full.
    fn join(&self, org: &Arc<ResolvedOrg>) -> Joined {
        let max = org.concurrency().map_or(u32::MAX, |c| c.max());
        self.with_ledger(org, |slot, _| {
            let mut queue = slot.permits.queue.lock();
            // Under the queue's lock, which a release takes to lower `in_flight`: a slot freed
            // before this is seen here, one freed after is handed to this ticket.
            if slot.permits.in_flight.load(Ordering::SeqCst) < max {
                return Joined::SlotFree;
            }
            if queue.waiting.len() >= MAX_WAITERS {
                return Joined::QueueFull;
            }
            let (sender, handoff) = oneshot::channel();
            let id = queue.next;
            queue.next += 1;
            queue.waiting.push_back((id, sender));
            Joined::Waiting(Ticket {
                permits: Arc::clone(&slot.permits),
                id,
                handoff,
                done: false,
            })
        })
    }

    /// Checks the plan's limits for a request that holds a `handed` slot: admitted with it, or
    /// refused with the slot passed on.
    fn admit_with(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
        handed: Handed,
    ) -> Decision {
        self.with_ledger(org, |slot, ledger| {
            let in_flight = Some(slot.permits.in_flight.load(Ordering::SeqCst));
            let same_slot = handed
                .0
                .as_ref()
                .is_some_and(|permits| Arc::ptr_eq(permits, &slot.permits));
            let verdict = if same_slot {
                ledger.admit(org, charge, now)
            } else {
                // Never happens (a slot with permits in flight is never swept); refused safely.
                ledger.reject_for_concurrency(org, charge, now)
            };
            let permit = if verdict.is_admitted() {
                handed.into_permit()
            } else {
                drop(handed);
                None
            };
            Decision {
                verdict,
                permit,
                in_flight,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{Charge, ManualClock, MemoryStore, Policy, ResolvedOrg, Timestamp};

    const T0: i64 = 1_800_000_000;

    /// An org with one slot, a wait of `wait_ms`, and `per_minute` requests a minute.
    fn org(wait_ms: u64, per_minute: u64) -> Arc<ResolvedOrg> {
        let policy = Policy::from_toml_str(
            &format!(
                r#"
                [plans.p]
                concurrency = 1
                concurrency_wait_ms = {wait_ms}
                [[plans.p.limits]]
                name = "count"
                dimension = "requests"
                tiers = [{{ window = "minute", capacity = {per_minute} }}]
                [[orgs]]
                id = "o"
                plan = "p"
                "#
            ),
            "waiting.toml".as_ref(),
        )
        .expect("policy");
        Arc::clone(policy.org("o").expect("org"))
    }

    type Waiter = tokio::task::JoinHandle<crate::Decision>;

    fn wait_in_line(
        store: &Arc<MemoryStore>,
        org: &Arc<ResolvedOrg>,
        clock: &ManualClock,
    ) -> Waiter {
        let (store, org, clock) = (Arc::clone(store), Arc::clone(org), clock.clone());
        tokio::spawn(async move { store.admit_queued(&org, Charge::default(), &clock).await })
    }

    /// Lets every spawned task run until it waits.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_to_wait_is_the_first_served_one_per_freed_slot() {
        let org = org(60_000, 100);
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(Timestamp::from_secs(T0));
        let mut held = store
            .admit_now(&org, Charge::default(), clock.now_ts())
            .permit;
        let mut line = Vec::new();
        for _ in 0..3 {
            line.push(wait_in_line(&store, &org, &clock));
            settle().await;
        }
        for served in 0..3 {
            assert!(line.iter().all(|waiter| !waiter.is_finished()));
            drop(held.take());
            settle().await;
            // One freed slot: exactly the first in line, and no one else, is served.
            let first = line.remove(0);
            assert!(first.is_finished(), "waiter {served} is served first");
            assert!(line.iter().all(|waiter| !waiter.is_finished()));
            let decision = first.await.expect("task");
            assert!(decision.is_admitted());
            held = decision.permit;
            // A request that arrives now finds the org full: it cannot jump the line.
            assert!(
                !store
                    .admit_now(&org, Charge::default(), clock.now_ts())
                    .is_admitted()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_refused_by_a_limit_passes_the_slot_on() {
        // Two requests a minute: the first holds the slot, so the first waiter gets the second
        // request of the minute; the next waiter is refused by the limit at once when the slot
        // comes to it, and passes the slot on to the third.
        let org = org(60_000, 2);
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(Timestamp::from_secs(T0));
        let held = store
            .admit_now(&org, Charge::default(), clock.now_ts())
            .permit;
        let first = wait_in_line(&store, &org, &clock);
        settle().await;
        let second = wait_in_line(&store, &org, &clock);
        settle().await;
        drop(held);
        settle().await;
        let admitted = first.await.expect("task");
        assert!(admitted.is_admitted());
        drop(admitted.permit);
        settle().await;
        let refused = second.await.expect("task");
        assert!(!refused.is_admitted(), "the minute's two requests are used");
        assert_eq!(
            store.usage_in_flight(&org),
            0,
            "the slot was not kept by the refused waiter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_leaves_its_place_and_any_slot_handed_to_it() {
        let org = org(60_000, 100);
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(Timestamp::from_secs(T0));
        let held = store
            .admit_now(&org, Charge::default(), clock.now_ts())
            .permit;
        let gone = wait_in_line(&store, &org, &clock);
        settle().await;
        let next = wait_in_line(&store, &org, &clock);
        settle().await;
        gone.abort();
        settle().await;
        drop(held);
        settle().await;
        assert!(next.await.expect("task").is_admitted());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_per_org_are_capped_and_a_wait_ends_at_its_deadline() {
        let org = org(500, 1_000);
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(Timestamp::from_secs(T0));
        let held = store
            .admit_now(&org, Charge::default(), clock.now_ts())
            .permit;
        let line: Vec<Waiter> = (0..super::MAX_WAITERS)
            .map(|_| wait_in_line(&store, &org, &clock))
            .collect();
        settle().await;
        // One more is refused at once: the line is full.
        let extra = wait_in_line(&store, &org, &clock);
        settle().await;
        assert!(extra.is_finished());
        assert!(!extra.await.expect("task").is_admitted());
        assert!(
            store
                .slots
                .pin()
                .get(org.id())
                .is_some_and(|slot| slot.permits.has_waiters())
        );
        // Every wait ends at its deadline, refused, and leaves the line.
        tokio::time::advance(Duration::from_millis(501)).await;
        for waiter in line {
            assert!(!waiter.await.expect("task").is_admitted());
        }
        assert!(
            !store
                .slots
                .pin()
                .get(org.id())
                .is_some_and(|slot| slot.permits.has_waiters())
        );
        drop(held);
        assert_eq!(store.usage_in_flight(&org), 0);
    }

    trait NowTs {
        fn now_ts(&self) -> Timestamp;
    }

    impl NowTs for ManualClock {
        fn now_ts(&self) -> Timestamp {
            crate::Clock::now(self)
        }
    }

    impl MemoryStore {
        fn usage_in_flight(&self, org: &ResolvedOrg) -> u32 {
            self.slots.pin().get(org.id()).map_or(0, |slot| {
                slot.permits
                    .in_flight
                    .load(std::sync::atomic::Ordering::SeqCst)
            })
        }
    }
}
