//! The handlers of [`usage_router`]: identify the caller, read its org's numbers, answer.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{HeaderName, StatusCode};
use serde::{Deserialize, Serialize};
use tollhouse_core::{ResolvedOrg, StoreError};

use super::json::{Billing, Calls, Report, Usage};
use super::{MAX_BILLING_DAYS, UsageSource};
use crate::identity::Unidentified;
use crate::problem::Problem;

type Source = Arc<dyn UsageSource>;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// Everything the page may load: its own stylesheet and script, its own JSON routes; nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The usage routes of SPEC §8 over `source`: `GET /v1/usage`, `/v1/usage/calls`,
/// `/v1/usage/billing?days=N`, `/v1/usage/report`, and the page `GET /usage` (with its
/// `/usage/page.css` and `/usage/page.js`).
///
/// Merge it into the app *outside* the rate-limit layer (or [nest](axum::Router::nest) it under a
/// prefix): these routes identify the caller like any other, but are never limited or billed. See
/// the [module documentation](super) for the JSON bodies and an example.
pub fn usage_router<U: UsageSource>(source: Arc<U>) -> Router {
    let source: Source = source;
    Router::new()
        .route("/v1/usage", get(summary))
        .route("/v1/usage/calls", get(calls))
        .route("/v1/usage/billing", get(billing))
        .route("/v1/usage/report", get(report))
        .route("/usage", get(page))
        .route("/usage/page.css", get(stylesheet))
        .route("/usage/page.js", get(script))
        .with_state(source)
}

/// Marks a response as private to its caller: no cache keeps it.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `401`, answered exactly as the layer answers it.
fn unidentified(error: Unidentified) -> Response {
    no_store(error.into_response())
}

/// `503`: the counts cannot be read now.
fn store_failed(error: StoreError) -> Response {
    tracing::warn!(
        error = &error as &dyn std::error::Error,
        "tollhouse: the usage routes could not read the store"
    );
    no_store(
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "usage counts cannot be read right now; try again shortly".to_owned(),
        )
        .into_response(),
    )
}

/// `400` with `detail`.
fn bad_request(detail: String) -> Response {
    no_store(Problem::new(StatusCode::BAD_REQUEST, "Bad Request", detail).into_response())
}

/// A JSON body that no cache keeps: it is one org's private numbers.
fn private_json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(error) => no_store(
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                error.to_string(),
            )
            .into_response(),
        ),
    }
}

async fn identify(source: &Source, parts: &Parts) -> Result<Arc<ResolvedOrg>, Response> {
    source.identify(parts).await.map_err(unidentified)
}

async fn summary(State(source): State<Source>, parts: Parts) -> Result<Response, Response> {
    let org = identify(&source, &parts).await?;
    let now = source.now();
    let store = source.store();
    let (usage, statuses) =
        futures_util::future::try_join(store.usage(&org, now, 1), store.peek(&org, now))
            .await
            .map_err(store_failed)?;
    Ok(private_json(&Usage::new(&org, &usage, &statuses)))
}

async fn calls(State(source): State<Source>, parts: Parts) -> Result<Response, Response> {
    let org = identify(&source, &parts).await?;
    let usage = source
        .store()
        .usage(&org, source.now(), 1)
        .await
        .map_err(store_failed)?;
    Ok(private_json(&Calls::new(&org, &usage)))
}

#[derive(Debug, Deserialize)]
struct BillingQuery {
    days: Option<String>,
}

fn billing_days(query: Option<&str>) -> Result<usize, String> {
    let Some(days) = query else {
        return Ok(MAX_BILLING_DAYS);
    };
    match days.trim().parse::<usize>() {
        Ok(days @ 1..=MAX_BILLING_DAYS) => Ok(days),
        _ => Err(format!(
            "days must be a whole number from 1 to {MAX_BILLING_DAYS} (got {days:?}); leave it out for {MAX_BILLING_DAYS}"
        )),
    }
}

async fn billing(
    State(source): State<Source>,
    parts: Parts,
    query: Result<Query<BillingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Response> {
    let org = identify(&source, &parts).await?;
    let Ok(Query(query)) = query else {
        return Err(bad_request(format!(
            "the query string is not valid; use ?days=N with N from 1 to {MAX_BILLING_DAYS}"
        )));
    };
    let days = billing_days(query.days.as_deref()).map_err(bad_request)?;
    let usage = source
        .store()
        .usage(&org, source.now(), days)
        .await
        .map_err(store_failed)?;
    Ok(private_json(&Billing::new(&usage)))
}

async fn report(State(source): State<Source>, parts: Parts) -> Result<Response, Response> {
    let org = identify(&source, &parts).await?;
    let usage = source
        .store()
        .usage(&org, source.now(), 1)
        .await
        .map_err(store_failed)?;
    Ok(private_json(&Report::new(&usage)))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", PAGE_HTML);
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    response
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_days_default_and_bounds() {
        assert_eq!(billing_days(None).ok(), Some(31));
        assert_eq!(billing_days(Some("7")).ok(), Some(7));
        assert_eq!(billing_days(Some("31")).ok(), Some(31));
        for bad in ["0", "32", "-1", "seven", ""] {
            let detail = billing_days(Some(bad)).expect_err(bad);
            assert!(detail.contains("1 to 31"), "{detail}");
        }
    }

    #[test]
    fn page_loads_nothing_from_other_hosts() {
        for text in [PAGE_HTML, PAGE_CSS, PAGE_JS] {
            // The SVG namespace is a name, not a location: nothing is fetched from it.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://"), "absolute http URL in an asset");
            assert!(!text.contains("https://"), "absolute https URL in an asset");
            assert!(!text.contains("//cdn"), "CDN reference in an asset");
        }
        assert!(PAGE_HTML.contains("usage/page.js"));
        assert!(PAGE_HTML.contains("usage/page.css"));
    }
}
