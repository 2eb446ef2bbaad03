//! A Redis Cluster of a test's own: three primaries and three replicas (`redis-server
//! --cluster-enabled yes`, joined by `redis-cli --cluster create --cluster-replicas 1`), with a
//! low node timeout so that a killed primary's replica takes over within a couple of seconds.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{Flavor, RedisServer, skip};

/// How long the cluster may take to agree on its slots.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running cluster; every node is killed, and its files removed, when dropped.
#[derive(Debug)]
pub struct TestCluster {
    flavor: Flavor,
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl TestCluster {
    /// Starts six Redis nodes and joins them: three primaries, each with a replica.
    pub fn start() -> io::Result<Self> {
        Self::start_flavor(Flavor::Redis)
    }

    /// Starts six nodes of `flavor` and joins them: three primaries, each with a replica.
    pub fn start_flavor(flavor: Flavor) -> io::Result<Self> {
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
                // A replica syncs at once (the default waits 5 s for more replicas), so that a
                // test can kill its primary soon after start.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &dir.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(RedisServer::start_flavor(flavor, port, extra)?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let status = Command::new(flavor.cli())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "{} --cluster create failed: {status}",
                flavor.cli()
            )));
        }
        let cluster = Self { flavor, nodes, dir };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok` and every primary's replica is in
    /// sync (`state=online`).
    pub fn wait_until_ok(&self) -> io::Result<()> {
        poll("the cluster did not reach cluster_state:ok", || {
            let all_ok = self.nodes.iter().all(|node| {
                cli(self.flavor, node.port(), &["cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            }) && self.primaries().iter().all(|port| {
                cli(self.flavor, *port, &["info", "replication"])
                    .is_ok_and(|info| info.contains("slave0:") && info.contains("state=online"))
            });
            all_ok.then_some(())
        })
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
                cli(self.flavor, *port, &["info", "replication"])
                    .is_ok_and(|info| info.contains("role:master"))
            })
            .collect()
    }

    /// The port of the primary that owns `slot`, as the first node that answers sees it.
    pub fn owner_of(&self, slot: u16) -> Option<u16> {
        let any = self.live_port()?;
        let slots = cli(self.flavor, any, &["cluster", "shards"]).ok()?;
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

    /// The port of the first node that answers `PING`.
    fn live_port(&self) -> Option<u16> {
        self.nodes
            .iter()
            .map(RedisServer::port)
            .find(|port| crate::redis_server::ping(*port))
    }

    /// The port of the replica of the primary on `primary` (from its `INFO replication`).
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        let info = cli(self.flavor, primary, &["info", "replication"]).ok()?;
        let line = info.lines().find(|line| line.starts_with("slave0:"))?;
        let port = line
            .split(',')
            .find_map(|item| item.strip_prefix("port="))?;
        port.trim().parse().ok()
    }

    /// The cluster node id of the node on `port`.
    pub fn id_of(&self, port: u16) -> Option<String> {
        let id = cli(self.flavor, port, &["cluster", "myid"]).ok()?;
        Some(id.trim().to_owned()).filter(|id| !id.is_empty())
    }

    /// Waits until a node other than `old` owns `slot` and the cluster says `cluster_state:ok`
    /// again (after a failover); the new owner's port.
    pub fn wait_for_new_owner(&self, slot: u16, old: u16) -> io::Result<u16> {
        poll(
            &format!("no node took slot {slot} over from the one on port {old}"),
            || {
                self.owner_of(slot)
                    .filter(|owner| *owner != old)
                    .filter(|owner| {
                        cli(self.flavor, *owner, &["cluster", "info"])
                            .is_ok_and(|info| info.contains("cluster_state:ok"))
                    })
            },
        )
    }

    /// Waits until the replica on `replica` has seen its primary's link go down: from then on it
    /// has applied everything its primary sent, and holds what a failover will promote.
    pub fn wait_until_cut_off(&self, replica: u16) -> io::Result<()> {
        poll(
            &format!("the replica on port {replica} still sees its primary"),
            || {
                cli(self.flavor, replica, &["info", "replication"])
                    .is_ok_and(|info| info.contains("master_link_status:down"))
                    .then_some(())
            },
        )
    }

    /// Moves the first `slots` slots of the primary on `from` to the primary on `to` with
    /// `redis-cli --cluster reshard`, keys and all.
    pub fn reshard(&self, from: u16, to: u16, slots: u16) -> io::Result<()> {
        let (Some(from_id), Some(to_id)) = (self.id_of(from), self.id_of(to)) else {
            return Err(io::Error::other("a node has no cluster id"));
        };
        let output = Command::new(self.flavor.cli())
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "{} --cluster reshard failed: {}\n{}",
                self.flavor.cli(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// The node on `port`, to stop or restart it.
    pub fn node(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|node| node.port() == port)
    }
}

/// What `ready` gives once it gives something, asked every 50 ms for [`READY_TIMEOUT`] at most
/// (the state of other processes, which nothing notifies); a timeout saying `what` after that.
fn poll<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> io::Result<T> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, what.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// `redis-cli -p port args...` (or `valkey-cli`), its output.
fn cli(flavor: Flavor, port: u16, args: &[&str]) -> io::Result<String> {
    let output = Command::new(flavor.cli())
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A Redis cluster for `test`, or `None` after a `SKIP:` notice (under `CI=true`, a failure).
pub fn cluster_for(test: &str) -> Option<TestCluster> {
    cluster_of(Flavor::Redis, test)
}

/// A cluster of `flavor`'s nodes for `test`, or `None` after a `SKIP:` notice (under `CI=true`, a
/// failure).
pub fn cluster_of(flavor: Flavor, test: &str) -> Option<TestCluster> {
    match TestCluster::start_flavor(flavor) {
        Ok(cluster) => Some(cluster),
        Err(error) => {
            skip(
                test,
                &format!(
                    "this test needs {} and {} for a cluster ({error})",
                    flavor.server(),
                    flavor.cli()
                ),
            );
            None
        }
    }
}
