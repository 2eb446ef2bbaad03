//! Who is calling: the org a request belongs to.
//!
//! The layer asks an [`IdentifyOrg`] for the caller's org before anything else. The default,
//! [`BearerKeys`], reads `Authorization: Bearer <key>` and looks the key up by its SHA-256 digest in
//! the policy, so several keys of one org share its limits ([`Policy::owner_of_key`]: each thread
//! remembers the digests of keys the policy accepted, and hashes a key once). A service with auth
//! of its own plugs it in one of three ways:
//!
//! - **a closure**, sync (`|parts: &Parts, policy: &Arc<Policy>| -> Result<Identity, Unidentified>`)
//!   or returning a future that owns what it needs (clone a header before `async move`), through
//!   [`RateLimitLayer::identify`](crate::RateLimitLayer::identify);
//! - **an axum extractor** the service already has (a `Caller` from a JWT, a session, a database
//!   key), with [`RateLimitLayer::identify_by`](crate::RateLimitLayer::identify_by): the layer runs
//!   it once per request, answers with its rejection when it fails, maps what it found to an
//!   [`Identity`] with a closure (an `async` closure works), and hands it to the handlers in the
//!   request's extensions, so they take `Extension<Caller>` instead of running it again;
//! - **a middleware in front** of the layer that authenticates and puts its result in the
//!   request's extensions; a sync closure then reads it from `parts.extensions`.
//!
//! Whatever an identity carries with [`Identity::with_extension`] (a database row, the caller's
//! scopes) reaches the handlers the same way.
//!
//! A caller that cannot be identified gets `401 Unauthorized` with `WWW-Authenticate: Bearer` and an
//! `application/problem+json` body, no rate-limit headers, and nothing is charged or allocated
//! for it. A lookup that cannot find out ([`Unidentified::Unavailable`]: the key database is down)
//! is not a wrong key: it gets `503` with `Retry-After`, or goes through unmetered, as the policy's
//! `on_lookup_error` says.
//!
//! # Example
//!
//! An org found by the service's auth middleware, synchronously; one resolved from a "database" on
//! the fly; and the service's own extractor (which authenticates, here by a signed token):
//!
//! ```
//! use std::sync::Arc;
//! use axum::extract::FromRequestParts;
//! use axum::http::{StatusCode, request::Parts};
//! use tollhouse::{Identity, Org, Policy, RateLimitLayer, Unidentified};
//!
//! # let policy = Policy::from_toml_str(r#"
//! # [[plans.build.limits]]
//! # name = "daily"
//! # dimension = "requests"
//! # tiers = [{ window = "day", capacity = 2500 }]
//! # [[orgs]]
//! # id = "acme"
//! # plan = "build"
//! # "#, "policy.toml".as_ref())?;
//! // Sync: the service's auth middleware, in front of the layer, has verified the caller and put
//! // what it found in the request's extensions. (Never trust a header the client sets itself:
//! // whoever `identify` says is calling is charged, and sees that org's usage.)
//! #[derive(Clone)]
//! struct Authenticated { tenant: String, user: String }
//!
//! let by_middleware = RateLimitLayer::new(policy.clone()).identify(
//!     |parts: &Parts, policy: &Arc<Policy>| -> Result<Identity, Unidentified> {
//!         let caller = parts.extensions.get::<Authenticated>().ok_or(Unidentified::Missing)?;
//!         let org = policy.org(&caller.tenant).ok_or(Unidentified::Unknown)?;
//!         Ok(Identity::new(Arc::clone(org), &caller.user))
//!     },
//! );
//!
//! // Async: the org comes from a lookup that awaits; the engine resolves it against the policy.
//! async fn lookup(key: String) -> Result<Option<Org>, std::io::Error> {
//!     Ok((key == "db-key").then(|| Org::new("from-db", "build")))
//! }
//! let from_db = RateLimitLayer::new(policy.clone()).identify(|parts: &Parts, _: &Arc<Policy>| {
//!     let key = tollhouse::identity::bearer_token(parts).map(str::to_owned);
//!     async move {
//!         let key = key?;
//!         match lookup(key.clone()).await {
//!             Ok(Some(org)) => Ok(Identity::from_org(org, &key)),
//!             Ok(None) => Err(Unidentified::Unknown),
//!             // The database is down: 503 (or let through), never "wrong key".
//!             Err(_) => Err(Unidentified::Unavailable),
//!         }
//!     }
//! });
//!
//! // The service's own extractor, run once; handlers take `Extension<Caller>`.
//! #[derive(Clone)]
//! struct Caller { tenant: String }
//!
//! # fn verify(token: &str) -> Option<String> { token.strip_prefix("signed:").map(str::to_owned) }
//! impl<S: Send + Sync> FromRequestParts<S> for Caller {
//!     type Rejection = (StatusCode, &'static str);
//!     async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
//!         let token = tollhouse::identity::bearer_token(parts).ok();
//!         // Your token check: a JWT's signature, a session lookup.
//!         let tenant = token.and_then(verify).ok_or((StatusCode::UNAUTHORIZED, "sign in"))?;
//!         Ok(Caller { tenant })
//!     }
//! }
//!
//! let by_extractor = RateLimitLayer::new(policy).identify_by(
//!     async |caller: Caller, policy: Arc<Policy>| {
//!         let org = policy.org(&caller.tenant).ok_or(Unidentified::Unknown)?;
//!         Ok(Identity::new(Arc::clone(org), &caller.tenant))
//!     },
//! );
//! # let _ = (by_middleware, from_db, by_extractor);
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::fmt;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Extensions, StatusCode};
use pin_project_lite::pin_project;
use tollhouse_core::usage::mask_key;
use tollhouse_core::{BoxFuture, Org, Policy, PolicyError, ResolvedOrg};

