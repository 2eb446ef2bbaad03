//! The whole policy: server settings, plans, orgs, keys and route rules, validated together, and each
//! org resolved into the capacities and zones its requests are measured against.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Dimension, Limit, LimitZone, Org, Plan, Policy, Tier, Timestamp, Window};
//!
//! let daily = Limit::new("daily", Dimension::Requests, LimitZone::Org, vec![Tier::new(Window::Day, 2500)?])?;
//! let policy = Policy::builder()
//!     .plan(Plan::new("build", vec![daily])?)
//!     .org(Org::new("acme", "build").with_key("acme-key-1"))
//!     .build()?;
//! let acme = policy.org_by_key("acme-key-1").expect("known key");
//! assert_eq!(acme.limits()[0].capacity(0, Timestamp::from_secs(0)), 2500);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use chrono_tz::Tz;

use crate::error::PolicyError;
use crate::key_memo;
use crate::org::{Environment, KeyDigest, Org, OrgId};
use crate::plan::{Concurrency, Dimension, Limit, LimitZone, Plan};
use crate::rate::Rate;
use crate::route::{RouteRule, Treatment};
use crate::tier::MAX_TIERS;
use crate::time::Timestamp;
use crate::window::Window;

/// How `X-RateLimit-Reset` is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResetFormat {
    /// Unix epoch seconds (the default).
    #[default]
    Epoch,
    /// An RFC 9110 IMF-fixdate.
    HttpDate,
    /// Seconds from now.
    Delta,
}

/// What to do with a request when the store cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnStoreError {
    /// Let it through (the default), logging once per burst of failures.
    #[default]
    Allow,
    /// Refuse it with 503.
    Deny,
}

/// One request's latency counts for at most an hour unless the policy says otherwise.
pub const DEFAULT_MAX_LATENCY_MS: u64 = 3_600_000;

/// What the usage log and report keep of a request's query string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum UsageQuery {
    /// The whole query (the default).
    #[default]
    Keep,
    /// No query: the path alone.
    Drop,
    /// The query with the values of these parameters replaced by `REDACTED`.
    Redact(Arc<[Box<str>]>),
}

/// Settings that apply to every org.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSettings {
    /// Zone of limits with `zone = "server"`, and of orgs without a zone of their own.
    pub time_zone: Tz,
    /// What sandbox capacities are divided by (at least 1).
    pub sandbox_divisor: u32,
    /// How `X-RateLimit-Reset` is written.
    pub reset_format: ResetFormat,
    /// Whether to send `X-RateLimit-*`.
    pub legacy_headers: bool,
    /// Whether to send `RateLimit-Policy` and `RateLimit`.
    pub ietf_headers: bool,
    /// What to do when the store fails.
    pub on_store_error: OnStoreError,
    /// What to do when the service's own key lookup cannot tell who is calling (its database is
    /// down): answer 503 (`Deny`, the default) or let the request through unmetered (`Allow`).
    pub on_lookup_error: OnStoreError,
    /// How many recent calls each org's log keeps.
    pub calls_kept: usize,
    /// What the usage keeps of a request's query string.
    pub usage_query: UsageQuery,
    /// The most milliseconds one request's latency counts for (in the call log and against a
    /// `latency_ms` limit): at least the longest request the service allows.
    pub max_latency_ms: u64,
    /// Whether per-org metrics (`tollhouse_in_flight`) carry an `org` label; off, they are one
    /// series for all orgs, for fleets where a series per tenant is too many.
    pub metrics_org_label: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            time_zone: Tz::UTC,
            sandbox_divisor: 2,
            reset_format: ResetFormat::Epoch,
            legacy_headers: true,
            ietf_headers: true,
            on_store_error: OnStoreError::Allow,
            on_lookup_error: OnStoreError::Deny,
            calls_kept: 100,
            usage_query: UsageQuery::Keep,
            max_latency_ms: DEFAULT_MAX_LATENCY_MS,
            metrics_org_label: true,
        }
    }
}

