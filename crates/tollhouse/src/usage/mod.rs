//! Usage and billing per org, as JSON for programs and as a page for people.
//!
//! [`usage_router`] returns an axum [`Router`](axum::Router) with these routes:
//!
//! | route | returns |
//! |---|---|
//! | `GET /v1/usage` | [`json::Usage`]: calls and billable calls today, in-flight requests, every limit with its tiers, remaining and reset time |
//! | `GET /v1/usage/calls` | [`json::Calls`]: the last 100 calls, newest first, keys masked |
//! | `GET /v1/usage/billing?days=N` | [`json::Billing`]: billable calls per local date, oldest first, today last (`N` from 1 to 31, default 31) |
//! | `GET /v1/usage/report` | [`json::Report`]: endpoints by calls today, and identical requests seen at least 10 times today |
//! | `GET /usage` | an HTML page showing all of the above to a person |
//!
//! Every JSON route identifies the caller through [`UsageSource::identify`], exactly like a metered
//! route, and shows that org's usage only: there is no org parameter. The routes trust the
//! identification: whoever it says is calling sees that org's usage, so it must authenticate (the
//! default bearer keys do). A missing, malformed or unknown
//! key gets `401` with a `WWW-Authenticate: Bearer` challenge and an `application/problem+json`
//! body, exactly as on the metered routes ([`Unidentified`](crate::Unidentified)); a store that cannot answer gets `503`. Instants are RFC 3339 in the org's own time zone, dates are the
//! org's local dates. Mount the router *outside* the rate-limit layer: reading your usage is never
//! limited and never billed.
//!
//! The page (`/usage`, with its stylesheet and script under `/usage/`) asks the person for an API
//! key, keeps it in the tab's `sessionStorage` and sends it as `Authorization: Bearer`, never in a
//! URL. It loads nothing from any other host, works without a framework, and uses only relative
//! URLs, so the router can be [nested](axum::Router::nest) under a prefix.
//!
//! # Metrics
//!
//! The layer reports through the [`metrics`] facade; install any recorder (the demo serves
//! `metrics-exporter-prometheus` at `/metrics`) to collect:
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `tollhouse_decisions_total` | counter | `outcome` (`admitted`, `rejected`, `shadow_rejected`, `exempt`, `store_error`), `limit` (the rejecting limit or `concurrency`; empty otherwise) | one per identified request |
//! | `tollhouse_decision_seconds` | histogram | — | time from identification to the decision, store round trip included |
//! | `tollhouse_in_flight` | gauge | `org` | requests of the org admitted and not yet finished |
//! | `tollhouse_store_errors_total` | counter | — | store calls that failed or timed out |
//!
//! Callers that cannot be identified (401) are not counted: they belong to no org.
//!
//! The usage routes themselves emit no metrics: they are not metered.
//!
//! # Example
//!
//! The rate-limit layer is a [`UsageSource`]: mount the usage routes beside the metered ones, outside
//! the layer, and they read the same store with the same clock.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use axum::{Router, routing::get};
//! use tollhouse::{Policy, RateLimitLayer, usage};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::new(Policy::from_toml_file("policy.toml")?);
//! let app = Router::new()
//!     .route("/v1/items", get(|| async { "[]" }))
//!     .layer(layer.clone())
//!     .merge(usage::usage_router(Arc::new(layer)));
//! axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Or a [`UsageSource`] of your own, here over a fixed [`Policy`](crate::Policy) and a
//! [`MemoryStore`](crate::MemoryStore), mounted beside an API:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use axum::{Router, http::request::Parts, routing::get};
//! use tollhouse::identity::{Refusal, bearer_token};
//! use tollhouse::usage::{self, UsageSource};
//! use tollhouse::{
//!     BoxFuture, Clock, DynStore, MemoryStore, Policy, ResolvedOrg, SystemClock, Timestamp,
//!     Unidentified,
//! };
//!
//! struct Source {
//!     policy: Policy,
//!     store: MemoryStore,
//! }
//!
//! impl UsageSource for Source {
//!     fn identify(&self, parts: Parts) -> BoxFuture<'_, Result<Arc<ResolvedOrg>, Refusal>> {
//!         Box::pin(async move {
//!             let key = bearer_token(&parts)?;
//!             let org = self.policy.org_by_key(key).ok_or(Unidentified::Unknown)?;
//!             Ok(Arc::clone(org))
//!         })
//!     }
//!
//!     fn store(&self) -> &dyn DynStore {
//!         &self.store
//!     }
//!
//!     fn now(&self) -> Timestamp {
//!         SystemClock.now()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_toml_file("policy.toml")?;
//! let source = Arc::new(Source { policy, store: MemoryStore::new() });
//! let app = Router::new()
//!     .route("/v1/items", get(|| async { "[]" }))
//!     // .layer(the rate-limit layer, sharing the same store)
//!     .merge(usage::usage_router(source));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use http::request::Parts;
use tollhouse_core::{BoxFuture, DynStore, ResolvedOrg, Timestamp};

use crate::identity::Refusal;
use crate::problem::Problem;

pub mod json;
pub mod recent;
mod routes;

pub use routes::{UsageRouter, usage_router};

/// Calls shown by `GET /v1/usage/calls` and the page's log, newest first.
pub use tollhouse_core::usage::CALLS_SHOWN;

/// Most days `GET /v1/usage/billing` returns (and its default).
pub const MAX_BILLING_DAYS: usize = 31;

/// What the usage routes need from the metering engine: who is asking, where the counts are, and
/// what time it is.
///
/// The rate-limit layer's engine implements it, so the usage routes identify callers and read
/// counts exactly as the metered routes do; a test can implement it over a
/// [`Policy`](crate::Policy), a [`MemoryStore`](crate::MemoryStore) and a
/// [`ManualClock`](crate::ManualClock). See the [module example](self#example).
pub trait UsageSource: Send + Sync + 'static {
    /// Identifies the caller's org from the request head (the bearer key, by default), like on any
    /// metered route. An `Err` is answered as the layer answers it: `401` with a
    /// `WWW-Authenticate: Bearer` challenge, `503` for a lookup that could not find out, or the
    /// extractor's own rejection.
    fn identify(&self, parts: Parts) -> BoxFuture<'_, Result<Arc<ResolvedOrg>, Refusal>>;

    /// The store that holds the org's counts and usage.
    fn store(&self) -> &dyn DynStore;

    /// The current instant (from the engine's clock).
    fn now(&self) -> Timestamp;

    /// Shapes a problem body before the usage routes send it, as the layer's
    /// [`problem`](crate::RateLimitLayer::problem) hook does; the default leaves it as it is.
    fn shape_problem(&self, problem: &mut Problem) {
        let _ = problem;
    }
}

impl<U: UsageSource + ?Sized> UsageSource for Arc<U> {
    fn identify(&self, parts: Parts) -> BoxFuture<'_, Result<Arc<ResolvedOrg>, Refusal>> {
        (**self).identify(parts)
    }

    fn store(&self) -> &dyn DynStore {
        (**self).store()
    }

    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn shape_problem(&self, problem: &mut Problem) {
        (**self).shape_problem(problem);
    }
}
