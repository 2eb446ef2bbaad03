//! What a route costs, declared where the route is declared, and what the handler says it really
//! cost.
//!
//! Routes cost 1 point unless a rule says otherwise. Rules come from two places, and rules declared
//! in code win over the policy file's `[[routes]]`:
//!
//! - next to the route, with [`RouterCostExt::route_with_cost`] and a [`Cost`];
//! - on the layer, with [`RateLimitLayer::cost`](crate::RateLimitLayer::cost),
//!   [`exempt`](crate::RateLimitLayer::exempt) and
//!   [`exempt_not_billable`](crate::RateLimitLayer::exempt_not_billable), in the policy file's
//!   `"METHOD /path/{param}"` syntax.
//!
//! Patterns are matched against axum's [`MatchedPath`](axum::extract::MatchedPath) when the layer
//! runs after routing (`Router::layer`, `Router::route_layer`) and against the raw path when it
//! wraps the whole service. Exempt routes are not limited, not charged and carry no rate-limit
//! headers; they are still recorded in the usage log and counted as billable unless marked
//! [`not_billable`](Cost::not_billable).
//!
//! A handler whose work is only sized after it ran reports the real cost with the [`ReportCost`]
//! extractor (or returns an [`ActualCost`] in its response); the difference from the declared cost
//! is settled after the response, without delaying it.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use tollhouse::{ActualCost, Cost, Policy, RateLimitLayer, ReportCost, RouterCostExt};
//!
//! # let policy = Policy::from_toml_str(r#"
//! # [[plans.build.limits]]
//! # name = "points"
//! # dimension = "points"
//! # tiers = [{ window = "minute", capacity = 100 }]
//! # "#, "policy.toml".as_ref())?;
//! async fn search(cost: ReportCost) -> &'static str {
//!     let rows = 2_500;
//!     cost.set((1 + rows / 1000).min(10)); // known only now: 3 points
//!     "results"
//! }
//!
//! let limits = RateLimitLayer::new(policy).exempt("GET /v1/files/{id}");
//! let app: Router = Router::new()
//!     .route_with_cost("/v1/reports", get(|| async { "report" }), &limits, Cost::points(10))
//!     .route_with_cost("/v1/search", get(search), &limits, Cost::points(1))
//!     .route_with_cost(
//!         "/v1/connectors/{name}",
//!         post(|| async { "accepted" }),
//!         &limits,
//!         Cost::exempt().not_billable(),
//!     )
//!     .route("/v1/batch", post(|| async { (ActualCost(7), "done") }))
//!     .route("/v1/files/{id}", get(|| async { "bytes" }))
//!     .layer(limits);
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponseParts, ResponseParts};
use axum::routing::MethodRouter;
use http::Method;
use http::request::Parts;
use tollhouse_core::{PolicyError, RoutePattern, RouteRule, Treatment};

use crate::engine::Engine;
use crate::methods::{self, Served};

/// How a route is metered: a point cost, or exempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cost {
    treatment: Treatment,
    method: Option<Method>,
}

impl Cost {
    /// Charges `points` points to `points` limits (and 1 to `requests` limits). A cost is at least
    /// 1 and at most [`MAX_COST`](tollhouse_core::MAX_COST): `points(0)` is taken as 1; use
    /// [`Cost::exempt`] for a route that is not charged.
    pub const fn points(points: u64) -> Self {
        Self {
            treatment: Treatment::clamped_cost(points),
            method: None,
        }
    }

    /// Not limited and not charged; still recorded and counted as billable.
    pub const fn exempt() -> Self {
        Self {
            treatment: Treatment::Exempt { billable: true },
            method: None,
        }
    }

    /// For an exempt route: not counted as billable either. (Metered calls are always billable,
    /// so this leaves a point cost unchanged.)
    pub fn not_billable(self) -> Self {
        match self.treatment {
            Treatment::Exempt { .. } => Self {
                treatment: Treatment::Exempt { billable: false },
                method: self.method,
            },
            Treatment::Cost(_) => self,
        }
    }

