//! [`ResponseFuture`]: identify, classify, admit, call the inner service, add the headers.
//!
//! The future goes through three steps. It waits for the org ([`IdentifyOrg`]); an exempt route
//! goes straight to the inner service. A metered one is admitted by the store (a boxed future
//! that owns what it needs, waiting for a concurrency slot if the plan allows); a rejection
//! becomes a 429 at once. Once admitted, the inner service runs, and its response gets the
//! rate-limit headers and a [`ResponseBody`] that holds the permit and the timer until the body
//! ends.
//!
//! # Example
//!
//! Driving the service by hand, as the unit tests do:
//!
//! ```
//! use std::convert::Infallible;
//! use axum::body::Body;
//! use http::{Request, Response, StatusCode};
//! use tollgate::{Policy, RateLimitLayer};
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

use axum::extract::{MatchedPath, OriginalUri};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use smallvec::SmallVec;
use tollgate_core::{
    BoxFuture, CallRecord, Charge, Decision, LimitStatus, OnStoreError, Outcome, Permit, Policy,
    RejectReason, ResolvedOrg, Snapshot, StoreError, Timestamp, Treatment, Verdict, admit_waiting,
};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::cost::ActualCost;
use crate::engine::Engine;
use crate::extract::Metered;
use crate::finish::{self, Finish};
use crate::headers::{
    CONCURRENCY, HeaderBuilder, HeaderSet, Inputs, Legacy, RETRY_AFTER, Slots, item_names,
    secs_until,
};
use crate::identity::{IdentifyOrg, Identity, Unidentified};
use crate::problem::Problem;
use crate::telemetry::{self, Remaining};
use crate::templates;

/// Every limit's numbers after a decision, computed once for the headers and the events.
type Statuses = SmallVec<[LimitStatus; 3]>;

/// The store's hint for when a concurrency slot may be free again.
const SLOT_RETRY_MS: i64 = 1_000;

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
        state: State<I::Future, S::Future, S, B>,
        ctx: Ctx,
    }
}

/// What the store's answer comes with when it had to be waited for.
type Admitted = BoxFuture<'static, (Result<Decision, StoreError>, Admission)>;

pin_project! {
    // The request is held only by the states before the call, so that the future is no larger
    // than the larger of the two: it is moved through every wrapping future.
    #[project = StateProj]
    enum State<Id, F, S, B> {
        Identifying {
            #[pin]
            future: Id,
            pending: Option<Pending<S, B>>,
        },
        Admitting {
            future: Admitted,
            pending: Option<Pending<S, B>>,
        },
        Called {
            #[pin]
            future: F,
        },
        Done,
    }
}

/// The inner service (ready) and the request, until the request is let through.
struct Pending<S, B> {
    inner: S,
    request: Request<B>,
}

/// What the steps hand on to each other.
struct Ctx {
    engine: Arc<Engine>,
    policy: Arc<Policy>,
    started: Instant,
    /// Boxed, with the response's headers: it travels with the response through every wrapping
    /// future and into the body.
    finish: Option<Box<Finish>>,
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
    Respond(Response<Bytes>),
    /// Ask the store.
    Admit(Admitted),
    /// Let the request through.
    Call,
}

impl<S, I, B> ResponseFuture<S, I, B>
where
    S: Service<Request<B>>,
    I: IdentifyOrg,
{
    pub(crate) fn new(
        engine: Arc<Engine>,
        policy: Arc<Policy>,
        identify: I::Future,
        inner: S,
        request: Request<B>,
        started: Instant,
    ) -> Self {
        Self {
            state: State::Identifying {
                future: identify,
                pending: Some(Pending { inner, request }),
            },
            ctx: Ctx {
                engine,
                policy,
                started,
                finish: None,
            },
        }
    }
}

impl<S, I, B> fmt::Debug for ResponseFuture<S, I, B>
where
    S: Service<Request<B>>,
    I: IdentifyOrg,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Identifying { .. } => "identifying",
            State::Admitting { .. } => "admitting",
            State::Called { .. } => "called",
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
            let step = match this.state.as_mut().project() {
                StateProj::Identifying { future, pending } => {
                    let identity = ready!(future.poll(cx));
                    identified(this.ctx, pending, identity)
                }
                StateProj::Admitting { future, pending } => {
                    let (decision, admission) = ready!(future.as_mut().poll(cx));
                    decided(this.ctx, pending, admission, decision)
                }
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(match result {
                        Ok(response) => Ok(respond(this.ctx, response)),
                        Err(error) => {
                            if let Some(mut finish) = this.ctx.finish.take() {
                                finish.set_status(500);
                            }
                            Err(error)
                        }
                    });
                }
                StateProj::Done => {
                    panic!("tollgate's ResponseFuture was polled after it completed")
                }
            };
            match step {
                Step::Respond(response) => {
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
                Step::Admit(future) => {
                    let pending = take_pending(this.state.as_mut());
                    this.state.set(State::Admitting { future, pending });
                }
                Step::Call => {
                    let Pending { mut inner, request } = take_pending(this.state.as_mut())
                        .expect("the request is held until the inner service is called, once");
                    this.state.set(State::Called {
                        future: inner.call(request),
                    });
                }
            }
        }
    }
}