use crate::problem::{Cause, Problem};

/// The org a request belongs to, the label its calls carry in the usage log, and what the
/// handlers should see of it.
#[derive(Clone, Debug)]
pub struct Identity {
    org: Who,
    key: Arc<str>,
    extensions: Option<Box<Extensions>>,
}

#[derive(Clone, Debug)]
enum Who {
    Resolved(Arc<ResolvedOrg>),
    Defined(Box<Org>),
}

impl Identity {
    /// An org of the policy (or one resolved already), with the API key used, which is kept only
    /// masked to its last four characters (see [`mask_key`]).
    pub fn new(org: Arc<ResolvedOrg>, key: &str) -> Self {
        Self {
            org: Who::Resolved(org),
            key: masked(key),
            extensions: None,
        }
    }

    /// An org defined elsewhere (a database row, say), resolved against the current policy's plans
    /// by the engine on every request; the key is kept masked. For many requests per second,
    /// resolve once with [`Policy::resolve`] and cache the result in [`Identity::new`] instead.
    pub fn from_org(org: Org, key: &str) -> Self {
        Self {
            org: Who::Defined(Box::new(org)),
            key: masked(key),
            extensions: None,
        }
    }

    /// The same identity with `label` as the usage log's key column, verbatim (not masked), cut
    /// to [`MAX_LABEL_BYTES`](tollhouse_core::usage::MAX_LABEL_BYTES).
    pub fn with_label(mut self, label: impl AsRef<str>) -> Self {
        self.key =
            tollhouse_core::usage::cut(label.as_ref(), tollhouse_core::usage::MAX_LABEL_BYTES);
        self
    }

    /// The same identity carrying `value` to the handlers: the layer puts it in the request's
    /// extensions (axum's `Extension<T>` extracts it), so what the lookup found is not looked up
    /// again.
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions
            .get_or_insert_with(Default::default)
            .insert(value);
        self
    }

    /// The label calls carry in the usage log.
    pub fn key_label(&self) -> &str {
        &self.key
    }

    /// The org, resolved against `policy` if it was given as a definition.
    pub fn resolve(self, policy: &Policy) -> Result<(Arc<ResolvedOrg>, Arc<str>), PolicyError> {
        self.resolve_with_extensions(policy)
            .map(|(org, key, _)| (org, key))
    }

    /// [`resolve`](Self::resolve), with the extensions for the handlers.
    pub(crate) fn resolve_with_extensions(self, policy: &Policy) -> Result<Resolved, PolicyError> {
        let org = match self.org {
            Who::Resolved(org) => org,
            Who::Defined(org) => Arc::new(policy.resolve(&org)?),
        };
        Ok((org, self.key, self.extensions))
    }
}

/// A resolved identity: the org, the key label, and what goes to the handlers.
pub(crate) type Resolved = (Arc<ResolvedOrg>, Arc<str>, Option<Box<Extensions>>);

