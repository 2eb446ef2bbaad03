//! Orgs: the accounts limits belong to, with their zone, environment and overrides.
//!
//! # Example
//!
//! ```
//! use tollhouse_core::{Adjustment, Environment, Org, Override, Timestamp};
//!
//! let org = Org::new("acme", "build")
//!     .with_time_zone("Europe/Amsterdam".parse().expect("an IANA zone"))
//!     .with_environment(Environment::Sandbox)
//!     .with_key("acme-key-1")
//!     .with_override(Override::new("daily", Adjustment::Capacity(5000)).until(Timestamp::from_secs(1_798_675_200)));
//! assert_eq!(org.id().as_str(), "acme");
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::error::PolicyError;
use crate::time::Timestamp;

/// An org's identifier; cheap to clone.
#[derive(Clone, Eq)]
pub struct OrgId {
    text: Arc<str>,
    /// [`OrgId::prehash`], computed once.
    prehash: u64,
}

/// Seeds [`OrgId::prehash`]: random per process, the same for every id in it.
static PREHASH: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

impl Hash for OrgId {
    /// Hashes the text, as `str` does (maps keyed by `OrgId` are searched with `&str`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialEq for OrgId {
    fn eq(&self, other: &Self) -> bool {
        // Ids taken from one policy share their text: most comparisons end at the pointer.
        Arc::ptr_eq(&self.text, &other.text)
            || (self.prehash == other.prehash && self.text == other.text)
    }
}

impl PartialOrd for OrgId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrgId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl OrgId {
    /// An org id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        let text: Arc<str> = id.into();
        let prehash = PREHASH.hash_one(&*text);
        Self { text, prehash }
    }

    /// A hash of the id (seeded per process), computed when the id was made: maps that key by org
    /// on every request hash with it, without reading the id's text.
    pub const fn prehash(&self) -> u64 {
        self.prehash
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The id as a shared string (cheap to clone into log records and metric labels).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.text
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Borrow<str> for OrgId {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl From<&str> for OrgId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for OrgId {
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

/// Production orgs get their plan's capacities; sandbox orgs get them divided by the server's
/// sandbox divisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Environment {
    /// Full capacities (the default).
    #[default]
    Production,
    /// Capacities and concurrency divided by `sandbox_divisor`.
    Sandbox,
}

impl Environment {
    /// `production` or `sandbox`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
}

impl FromStr for Environment {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "production" => Ok(Environment::Production),
            "sandbox" => Ok(Environment::Sandbox),
            other => Err(PolicyError::invalid(
                "environment",
                format!("unknown environment {other:?}"),
                "use \"production\" or \"sandbox\"",
            )),
        }
    }
}

/// How an override changes a limit's capacities.
#[derive(Clone, Debug, PartialEq)]
pub enum Adjustment {
    /// Replace the capacity of a single-tier limit.
    Capacity(u64),
    /// Replace every tier's capacity, shortest window first.
    Capacities(Vec<u64>),
    /// Multiply every tier's capacity (rounded down, never below 1).
    Scale(f64),
}

/// A per-org change to one limit's capacities, optionally until an instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    limit: Arc<str>,
    adjustment: Adjustment,
    until: Option<Timestamp>,
}

impl Override {
    /// An override of limit `limit` that lasts until cleared.
    pub fn new(limit: impl Into<Arc<str>>, adjustment: Adjustment) -> Self {
        Self {
            limit: limit.into(),
            adjustment,
            until: None,
        }
    }

    /// This override, in force only before `until`.
    pub fn until(mut self, until: Timestamp) -> Self {
        self.until = Some(until);
        self
    }

    /// The name of the limit it changes.
    pub fn limit(&self) -> &str {
        &self.limit
    }

    /// How it changes the capacities.
    pub fn adjustment(&self) -> &Adjustment {
        &self.adjustment
    }

    /// When it stops applying, if ever.
    pub fn expires(&self) -> Option<Timestamp> {
        self.until
    }

