//! The service's own auth: a lookup that cannot find out is not a wrong key; an extractor runs
//! once and reaches the handler through the extensions; a boxed layer has a name; the service
//! shapes the problem bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Extension, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use tollhouse::identity::BearerToken;
use tollhouse::problem::{Cause, Problem};
use tollhouse::{BoxRateLimitLayer, Identity, Metered, Policy, RateLimitLayer, Unidentified};
use tower::ServiceExt;

fn policy(server: &str) -> Policy {
    let text = format!(
        r#"
[server]
{server}

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{{ window = "day", capacity = 2 }}]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
"#
    );
    Policy::from_toml_str(&text, "test.toml".as_ref()).expect("a valid policy")
}

async fn send(app: &Router, key: Option<&str>) -> Response {
    let mut request = Request::get("/items");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    app.clone()
        .oneshot(request.body(Body::empty()).expect("a request"))
        .await
        .expect("infallible")
}

async fn json(response: Response) -> serde_json::Value {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("JSON")
}

/// A key database that is down: every lookup fails.
async fn database_down(_key: String) -> Result<Option<String>, std::io::Error> {
    Err(std::io::Error::other("connection refused"))
}

fn with_failing_lookup(limits: RateLimitLayer) -> Router {
    let limits = limits.identify(|parts: &Parts, _: &Arc<Policy>| {
        let key = tollhouse::identity::bearer_token(parts).map(str::to_owned);
        async move {
            match database_down(key?).await {
                Ok(Some(_)) => unreachable!("the database is down"),
                Ok(None) => Err(Unidentified::Unknown),
                Err(_) => Err(Unidentified::Unavailable),
            }
        }
    });
    Router::new()
        .route("/items", get(|| async { "items" }))
        .layer(limits)
}

#[tokio::test]
async fn a_failing_lookup_answers_503_with_retry_after_by_default() {
    let app = with_failing_lookup(RateLimitLayer::new(policy("")));
    let response = send(&app, Some("acme-key-1")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers().get("www-authenticate").is_none(),
        "not a credentials problem"
    );
    let body = json(response).await;
    assert_eq!(body["status"], 503);
    assert!(
        !body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("belongs to no organisation"),
        "never reported as a wrong key: {body}"
    );
    // A missing key is still a 401: the lookup is not even asked.
    let missing = send(&app, None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_failing_lookup_lets_the_request_through_unmetered_when_allowed() {
    let app = with_failing_lookup(RateLimitLayer::new(policy(r#"on_lookup_error = "allow""#)));
    for _ in 0..3 {
        let response = send(&app, Some("acme-key-1")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("x-ratelimit-limit").is_none());
    }
}

/// The service's own extractor, counting its runs.
#[derive(Clone, Debug)]
struct Caller {
    tenant: String,
    runs: usize,
}

static CALLER_RUNS: AtomicUsize = AtomicUsize::new(0);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = (StatusCode, Json<serde_json::Value>);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let runs = CALLER_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
        let tenant = parts
            .headers
            .get("x-tenant")
            .and_then(|value| value.to_str().ok())
            .ok_or((
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({ "error": "no tenant" })),
            ))?;
        Ok(Caller {
            tenant: tenant.to_owned(),
            runs,
        })
    }
}

#[tokio::test]
async fn an_extractor_runs_once_and_reaches_the_handler_through_the_extensions() {
    let limits =
        RateLimitLayer::new(policy("")).identify_by(async |caller: Caller, policy: Arc<Policy>| {
            let org = policy.org(&caller.tenant).ok_or(Unidentified::Unknown)?;
            Ok(Identity::new(Arc::clone(org), &caller.tenant))
        });
    let app = Router::new()
        .route(
            "/items",
            get(
                |Extension(caller): Extension<Caller>, metered: Metered| async move {
                    format!(
                        "{} {} {}",
                        caller.tenant,
                        caller.runs,
                        metered.org_id().as_str()
                    )
                },
            ),
        )
        .layer(limits);
    let before = CALLER_RUNS.load(Ordering::SeqCst);
    let request = Request::get("/items")
        .header("x-tenant", "acme")
        .body(Body::empty())
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "1");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        std::str::from_utf8(&body).expect("UTF-8"),
        format!("acme {} acme", before + 1)
    );
    assert_eq!(
        CALLER_RUNS.load(Ordering::SeqCst),
        before + 1,
        "the extractor ran once for the layer and the handler together"
    );

    // Its rejection is the answer, as the service wrote it.
    let rejected = app
        .clone()
        .oneshot(
            Request::get("/items")
                .body(Body::empty())
                .expect("a request"),
        )
        .await
        .expect("infallible");
    assert_eq!(rejected.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(rejected).await["error"], "no tenant");

    // An org the closure does not know is the layer's 401.
    let unknown = app
        .oneshot(
            Request::get("/items")
                .header("x-tenant", "initech")
                .body(Body::empty())
                .expect("a request"),
        )
        .await
        .expect("infallible");
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.headers()["www-authenticate"], "Bearer");
}

/// A layer built in a function and kept in a struct, whatever identifies its callers.
struct Api {
    limits: BoxRateLimitLayer,
}

fn limits_by_bearer_extractor() -> BoxRateLimitLayer {
    RateLimitLayer::new(policy(""))
        .identify_by(async |BearerToken(key): BearerToken, policy: Arc<Policy>| {
            let (org, _) = policy.owner_of_key(&key).ok_or(Unidentified::Unknown)?;
            Ok(Identity::new(Arc::clone(org), &key).with_extension(org.id().clone()))
        })
        .boxed()
}

#[tokio::test]
async fn a_boxed_layer_is_a_type_to_name() {
    let api = Api {
        limits: limits_by_bearer_extractor(),
    };
    let app = Router::new()
        .route(
            "/items",
            get(|Extension(org): Extension<tollhouse::OrgId>| async move { org.to_string() }),
        )
        .layer(api.limits.clone());
    let response = send(&app, Some("acme-key-1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "1");
    // The bearer extractor's own rejection is the layer's 401, with its challenge.
    let missing = send(&app, None).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn the_service_shapes_every_problem_body() {
    let limits = RateLimitLayer::new(policy("")).problem(|problem: &mut Problem| {
        let code = match problem.cause() {
            Cause::QuotaExceeded => "rate_limited",
            Cause::Unidentified(_) => "unauthenticated",
            _ => "unavailable",
        };
        problem.insert("code", code);
        problem.set_type(format!("https://docs.example.com/errors#{code}"));
    });
    let app = Router::new()
        .route("/items", get(|| async { "items" }))
        .layer(limits);
    let unauthenticated = send(&app, Some("nobody")).await;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.headers()["www-authenticate"], "Bearer");
    let body = json(unauthenticated).await;
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(
        body["type"],
        "https://docs.example.com/errors#unauthenticated"
    );

    for _ in 0..2 {
        assert_eq!(
            send(&app, Some("acme-key-1")).await.status(),
            StatusCode::OK
        );
    }
    let limited = send(&app, Some("acme-key-1")).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().get("retry-after").is_some());
    let body = json(limited).await;
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["limit"], "daily", "the standard members stay");
    assert_eq!(body["status"], 429);
}
