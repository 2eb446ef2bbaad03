//! What a handler can learn about the decision on its request.
//!
//! The layer puts a [`Metered`] into the request's extensions before it calls the handler: the org,
//! the key label, the route's treatment and every limit's numbers right after the admission
//! (remaining and reset, per tier too). Extract it as `Metered` (a 500 if the layer is missing) or
//! `Option<Metered>`.
//!
//! # Example
//!
//! ```
//! use axum::{Json, Router, routing::get};
//! use tollhouse::{Metered, Policy, RateLimitLayer};
//!
//! # let policy = Policy::from_toml_str(r#"
//! # [[plans.build.limits]]
//! # name = "points"
//! # dimension = "points"
//! # tiers = [{ window = "minute", capacity = 100 }]
//! # "#, "policy.toml".as_ref())?;
//! async fn whoami(metered: Metered) -> Json<serde_json::Value> {
//!     Json(serde_json::json!({
//!         "org": metered.org_id().as_str(),
//!         "points_left": metered.remaining("points"),
//!     }))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/v1/whoami", get(whoami))
//!     .layer(RateLimitLayer::new(policy));
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use tollhouse_core::{LimitStatus, OrgId, ResolvedOrg, Snapshot, Timestamp, Treatment};

use crate::cost::{CostCell, ReportCost, UNSET};
use crate::problem::{Cause, Problem};

/// The org of a request and the decision the layer made on it.
#[derive(Clone, Debug)]
pub struct Metered(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    org: Arc<ResolvedOrg>,
    key: Arc<str>,
    treatment: Treatment,
    /// The org's counts right after the admission (empty on an exempt route).
    snapshot: Snapshot,
    /// The cost the handler reported ([`UNSET`] until then), if it can report one.
    reported: AtomicU64,
    attached: bool,
    shadow_rejected: bool,
}

impl CostCell for Inner {
    fn cell(&self) -> &AtomicU64 {
        &self.reported
    }
}

impl Metered {
    pub(crate) fn new(
        org: Arc<ResolvedOrg>,
        key: Arc<str>,
        treatment: Treatment,
        snapshot: Snapshot,
        attached: bool,
        shadow_rejected: bool,
    ) -> Self {
        Self(Arc::new(Inner {
            org,
            key,
            treatment,
            snapshot,
            reported: AtomicU64::new(UNSET),
            attached,
            shadow_rejected,
        }))
    }

    /// The org, as its requests are measured (plan, zone, capacities).
    pub fn org(&self) -> &Arc<ResolvedOrg> {
        &self.0.org
    }

    /// The org's id.
    pub fn org_id(&self) -> &OrgId {
        self.0.org.id()
    }

    /// The label of the caller's key in the usage log (masked).
    pub fn key_label(&self) -> &str {
        &self.0.key
    }

    /// The route's treatment: its declared cost, or exempt.
    pub fn treatment(&self) -> Treatment {
        self.0.treatment
    }

    /// Whether the route is exempt (then [`statuses`](Self::statuses) is empty).
    pub fn is_exempt(&self) -> bool {
        matches!(self.0.treatment, Treatment::Exempt { .. })
    }

    /// Whether the plan runs in shadow mode and would have rejected this request.
    pub fn is_shadow_rejected(&self) -> bool {
        self.0.shadow_rejected
    }

    /// Every limit's numbers right after the admission, in plan order.
    pub fn statuses(&self) -> Vec<LimitStatus> {
        self.0.snapshot.statuses(&self.0.org)
    }

    /// The numbers of the limit named `name`.
    pub fn status(&self, name: &str) -> Option<LimitStatus> {
        let index = self.0.org.limit_index(name)?;
        self.0.snapshot.status(&self.0.org, index)
    }

    /// What limit `name` can still be charged now.
    pub fn remaining(&self, name: &str) -> Option<u64> {
        self.status(name).map(|status| status.remaining)
    }

    /// When limit `name`'s remaining next goes up.
    pub fn reset(&self, name: &str) -> Option<Timestamp> {
        self.status(name).map(|status| status.reset)
    }

    /// Reports the real cost of the request (see [`ReportCost`]).
    pub fn report_cost(&self, points: u64) {
        self.report_handle().set(points);
    }

    /// The handle [`ReportCost`] extracts: on this extension, or detached.
    pub(crate) fn report_handle(&self) -> ReportCost {
        if self.0.attached {
            ReportCost::shared(Arc::clone(&self.0) as Arc<dyn CostCell>)
        } else {
            ReportCost::default()
        }
    }
}

/// The request did not pass through the layer, so there is no [`Metered`] to extract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingMetered;

impl std::fmt::Display for MissingMetered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the handler asked for `Metered`, but the rate-limit layer does not wrap this route; add the layer or extract `Option<Metered>`")
    }
}

impl std::error::Error for MissingMetered {}

impl IntoResponse for MissingMetered {
    fn into_response(self) -> Response {
        Problem::new(
            Cause::LayerMissing,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            self.to_string(),
        )
        .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Metered {
    type Rejection = MissingMetered;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Metered>()
            .cloned()
            .ok_or(MissingMetered)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Metered {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Metered>().cloned())
    }
}