    /// The capacities `base` becomes under this override.
    pub(crate) fn apply(&self, base: &[u64]) -> Result<Vec<u64>, PolicyError> {
        match &self.adjustment {
            Adjustment::Capacity(capacity) => {
                if base.len() != 1 {
                    return Err(PolicyError::invalid(
                        "capacity",
                        format!(
                            "limit {:?} has {} tiers, so one capacity is ambiguous",
                            self.limit,
                            base.len()
                        ),
                        format!(
                            "write capacities = [...] with {} numbers, shortest window first, or scale = ...",
                            base.len()
                        ),
                    ));
                }
                positive("capacity", *capacity).map(|capacity| vec![capacity])
            }
            Adjustment::Capacities(capacities) => {
                if capacities.len() != base.len() {
                    return Err(PolicyError::invalid(
                        "capacities",
                        format!(
                            "limit {:?} has {} but the override gives {}",
                            self.limit,
                            counted(base.len(), "tier", "tiers"),
                            counted(capacities.len(), "capacity", "capacities")
                        ),
                        format!(
                            "give {}, shortest window first",
                            counted(base.len(), "capacity", "capacities")
                        ),
                    ));
                }
                capacities
                    .iter()
                    .map(|capacity| positive("capacities", *capacity))
                    .collect()
            }
            Adjustment::Scale(factor) => {
                if !(factor.is_finite() && *factor > 0.0) {
                    return Err(PolicyError::invalid(
                        "scale",
                        format!("scale {factor} is not a positive number"),
                        "use a scale above 0, such as 2.0 to double or 0.5 to halve",
                    ));
                }
                // Capacities are far below 2^52, so the float product is exact enough; floor, min 1.
                base.iter()
                    .map(|capacity| {
                        let scaled = (*capacity as f64 * factor).floor();
                        if scaled > crate::plan::MAX_CAPACITY as f64 {
                            return Err(PolicyError::invalid(
                                "scale",
                                format!(
                                    "scale {factor:?} makes a capacity of {capacity} more than \
                                     tollhouse counts ({})",
                                    crate::plan::MAX_CAPACITY
                                ),
                                format!(
                                    "use a scale of at most {}",
                                    crate::plan::MAX_CAPACITY / (*capacity).max(1)
                                ),
                            ));
                        }
                        Ok((scaled as u64).max(1))
                    })
                    .collect()
            }
        }
    }
}

impl Override {
    /// A rate's amount and burst with this override applied: `capacity` sets the burst, `scale`
    /// scales both; `capacities` has no tiers to apply to.
    pub(crate) fn apply_to_rate(&self, amount: u64, burst: u64) -> Result<[u64; 2], PolicyError> {
        match &self.adjustment {
            Adjustment::Capacity(capacity) => {
                positive("capacity", *capacity).map(|burst| [amount, burst])
            }
            Adjustment::Capacities(_) => Err(PolicyError::invalid(
                "capacities",
                format!("limit {:?} is a rate: it has no tiers", self.limit),
                "write capacity = N to set its burst, or scale = ... to scale its amount and burst",
            )),
            Adjustment::Scale(_) => {
                let scaled = self.apply(&[amount, burst])?;
                Ok([scaled[0], scaled[1]])
            }
        }
    }
}

/// `n` and the noun, singular or plural: "1 tier", "2 tiers".
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn positive(place: &str, capacity: u64) -> Result<u64, PolicyError> {
    if capacity == 0 {
        Err(PolicyError::invalid(
            place,
            "a capacity of 0 admits nothing",
            "set a capacity of at least 1",
        ))
    } else if capacity > crate::plan::MAX_CAPACITY {
        Err(PolicyError::invalid(
            place,
            format!("a capacity of {capacity} is more than tollhouse counts"),
            format!("set a capacity of at most {}", crate::plan::MAX_CAPACITY),
        ))
    } else {
        Ok(capacity)
    }
}

/// The fewest characters an API key of the policy file may have: a shorter one is too easy to
/// guess (`acme-key-1` is the shortest the examples use).
pub const MIN_KEY_LENGTH: usize = 10;
/// The most characters an API key of the policy file may have.
pub const MAX_KEY_LENGTH: usize = 256;

