//! What can go wrong when a [`RedisStore`](crate::RedisStore) is created, named by its real
//! cause: a wrong password is not "Redis does not answer".

use std::path::PathBuf;
use std::time::Duration;

/// A store that could not be created; the message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A setting of the builder is out of range.
    #[error("invalid redis store settings: {0}")]
    Config(String),
    /// The URL cannot be used.
    #[error(
        "the redis URL is not valid ({0}); write it as redis://[user:password@]host:port/[db], or rediss:// for TLS"
    )]
    Url(#[source] redis::RedisError),
    /// Redis refused the user name or password.
    #[error(
        "redis refused the credentials ({0}); check the user and password in the URL (and the ACL user's rights)"
    )]
    Authentication(#[source] redis::RedisError),
    /// The TLS handshake failed: an untrusted or mismatched certificate, or TLS on one side only.
    #[error(
        "the TLS handshake with redis failed ({0}); give the CA that signed the server's certificate (--redis-ca), and check that the host name matches it and that the server speaks TLS on that port"
    )]
    Tls(#[source] redis::RedisError),
    /// Nothing listens at the address.
    #[error("redis refused the connection ({0}); is it running, and is the host and port right?")]
    Refused(#[source] redis::RedisError),
    /// The host name does not resolve.
    #[error("the redis host name does not resolve ({0}); check the host in the URL")]
    NotResolved(#[source] redis::RedisError),
    /// A cluster connection was asked of a server that is not in cluster mode.
    #[error(
        "redis is not a cluster ({0}); connect to it as one server (--redis URL) instead of --redis-cluster"
    )]
    NotACluster(#[source] redis::RedisError),
    /// A single-server connection was asked of a cluster node.
    #[error(
        "redis at this address is a node of a cluster; connect with RedisStore::builder().cluster(..) (--redis-cluster URL,...) so every org's slot is reached"
    )]
    IsACluster,
    /// A CA certificate file cannot be read.
    #[error("cannot read the CA certificate {}: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Redis answered with an error of another kind, or refused a script.
    #[error("cannot use redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer within the connect timeout.
    #[error("redis did not answer within {0:?}; is it running, and is the URL right?")]
    Timeout(Duration),
    /// The store was created outside a Tokio runtime, which it needs for its background work.
    #[error("a redis store must be created inside a Tokio runtime")]
    NoRuntime,
}

impl ConnectError {
    /// `error`, named by its cause.
    pub(crate) fn of(error: redis::RedisError) -> Self {
        use redis::ErrorKind;
        let text = error.to_string().to_ascii_lowercase();
        let detail = error.detail().unwrap_or_default().to_ascii_lowercase();
        let said = |words: &[&str]| {
            words
                .iter()
                .any(|word| text.contains(word) || detail.contains(word))
        };
        if error.kind() == ErrorKind::AuthenticationFailed
            || said(&[
                "wrongpass",
                "noauth",
                "invalid password",
                "invalid username-password",
            ])
        {
            ConnectError::Authentication(error)
        } else if said(&[
            "certificate",
            "handshake",
            "tls",
            "ssl",
            "invalid peer",
            "unknownissuer",
        ]) {
            ConnectError::Tls(error)
        } else if error.is_connection_refusal() || said(&["connection refused"]) {
            ConnectError::Refused(error)
        } else if said(&[
            "failed to lookup address",
            "name or service not known",
            "no such host",
            "name resolution",
            "nodename nor servname",
        ]) {
            ConnectError::NotResolved(error)
        } else if said(&["cluster support disabled", "not in cluster mode"]) {
            ConnectError::NotACluster(error)
        } else if error.kind() == ErrorKind::InvalidClientConfig {
            ConnectError::Url(error)
        } else {
            ConnectError::Redis(error)
        }
    }
}