/// [`mask_key`] as a shared string, built in one allocation (a request identifies itself once).
fn masked(key: &str) -> Arc<str> {
    // '…' and the last four characters, of at most 4 bytes each.
    const MAX: usize = 3 + 4 * 4;
    let start = key.char_indices().rev().nth(3).map_or(0, |(at, _)| at);
    let tail = &key[start..];
    let mut buffer = [0u8; MAX];
    let ellipsis = '…'.encode_utf8(&mut buffer).len();
    let end = ellipsis + tail.len();
    match buffer.get_mut(ellipsis..end) {
        Some(rest) => {
            rest.copy_from_slice(tail.as_bytes());
            std::str::from_utf8(&buffer[..end]).map_or_else(|_| mask_key(key).into(), Arc::from)
        }
        None => mask_key(key).into(),
    }
}

/// Why a request could not be tied to an org. `Missing`, `Malformed` and `Unknown` are answered
/// with `401 Unauthorized`; `Unavailable` as the policy's `on_lookup_error` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unidentified {
    /// No credentials at all.
    Missing,
    /// Credentials that are not of the expected form (one `Authorization: Bearer <key>` header).
    Malformed,
    /// Well-formed credentials that belong to no org.
    Unknown,
    /// The lookup could not find out (its database or service is down or too slow): `503` with
    /// `Retry-After`, or let through unmetered, as `on_lookup_error` says. Never a wrong key.
    Unavailable,
}

impl Unidentified {
    /// The `WWW-Authenticate` challenge: `Bearer` in every case, as the HTTP contract says; the
    /// problem body tells a missing, a malformed and an unknown key apart.
    pub const fn challenge(self) -> &'static str {
        "Bearer"
    }

    /// The problem body the layer answers with.
    pub(crate) fn problem(self) -> Problem {
        match self {
            Unidentified::Unavailable => Problem::new(
                Cause::LookupUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                self.to_string(),
            ),
            _ => Problem::new(
                Cause::Unidentified(self),
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                self.to_string(),
            ),
        }
    }

    /// The response: the problem, with `WWW-Authenticate` on a 401 and `Retry-After` on a 503.
    pub(crate) fn response<B: From<Bytes>>(self, problem: &Problem) -> http::Response<B> {
        let mut response = problem.response::<B>();
        let (name, value) = match self {
            Unidentified::Unavailable => (
                crate::headers::RETRY_AFTER,
                http::HeaderValue::from_static(LOOKUP_RETRY_AFTER),
            ),
            _ => (
                WWW_AUTHENTICATE,
                http::HeaderValue::from_static(self.challenge()),
            ),
        };
        response.headers_mut().insert(name, value);
        response
    }
}

/// The seconds a caller is told to wait when its key could not be looked up.
const LOOKUP_RETRY_AFTER: &str = "1";

impl fmt::Display for Unidentified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unidentified::Missing => "send your API key as `Authorization: Bearer <key>`",
            Unidentified::Malformed => {
                "send one Authorization header, `Bearer <key>`, with the key in plain text"
            }
            Unidentified::Unknown => "this API key belongs to no organisation",
            Unidentified::Unavailable => {
                "your credentials cannot be checked right now; try again shortly"
            }
        })
    }
}

impl std::error::Error for Unidentified {}

impl IntoResponse for Unidentified {
    fn into_response(self) -> Response {
        self.response(&self.problem())
    }
}

/// What an [`IdentifyOrg`] answers instead of an identity.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// The layer answers: 401, or for [`Unidentified::Unavailable`], 503 or let through.
    Unidentified(Unidentified),
    /// The service's own answer (an extractor's rejection), sent as it is.
    Response(Response<Bytes>),
}

impl From<Unidentified> for Refusal {
    fn from(unidentified: Unidentified) -> Self {
        Refusal::Unidentified(unidentified)
    }
}

/// An identification's answer, with the request head it was given back.
pub type Identified = (Parts, Result<Identity, Refusal>);

