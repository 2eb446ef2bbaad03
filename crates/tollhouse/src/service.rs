//! [`RateLimit`]: the service the layer wraps around each route (or around the whole app).
//!
//! `poll_ready` only forwards to the inner service: quota is never waited for there. `call`
//! decides at once when the identification and the store answer at once (the default bearer keys
//! and the memory store do) and then calls the inner service, driven to readiness, straight away;
//! otherwise its [`ResponseFuture`] waits for them. Every outcome (401, 429, 503) is a response, so
//! the error type stays the inner service's and axum needs no `HandleErrorLayer`.
//!
//! # Example
//!
//! See [the `future` module](crate::future).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::engine::Engine;
use crate::future::ResponseFuture;
use crate::identity::{BearerKeys, IdentifyOrg};

/// Meters and limits the requests of an inner service; built by
/// [`RateLimitLayer`](crate::RateLimitLayer).
#[derive(Clone)]
pub struct RateLimit<S, I = BearerKeys> {
    inner: S,
    engine: Arc<Engine>,
    identify: I,
}

impl<S, I> RateLimit<S, I> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>, identify: I) -> Self {
        Self {
            inner,
            engine,
            identify,
        }
    }

    /// The engine shared by every copy of the layer.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, I> fmt::Debug for RateLimit<S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("engine", &self.engine)
            .field("identify", &std::any::type_name::<I>())
            .finish()
    }
}