/// One tier of a resolved limit: its window and the capacities in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedTier {
    window: Window,
    capacity: u64,
    base: u64,
}

impl ResolvedTier {
    /// The tier's window.
    pub const fn window(&self) -> Window {
        self.window
    }
}

/// A limit as it applies to one org: zone resolved, sandbox divisor and overrides applied.
///
/// A rate limit has one slot, its bucket: [`tiers`](Self::tiers) holds a single tier whose window
/// is the rate's `per` and whose capacity is its burst, so that stores and headers count slots
/// alike; [`rate`](Self::rate) gives the rate in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedLimit {
    name: Arc<str>,
    dimension: Dimension,
    zone: Tz,
    tiers: Vec<ResolvedTier>,
    override_until: Option<Timestamp>,
    rate: Option<ResolvedRate>,
}

/// A rate with the org's overrides and sandbox divisor applied, and without them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ResolvedRate {
    rate: Rate,
    base: Rate,
}

impl ResolvedLimit {
    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a shared string.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// What it counts.
    pub const fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// The zone its windows follow.
    pub const fn zone(&self) -> Tz {
        self.zone
    }

    /// Its tiers, shortest window first.
    pub fn tiers(&self) -> &[ResolvedTier] {
        &self.tiers
    }

    /// When an override of its capacities ends, if one is in force for a while.
    pub const fn override_until(&self) -> Option<Timestamp> {
        self.override_until
    }

    /// The capacity of tier `tier` at `now` (an override applies before its `until`).
    ///
    /// # Panics
    /// If `tier` is not an index into [`tiers`](Self::tiers).
    pub fn capacity(&self, tier: usize, now: Timestamp) -> u64 {
        let tier = &self.tiers[tier];
        match self.override_until {
            Some(until) if now >= until => tier.base,
            _ => tier.capacity,
        }
    }

    /// Every tier's capacity at `now`, shortest window first; unused slots are zero.
    pub fn capacities(&self, now: Timestamp) -> [u64; MAX_TIERS] {
        let mut caps = [0u64; MAX_TIERS];
        for (tier, cap) in caps.iter_mut().enumerate().take(self.tiers.len()) {
            *cap = self.capacity(tier, now);
        }
        caps
    }

    /// The smooth rate in force at `now`, for a rate limit (an override applies before its
    /// `until`).
    pub fn rate(&self, now: Timestamp) -> Option<Rate> {
        let rate = self.rate?;
        Some(match self.override_until {
            Some(until) if now >= until => rate.base,
            _ => rate.rate,
        })
    }

    /// The rate as the org's plan and overrides declare it, whatever the time (what a state was
    /// counted under).
    pub fn declared_rate(&self) -> Option<Rate> {
        self.rate.map(|rate| rate.rate)
    }

    /// Whether this is a rate limit.
    pub const fn is_rate(&self) -> bool {
        self.rate.is_some()
    }

    /// The sum of the tiers' capacities at `now`.
    pub fn total_capacity(&self, now: Timestamp) -> u64 {
        (0..self.tiers.len())
            .map(|tier| self.capacity(tier, now))
            .sum()
    }
}

/// An org as its requests are measured: plan, zone, capacities, concurrency.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedOrg {
    id: OrgId,
    plan: Arc<str>,
    time_zone: Tz,
    environment: Environment,
    /// Shared by the orgs of one plan, environment and zone that have no overrides: thousands of
    /// orgs on a few plans read the same few limits, which stay in cache.
    limits: Arc<[ResolvedLimit]>,
    concurrency: Option<Concurrency>,
    shadow: bool,
    layout: u64,
}

impl ResolvedOrg {
    /// The org's id.
    pub fn id(&self) -> &OrgId {
        &self.id
    }

    /// The name of its plan.
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// Its zone (its own, or the server's).
    pub const fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// Production or sandbox.
    pub const fn environment(&self) -> Environment {
        self.environment
    }

