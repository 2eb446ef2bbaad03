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
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tollhouse_core::{Clock, DynStore, Policy, RouteRule, Treatment};
use tower_layer::Layer;

use crate::engine::Engine;
use crate::identity::{
    BearerKeys, BoxIdentify, IdentifyBy, IdentifyOrg, IdentifyWith, Identity, Refusal, Unidentified,
};
use crate::problem::Problem;
use crate::service::RateLimit;

/// A [`RateLimitLayer`] whose identification is boxed (see [`RateLimitLayer::boxed`]): a type to
/// name in a struct field or a function's return type.
pub type BoxRateLimitLayer = RateLimitLayer<BoxIdentify>;

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
    /// a [`MemoryStore`](crate::MemoryStore) on the system clock.
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

    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests).
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

    /// Identifies callers with an axum extractor `E` the service already has (a `Caller` from a
    /// JWT, a session, a database key), run once per request: its rejection is the answer when it
    /// fails; what it found goes to `map` (an `async` closure works, or one returning a future)
    /// and into the request's extensions, so handlers take `Extension<E>` instead of running it
    /// again. For an extractor that needs the app's state, see
    /// [`identify_by_with_state`](Self::identify_by_with_state).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use tollhouse::{Identity, Policy, RateLimitLayer, Unidentified};
    /// use tollhouse::identity::BearerToken;
    ///
    /// # let policy = Policy::from_toml_str(r#"
    /// # [[plans.build.limits]]
    /// # name = "daily"
    /// # dimension = "requests"
    /// # tiers = [{ window = "day", capacity = 2500 }]
    /// # "#, "policy.toml".as_ref())?;
    /// let limits = RateLimitLayer::new(policy).identify_by(
    ///     async |BearerToken(key): BearerToken, policy: Arc<Policy>| {
    ///         let (org, _) = policy.owner_of_key(&key).ok_or(Unidentified::Unknown)?;
    ///         Ok(Identity::new(Arc::clone(org), &key))
    ///     },
    /// );
    /// # let _ = limits;
    /// # Ok::<(), tollhouse::PolicyError>(())
    /// ```
    pub fn identify_by<E, F, Fut>(self, map: F) -> RateLimitLayer<IdentifyBy<E, F>>
    where
        IdentifyBy<E, F>: IdentifyOrg,
        F: Fn(E, Arc<Policy>) -> Fut,
        Fut: Future<Output = Result<Identity, Unidentified>>,
    {
        self.identify_by_with_state((), map)
    }

    /// [`identify_by`](Self::identify_by) with an extractor that reads the app's `state`.
    pub fn identify_by_with_state<E, F, Fut, S>(
        self,
        state: S,
        map: F,
    ) -> RateLimitLayer<IdentifyBy<E, F, S>>
    where
        IdentifyBy<E, F, S>: IdentifyOrg,
        F: Fn(E, Arc<Policy>) -> Fut,
        Fut: Future<Output = Result<Identity, Unidentified>>,
    {
        RateLimitLayer {
            engine: self.engine,
            identify: IdentifyBy::new(state, map),
        }
    }

    /// This layer with its identification boxed: one type, [`BoxRateLimitLayer`], whatever
    /// identifies the callers, to keep in a struct or return from a function.
    pub fn boxed(self) -> BoxRateLimitLayer
    where
        I: IdentifyOrg,
    {
        RateLimitLayer {
            engine: self.engine,
            identify: BoxIdentify::new(self.identify),
        }
    }

    /// Lets `shape` see, and change, every problem body the layer answers with (401, 429, 503)
    /// before it is sent: its `type`, `title` and `detail`, and members of the service's own. See
    /// [the `problem` module](crate::problem).
    pub fn problem<F>(self, shape: F) -> Self
    where
        F: Fn(&mut Problem) + Send + Sync + 'static,
    {
        self.map_engine(|engine| engine.with_problem(Arc::new(shape)))
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
    /// (at least 1, at most [`MAX_COST`](tollhouse_core::MAX_COST)).
    ///
    /// # Panics
    ///
    /// If `spec` is not `METHOD /path` with axum-style `{param}` segments; use
    /// [`rule`](Self::rule) with [`RouteRule::parse`] to handle that as an error instead.
    pub fn cost(self, spec: &str, points: u64) -> Self {
        self.declare(spec, Treatment::clamped_cost(points))
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
    fn identify(
        &self,
        parts: http::request::Parts,
    ) -> tollhouse_core::BoxFuture<'_, Result<Arc<tollhouse_core::ResolvedOrg>, Refusal>> {
        let policy = self.engine.policy();
        let identify = self.identify.identify(parts, &policy);
        Box::pin(async move {
            let (_head, identity) = identify.await;
            let (org, _key) = identity?.resolve(&policy).map_err(|error| {
                tracing::error!(%error, "tollhouse: the identified org does not fit the policy");
                Refusal::Unidentified(Unidentified::Unknown)
            })?;
            Ok(org)
        })
    }

    fn shape_problem(&self, problem: &mut Problem) {
        if let Some(shape) = self.engine.shape_problem() {
            shape(problem);
        }
    }

    fn store(&self) -> &dyn DynStore {
        &**self.engine.store()
    }

    fn now(&self) -> tollhouse_core::Timestamp {
        self.engine.now()
    }
}
