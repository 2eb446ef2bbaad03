//! The Redis store for tollhouse: one policy, exact counts, across many instances.
//!
//! [`RedisStore`] implements [`tollhouse_core::Store`] with the semantics of
//! [`MemoryStore`](tollhouse_core::MemoryStore) — the same spill-over, the same all-or-nothing
//! admission, the same retry times, the same usage and billing — but keeps the counts in Redis, so
//! every instance of a service that shares one Redis admits exactly the capacity, together. A
//! shared test suite in the repository runs every store case on both stores.
//!
//! - **One round trip per admission**: a Lua script (`src/admit.lua`, called by its SHA and
//!   reloaded when Redis answers `NOSCRIPT`) checks the concurrency lease set and every tier of
//!   every limit, and charges all of them or none, atomically. The decision is then rebuilt in
//!   Rust from the counts the script read, with tollhouse-core's own arithmetic
//!   ([`tollhouse_core::ledger::decide`]), so statuses and retry times are computed once, the same
//!   way for every store.
//! - **Settling never blocks a response**: settlements and call records (`src/settle.lua`: latency
//!   debit, cost correction, call log, billable count, report counters) are merged per org and
//!   written in the background, settlements within [`FLUSH_EVERY`], records within the
//!   [record interval](RedisStoreBuilder::record_interval); [`RedisStore::flush`] writes them all.
//! - **Quota grants** ([`RedisStoreBuilder::grants`], off by default): a hot org's requests are
//!   admitted in memory from slices of its quota (and concurrency slots) charged to Redis in
//!   advance, so most of them need no round trip, and all instances together still admit no more
//!   than the capacity. See [`Grants`].
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use tollhouse_core::{Charge, Clock, Policy, Store, SystemClock};
//! use tollhouse_redis::RedisStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_toml_str(r#"
//! [plans.build]
//! concurrency = 3
//! [[plans.build.limits]]
//! name = "points"
//! dimension = "points"
//! tiers = [{ window = "minute", capacity = 100 }]
//!
//! [[orgs]]
//! id = "acme"
//! plan = "build"
//! keys = ["acme-key-1"]
//! "#, "policy.toml".as_ref())?;
//! let acme = policy.org("acme").expect("defined above");
//!
//! let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
//! let decision = store.admit(acme, Charge::points(10), SystemClock.now()).await?;
//! assert!(decision.is_admitted());
//! // The permit holds one of acme's 3 slots until it is dropped.
//! drop(decision.permit);
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! Every key starts with the prefix (default `tollhouse:`) and the org's hash tag `{org}`, so all
//! keys of one org live in one Redis Cluster slot and every script touches one slot only:
//!
//! ```text
//! tollhouse:{acme}:l:points:minute:1767225600000   a tier's counter, named by its window's start
//! tollhouse:{acme}:w                               index of acme's counters (for reset)
//! tollhouse:{acme}:c                               leases of acme's requests in flight
//! tollhouse:{acme}:u:log                           the last N calls, newest first
//! tollhouse:{acme}:u:today                         acme's current local date
//! tollhouse:{acme}:u:d:2026-01-01                  billable and admitted calls of that date
//! tollhouse:{acme}:u:e:… :u:p:… :u:r:…             endpoints and repeated requests of that date
//! ```
//!
//! A new window is a new key, so a tier refills without any reset or timer. Every key expires: a
//! counter after what is left of its window plus a margin ([`RedisStoreBuilder::key_margin`],
//! default 60 s, but never more than the window's own length, at least a second); billable counts 32 days after their date's last call (31 days are shown); the
//! report counters two days after their last call; the call log is trimmed to N entries on every
//! push ([`RedisStoreBuilder::calls_kept`]) and expires 32 days after the org's last call.
//! Expiry times are relative (`PEXPIRE`), computed from the instance's clock, so Redis's own
//! clock never shortens a window. Org ids and limit names are escaped in keys (`%`, `:`, `{`, `}`),
//! and the prefix may not contain braces. [`cluster_slot`] computes a key's slot.
//!
//! # Leases
//!
//! Every admitted request holds a lease while it is in flight, so that the usage counts an org's
//! requests in flight on every instance, whether or not its plan limits them; a plan's
//! concurrency limit is the most leases the set may hold. The set is sorted, scored by expiry in
//! **Redis server time** (`TIME` inside the scripts), so that instances with different clocks
//! agree on when a lease has expired. The admission script drops expired leases, counts the rest
//! and adds the new one in the same atomic step as the limits. The [`Permit`](tollhouse_core::Permit)
//! releases its lease when dropped (a `ZREM` spawned in the background: `Drop` never blocks). A
//! background task renews every lease this instance holds every third of the lease time to live
//! ([`RedisStoreBuilder::lease_ttl`], default 15 s), so a long request keeps its slot. When an
//! instance dies (or its store is dropped), renewals stop and its leases expire within one time
//! to live, freeing their slots. A lease whose admission failed, timed out or was cancelled is
//! released at once. A request that may wait for a slot
//! ([`Store::admit_waiting`](tollhouse_core::Store::admit_waiting)) stands in its org's line on
//! this instance: the first in line asks again at once when a permit of its org comes back
//! through this instance, and otherwise after 10 ms, then twice as long each time up to 100 ms, so
//! a slot freed on another instance is taken within about 100 ms with at most 10 scripts a second
//! per org and instance.
//!
//! # Clocks and skew
//!
//! The **instance's clock** (the `now` it passes to [`admit`](tollhouse_core::Store::admit))
//! decides which window a request counts in: window bounds are computed in Rust
//! ([`Window::bounds`](tollhouse_core::Window::bounds) in the limit's zone) and the counter key
//! carries the window's start. Instances whose clocks disagree near a boundary therefore write
//! different windows for a moment: an instance whose clock is one second behind keeps charging
//! the previous minute's counter for one second after the others moved to the new one — it sees
//! the previous window's counts (possibly full) until its own clock passes the boundary, then
//! joins the others in the new window. Within a window every instance charges the same counter,
//! so the total admitted in one window never exceeds its capacity; skew only moves the boundary by
//! the skew. Keep clocks in sync (NTP); the key margin keeps a lagging instance's window alive.
//! Leases use Redis's clock (above), never the instances'.
//!
//! # Failures
//!
//! Every call to Redis is bounded by [`RedisStoreBuilder::timeout`] (default 50 ms). An error
//! returns [`StoreError::Unavailable`](tollhouse_core::StoreError::Unavailable) (wrapping the
//! `redis::RedisError`), a timeout [`StoreError::Timeout`](tollhouse_core::StoreError::Timeout);
//! the layer then lets the request through or refuses it, per `on_store_error`. Nothing panics and
//! nothing waits past the timeout. The connection is a reconnecting
//! [`ConnectionManager`](redis::aio::ConnectionManager): when Redis comes back, the store recovers
//! by itself (and reloads its scripts on `NOSCRIPT`). A settlement that failed is lost (and
//! counted).
//!
//! An admission answered without the store (it timed out, or its request went away while it
//! waited) is not charged, even when a stalled Redis runs its script later: the script carries a
//! deadline on Redis's clock (the instance's send time plus the timeout, moved by the clock offset
//! the last reply showed) and charges nothing past it, and a script that ran in time but whose
//! reply nobody read is given back by a refund in the background (counted in
//! `tollhouse_store_late_refunds_total{store="redis"}`). Until that refund lands the org holds the
//! extra charge, so it may see less capacity for that moment, never more. A reply lost with its
//! connection cannot be read: what its script did stays. A script refused as too late whose reply
//! came within the timeout means Redis's clock moved away from the instance's (or no reply had come
//! yet to measure it): that reply sets the offset anew and the admission is sent once more, within
//! what is left of the timeout.
//!
//! The operator sees the store's state in [`RedisStore::health`], in one log line per transition
//! (a warning on the first failure of a burst, an info line when Redis answers again) and in two
//! metrics: the gauge `tollhouse_store_up{store="redis"}` and the counter
//! `tollhouse_redis_errors_total{kind}`.
//!
//! # Limits of the arithmetic
//!
//! Lua numbers are doubles: counts and capacities are exact up to 2^53 (about 9 × 10^15).

mod codec;
mod conn;
mod error;
mod health;
mod keys;
mod store;

pub use error::ConnectError;
pub use health::{FailingFast, Health, LOG_EVERY, PROBE_INTERVAL, TRIP_AFTER};
pub use keys::cluster_slot;
pub use store::{
    FLUSH_AT, FLUSH_EVERY, Grants, REDIS_BYTES_PER_ORG, RedisStore, RedisStoreBuilder,
};

/// Not part of the API: the call-log codec, reachable only so that the fuzz targets in `fuzz/` can
/// call it. It may change or disappear in any release.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::codec::{decode, encode};
}