/// Tells the layer which org a request belongs to.
///
/// Most services need no impl of their own: pass a closure to
/// [`RateLimitLayer::identify`](crate::RateLimitLayer::identify) (a sync
/// `|parts: &Parts, policy: &Arc<Policy>| -> Result<Identity, Unidentified>`, or one returning a
/// `Future` of that; the marker types [`Immediate`] and [`Deferred`] tell the two apart), or an
/// extractor to [`RateLimitLayer::identify_by`](crate::RateLimitLayer::identify_by). Annotate a
/// closure's parameter types so that it is general over their lifetimes. See the
/// [module example](self#example).
///
/// An impl of its own takes the request head by value and gives it back with the answer, like
/// tower-http's `AsyncAuthorizeRequest`, so its future may borrow the head mutably across an
/// `.await` (as an extractor does) and still be `'static`.
pub trait IdentifyOrg<M = ()>: Clone + Send + Sync + 'static {
    /// The future of the answer.
    type Future: Future<Output = Identified> + Send + 'static;

    /// Identifies the org of the request whose head is `request`, under the current `policy`, and
    /// gives the head back.
    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> Self::Future;

    /// Identifies the org at once, if that needs no waiting; `None` (the default) makes the layer
    /// call [`identify`](Self::identify) and wait for its future.
    ///
    /// An answer here lets the layer decide the request inside `call`, with no future of its own
    /// to box: implement it whenever the answer is at hand (a lookup in memory). It must agree with
    /// [`identify`](Self::identify).
    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>> {
        let _ = (request, policy);
        None
    }
}

/// Marks the blanket impl of [`IdentifyOrg`] for closures that answer at once.
#[derive(Debug)]
pub enum Immediate {}

/// Marks the blanket impl of [`IdentifyOrg`] for closures that return a future.
#[derive(Debug)]
pub enum Deferred {}

impl<F> IdentifyOrg<Immediate> for F
where
    F: Fn(&Parts, &Arc<Policy>) -> Result<Identity, Unidentified> + Clone + Send + Sync + 'static,
{
    type Future = Ready<Identified>;

    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> Self::Future {
        let answer = self(&request, policy).map_err(Refusal::from);
        ready((request, answer))
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>> {
        Some(self(request, policy).map_err(Refusal::from))
    }
}

impl<F, Fut> IdentifyOrg<Deferred> for F
where
    F: Fn(&Parts, &Arc<Policy>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, Unidentified>> + Send + 'static,
{
    type Future = WithHead<Fut>;

    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> Self::Future {
        let future = self(&request, policy);
        WithHead {
            future,
            head: Some(request),
        }
    }
}

pin_project! {
    /// A closure's future of an identity, carrying the request head to give it back.
    pub struct WithHead<F> {
        #[pin]
        future: F,
        head: Option<Parts>,
    }
}

impl<F> fmt::Debug for WithHead<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithHead").finish_non_exhaustive()
    }
}

impl<F> Future for WithHead<F>
where
    F: Future<Output = Result<Identity, Unidentified>>,
{
    type Output = Identified;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.future.poll(cx));
        let Some(head) = this.head.take() else {
            panic!("tollhouse's identification was polled after it completed")
        };
        Poll::Ready((head, answer.map_err(Refusal::from)))
    }
}

/// An [`IdentifyOrg<M>`] seen as an `IdentifyOrg`: what
/// [`RateLimitLayer::identify`](crate::RateLimitLayer::identify) stores, so the layer's type has no
/// marker parameter.
pub struct IdentifyWith<F, M> {
    inner: F,
    _marker: PhantomData<fn() -> M>,
}

impl<F, M> IdentifyWith<F, M> {
    /// Wraps `inner`.
    pub const fn new(inner: F) -> Self {
        Self {
            inner,
            _marker: PhantomData,
        }
    }
}

impl<F: Clone, M> Clone for IdentifyWith<F, M> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<F, M> fmt::Debug for IdentifyWith<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyWith")
            .field("inner", &std::any::type_name::<F>())
            .finish()
    }
}

impl<F, M> IdentifyOrg for IdentifyWith<F, M>
where
    F: IdentifyOrg<M>,
    M: 'static,
{
    type Future = F::Future;

    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> Self::Future {
        self.inner.identify(request, policy)
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>> {
        self.inner.try_identify(request, policy)
    }
}

/// Identification by an axum extractor `E` the service already has, then a closure from what it
/// found to an [`Identity`]; built by
/// [`RateLimitLayer::identify_by`](crate::RateLimitLayer::identify_by).
///
/// The extractor runs once per request, with state `S`. When it fails, its rejection is the
/// answer, as the service wrote it. When it succeeds, the closure gets a clone of what it found
/// (an `async` closure works: it owns its arguments) and the original goes into the request's
/// extensions for the handlers (`Extension<E>`).
pub struct IdentifyBy<E, F, S = ()> {
    map: F,
    state: S,
    _extractor: PhantomData<fn() -> E>,
}

impl<E, F, S> IdentifyBy<E, F, S> {
    /// Runs `E` with `state`, then `map`.
    pub const fn new(state: S, map: F) -> Self {
        Self {
            map,
            state,
            _extractor: PhantomData,
        }
    }
}

impl<E, F: Clone, S: Clone> Clone for IdentifyBy<E, F, S> {
    fn clone(&self) -> Self {
        Self::new(self.state.clone(), self.map.clone())
    }
}

impl<E, F, S> fmt::Debug for IdentifyBy<E, F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyBy")
            .field("extractor", &std::any::type_name::<E>())
            .finish_non_exhaustive()
    }
}

