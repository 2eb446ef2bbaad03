//! Quota grants: a hot org's admissions decided in this process, exactly (see [`Grants`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Value;
use tollhouse_core::ledger::decide;
use tollhouse_core::org_map::OrgMap;
use tollhouse_core::tier::{LimitState, MAX_TIERS};
use tollhouse_core::{
    Charge, Decision, Dimension, OrgId, Permit, ReleasePermit, ResolvedOrg, Settlement, Snapshot,
    StoreError, Timestamp, Verdict,
};

use super::late::wall_ms;
use super::{Inner, Layout, SCRIPTS, millis};

/// The share of a first tier's room one grant may take, shared by the instances holding grants:
/// 1/2.
const SHARE_DIVISOR: u64 = 2;
/// How long after a grant's life on this instance Redis still counts it as held: room for the two
/// clocks to differ.
const LAPSE_MARGIN: Duration = Duration::from_secs(5);
/// The most requests one grant covers, whatever the demand.
const MOST_REQUESTS: u64 = 100_000;
/// The most concurrency slots one grant holds.
pub(super) const MOST_SLOTS: u64 = 64;
/// The concurrency slots an org's first grant asks for.
const FIRST_SLOTS: u64 = 4;

/// Quota grants: a hot org's admissions decided in this process, exactly. Off unless
/// [`RedisStoreBuilder::grants`](crate::RedisStoreBuilder::grants) turns them on.
///
/// A grant is a charge made in advance. When an org is hot on this instance (it sent at least
/// [`Grants::hot_rps`] requests in the last second), the admission script that decides one of its
/// requests also charges a slice of what each limit's first tier has left, and records the slice
/// under a grant id. The instance then admits the org's next requests from the slice in memory,
/// with the ledger's own arithmetic ([`decide`]), until the slice is spent, a window or an
/// override ends, the policy changes, or the grant's life is over; then the next request goes to
/// Redis again, and its script first gives back what the grant did not use. Since every unit an
/// instance spends was charged to Redis's counters before, all instances together never admit more
/// than the capacity.
///
/// - **Sizes**: a grant takes at most half of what a limit's first tier has left, shared among the
///   instances that hold grants for the org, and at most the demand of [`Grants::period`]; when
///   that is fewer than two requests' worth, none is taken and every request goes to Redis, as
///   without grants. What other instances hold unspent is refused to a request that reaches Redis:
///   near a limit the org may be refused a little early, never admitted beyond it.
/// - **Give-back**: once, guarded by the grant's id (a give-back sent twice refunds once), never
///   below zero, never into a window that has ended. A grant unused for a period is given back by a
///   background task; [`RedisStore::flush`](crate::RedisStore::flush) gives every grant back.
/// - **A crash** strands what the instance held: those units stay charged until their windows end
///   (a grant is at most one period of the org's demand). Its id lapses after its life, so the
///   other instances' shares grow back.
/// - **Concurrency**: for a plan with a concurrency limit, a grant also takes slots, leases in the
///   org's lease set held by this instance (4 at first, twice as many when a grant's ran out, half
///   when most stayed idle, at most 64; at most half the free slots, shared by the instances
///   holding grants; none, and no grant, when fewer than two would be free). A request admitted from the grant takes a free slot and gives it back to the grant when
///   it ends; so the org's in-flight count in Redis never passes its limit. Slots are renewed with
///   the instance's other leases and expire with them if it dies.
/// - **Which orgs**: plans whose limits are all request or point tiers (a smooth rate or a
///   `latency_ms` limit keeps every request one round trip).
/// - **Requests in flight** admitted from grants are counted here and published to Redis every
///   period, with the slots held idle, for the usage of other instances.
#[derive(Clone, Debug)]
pub struct Grants {
    hot_rps: u32,
    period: Duration,
    life: Duration,
    least: u64,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            hot_rps: 10,
            period: Duration::from_secs(1),
            life: Duration::from_secs(10),
            least: 2,
        }
    }
}

impl Grants {
    /// The defaults: orgs that send 10 requests a second to this instance are granted one second
    /// of their demand at a time, for 10 seconds at most.
    pub fn new() -> Self {
        Self::default()
    }

