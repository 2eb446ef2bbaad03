//! A Redis Cluster of a test's own: three primaries and three replicas (`redis-server
//! --cluster-enabled yes`, joined by `redis-cli --cluster create --cluster-replicas 1`), with a
//! low node timeout so that a killed primary's replica takes over within a couple of seconds.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, skip};

/// How long the cluster may take to agree on its slots.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running cluster; every node is killed, and its files removed, when dropped.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl TestCluster {
    /// Starts six nodes and joins them: three primaries, each with a replica.
    pub fn start() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tollhouse-cluster-{}-{}",
            std::process::id(),
            RedisServer::free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = RedisServer::free_port()?;
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                "--dir",
                &dir.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(RedisServer::start_with(port, extra)?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {status}"
            )));
        }
        let cluster = Self { nodes, dir };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub fn wait_until_ok(&self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let all_ok = self.nodes.iter().all(|node| {
                cli(node.port(), &["cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the cluster did not reach cluster_state:ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The ports of the nodes that are primaries now.
    pub fn primaries(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(RedisServer::port)
            .filter(|port| {
                cli(*port, &["info", "replication"]).is_ok_and(|info| info.contains("role:master"))
            })
            .collect()
    }

    /// The port of the primary that owns `slot`.
    pub fn owner_of(&self, slot: u16) -> Option<u16> {
        let any = self.nodes.first()?.port();
        let slots = cli(any, &["cluster", "shards"]).ok()?;
        // `redis-cli` prints the nested reply as lines; find the slot range, then its primary's
        // port (the first `port` line after a `role master` pair in that shard).
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        let mut shard_start = 0;
        for (index, line) in lines.iter().enumerate() {
            if *line == "slots" {
                shard_start = index;
            }
            if *line == "slots"
                && let (Some(from), Some(to)) = (lines.get(index + 1), lines.get(index + 2))
                && let (Ok(from), Ok(to)) = (from.parse::<u16>(), to.parse::<u16>())
                && (from..=to).contains(&slot)
            {
                return primary_port_after(&lines[shard_start..]);
            }
        }
        None
    }

    /// The node on `port`, to stop or restart it.
    pub fn node(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|node| node.port() == port)
    }
}

/// The port of the first primary in a `CLUSTER SHARDS` shard's lines.
fn primary_port_after(lines: &[&str]) -> Option<u16> {
    let mut port = None;
    for pair in lines.windows(2) {
        if pair[0] == "port" {
            port = pair[1].parse().ok();
        }
        if pair[0] == "role" && pair[1] == "master" {
            return port;
        }
    }
    None
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p port args...`, its output.
fn cli(port: u16, args: &[&str]) -> io::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A cluster for `test`, or `None` after a `SKIP:` notice (under `CI=true`, a failure).
pub fn cluster_for(test: &str) -> Option<TestCluster> {
    match TestCluster::start() {
        Ok(cluster) => Some(cluster),
        Err(error) => {
            skip(
                test,
                &format!("this test needs redis-server and redis-cli for a cluster ({error})"),
            );
            None
        }
    }
}
