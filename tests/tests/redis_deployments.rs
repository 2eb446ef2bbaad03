//! Redis as operators run it: TLS with a password (certificates the test makes), and a Cluster of
//! three primaries and three replicas. Errors name their real cause; two instances admit exactly
//! the capacity together, on TLS and across every primary of a cluster.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tollhouse_core::{
    CallRecord, Charge, Clock, Policy, ResolvedOrg, Store, SystemClock, UsageView,
};
use tollhouse_redis::{ConnectError, Grants, RedisStore, cluster_slot};
use tollhouse_tests::redis_cluster::cluster_for;
use tollhouse_tests::redis_server::{RedisServer, connection, own_redis_server, unique_prefix};
use tollhouse_tests::redis_tls::tls_redis_for;

const PASSWORD: &str = "s3cret-for-tests";

/// `orgs` orgs, each with `capacity` requests a day.
fn policy(orgs: &[String], capacity: u64) -> Policy {
    let mut text = format!(
        "[[plans.p.limits]]\nname = \"daily\"\ndimension = \"requests\"\nzone = \"UTC\"\n\
         tiers = [{{ window = \"day\", capacity = {capacity} }}]\n"
    );
    for org in orgs {
        text.push_str(&format!("[[orgs]]\nid = \"{org}\"\nplan = \"p\"\n"));
    }
    Policy::from_toml_str(&text, "deployments.toml".as_ref()).expect("a valid policy")
}