    /// The requests a second (on this instance) from which an org is granted quota; 0 grants every
    /// org from its first request.
    #[must_use]
    pub fn hot_rps(mut self, rps: u32) -> Self {
        self.hot_rps = rps;
        self
    }

    /// How much of an org's demand one grant covers (1 s by default); a grant unused this long is
    /// given back.
    #[must_use]
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period.max(Duration::from_millis(10));
        self
    }

    /// The longest a grant is spent before it goes back (10 s by default).
    #[must_use]
    pub fn life(mut self, life: Duration) -> Self {
        self.life = life.max(Duration::from_millis(10));
        self
    }

    /// The interval of the background task that gives back unused grants.
    pub(super) fn period_of(&self) -> Duration {
        self.period
    }
}

/// Whether `org`'s plan can be granted: every limit request or point tiers.
fn grantable(org: &ResolvedOrg) -> bool {
    !org.limits().is_empty()
        && org
            .limits()
            .iter()
            .all(|limit| !limit.is_rate() && limit.dimension() != Dimension::LatencyMs)
}

/// Requests an org sent this instance, per second of the admissions' clock.
#[derive(Debug, Default)]
struct Demand {
    second: i64,
    this: u32,
    last: u32,
}

impl Demand {
    fn count(&mut self, now: Timestamp) {
        let second = now.as_millis().div_euclid(1000);
        if second != self.second {
            self.last = if second == self.second + 1 {
                self.this
            } else {
                0
            };
            self.second = second;
            self.this = 0;
        }
        self.this = self.this.saturating_add(1);
    }

    fn per_second(&self) -> u32 {
        self.last.max(self.this)
    }
}

/// Requests in flight that this instance admitted from its grants for one org.
#[derive(Debug, Default)]
pub(super) struct Flight(AtomicU32);

impl ReleasePermit for Flight {
    fn release(&self, _lease: u64) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One org's grant state on this instance.
#[derive(Debug, Default)]
struct Slot {
    demand: Demand,
    grant: Option<Grant>,
    /// A grant has been asked for and its reply is not in yet.
    asking: bool,
    /// Admitted from since the background task last looked.
    touched: bool,
    /// Asked about (a request of the org) since the background task last looked.
    recent: bool,
    /// Concurrency slots the next grant asks for: doubled when a grant's ran out, halved when
    /// most of a grant's stayed idle.
    slots_wanted: u64,
    flight: Arc<Flight>,
    /// What [`Slot::adjustment`] was when last published.
    published: i64,
}

impl Slot {
    /// What this instance adds to the count of the org's lease set to make its requests in
    /// flight: the requests admitted from quota-only grants (they hold no lease), less the slots
    /// its grant holds idle (leases without a request).
    fn adjustment(&self) -> i64 {
        let idle = self
            .grant
            .as_ref()
            .and_then(|grant| grant.pool.as_ref())
            .map_or(0, |pool| pool.idle());
        i64::from(self.flight.0.load(Ordering::Acquire)) - idle
    }

    /// Takes the grant out, its idle slots released (and what they say of the org's concurrency
    /// kept for the next grant's size).
    fn take_grant(&mut self) -> Option<Grant> {
        let grant = self.grant.take()?;
        if let Some(pool) = &grant.pool {
            self.slots_wanted = pool.next_size(self.slots_wanted);
            pool.close();
        }
        Some(grant)
    }
}

/// The concurrency slots of a grant: leases of this instance's in the org's lease set, handed to
/// the requests admitted from the grant and back.
#[derive(Debug)]
pub(super) struct Pool {
    inner: std::sync::Weak<Inner>,
    set: Arc<str>,
    /// The idle slots' lease numbers, and whether the grant still holds them.
    state: Mutex<(Vec<u64>, bool)>,
    /// Slots held by the grant.
    total: usize,
    /// The org's other requests in flight when the grant was taken.
    others: u32,
}

impl Pool {
    fn idle(&self) -> i64 {
        i64::try_from(self.state.lock().0.len()).unwrap_or(i64::MAX)
    }

    /// An idle slot for a request, if there is one, and the org's requests in flight with it as
    /// this instance knows them: the others' when the grant was taken, and this grant's busy slots.
    fn take(&self) -> Option<(u64, u32)> {
        let mut state = self.state.lock();
        if !state.1 {
            return None;
        }
        let lease = state.0.pop()?;
        let busy = self.total.saturating_sub(state.0.len());
        Some((
            lease,
            self.others
                .saturating_add(u32::try_from(busy).unwrap_or(u32::MAX)),
        ))
    }

