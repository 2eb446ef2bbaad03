//! [`RateLimitLayer`]: the configuration and the shared engine.
//!
//! The constructor builds one [`Engine`] behind an `Arc`; every service the layer makes shares it.
//! axum calls `layer()` once per route, so this is what makes all routes count against one store.
//!
//! # Where to put it, and what each placement counts
//!
//! | placement | runs | route patterns match | counts |
//! |---|---|---|---|
//! | `Router::layer(limits)` | after routing, around every route and the fallback | axum's `MatchedPath` (the route template) | every request, including unmatched ones (404s from the fallback, matched by raw path) |
//! | `Router::route_layer(limits)` | after routing, around the routes added before it | `MatchedPath` | only requests that matched one of those routes: unmatched routes are not charged |
//! | `ServiceBuilder::new().layer(limits).service(router)` | before routing, around the whole app | the raw request path | every request that reaches the app |
//!
//! Routes added to a router *after* `layer`/`route_layer` are not behind it (the demo's
//! `/healthz`). Around the whole service the response body type is the layer's
//! [`ResponseBody`](crate::ResponseBody); to serve that with `axum::serve`, map the response
//! into an axum response (`.map_response(IntoResponse::into_response)`).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use tollhouse::{ManualClock, MemoryStore, Policy, RateLimitLayer, Timestamp};
//!
//! # let policy = Policy::from_toml_str(r#"
//! # [[plans.build.limits]]
//! # name = "points"
//! # dimension = "points"
//! # tiers = [{ window = "minute", capacity = 100 }]
//! # "#, "policy.toml".as_ref())?;
//! let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
//! let limits = RateLimitLayer::new(policy)
//!     .with_store(Arc::new(MemoryStore::new()))
//!     .with_clock(clock.clone())
//!     .cost("GET /v1/reports", 10)
//!     .exempt("GET /v1/files/{id}")
//!     .exempt_not_billable("POST /v1/connectors/{name}");
//!
//! let app: Router = Router::new()
//!     .route("/v1/reports", get(|| async { "report" }))
//!     .route("/v1/files/{id}", get(|| async { "bytes" }))
//!     .route_layer(limits.clone())
//!     .route("/healthz", get(|| async { "ok" }));
//!
//! // Later, without downtime:
//! # let next = limits.engine().policy().as_ref().clone();
//! limits.replace_policy(next);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use std::fmt;
use std::sync::Arc;

use tollhouse_core::{Clock, DynStore, Policy, RouteRule, Treatment};
use tower_layer::Layer;

use crate::engine::Engine;
use crate::identity::{BearerKeys, IdentifyOrg, IdentifyWith, Unidentified};
use crate::service::RateLimit;

/// Meters and limits requests per org: add it to a `Router` or wrap a service with it.
///
/// See the [module documentation](self) for where to put it.
#[derive(Clone)]
pub struct RateLimitLayer<I = BearerKeys> {
    engine: Arc<Engine>,
    identify: I,
}

impl RateLimitLayer {
    /// A layer enforcing `policy`, identifying callers by bearer key ([`BearerKeys`]), counting in
    /// a [`MemoryStore`](tollhouse_core::MemoryStore) on the system clock.
    pub fn new(policy: Policy) -> Self {
        Self::from_engine(Arc::new(Engine::new(policy)))
    }

    /// A layer over an engine built elsewhere (to share one engine between two layers).
    pub fn from_engine(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            identify: BearerKeys,
        }
    }
}

impl<I> RateLimitLayer<I> {
    /// Changes the engine: in place if no one else holds it yet, otherwise on a copy (handles
    /// taken from [`engine`](Self::engine) before then keep the old one).
    fn map_engine(mut self, change: impl FnOnce(Engine) -> Engine) -> Self {
        let engine = Arc::try_unwrap(self.engine).unwrap_or_else(|shared| shared.duplicate());
        self.engine = Arc::new(change(engine));
        self
    }

    /// Counts in `store` (a Redis store, say) instead of the in-memory one.
    pub fn with_store(self, store: Arc<dyn DynStore>) -> Self {
        self.map_engine(|engine| engine.with_store(store))
    }

