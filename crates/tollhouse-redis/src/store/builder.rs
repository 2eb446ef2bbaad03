//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`] and how it connects.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use tokio::runtime::Handle;

use super::batch::{give_back_freed, write_behind};
use super::late::ServerClock;
use super::lease::renew_leases;
use super::{Inner, RedisStore, Tasks, millis};
use crate::conn::Conn;
use crate::error::ConnectError;
use crate::health::HealthState;

/// Configures and connects a [`RedisStore`].
///
/// Every setting has a default; see each method.
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    prefix: String,
    timeout: Duration,
    calls_kept: usize,
    lease_ttl: Duration,
    key_margin: Duration,
    connect_timeout: Duration,
    record_interval: Duration,
    grants: Option<super::Grants>,
    /// A private CA's certificate (PEM) that signs the server's, for `rediss://`.
    ca: Option<Vec<u8>>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: "tollhouse:".to_owned(),
            timeout: Duration::from_millis(50),
            calls_kept: 100,
            lease_ttl: Duration::from_secs(15),
            key_margin: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            record_interval: Duration::from_millis(250),
            grants: None,
            ca: None,
        }
    }
}

impl RedisStoreBuilder {
    /// The start of every key (default `tollhouse:`). It may not contain `{` or `}`: the org's hash
    /// tag follows it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest any call to Redis may take (default 50 ms); past it the call fails with
    /// [`StoreError::Timeout`](tollhouse_core::StoreError::Timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many recent calls each org's log keeps (default 100).
    pub fn calls_kept(mut self, calls_kept: usize) -> Self {
        self.calls_kept = calls_kept;
        self
    }