/// Takes the request (and the inner service) out of a state before the call.
fn take_pending<Id, F, S, B>(state: Pin<&mut State<Id, F, S, B>>) -> Option<Pending<S, B>> {
    match state.project() {
        StateProj::Identifying { pending, .. } | StateProj::Admitting { pending, .. } => {
            pending.take()
        }
        StateProj::Called { .. } | StateProj::Done => None,
    }
}

/// The pending request, which every step before the call has.
fn request_of<S, B>(pending: &mut Option<Pending<S, B>>) -> &mut Request<B> {
    &mut pending
        .as_mut()
        .expect("the request is held until the inner service is called")
        .request
}

/// The org is known (or not): answer 401, let an exempt route through, or ask the store.
fn identified<S, B>(
    ctx: &mut Ctx,
    pending: &mut Option<Pending<S, B>>,
    identity: Result<Identity, Unidentified>,
) -> Step {
    let identity = match identity {
        Ok(identity) => identity,
        Err(unidentified) => {
            tracing::debug!(reason = %unidentified, "tollgate: caller not identified");
            return Step::Respond(unidentified_response(unidentified));
        }
    };
    let (org, key) = match identity.resolve(&ctx.policy) {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::error!(%error, "tollgate: the identified org does not fit the policy");
            return Step::Respond(
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    "the organisation's plan is not defined by the server's policy".into(),
                )
                .response(),
            );
        }
    };
    let request = request_of(pending);
    let matched = request.extensions().get::<MatchedPath>();
    let path = matched.map_or_else(|| request.uri().path(), MatchedPath::as_str);
    let classified = ctx.engine.classify(
        &ctx.policy,
        request.method().as_str(),
        path,
        matched.is_none(),
    );
    let route = matched
        .map(|matched| templates::shared(matched.as_str()))
        .or(classified.pattern);
    let arrived = ctx.engine.now();
    // Built whole: `CallRecord::new` would allocate an empty key first.
    let mut call = CallRecord {
        at: arrived,
        key: Arc::clone(&key),
        method: method_label(request.method()),
        path: target(request, route.as_ref()),
        route,
        status: 200,
        cost: 1,
        latency_ms: 0,
        outcome: Outcome::Admitted,
        billable: true,
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
                "tollgate: exempt"
            );
            telemetry::decision("exempt", None, ctx.started);
            request.extensions_mut().insert(Metered::new(
                Arc::clone(&org),
                key,
                classified.treatment,
                Snapshot::default(),
                false,
                false,
            ));
            ctx.finish = Some(Box::new(Finish::recorded(
                Arc::clone(&ctx.engine),
                org,
                arrived,
                call,
            )));
            Step::Call
        }
        Treatment::Cost(points) => {
            let charge = Charge::points(points);
            // A store that answers at once (the memory store) needs no boxed future, unless the
            // org is full and its plan says to wait for a slot.
            let immediate = ctx.engine.store().try_admit(&org, charge, arrived);
            let admission = Admission {
                org: Arc::clone(&org),
                key,
                treatment: classified.treatment,
                charge,
                call,
            };
            match immediate {
                Some(decision) if !must_wait(&org, &decision) => {
                    decided(ctx, pending, admission, decision)
                }
                _ => Step::Admit(admit(Arc::clone(&ctx.engine), admission)),
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

/// The store answered: let the request through with its headers, or answer 429 (or 503).
fn decided<S, B>(
    ctx: &mut Ctx,
    pending: &mut Option<Pending<S, B>>,
    admission: Admission,
    decision: Result<Decision, StoreError>,
) -> Step {
    let Admission {
        org,
        key,
        treatment,
        charge,
        mut call,
    } = admission;
    let server = ctx.policy.server();
    let Decision { verdict, permit } = match decision {
        Ok(decision) => decision,
        Err(error) => {
            ctx.engine.store_failed("admit", &error);
            telemetry::decision("store_error", None, ctx.started);
            return match server.on_store_error {
                OnStoreError::Allow => Step::Call,
                OnStoreError::Deny => {
                    let mut response = Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable",
                        "the rate limiter cannot reach its store; try again shortly".into(),
                    )
                    .response::<Bytes>();
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    Step::Respond(response)
                }
            };
        }
    };
    let now = ctx.engine.now();
    match verdict {
        Verdict::Admitted { snapshot, receipt } => {
            let slots = org.concurrency().map(|concurrency| {
                let held = permit.as_ref().and_then(Permit::in_flight).unwrap_or(1);
                Slots {
                    max: concurrency.max(),
                    free: concurrency.max().saturating_sub(held),
                }
            });
            // Each limit's numbers are computed once, written into the headers and checked for
            // the 80% event, one limit at a time.
            let quotas = ctx.engine.quotas(&org, now);
            let mut builder = HeaderBuilder::new(server, &quotas, now);
            for status in snapshot.iter(&org) {
                builder.limit(&status);
                telemetry::passed_80(&org, &status, charge);
            }
            let fresh = (!builder.fits()).then(|| ctx.engine.fresh_quotas(&org, now));
            let quotas = fresh.as_ref().unwrap_or(&quotas);
            let legacy = builder.most_constraining();
            let headers = builder.finish(
                quotas,
                legacy,
                slots,
                Timestamp::from_millis(now.as_millis().saturating_add(SLOT_RETRY_MS)),
                None,
            );
            telemetry::admitted(&org, &snapshot, charge);
            telemetry::decision("admitted", None, ctx.started);
            let metered = Metered::new(Arc::clone(&org), key, treatment, snapshot, true, false);
            // `ReportCost` is extracted from the `Metered` extension.
            let report = metered.report_handle();
            request_of(pending).extensions_mut().insert(metered);
            // Filled in place: the finish state is large.
            let finish = ctx.finish.insert(Box::new(Finish::recorded(
                Arc::clone(&ctx.engine),
                org,
                now,
                call,
            )));
            finish.charge(
                receipt,
                charge.points,
                report,
                permit,
                Arc::clone(&quotas.in_flight),
            );
            finish.set_headers(headers);
            Step::Call
        }
        Verdict::Rejected {
            reason,
            retry_at,
            violated,
            snapshot,
        } => {
            let statuses: Statuses = snapshot.iter(&org).collect();
            let rejection = Rejection::new(&org, reason, retry_at, &violated, &statuses, now);
            let mut quotas = ctx.engine.quotas(&org, now);
            if !quotas.fits(&org, &statuses) {
                quotas = ctx.engine.fresh_quotas(&org, now);
            }
            let inputs = Inputs {
                server,
                quotas: &quotas,
                statuses: &statuses,
                legacy: Some(rejection.legacy),
                slots: rejection.slots,
                slot_retry: rejection.legacy.reset,
                retry_after: (!org.shadow()).then_some(rejection.retry_after),
                now,
            };
            if org.shadow() {
                tracing::warn!(
                    org = org.id().as_str(),
                    limit = &*rejection.limit,
                    remaining = %Remaining { org: &org, statuses: &statuses },
                    "tollgate: shadow plan would have rejected this request; letting it through"
                );
                telemetry::decision("shadow_rejected", Some(&rejection.limit), ctx.started);
                let headers = HeaderSet::new(&inputs);
                let request = request_of(pending);
                request.extensions_mut().insert(Metered::new(
                    Arc::clone(&org),
                    key,
                    treatment,
                    snapshot,
                    false,
                    true,
                ));
                call.cost = 0;
                ctx.finish
                    .insert(Box::new(Finish::recorded(
                        Arc::clone(&ctx.engine),
                        org,
                        now,
                        call,
                    )))
                    .set_headers(headers);
                return Step::Call;
            }
            tracing::warn!(
                org = org.id().as_str(),
                limit = &*rejection.limit,
                retry_after = rejection.retry_after,
                cost = charge.points,
                remaining = %Remaining { org: &org, statuses: &statuses },
                "tollgate: rejected"
            );
            telemetry::decision("rejected", Some(&rejection.limit), ctx.started);
            let mut response = Problem::quota_exceeded(
                rejection.detail(&org, charge),
                rejection.limit.to_string(),
                rejection.retry_after,
                rejection.violated,
            )
            .response::<Bytes>();
            HeaderSet::new(&inputs).apply(response.headers_mut());
            call.outcome = Outcome::Rejected {
                limit: Arc::clone(&rejection.limit),
            };
            call.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
            call.cost = 0;
            call.latency_ms = 0;
            finish::record(&ctx.engine, org, call);
            Step::Respond(response)
        }
    }
}

/// What a 429 says.
struct Rejection {
    limit: Arc<str>,
    legacy: Legacy,
    slots: Option<Slots>,
    retry_after: u64,
    violated: Vec<String>,
}

static CONCURRENCY_NAME: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(CONCURRENCY));

