//! The shared engine behind every copy of the layer: the current policy, the route rules declared
//! in code, the store and the clock.
//!
//! [`RateLimitLayer::new`](crate::RateLimitLayer::new) builds one [`Engine`] behind an `Arc`; every
//! service axum makes from the layer (one per route with `Router::layer`) shares it, so all routes
//! count against the same store. The policy can be replaced while serving
//! ([`Engine::replace_policy`]): counts live in the store, keyed by org id and limit name, so usage
//! already counted in open windows is kept.
//!
//! # Example
//!
//! ```
//! use tollhouse::{Policy, RateLimitLayer, Treatment};
//!
//! let text = r#"
//! [[plans.build.limits]]
//! name = "points"
//! dimension = "points"
//! tiers = [{ window = "minute", capacity = 100 }]
//!
//! [[routes]]
//! match = "GET /v1/reports"
//! cost = 10
//! "#;
//! let layer = RateLimitLayer::new(Policy::from_toml_str(text, "policy.toml".as_ref())?)
//!     .cost("GET /v1/reports", 5);
//! let engine = layer.engine();
//! // Rules declared in code win over the file's.
//! assert_eq!(engine.treatment("GET", "/v1/reports"), Treatment::Cost(5));
//! assert_eq!(engine.treatment("GET", "/v1/items"), Treatment::Cost(1));
//!
//! // A new policy takes effect on the next request; counts are kept.
//! let next = Policy::from_toml_str(&text.replace("100", "200"), "policy.toml".as_ref())?;
//! engine.replace_policy(next);
//! # Ok::<(), tollhouse::PolicyError>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use tollhouse_core::{
    Clock, DynStore, MemoryStore, Policy, PolicyError, ResolvedOrg, RouteRule, StoreError,
    SystemClock, Timestamp, Treatment, org_map::OrgMap,
};

use crate::headers::Quotas;
use crate::problem::ShapeProblem;

/// A quiet spell (in the engine's clock) after which a store failure is logged again.
const STORE_ERROR_BURST_MS: i64 = 10_000;

/// The state every copy of the layer shares: policy, declared route rules, store and clock.
pub struct Engine {
    policy: ArcSwap<Policy>,
    rules: ArcSwap<Vec<RouteRule>>,
    store: Arc<dyn DynStore>,
    clock: Arc<dyn Clock>,
    store_errors: BurstLog,
    lookup_errors: BurstLog,
    quotas: OrgMap<Arc<Quotas>>,
    /// When the quotas were last swept (clock ms).
    quotas_swept: AtomicI64,
    shape_problem: Option<ShapeProblem>,
}

/// How often the per-org quotas (header values, gauge keys) are dropped, so that orgs that have
/// gone quiet or left the policy hold nothing here; an active org builds its own again on its next
/// request.
const QUOTAS_SWEEP_MS: i64 = 5 * 60_000;

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("clock", &self.clock)
            .field("declared_rules", &self.rules.load().len())
            .finish_non_exhaustive()
    }
}

/// How a request's route is treated, and the pattern that said so.
#[derive(Clone, Debug)]
pub(crate) struct Classified {
    pub(crate) treatment: Treatment,
    /// The pattern of the matching rule, if one matched.
    pub(crate) pattern: Option<Arc<str>>,
}

/// Why `later` is refused: `earlier` matches every request it does, first.
fn unreachable_rule(earlier: &RouteRule, later: &RouteRule) -> PolicyError {
    PolicyError::invalid(
        "route",
        format!(
            "the rule for \"{later}\" ({}) never applies: \"{earlier}\" ({}), declared before it, matches the same requests first",
            describe(later.treatment()),
            describe(earlier.treatment()),
        ),
        "declare the narrower rule first (a path before a pattern that covers it, one method before any), \
         or give each method router its own cost",
    )
}

/// `cost 3`, `exempt` or `exempt, not billable`.
fn describe(treatment: Treatment) -> String {
    match treatment {
        Treatment::Cost(points) => format!("cost {points}"),
        Treatment::Exempt { billable: true } => "exempt".to_owned(),
        Treatment::Exempt { billable: false } => "exempt, not billable".to_owned(),
    }
}

/// One warning per burst of failures: the first after a quiet [`STORE_ERROR_BURST_MS`], with
/// how many were not logged since the last one.
#[derive(Debug)]
struct BurstLog {
    last: AtomicI64,
    suppressed: AtomicU64,
}

