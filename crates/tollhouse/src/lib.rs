//! tollhouse: per-organisation API metering and rate limiting for axum.
//!
//! Add one layer to a `Router`, declare plans (calendar quotas with spill-over tiers, point
//! budgets, latency budgets, concurrency) in a policy file and per-route costs next to the
//! routes, and every request is identified by its org, admitted exactly or rejected with a 429
//! that says when to come back, answered with the standard rate-limit headers, and recorded for
//! usage and billing.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tollhouse::{Policy, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_toml_file("policy.toml")?;
//! let app = Router::new()
//!     .route("/v1/items", get(|| async { "[]" }))
//!     .layer(RateLimitLayer::new(policy));
//! axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! What happens to a request, and where to read about each step:
//!
//! 1. [`identity`]: the org is identified (bearer key by default; any closure, sync or async);
//!    unknown callers get 401.
//! 2. [`cost`]: the route is classified: its point cost, or exempt; rules declared in code win
//!    over the policy file's `[[routes]]`.
//! 3. [`future`]: the store checks and charges every limit and takes a concurrency permit, all or
//!    nothing; a rejection is a 429 problem+json with `Retry-After`.
//! 4. [`body`]: the handler runs; the permit and the latency timer are held until the response
//!    body has ended or been dropped.
//! 5. Latency, the handler's cost correction ([`ReportCost`], [`ActualCost`]) and the usage record
//!    are settled then, without delaying the response.
//! 6. [`headers`]: metered responses carry `X-RateLimit-*` and the IETF `RateLimit-Policy` /
//!    `RateLimit` fields; handlers see the decision through [`Metered`].
//!
//! [`layer`] says what each placement of the layer counts; [`engine`] holds the shared state and
//! replaces the policy at run time; [`usage`] serves usage and billing per org.

pub mod body;
pub mod cost;
pub mod engine;
pub mod extract;
mod finish;
pub mod future;
pub mod headers;
pub mod identity;
pub mod layer;
mod methods;
pub mod problem;
mod rejection;
pub mod service;
mod telemetry;
mod templates;
#[cfg(test)]
mod test_support;
pub mod usage;

pub use body::ResponseBody;
pub use cost::{ActualCost, Cost, ReportCost, RouterCostExt};
pub use engine::Engine;
pub use extract::{Metered, MissingMetered};
pub use future::ResponseFuture;
pub use identity::{BearerKeys, BoxIdentify, IdentifyOrg, Identity, Refusal, Unidentified};
pub use layer::{BoxRateLimitLayer, RateLimitLayer};
pub use problem::{Problem, QUOTA_EXCEEDED};
pub use service::RateLimit;

/// The metering engine, for what this crate does not re-export by name.
pub use tollhouse_core;
pub use tollhouse_core::{
    Adjustment, BoxFuture, CallRecord, Charge, Clock, Decision, Dimension, DynStore, Environment,
    KeyDigest, Limit, LimitStatus, LimitZone, ManualClock, MemoryStore, OnStoreError, Org, OrgId,
    OrgUsage, Outcome, Override, Plan, Policy, PolicyBuilder, PolicyError, ResetFormat,
    ResolvedLimit, ResolvedOrg, ResolvedTier, RoutePattern, RouteRule, ServerSettings, Settlement,
    Snapshot, Store, StoreError, SystemClock, Tier, TierStatus, Timestamp, Treatment,
    UsageSnapshot, Window,
};

/// The durable embedded store (the `durable` feature): the memory store's speed, written behind
/// to SQLite. See [`durable::DurableStore`].
#[cfg(feature = "durable")]
pub use tollhouse_core::durable;

/// The Redis store (the `redis` feature): every instance that shares one Redis admits exactly
/// the capacity, together. See [`redis::RedisStore`].
#[cfg(feature = "redis")]
pub use tollhouse_redis as redis;
