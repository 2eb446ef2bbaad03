//! Who is calling: the org a request belongs to.
//!
//! The layer asks an [`IdentifyOrg`] for the caller's org before anything else. The default,
//! [`BearerKeys`], reads `Authorization: Bearer <key>` and looks the key up by its SHA-256 digest in
//! the policy, so several keys of one org share its limits ([`Policy::owner_of_key`]: each thread
//! remembers the digests of keys the policy accepted, and hashes a key once). Any closure works
//! too, sync or async (a database lookup), through the blanket impls; an async one returns a future
//! that owns what it needs (clone the header before `async move`).
//!
//! A caller that cannot be identified gets `401 Unauthorized` with `WWW-Authenticate: Bearer` and an
//! `application/problem+json` body, no rate-limit headers, and nothing is charged or allocated
//! for it.
//!
//! # Example
//!
//! An org looked up by a custom header, synchronously, and one resolved from a "database" on the
//! fly, asynchronously:
//!
//! ```
//! use std::sync::Arc;
//! use http::request::Parts;
//! use tollhouse::{Identity, Policy, RateLimitLayer, Unidentified};
//! use tollhouse_core::Org;
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
//! // Sync: a tenant header names the org directly.
//! let by_header = RateLimitLayer::new(policy.clone()).identify(
//!     |parts: &Parts, policy: &Arc<Policy>| -> Result<Identity, Unidentified> {
//!         let tenant = parts.headers.get("x-tenant").ok_or(Unidentified::Missing)?;
//!         let tenant = tenant.to_str().map_err(|_| Unidentified::Malformed)?;
//!         let org = policy.org(tenant).ok_or(Unidentified::Unknown)?;
//!         Ok(Identity::new(Arc::clone(org), tenant))
//!     },
//! );
//!
//! // Async: the org comes from a lookup that awaits; the engine resolves it against the policy.
//! async fn lookup(key: String) -> Option<Org> {
//!     (key == "db-key").then(|| Org::new("from-db", "build"))
//! }
//! let from_db = RateLimitLayer::new(policy).identify(|parts: &Parts, _: &Arc<Policy>| {
//!     let key = tollhouse::identity::bearer_token(parts).map(str::to_owned);
//!     async move {
//!         let key = key?;
//!         let org = lookup(key.clone()).await.ok_or(Unidentified::Unknown)?;
//!         Ok(Identity::from_org(org, &key))
//!     }
//! });
//! # let _ = (by_header, from_db);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use std::fmt;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use tollhouse_core::usage::mask_key;
use tollhouse_core::{Org, Policy, PolicyError, ResolvedOrg};

use crate::problem::Problem;

/// The org a request belongs to, and the label its calls carry in the usage log.
#[derive(Clone, Debug)]
pub struct Identity {
    org: Who,
    key: Arc<str>,
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
        }
    }

    /// An org defined elsewhere (a database row, say), resolved against the current policy's plans
    /// by the engine on every request; the key is kept masked. For many requests per second,
    /// resolve once with [`Policy::resolve`] and cache the result in [`Identity::new`] instead.
    pub fn from_org(org: Org, key: &str) -> Self {
        Self {
            org: Who::Defined(Box::new(org)),
            key: masked(key),
        }
    }

    /// The same identity with `label` as the usage log's key column, verbatim (not masked).
    pub fn with_label(mut self, label: impl Into<Arc<str>>) -> Self {
        self.key = label.into();
        self
    }

    /// The label calls carry in the usage log.
    pub fn key_label(&self) -> &str {
        &self.key
    }

    /// The org, resolved against `policy` if it was given as a definition.
    pub fn resolve(self, policy: &Policy) -> Result<(Arc<ResolvedOrg>, Arc<str>), PolicyError> {
        match self.org {
            Who::Resolved(org) => Ok((org, self.key)),
            Who::Defined(org) => Ok((Arc::new(policy.resolve(&org)?), self.key)),
        }
    }
}

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

/// Why a request could not be tied to an org; answered with `401 Unauthorized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unidentified {
    /// No credentials at all.
    Missing,
    /// Credentials that are not of the expected form (one `Authorization: Bearer <key>` header).
    Malformed,
    /// Well-formed credentials that belong to no org.
    Unknown,
}

impl Unidentified {
    /// The `WWW-Authenticate` challenge: `Bearer` in every case, as the HTTP contract says; the
    /// problem body tells a missing, a malformed and an unknown key apart.
    pub const fn challenge(self) -> &'static str {
        "Bearer"
    }
}

impl fmt::Display for Unidentified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unidentified::Missing => "send your API key as `Authorization: Bearer <key>`",
            Unidentified::Malformed => {
                "send one Authorization header, `Bearer <key>`, with the key in plain text"
            }
            Unidentified::Unknown => "this API key belongs to no organisation",
        })
    }
}

impl std::error::Error for Unidentified {}

impl IntoResponse for Unidentified {
    fn into_response(self) -> Response {
        let mut response = Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", self.to_string())
            .into_response();
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(self.challenge()),
        );
        response
    }
}

/// Tells the layer which org a request belongs to.
///
/// Implement it for a type of your own, or pass a closure to
/// [`RateLimitLayer::identify`](crate::RateLimitLayer::identify): a closure
/// `|parts: &Parts, policy: &Arc<Policy>| -> Result<Identity, Unidentified>` (sync) or one
/// returning a `Future` of that (async) both work, through the marker types [`Immediate`] and
/// [`Deferred`]. Annotate the closure's parameter types so that it is general over their
/// lifetimes. See the [module example](self#example).
pub trait IdentifyOrg<M = ()>: Clone + Send + Sync + 'static {
    /// The future of the answer; it must not borrow from the request.
    type Future: Future<Output = Result<Identity, Unidentified>> + Send + 'static;

    /// Identifies the org of the request whose head is `request`, under the current `policy`.
    fn identify(&self, request: &Parts, policy: &Arc<Policy>) -> Self::Future;

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
    ) -> Option<Result<Identity, Unidentified>> {
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
    type Future = Ready<Result<Identity, Unidentified>>;

    fn identify(&self, request: &Parts, policy: &Arc<Policy>) -> Self::Future {
        ready(self(request, policy))
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Unidentified>> {
        Some(self(request, policy))
    }
}

impl<F, Fut> IdentifyOrg<Deferred> for F
where
    F: Fn(&Parts, &Arc<Policy>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, Unidentified>> + Send + 'static,
{
    type Future = Fut;

    fn identify(&self, request: &Parts, policy: &Arc<Policy>) -> Self::Future {
        self(request, policy)
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

    fn identify(&self, request: &Parts, policy: &Arc<Policy>) -> Self::Future {
        self.inner.identify(request, policy)
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Unidentified>> {
        self.inner.try_identify(request, policy)
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
        })
    }
}

impl IdentifyOrg for BearerKeys {
    type Future = Ready<Result<Identity, Unidentified>>;

    fn identify(&self, request: &Parts, policy: &Arc<Policy>) -> Self::Future {
        ready(Self::identify_now(request, policy))
    }

    fn try_identify(
        &self,
        request: &Parts,
        policy: &Arc<Policy>,
    ) -> Option<Result<Identity, Unidentified>> {
        Some(Self::identify_now(request, policy))
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
/// let (parts, ()) = http::Request::builder()
///     .header("authorization", "Bearer acme-key-1")
///     .body(())
///     .expect("a valid request")
///     .into_parts();
/// assert_eq!(bearer_token(&parts), Ok("acme-key-1"));
/// let (parts, ()) = http::Request::new(()).into_parts();
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
}
