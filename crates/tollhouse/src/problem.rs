//! RFC 9457 problem details: the bodies of the layer's own 401, 429 and 503 responses, and how a
//! service shapes them.
//!
//! Every answer the layer (and the usage routes) give on their own carries an
//! `application/problem+json` body with `type`, `title`, `status` and `detail`; a 429 adds `limit`,
//! `retry_after` and `violated-policies`. A service that documents its errors its own way gives the
//! layer a hook, [`RateLimitLayer::problem`](crate::RateLimitLayer::problem), that sees each
//! [`Problem`] before it is sent, with its [`Cause`], and may change its `type`, `title` and
//! `detail` or add members of its own. The status and the headers (`Retry-After`,
//! `WWW-Authenticate`, the rate-limit fields) stay the layer's.
//!
//! # Example
//!
//! ```
//! use tollhouse::{Policy, RateLimitLayer};
//! use tollhouse::problem::{Cause, Problem};
//!
//! # let policy = Policy::from_toml_str(r#"
//! # [[plans.build.limits]]
//! # name = "points"
//! # dimension = "points"
//! # tiers = [{ window = "minute", capacity = 100 }]
//! # "#, "policy.toml".as_ref())?;
//! let limits = RateLimitLayer::new(policy).problem(|problem: &mut Problem| {
//!     let code = match problem.cause() {
//!         Cause::QuotaExceeded => "rate_limited",
//!         Cause::Unidentified(_) => "unauthenticated",
//!         _ => "unavailable",
//!     };
//!     problem.insert("code", code);
//!     problem.set_type("https://docs.example.com/errors#".to_owned() + code);
//! });
//! # let _ = limits;
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::identity::Unidentified;

/// The media type of a problem body.
pub(crate) const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The problem type of draft-ietf-httpapi-ratelimit-headers for an exceeded quota.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// Why the layer answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// 401: the caller could not be identified (missing, malformed or unknown credentials).
    Unidentified(Unidentified),
    /// 503: the service's key lookup could not tell who is calling.
    LookupUnavailable,
    /// 429: a limit of the org's plan (or its concurrency limit) is used up.
    QuotaExceeded,
    /// 503: the store that holds the counts cannot answer, and `on_store_error = "deny"`.
    StoreUnavailable,
    /// 500: the identified org's plan is not in the policy.
    OrgNotInPolicy,
    /// 503: the usage routes cannot read the counts.
    UsageUnavailable,
    /// 400: a usage route's query is out of range.
    BadRequest,
    /// 500: a handler extracted [`Metered`](crate::Metered) on a route the layer does not wrap.
    LayerMissing,
}

/// A problem body (RFC 9457) the layer is about to send.
#[derive(Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: Cow<'static, str>,
    title: Cow<'static, str>,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    violated_policies: Option<Vec<String>>,
    #[serde(flatten)]
    members: Map<String, Value>,
    #[serde(skip)]
    cause: Cause,
}

impl fmt::Debug for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Problem")
            .field("cause", &self.cause)
            .field("status", &self.status)
            .field("type", &self.kind)
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
}

impl Problem {
    /// A problem of type `about:blank`.
    pub(crate) fn new(
        cause: Cause,
        status: StatusCode,
        title: &'static str,
        detail: String,
    ) -> Self {
        Self {
            kind: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(title),
            status: status.as_u16(),
            detail,
            limit: None,
            retry_after: None,
            violated_policies: None,
            members: Map::new(),
            cause,
        }
    }

    /// A 429 for an exceeded quota.
    pub(crate) fn quota_exceeded(
        detail: String,
        limit: String,
        retry_after: u64,
        violated_policies: Vec<String>,
    ) -> Self {
        Self {
            kind: Cow::Borrowed(QUOTA_EXCEEDED),
            title: Cow::Borrowed("Request cannot be satisfied as assigned quota has been exceeded"),
            limit: Some(limit),
            retry_after: Some(retry_after),
            violated_policies: Some(violated_policies),
            ..Self::new(
                Cause::QuotaExceeded,
                StatusCode::TOO_MANY_REQUESTS,
                "",
                detail,
            )
        }
    }

