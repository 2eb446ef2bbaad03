//! The usage tests' world: a policy with two orgs, a `MemoryStore`, a `ManualClock`, a
//! `UsageSource` over them, and the usage router served on 127.0.0.1:0. Calls are recorded the way
//! the layer records them (admit, then settle with the call), without the layer.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tollhouse::Unidentified;
use tollhouse::identity::{Refusal, bearer_token};
use tollhouse::usage::{self, UsageSource};
use tollhouse_core::usage::mask_key;
use tollhouse_core::{
    BoxFuture, CallRecord, Charge, Clock, Correction, Decision, DynStore, ManualClock, MemoryStore,
    Outcome, Policy, ResolvedOrg, Settlement, Timestamp, Verdict,
};

/// 2026-03-14T09:00:00Z: 10:00 in Amsterdam (CET, +01:00), 05:00 in New York (EDT, -04:00).
pub(crate) const START: Timestamp = Timestamp::from_secs(1_773_478_800);
/// A day in seconds.
pub(crate) const DAY: u64 = 86_400;

pub(crate) const POLICY: &str = r#"
[server]
time_zone = "UTC"

[plans.build]
concurrency = 3

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 100 }, { window = "hour", capacity = 2000 }]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2500 }]

[[plans.build.limits]]
name = "latency"
dimension = "latency_ms"
tiers = [{ window = "day", capacity = 600000 }]

[[plans.data.limits]]
name = "count"
dimension = "requests"
zone = "server"
tiers = [
  { window = "minute", capacity = 100 },
  { window = "hour", capacity = 2600 },
  { window = "day", capacity = 1150 },
]

[[plans.data.limits]]
name = "smooth"
dimension = "requests"
rate = { amount = 2, per = "second", burst = 10 }

[[orgs]]
id = "acme"
plan = "build"
time_zone = "Europe/Amsterdam"
keys = ["acme-key-1", "acme-key-2"]

[[orgs]]
id = "globex"
plan = "data"
time_zone = "America/New_York"
keys = ["globex-key-1"]
"#;

/// What the usage routes read: the policy's keys, the store, the manual clock.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) policy: Policy,
    pub(crate) store: MemoryStore,
    pub(crate) clock: ManualClock,
}

impl UsageSource for Source {
    fn identify(
        &self,
        parts: http::request::Parts,
    ) -> BoxFuture<'_, Result<Arc<ResolvedOrg>, Refusal>> {
        Box::pin(async move {
            let key = bearer_token(&parts)?;
            let org = self.policy.org_by_key(key).ok_or(Unidentified::Unknown)?;
            Ok(Arc::clone(org))
        })
    }

    fn store(&self) -> &dyn DynStore {
        &self.store
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// The usage router on a loopback port, and a way to make calls and read the routes.
pub(crate) struct Harness {
    pub(crate) source: Arc<Source>,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    server: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One call to record.
pub(crate) struct Call<'a> {
    pub(crate) key: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) route: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) cost: u64,
    pub(crate) latency_ms: u64,
}

impl<'a> Call<'a> {
    /// `GET path` with `key`, route = the path without its query, cost 1, 20 ms.
    pub(crate) fn get(key: &'a str, path: &'a str) -> Self {
        Self {
            key,
            method: "GET",
            path,
            route: Some(path.split('?').next().unwrap_or(path)),
            status: 200,
            cost: 1,
            latency_ms: 20,
        }
    }

    fn record(&self, at: Timestamp, outcome: Outcome) -> CallRecord {
        let mut record = CallRecord::new(at, self.method, self.path)
            .with_key(mask_key(self.key))
            .with_outcome(outcome);
        if let Some(route) = self.route {
            record = record.with_route(route);
        }
        record.status = self.status;
        record.cost = self.cost;
        record.latency_ms = self.latency_ms;
        record
    }
}

