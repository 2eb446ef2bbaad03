//! [`ResponseFuture`]: identify, classify, admit, call the inner service, add the headers.
//!
//! A decision has three steps. The org is identified ([`IdentifyOrg`]); an exempt route goes
//! straight to the inner service. A metered one is admitted by the store; a rejection becomes a
//! 429 at once. Once admitted, the inner service runs, and its response gets the rate-limit headers
//! and a [`ResponseBody`] that holds the permit and the timer until the body ends.
//!
//! When the identification and the store answer at once ([`IdentifyOrg::try_identify`],
//! `Store::try_admit`), all of it happens inside `call`, and the future only wraps the inner
//! service's. Otherwise the future waits, in a box that owns the request and the ready inner
//! service: for an async identification, for a store over the network, or for a concurrency slot
//! when the plan allows waiting for one.
//!
//! # Example
//!
//! Driving the service by hand, as the unit tests do:
//!
//! ```
//! use std::convert::Infallible;
//! use axum::body::Body;
//! use axum::http::{Request, Response, StatusCode};
//! use tollhouse::{Policy, RateLimitLayer};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_toml_str(r#"
//! [[plans.build.limits]]
//! name = "daily"
//! dimension = "requests"
//! tiers = [{ window = "day", capacity = 1 }]
//! [[orgs]]
//! id = "acme"
//! plan = "build"
//! keys = ["acme-key-1"]
//! "#, "policy.toml".as_ref())?;
//! let handler = service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
//! let mut svc = RateLimitLayer::new(policy).layer(handler);
//! let request = || Request::get("/v1/items").header("authorization", "Bearer acme-key-1").body(Body::empty());
//! let first = svc.ready().await?.call(request()?).await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.headers()["x-ratelimit-remaining"], "0");
//! let second = svc.ready().await?.call(request()?).await?;
//! assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use arc_swap::Guard;
use axum::extract::{MatchedPath, OriginalUri};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use smallvec::SmallVec;
use tollhouse_core::UsageQuery;
use tollhouse_core::usage::{MAX_PATH_BYTES, OTHER_METHOD, bounded_path, usage_target};
use tollhouse_core::{
    BoxFuture, CallRecord, Charge, Decision, LimitStatus, OnStoreError, Outcome, Policy,
    RejectReason, ResolvedOrg, Snapshot, StoreError, Timestamp, Treatment, Verdict, admit_waiting,
};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::cost::ActualCost;
use crate::engine::Engine;
use crate::extract::Metered;
use crate::finish::{self, Finish};
use crate::headers::{HeaderBuilder, HeaderSet, Inputs, RETRY_AFTER, Slots, slot_retry};
use crate::identity::{Identified, IdentifyOrg, Identity, Refusal, Unidentified};
use crate::problem::{Cause, Problem};
use crate::rejection::Rejection;
use crate::telemetry::{self, Remaining};
use crate::templates;

/// Every limit's numbers after a decision, computed once for the headers and the events.
type Statuses = SmallVec<[LimitStatus; 3]>;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    ///
    /// See the [module documentation](self).
    pub struct ResponseFuture<S, I, B>
    where
        S: Service<Request<B>>,
        I: IdentifyOrg,
    {
        #[pin]
        state: State<S::Future, Waiting<I::Future, S, B>>,
        // Boxed, with the response's headers: it goes on into the body.
        finish: Option<Box<Finish>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, W> {
        // Identification or the store has to be waited for (boxed: it holds the request).
        Waiting {
            future: Pin<Box<W>>,
        },
        // The inner service is running.
        Called {
            #[pin]
            future: F,
        },
        // The layer answers itself (401, 429, 503).
        Answered {
            response: Option<Response<Bytes>>,
        },
        Done,
    }
}

/// What the store's answer comes with when it had to be waited for.
type Admitted = BoxFuture<'static, (Result<Decision, StoreError>, Admission)>;

/// The inner service (ready) and the request, while the decision is waited for. The head is
/// away while an identification holds it.
struct Pending<S, B> {
    inner: S,
    head: Option<Parts>,
    body: B,
}

impl<S, B> Pending<S, B> {
    /// The request, whole again.
    fn into_call(self) -> (S, Request<B>) {
        let Some(head) = self.head else {
            panic!("tollhouse: the request head was not given back by its identification")
        };
        (self.inner, Request::from_parts(head, self.body))
    }
}

/// What each step of a decision needs.
#[derive(Clone, Copy)]
struct Meter<'a> {
    engine: &'a Arc<Engine>,
    policy: &'a Policy,
    started: Instant,
}

