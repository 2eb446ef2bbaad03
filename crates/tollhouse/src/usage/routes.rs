//! The handlers of [`usage_router`]: identify the caller, read its org's numbers, answer.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{HeaderName, StatusCode};
use serde::{Deserialize, Serialize};
use tollhouse_core::{OrgUsage, ResolvedOrg, StoreError, UsageView};

use super::json::{Billing, Calls, Report, Usage};
use super::recent::Recent;
use super::{MAX_BILLING_DAYS, UsageSource};
use crate::identity::Refusal;
use crate::problem::{Cause, Problem};

/// What the handlers share: where the usage comes from, and the last answers per org.
#[derive(Clone)]
struct Shared {
    source: Arc<dyn UsageSource>,
    recent: Arc<Recent>,
}

impl std::ops::Deref for Shared {
    type Target = dyn UsageSource;

    fn deref(&self) -> &Self::Target {
        &*self.source
    }
}

type Source = Shared;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// Everything the page may load: its own stylesheet and script, its own JSON routes; nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The usage routes over `source`, where the demo mounts them: `GET /v1/usage`,
/// `/v1/usage/calls`, `/v1/usage/billing?days=N`, `/v1/usage/report`, and the page `GET /usage`
/// (with its `/usage/page.css` and `/usage/page.js`). [`UsageRouter`] mounts them elsewhere and
/// gives the page the service's title and footer.
///
/// Merge it into the app *outside* the rate-limit layer (or [nest](axum::Router::nest) it under a
/// prefix): these routes identify the caller like any other, but are never limited or billed. See
/// the [module documentation](super) for the JSON bodies and an example.
pub fn usage_router<U: UsageSource>(source: Arc<U>) -> Router {
    UsageRouter::new(source).build()
}

/// Where the usage routes and the page are mounted, and what the page says about the service.
///
/// ```
/// # use std::sync::Arc;
/// use tollhouse::{Policy, RateLimitLayer, usage::UsageRouter};
///
/// # let policy = Policy::from_toml_str(r#"
/// # [[plans.build.limits]]
/// # name = "daily"
/// # dimension = "requests"
/// # tiers = [{ window = "day", capacity = 2500 }]
/// # "#, "policy.toml".as_ref())?;
/// let layer = RateLimitLayer::new(policy);
/// // An unversioned API: `GET /usage` (JSON), `/usage/calls`, ... and the page at `/dashboard`.
/// let usage: axum::Router = UsageRouter::new(Arc::new(layer))
///     .api_path("/usage")
///     .page_path("/dashboard")
///     .title("Acme API usage")
///     .footer("Acme Inc. · support@acme.example")
///     .build();
/// # Ok::<(), tollhouse::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct UsageRouter<U> {
    source: Arc<U>,
    api: String,
    page: Option<String>,
    title: String,
    footer: String,
}

impl<U: UsageSource> UsageRouter<U> {
    /// The routes over `source` at the default paths (`/v1/usage`, page at `/usage`).
    pub fn new(source: Arc<U>) -> Self {
        Self {
            source,
            api: "/v1/usage".to_owned(),
            page: Some("/usage".to_owned()),
            title: "API usage".to_owned(),
            footer: "Served by tollhouse.".to_owned(),
        }
    }

    /// Serves the JSON at `path` (`/usage` for an unversioned API): the summary there, and
    /// `path/calls`, `path/billing` and `path/report`.
    ///
    /// # Panics
    ///
    /// At [`build`](Self::build), if `path` does not start with `/` or ends with one.
    pub fn api_path(mut self, path: impl Into<String>) -> Self {
        self.api = path.into();
        self
    }

    /// Serves the page at `path`, and its stylesheet and script under `path/`.
    ///
    /// # Panics
    ///
    /// As [`api_path`](Self::api_path), and if the page's path is the JSON's.
    pub fn page_path(mut self, path: impl Into<String>) -> Self {
        self.page = Some(path.into());
        self
    }

    /// Serves the JSON routes only.
    pub fn without_page(mut self) -> Self {
        self.page = None;
        self
    }

