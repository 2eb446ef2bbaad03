//! The store trait: where counts live, atomically per org.
//!
//! A [`Store`] runs the [`Ledger`](crate::Ledger) arithmetic for one org atomically: check and charge
//! every tier of every limit and take an in-flight permit in one step, settle latency and cost
//! corrections afterwards, and keep each org's usage. [`MemoryStore`](crate::MemoryStore) keeps it
//! in this process; a Redis store shares it between instances. The trait is async so that a store
//! can do I/O; [`DynStore`] is its object-safe form, implemented for every `Store`.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Charge, Dimension, Limit, LimitZone, MemoryStore, Org, Plan, Policy, Store, Tier, Timestamp, Window};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let daily = Limit::new("daily", Dimension::Requests, LimitZone::Org, vec![Tier::new(Window::Day, 2)?])?;
//! let policy = Policy::builder().plan(Plan::new("p", vec![daily])?).org(Org::new("acme", "p")).build()?;
//! let acme = policy.org("acme").expect("defined above");
//! let store = MemoryStore::new();
//! let now = Timestamp::from_secs(0);
//! assert!(store.admit(acme, Charge::default(), now).await?.is_admitted());
//! assert!(store.admit(acme, Charge::default(), now).await?.is_admitted());
//! assert!(!store.admit(acme, Charge::default(), now).await?.is_admitted());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::ledger::{Charge, Correction, Receipt, RejectReason, Verdict};
use crate::permit::Permit;
use crate::policy::ResolvedOrg;
use crate::status::LimitStatus;
use crate::time::Clock;
use crate::time::Timestamp;
use crate::usage::{CallRecord, UsageSnapshot};

/// The store's answer to one admission.
#[derive(Debug)]
pub struct Decision {
    /// Admitted with every limit charged, or rejected with nothing charged.
    pub verdict: Verdict,
    /// The request's in-flight permit, when it was admitted: it counts in the org's requests in
    /// flight (and against its concurrency limit, if the plan has one) until it is dropped. A
    /// store that counts nothing in flight may give none.
    pub permit: Option<Permit>,
    /// How many requests of the org were in flight right after the decision (this one included if
    /// it was admitted), if the store said (a store may count them only when the plan limits
    /// concurrency): the layer shows the free slots in the `RateLimit` header when the plan
    /// limits concurrency, on a rejection too.
    pub in_flight: Option<u32>,
}

impl Decision {
    /// Whether the request was admitted.
    pub fn is_admitted(&self) -> bool {
        self.verdict.is_admitted()
    }
}

/// What to settle once a response has ended.
#[derive(Debug, Default)]
pub struct Settlement {
    /// What the admission took, so a lower real cost can be given back.
    pub receipt: Receipt,
    /// Latency to debit and cost to correct.
    pub correction: Correction,
    /// The call to record in the org's usage.
    pub call: Option<CallRecord>,
    /// When the response ended.
    pub at: Timestamp,
}

/// An org's usage and in-flight count.
#[derive(Clone, Debug, PartialEq)]
pub struct OrgUsage {
    /// Calls, billing and the polling report.
    pub usage: UsageSnapshot,
    /// Requests in flight now: admitted, and their responses not yet ended (whether or not the
    /// plan limits concurrency).
    pub in_flight: u32,
}

/// What a usage read asks for: each usage route reads only what it shows, so a read costs the
/// store no more than its answer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageView {
    /// Calls and billable calls today and requests in flight: no call log, no report.
    Summary,
    /// The last calls, at most [`CALLS_SHOWN`](crate::usage::CALLS_SHOWN).
    Calls,
    /// Billable calls per day for this many days (at most 31).
    Billing {
        /// Days, today included.
        days: usize,
    },
    /// Today's endpoints and the most repeated requests
    /// ([`REPORT_ROWS`](crate::usage::REPORT_ROWS) at most).
    Report,
    /// Everything, with this many days of billing.
    All {
        /// Days, today included.
        days: usize,
    },
}

