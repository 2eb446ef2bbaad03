//! A Redis Cluster changing under load: a primary killed (its replica takes over) and a slot
//! migrated with `redis-cli --cluster reshard`. No admission waits past the store's timeout,
//! enforcement comes back by itself, a migration admits nothing beyond capacity, and what a failover
//! over-admits stays within the README's bound: the admissions the dead primary acknowledged in its
//! last moments, which its replica may not have received.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::watch;
use tollhouse_core::{Charge, Clock, Policy, ResolvedOrg, Store, SystemClock};
use tollhouse_redis::{RedisStore, cluster_slot};
use tollhouse_tests::redis_cluster::{TestCluster, cluster_for};
use tollhouse_tests::redis_server::{connection, unique_prefix};

/// Every admission gives up after this.
const TIMEOUT: Duration = Duration::from_millis(500);
/// What scheduling may add to a timeout on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(400);
/// Admissions sent at once, half through each instance.
const AT_ONCE: usize = 8;
/// Capacity of the org's day: more than a paced load admits before and during the change.
const CAPACITY: u64 = 1_000;
/// The cluster's `cluster-node-timeout`: no replica can be promoted sooner after its primary's
/// death, so whatever was admitted before then was admitted by the dead primary.
const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);

fn policy(org: &str) -> Policy {
    let text = format!(
        "[[plans.p.limits]]\nname = \"daily\"\ndimension = \"requests\"\nzone = \"UTC\"\n\
         tiers = [{{ window = \"day\", capacity = {CAPACITY} }}]\n\
         [[orgs]]\nid = \"{org}\"\nplan = \"p\"\n"
    );
    Policy::from_toml_str(&text, "failover.toml".as_ref()).expect("a valid policy")
}

/// What a load of admissions saw.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    refused: u64,
    failed: u64,
    slowest: Duration,
    /// When each admitted decision came back.
    admitted_at: Vec<Instant>,
}

/// Admissions for one org through two instances, `AT_ONCE` at a time, paced to one round every
/// 10 ms until [`Load::unpace`], then as fast as they come back until the org's day is spent.
struct Load {
    tally: Arc<Mutex<Tally>>,
    admitted: watch::Receiver<u64>,
    paced: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(stores: [RedisStore; 2], org: Arc<ResolvedOrg>) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let paced = Arc::new(AtomicBool::new(true));
        let (sender, admitted) = watch::channel(0);
        let task = tokio::spawn(run(
            stores,
            org,
            Arc::clone(&tally),
            Arc::clone(&paced),
            sender,
        ));
        Self {
            tally,
            admitted,
            paced,
            task,
        }
    }

    async fn admitted_at_least(&mut self, count: u64) {
        self.admitted
            .wait_for(|admitted| *admitted >= count)
            .await
            .expect("the load runs");
    }

    fn unpace(&self) {
        self.paced.store(false, Ordering::SeqCst);
    }

    /// Waits until the load has spent the org's day; what it saw.
    async fn finish(self) -> Tally {
        self.unpace();
        self.task.await.expect("the load does not panic");
        Arc::try_unwrap(self.tally)
            .expect("the load is over")
            .into_inner()
            .expect("not poisoned")
    }
}

/// The load's loop: ends after 50 refusals in a row once unpaced.
async fn run(
    stores: [RedisStore; 2],
    org: Arc<ResolvedOrg>,
    tally: Arc<Mutex<Tally>>,
    paced: Arc<AtomicBool>,
    admitted: watch::Sender<u64>,
) {
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut refused_in_a_row = 0;
    while paced.load(Ordering::SeqCst) || refused_in_a_row < 50 {
        if paced.load(Ordering::SeqCst) {
            pace.tick().await;
        }
        let outcomes = join_all((0..AT_ONCE).map(|n| {
            let store = &stores[n % 2];
            let org = &org;
            async move {
                let started = Instant::now();
                let decision = store.admit(org, Charge::default(), SystemClock.now()).await;
                (decision, started.elapsed(), Instant::now())
            }
        }))
        .await;
        let mut tally = tally.lock().expect("not poisoned");
        for (decision, took, at) in outcomes {
            tally.slowest = tally.slowest.max(took);
            match decision {
                Ok(decision) if decision.is_admitted() => {
                    tally.admitted += 1;
                    tally.admitted_at.push(at);
                    refused_in_a_row = 0;
                }
                Ok(_) => {
                    tally.refused += 1;
                    refused_in_a_row += 1;
                }
                Err(_) => tally.failed += 1,
            }
        }
        admitted.send_replace(tally.admitted);
    }
}

/// Two instances on `cluster`, with the test's prefix and timeout.
async fn two_instances(cluster: &TestCluster, prefix: &str) -> [RedisStore; 2] {
    let connect = || {
        RedisStore::builder()
            .prefix(prefix.to_owned())
            .timeout(TIMEOUT)
            .cluster(cluster.urls())
    };
    [
        connect().await.expect("a cluster store"),
        connect().await.expect("another instance"),
    ]
}