impl<E, F, Fut, S> IdentifyOrg for IdentifyBy<E, F, S>
where
    E: FromRequestParts<S> + Clone + Send + Sync + 'static,
    E::Rejection: Send + 'static,
    F: Fn(E, Arc<Policy>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, Unidentified>> + Send + 'static,
    S: Clone + Send + Sync + 'static,
{
    type Future = BoxFuture<'static, Identified>;

    fn identify(&self, mut request: Parts, policy: &Arc<Policy>) -> Self::Future {
        let this = self.clone();
        let policy = Arc::clone(policy);
        Box::pin(async move {
            let extracted = E::from_request_parts(&mut request, &this.state).await;
            let answer = match extracted {
                Ok(found) => {
                    let identity = (this.map)(found.clone(), policy).await;
                    identity
                        .map(|identity| identity.with_extension(found))
                        .map_err(Refusal::from)
                }
                Err(rejection) => Err(refusal(rejection).await),
            };
            (request, answer)
        })
    }
}

/// An extractor's rejection as a refusal: the layer's own answer for an [`Unidentified`] (so the
/// service's problem hook shapes it), the extractor's response otherwise.
async fn refusal<R: IntoResponse + 'static>(rejection: R) -> Refusal {
    match (&rejection as &dyn std::any::Any).downcast_ref::<Unidentified>() {
        Some(unidentified) => Refusal::Unidentified(*unidentified),
        None => Refusal::Response(buffered(rejection.into_response()).await),
    }
}

/// The most of a rejection's body the layer keeps to send it on.
const REJECTION_BODY_LIMIT: usize = 64 * 1024;

/// `response` with its body read into memory (an extractor's rejection is small), so the layer
/// can send it with a body of its own type.
async fn buffered(response: Response) -> Response<Bytes> {
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, REJECTION_BODY_LIMIT).await {
        Ok(bytes) => Response::from_parts(parts, bytes),
        Err(error) => {
            tracing::error!(%error, "tollhouse: an extractor's rejection body could not be read");
            let mut response = Response::new(Bytes::new());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// Any [`IdentifyOrg`], boxed: a layer type to name (`RateLimitLayer<BoxIdentify>`) in a struct
/// field or a function's return type, whatever closure or extractor identifies its callers.
#[derive(Clone)]
pub struct BoxIdentify(Arc<dyn DynIdentify>);

impl BoxIdentify {
    /// Boxes `identify`.
    pub fn new<I: IdentifyOrg>(identify: I) -> Self {
        Self(Arc::new(identify))
    }
}

impl fmt::Debug for BoxIdentify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BoxIdentify").finish()
    }
}

/// [`IdentifyOrg`] in object-safe form.
trait DynIdentify: Send + Sync + 'static {
    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> BoxFuture<'static, Identified>;
    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>>;
}

impl<I: IdentifyOrg> DynIdentify for I {
    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> BoxFuture<'static, Identified> {
        Box::pin(IdentifyOrg::identify(self, request, policy))
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>> {
        IdentifyOrg::try_identify(self, request, policy)
    }
}

impl IdentifyOrg for BoxIdentify {
    type Future = BoxFuture<'static, Identified>;

    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> Self::Future {
        self.0.identify(request, policy)
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>> {
        self.0.try_identify(request, policy)
    }
}

/// The default identification: `Authorization: Bearer <key>`, looked up by the key's SHA-256 digest
/// among the keys of the policy's orgs.
#[derive(Clone, Copy, Debug, Default)]
pub struct BearerKeys;

impl BearerKeys {
    /// Identifies the request synchronously (what [`IdentifyOrg::identify`] does).
    pub fn identify_now(request: &Parts, policy: &Policy) -> Result<Identity, Unidentified> {
        let key = bearer_token(request)?;
        let (org, label) = policy.owner_of_key(key).ok_or(Unidentified::Unknown)?;
        Ok(Identity {
            org: Who::Resolved(Arc::clone(org)),
            key: Arc::clone(label),
            extensions: None,
        })
    }
}

impl IdentifyOrg for BearerKeys {
    type Future = Ready<Identified>;