    /// Its limits, in plan order.
    pub fn limits(&self) -> &[ResolvedLimit] {
        &self.limits
    }

    /// The index of the limit with this name.
    pub fn limit_index(&self, name: &str) -> Option<usize> {
        self.limits.iter().position(|limit| limit.name() == name)
    }

    /// Its concurrency limit (after the sandbox divisor), if any.
    pub const fn concurrency(&self) -> Option<Concurrency> {
        self.concurrency
    }

    /// Whether its plan runs in shadow mode.
    pub const fn shadow(&self) -> bool {
        self.shadow
    }

    /// A fingerprint of the limit names and tier windows: stores keep state per layout and carry
    /// counts over by name when a new policy changes it.
    pub const fn layout(&self) -> u64 {
        self.layout
    }
}

/// Server settings, plans, orgs and routes, validated together.
#[derive(Clone, Debug)]
pub struct Policy {
    server: ServerSettings,
    plans: Vec<Arc<Plan>>,
    orgs: HashMap<OrgId, Arc<ResolvedOrg>>,
    definitions: Vec<Org>,
    /// Each key's org (resolved: a request finds its org with one lookup) and label.
    keys: HashMap<KeyDigest, (Arc<ResolvedOrg>, Arc<str>), foldhash::fast::RandomState>,
    routes: Vec<RouteRule>,
    admin_token: Option<KeyDigest>,
}

impl Policy {
    /// Starts a policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// The server settings.
    pub fn server(&self) -> &ServerSettings {
        &self.server
    }

    /// The plans, in declaration order.
    pub fn plans(&self) -> &[Arc<Plan>] {
        &self.plans
    }

    /// The plan with this name.
    pub fn plan(&self, name: &str) -> Option<&Arc<Plan>> {
        self.plans.iter().find(|plan| plan.name() == name)
    }

    /// A known org, resolved.
    pub fn org(&self, id: &str) -> Option<&Arc<ResolvedOrg>> {
        self.orgs.get(id)
    }

    /// The org a plaintext API key belongs to.
    pub fn org_by_key(&self, key: &str) -> Option<&Arc<ResolvedOrg>> {
        self.owner_of_key(key).map(|(org, _)| org)
    }

    /// The org a plaintext API key belongs to, and the key's label in the usage log: what
    /// [`key_owner`](Self::key_owner) says for the key's digest. The digest of a key this policy
    /// holds is remembered per thread (under a keyed tag, never the key), so a caller's key is
    /// hashed with SHA-256 once per thread rather than on every request.
    pub fn owner_of_key(&self, key: &str) -> Option<(&Arc<ResolvedOrg>, &Arc<str>)> {
        let digest = key_memo::digest(key, |digest| self.keys.contains_key(digest));
        self.key_owner(&digest)
    }

    /// The org a key digest belongs to.
    pub fn org_by_digest(&self, digest: &KeyDigest) -> Option<&Arc<ResolvedOrg>> {
        self.key_owner(digest).map(|(org, _)| org)
    }

    /// The org a key digest belongs to, and the key's label in the usage log (masked: see
    /// [`mask_key`](crate::usage::mask_key)).
    pub fn key_owner(&self, digest: &KeyDigest) -> Option<(&Arc<ResolvedOrg>, &Arc<str>)> {
        self.keys.get(digest).map(|(org, label)| (org, label))
    }

    /// The org definitions, as declared.
    pub fn org_definitions(&self) -> &[Org] {
        &self.definitions
    }

    /// The route rules, in declaration order (the first match wins).
    pub fn routes(&self) -> &[RouteRule] {
        &self.routes
    }

    /// What a request with this method and path (raw or template) costs, by the first matching rule.
    pub fn treatment(&self, method: &str, path: &str) -> Option<(&RouteRule, Treatment)> {
        self.routes
            .iter()
            .find(|rule| rule.matches(method, path))
            .map(|rule| (rule, rule.treatment()))
    }

