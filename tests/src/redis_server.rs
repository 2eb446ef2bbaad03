//! Redis for tests: the one at `TOLLHOUSE_REDIS_URL`, else a `redis-server` of the test's own.
//!
//! With neither, a test prints a `SKIP:` notice and returns — except under `CI=true`, where a
//! missing Redis fails the test. Tests share a Redis safely by giving every store its own key
//! prefix ([`unique_prefix`]).
//!
//! # Example
//!
//! ```no_run
//! use tollhouse_tests::redis_server::{redis_for, unique_prefix};
//!
//! let Some(redis) = redis_for("my_test") else { return };
//! let prefix = unique_prefix("my_test");
//! println!("{} {prefix}", redis.url());
//! ```

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// The variable naming a Redis to test against (`redis://127.0.0.1:6379/`).
pub const URL_VAR: &str = "TOLLHOUSE_REDIS_URL";

/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports given to this process's servers. A server that is stopped and restarted keeps its port,
/// and a test's store keeps connecting to it meanwhile; were another test's server given the same
/// port in between (the kernel hands a freed port out again), that store would reach the other
/// server. So a port goes to one server of the process only.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free loopback port that no server of this process has had.
fn free_port() -> io::Result<u16> {
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port that another redis-server of this process has not had",
    ))
}

/// Which server program runs: Redis, or Valkey (its fork, which speaks the same protocol and
/// runs the same scripts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavor {
    /// `redis-server` and `redis-cli`.
    #[default]
    Redis,
    /// `valkey-server` and `valkey-cli` (Debian bookworm: from bookworm-backports).
    Valkey,
}

impl Flavor {
    /// The server's program.
    pub fn server(self) -> &'static str {
        match self {
            Self::Redis => "redis-server",
            Self::Valkey => "valkey-server",
        }
    }

    /// The command-line client's program.
    pub fn cli(self) -> &'static str {
        match self {
            Self::Redis => "redis-cli",
            Self::Valkey => "valkey-cli",
        }
    }
}

/// A `redis-server` (or `valkey-server`) process on a free loopback port, without persistence;
/// killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    flavor: Flavor,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` from `PATH` on a free port and waits until it answers `PING`.
    pub fn start() -> io::Result<Self> {
        Self::start_on(free_port()?)
    }

    /// Starts `redis-server` on `port` and waits until it answers `PING`.
    pub fn start_on(port: u16) -> io::Result<Self> {
        Self::start_with(port, Vec::new())
    }

    /// Starts `redis-server` on `port` with `extra` arguments (TLS, cluster mode) and waits until
    /// it answers on its plain port.
    pub fn start_with(port: u16, extra: Vec<String>) -> io::Result<Self> {
        Self::start_flavor(Flavor::Redis, port, extra)
    }

    /// Starts `flavor`'s server on `port` with `extra` arguments and waits until it answers.
    pub fn start_flavor(flavor: Flavor, port: u16, extra: Vec<String>) -> io::Result<Self> {
        let mut server = Self {
            flavor,
            port,
            extra,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// A free loopback port no server of this process has had.
    pub fn free_port() -> io::Result<u16> {
        free_port()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let child = Command::new(self.flavor.server())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "{} on port {} exited at start: {status}",
                    self.flavor.server(),
                    self.port
                )));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} on port {} did not answer PING",
                        self.flavor.server(),
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (like a crash) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis answers `PING` on `port` of the loopback address (with `PONG`, or by asking
/// for a password it was started with).
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok()
        && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
}

/// A Redis for one test: the URL, and the server when the test started one.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    server: Option<RedisServer>,
}

impl TestRedis {
    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server, when this test started its own.
    pub fn server(&mut self) -> Option<&mut RedisServer> {
        self.server.as_mut()
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Prints a `SKIP:` notice for `test` (or, under `CI=true`, fails it).
pub fn skip(test: &str, why: &str) {
    let message = format!(
        "SKIP: {test}: {why}. Set {URL_VAR}=redis://127.0.0.1:6379/ or put redis-server on PATH \
         (Debian: apt-get install redis-server)."
    );
    assert!(
        !in_ci(),
        "{message} (CI=true: a missing Redis fails the tests)"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!`, and a skip should
    // be seen in a normal run.
    let _ = writeln!(io::stderr(), "{message}");
}

/// Redis for `test`: `TOLLHOUSE_REDIS_URL` if set, else a fresh `redis-server` of its own. `None`
/// (after printing a `SKIP:` notice) when there is neither; under `CI=true`, panics instead.
pub fn redis_for(test: &str) -> Option<TestRedis> {
    if let Ok(url) = std::env::var(URL_VAR)
        && !url.is_empty()
    {
        return Some(TestRedis { url, server: None });
    }
    match RedisServer::start() {
        Ok(server) => Some(TestRedis {
            url: server.url(),
            server: Some(server),
        }),
        Err(error) => {
            skip(
                test,
                &format!("no {URL_VAR} and no redis-server to start ({error})"),
            );
            None
        }
    }
}

/// A `redis-server` of `test`'s own, for tests that stop it or count its commands. `None` (after
/// printing a `SKIP:` notice) when `redis-server` cannot be started; under `CI=true`, panics.
pub fn own_redis_server(test: &str) -> Option<RedisServer> {
    match RedisServer::start() {
        Ok(server) => Some(server),
        Err(error) => {
            skip(
                test,
                &format!("this test needs a redis-server of its own ({error})"),
            );
            None
        }
    }
}

/// A key prefix that no other test (or run) uses: `test:<name>:<random>:`.
pub fn unique_prefix(test: &str) -> String {
    let random = RandomState::new().hash_one((SystemTime::now(), std::process::id(), test));
    format!("test:{test}:{random:016x}:")
}

/// A plain connection to the Redis at `url`, for a test to look at what the store wrote.
pub async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// How many times clients have called `command` (lower case, such as `evalsha`), as `INFO
/// commandstats` counts them (a script's own commands are counted too).
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let name = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|line| line.strip_prefix(name.as_str()))
        .and_then(|stats| stats.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// A `valkey-server` of `test`'s own. `None` (after printing a `SKIP:` notice) when it cannot be
/// started; under `CI=true`, panics.
pub fn own_valkey_server(test: &str) -> Option<RedisServer> {
    match RedisServer::start_flavor(Flavor::Valkey, free_port().ok()?, Vec::new()) {
        Ok(server) => Some(server),
        Err(error) => {
            skip(
                test,
                &format!(
                    "this test needs valkey-server ({error}; Debian bookworm: apt-get install -t \
                     bookworm-backports valkey-server valkey-tools)"
                ),
            );
            None
        }
    }
}