/// Whether `key` can be an API key: [`MIN_KEY_LENGTH`] to [`MAX_KEY_LENGTH`] characters of
/// visible ASCII, what an `Authorization: Bearer` header can carry. `Err` holds the problem and
/// the fix.
pub fn check_key(key: &str) -> Result<(), (String, &'static str)> {
    if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err((
            format!(
                "the key has {bad:?} in it, which an `Authorization: Bearer` header cannot carry, so it could never be used"
            ),
            "use letters, digits and visible ASCII punctuation only (no spaces)",
        ));
    }
    if key.len() < MIN_KEY_LENGTH {
        return Err((
            format!("a key of {} characters is too easy to guess", key.len()),
            "give every key at least 10 characters (a random one: 32 or more)",
        ));
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err((
            format!(
                "a key of {} characters is longer than tollhouse accepts",
                key.len()
            ),
            "give every key at most 256 characters",
        ));
    }
    Ok(())
}

/// The SHA-256 digest of an API key: how keys are held in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: eight of its bytes are as good a hash input as all 32.
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// An account that limits belong to.
#[derive(Clone, Debug, PartialEq)]
pub struct Org {
    id: OrgId,
    plan: Arc<str>,
    time_zone: Option<Tz>,
    environment: Environment,
    overrides: Vec<Override>,
    keys: Vec<KeyDigest>,
    /// Each key masked to its last four characters, as the usage log labels its calls.
    key_labels: Vec<Arc<str>>,
}

impl Org {
    /// An org on plan `plan`, in the server's zone, in production, with no keys or overrides.
    pub fn new(id: impl Into<OrgId>, plan: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            plan: plan.into(),
            time_zone: None,
            environment: Environment::Production,
            overrides: Vec::new(),
            keys: Vec::new(),
            key_labels: Vec::new(),
        }
    }

    /// This org with its own IANA zone.
    pub fn with_time_zone(mut self, zone: Tz) -> Self {
        self.time_zone = Some(zone);
        self
    }

    /// This org in `environment`.
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// This org with one more override.
    pub fn with_override(mut self, adjustment: Override) -> Self {
        self.overrides.push(adjustment);
        self
    }

    /// This org with one more API key (held only as its SHA-256 digest).
    pub fn with_key(mut self, key: &str) -> Self {
        self.keys.push(KeyDigest::of(key));
        self.key_labels.push(crate::usage::mask_key(key).into());
        self
    }

    /// The org's id.
    pub fn id(&self) -> &OrgId {
        &self.id
    }

    /// The name of its plan.
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// Its own zone, if set (otherwise the server's).
    pub const fn time_zone(&self) -> Option<Tz> {
        self.time_zone
    }

    /// Production or sandbox.
    pub const fn environment(&self) -> Environment {
        self.environment
    }

    /// Its overrides.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// Replaces its overrides.
    pub fn set_overrides(&mut self, overrides: Vec<Override>) {
        self.overrides = overrides;
    }

    /// Digests of its API keys.
    pub fn keys(&self) -> &[KeyDigest] {
        &self.keys
    }

    /// Its API keys' labels in the usage log (masked: see [`mask_key`](crate::usage::mask_key)),
    /// in the order of [`keys`](Self::keys).
    pub fn key_labels(&self) -> &[Arc<str>] {
        &self.key_labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_differ_per_key_and_hide_the_key() {
        assert_ne!(KeyDigest::of("a"), KeyDigest::of("b"));
        assert_eq!(KeyDigest::of("a"), KeyDigest::of("a"));
        assert!(!format!("{:?}", KeyDigest::of("secret")).contains("secret"));
    }

    #[test]
    fn adjustments() {
        let single = Override::new("daily", Adjustment::Capacity(5000));
        assert_eq!(single.apply(&[2500]), Ok(vec![5000]));
        assert!(single.apply(&[100, 2600]).is_err());
        let huge = Override::new("count", Adjustment::Scale(1e300));
        let error = huge
            .apply(&[10, 100])
            .expect_err("past the largest capacity");
        assert!(
            error.to_string().contains("more than tollhouse counts"),
            "{error}"
        );
        let scale = Override::new("count", Adjustment::Scale(0.5));
        assert_eq!(scale.apply(&[100, 2600, 1]), Ok(vec![50, 1300, 1]));
        let tiers = Override::new("count", Adjustment::Capacities(vec![10, 20]));
        assert_eq!(tiers.apply(&[100, 2600]), Ok(vec![10, 20]));
        assert!(tiers.apply(&[100]).is_err());
        assert!(
            Override::new("count", Adjustment::Scale(-1.0))
                .apply(&[1])
                .is_err()
        );
    }
}
