//! A cost declared beside a method router applies to the methods that router serves: the matrix
//! of same path and different methods, chained method routers, `any`, `for_method`, a policy
//! file's rule beside a code rule, and rules in code that could never apply.

use std::panic::{AssertUnwindSafe, catch_unwind};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{MethodFilter, any, get, on, post};
use tollhouse::{Cost, ManualClock, Policy, RateLimitLayer, RouterCostExt, Timestamp};
use tower::ServiceExt;

/// One org with 1,000 points a minute, and whatever `routes` the file adds.
fn layer(routes: &str) -> RateLimitLayer {
    let text = format!(
        r#"
[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{{ window = "minute", capacity = 1000 }}]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
{routes}
"#
    );
    let policy = Policy::from_toml_str(&text, "test.toml".as_ref()).expect("a valid policy");
    RateLimitLayer::new(policy).with_clock(ManualClock::new(Timestamp::from_secs(1_800_000_000)))
}

/// What one request of `method` to `path` was charged, read from the points left before and after.
async fn charged(app: &Router, method: Method, path: &str) -> i64 {
    let remaining = |response: &axum::response::Response| -> i64 {
        response.headers()["x-ratelimit-remaining"]
            .to_str()
            .expect("ASCII")
            .parse()
            .expect("a number")
    };
    let send = |method: Method| {
        app.clone().oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", "Bearer acme-key-1")
                .body(Body::empty())
                .expect("a request"),
        )
    };
    // An OPTIONS probe first (whatever it costs), so the difference is this request's charge alone.
    let before = send(Method::OPTIONS).await.expect("infallible");
    let response = send(method.clone()).await.expect("infallible");
    assert_ne!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{method} {path}"
    );
    remaining(&before) - remaining(&response)
}

async fn handler() -> &'static str {
    "ok"
}

#[tokio::test]
async fn the_same_path_routed_twice_charges_each_method_its_own_cost() {
    let limits = layer("");
    let app = Router::new()
        .route_with_cost("/things", get(handler), &limits, Cost::points(1))
        .route_with_cost("/things", post(handler), &limits, Cost::points(3))
        .route_layer(limits);
    assert_eq!(charged(&app, Method::GET, "/things").await, 1);
    assert_eq!(charged(&app, Method::HEAD, "/things").await, 1);
    assert_eq!(charged(&app, Method::POST, "/things").await, 3);
}

#[tokio::test]
async fn a_chained_method_router_charges_each_of_its_methods() {
    let limits = layer("");
    let app = Router::new()
        .route_with_cost(
            "/things/{id}",
            get(handler).put(handler).delete(handler),
            &limits,
            Cost::points(4),
        )
        .route_with_cost("/things", post(handler), &limits, Cost::points(7))
        .route_layer(limits);
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        assert_eq!(
            charged(&app, method.clone(), "/things/9").await,
            4,
            "{method}"
        );
    }
    assert_eq!(charged(&app, Method::POST, "/things").await, 7);
    // PATCH is not routed at /things/{id}: a 405 at the default cost, not the route's.
    assert_eq!(charged(&app, Method::PATCH, "/things/9").await, 1);
}

#[tokio::test]
async fn any_and_a_fallback_charge_every_method() {
    let limits = layer("");
    let app = Router::new()
        .route_with_cost("/any", any(handler), &limits, Cost::points(5))
        .route_with_cost(
            "/mostly-get",
            get(handler).fallback(handler),
            &limits,
            Cost::points(6),
        )
        .route_layer(limits);
    for method in [Method::GET, Method::POST, Method::PATCH, Method::DELETE] {
        assert_eq!(charged(&app, method.clone(), "/any").await, 5, "{method}");
        assert_eq!(
            charged(&app, method.clone(), "/mostly-get").await,
            6,
            "{method}"
        );
    }
}

#[tokio::test]
async fn on_with_a_method_filter_charges_the_filtered_methods() {
    let limits = layer("");
    let app = Router::new()
        .route_with_cost(
            "/filtered",
            on(MethodFilter::POST.or(MethodFilter::PUT), handler),
            &limits,
            Cost::points(8),
        )
        .route_with_cost("/filtered", get(handler), &limits, Cost::points(2))
        .route_layer(limits);
    assert_eq!(charged(&app, Method::POST, "/filtered").await, 8);
    assert_eq!(charged(&app, Method::PUT, "/filtered").await, 8);
    assert_eq!(charged(&app, Method::GET, "/filtered").await, 2);
}

#[tokio::test]
async fn a_code_rule_wins_for_its_methods_and_the_file_rule_keeps_the_others() {
    let limits = layer(
        r#"
[[routes]]
match = "* /things"
cost = 9
"#,
    );
    let app = Router::new()
        .route_with_cost("/things", get(handler), &limits, Cost::points(2))
        .route_layer(limits);
    // GET (and HEAD) from the code; POST is not routed here, so the file's rule prices its 405.
    assert_eq!(charged(&app, Method::GET, "/things").await, 2);
    assert_eq!(charged(&app, Method::HEAD, "/things").await, 2);
    assert_eq!(charged(&app, Method::POST, "/things").await, 9);
}

#[tokio::test]
async fn for_method_narrows_a_cost_to_one_served_method() {
    let limits = layer("");
    let app = Router::new()
        .route_with_cost(
            "/things",
            get(handler).post(handler),
            &limits,
            Cost::points(5).for_method(Method::POST),
        )
        .route_layer(limits);
    assert_eq!(charged(&app, Method::POST, "/things").await, 5);
    assert_eq!(charged(&app, Method::GET, "/things").await, 1);
}

/// The panic message of `build`, which must panic.
fn refusal(build: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(build)).expect_err("the router is refused");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn a_code_rule_that_an_earlier_one_covers_is_refused_when_the_router_is_built() {
    let limits = layer("");
    let message = refusal(|| {
        let _app: Router = Router::new()
            .route_with_cost("/things", any(handler), &limits, Cost::points(1))
            .route_with_cost("/things/{id}", get(handler), &limits, Cost::points(2))
            .route_with_cost("/things", post(handler), &limits, Cost::points(3));
    });
    assert!(
        message.contains("\"POST /things\" (cost 3) never applies")
            && message.contains("\"* /things\" (cost 1)"),
        "{message}"
    );

    let limits = layer("");
    let message = refusal(|| {
        let _layer = limits
            .clone()
            .cost("* /v1/{*rest}", 2)
            .cost("GET /v1/reports", 10);
    });
    assert!(
        message.contains("\"GET /v1/reports\" (cost 10) never applies"),
        "{message}"
    );

    let limits = layer("");
    let message = refusal(|| {
        let _app: Router = Router::new().route_with_cost(
            "/things",
            get(handler),
            &limits,
            Cost::points(2).for_method(Method::POST),
        );
    });
    assert!(
        message.contains("serves GET"),
        "a cost for a method the router does not serve: {message}"
    );
}

#[tokio::test]
async fn building_the_same_router_twice_over_one_layer_is_not_a_conflict() {
    let limits = layer("");
    let build = || {
        Router::new()
            .route_with_cost("/things", post(handler), &limits, Cost::points(3))
            .route_layer(limits.clone())
    };
    let _first = build();
    let second = build();
    assert_eq!(charged(&second, Method::POST, "/things").await, 3);
}