    fn identify(&self, request: Parts, policy: &Arc<Policy>) -> Self::Future {
        let answer = Self::identify_now(&request, policy).map_err(Refusal::from);
        ready((request, answer))
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Refusal>> {
        Some(Self::identify_now(request, policy).map_err(Refusal::from))
    }
}

/// The key of an `Authorization: Bearer <key>` header: the scheme is case-insensitive, spaces
/// around the key are ignored, and the key must be one non-empty token. A request with more than
/// one `Authorization` header is malformed.
///
/// # Example
///
/// ```
/// use tollhouse::{Unidentified, identity::bearer_token};
///
/// let (parts, ()) = axum::http::Request::builder()
///     .header("authorization", "Bearer acme-key-1")
///     .body(())
///     .expect("a valid request")
///     .into_parts();
/// assert_eq!(bearer_token(&parts), Ok("acme-key-1"));
/// let (parts, ()) = axum::http::Request::new(()).into_parts();
/// assert_eq!(bearer_token(&parts), Err(Unidentified::Missing));
/// ```
pub fn bearer_token(request: &Parts) -> Result<&str, Unidentified> {
    let mut values = request.headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Unidentified::Missing)?;
    // Two sets of credentials could name two orgs: which one pays is not for the server to guess.
    if values.next().is_some() {
        return Err(Unidentified::Malformed);
    }
    let value = value.as_bytes().trim_ascii();
    let space = value
        .iter()
        .position(|&byte| byte == b' ')
        .ok_or(Unidentified::Malformed)?;
    let (scheme, key) = value.split_at(space);
    let key = key.trim_ascii();
    // The key: visible ASCII, so no spaces, tabs or bytes outside ASCII.
    if !scheme.eq_ignore_ascii_case(b"bearer")
        || key.is_empty()
        || !key.iter().all(u8::is_ascii_graphic)
    {
        return Err(Unidentified::Malformed);
    }
    std::str::from_utf8(key).map_err(|_| Unidentified::Malformed)
}

/// The bearer key of a request, as an axum extractor: a 401 problem (the layer's own) when it is
/// missing or malformed. Made for [`RateLimitLayer::identify_by`](crate::RateLimitLayer::identify_by)
/// with an `async` closure that looks the key up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = Unidentified;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        bearer_token(parts).map(|key| BearerToken(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = http::Request::builder();
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn masks_like_mask_key() {
        for key in ["", "a", "abcd", "acme-key-1", "ключ-ключ", "k😀😀😀😀😀"] {
            assert_eq!(&*masked(key), mask_key(key), "{key}");
        }
    }

    #[test]
    fn reads_bearer_tokens() {
        assert_eq!(bearer_token(&parts(Some("Bearer k-1"))), Ok("k-1"));
        assert_eq!(bearer_token(&parts(Some("bearer   k-1  "))), Ok("k-1"));
        assert_eq!(bearer_token(&parts(None)), Err(Unidentified::Missing));
        assert_eq!(bearer_token(&parts(Some("BEARER \tk-1\t"))), Ok("k-1"));
        for bad in [
            "Basic k-1",
            "Bearer",
            "Bearer ",
            "k-1",
            "Bearer a b",
            "Bearer a\tb",
            "Bearer\tk-1",
        ] {
            assert_eq!(
                bearer_token(&parts(Some(bad))),
                Err(Unidentified::Malformed),
                "{bad}"
            );
        }
        let mut request = parts(None);
        request.headers.insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer k\xe9y").expect("obs-text is a valid value"),
        );
        assert_eq!(bearer_token(&request), Err(Unidentified::Malformed));
        // Two keys, even the same one twice: refused rather than one picked.
        let mut twice = parts(Some("Bearer k-1"));
        twice
            .headers
            .append(AUTHORIZATION, http::HeaderValue::from_static("Bearer k-1"));
        assert_eq!(bearer_token(&twice), Err(Unidentified::Malformed));
    }

    #[test]
    fn unidentified_is_a_401_problem_with_a_challenge() {
        let response = Unidentified::Unknown.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn a_lookup_that_cannot_find_out_is_a_503_with_retry_after_not_a_401() {
        let response = Unidentified::Unavailable.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[crate::headers::RETRY_AFTER], "1");
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }
}
