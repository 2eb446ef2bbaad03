//! Helpers for the end-to-end tests of the layer over real HTTP on loopback.
//!
//! [`TestApp::start`] serves a small API behind a [`RateLimitLayer`] on `127.0.0.1:0`, on a
//! [`ManualClock`] and a [`MemoryStore`] the test can inspect. Its handlers are controlled by the
//! test instead of timers: `/v1/held` waits for [`TestApp::release`], `/v1/stream` streams what the
//! test sends through [`TestApp::next_stream`], and `/v1/work?ms=N` moves the manual clock by `N`
//! ms as if it had worked that long. [`eventually`] polls an observable condition with a deadline.
//!
//! # Example
//!
//! ```no_run
//! use tollhouse_tests::http::{TestApp, Placement, POLICY};
//!
//! # async fn run() {
//! let app = TestApp::start(POLICY, Placement::Layer).await;
//! let response = app.get("/v1/items", "acme-key-1").await;
//! assert_eq!(response.headers()["x-ratelimit-remaining"], "19");
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::stream;
use sfv::{BareItem, List, ListEntry, Parser};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tollhouse::{
    Clock, DynStore, ManualClock, MemoryStore, Policy, RateLimitLayer, ReportCost, ResolvedOrg,
    Timestamp,
};
use tollhouse_core::{LimitStatus, OrgUsage, Store};
use tower::ServiceBuilder;

/// 2026-01-15 10:00:30 UTC: thirty seconds into a minute, ten hours into a UTC day.
pub const T0: i64 = 1_768_471_230;

/// The policy most tests run under.
///
/// - `acme` (keys `acme-key-1`, `acme-key-2`), plan `build`: 20 points a minute, 2,500 requests a
///   day, 3 requests in flight.
/// - `flat` (`flat-key`), plan `flat`: 20 points a minute, no concurrency limit.
/// - `lagging` (`lagging-key`), plan `timed`: 1,000 ms of latency a minute, 100 requests a minute.
/// - Routes: `GET /v1/reports` costs 10, `POST /v1/items` 3, `GET /v1/files/{id}` is exempt,
///   `POST /v1/connectors/{name}` exempt and not billable.
pub const POLICY: &str = r#"
[plans.build]
concurrency = 3

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 20 }]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2500 }]

[[plans.flat.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 20 }]

[[plans.timed.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{ window = "minute", capacity = 1000 }]

[[plans.timed.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 100 }]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1", "acme-key-2"]

[[orgs]]
id = "flat"
plan = "flat"
keys = ["flat-key-1"]

[[orgs]]
id = "lagging"
plan = "timed"
keys = ["lagging-key"]

[[routes]]
match = "GET /v1/reports"
cost = 10

[[routes]]
match = "POST /v1/items"
cost = 3

[[routes]]
match = "GET /v1/files/{id}"
exempt = true

[[routes]]
match = "POST /v1/connectors/{name}"
exempt = true
billable = false
"#;

/// Where the layer sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `Router::layer`: after routing, around every route and the fallback.
    Layer,
    /// `Router::route_layer`: after routing, around matched routes only.
    RouteLayer,
    /// `ServiceBuilder` around the whole router: before routing, on raw paths.
    Service,
    /// `Router::layer` with tower-http's `CatchPanicLayer` outside it.
    LayerInsideCatchPanic,
}

#[derive(Clone)]
struct Shared {
    clock: ManualClock,
    gate: Arc<Semaphore>,
    streams: mpsc::UnboundedSender<mpsc::UnboundedSender<Bytes>>,
}

/// A running test server and handles on its clock, store and handlers.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The engine's clock.
    pub clock: ManualClock,
    /// The engine's store.
    pub store: Arc<MemoryStore>,
    /// The layer (its engine holds the policy).
    pub layer: RateLimitLayer,
    /// A client for the server.
    pub client: reqwest::Client,
    gate: Arc<Semaphore>,
    streams: Mutex<mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>>,
    shutdown: Option<oneshot::Sender<()>>,
}