    /// Why the layer answered.
    pub fn cause(&self) -> Cause {
        self.cause
    }

    /// The status code (the layer's; a hook cannot change it).
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The `type` member: a URI naming the kind of problem.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Sets the `type` member.
    pub fn set_type(&mut self, uri: impl Into<Cow<'static, str>>) {
        self.kind = uri.into();
    }

    /// The `title` member.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Sets the `title` member.
    pub fn set_title(&mut self, title: impl Into<Cow<'static, str>>) {
        self.title = title.into();
    }

    /// The `detail` member, written for the caller.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Sets the `detail` member.
    pub fn set_detail(&mut self, detail: impl Into<String>) {
        self.detail = detail.into();
    }

    /// The limit that refused a 429 (`concurrency` for the concurrency limit).
    pub fn limit(&self) -> Option<&str> {
        self.limit.as_deref()
    }

    /// The seconds a 429 tells the caller to wait.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// Adds a member of the service's own (`"code"`, `"instance"`, `"request_id"`), replacing one of
    /// that name it added before. The standard members are set with their own methods; a name
    /// that is one of them is ignored here.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        let name = name.into();
        if !matches!(
            name.as_str(),
            "type" | "title" | "status" | "detail" | "limit" | "retry_after" | "violated-policies"
        ) {
            self.members.insert(name, value.into());
        }
    }

    /// The JSON body.
    pub(crate) fn to_bytes(&self) -> Bytes {
        // Serializing strings, integers and JSON values cannot fail; fall back to a bare object.
        serde_json::to_vec(self).map_or_else(|_| Bytes::from_static(b"{}"), Bytes::from)
    }

    /// The problem after the service's hook, if any, has shaped it.
    pub(crate) fn shaped(mut self, shape: Option<&ShapeProblem>) -> Self {
        if let Some(shape) = shape {
            shape(&mut self);
        }
        self
    }

    /// A response with this problem as its body, of any body type that can hold bytes; no cache
    /// keeps it (it is about one caller's credentials or quota at one instant).
    pub(crate) fn response<B: From<Bytes>>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.to_bytes()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, PROBLEM_JSON);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.response::<axum::body::Body>()
    }
}

/// A service's hook on the layer's problem bodies; see the [module documentation](self).
pub type ShapeProblem = Arc<dyn Fn(&mut Problem) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_exceeded_has_every_member() {
        let problem =
            Problem::quota_exceeded("used up".into(), "points".into(), 21, vec!["points".into()]);
        let value: serde_json::Value =
            serde_json::from_slice(&problem.to_bytes()).expect("valid JSON");
        assert_eq!(value["type"], QUOTA_EXCEEDED);
        assert_eq!(value["status"], 429);
        assert_eq!(value["limit"], "points");
        assert_eq!(value["retry_after"], 21);
        assert_eq!(value["violated-policies"][0], "points");
        assert!(value["title"].is_string() && value["detail"].is_string());
        assert_eq!(problem.cause(), Cause::QuotaExceeded);
    }

    #[test]
    fn a_hook_shapes_the_body_but_not_the_status_or_standard_members() {
        let shape: ShapeProblem = Arc::new(|problem: &mut Problem| {
            problem.set_type("https://docs.example.com/errors#quota");
            problem.set_detail("slow down");
            problem.insert("code", "rate_limited");
            problem.insert("status", 200);
        });
        let problem = Problem::quota_exceeded("used up".into(), "points".into(), 3, Vec::new())
            .shaped(Some(&shape));
        let response = problem.response::<Bytes>();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let value: serde_json::Value = serde_json::from_slice(response.body()).expect("valid JSON");
        assert_eq!(value["type"], "https://docs.example.com/errors#quota");
        assert_eq!(value["detail"], "slow down");
        assert_eq!(value["code"], "rate_limited");
        assert_eq!(value["status"], 429, "the status stays the layer's");
        assert_eq!(value["retry_after"], 3);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }
}