    /// A slot taken for a request the grant did not admit after all.
    fn put_back(&self, lease: u64) {
        self.state.lock().0.push(lease);
    }

    /// How many slots the next grant should ask for, after this one's held `total`: twice as
    /// many if none was idle when it went back, half if most were, else as many.
    fn next_size(&self, wanted: u64) -> u64 {
        let total = u64::try_from(self.total).unwrap_or(u64::MAX);
        let idle = u64::try_from(self.state.lock().0.len()).unwrap_or(0);
        let wanted = wanted.max(total);
        if idle == 0 {
            wanted.saturating_mul(2)
        } else if idle * 4 > total * 3 {
            wanted / 2
        } else {
            wanted
        }
        .clamp(FIRST_SLOTS, MOST_SLOTS)
    }

    /// The grant no longer holds its slots: the idle ones are released now, the busy ones when
    /// their requests end.
    fn close(&self) {
        let idle = {
            let mut state = self.state.lock();
            state.1 = false;
            std::mem::take(&mut state.0)
        };
        if let Some(inner) = self.inner.upgrade() {
            for lease in idle {
                inner.release(lease);
            }
        }
    }
}

impl ReleasePermit for Pool {
    fn release(&self, lease: u64) {
        {
            let mut state = self.state.lock();
            if state.1 {
                state.0.push(lease);
                drop(state);
                if let Some(inner) = self.inner.upgrade() {
                    inner.lines.slot_freed(&self.set);
                }
                return;
            }
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.release(lease);
        }
    }
}

/// A slice of an org's room charged in advance, spent here.
#[derive(Debug)]
pub(super) struct Grant {
    id: String,
    org: Arc<ResolvedOrg>,
    /// Spent from only from `from` (every window open) until `until`.
    from: Timestamp,
    until: Timestamp,
    /// What decides: each limit's first tier holds what is left of the grant, the others nothing.
    parts: Vec<LimitState>,
    /// What the headers show: the counts Redis returned, with what is left of the grant taken off.
    shown: Vec<LimitState>,
    /// Each limit's first-tier count after the grant was charged.
    charged: Vec<i64>,
    /// Each limit's capacities when granted.
    caps: Vec<[u64; MAX_TIERS]>,
    /// Each limit's first-tier counter.
    keys: Vec<String>,
    /// Its concurrency slots, when the plan limits concurrency.
    pool: Option<Arc<Pool>>,
}

impl Grant {
    /// The grant's id in the org's grants hash.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// What is left of limit `index`'s slice.
    fn left(&self, index: usize) -> i64 {
        let used = self.parts[index]
            .tiers()
            .first()
            .map_or(0, |tier| tier.used);
        i64::try_from(self.caps[index][0])
            .unwrap_or(i64::MAX)
            .saturating_sub(used)
            .max(0)
    }

    /// Each first-tier counter with what is left of its slice.
    pub(super) fn unspent(&self) -> Vec<(String, i64)> {
        (0..self.keys.len())
            .map(|index| (self.keys[index].clone(), self.left(index)))
            .collect()
    }

    /// Admits from the grant if it holds the whole charge and still applies to `org` at `now`;
    /// `None` if the request must go to Redis.
    fn admit(&mut self, org: &Arc<ResolvedOrg>, charge: Charge, now: Timestamp) -> Option<Verdict> {
        if !Arc::ptr_eq(&self.org, org) || now < self.from || now >= self.until {
            return None;
        }
        let unchanged = org
            .limits()
            .iter()
            .zip(&self.caps)
            .all(|(limit, caps)| limit.capacities(now) == *caps);
        if !unchanged {
            return None;
        }
        let Verdict::Admitted { receipt, .. } = decide(org, &mut self.parts, charge, now) else {
            return None;
        };
        for index in 0..self.shown.len() {
            let shown = self.charged[index].saturating_sub(self.left(index));
            self.shown[index].set_used(0, shown);
        }
        Some(Verdict::Admitted {
            snapshot: Snapshot::new(&self.shown, now),
            receipt,
        })
    }
}

/// The grants of one store.
#[derive(Debug)]
pub(super) struct Book {
    config: Grants,
    slots: OrgMap<Mutex<Slot>>,
    next: AtomicU64,
}

impl Book {
    pub(super) fn new(config: Grants) -> Self {
        Self {
            config,
            slots: OrgMap::new(),
            next: AtomicU64::new(1),
        }
    }