/// Parses policy text.
pub fn policy(text: &str) -> Policy {
    Policy::from_toml_str(text, "test-policy.toml".as_ref()).expect("a valid test policy")
}

/// The test API's routes, without the layer.
fn routes(shared: Shared) -> Router {
    Router::new()
        .route("/v1/items", get(|| async { "[]" }).post(created))
        .route("/v1/reports", get(|| async { "report" }))
        .route("/v1/search", get(search))
        .route("/v1/held", get(held))
        .route("/v1/stream", get(streamed))
        .route("/v1/work", get(work))
        .route("/v1/panic", get(panics))
        .route(
            "/v1/files/{id}",
            get(|| async { Body::from(vec![7u8; 4096]) }),
        )
        .route(
            "/v1/connectors/{name}",
            post(|| async { StatusCode::ACCEPTED }),
        )
        .with_state(shared)
}

async fn created() -> impl IntoResponse {
    (StatusCode::CREATED, "created")
}

async fn search(cost: ReportCost, Query(query): Query<HashMap<String, u64>>) -> String {
    let points = query.get("cost").copied().unwrap_or(1);
    cost.set(points);
    format!("cost {points}")
}

async fn held(State(shared): State<Shared>) -> &'static str {
    // The test adds one permit per handler it lets finish.
    match shared.gate.acquire().await {
        Ok(permit) => permit.forget(),
        Err(_) => return "gate closed",
    }
    "released"
}

async fn streamed(State(shared): State<Shared>) -> Body {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let _ = shared.streams.send(tx);
    let chunks = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Body::from_stream(chunks)
}

async fn work(State(shared): State<Shared>, Query(query): Query<HashMap<String, u64>>) -> String {
    let ms = query.get("ms").copied().unwrap_or(0);
    shared.clock.advance(Duration::from_millis(ms));
    format!("worked {ms} ms")
}

async fn panics() -> &'static str {
    panic!("a handler bug (expected by the test)")
}

impl TestApp {
    /// Serves the test API behind a layer enforcing `policy_text`, placed as `placement`.
    pub async fn start(policy_text: &str, placement: Placement) -> Self {
        Self::start_with(policy_text, placement, |layer| layer).await
    }

