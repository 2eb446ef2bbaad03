//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`] and how it connects.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::runtime::Handle;

use super::late::ServerClock;
use super::lease::renew_leases;
use super::{AbortOnDrop, Inner, RedisStore, millis};
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
    /// behind still finds the window it is in.
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
        Ok(())
    }

    /// Connects to Redis at `url` (`redis://host:port/db`), checks that it answers and loads the
    /// scripts. Must be called inside a Tokio runtime.
    pub async fn connect(self, url: &str) -> Result<RedisStore, ConnectError> {
        let wait = self.connect_timeout;
        let store = self.connect_lazy(url)?;
        match tokio::time::timeout(wait, store.inner.load_scripts()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(error)) => Err(ConnectError::Redis(error)),
            Err(_) => Err(ConnectError::Timeout(wait)),
        }
    }

    /// A store that connects on its first call, so a service can start while Redis is down (its
    /// calls fail, and follow `on_store_error`, until Redis answers). Must be called inside a Tokio
    /// runtime; does no I/O.
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, ConnectError> {
        self.validate()?;
        let runtime = Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let client = redis::Client::open(url).map_err(ConnectError::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(8);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(ConnectError::Redis)?;
        let random = RandomState::new().hash_one((SystemTime::now(), std::process::id()));
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
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
            server_clock: ServerClock::default(),
            runtime: runtime.clone(),
        });
        let every = self.lease_ttl / 3;
        let task = runtime.spawn(renew_leases(Arc::downgrade(&inner), every));
        Ok(RedisStore {
            inner,
            _renewal: Arc::new(AbortOnDrop(task.abort_handle())),
        })
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