    /// Reads time from `clock` (a [`ManualClock`](tollhouse_core::ManualClock) in tests).
    pub fn with_clock(self, clock: impl Clock) -> Self {
        self.map_engine(|engine| engine.with_clock(clock))
    }

    /// Identifies callers with `identify` instead: a type implementing [`IdentifyOrg`], or a
    /// closure, sync or async (see [the `identity` module](crate::identity)).
    pub fn identify<F, M>(self, identify: F) -> RateLimitLayer<IdentifyWith<F, M>>
    where
        F: IdentifyOrg<M>,
    {
        RateLimitLayer {
            engine: self.engine,
            identify: IdentifyWith::new(identify),
        }
    }

    /// Declares a route rule in code; it wins over the policy file's `[[routes]]`.
    pub fn rule(self, rule: RouteRule) -> Self {
        self.engine.declare(rule);
        self
    }

    fn declare(self, spec: &str, treatment: Treatment) -> Self {
        match RouteRule::parse(spec, treatment) {
            Ok(rule) => self.rule(rule),
            Err(error) => panic!("tollhouse: cannot declare route {spec:?}: {error}"),
        }
    }

    /// Requests matching `spec` (`"GET /v1/reports"`, `"* /v1/items/{id}"`) cost `points` points
    /// (at least 1).
    ///
    /// # Panics
    ///
    /// If `spec` is not `METHOD /path` with axum-style `{param}` segments; use
    /// [`rule`](Self::rule) with [`RouteRule::parse`] to handle that as an error instead.
    pub fn cost(self, spec: &str, points: u64) -> Self {
        self.declare(spec, Treatment::Cost(points.max(1)))
    }

    /// Requests matching `spec` are exempt: not limited, not charged, no headers; still recorded
    /// and billable.
    ///
    /// # Panics
    ///
    /// As [`cost`](Self::cost).
    pub fn exempt(self, spec: &str) -> Self {
        self.declare(spec, Treatment::Exempt { billable: true })
    }

    /// Requests matching `spec` are exempt and not billable either.
    ///
    /// # Panics
    ///
    /// As [`cost`](Self::cost).
    pub fn exempt_not_billable(self, spec: &str) -> Self {
        self.declare(spec, Treatment::Exempt { billable: false })
    }

    /// The engine every service of this layer shares.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Puts `policy` in force from the next request on, keeping the counts (see
    /// [`Engine::replace_policy`]).
    pub fn replace_policy(&self, policy: Policy) {
        self.engine.replace_policy(policy);
    }
}

impl<I> AsRef<Engine> for RateLimitLayer<I> {
    fn as_ref(&self) -> &Engine {
        &self.engine
    }
}

impl<I> fmt::Debug for RateLimitLayer<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("engine", &self.engine)
            .field("identify", &std::any::type_name::<I>())
            .finish()
    }
}

impl<S, I: Clone> Layer<S> for RateLimitLayer<I> {
    type Service = RateLimit<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.engine), self.identify.clone())
    }
}

/// The usage routes identify callers exactly as the layer does and read the layer's store and
/// clock: `usage::usage_router(Arc::new(layer.clone()))`.
impl<I: IdentifyOrg> crate::usage::UsageSource for RateLimitLayer<I> {
    fn identify<'a>(
        &'a self,
        parts: &'a http::request::Parts,
    ) -> tollhouse_core::BoxFuture<'a, Result<Arc<tollhouse_core::ResolvedOrg>, Unidentified>> {
        let policy = self.engine.policy();
        let identify = self.identify.identify(parts, &policy);
        Box::pin(async move {
            let (org, _key) = identify.await?.resolve(&policy).map_err(|error| {
                tracing::error!(%error, "tollhouse: the identified org does not fit the policy");
                Unidentified::Unknown
            })?;
            Ok(org)
        })
    }

    fn store(&self) -> &dyn DynStore {
        &**self.engine.store()
    }

    fn now(&self) -> tollhouse_core::Timestamp {
        self.engine.now()
    }
}