impl UsageView {
    /// Days of billing the view shows (1 when it shows only today).
    pub fn days(self) -> usize {
        match self {
            UsageView::Billing { days } | UsageView::All { days } => days,
            _ => 1,
        }
    }

    /// Whether the view shows the call log.
    pub fn calls(self) -> bool {
        matches!(self, UsageView::Calls | UsageView::All { .. })
    }

    /// Whether the view shows the report (endpoints, repeated requests).
    pub fn report(self) -> bool {
        matches!(self, UsageView::Report | UsageView::All { .. })
    }
}

/// Where counts live: atomic per org, exact under any concurrency.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Checks concurrency and every limit of `org`'s plan at `now`; if all admit, charges all of
    /// them and takes an in-flight permit, in one atomic step. A rejection charges nothing.
    fn admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;

    /// Debits latency, settles a cost correction and records the call, after the response ended.
    fn settle(
        &self,
        org: &Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a call that was not admitted (rejected or exempt) in the org's usage.
    fn record(
        &self,
        org: &Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every limit's numbers at `now`, charging nothing.
    fn peek(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<LimitStatus>, StoreError>> + Send;

    /// Forgets what `limit` (or every limit) used in its current windows.
    fn reset(
        &self,
        org: &Arc<ResolvedOrg>,
        limit: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The org's usage as of `now`, with `days` days of billing.
    fn usage(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send;

    /// The part of the org's usage that `view` shows, as of `now`: what a usage route reads. The
    /// default reads everything and leaves out what the view does not show; stores override it
    /// to read less.
    fn usage_view(
        &self,
        org: &Arc<ResolvedOrg>,
        now: Timestamp,
        view: UsageView,
    ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
        let read = self.usage(org, now, view.days());
        async move {
            let mut usage = read.await?;
            usage.usage.keep_only(view);
            Ok(usage)
        }
    }

    /// Admits like [`Store::admit`], but when the org's concurrency limit is full and its plan
    /// allows a wait (`concurrency_wait_ms`), waits up to that long for a slot; a rejection by a
    /// limit comes back at once. Time comes from `clock`.
    ///
    /// The default tries again on a schedule ([`poll_admission`]); the memory store hands a freed
    /// slot straight to the first waiter of its org, and the Redis store wakes a waiter when a
    /// slot is freed through its instance. Cancel-safe: dropping the future while it waits holds
    /// nothing.
    fn admit_waiting<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        charge: Charge,
        clock: &'a dyn Clock,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a
    where
        Self: Sized,
    {
        poll_admission(self, org, charge, clock, |_| std::future::pending::<()>())
    }

    /// Admits at once, without a future, if this store can answer without waiting (it keeps its
    /// counts in this process); `None`, the default, if the caller must await [`Store::admit`].
    /// A store that overrides it answers exactly as [`Store::admit`] would.
    fn try_admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (org, charge, now);
        None
    }

    /// Settles at once, without a future, if this store can without waiting and without failing;
    /// otherwise (the default) hands `settlement` back, for [`Store::settle`].
    fn try_settle(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) -> Option<Settlement> {
        let _ = org;
        Some(settlement)
    }

    /// Records a call at once, without a future, if this store can without waiting and without
    /// failing; otherwise (the default) hands `call` back, for [`Store::record`].
    fn try_record(&self, org: &Arc<ResolvedOrg>, call: CallRecord) -> Option<CallRecord> {
        let _ = org;
        Some(call)
    }
}

/// A boxed future, for [`DynStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Store`] in object-safe form, so a service can choose its store at run time.
#[allow(missing_docs)]
pub trait DynStore: Send + Sync + fmt::Debug + 'static {
    fn admit<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;
    fn settle<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn record<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn peek<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>>;
    fn reset<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        limit: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn usage<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> BoxFuture<'a, Result<OrgUsage, StoreError>>;
    fn usage_view<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        now: Timestamp,
        view: UsageView,
    ) -> BoxFuture<'a, Result<OrgUsage, StoreError>>;
    fn admit_waiting<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        charge: Charge,
        clock: &'a dyn Clock,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;
    fn try_admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>>;
    fn try_settle(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) -> Option<Settlement>;
    fn try_record(&self, org: &Arc<ResolvedOrg>, call: CallRecord) -> Option<CallRecord>;
}

impl<S: Store> DynStore for S {
    fn admit<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(Store::admit(self, org, charge, now))
    }
    fn settle<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::settle(self, org, settlement))
    }
    fn record<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        call: CallRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::record(self, org, call))
    }
    fn peek<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<LimitStatus>, StoreError>> {
        Box::pin(Store::peek(self, org, now))
    }
    fn reset<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        limit: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::reset(self, org, limit))
    }
    fn usage<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        now: Timestamp,
        days: usize,
    ) -> BoxFuture<'a, Result<OrgUsage, StoreError>> {
        Box::pin(Store::usage(self, org, now, days))
    }
    fn usage_view<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        now: Timestamp,
        view: UsageView,
    ) -> BoxFuture<'a, Result<OrgUsage, StoreError>> {
        Box::pin(Store::usage_view(self, org, now, view))
    }
    fn admit_waiting<'a>(
        &'a self,
        org: &'a Arc<ResolvedOrg>,
        charge: Charge,
        clock: &'a dyn Clock,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(Store::admit_waiting(self, org, charge, clock))
    }
    fn try_admit(
        &self,
        org: &Arc<ResolvedOrg>,
        charge: Charge,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        Store::try_admit(self, org, charge, now)
    }
    fn try_settle(&self, org: &Arc<ResolvedOrg>, settlement: Settlement) -> Option<Settlement> {
        Store::try_settle(self, org, settlement)
    }
    fn try_record(&self, org: &Arc<ResolvedOrg>, call: CallRecord) -> Option<CallRecord> {
        Store::try_record(self, org, call)
    }
}