    /// Admits `charge` from `org`'s grant, if it holds it; `None` if the request must go to Redis.
    pub(super) fn admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Decision> {
        let slots = self.slots.pin();
        let mut slot = slots.get(org.id())?.lock();
        let grant = slot.grant.as_mut()?;
        // A plan that limits concurrency needs an idle slot of the grant's too.
        let held = match &grant.pool {
            Some(pool) => Some((Arc::clone(pool), pool.take()?)),
            None => None,
        };
        let Some(verdict) = grant.admit(org, charge, now) else {
            if let Some((pool, (lease, _))) = held {
                pool.put_back(lease);
            }
            return None;
        };
        slot.demand.count(now);
        slot.touched = true;
        let (permit, in_flight) = match held {
            Some((pool, (lease, in_flight))) => (
                Permit::new(pool as Arc<dyn ReleasePermit>, lease),
                Some(in_flight),
            ),
            None => {
                slot.flight.0.fetch_add(1, Ordering::AcqRel);
                let owner = Arc::clone(&slot.flight) as Arc<dyn ReleasePermit>;
                (Permit::new(owner, 0), None)
            }
        };
        Some(Decision {
            verdict,
            permit: Some(permit),
            in_flight,
        })
    }

    /// What this instance adds to the count of `org`'s lease set to make its requests in flight
    /// (see [`Slot::adjustment`]).
    pub(super) fn in_flight_adjustment(&self, org: &OrgId) -> i64 {
        let slots = self.slots.pin();
        slots.get(org).map_or(0, |slot| slot.lock().adjustment())
    }

    /// What `org`'s grant holds unspent now, by first-tier counter.
    pub(super) fn unspent(&self, org: &OrgId) -> Vec<(String, i64)> {
        let slots = self.slots.pin();
        slots
            .get(org)
            .and_then(|slot| slot.lock().grant.as_ref().map(Grant::unspent))
            .unwrap_or_default()
    }

    /// Takes `org`'s grant out (to give it back).
    pub(super) fn take(&self, org: &OrgId) -> Option<Grant> {
        let slots = self.slots.pin();
        slots.get(org).and_then(|slot| slot.lock().take_grant())
    }

    /// The grants not spent from since the last look, and every grant if `all`, taken out; the
    /// in-flight counts that changed since they were last published.
    fn sweep(&self, all: bool) -> Sweep {
        let mut idle = Vec::new();
        let mut flights = Vec::new();
        let slots = self.slots.pin();
        slots.for_each(|org, slot| {
            let mut slot = slot.lock();
            if (all || !slot.touched)
                && let Some(grant) = slot.take_grant()
            {
                idle.push((org.clone(), grant));
            }
            slot.touched = false;
            // Published when it changed, and again every period while not zero: each publication
            // lapses after three periods.
            let adjustment = slot.adjustment();
            if adjustment != slot.published || adjustment != 0 {
                slot.published = adjustment;
                flights.push((org.clone(), adjustment));
            }
        });
        // Orgs with nothing held, nothing in flight and no request since the last look are
        // forgotten: the book holds only orgs that are busy now.
        slots.retain(|slot| {
            let mut slot = slot.lock();
            std::mem::take(&mut slot.recent)
                || slot.grant.is_some()
                || slot.asking
                || slot.published != 0
                || slot.flight.0.load(Ordering::Acquire) != 0
        });
        Sweep { idle, flights }
    }
}

/// What a look at the book found to send.
struct Sweep {
    /// Grants to give back.
    idle: Vec<(OrgId, Grant)>,
    /// In-flight adjustments to publish.
    flights: Vec<(OrgId, i64)>,
}

/// What one admission sent to Redis does about grants: the grant it gives back first (taken out
/// of the book, so nobody spends it meanwhile) and the one it asks for. Dropped before the script
/// is known to have run, it gives the first back in the background (a give-back is idempotent);
/// it always lets the next admission ask again.
pub(super) struct GrantCall {
    inner: Arc<Inner>,
    org: Arc<ResolvedOrg>,
    back: Option<Grant>,
    ask: Option<Ask>,
    ran: bool,
}

/// A grant asked for.
struct Ask {
    id: String,
    /// Per limit: the units wanted and the fewest worth taking.
    sizes: Vec<(u64, u64)>,
    /// Concurrency slots wanted (0: the plan has no limit), the fewest worth taking, and the
    /// first of the lease numbers they would get.
    slots: u64,
    least_slots: u64,
    first_lease: u64,
    /// How long Redis counts the grant as held.
    life: Duration,
}

impl GrantCall {
    /// The keys and arguments of the script's grant part (see admit.lua), after the counters and
    /// the limits.
    pub(super) fn push(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let keys = self.inner.keys(self.org.id());
        invocation.key(keys.grants()).key(keys.grant_lapses());
        match &self.back {
            Some(grant) => {
                let unspent = grant.unspent();
                for (key, _) in &unspent {
                    invocation.key(key);
                }
                invocation.arg(&grant.id).arg(unspent.len());
                for (_, left) in unspent {
                    invocation.arg(left);
                }
            }
            None => {
                invocation.arg(0).arg(0);
            }
        }
        match &self.ask {
            Some(ask) => {
                invocation
                    .arg(&ask.id)
                    .arg(millis(ask.life))
                    .arg(SHARE_DIVISOR);
                for (want, least) in &ask.sizes {
                    invocation.arg(want).arg(least);
                }
                invocation
                    .arg(ask.slots)
                    .arg(ask.least_slots)
                    .arg(format!("{}:", self.inner.instance_name()))
                    .arg(ask.first_lease);
            }
            None => {
                invocation.arg(0);
            }
        }
    }