/// An identified request on a metered route, waiting for the store.
struct Admission {
    org: Arc<ResolvedOrg>,
    key: Arc<str>,
    treatment: Treatment,
    charge: Charge,
    call: CallRecord,
}

/// What a step leads to.
enum Step {
    /// Answer without calling the inner service.
    Answer(Response<Bytes>),
    /// Wait for the store.
    Admit(Admitted),
    /// Let the request through; the finish state (if metered) goes with the response.
    Call(Option<Box<Finish>>),
}

impl<S, I, B> ResponseFuture<S, I, B>
where
    S: Service<Request<B>>,
    I: IdentifyOrg,
{
    /// Decides `request`: inside `call` when the identification and the store answer at once
    /// (the inner service, driven to readiness, is called at once), otherwise in a boxed future
    /// that takes the ready inner service with it and leaves a clone in its place.
    pub(crate) fn start(
        engine: &Arc<Engine>,
        identify: &I,
        inner: &mut S,
        request: Request<B>,
    ) -> Self
    where
        S: Clone,
    {
        let started = Instant::now();
        let policy = engine.policy_for_decision();
        let (mut head, body) = request.into_parts();
        let Some(identity) = identify.try_identify(&head, &policy) else {
            let future = identify.identify(head, &policy);
            let step = WaitStep::Identifying { future };
            let pending = Pending {
                inner: take_ready(inner),
                head: None,
                body,
            };
            return Self::waiting(step, pending, engine, Guard::into_inner(policy), started);
        };
        let meter = Meter {
            engine,
            policy: &policy,
            started,
        };
        match identified(meter, &mut head, identity) {
            Step::Answer(response) => Self::answered(response),
            Step::Call(finish) => Self {
                state: State::Called {
                    future: inner.call(Request::from_parts(head, body)),
                },
                finish,
            },
            Step::Admit(future) => {
                let pending = Pending {
                    inner: take_ready(inner),
                    head: Some(head),
                    body,
                };
                let step = WaitStep::Admitting { future };
                Self::waiting(step, pending, engine, Guard::into_inner(policy), started)
            }
        }
    }

    fn answered(response: Response<Bytes>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
            finish: None,
        }
    }

    /// Waits for `step` in a box that takes the ready inner service and the request.
    fn waiting(
        step: WaitStep<I::Future>,
        pending: Pending<S, B>,
        engine: &Arc<Engine>,
        policy: Arc<Policy>,
        started: Instant,
    ) -> Self {
        Self {
            state: State::Waiting {
                future: Box::pin(Waiting {
                    step,
                    pending: Some(pending),
                    engine: Arc::clone(engine),
                    policy,
                    started,
                }),
            },
            finish: None,
        }
    }
}

/// The inner service driven to readiness, leaving a clone (not yet ready) in its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

impl<S, I, B> fmt::Debug for ResponseFuture<S, I, B>
where
    S: Service<Request<B>>,
    I: IdentifyOrg,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Called { .. } => "called",
            State::Answered { .. } => "answered",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, I, B, ResBody> Future for ResponseFuture<S, I, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    I: IdentifyOrg,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { future } => match ready!(future.as_mut().poll(cx)) {
                    Waited::Answer(response) => this.state.set(State::Answered {
                        response: Some(response),
                    }),
                    Waited::Call { pending, finish } => {
                        let (mut inner, request) = pending.into_call();
                        *this.finish = finish;
                        this.state.set(State::Called {
                            future: inner.call(request),
                        });
                    }
                },
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(match result {
                        Ok(response) => Ok(respond(this.finish.take(), response)),
                        Err(error) => {
                            if let Some(mut finish) = this.finish.take() {
                                finish.set_status(500);
                            }
                            Err(error)
                        }
                    });
                }
                StateProj::Answered { response } => {
                    let response = response.take();
                    this.state.set(State::Done);
                    if let Some(response) = response {
                        return Poll::Ready(Ok(response.map(ResponseBody::full)));
                    }
                }
                StateProj::Done => {
                    panic!("tollhouse's ResponseFuture was polled after it completed")
                }
            }
        }
    }
}

pin_project! {
    /// A decision that waits for the identification or the store.
    struct Waiting<Id, S, B> {
        #[pin]
        step: WaitStep<Id>,
        // Taken when the request is let through.
        pending: Option<Pending<S, B>>,
        engine: Arc<Engine>,
        policy: Arc<Policy>,
        started: Instant,
    }
}

pin_project! {
    #[project = WaitStepProj]
    enum WaitStep<Id> {
        Identifying {
            #[pin]
            future: Id,
        },
        Admitting {
            future: Admitted,
        },
    }
}