impl Rejection {
    fn new(
        org: &ResolvedOrg,
        reason: RejectReason,
        retry_at: Option<Timestamp>,
        violated: &[usize],
        statuses: &[LimitStatus],
        now: Timestamp,
    ) -> Self {
        match reason {
            RejectReason::Concurrency => {
                let max = org.concurrency().map_or(0, |c| c.max());
                let reset = retry_at.unwrap_or(Timestamp::from_millis(
                    now.as_millis().saturating_add(SLOT_RETRY_MS),
                ));
                Self {
                    limit: Arc::clone(&CONCURRENCY_NAME),
                    legacy: Legacy {
                        limit: u64::from(max),
                        remaining: 0,
                        reset,
                    },
                    slots: Some(Slots { max, free: 0 }),
                    retry_after: secs_until(reset, now).max(1),
                    violated: vec![CONCURRENCY.to_owned()],
                }
            }
            RejectReason::Limit(index) => {
                let status = statuses.iter().find(|status| status.index == index);
                let legacy = status.map_or(
                    Legacy {
                        limit: 0,
                        remaining: 0,
                        reset: now,
                    },
                    Legacy::of,
                );
                // `None`: the charge exceeds what the limit can ever hold; point at the last
                // window's end, when the most capacity is back.
                let retry_at = retry_at.unwrap_or_else(|| {
                    status
                        .and_then(|status| status.tiers().last())
                        .map_or(legacy.reset, |tier| tier.reset)
                });
                let violated = statuses
                    .iter()
                    .filter(|status| violated.contains(&status.index))
                    .flat_map(|status| item_names(org, status))
                    .collect();
                Self {
                    limit: org
                        .limits()
                        .get(index)
                        .map_or_else(|| Arc::from("?"), |limit| Arc::clone(limit.name_arc())),
                    legacy,
                    // The store checked concurrency first and it was not the reason, but how many
                    // slots are free is not known: leave the item out of `RateLimit`.
                    slots: None,
                    retry_after: secs_until(retry_at, now).max(1),
                    violated,
                }
            }
        }
    }