impl Default for BurstLog {
    fn default() -> Self {
        Self {
            last: AtomicI64::new(i64::MIN),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl BurstLog {
    /// `Some(suppressed)` when a failure at `now` should be logged, `None` when it is counted.
    fn first_of_burst(&self, now: Timestamp) -> Option<u64> {
        let now = now.as_millis();
        let last = self.last.swap(now, Ordering::AcqRel);
        if now.saturating_sub(last) >= STORE_ERROR_BURST_MS || now < last {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Engine {
    /// An engine over `policy`, counting in a [`MemoryStore`] that keeps `server.calls_kept` calls
    /// per org, on the system clock.
    pub fn new(policy: Policy) -> Self {
        let store = Arc::new(MemoryStore::with_calls_kept(policy.server().calls_kept));
        Self {
            policy: ArcSwap::from_pointee(policy),
            rules: ArcSwap::from_pointee(Vec::new()),
            store,
            clock: Arc::new(SystemClock),
            store_errors: BurstLog::default(),
            lookup_errors: BurstLog::default(),
            quotas: OrgMap::new(),
            quotas_swept: AtomicI64::new(i64::MIN),
            shape_problem: None,
        }
    }

    /// This engine counting in `store` instead.
    pub fn with_store(mut self, store: Arc<dyn DynStore>) -> Self {
        self.store = store;
        self
    }

    /// This engine reading time from `clock` instead.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// A new engine with the same policy, rules, store and clock (for builder methods of a layer
    /// whose engine is already shared).
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            policy: ArcSwap::new(self.policy.load_full()),
            rules: ArcSwap::new(self.rules.load_full()),
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            store_errors: BurstLog::default(),
            lookup_errors: BurstLog::default(),
            quotas: OrgMap::new(),
            quotas_swept: AtomicI64::new(i64::MIN),
            shape_problem: self.shape_problem.clone(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The policy in force, borrowed for one decision: unlike [`policy`](Self::policy), it does not
    /// write the reference count that every request shares (turn it into an `Arc` with
    /// [`Guard::into_inner`] to keep it longer).
    pub(crate) fn policy_for_decision(&self) -> Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// Puts `policy` in force from the next request on. Counts are kept: stores key them by org id
    /// and limit name, and carry a limit's counts over when its tiers keep their windows.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The store the counts live in.
    pub fn store(&self) -> &Arc<dyn DynStore> {
        &self.store
    }

    /// Lets `shape` see and change every problem body the layer and the usage routes answer
    /// with (see [`crate::problem`]).
    pub fn with_problem(mut self, shape: ShapeProblem) -> Self {
        self.shape_problem = Some(shape);
        self
    }

    /// The service's hook on problem bodies, if it gave one.
    pub(crate) fn shape_problem(&self) -> Option<&ShapeProblem> {
        self.shape_problem.as_ref()
    }

    /// The clock every decision reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current instant of the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Declares how requests matching `rule` are treated. Rules declared in code are tried before
    /// the policy file's `[[routes]]`, in the order they were declared; the first match wins.
    ///
    /// # Panics
    ///
    /// If a rule declared before covers every request `rule` matches, so that it would never
    /// apply: see [`try_declare`](Self::try_declare).
    pub fn declare(&self, rule: RouteRule) {
        if let Err(error) = self.try_declare(rule) {
            panic!("tollhouse: {error}");
        }
    }

    /// Declares `rule` as [`declare`](Self::declare) does, or refuses it, leaving the rules as
    /// they were, when a rule declared before covers every request it matches (the same path
    /// shape or a wider one, and its method, any method, or `GET` before `HEAD`): it would never
    /// apply, as the policy file refuses such a rule. Declaring the same rule again changes
    /// nothing.
    pub fn try_declare(&self, rule: RouteRule) -> Result<(), PolicyError> {
        let mut refused = None;
        self.rules.rcu(|rules| {
            refused = None;
            // The same rule twice (a router built twice over one layer) changes nothing.
            if rules.contains(&rule) {
                return Arc::clone(rules);
            }
            if let Some(earlier) = rules.iter().find(|earlier| earlier.covers(&rule)) {
                refused = Some(unreachable_rule(earlier, &rule));
                return Arc::clone(rules);
            }
            let mut next = Vec::with_capacity(rules.len() + 1);
            next.extend(rules.iter().cloned());
            next.push(rule.clone());
            Arc::new(next)
        });
        refused.map_or(Ok(()), Err)
    }

    /// The rules declared in code, in declaration order.
    pub fn declared_rules(&self) -> Arc<Vec<RouteRule>> {
        self.rules.load_full()
    }

    /// How a request with this method and path (raw, or the route template) is treated: the first
    /// declared rule that matches, else the policy file's first, else a cost of 1.
    pub fn treatment(&self, method: &str, path: &str) -> Treatment {
        self.classify(&self.policy.load(), method, path, false)
            .treatment
    }

    /// Classifies a request; `want_pattern` asks for the matching rule's pattern (when no route
    /// template is known to label the call with).
    pub(crate) fn classify(
        &self,
        policy: &Policy,
        method: &str,
        path: &str,
        want_pattern: bool,
    ) -> Classified {
        let declared = self.rules.load();
        let rule = declared
            .iter()
            .find(|rule| rule.matches(method, path))
            .or_else(|| policy.treatment(method, path).map(|(rule, _)| rule));
        match rule {
            Some(rule) => Classified {
                treatment: rule.treatment(),
                pattern: want_pattern.then(|| Arc::clone(rule.pattern().as_arc())),
            },
            None => Classified {
                treatment: Treatment::default(),
                pattern: None,
            },
        }
    }

    /// The header parts of `org`'s quotas, computed once per org and plan. Their capacities are
    /// those of when they were computed: a [`HeaderBuilder`](crate::headers::HeaderBuilder) says
    /// whether they still fit, and [`fresh_quotas`](Self::fresh_quotas) replaces them if not.
    pub(crate) fn quotas(&self, org: &ResolvedOrg, now: Timestamp) -> Arc<Quotas> {
        self.sweep_quotas(now);
        let quotas = self.quotas.pin();
        if let Some(cached) = quotas.get(org.id())
            && cached.shape_fits(org)
        {
            return Arc::clone(cached);
        }
        let fresh = Arc::new(self.new_quotas(org, now));
        quotas.insert(org.id(), Arc::clone(&fresh));
        fresh
    }

    /// `org`'s quotas computed afresh at `now`, replacing the cached ones.
    pub(crate) fn fresh_quotas(&self, org: &ResolvedOrg, now: Timestamp) -> Arc<Quotas> {
        let fresh = Arc::new(self.new_quotas(org, now));
        self.quotas.pin().insert(org.id(), Arc::clone(&fresh));
        fresh
    }

    /// Drops every org's quotas once every [`QUOTAS_SWEEP_MS`] (requests in flight keep theirs).
    fn sweep_quotas(&self, now: Timestamp) {
        let now = now.as_millis();
        let last = self.quotas_swept.load(Ordering::Relaxed);
        if last != i64::MIN && now.saturating_sub(last) < QUOTAS_SWEEP_MS && now >= last {
            return;
        }
        if self
            .quotas_swept
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && last != i64::MIN
        {
            self.quotas.pin().retain(|_| false);
        }
    }

    /// Orgs whose quotas are held now.
    #[cfg(test)]
    pub(crate) fn quotas_held(&self) -> usize {
        self.quotas.len()
    }

    /// An org's header values and in-flight gauge key, labelled by org unless the policy says
    /// `metrics_org_label = false`.
    fn new_quotas(&self, org: &ResolvedOrg, now: Timestamp) -> Quotas {
        let quotas = Quotas::new(org, now);
        if self.policy.load().server().metrics_org_label {
            quotas
        } else {
            quotas.without_org_label(org)
        }
    }

    /// Notes a store failure: logs a warning for the first of a burst, counts the rest.
    pub(crate) fn store_failed(&self, what: &'static str, error: &StoreError) {
        metrics::counter!("tollhouse_store_errors_total").increment(1);
        if let Some(suppressed) = self.store_errors.first_of_burst(self.clock.now()) {
            tracing::warn!(
                error = error as &dyn std::error::Error,
                during = what,
                suppressed_since_last_warning = suppressed,
                "tollhouse: the store failed; requests are let through or refused as on_store_error says until it recovers"
            );
        }
    }

    /// Logs, once per burst, that callers' credentials could not be checked and requests go
    /// through unmetered (`on_lookup_error = "allow"`).
    pub(crate) fn lookup_failed_open(&self) {
        if let Some(suppressed) = self.lookup_errors.first_of_burst(self.clock.now()) {
            tracing::warn!(
                suppressed_since_last_warning = suppressed,
                "tollhouse: callers' credentials cannot be checked; letting their requests through unmetered (on_lookup_error = \"allow\")"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, ServiceExt};

    use crate::test_support::{fixture, get, ok, policy};

    #[tokio::test]
    async fn an_org_gone_quiet_holds_no_quotas_after_a_sweep()
    -> Result<(), std::convert::Infallible> {
        let f = fixture(policy(
            "[[orgs]]\nid = \"globex\"\nplan = \"build\"\nkeys = [\"globex-key-1\"]\n",
        ));
        let svc = f.layer.clone().layer(tower::service_fn(
            |_request: http::Request<axum::body::Body>| async { ok(axum::body::Body::empty()) },
        ));
        drop(
            svc.clone()
                .oneshot(get("/items", Some("acme-key-1")))
                .await?,
        );
        drop(
            svc.clone()
                .oneshot(get("/items", Some("globex-key-1")))
                .await?,
        );
        assert_eq!(f.layer.engine().quotas_held(), 2);
        // Five minutes on, only the org that still calls holds its quotas again.
        f.clock.advance(Duration::from_secs(301));
        drop(svc.oneshot(get("/items", Some("globex-key-1"))).await?);
        assert_eq!(f.layer.engine().quotas_held(), 1);
        Ok(())
    }
}