/// Sends `tries` admissions for `org`, half through each store at once; the admitted count.
async fn admitted_by_two(
    first: &RedisStore,
    second: &RedisStore,
    org: &Arc<ResolvedOrg>,
    tries: usize,
) -> usize {
    let now = SystemClock.now();
    let decisions = join_all((0..tries).map(|n| {
        let store = if n % 2 == 0 { first } else { second };
        async move { store.admit(org, Charge::default(), now).await }
    }))
    .await;
    decisions
        .into_iter()
        .filter(|decision| decision.as_ref().is_ok_and(|d| d.is_admitted()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_password_admits_exactly_and_names_what_is_wrong() {
    let Some(redis) = tls_redis_for("tls_with_a_password", PASSWORD) else {
        return;
    };
    let prefix = unique_prefix("tls");
    let connect = |url: String| {
        let ca = redis.ca();
        let prefix = prefix.clone();
        async move {
            RedisStore::builder()
                .prefix(prefix)
                .timeout(Duration::from_secs(2))
                .ca_file(ca)?
                .connect(&url)
                .await
        }
    };
    let first = connect(redis.url(PASSWORD))
        .await
        .expect("TLS with the CA and the password");
    let second = connect(redis.url(PASSWORD))
        .await
        .expect("a second instance");
    let orgs = vec!["acme".to_owned()];
    let policy = policy(&orgs, 25);
    let org = Arc::clone(policy.org("acme").expect("acme"));
    assert_eq!(admitted_by_two(&first, &second, &org, 60).await, 25);

    // A wrong password is an authentication failure, not "Redis does not answer".
    let wrong = connect(redis.url("not-the-password")).await;
    assert!(
        matches!(wrong, Err(ConnectError::Authentication(_))),
        "{wrong:?}"
    );
    let message = wrong
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(message.contains("credentials"), "{message}");

    // Without the private CA, the server's certificate is not trusted: a TLS failure.
    let untrusted = RedisStore::builder()
        .timeout(Duration::from_secs(2))
        .connect(&redis.url(PASSWORD))
        .await;
    assert!(
        matches!(untrusted, Err(ConnectError::Tls(_))),
        "{untrusted:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_and_an_unknown_host_are_named() {
    let port = RedisServer::free_port().expect("a free port");
    let refused = RedisStore::builder()
        .connect(&format!("redis://127.0.0.1:{port}/"))
        .await;
    assert!(
        matches!(refused, Err(ConnectError::Refused(_))),
        "{refused:?}"
    );
    let unknown = RedisStore::builder()
        .connect("redis://no-such-host.invalid:6379/")
        .await;
    assert!(
        matches!(unknown, Err(ConnectError::NotResolved(_))),
        "{unknown:?}"
    );
    let bad = RedisStore::builder()
        .connect("http://127.0.0.1:6379/")
        .await;
    assert!(matches!(bad, Err(ConnectError::Url(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_admits_exactly_for_orgs_on_every_primary() {
    let Some(cluster) = cluster_for("a_cluster_admits_exactly") else {
        return;
    };
    let prefix = unique_prefix("cluster");
    let connect = || {
        RedisStore::builder()
            .prefix(prefix.clone())
            .timeout(Duration::from_secs(2))
            .cluster(cluster.urls())
    };
    let first = connect().await.expect("a cluster store");
    let second = connect().await.expect("another instance");
    // Orgs until every primary owns at least two of them.
    let mut orgs = Vec::new();
    let mut owners = std::collections::HashMap::<u16, usize>::new();
    for n in 0.. {
        let org = format!("org-{n}");
        let owner = cluster
            .owner_of(cluster_slot(org.as_bytes()))
            .expect("every slot has an owner");
        *owners.entry(owner).or_default() += 1;
        orgs.push(org);
        if owners.len() == 3 && owners.values().all(|count| *count >= 2) {
            break;
        }
    }
    let policy = policy(&orgs, 12);
    for org in &orgs {
        let org = Arc::clone(policy.org(org).expect("defined"));
        assert_eq!(
            admitted_by_two(&first, &second, &org, 30).await,
            12,
            "{} on the primary at {:?}",
            org.id().as_str(),
            cluster.owner_of(cluster_slot(org.id().as_str().as_bytes()))
        );
    }

    // A single-server connection to a cluster node is refused by name, and a cluster connection
    // to a single server.
    let single = RedisStore::builder().connect(&cluster.urls()[0]).await;
    assert!(
        matches!(single, Err(ConnectError::IsACluster)),
        "{single:?}"
    );
    let plain = RedisServer::start().expect("a plain redis-server");
    let not_a_cluster = RedisStore::builder()
        .timeout(Duration::from_secs(2))
        .cluster([plain.url()])
        .await;
    assert!(
        matches!(not_a_cluster, Err(ConnectError::NotACluster(_))),
        "{not_a_cluster:?}"
    );
}

/// The ACL the README and SECURITY.md give a tollhouse user: its keys only, reads and writes,
/// scripts, TIME and PING, nothing dangerous (`INFO` included).
const ACL_RULES: &[&str] = &[
    "on",
    ">acl-password-for-tests",
    "~tollhouse:*",
    "-@all",
    "+@read",
    "+@write",
    "+evalsha",
    "+eval",
    "+script|load",
    "+time",
    "+ping",
    "-@dangerous",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_only_the_documented_rights_runs_everything() {
    let Some(server) = own_redis_server("an_acl_user") else {
        return;
    };
    let mut admin = connection(&server.url()).await;
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg("tollhouse").arg(ACL_RULES);
    let _: () = setuser.query_async(&mut admin).await.expect("ACL SETUSER");
    let url = format!(
        "redis://tollhouse:acl-password-for-tests@127.0.0.1:{}/",
        server.port()
    );
    let store = RedisStore::builder()
        .prefix("tollhouse:acl:")
        .timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("the documented ACL is enough to connect");
    let text = "[plans.p]\nconcurrency = 3\n[[plans.p.limits]]\nname = \"daily\"\n\
                dimension = \"requests\"\nzone = \"UTC\"\n\
                tiers = [{ window = \"day\", capacity = 5 }]\n[[orgs]]\nid = \"acme\"\nplan = \"p\"\n";
    let policy = Policy::from_toml_str(text, "acl.toml".as_ref()).expect("a valid policy");
    let org = Arc::clone(policy.org("acme").expect("acme"));
    let now = SystemClock.now();

    // Admissions (with the concurrency count), releases, renewals, settlements and records,
    // usage reads, peeks and resets: every command tollhouse sends.
    let decisions = join_all((0..4).map(|_| store.admit(&org, Charge::default(), now))).await;
    let permits: Vec<_> = decisions
        .into_iter()
        .filter_map(|decision| decision.expect("admitted or refused, not NOPERM").permit)
        .collect();
    assert_eq!(permits.len(), 3, "the concurrency limit");
    store.renew_leases().await.expect("renewals");
    drop(permits);
    store
        .record(&org, CallRecord::new(now, "GET", "/v1/items"))
        .await
        .expect("records");
    let usage = store
        .usage_view(&org, now, UsageView::All { days: 2 })
        .await
        .expect("usage reads");
    assert_eq!(usage.usage.calls.len(), 1);
    store.flush().await;
    let statuses = store.peek(&org, now).await.expect("peeks");
    assert_eq!(statuses[0].remaining, 2);
    store.reset(&org, None).await.expect("resets");
    assert_eq!(store.peek(&org, now).await.expect("peeks")[0].remaining, 5);
    assert!(store.health().healthy, "{:?}", store.health());

    // Quota grants: taken (quota and concurrency slots), spent, published, given back.
    let granting = RedisStore::builder()
        .prefix("tollhouse:acl-grants:")
        .timeout(Duration::from_secs(2))
        .grants(Grants::new().hot_rps(0))
        .connect(&url)
        .await
        .expect("connect");
    let big = Policy::from_toml_str(
        &text
            .replace("capacity = 5", "capacity = 100")
            .replace("concurrency = 3", "concurrency = 50"),
        "acl.toml".as_ref(),
    )
    .expect("a valid policy");
    let big = Arc::clone(big.org("acme").expect("acme"));
    let mut held = Vec::new();
    for _ in 0..10 {
        let decision = granting
            .admit(&big, Charge::default(), now)
            .await
            .expect("admitted, not NOPERM");
        assert!(decision.is_admitted());
        held.push(decision.permit);
    }
    granting.renew_leases().await.expect("renewals");
    assert_eq!(
        granting.usage(&big, now, 1).await.expect("usage").in_flight,
        10
    );
    drop(held);
    granting.flush().await;
    granting.reset(&big, None).await.expect("resets");
    assert_eq!(
        granting.peek(&big, now).await.expect("peeks")[0].remaining,
        100
    );
    assert!(granting.health().healthy, "{:?}", granting.health());

    // Keys outside the prefix the ACL allows are refused by Redis, and the error says so.
    let outside = RedisStore::builder()
        .prefix("other:")
        .timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("connecting reads no key");
    let refused = outside.admit(&org, Charge::default(), now).await;
    let error = refused.expect_err("NOPERM");
    let message = std::error::Error::source(&error)
        .map(|source| source.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("NOPERM") || message.contains("permission"),
        "{message}"
    );
}