    fn detail(&self, org: &ResolvedOrg, charge: Charge) -> String {
        if *self.limit == *CONCURRENCY {
            format!(
                "organisation {:?} already has {} requests in flight, its plan's maximum; retry when one has finished (in about {} s)",
                org.id().as_str(),
                self.legacy.limit,
                self.retry_after
            )
        } else {
            format!(
                "limit {:?} of organisation {:?} has {} of {} left and this request needs {}; retry in {} s",
                &*self.limit,
                org.id().as_str(),
                self.legacy.remaining,
                self.legacy.limit,
                charge.points,
                self.retry_after
            )
        }
    }
}

/// The inner service answered: add the headers, note the status and real cost, and hand the
/// permit and the timer to the body.
fn respond<B>(ctx: &mut Ctx, response: Response<B>) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    let actual = parts.extensions.remove::<ActualCost>();
    let mut finish = ctx.finish.take();
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

fn unidentified_response(unidentified: Unidentified) -> Response<Bytes> {
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        unidentified.to_string(),
    )
    .response::<Bytes>();
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(unidentified.challenge()),
    );
    response
}

/// The request target as the usage log shows it: the path the client sent, with its query (the
/// route's string when they are the same).
fn target<B>(request: &Request<B>, route: Option<&Arc<str>>) -> Arc<str> {
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or(request.uri(), |original| &original.0);
    templates::path(
        uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()),
        route,
    )
}

/// The method as a shared string, without allocating for the common ones.
fn method_label(method: &Method) -> Arc<str> {
    static COMMON: LazyLock<[Arc<str>; 7]> = LazyLock::new(|| {
        ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"].map(Arc::from)
    });
    let index = match method.as_str() {
        "GET" => 0,
        "POST" => 1,
        "PUT" => 2,
        "PATCH" => 3,
        "DELETE" => 4,
        "HEAD" => 5,
        "OPTIONS" => 6,
        other => return Arc::from(other),
    };
    Arc::clone(&COMMON[index])
}