    /// The digest of the admin API's bearer token, if one is configured.
    pub fn admin_token(&self) -> Option<&KeyDigest> {
        self.admin_token.as_ref()
    }

    /// Resolves an org that is not part of the policy (from a database, say) against its plans.
    pub fn resolve(&self, org: &Org) -> Result<ResolvedOrg, PolicyError> {
        let plan = self.plan(org.plan()).ok_or_else(|| {
            let known: Vec<&str> = self.plans.iter().map(|plan| plan.name()).collect();
            PolicyError::invalid(
                "plan",
                format!(
                    "org {:?} is on plan {:?}, which is not defined",
                    org.id().as_str(),
                    org.plan()
                ),
                format!(
                    "use one of the defined plans ({}) or define [plans.{}]",
                    known.join(", "),
                    org.plan()
                ),
            )
        })?;
        resolve(&self.server, plan, org)
    }

    /// This policy with one org's overrides replaced (for the admin API); other orgs keep theirs.
    pub fn with_org_overrides(
        &self,
        id: &str,
        overrides: Vec<crate::org::Override>,
    ) -> Result<Policy, PolicyError> {
        let mut definitions = self.definitions.clone();
        let org = definitions
            .iter_mut()
            .find(|org| org.id().as_str() == id)
            .ok_or_else(|| {
                PolicyError::invalid(
                    "orgs",
                    format!("no org {id:?}"),
                    "name an org of the policy",
                )
            })?;
        org.set_overrides(overrides);
        let resolved = Arc::new(self.resolve(org)?);
        let mut next = self.clone();
        for (key, label) in org.keys().iter().zip(org.key_labels()) {
            next.keys
                .insert(*key, (Arc::clone(&resolved), Arc::clone(label)));
        }
        next.definitions = definitions;
        next.orgs.insert(resolved.id.clone(), resolved);
        Ok(next)
    }
}

/// Collects the parts of a [`Policy`]; [`build`](Self::build) validates them together.
#[derive(Debug, Default)]
pub struct PolicyBuilder {
    server: ServerSettings,
    plans: Vec<Plan>,
    orgs: Vec<Org>,
    routes: Vec<RouteRule>,
    admin_token: Option<KeyDigest>,
}

impl PolicyBuilder {
    /// Sets the server settings.
    pub fn server(mut self, server: ServerSettings) -> Self {
        self.server = server;
        self
    }

    /// Adds a plan.
    pub fn plan(mut self, plan: Plan) -> Self {
        self.plans.push(plan);
        self
    }

    /// Adds an org.
    pub fn org(mut self, org: Org) -> Self {
        self.orgs.push(org);
        self
    }

    /// Adds a route rule (earlier rules win).
    pub fn route(mut self, rule: RouteRule) -> Self {
        self.routes.push(rule);
        self
    }