    /// The script ran (it gave the old grant back, if any).
    pub(super) fn ran(&mut self) {
        self.ran = true;
        self.back = None;
    }

    /// The script did not run (its deadline had passed): gives the old grant back now, so that
    /// the admission sent again sees the org's counts without it.
    pub(super) async fn give_back_now(&mut self) {
        if let Some(grant) = self.back.take() {
            self.inner.give_back_now(self.org.id(), grant).await;
        }
    }

    /// The script took a grant (`granted`: a size per limit, then the slots) that will not be
    /// installed (the reply could not be used): it goes back in the background.
    pub(super) fn abandon(&self, layout: &Layout, granted: &[i64]) {
        let Some(asked) = self.asked(layout) else {
            return;
        };
        self.inner
            .give_back_asked(self.org.id(), asked, granted.to_vec());
    }

    /// What a reply read by nobody needs to give the grant asked for back.
    pub(super) fn asked(&self, layout: &Layout) -> Option<Asked> {
        let ask = self.ask.as_ref()?;
        Some(Asked {
            id: ask.id.clone(),
            keys: first_keys(&self.org, layout),
            first_lease: ask.first_lease,
        })
    }

    /// The admission was admitted and `granted` holds what the script granted (nothing, or a
    /// size per limit): the grant goes into the book. `states` are the limits after the
    /// request's own charge.
    pub(super) fn install(
        &mut self,
        layout: &Layout,
        states: &[LimitState],
        granted: &[i64],
        in_flight: i64,
        now: Timestamp,
    ) {
        let (Some(ask), Some(book)) = (self.ask.as_ref(), self.inner.grants.as_ref()) else {
            return;
        };
        // A size per limit, then the slots.
        let Some((&slots, granted)) = granted.split_last() else {
            return;
        };
        if granted.len() != states.len() {
            return;
        }
        let org = &self.org;
        let mut grant = Grant {
            id: ask.id.clone(),
            org: Arc::clone(org),
            from: Timestamp::from_millis(i64::MIN),
            until: Timestamp::from_millis(now.as_millis().saturating_add(millis(book.config.life))),
            parts: states.to_vec(),
            shown: states.to_vec(),
            charged: Vec::with_capacity(states.len()),
            caps: org
                .limits()
                .iter()
                .map(|limit| limit.capacities(now))
                .collect(),
            keys: first_keys(org, layout),
            pool: None,
        };
        if ask.slots > 0 {
            let set: Arc<str> = Arc::from(self.inner.keys(org.id()).leases());
            let leases: Vec<u64> = (0..u64::try_from(slots).unwrap_or(0))
                .map(|n| ask.first_lease + n)
                .collect();
            let mut held = self.inner.leases.lock();
            for lease in &leases {
                held.insert(*lease, Arc::clone(&set));
            }
            drop(held);
            grant.pool = Some(Arc::new(Pool {
                inner: Arc::downgrade(&self.inner),
                set,
                total: leases.len(),
                state: Mutex::new((leases, true)),
                // The request that took the grant among them: it holds a lease of its own.
                others: u32::try_from(in_flight).unwrap_or(0),
            }));
        }
        for (index, size) in granted.iter().enumerate() {
            let caps = grant.caps[index];
            let parts = &mut grant.parts[index];
            for (tier, cap) in caps.iter().enumerate().take(parts.tiers().len()) {
                let cap = i64::try_from(*cap).unwrap_or(i64::MAX);
                parts.set_used(tier, if tier == 0 { cap - size } else { cap });
            }
            let charged = states[index].tiers().first().map_or(0, |tier| tier.used) + size;
            grant.shown[index].set_used(0, charged);
            grant.charged.push(charged);
            for tier in states[index].tiers() {
                grant.from = grant.from.max(tier.start);
                grant.until = grant.until.min(tier.end);
            }
        }
        let slots = book.slots.pin();
        let slot = slots.get_or_insert_with(org.id(), Mutex::default);
        let previous = {
            let mut slot = slot.lock();
            let previous = slot.take_grant();
            slot.grant = Some(grant);
            // Not idle: the sweeper gives back grants unused for a whole period.
            slot.touched = true;
            previous
        };
        if let Some(previous) = previous {
            self.inner.give_back_later(org.id(), previous);
        }
    }
}

impl Drop for GrantCall {
    fn drop(&mut self) {
        if let Some(grant) = self.back.take()
            && !self.ran
        {
            self.inner.give_back_later(self.org.id(), grant);
        }
        if self.ask.is_some()
            && let Some(book) = self.inner.grants.as_ref()
        {
            let slots = book.slots.pin();
            if let Some(slot) = slots.get(self.org.id()) {
                slot.lock().asking = false;
            }
        }
    }
}

/// What giving back the grant of a reply read by nobody needs.
pub(super) struct Asked {
    pub(super) id: String,
    /// Each limit's first-tier counter.
    pub(super) keys: Vec<String>,
    /// The lease number of its first concurrency slot.
    pub(super) first_lease: u64,
}

/// Each limit's first-tier counter in `layout` (every limit of a granted plan has tiers).
fn first_keys(org: &ResolvedOrg, layout: &Layout) -> Vec<String> {
    let mut keys = Vec::with_capacity(org.limits().len());
    let mut first = 0;
    for limit in org.limits() {
        keys.push(layout.keys.get(first).cloned().unwrap_or_default());
        first += limit.tiers().len();
    }
    keys
}

impl Inner {
    /// What the admission of `charge` for `org` does about grants, if anything: `None` when grants
    /// are off, the plan cannot be granted, or there is neither a grant to give back nor one to
    /// ask for.
    pub(super) fn grant_call(
        self: &Arc<Self>,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<GrantCall> {
        let book = self.grants.as_ref()?;
        if !grantable(org) {
            return None;
        }
        let slots = book.slots.pin();
        let mut slot = slots.get_or_insert_with(org.id(), Mutex::default).lock();
        slot.demand.count(now);
        slot.recent = true;
        let back = slot.take_grant();
        let hot = slot.demand.per_second() >= book.config.hot_rps;
        let ask = if hot && !slot.asking {
            slot.asking = true;
            let per_second = u64::from(slot.demand.per_second());
            let period_ms = u64::try_from(book.config.period.as_millis()).unwrap_or(u64::MAX);
            let requests = (per_second.saturating_mul(period_ms) / 1000)
                .clamp(book.config.least, MOST_REQUESTS);
            let sizes = org
                .limits()
                .iter()
                .map(|limit| {
                    let unit = charge.amount(limit.dimension()).max(1);
                    (
                        requests.saturating_mul(unit),
                        book.config.least.saturating_mul(unit),
                    )
                })
                .collect();
            let id = format!(
                "{}:{}",
                self.instance_name(),
                book.next.fetch_add(1, Ordering::Relaxed)
            );
            let slots = if org.concurrency().is_some() {
                slot.slots_wanted.clamp(FIRST_SLOTS, MOST_SLOTS)
            } else {
                0
            };
            let first_lease = self.next_lease.fetch_add(slots, Ordering::Relaxed);
            Some(Ask {
                id,
                sizes,
                slots,
                least_slots: book.config.least.min(slots),
                first_lease,
                life: book.config.life + LAPSE_MARGIN,
            })
        } else {
            None
        };
        drop(slot);
        if back.is_none() && ask.is_none() {
            return None;
        }
        Some(GrantCall {
            inner: Arc::clone(self),
            org: Arc::clone(org),
            back,
            ask,
            ran: false,
        })
    }

    /// Gives back in the background the grant `asked` that a script took (`granted`: a size per
    /// limit, then the slots) and nobody will spend.
    pub(super) fn give_back_asked(self: &Arc<Self>, org: &OrgId, asked: Asked, granted: Vec<i64>) {
        let Some((&slots, sizes)) = granted.split_last() else {
            return;
        };
        if sizes.len() != asked.keys.len() {
            return;
        }
        let set: Arc<str> = Arc::from(self.keys(org).leases());
        for lease in 0..u64::try_from(slots).unwrap_or(0) {
            self.batcher
                .release(Arc::clone(&set), self.member(asked.first_lease + lease));
        }
        let unspent: Vec<(String, i64)> = asked.keys.into_iter().zip(sizes.to_vec()).collect();
        let inner = Arc::clone(self);
        let org = org.clone();
        self.runtime
            .spawn(async move { inner.give_back_logged(&org, &asked.id, &unspent).await });
    }

    /// The org's grant, taken out, when `settlement` charges a cost found higher after the
    /// response: that charge may leave a debt, which the grant's units were taken before. The
    /// grant must go back before the charge is written, so that the charge falls where it would
    /// without the grant, and the org's next request sees the debt as the memory store would.
    pub(super) fn grant_ended_by(
        &self,
        org: &ResolvedOrg,
        settlement: &Settlement,
    ) -> Option<Grant> {
        // Latency is debited only to `latency_ms` limits, which are never granted.
        if settlement.correction.cost_delta <= 0 {
            return None;
        }
        self.grants.as_ref()?.take(org.id())
    }

    /// Gives `grant` back, then queues `job` (a charge the grant's units must not stand in front
    /// of), in a task of its own: its result is the job's.
    pub(super) fn settle_after_give_back(
        self: &Arc<Self>,
        org: &OrgId,
        grant: Grant,
        job: Option<super::settle::Job>,
    ) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let inner = Arc::clone(self);
        let org = org.clone();
        self.runtime.spawn(async move {
            inner.give_back_now(&org, grant).await;
            inner.enqueue(job).await
        })
    }

