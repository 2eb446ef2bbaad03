//! In-flight permits: one admitted request of an org (a slot of its concurrency limit, if the plan
//! has one), given back when dropped.
//!
//! A [`Permit`] is taken at admission and released exactly once, by `Drop`: when the response body
//! ends, when a client hangs up, when a handler panics, or when a future holding it is cancelled.

use std::fmt;
use std::sync::Arc;

/// What a store does when one of its permits is dropped.
pub trait ReleasePermit: Send + Sync + fmt::Debug + 'static {
    /// Frees the slot held under `lease`. Called once per permit, from `Drop`: must not block.
    fn release(&self, lease: u64);
}

/// One in-flight slot of an org; the slot is freed when this is dropped.
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct Permit {
    owner: Arc<dyn ReleasePermit>,
    lease: u64,
}

impl Permit {
    /// A permit that calls `owner.release(lease)` when dropped.
    pub fn new(owner: Arc<dyn ReleasePermit>, lease: u64) -> Self {
        Self { owner, lease }
    }

    /// The lease id the store gave this permit.
    pub const fn lease(&self) -> u64 {
        self.lease
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.release(self.lease);
    }
}
