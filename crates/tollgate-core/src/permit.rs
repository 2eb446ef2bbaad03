//! Concurrency permits: a slot of an org's in-flight limit, given back when dropped.
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
    in_flight: Option<u32>,
}

impl Permit {
    /// A permit that calls `owner.release(lease)` when dropped.
    pub fn new(owner: Arc<dyn ReleasePermit>, lease: u64) -> Self {
        Self {
            owner,
            lease,
            in_flight: None,
        }
    }

    /// This permit, noting that `in_flight` permits of its org (this one included) were held right
    /// after it was taken: the layer shows the free slots in the `RateLimit` header.
    pub fn with_in_flight(mut self, in_flight: u32) -> Self {
        self.in_flight = Some(in_flight);
        self
    }

    /// How many permits of the org (this one included) were held right after it was taken, if the
    /// store said.
    pub const fn in_flight(&self) -> Option<u32> {
        self.in_flight
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
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.release(self.lease);
    }
}