    /// Sets the admin API's bearer token.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(KeyDigest::of(token));
        self
    }

    /// Validates everything together: unique plan and org names, every org on a defined plan, every
    /// override naming a limit of that plan, every key belonging to one org.
    pub fn build(self) -> Result<Policy, PolicyError> {
        if self.server.sandbox_divisor == 0 {
            return Err(PolicyError::invalid(
                "server.sandbox_divisor",
                "a divisor of 0 is undefined",
                "set sandbox_divisor to 1 (sandboxes get full capacity) or more",
            ));
        }
        if self.server.calls_kept == 0 || self.server.calls_kept > crate::usage::MAX_CALLS_KEPT {
            return Err(PolicyError::invalid(
                "server.calls_kept",
                format!(
                    "a call log of {} calls per org is outside what tollhouse keeps",
                    self.server.calls_kept
                ),
                "keep from 1 to 1000 calls per org",
            ));
        }
        let mut plans: Vec<Arc<Plan>> = Vec::with_capacity(self.plans.len());
        for plan in self.plans {
            if plans.iter().any(|p| p.name() == plan.name()) {
                return Err(PolicyError::invalid(
                    format!("plans.{}", plan.name()),
                    format!("plan {:?} is defined twice", plan.name()),
                    "give every plan its own name",
                ));
            }
            plans.push(Arc::new(plan));
        }
        let mut policy = Policy {
            server: self.server,
            plans,
            orgs: HashMap::with_capacity(self.orgs.len()),
            definitions: Vec::with_capacity(self.orgs.len()),
            keys: HashMap::default(),
            routes: self.routes,
            admin_token: self.admin_token,
        };
        let mut shared: HashMap<(Arc<str>, Environment, Tz), Arc<[ResolvedLimit]>> = HashMap::new();
        for (index, org) in self.orgs.into_iter().enumerate() {
            let place = format!("orgs[{index}]");
            if policy.orgs.contains_key(org.id()) {
                return Err(PolicyError::invalid(
                    place,
                    format!("org {:?} is defined twice", org.id().as_str()),
                    "give every org its own id",
                ));
            }
            let mut resolved = policy.resolve(&org).map_err(|error| error.within(&place))?;
            if org.overrides().is_empty() {
                let key = (
                    Arc::clone(&resolved.plan),
                    resolved.environment,
                    resolved.time_zone,
                );
                match shared.get(&key) {
                    // Resolved from the same plan, environment and zone: the same limits.
                    Some(limits) => resolved.limits = Arc::clone(limits),
                    None => {
                        shared.insert(key, Arc::clone(&resolved.limits));
                    }
                }
            }
            let resolved = Arc::new(resolved);
            for (key_index, (key, label)) in org.keys().iter().zip(org.key_labels()).enumerate() {
                if let Some((owner, _)) = policy
                    .keys
                    .insert(*key, (Arc::clone(&resolved), Arc::clone(label)))
                {
                    let owner = owner.id();
                    let problem = if owner == org.id() {
                        "this key is listed twice".to_owned()
                    } else {
                        format!("this key already belongs to org {:?}", owner.as_str())
                    };
                    return Err(PolicyError::invalid(
                        format!("{place}.keys[{key_index}]"),
                        problem,
                        "give every org keys of its own, each once",
                    ));
                }
            }
            policy.orgs.insert(org.id().clone(), resolved);
            policy.definitions.push(org);
        }
        Ok(policy)
    }
}

fn resolve(server: &ServerSettings, plan: &Plan, org: &Org) -> Result<ResolvedOrg, PolicyError> {
    let org_zone = org.time_zone().unwrap_or(server.time_zone);
    let divisor = match org.environment() {
        Environment::Production => 1,
        Environment::Sandbox => server.sandbox_divisor.max(1),
    };
    let divide = |capacity: u64| (capacity / u64::from(divisor)).max(1);
    for (index, adjustment) in org.overrides().iter().enumerate() {
        if plan.limit(adjustment.limit()).is_none() {
            let known: Vec<&str> = plan.limits().iter().map(|limit| limit.name()).collect();
            return Err(PolicyError::invalid(
                format!("overrides[{index}]"),
                format!(
                    "plan {:?} has no limit {:?}",
                    plan.name(),
                    adjustment.limit()
                ),
                format!("name one of its limits: {}", known.join(", ")),
            ));
        }
        if org.overrides()[..index]
            .iter()
            .any(|earlier| earlier.limit() == adjustment.limit())
        {
            return Err(PolicyError::invalid(
                format!("overrides[{index}]"),
                format!("limit {:?} is overridden twice", adjustment.limit()),
                "keep one override per limit",
            ));
        }
    }
    let mut limits = Vec::with_capacity(plan.limits().len());
    let mut fingerprint = DefaultHasher::new();
    for limit in plan.limits() {
        let adjustment = org
            .overrides()
            .iter()
            .enumerate()
            .find(|(_, o)| o.limit() == limit.name());
        let zone = match limit.zone() {
            LimitZone::Org => org_zone,
            LimitZone::Server => server.time_zone,
            LimitZone::Named(zone) => zone,
        };
        let resolved = match limit.rate() {
            Some(rate) => resolve_rate(limit, rate, zone, adjustment, &divide)?,
            None => resolve_tiers(limit, zone, adjustment, &divide)?,
        };
        limit.name().hash(&mut fingerprint);
        for tier in &resolved.tiers {
            tier.window.hash(&mut fingerprint);
        }
        if let Some(rate) = resolved.rate {
            rate.rate.hash(&mut fingerprint);
        }
        limits.push(resolved);
    }
    Ok(ResolvedOrg {
        id: org.id().clone(),
        plan: plan.name().into(),
        time_zone: org_zone,
        environment: org.environment(),
        limits: limits.into(),
        concurrency: plan.concurrency().map(|c| c.divided(divisor)),
        shadow: plan.shadow(),
        layout: fingerprint.finish(),
    })
}