    /// The page's title and heading (default "API usage"), as text.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The line at the foot of the page (default "Served by tollhouse."), as text.
    pub fn footer(mut self, footer: impl Into<String>) -> Self {
        self.footer = footer.into();
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        check_path(&self.api);
        let source = Shared {
            source: self.source,
            recent: Arc::new(Recent::default()),
        };
        let api = &self.api;
        let mut router = Router::new()
            .route(api, get(summary))
            .route(&format!("{api}/calls"), get(calls))
            .route(&format!("{api}/billing"), get(billing))
            .route(&format!("{api}/report"), get(report));
        if let Some(page) = &self.page {
            check_path(page);
            assert!(
                page != api,
                "tollhouse: the usage page and its JSON cannot share the path {page:?}"
            );
            let html = page_html(page, api, &self.title, &self.footer);
            router = router
                .route(
                    page,
                    get(move || std::future::ready(page_response(html.clone()))),
                )
                .route(&format!("{page}/page.css"), get(stylesheet))
                .route(&format!("{page}/page.js"), get(script));
        }
        router.with_state(source)
    }
}

/// Refuses a mount path axum would route oddly.
fn check_path(path: &str) {
    assert!(
        path.starts_with('/') && path.len() > 1 && !path.ends_with('/'),
        "tollhouse: usage paths start with '/' and do not end with one, such as \"/v1/usage\" (got {path:?})"
    );
}

/// The page for `page`'s path, reading the JSON at `api`, with the service's title and footer.
fn page_html(page: &str, api: &str, title: &str, footer: &str) -> Bytes {
    let assets = page.rsplit('/').next().unwrap_or_default();
    Bytes::from(
        PAGE_HTML
            .replace("{{API}}", &escape_html(&relative(page, api)))
            .replace("{{ASSETS}}", &escape_html(assets))
            .replace("{{TITLE}}", &escape_html(title))
            .replace("{{FOOTER}}", &escape_html(footer)),
    )
}

/// The path of `to` relative to the directory of `from` (both absolute): what a page at `from`
/// fetches to reach `to`, wherever the router is nested.
fn relative(from: &str, to: &str) -> String {
    let from_dir: Vec<&str> = from.split('/').skip(1).collect();
    let from_dir = &from_dir[..from_dir.len().saturating_sub(1)];
    let target: Vec<&str> = to.split('/').skip(1).collect();
    // The last segment of `to` is always written: `/a` from `/a/usage` is `../a`, not `` or `.`.
    let common = from_dir
        .iter()
        .zip(&target[..target.len().saturating_sub(1)])
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<&str> = vec![".."; from_dir.len() - common];
    parts.extend(&target[common..]);
    parts.join("/")
}

/// `text` safe inside HTML text and attribute values.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Marks a response as private to its caller: no cache keeps it.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A problem of the usage routes, shaped by the service's hook.
fn problem(source: &Source, mut problem: Problem) -> Problem {
    source.shape_problem(&mut problem);
    problem
}

/// The caller was not identified: answered exactly as the layer answers it.
fn refused(source: &Source, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unidentified(unidentified) => {
            let shaped = problem(source, unidentified.problem());
            unidentified.response::<axum::body::Body>(&shaped)
        }
        Refusal::Response(response) => no_store(response.map(axum::body::Body::from)),
    }
}

/// `503`: the counts cannot be read now.
fn store_failed(source: &Source, error: StoreError) -> Response {
    tracing::warn!(
        error = &error as &dyn std::error::Error,
        "tollhouse: the usage routes could not read the store"
    );
    problem(
        source,
        Problem::new(
            Cause::UsageUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "usage counts cannot be read right now; try again shortly".to_owned(),
        ),
    )
    .into_response()
}

/// `400` with `detail`.
fn bad_request(source: &Source, detail: String) -> Response {
    problem(
        source,
        Problem::new(
            Cause::BadRequest,
            StatusCode::BAD_REQUEST,
            "Bad Request",
            detail,
        ),
    )
    .into_response()
}

/// A JSON body that no cache keeps and no browser sniffs: it is one org's private numbers.
fn private_json_body(body: Bytes) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (NOSNIFF.0, NOSNIFF.1),
        ],
        body,
    )
        .into_response()
}

/// `500`: an answer that could not be written as JSON.
fn serialization_failed(source: &Source, error: &serde_json::Error) -> Response {
    problem(
        source,
        Problem::new(
            Cause::UsageUnavailable,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            error.to_string(),
        ),
    )
    .into_response()
}

/// `X-Content-Type-Options: nosniff`.
const NOSNIFF: (HeaderName, HeaderValue) = (
    HeaderName::from_static("x-content-type-options"),
    HeaderValue::from_static("nosniff"),
);