/// Admits as [`Store::admit_waiting`] does, through any store: what the layer calls.
pub async fn admit_waiting<S: DynStore + ?Sized>(
    store: &S,
    org: &Arc<ResolvedOrg>,
    charge: Charge,
    clock: &dyn Clock,
) -> Result<Decision, StoreError> {
    store.admit_waiting(org, charge, clock).await
}

/// The first pause of [`poll_admission`] between two tries.
pub const FIRST_POLL: Duration = Duration::from_millis(10);
/// The longest pause of [`poll_admission`]: a slot freed anywhere is taken within about this
/// long, with at most `1 s / LONGEST_POLL` tries a second per waiting request once it has waited
/// a while.
pub const LONGEST_POLL: Duration = Duration::from_millis(100);

/// Waits for a concurrency slot by trying again: after [`FIRST_POLL`], then twice as long each
/// time up to [`LONGEST_POLL`], or as soon as `freed()` resolves (a store that hears of a slot
/// freed nearby wakes its waiter at once). A rejection by a limit (not concurrency) comes back at
/// once; when the wait is over, one last try decides.
pub async fn poll_admission<S, F, Fut>(
    store: &S,
    org: &Arc<ResolvedOrg>,
    charge: Charge,
    clock: &dyn Clock,
    mut freed: F,
) -> Result<Decision, StoreError>
where
    S: Store + ?Sized,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = ()>,
{
    let wait = org.concurrency().map(|c| c.wait()).unwrap_or_default();
    let decision = store.admit(org, charge, clock.now()).await?;
    if wait.is_zero() || !full(&decision) {
        return Ok(decision);
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = FIRST_POLL;
    for attempt in 1.. {
        let until = (tokio::time::Instant::now() + pause).min(deadline);
        let _ = tokio::time::timeout_at(until, freed(attempt)).await;
        let decision = store.admit(org, charge, clock.now()).await?;
        if !full(&decision) || tokio::time::Instant::now() >= deadline {
            return Ok(decision);
        }
        pause = (pause * 2).min(LONGEST_POLL);
    }
    store.admit(org, charge, clock.now()).await
}

/// Whether `decision` is a rejection for a full concurrency limit.
pub fn full(decision: &Decision) -> bool {
    matches!(
        decision.verdict,
        Verdict::Rejected {
            reason: RejectReason::Concurrency,
            ..
        }
    )
}
