//! Digests of presented API keys, remembered per thread for the keys the policy knows.
//!
//! The policy holds keys only as SHA-256 digests, so finding a caller's org means hashing the key
//! it presented. With the CPU's SHA extensions that is a few dozen nanoseconds; without them (many
//! server CPUs in service) it is 3,400 instructions, more than the rest of identification and
//! admission together. Each thread therefore remembers the digest of every key it has seen the
//! policy accept, under a tag of the key: SipHash-2-4 with 128-bit output, keyed by a secret drawn
//! from the operating system for that thread.
//!
//! What it keeps and why that is safe:
//! - no key: a tag and a digest; the tag is a keyed pseudo-random function of the key, so without
//!   the thread's secret it tells nothing about the key, and two keys share a tag with probability
//!   2⁻¹²⁸, which no caller can raise without the secret;
//! - nothing for an unknown key: a key is remembered only after the policy accepted its digest, so
//!   callers with made-up keys allocate nothing here;
//! - bounded: at most [`CAPACITY`] entries a thread; a full memo is emptied and fills again;
//! - never stale: the remembered digest is only an input to the policy's lookup, so a key removed
//!   from the policy is refused on the next request, exactly as without the memo.
//!
//! Without a secret (the operating system's random source failed), nothing is remembered and every
//! key is hashed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher24};

use crate::org::KeyDigest;

/// Keys remembered per thread at most.
const CAPACITY: usize = 4_096;

/// One thread's memo.
struct Memo {
    secret: (u64, u64),
    digests: HashMap<u128, KeyDigest, foldhash::fast::RandomState>,
}

impl Memo {
    fn new() -> Option<Self> {
        let secret = (getrandom::u64().ok()?, getrandom::u64().ok()?);
        Some(Self {
            secret,
            digests: HashMap::default(),
        })
    }

    fn tag(&self, key: &str) -> u128 {
        let mut hasher = SipHasher24::new_with_keys(self.secret.0, self.secret.1);
        hasher.write(key.as_bytes());
        hasher.finish128().as_u128()
    }
}

thread_local! {
    static MEMO: RefCell<Option<Memo>> = RefCell::new(Memo::new());
}

/// The SHA-256 digest of `key`, from this thread's memo when `key` was remembered; otherwise
/// computed, and remembered if `known` says the policy holds it.
pub(crate) fn digest(key: &str, known: impl FnOnce(&KeyDigest) -> bool) -> KeyDigest {
    MEMO.try_with(|memo| {
        let mut memo = memo.try_borrow_mut().ok()?;
        let memo = memo.as_mut()?;
        let tag = memo.tag(key);
        if let Some(digest) = memo.digests.get(&tag) {
            return Some(*digest);
        }
        let digest = KeyDigest::of(key);
        if known(&digest) {
            if memo.digests.len() >= CAPACITY {
                memo.digests.clear();
            }
            memo.digests.insert(tag, digest);
        }
        Some(digest)
    })
    .ok()
    .flatten()
    // No memo on this thread (being torn down, or no secret): hash as if there were none.
    .unwrap_or_else(|| KeyDigest::of(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many keys this thread remembers.
    fn remembered() -> usize {
        MEMO.with(|memo| memo.borrow().as_ref().map_or(0, |memo| memo.digests.len()))
    }

    #[test]
    fn the_digest_is_the_keys_sha256_whether_remembered_or_not() {
        let before = remembered();
        let first = digest("memo-key-1", |_| true);
        assert_eq!(first, KeyDigest::of("memo-key-1"));
        assert_eq!(remembered(), before + 1);
        // Remembered: the same digest, without asking whether the key is known.
        let again = digest("memo-key-1", |_| {
            panic!("a remembered key is not hashed again")
        });
        assert_eq!(again, first);
        assert_eq!(remembered(), before + 1);
        assert_ne!(digest("memo-key-2", |_| false), first);
    }

    #[test]
    fn an_unknown_key_is_hashed_every_time_and_not_remembered() {
        let before = remembered();
        for _ in 0..3 {
            let mut asked = false;
            let digest = digest("made-up-key", |_| {
                asked = true;
                false
            });
            assert!(asked, "an unknown key is looked up afresh");
            assert_eq!(digest, KeyDigest::of("made-up-key"));
        }
        assert_eq!(remembered(), before);
    }

    #[test]
    fn a_full_memo_is_emptied_and_stays_bounded() {
        for n in 0..=CAPACITY {
            digest(&format!("bounded-key-{n}"), |_| true);
            assert!(remembered() <= CAPACITY);
        }
        // The last insert found the memo full, emptied it and started again.
        assert_eq!(remembered(), 1);
        assert_eq!(
            digest(&format!("bounded-key-{CAPACITY}"), |_| panic!("remembered")),
            KeyDigest::of(&format!("bounded-key-{CAPACITY}"))
        );
    }

    #[test]
    fn tags_depend_on_the_secret() {
        let a = Memo::new().expect("a random source");
        let b = Memo::new().expect("a random source");
        assert_ne!(a.tag("acme-key-1"), b.tag("acme-key-1"));
        assert_ne!(a.tag("acme-key-1"), a.tag("acme-key-2"));
        assert_eq!(a.tag("acme-key-1"), a.tag("acme-key-1"));
    }
}