/// What the org's day counter holds on the node on `port`, a primary or a replica.
async fn day_count(port: u16, prefix: &str) -> u64 {
    let mut conn = connection(&format!("redis://127.0.0.1:{port}/")).await;
    let () = redis::cmd("READONLY")
        .query_async(&mut conn)
        .await
        .expect("READONLY");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:l:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let counters: Vec<&String> = keys.iter().filter(|key| key.starts_with(prefix)).collect();
    assert_eq!(counters.len(), 1, "one day counter: {keys:?}");
    redis::cmd("GET")
        .arg(counters[0])
        .query_async(&mut conn)
        .await
        .expect("GET")
}

/// The first org name (`org-0`, `org-1`, …) whose slot `wanted` accepts.
fn org_where(wanted: impl Fn(u16) -> bool) -> String {
    (0..)
        .map(|n| format!("org-{n}"))
        .find(|org| wanted(cluster_slot(org.as_bytes())))
        .expect("some name hashes there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_over_admits_at_most_what_it_had_not_replicated() {
    let Some(mut cluster) = cluster_for("a_killed_primary") else {
        return;
    };
    let prefix = unique_prefix("failover");
    let stores = two_instances(&cluster, &prefix).await;
    let org_id = org_where(|_| true);
    let slot = cluster_slot(org_id.as_bytes());
    let primary = cluster.owner_of(slot).expect("the slot has an owner");
    let replica = cluster
        .replica_of(primary)
        .expect("the primary has a replica");
    let policy = policy(&org_id);
    let org = Arc::clone(policy.org(&org_id).expect("defined"));

    let mut load = Load::start(stores, org);
    load.admitted_at_least(100).await;
    let killed_at = Instant::now();
    cluster.node(primary).expect("a node").stop();
    // What the replica holds once cut off is what its promotion will start from.
    tokio::task::block_in_place(|| cluster.wait_until_cut_off(replica)).expect("cut off");
    let replicated = day_count(replica, &prefix).await;
    let new_owner = tokio::task::block_in_place(|| cluster.wait_for_new_owner(slot, primary))
        .expect("failover");
    let promoted_at = Instant::now();
    assert_eq!(new_owner, replica, "the replica took over");
    let tally = load.finish().await;

    // No admission waited past its timeout, dead primary or not.
    assert!(tally.slowest <= TIMEOUT + SLACK, "{tally:?}");
    // Enforcement is back: the promoted replica admitted, then refused once the day was spent.
    let after_promotion = tally
        .admitted_at
        .iter()
        .filter(|at| **at > promoted_at)
        .count();
    assert!(after_promotion > 0, "nothing admitted after the failover");
    assert_eq!(day_count(new_owner, &prefix).await, CAPACITY);
    // What was admitted beyond capacity is what the replica missed: the charges the dead primary
    // acknowledged that never reached its replica. tollhouse adds nothing of its own to it.
    let mut by_dead_primary: Vec<Instant> = tally
        .admitted_at
        .iter()
        .copied()
        .filter(|at| *at < killed_at + NODE_TIMEOUT)
        .collect();
    by_dead_primary.sort();
    let missed = (by_dead_primary.len() as u64).saturating_sub(replicated);
    let lag = usize::try_from(replicated)
        .ok()
        .and_then(|first_missed| by_dead_primary.get(first_missed))
        .map_or(Duration::ZERO, |at| {
            killed_at.saturating_duration_since(*at)
        });
    let over = tally.admitted.saturating_sub(CAPACITY);
    eprintln!(
        "failover: {} admitted for a capacity of {CAPACITY} ({over} over; the replica missed \
         {missed} of the dead primary's {} admissions, a lag of {lag:?}); {} failed during {:?} \
         without a primary; slowest call {:?}",
        tally.admitted,
        by_dead_primary.len(),
        tally.failed,
        promoted_at - killed_at,
        tally.slowest
    );
    assert!(over <= missed, "{over} over, {missed} missed: {tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_load_admits_exactly() {
    let Some(cluster) = cluster_for("a_slot_migrated") else {
        return;
    };
    let prefix = unique_prefix("reshard");
    let stores = two_instances(&cluster, &prefix).await;
    // `reshard` moves a primary's lowest slots first: an org among the first 100 moves.
    let org_id = org_where(|slot| slot < 100);
    let slot = cluster_slot(org_id.as_bytes());
    let from = cluster.owner_of(slot).expect("the slot has an owner");
    let to = cluster
        .primaries()
        .into_iter()
        .find(|port| *port != from)
        .expect("another primary");
    let policy = policy(&org_id);
    let org = Arc::clone(policy.org(&org_id).expect("defined"));

    let mut load = Load::start(stores, org);
    load.admitted_at_least(100).await;
    tokio::task::block_in_place(|| cluster.reshard(from, to, 100)).expect("reshard");
    assert_eq!(cluster.owner_of(slot), Some(to), "the slot moved");
    let tally = load.finish().await;

    eprintln!(
        "reshard: {} admitted for a capacity of {CAPACITY}, {} failed, slowest call {:?}",
        tally.admitted, tally.failed, tally.slowest
    );
    assert!(tally.slowest <= TIMEOUT + SLACK, "{tally:?}");
    // Never beyond capacity; short of it only by calls that failed (each charged at most one).
    assert!(tally.admitted <= CAPACITY, "{tally:?}");
    assert!(tally.admitted + tally.failed >= CAPACITY, "{tally:?}");
    assert!(tally.failed <= 50, "failures stay few: {tally:?}");
    assert_eq!(day_count(to, &prefix).await, CAPACITY);
}