/// Where a wait ends.
enum Waited<S, B> {
    Answer(Response<Bytes>),
    Call {
        pending: Pending<S, B>,
        finish: Option<Box<Finish>>,
    },
}

impl<Id, S, B> Future for Waiting<Id, S, B>
where
    Id: Future<Output = Identified>,
{
    type Output = Waited<S, B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let meter = Meter {
                engine: this.engine,
                policy: this.policy,
                started: *this.started,
            };
            let Some(pending) = this.pending.as_mut() else {
                panic!("tollhouse's decision was polled after it completed")
            };
            let step = match this.step.as_mut().project() {
                WaitStepProj::Identifying { future } => {
                    let (head, identity) = ready!(future.poll(cx));
                    identified(meter, pending.head.insert(head), identity)
                }
                WaitStepProj::Admitting { future } => {
                    let (decision, admission) = ready!(future.as_mut().poll(cx));
                    let now = meter.engine.now();
                    let Some(head) = pending.head.as_mut() else {
                        panic!("tollhouse: a request was admitted without its head")
                    };
                    decided(meter, head, admission, decision, now)
                }
            };
            match step {
                Step::Answer(response) => return Poll::Ready(Waited::Answer(response)),
                Step::Admit(future) => this.step.set(WaitStep::Admitting { future }),
                Step::Call(finish) => {
                    if let Some(pending) = this.pending.take() {
                        return Poll::Ready(Waited::Call { pending, finish });
                    }
                }
            }
        }
    }
}

/// The org is known (or not): answer 401, let an exempt route through, or ask the store.
fn identified(meter: Meter<'_>, request: &mut Parts, identity: Result<Identity, Refusal>) -> Step {
    let identity = match identity {
        Ok(identity) => identity,
        Err(refusal) => return refused(meter, refusal),
    };
    let (org, key, extensions) = match identity.resolve_with_extensions(meter.policy) {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::error!(%error, "tollhouse: the identified org does not fit the policy");
            let problem = Problem::new(
                Cause::OrgNotInPolicy,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "the organisation's plan is not defined by the server's policy".into(),
            );
            return Step::Answer(problem.shaped(meter.engine.shape_problem()).response());
        }
    };
    if let Some(extensions) = extensions {
        request.extensions.extend(*extensions);
    }
    let engine = meter.engine;
    let matched = request.extensions.get::<MatchedPath>();
    let path = matched.map_or_else(|| request.uri.path(), MatchedPath::as_str);
    let classified = engine.classify(
        meter.policy,
        request.method.as_str(),
        path,
        matched.is_none(),
    );
    let route = matched
        .map(|matched| templates::shared(matched.as_str()))
        .or(classified.pattern);
    let arrived = engine.now();
    // Built whole: `CallRecord::new` would allocate an empty key first.
    let (path, path_len) = target(request, route.as_ref(), &meter.policy.server().usage_query);
    let mut call = CallRecord {
        at: arrived,
        key: Arc::clone(&key),
        method: method_label(&request.method),
        path,
        path_len,
        route,
        status: 200,
        cost: 1,
        latency_ms: 0,
        outcome: Outcome::Admitted,
        billable: true,
        logged: true,
    };
    match classified.treatment {
        Treatment::Exempt { billable } => {
            call.outcome = Outcome::Exempt;
            call.billable = billable;
            call.cost = 0;
            tracing::debug!(
                org = org.id().as_str(),
                route = call.route.as_deref(),
                billable,
                "tollhouse: exempt"
            );
            telemetry::decision("exempt", None, meter.started);
            request.extensions.insert(Metered::new(
                Arc::clone(&org),
                key,
                classified.treatment,
                Snapshot::default(),
                false,
                false,
            ));
            Step::Call(Some(Box::new(Finish::recorded(
                Arc::clone(engine),
                org,
                call,
            ))))
        }
        Treatment::Cost(points) => {
            let charge = Charge::points(points.min(tollhouse_core::MAX_COST));
            // A store that answers at once (the memory store) needs no boxed future, unless the
            // org is full and its plan says to wait for a slot.
            let admission = Admission {
                org,
                key,
                treatment: classified.treatment,
                charge,
                call,
            };
            let immediate = engine.store().try_admit(&admission.org, charge, arrived);
            match immediate {
                Some(decision) if !must_wait(&admission.org, &decision) => {
                    decided(meter, request, admission, decision, arrived)
                }
                _ => Step::Admit(admit(Arc::clone(engine), admission)),
            }
        }
    }
}