impl<S, I, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, I>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    I: IdentifyOrg,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, I, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        ResponseFuture::start(&self.engine, &self.identify, &mut self.inner, request)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::error::Error;
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::{get, post};
    use bytes::Bytes;
    use futures_util::FutureExt;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;
    use tollhouse_core::{
        Charge, Decision, LimitStatus, OrgUsage, Outcome, ResolvedOrg, Settlement, Store,
        StoreError, Timestamp, usage::CallRecord,
    };
    use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

    use crate::headers::{
        RATELIMIT, RATELIMIT_POLICY, RETRY_AFTER, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
        X_RATELIMIT_RESET,
    };
    use crate::test_support::{T0, channel_body, fixture, get as get_req, ok, policy, request};
    use crate::{ActualCost, Cost, Identity, Metered, ReportCost, RouterCostExt, Unidentified};

    type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

    fn hello()
    -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
    + Clone {
        service_fn(|_request: Request<Body>| async { ok(Body::from("hello")) })
    }

    /// A handler whose bodies stream what the test sends them; the senders come out of `rx`.
    fn streaming() -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
        + Clone
        + Send
        + 'static,
        mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
    ) {
        let (senders, rx) = mpsc::unbounded_channel();
        let handler = service_fn(move |_request: Request<Body>| {
            let senders = senders.clone();
            async move {
                let (tx, body) = channel_body();
                senders.send(tx).expect("the test holds the receiver");
                ok(body)
            }
        });
        (handler, rx)
    }

    fn acme(layer: &crate::RateLimitLayer) -> Arc<ResolvedOrg> {
        Arc::clone(
            layer
                .engine()
                .policy()
                .org("acme")
                .expect("acme is defined"),
        )
    }

    async fn usage(f: &crate::test_support::Fixture) -> OrgUsage {
        let org = acme(&f.layer);
        Store::usage(&*f.store, &org, f.clock.now_ts(), 31)
            .await
            .expect("the memory store answers")
    }

    async fn statuses(f: &crate::test_support::Fixture) -> Vec<LimitStatus> {
        let org = acme(&f.layer);
        Store::peek(&*f.store, &org, f.clock.now_ts())
            .await
            .expect("the memory store answers")
    }

    trait NowTs {
        fn now_ts(&self) -> Timestamp;
    }

    impl NowTs for tollhouse_core::ManualClock {
        fn now_ts(&self) -> Timestamp {
            tollhouse_core::Clock::now(self)
        }
    }

    async fn json(response: Response<crate::ResponseBody<Body>>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    #[tokio::test]
    async fn admits_with_every_header_and_charges_the_declared_cost() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(hello());
        let response = svc
            .ready()
            .await?
            .call(get_req("/reports", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        // points 15/20 is the most constraining (daily 2499/2500, latency 1000/1000).
        assert_eq!(headers[X_RATELIMIT_LIMIT], "20");
        assert_eq!(headers[X_RATELIMIT_REMAINING], "15");
        assert_eq!(headers[X_RATELIMIT_RESET], (T0 + 30).to_string().as_str());
        assert_eq!(
            headers[RATELIMIT_POLICY],
            r#""points";q=20;w=60, "daily";q=2500;w=86400, "latency";q=1000;w=60, "concurrency";q=2;qu="concurrent-requests""#
        );
        let ratelimit = headers[RATELIMIT].to_str()?;
        assert!(
            ratelimit.starts_with(r#""points";r=15;t=30, "daily";r=2499;t="#),
            "{ratelimit}"
        );
        assert!(
            ratelimit.ends_with(r#""concurrency";r=1;t=0"#),
            "{ratelimit}"
        );
        assert!(headers.get(RETRY_AFTER).is_none());
        let body = response.into_body().collect().await?.to_bytes();
        assert_eq!(&body[..], b"hello");
        assert_eq!(statuses(&f).await[0].remaining, 15);
        Ok(())
    }

    #[tokio::test]
    async fn unidentified_callers_get_401_and_cost_nothing() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(hello());
        let mut malformed = get_req("/reports", None);
        malformed
            .headers_mut()
            .insert("authorization", "Basic YWNtZQ==".parse()?);
        for (request, challenge) in [
            (get_req("/reports", None), "Bearer"),
            (malformed, "Bearer"),
            (get_req("/reports", Some("nobody")), "Bearer"),
        ] {
            let response = svc.ready().await?.call(request).await?;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(response.headers()["www-authenticate"], challenge);
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            assert!(response.headers().get(X_RATELIMIT_LIMIT).is_none());
            assert!(response.headers().get(RATELIMIT).is_none());
            let body = json(response).await;
            assert_eq!(body["status"], 401);
        }
        assert_eq!(f.store.tracked_orgs(), 0, "no state for unknown callers");
        Ok(())
    }

    #[tokio::test]
    async fn two_keys_of_one_org_share_its_limits() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(hello());
        for key in ["acme-key-1", "acme-key-2", "acme-key-1", "acme-key-2"] {
            let response = svc
                .ready()
                .await?
                .call(get_req("/reports", Some(key)))
                .await?;
            assert_eq!(response.status(), StatusCode::OK);
        }
        let response = svc
            .ready()
            .await?
            .call(get_req("/reports", Some("acme-key-2")))
            .await?;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        Ok(())
    }

    #[tokio::test]
    async fn a_rejection_is_a_problem_with_retry_after_and_is_billed() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(hello());
        for _ in 0..4 {
            let response = svc
                .ready()
                .await?
                .call(get_req("/reports?page=1", Some("acme-key-1")))
                .await?;
            assert_eq!(response.status(), StatusCode::OK);
        }
        f.clock.advance(Duration::from_millis(10_400));
        let response = svc
            .ready()
            .await?
            .call(get_req("/reports?page=1", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers().clone();
        // 19.6 s left in the minute: both round up to the boundary.
        assert_eq!(headers[RETRY_AFTER], "20");
        assert_eq!(headers[X_RATELIMIT_RESET], (T0 + 30).to_string().as_str());
        assert_eq!(headers[X_RATELIMIT_REMAINING], "0");
        assert_eq!(headers[X_RATELIMIT_LIMIT], "20");
        assert_eq!(headers["content-type"], "application/problem+json");
        let body = json(response).await;
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
        assert_eq!(body["status"], 429);
        assert_eq!(body["limit"], "points");
        assert_eq!(body["retry_after"], 20);
        assert_eq!(body["violated-policies"], serde_json::json!(["points"]));

        let usage = usage(&f).await;
        assert_eq!(usage.usage.billable_today, 5);
        assert_eq!(usage.usage.calls_today, 4);
        let last = &usage.usage.calls[0];
        assert_eq!(last.status, 429);
        assert_eq!(
            last.outcome,
            Outcome::Rejected {
                limit: "points".into()
            }
        );
        assert_eq!(&*last.path, "/reports?page=1");
        assert_eq!(&*last.key, "…ey-1");
        assert_eq!(usage.usage.calls[1].cost, 5);
        Ok(())
    }

    #[tokio::test]
    async fn a_charge_no_window_can_hold_says_no_retry_will_do() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().cost("GET /huge", 25).layer(hello());
        let response = svc
            .ready()
            .await?
            .call(get_req("/huge", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = json(response).await;
        assert_eq!(body["limit"], "points");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(
                "holds at most 20 and this request needs 25: it cannot be admitted under this plan"
            ),
            "{detail}"
        );
        assert!(body["retry_after"].as_u64().is_some_and(|secs| secs >= 1));
        Ok(())
    }

    #[tokio::test]
    async fn the_permit_is_held_until_the_body_ends_or_is_dropped() -> TestResult {
        let f = fixture(policy(""));
        let (handler, mut senders) = streaming();
        let mut svc = f.layer.clone().layer(handler);
        let first = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        let second = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(
            second.headers()[RATELIMIT].to_str()?.rsplit(", ").next(),
            Some(r#""concurrency";r=0;t=1"#)
        );
        // Both handlers returned their headers; both bodies are still streaming.
        assert_eq!(usage(&f).await.in_flight, 2);
        let third = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.headers()[RETRY_AFTER], "1");
        assert_eq!(third.headers()[X_RATELIMIT_LIMIT], "2");
        assert_eq!(json(third).await["limit"], "concurrency");

        let tx = senders.recv().await.expect("first sender");
        tx.send(Bytes::from_static(b"chunk"))?;
        let mut first_body = first.into_body();
        let frame = first_body.frame().await.expect("a frame")?;
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"chunk"[..]));
        assert_eq!(usage(&f).await.in_flight, 2, "mid-body, the permit is held");
        drop(tx);
        assert!(first_body.frame().await.is_none());
        assert_eq!(
            usage(&f).await.in_flight,
            1,
            "released at the end of the body"
        );

        drop(second); // a client that hangs up before reading the body
        assert_eq!(
            usage(&f).await.in_flight,
            0,
            "released when the body is dropped"
        );
        let fourth = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(fourth.status(), StatusCode::OK);
        Ok(())
    }

    #[tokio::test]
    async fn a_cancelled_or_panicking_request_frees_its_permit() -> TestResult {
        let f = fixture(policy(""));
        let pending = service_fn(|_request: Request<Body>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        });
        let mut svc = f.layer.clone().layer(pending);
        let mut future = Box::pin(
            svc.ready()
                .await?
                .call(get_req("/items", Some("acme-key-1"))),
        );
        assert!((&mut future).now_or_never().is_none());
        assert_eq!(usage(&f).await.in_flight, 1);
        drop(future); // a timeout, or hyper dropping the connection
        assert_eq!(usage(&f).await.in_flight, 0);
        assert_eq!(usage(&f).await.usage.calls[0].status, 499);

        let panicking = service_fn(|_request: Request<Body>| async {
            if true {
                panic!("handler bug");
            }
            ok(Body::empty())
        });
        let mut svc = f.layer.clone().layer(panicking);
        let future = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")));
        let outcome = AssertUnwindSafe(future).catch_unwind().await;
        assert!(outcome.is_err(), "the panic reached the caller");
        assert_eq!(usage(&f).await.in_flight, 0);

        // Behind CatchPanic, inside the layer: a 500 whose body ends normally.
        let caught = ServiceBuilder::new()
            .layer(f.layer.clone())
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .service(service_fn(|_request: Request<Body>| async {
                if true {
                    panic!("handler bug");
                }
                ok(Body::empty())
            }));
        let response = caught
            .oneshot(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(usage(&f).await.in_flight, 1, "the body is not finished");
        response.into_body().collect().await?;
        assert_eq!(usage(&f).await.in_flight, 0);
        assert_eq!(usage(&f).await.usage.calls[0].status, 500);
        Ok(())
    }

    #[tokio::test]
    async fn latency_is_measured_until_the_body_ends_and_charged() -> TestResult {
        let f = fixture(policy(""));
        let (handler, mut senders) = streaming();
        let mut svc = f.layer.clone().layer(handler);
        let response = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        f.clock.advance(Duration::from_millis(600));
        drop(senders.recv().await);
        response.into_body().collect().await?;
        assert_eq!(statuses(&f).await[2].remaining, 400);
        assert_eq!(usage(&f).await.usage.calls[0].latency_ms, 600);

        // Still more than zero: admitted, and it runs into debt.
        let response = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        f.clock.advance(Duration::from_millis(500));
        drop(senders.recv().await);
        response.into_body().collect().await?;
        assert_eq!(statuses(&f).await[2].remaining, 0);

        let rejected = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(rejected.status(), StatusCode::TOO_MANY_REQUESTS);
        // 30 s - 1.1 s left in the minute.
        assert_eq!(rejected.headers()[RETRY_AFTER], "29");
        assert_eq!(json(rejected).await["limit"], "latency");
        Ok(())
    }

    #[tokio::test]
    async fn handlers_correct_the_cost_after_the_fact() -> TestResult {
        let f = fixture(policy(""));
        let app = Router::new()
            .route(
                "/search",
                get(|cost: ReportCost| async move {
                    cost.set(3);
                    "found"
                }),
            )
            .route("/batch", post(|| async { (ActualCost(8), "done") }))
            .route(
                "/reports",
                get(|metered: Metered| async move {
                    metered.report_cost(2);
                    "cheap"
                }),
            )
            .layer(f.layer.clone());
        for (request, remaining_after) in [
            (get_req("/search", Some("acme-key-1")), 17),
            (request("POST", "/batch", Some("acme-key-1")), 9),
            (get_req("/reports", Some("acme-key-1")), 7),
        ] {
            let response = app.clone().oneshot(request).await?;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.extensions().get::<ActualCost>().is_none());
            response.into_body().collect().await?;
            assert_eq!(statuses(&f).await[0].remaining, remaining_after);
        }
        let costs: Vec<u64> = usage(&f).await.usage.calls.iter().map(|c| c.cost).collect();
        assert_eq!(costs, [2, 8, 3]);
        Ok(())
    }

    #[tokio::test]
    async fn exempt_routes_are_not_limited_but_recorded_and_billable() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(hello());
        for _ in 0..30 {
            let response = svc
                .ready()
                .await?
                .call(get_req("/files/7", Some("acme-key-1")))
                .await?;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.headers().get(X_RATELIMIT_LIMIT).is_none());
            assert!(response.headers().get(RATELIMIT_POLICY).is_none());
        }
        let response = svc
            .ready()
            .await?
            .call(request("POST", "/hooks/forms", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
        assert_eq!(statuses(&f).await[0].remaining, 20, "nothing charged");
        assert_eq!(statuses(&f).await[1].remaining, 2500, "nothing counted");
        let usage = usage(&f).await;
        assert_eq!(usage.usage.billable_today, 30);
        assert_eq!(usage.usage.calls_today, 0);
        assert_eq!(usage.usage.calls.len(), 31);
        assert_eq!(usage.usage.calls[0].outcome, Outcome::Exempt);
        assert!(!usage.usage.calls[0].billable);
        assert_eq!(usage.usage.calls[1].route.as_deref(), Some("/files/{id}"));
        Ok(())
    }

    /// A plan whose org ("patient") waits up to 500 ms for its one concurrency slot.
    const WAITING: &str = r#"
[plans.waiting]
concurrency = 1
concurrency_wait_ms = 500

[[plans.waiting.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 100 }]

[[orgs]]
id = "patient"
plan = "waiting"
keys = ["patient-key"]
"#;

    #[tokio::test(start_paused = true)]
    async fn a_plan_may_wait_for_a_concurrency_slot() -> TestResult {
        let f = fixture(policy(WAITING));
        let (handler, mut senders) = streaming();
        let mut svc = f.layer.clone().layer(handler);
        let first = svc
            .ready()
            .await?
            .call(get_req("/items", Some("patient-key")))
            .await?;
        let mut waiting = svc.clone();
        let second = tokio::spawn(async move {
            let request = get_req("/items", Some("patient-key"));
            waiting.ready().await?.call(request).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "the second request waits for the slot"
        );
        drop(senders.recv().await);
        first.into_body().collect().await?;
        let second = second.await??;
        assert_eq!(second.status(), StatusCode::OK);

        // With the slot held past the wait, the third is rejected after 500 ms.
        let started = tokio::time::Instant::now();
        let third = svc
            .ready()
            .await?
            .call(get_req("/items", Some("patient-key")))
            .await?;
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(started.elapsed() >= Duration::from_millis(500));
        drop(second);
        Ok(())
    }

    /// A store whose every call fails, but for records, which it keeps.
    #[derive(Debug, Default)]
    struct DownStore {
        recorded: std::sync::Mutex<Vec<CallRecord>>,
    }

    impl Store for DownStore {
        fn admit(
            &self,
            _org: &Arc<ResolvedOrg>,
            _charge: Charge,
            _now: Timestamp,
        ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
            std::future::ready(Err(StoreError::Timeout(Duration::from_millis(50))))
        }
        fn settle(
            &self,
            _org: &Arc<ResolvedOrg>,
            _settlement: Settlement,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            std::future::ready(Err(StoreError::Timeout(Duration::from_millis(50))))
        }
        fn record(
            &self,
            _org: &Arc<ResolvedOrg>,
            call: CallRecord,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            if let Ok(mut recorded) = self.recorded.lock() {
                recorded.push(call);
            }
            std::future::ready(Ok(()))
        }
        fn peek(
            &self,
            _org: &Arc<ResolvedOrg>,
            _now: Timestamp,
        ) -> impl Future<Output = Result<Vec<LimitStatus>, StoreError>> + Send {
            std::future::ready(Err(StoreError::Timeout(Duration::from_millis(50))))
        }
        fn reset(
            &self,
            _org: &Arc<ResolvedOrg>,
            _limit: Option<&str>,
        ) -> impl Future<Output = Result<(), StoreError>> + Send {
            std::future::ready(Err(StoreError::Timeout(Duration::from_millis(50))))
        }
        fn usage(
            &self,
            _org: &Arc<ResolvedOrg>,
            _now: Timestamp,
            _days: usize,
        ) -> impl Future<Output = Result<OrgUsage, StoreError>> + Send {
            std::future::ready(Err(StoreError::Timeout(Duration::from_millis(50))))
        }
    }

    #[tokio::test]
    async fn a_failing_store_fails_open_or_closed_as_configured() -> TestResult {
        let store = Arc::new(DownStore::default());
        let open = crate::RateLimitLayer::new(policy("")).with_store(Arc::clone(&store) as _);
        let response = open
            .layer(hello())
            .oneshot(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(X_RATELIMIT_LIMIT).is_none());
        drop(response);
        // Served, so billable: recorded, with nothing charged.
        let recorded = store
            .recorded
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!((recorded[0].status, recorded[0].cost), (200, 0));
        assert!(recorded[0].billable);

        let closed = crate::RateLimitLayer::new(policy("[server]\non_store_error = \"deny\""))
            .with_store(Arc::new(DownStore::default()));
        let response = closed
            .layer(hello())
            .oneshot(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_shadow_plan_reports_but_lets_through() -> TestResult {
        let f = fixture(policy(
            r#"
[plans.trial]
shadow = true
concurrency = 2

[[plans.trial.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 1 }]

[[orgs]]
id = "trial"
plan = "trial"
keys = ["trial-key-1"]
"#,
        ));
        let app = Router::new()
            .route(
                "/items",
                get(|metered: Metered| async move { metered.is_shadow_rejected().to_string() }),
            )
            .layer(f.layer.clone());
        let first = app
            .clone()
            .oneshot(get_req("/items", Some("trial-key-1")))
            .await?;
        assert_eq!(&first.into_body().collect().await?.to_bytes()[..], b"false");
        let second = app.oneshot(get_req("/items", Some("trial-key-1"))).await?;
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(second.headers()[X_RATELIMIT_REMAINING], "0");
        assert!(second.headers().get(RETRY_AFTER).is_none());
        // Every item of `RateLimit-Policy` is in `RateLimit`, the concurrency slots too (a request
        // let through by a shadow plan holds none).
        assert_eq!(
            second.headers()[RATELIMIT],
            r#""daily";r=0;t=50370, "concurrency";r=2;t=0"#
        );
        assert_eq!(&second.into_body().collect().await?.to_bytes()[..], b"true");
        Ok(())
    }

    #[tokio::test]
    async fn identification_by_sync_and_async_closures() -> TestResult {
        let f = fixture(policy(""));
        let by_header = f.layer.clone().identify(
            |parts: &http::request::Parts,
             policy: &Arc<tollhouse_core::Policy>|
             -> Result<Identity, Unidentified> {
                let tenant = parts
                    .headers
                    .get("x-tenant")
                    .ok_or(Unidentified::Missing)?
                    .to_str()
                    .map_err(|_| Unidentified::Malformed)?;
                let org = policy.org(tenant).ok_or(Unidentified::Unknown)?;
                Ok(Identity::new(Arc::clone(org), tenant))
            },
        );
        let mut request = get_req("/reports", None);
        request.headers_mut().insert("x-tenant", "acme".parse()?);
        let response = by_header.layer(hello()).oneshot(request).await?;
        assert_eq!(response.headers()[X_RATELIMIT_REMAINING], "15");

        // An org that only a "database" knows, resolved against the policy's plans.
        let from_db = f.layer.clone().identify(
            |parts: &http::request::Parts, _policy: &Arc<tollhouse_core::Policy>| {
                let key = crate::identity::bearer_token(parts).map(str::to_owned);
                async move {
                    tokio::task::yield_now().await;
                    let key = key?;
                    if key != "db-key" {
                        return Err(Unidentified::Unknown);
                    }
                    Ok(Identity::from_org(
                        tollhouse_core::Org::new("db-org", "build"),
                        &key,
                    ))
                }
            },
        );
        let svc = from_db.layer(hello());
        let response = svc
            .clone()
            .oneshot(get_req("/reports", Some("db-key")))
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[X_RATELIMIT_REMAINING], "15");
        let response = svc
            .clone()
            .oneshot(get_req("/reports", Some("db-key")))
            .await?;
        assert_eq!(response.headers()[X_RATELIMIT_REMAINING], "10");
        let response = svc.oneshot(get_req("/reports", Some("other"))).await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // Acme's own counts were untouched by the db org.
        assert_eq!(statuses(&f).await[0].remaining, 15);
        Ok(())
    }

    /// A service that must be driven to readiness before each call, as tower requires (a clone
    /// is not ready): it answers 200 only if the instance called is the one made ready.
    #[derive(Debug, Default)]
    struct MustBeReady {
        ready: bool,
    }

    impl Clone for MustBeReady {
        fn clone(&self) -> Self {
            Self { ready: false }
        }
    }

    impl Service<Request<Body>> for MustBeReady {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            self.ready = true;
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<Body>) -> Self::Future {
            let mut response = Response::new(Body::empty());
            if !std::mem::take(&mut self.ready) {
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_service_called_is_the_one_made_ready() -> TestResult {
        let f = fixture(policy(WAITING));
        // Decided inside `call` (bearer keys, memory store).
        let response = f
            .layer
            .clone()
            .layer(MustBeReady::default())
            .oneshot(get_req("/items", Some("acme-key-1")))
            .await?;
        assert_eq!(response.status(), StatusCode::OK);

        // Decided in the future: an async identification ...
        let deferred = f.layer.clone().identify(
            |_parts: &http::request::Parts, policy: &Arc<tollhouse_core::Policy>| {
                let org = policy.org("acme").map(Arc::clone);
                async move {
                    tokio::task::yield_now().await;
                    Ok(Identity::new(org.ok_or(Unidentified::Unknown)?, "acme"))
                }
            },
        );
        let response = deferred
            .layer(MustBeReady::default())
            .oneshot(get_req("/items", None))
            .await?;
        assert_eq!(response.status(), StatusCode::OK);

        // ... and a wait for a concurrency slot.
        let (handler, mut senders) = streaming();
        let mut streaming_svc = f.layer.clone().layer(handler);
        let first = streaming_svc
            .ready()
            .await?
            .call(get_req("/items", Some("patient-key")))
            .await?;
        let mut svc = f.layer.clone().layer(MustBeReady::default());
        let second = tokio::spawn(async move {
            let request = get_req("/items", Some("patient-key"));
            svc.ready().await?.call(request).await
        });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "the second request waits for the slot"
        );
        drop(senders.recv().await);
        first.into_body().collect().await?;
        assert_eq!(second.await??.status(), StatusCode::OK);
        Ok(())
    }

    #[tokio::test]
    async fn a_replaced_policy_keeps_the_counts() -> TestResult {
        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(hello());
        svc.ready()
            .await?
            .call(get_req("/reports", Some("acme-key-1")))
            .await?;
        let text = r#"
[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 40 }]

[[orgs]]
id = "acme"
plan = "build"
keys = ["acme-key-1"]
"#;
        f.layer
            .replace_policy(tollhouse_core::Policy::from_toml_str(
                text,
                "next.toml".as_ref(),
            )?);
        let response = svc
            .ready()
            .await?
            .call(get_req("/items", Some("acme-key-1")))
            .await?;
        // 40 - 5 (before the change) - 1 (now); no route rules any more, so /items costs 1.
        assert_eq!(response.headers()[X_RATELIMIT_REMAINING], "34");
        assert_eq!(response.headers()[X_RATELIMIT_LIMIT], "40");
        Ok(())
    }

    #[tokio::test]
    async fn costs_declared_in_code_win_over_the_file() -> TestResult {
        let f = fixture(policy(""));
        let limits = f.layer.clone().cost("GET /reports", 7);
        let app: Router = Router::new()
            .route("/reports", get(|| async { "report" }))
            .route_with_cost("/bulk", post(|| async { "ok" }), &limits, Cost::points(3))
            .route_with_cost(
                "/reports/{id}/download",
                get(|| async { "bytes" }),
                &limits,
                Cost::exempt(),
            )
            .layer(limits.clone());
        let response = app
            .clone()
            .oneshot(get_req("/reports", Some("acme-key-1")))
            .await?;
        assert_eq!(response.headers()[X_RATELIMIT_REMAINING], "13");
        let response = app
            .clone()
            .oneshot(request("POST", "/bulk", Some("acme-key-1")))
            .await?;
        assert_eq!(response.headers()[X_RATELIMIT_REMAINING], "10");
        let response = app
            .oneshot(get_req("/reports/9/download", Some("acme-key-1")))
            .await?;
        assert!(response.headers().get(X_RATELIMIT_REMAINING).is_none());
        assert_eq!(statuses(&f).await[0].remaining, 10);
        Ok(())
    }

    #[tokio::test]
    async fn each_placement_counts_what_its_docs_say() -> TestResult {
        // route_layer: an unmatched route is not charged and gets no headers.
        let f = fixture(policy(""));
        let app: Router = Router::new()
            .route("/reports", get(|| async { "report" }))
            .route_layer(f.layer.clone());
        let missing = app
            .clone()
            .oneshot(get_req("/nowhere", Some("acme-key-1")))
            .await?;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.headers().get(X_RATELIMIT_LIMIT).is_none());
        let found = app.oneshot(get_req("/reports", Some("acme-key-1"))).await?;
        assert_eq!(found.headers()[X_RATELIMIT_REMAINING], "15");
        assert_eq!(statuses(&f).await[1].remaining, 2499);

        // layer: the fallback is metered too.
        let f = fixture(policy(""));
        let app: Router = Router::new()
            .route("/reports", get(|| async { "report" }))
            .layer(f.layer.clone());
        let missing = app.oneshot(get_req("/nowhere", Some("acme-key-1"))).await?;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[X_RATELIMIT_REMAINING], "19");

        // Around the whole router: rules match the raw path.
        let f = fixture(policy(""));
        let router: Router = Router::new()
            .route("/reports", get(|| async { "report" }))
            .route("/files/{id}", get(|| async { "bytes" }));
        let app = ServiceBuilder::new().layer(f.layer.clone()).service(router);
        let report = app
            .clone()
            .oneshot(get_req("/reports", Some("acme-key-1")))
            .await?;
        assert_eq!(report.headers()[X_RATELIMIT_REMAINING], "15");
        let file = app
            .oneshot(get_req("/files/42", Some("acme-key-1")))
            .await?;
        assert_eq!(file.status(), StatusCode::OK);
        assert!(file.headers().get(X_RATELIMIT_REMAINING).is_none());
        drop(file);
        let usage = usage(&f).await;
        assert_eq!(usage.usage.calls[0].route.as_deref(), Some("/files/{id}"));
        Ok(())
    }

    #[tokio::test]
    async fn handlers_see_the_decision() -> TestResult {
        let f = fixture(policy(""));
        let app: Router = Router::new()
            .route(
                "/reports",
                get(|metered: Metered| async move {
                    let statuses = metered.statuses();
                    format!(
                        "{} {} {:?} {} {} {}",
                        metered.org_id(),
                        metered.key_label(),
                        metered.remaining("points"),
                        metered.reset("points").map_or(0, |r| r.as_millis() / 1000),
                        statuses.len() == metered.org().limits().len(),
                        statuses
                            .iter()
                            .any(|s| Some(*s) == metered.status("points")),
                    )
                }),
            )
            .route(
                "/files/{id}",
                get(|metered: Option<Metered>| async move {
                    metered
                        .map(|m| m.is_exempt())
                        .unwrap_or_default()
                        .to_string()
                }),
            )
            .layer(f.layer.clone());
        let response = app
            .clone()
            .oneshot(get_req("/reports", Some("acme-key-1")))
            .await?;
        let body = response.into_body().collect().await?.to_bytes();
        assert_eq!(
            std::str::from_utf8(&body)?,
            format!("acme …ey-1 Some(15) {} true true", T0 + 30)
        );
        let response = app.oneshot(get_req("/files/1", Some("acme-key-1"))).await?;
        assert_eq!(
            &response.into_body().collect().await?.to_bytes()[..],
            b"true"
        );
        Ok(())
    }
}
