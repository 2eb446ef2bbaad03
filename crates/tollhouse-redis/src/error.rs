//! What can go wrong when a [`RedisStore`](crate::RedisStore) is created.

use std::time::Duration;

/// A store that could not be created; the message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A setting of the builder is out of range.
    #[error("invalid redis store settings: {0}")]
    Config(String),
    /// The URL is malformed, or Redis refused the connection or a script.
    #[error("cannot use redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer within the connect timeout.
    #[error("redis did not answer within {0:?}; is it running, and is the URL right?")]
    Timeout(Duration),
    /// The store was created outside a Tokio runtime, which it needs for its background work.
    #[error("a redis store must be created inside a Tokio runtime")]
    NoRuntime,
}