    /// Gives `grant` back now; if that fails, again in the background (a give-back is
    /// idempotent).
    pub(super) async fn give_back_now(self: &Arc<Self>, org: &OrgId, grant: Grant) {
        let unspent = grant.unspent();
        if self.return_grant(org, &grant.id, &unspent).await.is_err() {
            self.give_back_later(org, grant);
        }
    }

    /// Gives `grant` back in the background.
    pub(super) fn give_back_later(self: &Arc<Self>, org: &OrgId, grant: Grant) {
        let inner = Arc::clone(self);
        let org = org.clone();
        self.runtime.spawn(async move {
            inner
                .give_back_logged(&org, &grant.id, &grant.unspent())
                .await;
        });
    }

    /// Gives back grant `id` of `org` (see [`Inner::return_grant`]); a failure is logged.
    async fn give_back_logged(&self, org: &OrgId, id: &str, unspent: &[(String, i64)]) {
        if let Err(error) = self.return_grant(org, id, unspent).await {
            tracing::warn!(
                %error,
                org = org.as_str(),
                "tollhouse: giving a quota grant back failed; its units stay charged until their \
                 windows end"
            );
        }
    }

    /// Gives back grant `id` of `org`: the units left of each counter.
    pub(super) async fn return_grant(
        &self,
        org: &OrgId,
        id: &str,
        unspent: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let keys = self.keys(org);
        let mut invocation = SCRIPTS.give_back.prepare_invoke();
        invocation.key(keys.grants()).key(keys.grant_lapses());
        for (key, _) in unspent {
            invocation.key(key);
        }
        invocation.arg(id);
        for (_, left) in unspent {
            invocation.arg(left);
        }
        let mut conn = self.conn.clone();
        self.run(invocation.invoke_async::<Value>(&mut conn))
            .await
            .map(drop)
    }

