//! RFC 9457 problem details: the bodies of the layer's own 401, 429 and 503 responses.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

/// The media type of a problem body.
pub(crate) const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The problem type of draft-ietf-httpapi-ratelimit-headers for an exceeded quota.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A problem body.
#[derive(Debug, Serialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    violated_policies: Option<Vec<String>>,
}

impl Problem {
    /// A problem of type `about:blank`.
    pub(crate) fn new(status: StatusCode, title: &'static str, detail: String) -> Self {
        Self {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail,
            limit: None,
            retry_after: None,
            violated_policies: None,
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
            kind: QUOTA_EXCEEDED,
            title: "Request cannot be satisfied as assigned quota has been exceeded",
            status: StatusCode::TOO_MANY_REQUESTS.as_u16(),
            detail,
            limit: Some(limit),
            retry_after: Some(retry_after),
            violated_policies: Some(violated_policies),
        }
    }

    /// The status code.
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body.
    pub(crate) fn to_bytes(&self) -> Bytes {
        // Serializing a struct of strings and integers cannot fail; fall back to a bare object.
        serde_json::to_vec(self).map_or_else(|_| Bytes::from_static(b"{}"), Bytes::from)
    }

    /// A response with this problem as its body, of any body type that can hold bytes.
    pub(crate) fn response<B: From<Bytes>>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.to_bytes()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.response::<axum::body::Body>()
    }
}

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
    }
}
