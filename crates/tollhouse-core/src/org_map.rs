//! [`OrgMap`]: a concurrent map keyed by org, for state looked up on every request.
//!
//! Reads write no memory that other threads share: the map is lock-free ([`papaya`]), where a
//! sharded map's read lock is a word that every lookup of every thread writes, and which then
//! travels between cores. Keys hash by [`OrgId::prehash`], so a lookup does not read the id's
//! text either. The table grows all at once: an incremental resize is finished only by later
//! inserts, and until then every lookup searches two tables.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{OrgId, org_map::OrgMap};
//!
//! let counts: OrgMap<u64> = OrgMap::new();
//! let acme = OrgId::new("acme");
//! let map = counts.pin();
//! assert_eq!(*map.get_or_insert_with(&acme, || 7), 7);
//! assert_eq!(map.get(&acme), Some(&7));
//! assert_eq!(counts.len(), 1);
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};

use papaya::{Equivalent, HashMap, HashMapRef, LocalGuard, ResizeMode};

use crate::org::OrgId;

/// The hasher of the prehashes: org ids come from the policy or from the server's own
/// identification, and their prehash is seeded per process.
type Seeded = foldhash::fast::RandomState;

/// An org id as the map holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key(OrgId);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.prehash());
    }
}

/// An org id to look up with, hashed as [`Key`] is.
struct Lookup<'a>(&'a OrgId);

impl Hash for Lookup<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.prehash());
    }
}

impl Equivalent<Key> for Lookup<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.0 == key.0
    }
}

/// A concurrent map from org to `V`; see the [module documentation](self).
pub struct OrgMap<V> {
    map: HashMap<Key, V, Seeded>,
}

impl<V> OrgMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            map: HashMap::builder()
                .hasher(Seeded::default())
                .resize_mode(ResizeMode::Blocking)
                .build(),
        }
    }

    /// The map, pinned for the calls of this thread: entries seen through it stay valid (even if
    /// removed meanwhile) until it is dropped.
    pub fn pin(&self) -> Pinned<'_, V> {
        Pinned(self.map.pin())
    }

    /// How many orgs the map holds (exact when no other thread is changing it).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map holds no org.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<V> Default for OrgMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for OrgMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.pin().iter().map(|(key, value)| (&key.0, value)))
            .finish()
    }
}

/// An [`OrgMap`] pinned by this thread; see [`OrgMap::pin`].
pub struct Pinned<'m, V>(HashMapRef<'m, Key, V, Seeded, LocalGuard<'m>>);

impl<V> fmt::Debug for Pinned<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned").finish_non_exhaustive()
    }
}

impl<V> Pinned<'_, V> {
    /// The value of `org`, if it has one.
    pub fn get(&self, org: &OrgId) -> Option<&V> {
        self.0.get(&Lookup(org))
    }

    /// The value of `org`, inserting `make()` if it has none (`make` may run and its value be
    /// dropped when another thread inserts first).
    pub fn get_or_insert_with(&self, org: &OrgId, make: impl FnOnce() -> V) -> &V {
        // Looked up first: papaya's own call takes an owned key, and cloning the id on every call
        // would write its reference count, shared by every thread serving the org.
        match self.0.get(&Lookup(org)) {
            Some(value) => value,
            None => self.0.get_or_insert_with(Key(org.clone()), make),
        }
    }

    /// Sets the value of `org`.
    pub fn insert(&self, org: &OrgId, value: V) {
        self.0.insert(Key(org.clone()), value);
    }

    /// Removes `org` if `remove` says so of its current value.
    pub fn remove_if(&self, org: &OrgId, mut remove: impl FnMut(&V) -> bool) {
        // `Err`: the value it holds now is not to be removed.
        let _ = self.0.remove_if(&Lookup(org), |_, value| remove(value));
    }

    /// Calls `f` with every org and its value.
    pub fn for_each(&self, mut f: impl FnMut(&OrgId, &V)) {
        for (key, value) in self.0.iter() {
            f(&key.0, value);
        }
    }

    /// Keeps only the orgs whose values `keep` says to keep.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.0.retain(|_, value| keep(value));
    }
}

#[cfg(test)]
mod tests {
    use super::OrgMap;
    use crate::OrgId;

    #[test]
    fn ids_with_the_same_text_find_the_same_entry() {
        let map = OrgMap::new();
        let pinned = map.pin();
        pinned.insert(&OrgId::new("acme"), 1);
        // Another allocation of the same text: equal by text and prehash.
        assert_eq!(pinned.get(&OrgId::from(String::from("acme"))), Some(&1));
        assert_eq!(pinned.get(&OrgId::new("acme2")), None);
    }

    #[test]
    fn remove_if_and_retain_keep_what_they_are_told_to() {
        let map = OrgMap::new();
        let pinned = map.pin();
        for (id, value) in [("a", 1), ("b", 2), ("c", 3)] {
            pinned.insert(&OrgId::new(id), value);
        }
        pinned.remove_if(&OrgId::new("a"), |value| *value == 9);
        assert_eq!(map.len(), 3, "the predicate said no");
        pinned.remove_if(&OrgId::new("a"), |value| *value == 1);
        pinned.retain(|value| *value != 2);
        assert_eq!(pinned.get(&OrgId::new("c")), Some(&3));
        assert_eq!(map.len(), 1);
    }
}