    /// Applies only to requests with `method` (by default, to every method of the route).
    pub fn for_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// The treatment this cost stands for.
    pub const fn treatment(&self) -> Treatment {
        self.treatment
    }

    /// The method it applies to, if only one.
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// The route rule for `path` (an axum path such as `/v1/files/{id}`).
    pub fn rule(&self, path: &str) -> Result<RouteRule, PolicyError> {
        Ok(RouteRule::new(
            self.method.as_ref().map(Method::as_str),
            RoutePattern::parse(path)?,
            self.treatment,
        ))
    }

    /// The rules for `path` served by a method router that serves `served`: one per method (a
    /// `GET` rule covers `HEAD`), one for any method when the router answers every method, or the
    /// one method of [`for_method`](Self::for_method), which the router must serve.
    fn rules(&self, path: &str, served: &Served) -> Result<Vec<RouteRule>, PolicyError> {
        let pattern = RoutePattern::parse(path)?;
        let rule = |method: Option<&str>| RouteRule::new(method, pattern.clone(), self.treatment);
        match (&self.method, served) {
            (Some(method), Served::Methods(methods))
                if !methods.iter().any(|served| {
                    *served == method.as_str() || (*served == "GET" && method == Method::HEAD)
                }) =>
            {
                Err(PolicyError::invalid(
                    "cost",
                    format!(
                        "the cost for {method} {path} is declared beside a method router that serves {}",
                        methods.join(", ")
                    ),
                    "declare the cost beside the method router that serves that method, or drop `for_method`",
                ))
            }
            (Some(method), _) => Ok(vec![rule(Some(method.as_str()))]),
            (None, Served::Methods(methods)) => {
                Ok(methods.iter().map(|method| rule(Some(method))).collect())
            }
            (None, Served::Any) => Ok(vec![rule(None)]),
        }
    }
}

impl From<Treatment> for Cost {
    fn from(treatment: Treatment) -> Self {
        Self {
            treatment,
            method: None,
        }
    }
}

impl AsRef<Engine> for Engine {
    fn as_ref(&self) -> &Engine {
        self
    }
}

/// Declares a route and its cost in one call, registering the cost with the layer's shared engine.
///
/// See the [module example](self#example).
pub trait RouterCostExt<S>: Sized {
    /// Adds `method_router` at `path`, like [`Router::route`], and declares that requests to it
    /// cost `cost` under `limits` (a [`RateLimitLayer`](crate::RateLimitLayer) or its
    /// [`Engine`]).
    ///
    /// The cost applies to the methods `method_router` serves: `get(list)` declares it for `GET`
    /// (and `HEAD`, which axum answers with the `GET` handler), `post(create)` for `POST`,
    /// `get(..).post(..)` for both, and `any(..)` (or a router with a fallback of its own) for
    /// every method. So the same path can be routed twice with two costs, one per method router.
    ///
    /// The declaration names `path` as written here: a router [nested](Router::nest) under a
    /// prefix later is matched under the full path, so declare nested routes' costs on the layer
    /// with their full path instead.
    ///
    /// # Panics
    ///
    /// If `path` is not an axum path that tollhouse can match (axum's own `route` panics on most of
    /// those too), or if a rule declared in code before this one already covers the same requests,
    /// so that this cost would never apply (as the policy file refuses such a rule).
    fn route_with_cost(
        self,
        path: &str,
        method_router: MethodRouter<S>,
        limits: &impl AsRef<Engine>,
        cost: Cost,
    ) -> Self;
}

impl<S> RouterCostExt<S> for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn route_with_cost(
        self,
        path: &str,
        method_router: MethodRouter<S>,
        limits: &impl AsRef<Engine>,
        cost: Cost,
    ) -> Self {
        let declared = cost
            .rules(path, &methods::served(&method_router))
            .and_then(|rules| {
                rules
                    .into_iter()
                    .try_for_each(|rule| limits.as_ref().try_declare(rule))
            });
        if let Err(error) = declared {
            panic!("tollhouse: cannot declare a cost for route {path:?}: {error}");
        }
        self.route(path, method_router)
    }
}