    /// How long a concurrency lease lives without renewal (default 15 s, at least 30 ms). The store
    /// renews the leases it holds every third of this; the slots of an instance that died free
    /// within this time.
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl;
        self
    }

    /// How long a counter outlives its window (default 60 s), so that an instance whose clock is
    /// behind still finds the window it is in. A window shorter than the margin is outlived by
    /// one window's length at most (at least a second): a `second` tier keeps two counters.
    pub fn key_margin(mut self, key_margin: Duration) -> Self {
        self.key_margin = key_margin;
        self
    }

    /// How long [`connect`](Self::connect) waits for Redis, and each reconnection attempt may take
    /// (default 2 s).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// How long an org's call records may wait to be merged into one write (default 250 ms, at
    /// most 10 s): the usage and billing counts another instance reads lag by up to this much,
    /// and a crash loses at most this much of them. Settlements (latency debits and cost
    /// corrections, which count against limits) are written within
    /// [`FLUSH_EVERY`](crate::FLUSH_EVERY) whatever this is, and an instance reads its own calls
    /// at once. Zero writes each call's record at once, merged only with those that arrive
    /// together.
    pub fn record_interval(mut self, record_interval: Duration) -> Self {
        self.record_interval = record_interval;
        self
    }

    /// Turns quota grants on: a hot org's requests are admitted from slices of its quota charged to
    /// Redis in advance, in memory, exactly (see [`Grants`](super::Grants)). Off by default.
    ///
    /// ```no_run
    /// use tollhouse_redis::{Grants, RedisStore};
    ///
    /// # async fn connect() -> Result<RedisStore, tollhouse_redis::ConnectError> {
    /// let store = RedisStore::builder()
    ///     .grants(Grants::new().hot_rps(20))
    ///     .connect("redis://127.0.0.1:6379/")
    ///     .await?;
    /// # Ok(store)
    /// # }
    /// ```
    pub fn grants(mut self, grants: super::Grants) -> Self {
        self.grants = Some(grants);
        self
    }

    /// Trusts `pem`, a CA certificate (PEM) that signs the server's, for `rediss://` URLs: a
    /// managed Redis or a server of your own with a private CA. Without one, the system's
    /// well-known roots are trusted.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// [`ca_certificate`](Self::ca_certificate) read from a PEM file.
    pub fn ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, ConnectError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| ConnectError::Certificate {
            path: path.to_owned(),
            source,
        })?;
        Ok(self.ca_certificate(pem))
    }

    fn validate(&self) -> Result<(), ConnectError> {
        let invalid = |problem: String| Err(ConnectError::Config(problem));
        if self.prefix.contains(['{', '}']) {
            return invalid(format!(
                "the key prefix {:?} contains a brace; the org's hash tag must be the first {{...}} \
                 of every key, so use a prefix without {{ and }}",
                self.prefix
            ));
        }
        if self.timeout.is_zero() {
            return invalid("a timeout of 0 fails every call; set at least 1 ms".to_owned());
        }
        if self.calls_kept == 0 {
            return invalid("a call log of 0 keeps nothing; keep at least 1 call".to_owned());
        }
        if self.lease_ttl < Duration::from_millis(30) {
            return invalid(format!(
                "a lease time to live of {:?} is too short to renew; set at least 30 ms",
                self.lease_ttl
            ));
        }
        if self.record_interval > Duration::from_secs(10) {
            return invalid(format!(
                "a record interval of {:?} would leave usage counts stale and lose them in a \
                 crash; set at most 10 s",
                self.record_interval
            ));
        }
        Ok(())
    }

    /// Connects to Redis at `url` (`redis://[user:password@]host:port/db`, or `rediss://` for
    /// TLS), checks that it answers and is not a cluster node, and loads the scripts. Must be
    /// called inside a Tokio runtime. An error names its cause: authentication, TLS, a refused
    /// connection, a name that does not resolve, a cluster node.
    pub async fn connect(self, url: &str) -> Result<RedisStore, ConnectError> {
        let client = self.client(url)?;
        self.connect_client(client).await
    }

    /// [`connect`](Self::connect) through a client the caller built (its own TLS settings,
    /// credentials provider or connection info).
    pub async fn connect_client(self, client: redis::Client) -> Result<RedisStore, ConnectError> {
        let wait = self.connect_timeout;
        // One plain connection first: its failure says what is wrong (a refused connection, a
        // name that does not resolve, TLS, credentials), where the reconnecting manager below
        // would only keep retrying.
        match tokio::time::timeout(wait, client.get_multiplexed_async_connection()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(ConnectError::of(error)),
            Err(_) => return Err(ConnectError::Timeout(wait)),
        }
        let store = self.connect_lazy_client(client)?;
        let checked = async {
            store.inner.load_scripts().await.map_err(ConnectError::of)?;
            if store
                .inner
                .is_cluster_node()
                .await
                .map_err(ConnectError::of)?
            {
                return Err(ConnectError::IsACluster);
            }
            Ok(())
        };
        match tokio::time::timeout(wait, checked).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ConnectError::Timeout(wait)),
        }
    }

    /// A store that connects on its first call, so a service can start while Redis is down (its
    /// calls fail, and follow `on_store_error`, until Redis answers). Must be called inside a Tokio
    /// runtime; does no I/O.
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, ConnectError> {
        let client = self.client(url)?;
        self.connect_lazy_client(client)
    }

    /// [`connect_lazy`](Self::connect_lazy) through a client the caller built.
    pub fn connect_lazy_client(self, client: redis::Client) -> Result<RedisStore, ConnectError> {
        self.validate()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(8);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(ConnectError::of)?;
        self.assemble(Conn::Single(conn))
    }

    /// Connects to a Redis Cluster through any of its `nodes` (seed URLs, `redis://` or
    /// `rediss://`), checks that it answers, and loads the scripts on every primary. Each org's
    /// keys share its hash tag, so every script goes to the node that owns the org's slot; the
    /// connection follows `MOVED` and `ASK`, learns the new owner of a slot after a resharding or a
    /// failover, and reconnects to each node by itself.
    pub async fn cluster<I, S>(self, nodes: I) -> Result<RedisStore, ConnectError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let wait = self.connect_timeout;
        let (client, config) = self.cluster_client(nodes)?;
        let connected = async {
            let conn = client
                .get_async_connection_with_config(config)
                .await
                .map_err(ConnectError::of)?;
            let store = self.assemble(Conn::Cluster(conn))?;
            store.inner.load_scripts().await.map_err(ConnectError::of)?;
            Ok(store)
        };
        tokio::time::timeout(wait, connected)
            .await
            .unwrap_or(Err(ConnectError::Timeout(wait)))
    }

    /// [`cluster`](Self::cluster) without waiting: the nodes are reached on the first call.
    pub fn cluster_lazy<I, S>(self, nodes: I) -> Result<RedisStore, ConnectError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let (client, config) = self.cluster_client(nodes)?;
        let conn = client.get_pending_async_connection_with_config(config);
        self.assemble(Conn::Cluster(conn))
    }

    /// The cluster client for `nodes`, and its connection settings.
    fn cluster_client<I, S>(
        &self,
        nodes: I,
    ) -> Result<(redis::cluster::ClusterClient, redis::cluster::ClusterConfig), ConnectError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.validate()?;
        let nodes: Vec<String> = nodes
            .into_iter()
            .map(|node| node.as_ref().to_owned())
            .collect();
        if nodes.is_empty() {
            return Err(ConnectError::Config(
                "a cluster needs at least one seed node URL".to_owned(),
            ));
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.timeout.max(Duration::from_millis(1)) * 4)
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(ca) = &self.ca {
            builder = builder.certs(certificates(ca));
        }
        let client = builder.build().map_err(ConnectError::of)?;
        let config =
            redis::cluster::ClusterConfig::new().set_connection_timeout(self.connect_timeout);
        Ok((client, config))
    }

    /// The client for `url`, trusting the private CA if one was given.
    fn client(&self, url: &str) -> Result<redis::Client, ConnectError> {
        match &self.ca {
            Some(ca) => redis::Client::build_with_tls(url, certificates(ca)),
            None => redis::Client::open(url),
        }
        .map_err(|error| match ConnectError::of(error) {
            ConnectError::Redis(error) => ConnectError::Url(error),
            other => other,
        })
    }

    /// The store over `conn`, with its lease renewal running.
    fn assemble(self, conn: Conn) -> Result<RedisStore, ConnectError> {
        let conn_is_cluster = conn.is_cluster();
        let runtime = Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let random = RandomState::new().hash_one((SystemTime::now(), std::process::id()));
        let inner = Arc::new(Inner {
            conn,
            prefix: self.prefix,
            timeout: self.timeout,
            calls_kept: self.calls_kept,
            lease_ttl_ms: millis(self.lease_ttl),
            margin_ms: millis(self.key_margin),
            leases: Mutex::new(HashMap::new()),
            instance: random,
            next_lease: AtomicU64::new(1),
            lines: super::waiting::Lines::default(),
            health: HealthState::new(),
            server_clock: ServerClock::new(if conn_is_cluster { 16_384 } else { 1 }),
            batcher: super::batch::Batcher::new(self.record_interval),
            grants: self.grants.clone().map(super::grants::Book::new),
            runtime: runtime.clone(),
        });
        let every = self.lease_ttl / 3;
        let me = Arc::downgrade(&inner);
        let handles = vec![
            runtime
                .spawn(renew_leases(me.clone(), every))
                .abort_handle(),
            runtime.spawn(write_behind(me.clone())).abort_handle(),
            runtime.spawn(give_back_freed(me.clone())).abort_handle(),
        ];
        let mut handles = handles;
        if let Some(grants) = &self.grants {
            handles.push(
                runtime
                    .spawn(super::grants::sweep_grants(me.clone(), grants.period_of()))
                    .abort_handle(),
            );
        }
        Ok(RedisStore {
            inner,
            _tasks: Arc::new(Tasks { handles, inner: me }),
        })
    }
}

/// TLS settings that trust `ca` (PEM).
fn certificates(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_settings() {
        let prefix = RedisStore::builder().prefix("a{b}").validate();
        assert!(matches!(prefix, Err(ConnectError::Config(message)) if message.contains("brace")));
        assert!(
            RedisStore::builder()
                .timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(RedisStore::builder().calls_kept(0).validate().is_err());
        assert!(
            RedisStore::builder()
                .lease_ttl(Duration::from_millis(5))
                .validate()
                .is_err()
        );
        assert!(RedisStore::builder().validate().is_ok());
    }
}