/// Whether an immediate answer is a concurrency rejection that [`admit_waiting`] would wait out.
fn must_wait(org: &ResolvedOrg, decision: &Result<Decision, StoreError>) -> bool {
    matches!(
        decision,
        Ok(Decision {
            verdict: Verdict::Rejected {
                reason: RejectReason::Concurrency,
                ..
            },
            ..
        })
    ) && org
        .concurrency()
        .is_some_and(|concurrency| !concurrency.wait().is_zero())
}

/// Asks the store, waiting up to the plan's `concurrency_wait_ms` for a slot.
fn admit(engine: Arc<Engine>, admission: Admission) -> Admitted {
    Box::pin(async move {
        let decision = admit_waiting(
            &**engine.store(),
            &admission.org,
            admission.charge,
            &**engine.clock(),
        )
        .await;
        (decision, admission)
    })
}

/// The store answered at `now`: let the request through with its headers, or answer 429 (or 503).
fn decided(
    meter: Meter<'_>,
    request: &mut Parts,
    admission: Admission,
    decision: Result<Decision, StoreError>,
    now: Timestamp,
) -> Step {
    let Admission {
        org,
        key,
        treatment,
        charge,
        mut call,
    } = admission;
    let engine = meter.engine;
    let server = meter.policy.server();
    let Decision {
        verdict,
        permit,
        in_flight,
    } = match decision {
        Ok(decision) => decision,
        Err(error) => {
            engine.store_failed("admit", &error);
            telemetry::decision("store_error", None, meter.started);
            return match server.on_store_error {
                // Served, so billable: recorded when it ends, with nothing charged (the store
                // that would have counted it is the one failing, so the record may fail too).
                OnStoreError::Allow => {
                    call.cost = 0;
                    Step::Call(Some(Box::new(Finish::recorded(
                        Arc::clone(engine),
                        org,
                        call,
                    ))))
                }
                OnStoreError::Deny => {
                    let mut response = Problem::new(
                        Cause::StoreUnavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable",
                        "the rate limiter cannot reach its store; try again shortly".into(),
                    )
                    .shaped(engine.shape_problem())
                    .response::<Bytes>();
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    Step::Answer(response)
                }
            };
        }
    };
    match verdict {
        Verdict::Admitted { snapshot, receipt } => {
            let slots = Slots::of(&org, in_flight.or(Some(1)));
            // Each limit's numbers are computed once, written into the headers and checked for
            // the 80% event, one limit at a time.
            let quotas = engine.quotas(&org, now);
            let mut builder = HeaderBuilder::new(server, &quotas, now);
            for status in snapshot.iter(&org) {
                builder.limit(&status);
                telemetry::passed_80(&org, &status, charge);
            }
            let fresh = (!builder.fits()).then(|| engine.fresh_quotas(&org, now));
            let legacy = builder
                .most_constraining()
                .or_else(|| slots.map(|slots| slots.legacy(now)));
            let headers = builder.finish(
                fresh.as_deref().unwrap_or(&quotas),
                legacy,
                slots,
                slot_retry(now),
                None,
            );
            let quotas = fresh.unwrap_or(quotas);
            telemetry::admitted(&org, &snapshot, charge);
            telemetry::decision("admitted", None, meter.started);
            let metered = Metered::new(Arc::clone(&org), key, treatment, snapshot, true, false);
            // `ReportCost` is extracted from the `Metered` extension.
            let report = metered.report_handle();
            request.extensions.insert(metered);
            let mut finish = Box::new(Finish::recorded(Arc::clone(engine), org, call));
            finish.charge(receipt, charge.points, report, permit, quotas);
            finish.set_headers(headers);
            Step::Call(Some(finish))
        }
        Verdict::Rejected {
            reason,
            retry_at,
            violated,
            snapshot,
        } => {
            let statuses: Statuses = snapshot.iter(&org).collect();
            let rejection = Rejection::new(
                &org,
                reason,
                retry_at,
                &violated,
                &statuses,
                Slots::of(&org, in_flight),
                now,
            );
            let mut quotas = engine.quotas(&org, now);
            if !quotas.fits(&org, &statuses) {
                quotas = engine.fresh_quotas(&org, now);
            }
            let inputs = Inputs {
                server,
                quotas: &quotas,
                statuses: &statuses,
                legacy: Some(rejection.legacy),
                slots: rejection.slots,
                slot_retry: rejection.slot_retry,
                retry_after: (!org.shadow()).then_some(rejection.retry_after),
                now,
            };
            if org.shadow() {
                tracing::warn!(
                    org = org.id().as_str(),
                    limit = &*rejection.limit,
                    remaining = %Remaining { org: &org, statuses: &statuses },
                    "tollhouse: shadow plan would have rejected this request; letting it through"
                );
                telemetry::decision("shadow_rejected", Some(&rejection.limit), meter.started);
                let headers = HeaderSet::new(&inputs);
                request.extensions.insert(Metered::new(
                    Arc::clone(&org),
                    key,
                    treatment,
                    snapshot,
                    false,
                    true,
                ));
                call.cost = 0;
                let mut finish = Box::new(Finish::recorded(Arc::clone(engine), org, call));
                finish.set_headers(headers);
                return Step::Call(Some(finish));
            }
            tracing::warn!(
                org = org.id().as_str(),
                limit = &*rejection.limit,
                retry_after = rejection.retry_after,
                cost = charge.points,
                remaining = %Remaining { org: &org, statuses: &statuses },
                "tollhouse: rejected"
            );
            telemetry::decision("rejected", Some(&rejection.limit), meter.started);
            let mut response = Problem::quota_exceeded(
                rejection.detail(&org, charge),
                rejection.limit.to_string(),
                rejection.retry_after,
                rejection.violated,
            )
            .shaped(engine.shape_problem())
            .response::<Bytes>();
            HeaderSet::new(&inputs).apply(response.headers_mut());
            call.outcome = Outcome::Rejected {
                limit: Arc::clone(&rejection.limit),
            };
            call.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
            call.cost = 0;
            call.latency_ms = 0;
            // Past a few a second, a rejection is counted (billed, in the report) but not logged.
            call.logged = quotas.log_rejection(now);
            finish::record(engine, &org, call);
            Step::Answer(response)
        }
    }
}