    /// Gives back the grants not spent from since the last call (every grant if `all`), and
    /// publishes the in-flight counts of granted requests that changed; all at once.
    pub(super) async fn sweep_grants(&self, all: bool) {
        let Some(book) = self.grants.as_ref() else {
            return;
        };
        if book.slots.is_empty() {
            return;
        }
        let Sweep { idle, flights } = book.sweep(all);
        let give_backs = idle.iter().map(|(org, grant)| async move {
            self.give_back_logged(org, &grant.id, &grant.unspent())
                .await;
        });
        let lapse = millis(book.config.period.saturating_mul(3));
        let publications = flights.iter().map(|(org, count)| async move {
            let keys = self.keys(org);
            let slot = self.slot_of(&keys.leases());
            let until = self
                .server_clock
                .now_on(slot, wall_ms())
                .saturating_add(lapse);
            let mut pipe = redis::pipe();
            let field = self.instance_name();
            if *count == 0 {
                pipe.hdel(keys.granted_in_flight(), field).ignore();
            } else {
                pipe.hset(keys.granted_in_flight(), field, format!("{count} {until}"))
                    .ignore()
                    .pexpire(keys.granted_in_flight(), lapse)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            let _ = self.run(pipe.query_async::<()>(&mut conn)).await;
        });
        futures_util::future::join(
            futures_util::future::join_all(give_backs),
            futures_util::future::join_all(publications),
        )
        .await;
    }
}

/// Gives back unused grants and publishes in-flight counts every period until the store is
/// dropped.
pub(super) async fn sweep_grants(inner: std::sync::Weak<Inner>, every: Duration) {
    super::every(inner, every, |inner| async move {
        inner.sweep_grants(false).await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_forgets_orgs_that_went_quiet() {
        let book = Book::new(Grants::new());
        let acme = OrgId::new("acme");
        book.slots
            .pin()
            .get_or_insert_with(&acme, Mutex::default)
            .lock()
            .recent = true;
        // A request since the last look: kept once.
        book.sweep(false);
        assert_eq!(book.slots.len(), 1);
        // Quiet for a period, nothing held, nothing in flight: gone.
        book.sweep(false);
        assert_eq!(book.slots.len(), 0);
        // A request in flight from a grant keeps its org.
        let slot = Mutex::new(Slot::default());
        slot.lock().flight.0.store(1, Ordering::Release);
        book.slots.pin().insert(&acme, slot);
        book.sweep(false);
        book.sweep(false);
        assert_eq!(book.slots.len(), 1);
    }

    #[test]
    fn slots_follow_the_org_s_concurrency() {
        let pool = |total: usize, idle: usize| Pool {
            inner: std::sync::Weak::new(),
            set: Arc::from("set"),
            state: Mutex::new(((0..idle as u64).collect(), true)),
            total,
            others: 0,
        };
        // None idle when it went back: twice as many next time, up to 64.
        assert_eq!(pool(4, 0).next_size(0), 8);
        assert_eq!(pool(64, 0).next_size(64), MOST_SLOTS);
        // Most idle: half, down to 4.
        assert_eq!(pool(16, 14).next_size(16), 8);
        assert_eq!(pool(4, 4).next_size(4), FIRST_SLOTS);
        // Some busy, some idle: as many.
        assert_eq!(pool(16, 8).next_size(16), 16);
    }

    #[test]
    fn demand_is_the_busier_of_this_second_and_the_last() {
        let mut demand = Demand::default();
        let at = |ms| Timestamp::from_millis(ms);
        for ms in [1_000, 1_100, 1_900] {
            demand.count(at(ms));
        }
        assert_eq!(demand.per_second(), 3);
        demand.count(at(2_000));
        assert_eq!(demand.per_second(), 3);
        demand.count(at(5_000));
        assert_eq!(demand.per_second(), 1);
    }
}
