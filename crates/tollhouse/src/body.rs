//! [`ResponseBody`]: the response body, holding the request's permit and timer until it ends.
//!
//! A permit held by the response future alone would be released when the handler returns its
//! headers, before a streamed body is sent. The body keeps it instead: it settles (latency, cost
//! correction, usage record) and releases the permit when its last frame has been read, when it
//! fails, or when it is dropped unread because the client went away.
//!
//! # Example
//!
//! A streaming handler keeps its org's concurrency slot until the last chunk is sent:
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use futures_util::stream;
//! use tollhouse::{Policy, RateLimitLayer};
//!
//! # let policy = Policy::from_toml_str(r#"
//! # [plans.build]
//! # concurrency = 3
//! # [[plans.build.limits]]
//! # name = "daily"
//! # dimension = "requests"
//! # tiers = [{ window = "day", capacity = 2500 }]
//! # "#, "policy.toml".as_ref())?;
//! let chunks = || stream::iter(["a", "b", "c"].map(Ok::<_, std::io::Error>));
//! let app: Router = Router::new()
//!     .route("/v1/stream", get(move || async move { Body::from_stream(chunks()) }))
//!     .layer(RateLimitLayer::new(policy));
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::finish::Finish;

pin_project! {
    /// The body of a response that passed through the layer.
    ///
    /// See the [module documentation](self).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
            finish: Option<Box<Finish>>,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body; `finish` runs when it ends or is dropped.
    pub(crate) fn new(body: B, finish: Option<Box<Finish>>) -> Self {
        Self {
            kind: Kind::Inner { body, finish },
        }
    }

    /// A body of the layer's own (a 401, 429 or 503 problem).
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { finish, .. } => f
                .debug_struct("ResponseBody")
                .field("finish", finish)
                .finish_non_exhaustive(),
            Kind::Full { data } => f.debug_struct("ResponseBody").field("data", data).finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { mut body, finish } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                if matches!(frame, None | Some(Err(_))) || body.is_end_stream() {
                    // Settles, records and releases the permit.
                    finish.take();
                }
                Poll::Ready(frame)
            }
            KindProj::Full { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(B::Data::from(data)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}
