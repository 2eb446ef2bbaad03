//! What a durable store writes behind the memory store, and puts back on start.
//!
//! Every change marks its org (one flag per org, set where the org's lock is already held), and
//! [`MemoryStore::drain_dirty`] hands over the state of every org marked since its last call: the
//! counts of every window still open and the org's usage. [`MemoryStore::restore`] puts saved
//! state back in place before the org's first request.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{MemoryStore, Slot, UsageCell};
use crate::ledger::{Ledger, SavedTier};
use crate::org::OrgId;
use crate::policy::ResolvedOrg;
use crate::time::Timestamp;
use crate::usage::{SavedUsage, UsageLedger};

/// One org's state changed since the last write-behind.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedOrg {
    /// The org.
    pub org: OrgId,
    /// Its counts, when they changed: every tier whose window is still open.
    pub tiers: Option<Vec<SavedTier>>,
    /// Its usage, when it changed.
    pub usage: Option<SavedUsage>,
}

impl MemoryStore {
    /// An empty store that a durable store writes behind: state changed since the last
    /// [`drain_dirty`](Self::drain_dirty) is never swept before it has been taken.
    pub fn written_behind(calls_kept: usize) -> Self {
        Self {
            writes_behind: true,
            ..Self::with_calls_kept(calls_kept)
        }
    }

    /// The state of every org changed since the last call, clearing the marks: what a durable
    /// store writes at `now`.
    pub fn drain_dirty(&self, now: Timestamp) -> Vec<SavedOrg> {
        let mut changed: Vec<SavedOrg> = Vec::new();
        self.slots.pin().for_each(|org, slot: &Slot| {
            if !slot.dirty.swap(false, Ordering::AcqRel) {
                return;
            }
            let tiers = slot
                .ledger
                .lock()
                .as_ref()
                .map_or_else(Vec::new, |ledger| ledger.saved(now));
            changed.push(SavedOrg {
                org: org.clone(),
                tiers: Some(tiers),
                usage: None,
            });
        });
        self.usage.pin().for_each(|org, cell| {
            let mut cell: parking_lot::MutexGuard<'_, UsageCell> = cell.lock();
            if !std::mem::take(&mut cell.dirty) {
                return;
            }
            let usage = Some(cell.ledger.saved());
            match changed.iter_mut().find(|saved| saved.org == *org) {
                Some(saved) => saved.usage = usage,
                None => changed.push(SavedOrg {
                    org: org.clone(),
                    tiers: None,
                    usage,
                }),
            }
        });
        changed
    }

    /// Puts `org`'s saved counts and usage back in place (before its first request after a
    /// restart): counts of limits and windows its plan still has, and its usage bounded as a
    /// live one is.
    pub fn restore(&self, org: &Arc<ResolvedOrg>, tiers: &[SavedTier], usage: Option<SavedUsage>) {
        if !tiers.is_empty() {
            self.with_ledger(org, |_, ledger| *ledger = Ledger::restored(org, tiers));
        }
        if let Some(usage) = usage {
            let kept = self.calls_kept;
            self.with_usage(org.id(), |cell| {
                cell.ledger = UsageLedger::restored(kept, usage);
            });
        }
    }
}