async fn identify(source: &Source, parts: Parts) -> Result<Arc<ResolvedOrg>, Response> {
    source
        .identify(parts)
        .await
        .map_err(|refusal| refused(source, refusal))
}

/// Reads `view` of the caller's usage and renders it, or serves the org's last answer when it
/// reads more often than [`FRESH_READS_PER_SECOND`](super::recent::FRESH_READS_PER_SECOND) times
/// a second.
async fn answer<T: Serialize>(
    source: &Source,
    org: &Arc<ResolvedOrg>,
    view: UsageView,
    render: impl FnOnce(&OrgUsage) -> T,
) -> Result<Response, Response> {
    if let Some(body) = source.recent.reuse(org.id(), view) {
        return Ok(private_json_body(body));
    }
    let usage = source
        .store()
        .usage_view(org, source.now(), view)
        .await
        .map_err(|error| store_failed(source, error))?;
    let body = serde_json::to_vec(&render(&usage))
        .map(Bytes::from)
        .map_err(|error| serialization_failed(source, &error))?;
    source.recent.keep(org.id(), view, body.clone());
    Ok(private_json_body(body))
}

async fn summary(State(source): State<Source>, parts: Parts) -> Result<Response, Response> {
    let org = identify(&source, parts).await?;
    let view = UsageView::Summary;
    if let Some(body) = source.recent.reuse(org.id(), view) {
        return Ok(private_json_body(body));
    }
    let now = source.now();
    let store = source.store();
    let (usage, statuses) =
        futures_util::future::try_join(store.usage_view(&org, now, view), store.peek(&org, now))
            .await
            .map_err(|error| store_failed(&source, error))?;
    let body = serde_json::to_vec(&Usage::new(&org, &usage, &statuses))
        .map(Bytes::from)
        .map_err(|error| serialization_failed(&source, &error))?;
    source.recent.keep(org.id(), view, body.clone());
    Ok(private_json_body(body))
}

async fn calls(State(source): State<Source>, parts: Parts) -> Result<Response, Response> {
    let org = identify(&source, parts).await?;
    answer(&source, &org, UsageView::Calls, |usage| {
        Calls::new(&org, usage)
    })
    .await
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
    let org = identify(&source, parts).await?;
    let Ok(Query(query)) = query else {
        return Err(bad_request(
            &source,
            format!(
                "the query string is not valid; use ?days=N with N from 1 to {MAX_BILLING_DAYS}"
            ),
        ));
    };
    let days =
        billing_days(query.days.as_deref()).map_err(|detail| bad_request(&source, detail))?;
    answer(&source, &org, UsageView::Billing { days }, Billing::new).await
}

async fn report(State(source): State<Source>, parts: Parts) -> Result<Response, Response> {
    let org = identify(&source, parts).await?;
    answer(&source, &org, UsageView::Report, Report::new).await
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            NOSNIFF,
        ],
        body,
    )
        .into_response()
}

fn page_response(html: Bytes) -> Response {
    let mut response = asset("text/html; charset=utf-8", html);
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
        let html = page_html("/usage", "/v1/usage", "API usage", "Served by tollhouse.");
        let html = std::str::from_utf8(&html).expect("UTF-8");
        assert!(html.contains(r#"src="usage/page.js""#));
        assert!(html.contains(r#"href="usage/page.css""#));
        assert!(html.contains(r#"<meta name="usage-api" content="v1/usage">"#));
        assert!(!html.contains("{{"), "every placeholder is filled");
    }

    #[test]
    fn the_page_finds_its_json_relative_to_where_it_is_mounted() {
        assert_eq!(relative("/usage", "/v1/usage"), "v1/usage");
        assert_eq!(relative("/usage", "/usage-api"), "usage-api");
        assert_eq!(relative("/portal/usage", "/portal/api/usage"), "api/usage");
        assert_eq!(relative("/a/b/usage", "/api/usage"), "../../api/usage");
        assert_eq!(relative("/a/usage", "/a"), "../a");
    }

    #[test]
    fn the_service_title_and_footer_are_escaped_text() {
        let html = page_html("/dashboard", "/usage", "Acme <API>", "\"Acme\" & co");
        let html = std::str::from_utf8(&html).expect("UTF-8");
        assert!(html.contains("<title>Acme &lt;API&gt;</title>"));
        assert!(html.contains("&quot;Acme&quot; &amp; co"));
        assert!(html.contains(r#"src="dashboard/page.js""#));
        assert!(!html.contains("Served by tollhouse"));
    }
}