    /// As [`start`](Self::start), with a chance to configure the layer (costs declared in code).
    pub async fn start_with(
        policy_text: &str,
        placement: Placement,
        configure: impl FnOnce(RateLimitLayer) -> RateLimitLayer,
    ) -> Self {
        let clock = ManualClock::new(Timestamp::from_secs(T0));
        let store = Arc::new(MemoryStore::new());
        let layer = configure(
            RateLimitLayer::new(policy(policy_text))
                .with_store(Arc::clone(&store) as Arc<dyn DynStore>)
                .with_clock(clock.clone()),
        );
        let gate = Arc::new(Semaphore::new(0));
        let (streams_tx, streams_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            clock: clock.clone(),
            gate: Arc::clone(&gate),
            streams: streams_tx,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address: SocketAddr = listener.local_addr().expect("the bound address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let stop = async move {
            let _ = stop.await;
        };
        let app = routes(shared);
        match placement {
            Placement::Layer => {
                let app = app.layer(layer.clone());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await;
                });
            }
            Placement::RouteLayer => {
                let app = app.route_layer(layer.clone());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await;
                });
            }
            Placement::LayerInsideCatchPanic => {
                let app = app
                    .layer(layer.clone())
                    .layer(tower_http::catch_panic::CatchPanicLayer::new());
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await;
                });
            }
            Placement::Service => {
                let service = ServiceBuilder::new()
                    .map_response(IntoResponse::into_response)
                    .layer(layer.clone())
                    .service(app);
                let service =
                    axum::ServiceExt::<axum::extract::Request>::into_make_service(service);
                tokio::spawn(async move {
                    let _ = axum::serve(listener, service)
                        .with_graceful_shutdown(stop)
                        .await;
                });
            }
        }
        Self {
            base: format!("http://{address}"),
            clock,
            store,
            layer,
            client: reqwest::Client::new(),
            gate,
            streams: Mutex::new(streams_rx),
            shutdown: Some(shutdown),
        }
    }

    /// `GET path` with `Authorization: Bearer key`.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, Some(key)).await
    }

    /// `POST path` with `Authorization: Bearer key`.
    pub async fn post(&self, path: &str, key: &str) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(key)).await
    }

    /// A request with an optional bearer key.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("the server answers")
    }

    /// Lets `count` requests waiting in `/v1/held` finish.
    pub fn release(&self, count: usize) {
        self.gate.add_permits(count);
    }

    /// The chunk sender of the next `/v1/stream` response (in the order the handlers ran); the
    /// body ends when the sender is dropped.
    pub async fn next_stream(&self) -> mpsc::UnboundedSender<Bytes> {
        self.streams
            .lock()
            .await
            .recv()
            .await
            .expect("a /v1/stream handler ran")
    }

    /// An org of the policy in force.
    pub fn org(&self, id: &str) -> Arc<ResolvedOrg> {
        Arc::clone(
            self.layer
                .engine()
                .policy()
                .org(id)
                .expect("an org of the test policy"),
        )
    }

    /// The org's usage now.
    pub async fn usage(&self, id: &str) -> OrgUsage {
        Store::usage(&*self.store, &self.org(id), self.clock.now(), 31)
            .await
            .expect("the memory store answers")
    }

    /// The org's requests in flight now.
    pub async fn in_flight(&self, id: &str) -> u32 {
        self.usage(id).await.in_flight
    }

    /// Every limit's numbers for the org now.
    pub async fn statuses(&self, id: &str) -> Vec<LimitStatus> {
        Store::peek(&*self.store, &self.org(id), self.clock.now())
            .await
            .expect("the memory store answers")
    }

    /// Waits until the org has `count` requests in flight (bounded).
    pub async fn wait_in_flight(&self, id: &str, count: u32) {
        eventually(&format!("{id} has {count} requests in flight"), || async {
            self.in_flight(id).await == count
        })
        .await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.gate.close();
    }
}

/// Polls `condition` every few milliseconds until it holds, failing the test after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..2_000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// One item of a structured-field list: its string name and its integer or string parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldItem {
    /// The item's string value (the quota policy's name).
    pub name: String,
    /// Integer parameters.
    pub integers: HashMap<String, i64>,
    /// String parameters.
    pub strings: HashMap<String, String>,
}

/// Parses a `RateLimit-Policy` or `RateLimit` header with the `sfv` parser (RFC 9651 lists),
/// failing the test if it is not a valid list of string items.
pub fn parse_list(value: &reqwest::header::HeaderValue) -> Vec<FieldItem> {
    let text = value.to_str().expect("an ASCII header");
    let list: List = Parser::new(text)
        .parse()
        .unwrap_or_else(|error| panic!("{text:?} is not a structured-field list: {error}"));
    list.iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("{text:?} has an inner list");
            };
            let BareItem::String(name) = &item.bare_item else {
                panic!("{text:?}: items must be strings");
            };
            let mut integers = HashMap::new();
            let mut strings = HashMap::new();
            for (key, value) in &item.params {
                match value {
                    BareItem::Integer(integer) => {
                        integers.insert(key.as_str().to_owned(), i64::from(*integer));
                    }
                    BareItem::String(string) => {
                        strings.insert(key.as_str().to_owned(), string.as_str().to_owned());
                    }
                    other => panic!("{text:?}: unexpected parameter {other:?}"),
                }
            }
            FieldItem {
                name: name.as_str().to_owned(),
                integers,
                strings,
            }
        })
        .collect()
}

/// A header as an integer.
pub fn int_header(response: &reqwest::Response, name: &str) -> i64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ASCII")
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not an integer"))
}