/// Not reported yet.
pub(crate) const UNSET: u64 = u64::MAX;

/// Where a reported cost is kept: its own cell, or the request's [`Metered`](crate::Metered)
/// extension (so that a metered request needs one allocation for both).
pub(crate) trait CostCell: fmt::Debug + Send + Sync {
    /// The cell, [`UNSET`] until a report.
    fn cell(&self) -> &AtomicU64;
}

impl CostCell for AtomicU64 {
    fn cell(&self) -> &AtomicU64 {
        self
    }
}

/// Lets a handler report what its request really cost, in points; the difference from the
/// declared cost is settled after the response.
///
/// Extracting it never fails: outside the layer (or on an exempt route) it is detached and
/// reports go nowhere. The last report wins; an [`ActualCost`] in the response wins over it.
#[derive(Clone, Debug, Default)]
pub struct ReportCost {
    cell: Option<Arc<dyn CostCell>>,
}

impl ReportCost {
    /// A handle of its own, that the layer reads back after the response.
    #[cfg(test)]
    pub(crate) fn attached() -> Self {
        Self::shared(Arc::new(AtomicU64::new(UNSET)))
    }

    /// A handle on `cell`, that the layer reads back after the response.
    pub(crate) fn shared(cell: Arc<dyn CostCell>) -> Self {
        Self { cell: Some(cell) }
    }

    /// Reports that the request cost `points` points (0 gives the whole declared cost back); at
    /// most [`MAX_COST`](tollhouse_core::MAX_COST) counts.
    pub fn set(&self, points: u64) {
        if let Some(cell) = &self.cell {
            cell.cell()
                .store(points.min(tollhouse_core::MAX_COST), Ordering::Release);
        }
    }

    /// The cost reported so far.
    pub fn get(&self) -> Option<u64> {
        self.cell
            .as_ref()
            .map(|cell| cell.cell().load(Ordering::Acquire))
            .filter(|&points| points != UNSET)
    }

    /// Whether reports reach the layer (the request is metered).
    pub fn is_attached(&self) -> bool {
        self.cell.is_some()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ReportCost {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<crate::Metered>()
            .map(crate::Metered::report_handle)
            .unwrap_or_default())
    }
}

/// The real cost of a request, in points, put in its response: `(ActualCost(7), body)` from a
/// handler, or `response.extensions_mut().insert(ActualCost(7))` from a middleware inside the
/// layer. The layer takes it out of the response and settles the difference from the declared
/// cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActualCost(pub u64);

impl IntoResponseParts for ActualCost {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_build_rules() {
        let rule = Cost::points(3)
            .for_method(Method::POST)
            .rule("/v1/items")
            .expect("rule");
        assert!(rule.matches("POST", "/v1/items"));
        assert!(!rule.matches("GET", "/v1/items"));
        assert_eq!(rule.treatment(), Treatment::Cost(3));
        assert_eq!(Cost::points(0).treatment(), Treatment::Cost(1));
        assert_eq!(
            Cost::exempt().not_billable().treatment(),
            Treatment::Exempt { billable: false }
        );
        assert_eq!(
            Cost::points(2).not_billable().treatment(),
            Treatment::Cost(2)
        );
        assert!(Cost::points(1).rule("no-slash").is_err());
    }

    #[test]
    fn reports_are_read_back() {
        let report = ReportCost::attached();
        assert_eq!(report.get(), None);
        report.clone().set(7);
        assert_eq!(report.get(), Some(7));
        let detached = ReportCost::default();
        detached.set(3);
        assert_eq!(detached.get(), None);
        assert!(!detached.is_attached());
    }
}
