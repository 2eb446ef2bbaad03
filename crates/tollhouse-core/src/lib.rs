//! The metering engine of tollhouse: plans, calendar windows in every time zone, tiered spill-over,
//! points and latency budgets, concurrency permits, usage and billing, and the stores that hold the
//! counts. No HTTP types live here; the `tollhouse` crate puts this engine behind a tower layer.
//!
//! - [`policy`] holds what an org may use: [`Plan`]s of [`Limit`]s of [`Tier`]s, [`Org`]s with their
//!   zones, environments and [`Override`]s, and [`RouteRule`]s; [`mod@file`] loads it all from TOML.
//! - [`window`] computes calendar windows in any IANA zone, across DST changes.
//! - [`tier`] and [`ledger`] are the pure arithmetic: admit all-or-nothing, spill over shortest
//!   window first, settle latency and cost corrections, and say exactly when to retry.
//! - [`store`] is the async [`Store`] trait; [`MemoryStore`] implements it in this process, its
//!   orgs in an [`org_map::OrgMap`] (lock-free reads, keyed by a hash computed once per org id).
//! - [`usage`] keeps calls today, billable calls per day, the last calls and the polling report.
//! - [`time`] has the injectable [`Clock`]: [`SystemClock`] and [`ManualClock`].
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Charge, ManualClock, Clock, Ledger, Policy, Timestamp};
//!
//! let policy = Policy::from_toml_str(r#"
//! [plans.build]
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
//! let acme = policy.org_by_key("acme-key-1").expect("acme's key");
//! let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
//! let mut ledger = Ledger::new(acme);
//! let verdict = ledger.admit(acme, Charge::points(10), clock.now());
//! assert_eq!(verdict.statuses(acme)[0].remaining, 90);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

#[cfg(feature = "durable")]
pub mod durable;
pub mod error;
pub mod file;
mod key_memo;
pub mod ledger;
pub mod memory;
pub mod org;
pub mod org_map;
pub mod permit;
pub mod plan;
pub mod policy;
pub mod rate;
pub mod route;
pub mod status;
pub mod store;
pub mod tier;
pub mod time;
pub mod usage;
pub mod window;

pub use error::{PolicyError, StoreError};
pub use ledger::{
    Charge, Correction, Ledger, Receipt, ReceiptPart, RejectReason, SavedTier, Verdict,
};
pub use memory::MemoryStore;
pub use org::{
    Adjustment, Environment, KeyDigest, MAX_KEY_LENGTH, MIN_KEY_LENGTH, Org, OrgId, Override,
    check_key,
};
pub use permit::{Permit, ReleasePermit};
pub use plan::{
    CONCURRENCY, Concurrency, Dimension, Limit, LimitZone, MAX_CAPACITY, Plan, Tier, item_name,
    parse_zone,
};
pub use policy::{
    OnStoreError, Policy, PolicyBuilder, ResetFormat, ResolvedLimit, ResolvedOrg, ResolvedTier,
    ServerSettings, UsageQuery,
};
pub use rate::{Gcra, Rate};
pub use route::{MAX_COST, RoutePattern, RouteRule, Treatment};
pub use status::{LimitStatus, Snapshot, TierStatus};
pub use store::{
    BoxFuture, Decision, DynStore, OrgUsage, Settlement, Store, UsageView, admit_waiting,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use usage::{CallRecord, Outcome, UsageSnapshot};
pub use window::{Bounds, Multiple, UnknownWindow, Window};