/// The inner service answered: add the headers, note the status and real cost, and hand the
/// permit and the timer to the body.
fn respond<B>(mut finish: Option<Box<Finish>>, response: Response<B>) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    let actual = parts.extensions.remove::<ActualCost>();
    if let Some(finish) = finish.as_mut() {
        if let Some(headers) = finish.take_headers() {
            headers.apply(&mut parts.headers);
        }
        finish.set_status(parts.status.as_u16());
        if let Some(ActualCost(points)) = actual {
            finish.set_actual_cost(points);
        }
    }
    Response::from_parts(parts, ResponseBody::new(body, finish))
}

/// The caller was not identified: answer 401 (or the service's own response), or for a lookup
/// that could not find out, 503 or let the request through unmetered, as `on_lookup_error` says.
fn refused(meter: Meter<'_>, refusal: Refusal) -> Step {
    let unidentified = match refusal {
        Refusal::Unidentified(unidentified) => unidentified,
        Refusal::Response(response) => {
            tracing::debug!(status = %response.status(), "tollhouse: caller refused by the identification");
            return Step::Answer(response);
        }
    };
    tracing::debug!(reason = %unidentified, "tollhouse: caller not identified");
    telemetry::unidentified(unidentified);
    if unidentified == Unidentified::Unavailable
        && meter.policy.server().on_lookup_error == OnStoreError::Allow
    {
        meter.engine.lookup_failed_open();
        return Step::Call(None);
    }
    let problem = unidentified.problem().shaped(meter.engine.shape_problem());
    Step::Answer(unidentified.response(&problem))
}

/// The request target as the usage log shows it: the path the client sent, with its query as the
/// policy's `usage_query` says (the route's string when they are the same), cut to
/// [`MAX_PATH_BYTES`](tollhouse_core::usage::MAX_PATH_BYTES) with its full length.
fn target(
    request: &Parts,
    route: Option<&Arc<str>>,
    query: &UsageQuery,
) -> (Arc<str>, Option<u32>) {
    let uri = request
        .extensions
        .get::<OriginalUri>()
        .map_or(&request.uri, |original| &original.0);
    let target = usage_target(
        uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()),
        query,
    );
    if target.len() <= MAX_PATH_BYTES {
        return (templates::path(&target, route), None);
    }
    bounded_path(&target)
}

/// The method as a shared string, without allocating: the common ones by name, any other as
/// `OTHER`, so a caller's invented methods add no distinct strings to its usage.
fn method_label(method: &Method) -> Arc<str> {
    static COMMON: LazyLock<[Arc<str>; 8]> = LazyLock::new(|| {
        [
            "GET",
            "POST",
            "PUT",
            "PATCH",
            "DELETE",
            "HEAD",
            "OPTIONS",
            OTHER_METHOD,
        ]
        .map(Arc::from)
    });
    let index = match method.as_str() {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "PATCH" => 3,
        "DELETE" => 4,
        "HEAD" => 5,
        "OPTIONS" => 6,
        _ => 7,
    };
    Arc::clone(&COMMON[index])
}
