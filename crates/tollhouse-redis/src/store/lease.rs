//! Leases: every admitted request holds one in its org's lease set until its permit is released;
//! the store renews the leases it holds, and a lease that is not renewed expires.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Value;
use tollhouse_core::{Permit, ReleasePermit, StoreError};

use super::{Inner, SCRIPTS};

/// A lease registered before its admission is sent: if the admission fails, times out or is
/// cancelled, the lease (which the script may have added) is released.
pub(super) struct PendingLease<'a> {
    inner: &'a Arc<Inner>,
    lease: u64,
    armed: bool,
}

impl<'a> PendingLease<'a> {
    /// A new lease of `inner`'s in the lease set `set`, held by this instance from now on.
    pub(super) fn register(inner: &'a Arc<Inner>, set: &str) -> Self {
        let lease = inner.next_lease.fetch_add(1, Ordering::Relaxed);
        inner.leases.lock().insert(lease, Arc::from(set));
        Self {
            inner,
            lease,
            armed: true,
        }
    }

    /// The lease's member in its set.
    pub(super) fn member(&self) -> String {
        self.inner.member(self.lease)
    }

    /// The script said no: nothing was added.
    pub(super) fn forget(mut self) {
        self.armed = false;
        self.inner.leases.lock().remove(&self.lease);
    }

    /// Admitted: the lease now belongs to a permit.
    pub(super) fn into_permit(mut self) -> Permit {
        self.armed = false;
        let owner: Arc<dyn ReleasePermit> = Arc::clone(self.inner) as Arc<dyn ReleasePermit>;
        Permit::new(owner, self.lease)
    }
}

impl Drop for PendingLease<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.release(self.lease);
        }
    }
}

impl ReleasePermit for Inner {
    fn release(&self, lease: u64) {
        let Some(set) = self.leases.lock().remove(&lease) else {
            return;
        };
        // Never block in `Drop`: the lease is removed in the background, at once (see
        // [`super::batch`]). If that fails, the lease expires on its own (it is no longer renewed).
        self.batcher.release(set, self.member(lease));
    }
}

impl Inner {
    pub(super) fn member(&self, lease: u64) -> String {
        format!("{}:{lease}", self.instance_name())
    }

    /// This instance's name in the keys it writes: lease members, grant ids, in-flight fields.
    pub(super) fn instance_name(&self) -> String {
        format!("{:016x}", self.instance)
    }

    /// Renews every lease this instance holds: one script per org with leases, all sent at once
    /// (pipelined on the connection; a Cluster routes each to its org's node), never one round
    /// trip after another.
    pub(super) async fn renew_all(&self) -> Result<(), StoreError> {
        let mut by_set: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (lease, set) in self.leases.lock().iter() {
            by_set
                .entry(Arc::clone(set))
                .or_default()
                .push(self.member(*lease));
        }
        let renewals = by_set.into_iter().map(|(set, members)| {
            let mut invocation = SCRIPTS.renew.prepare_invoke();
            invocation.key(&*set).arg(self.lease_ttl_ms);
            for member in &members {
                invocation.arg(member);
            }
            let mut conn = self.conn.clone();
            async move { self.run(invocation.invoke_async::<Value>(&mut conn)).await }
        });
        let started = std::time::Instant::now();
        let results = futures_util::future::join_all(renewals).await;
        let took = started.elapsed();
        if took.as_millis() > u128::try_from(self.lease_ttl_ms / 3).unwrap_or(0) {
            tracing::warn!(
                took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                lease_ttl_ms = self.lease_ttl_ms,
                orgs = results.len(),
                "redis store: renewing the leases took more than a third of their lifetime; \
                 leases of busy orgs may expire early"
            );
        }
        results.into_iter().try_for_each(|result| result.map(drop))
    }
}

/// Renews the leases of `inner` every `every` until the store is dropped.
pub(super) async fn renew_leases(inner: Weak<Inner>, every: Duration) {
    super::every(inner, every, |inner| async move {
        if inner.leases.lock().is_empty() {
            return;
        }
        // Failures are counted and logged by the health; the next tick tries again.
        let _ = inner.renew_all().await;
    })
    .await;
}