/// A tier limit for one org: its override and the sandbox divisor applied.
fn resolve_tiers(
    limit: &Limit,
    zone: Tz,
    adjustment: Option<(usize, &crate::org::Override)>,
    divide: &impl Fn(u64) -> u64,
) -> Result<ResolvedLimit, PolicyError> {
    let base: Vec<u64> = limit.tiers().iter().map(|tier| tier.capacity()).collect();
    let (capacities, until) = match adjustment {
        Some((index, adjustment)) => (
            adjustment
                .apply(&base)
                .map_err(|e| e.within(&format!("overrides[{index}]")))?,
            adjustment.expires(),
        ),
        None => (base.clone(), None),
    };
    let tiers = limit
        .tiers()
        .iter()
        .zip(capacities.iter().zip(&base))
        .map(|(tier, (capacity, base))| ResolvedTier {
            window: tier.window(),
            capacity: divide(*capacity),
            base: divide(*base),
        })
        .collect();
    Ok(ResolvedLimit {
        name: limit.name_arc().clone(),
        dimension: limit.dimension(),
        zone,
        tiers,
        override_until: until,
        rate: None,
    })
}

/// A rate limit for one org: a `scale` override and the sandbox divisor scale its amount and
/// burst, a `capacity` override sets its burst.
fn resolve_rate(
    limit: &Limit,
    rate: Rate,
    zone: Tz,
    adjustment: Option<(usize, &crate::org::Override)>,
    divide: &impl Fn(u64) -> u64,
) -> Result<ResolvedLimit, PolicyError> {
    // Divided for a sandbox, the rate is checked again: a burst may then take too long to fill.
    let base = rate
        .with(divide(rate.amount()), divide(rate.burst()))
        .map_err(|e| e.within("environment"))?;
    let (adjusted, until) = match adjustment {
        Some((index, adjustment)) => {
            let place = format!("overrides[{index}]");
            let [amount, burst] = adjustment
                .apply_to_rate(rate.amount(), rate.burst())
                .map_err(|e| e.within(&place))?;
            let adjusted = rate
                .with(divide(amount), divide(burst))
                .map_err(|e| e.within(&place))?;
            (adjusted, adjustment.expires())
        }
        None => (base, None),
    };
    Ok(ResolvedLimit {
        name: limit.name_arc().clone(),
        dimension: limit.dimension(),
        zone,
        tiers: vec![ResolvedTier {
            window: rate.per(),
            capacity: adjusted.burst(),
            base: base.burst(),
        }],
        override_until: until,
        rate: Some(ResolvedRate {
            rate: adjusted,
            base,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::org::{Adjustment, Override};
    use crate::plan::{Limit, Tier};
    use std::time::Duration;

    fn plan() -> Plan {
        let count = Limit::new(
            "count",
            Dimension::Requests,
            LimitZone::Server,
            vec![
                Tier::new(Window::Minute, 100).expect("t"),
                Tier::new(Window::Hour, 2600).expect("t"),
            ],
        )
        .expect("limit");
        let daily = Limit::new(
            "daily",
            Dimension::Requests,
            LimitZone::Org,
            vec![Tier::new(Window::Day, 2500).expect("t")],
        )
        .expect("limit");
        Plan::new("build", vec![count, daily])
            .expect("plan")
            .with_concurrency(Concurrency::new(3, Duration::ZERO).expect("c"))
    }

    #[test]
    fn sandbox_halves_capacities_and_concurrency() {
        let policy = Policy::builder()
            .plan(plan())
            .org(Org::new("prod", "build"))
            .org(Org::new("sand", "build").with_environment(Environment::Sandbox))
            .build()
            .expect("policy");
        let now = Timestamp::from_secs(0);
        let prod = policy.org("prod").expect("org");
        let sand = policy.org("sand").expect("org");
        assert_eq!(prod.limits()[0].capacity(0, now), 100);
        assert_eq!(sand.limits()[0].capacity(0, now), 50);
        assert_eq!(sand.limits()[0].capacity(1, now), 1300);
        assert_eq!(sand.limits()[1].capacity(0, now), 1250);
        assert_eq!(prod.concurrency().map(|c| c.max()), Some(3));
        assert_eq!(sand.concurrency().map(|c| c.max()), Some(1));
    }

    #[test]
    fn override_applies_until_its_instant() {
        let until = Timestamp::from_secs(1_000);
        let policy = Policy::builder()
            .plan(plan())
            .org(
                Org::new("acme", "build")
                    .with_override(Override::new("daily", Adjustment::Capacity(5000)).until(until)),
            )
            .build()
            .expect("policy");
        let daily = &policy.org("acme").expect("org").limits()[1];
        assert_eq!(daily.capacity(0, Timestamp::from_secs(999)), 5000);
        assert_eq!(daily.capacity(0, until), 2500);
    }

    #[test]
    fn zones_resolve() {
        let amsterdam: Tz = "Europe/Amsterdam".parse().expect("tz");
        let server = ServerSettings {
            time_zone: "Asia/Tokyo".parse().expect("tz"),
            ..ServerSettings::default()
        };
        let policy = Policy::builder()
            .server(server)
            .plan(plan())
            .org(Org::new("acme", "build").with_time_zone(amsterdam))
            .org(Org::new("plain", "build"))
            .build()
            .expect("policy");
        let acme = policy.org("acme").expect("org");
        assert_eq!(acme.limits()[0].zone(), chrono_tz::Asia::Tokyo);
        assert_eq!(acme.limits()[1].zone(), amsterdam);
        assert_eq!(
            policy.org("plain").expect("org").limits()[1].zone(),
            chrono_tz::Asia::Tokyo
        );
    }

    #[test]
    fn cross_checks_fail_with_places() {
        let unknown_plan = Policy::builder()
            .plan(plan())
            .org(Org::new("a", "enterprise"))
            .build()
            .expect_err("plan");
        assert_eq!(unknown_plan.place(), Some("orgs[0].plan"));
        assert!(
            unknown_plan
                .to_string()
                .contains("use one of the defined plans (build)"),
            "{unknown_plan}"
        );
        let unknown_limit = Policy::builder()
            .plan(plan())
            .org(
                Org::new("a", "build")
                    .with_override(Override::new("weekly", Adjustment::Capacity(1))),
            )
            .build()
            .expect_err("limit");
        assert_eq!(unknown_limit.place(), Some("orgs[0].overrides[0]"));
        let shared_key = Policy::builder()
            .plan(plan())
            .org(Org::new("a", "build").with_key("k"))
            .org(Org::new("b", "build").with_key("k"))
            .build()
            .expect_err("key");
        assert!(
            shared_key
                .to_string()
                .contains("already belongs to org \"a\""),
            "{shared_key}"
        );
    }

    #[test]
    fn keys_find_their_org() {
        let policy = Policy::builder()
            .plan(plan())
            .org(Org::new("acme", "build").with_key("one").with_key("two"))
            .build()
            .expect("policy");
        assert_eq!(
            policy.org_by_key("one").map(|o| o.id().as_str()),
            Some("acme")
        );
        assert_eq!(
            policy.org_by_key("two").map(|o| o.id().as_str()),
            Some("acme")
        );
        assert!(policy.org_by_key("three").is_none());
        let (org, label) = policy
            .key_owner(&KeyDigest::of("two"))
            .expect("a key of the policy");
        assert_eq!((org.id().as_str(), &**label), ("acme", "…two"));
        let overridden = policy
            .with_org_overrides("acme", Vec::new())
            .expect("acme is defined");
        assert_eq!(
            overridden
                .key_owner(&KeyDigest::of("one"))
                .map(|(_, label)| &**label),
            Some("…one")
        );
    }

    #[test]
    fn a_remembered_key_is_refused_by_a_policy_without_it() {
        let with = |keys: &[&str]| {
            let org = keys
                .iter()
                .fold(Org::new("acme", "build"), |org, key| org.with_key(key));
            Policy::builder()
                .plan(plan())
                .org(org)
                .build()
                .expect("policy")
        };
        let before = with(&["kept", "revoked"]);
        let after = with(&["kept"]);
        for _ in 0..2 {
            let owner = before
                .owner_of_key("revoked")
                .map(|(o, l)| (o.id().as_str(), &**l));
            assert_eq!(owner, Some(("acme", "…oked")));
        }
        assert!(after.owner_of_key("revoked").is_none());
        assert!(after.org_by_key("revoked").is_none());
        assert_eq!(
            after.owner_of_key("kept").map(|(_, label)| &**label),
            Some("…kept")
        );
    }

    #[test]
    fn overrides_set_later_reach_the_org_by_id_and_by_key() {
        let policy = Policy::builder()
            .plan(plan())
            .org(Org::new("acme", "build").with_key("one"))
            .build()
            .expect("policy");
        let now = Timestamp::from_secs(0);
        let next = policy
            .with_org_overrides(
                "acme",
                vec![crate::org::Override::new(
                    "daily",
                    crate::org::Adjustment::Capacity(10),
                )],
            )
            .expect("a valid override");
        let by_id = next.org("acme").expect("acme");
        let by_key = next.org_by_key("one").expect("acme's key");
        assert!(Arc::ptr_eq(by_id, by_key));
        let daily = by_key.limit_index("daily").expect("daily");
        assert_eq!(by_key.limits()[daily].total_capacity(now), 10);
        let before = policy.org_by_key("one").expect("acme's key");
        assert_eq!(before.limits()[daily].total_capacity(now), 2500);
    }

    #[test]
    fn orgs_alike_share_their_resolved_limits() {
        let policy = Policy::builder()
            .plan(plan())
            .org(Org::new("a", "build"))
            .org(Org::new("b", "build"))
            .org(Org::new("sandbox", "build").with_environment(Environment::Sandbox))
            .org(Org::new("tokyo", "build").with_time_zone(chrono_tz::Asia::Tokyo))
            .org(
                Org::new("bigger", "build")
                    .with_override(Override::new("daily", Adjustment::Capacity(5000))),
            )
            .build()
            .expect("policy");
        let limits = |id: &str| policy.org(id).expect("org").limits().as_ptr();
        assert_eq!(limits("a"), limits("b"));
        for other in ["sandbox", "tokyo", "bigger"] {
            assert_ne!(limits("a"), limits(other), "{other}");
        }
        let now = Timestamp::from_secs(0);
        let daily = |id: &str| {
            let org = policy.org(id).expect("org");
            org.limits()[org.limit_index("daily").expect("daily")].total_capacity(now)
        };
        assert_eq!(
            (daily("a"), daily("sandbox"), daily("bigger")),
            (2500, 1250, 5000)
        );
    }
}