impl Harness {
    /// Serves the usage router over the policy above, the clock at [`START`].
    pub(crate) async fn start() -> Self {
        let policy = Policy::from_toml_str(POLICY, Path::new("usage-test.toml")).expect("policy");
        let source = Arc::new(Source {
            policy,
            store: MemoryStore::new(),
            clock: ManualClock::new(START),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let app = usage::usage_router(Arc::clone(&source));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self {
            source,
            base,
            http,
            server,
        }
    }

    pub(crate) fn org(&self, key: &str) -> Arc<ResolvedOrg> {
        self.source
            .policy
            .org_by_key(key)
            .cloned()
            .expect("a key of the policy")
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.source.clock.now()
    }

    pub(crate) fn advance_secs(&self, secs: u64) {
        self.source.clock.advance(Duration::from_secs(secs));
    }

    pub(crate) fn set(&self, at: Timestamp) {
        self.source.clock.set(at);
    }

    /// Admits `call` (charging every limit) and holds its concurrency permit in the result.
    pub(crate) fn hold(&self, call: &Call<'_>) -> Decision {
        let org = self.org(call.key);
        let decision = self
            .source
            .store
            .admit_now(&org, Charge::points(call.cost), self.now());
        assert!(decision.is_admitted(), "{:?}", decision.verdict);
        decision
    }

    /// An admitted call, settled with its latency and recorded: what the layer does.
    pub(crate) fn admit(&self, call: &Call<'_>) {
        let org = self.org(call.key);
        let now = self.now();
        let decision = self.hold(call);
        let Verdict::Admitted { receipt, .. } = decision.verdict else {
            unreachable!("hold asserts admission")
        };
        self.source.store.settle_now(
            &org,
            Settlement {
                receipt,
                correction: Correction {
                    latency_ms: call.latency_ms,
                    cost_delta: 0,
                },
                call: Some(call.record(now, Outcome::Admitted)),
                at: now,
            },
        );
        drop(decision.permit);
    }

    /// A call rejected by `limit`: nothing charged, recorded as billable.
    pub(crate) fn reject(&self, call: &Call<'_>, limit: &str) {
        let org = self.org(call.key);
        let mut record = call.record(
            self.now(),
            Outcome::Rejected {
                limit: limit.into(),
            },
        );
        record.status = 429;
        record.cost = 0;
        self.source.store.record_now(&org, record);
    }

    /// A call to an exempt route: not charged, recorded as billable.
    pub(crate) fn exempt(&self, call: &Call<'_>) {
        let org = self.org(call.key);
        let mut record = call.record(self.now(), Outcome::Exempt);
        record.cost = 0;
        self.source.store.record_now(&org, record);
    }

    /// `GET path` with an optional `Authorization` header value.
    pub(crate) async fn get(&self, path: &str, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.expect("request")
    }

    /// `GET path` as the owner of `key`; asserts a private JSON 200 and returns the body.
    pub(crate) async fn json(&self, path: &str, key: &str) -> Value {
        let response = self.get(path, Some(&format!("Bearer {key}"))).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let headers = response.headers();
        assert_eq!(
            headers["content-type"], "application/json",
            "GET {path}: content type"
        );
        assert_eq!(headers["cache-control"], "no-store", "GET {path}: caching");
        response.json().await.expect("a JSON body")
    }
}

/// The object's member names, sorted.
pub(crate) fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Asserts that `value` is an object with exactly these members.
pub(crate) fn assert_members(value: &Value, expected: &[&str]) {
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(keys(value), expected, "members of {value}");
}

/// A non-negative integer member.
pub(crate) fn uint(value: &Value, member: &str) -> u64 {
    value[member]
        .as_u64()
        .unwrap_or_else(|| panic!("{member} is a non-negative integer in {value}"))
}

/// A string member.
pub(crate) fn string<'v>(value: &'v Value, member: &str) -> &'v str {
    value[member]
        .as_str()
        .unwrap_or_else(|| panic!("{member} is a string in {value}"))
}

/// An array member.
pub(crate) fn array<'v>(value: &'v Value, member: &str) -> &'v [Value] {
    value[member]
        .as_array()
        .unwrap_or_else(|| panic!("{member} is an array in {value}"))
}

/// Whether `text` looks like an RFC 3339 instant with this UTC offset (`+01:00`).
pub(crate) fn is_rfc3339_at(text: &str, offset: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() >= 25
        && text.ends_with(offset)
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && text[..4].bytes().all(|b| b.is_ascii_digit())
}
