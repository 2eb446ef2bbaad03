//! Plans, limits and tiers: what an org may use.
//!
//! A [`Plan`] is a named set of [`Limit`]s plus an optional [`Concurrency`] limit. A limit measures one
//! [`Dimension`] over an ordered list of [`Tier`]s, each a calendar [`Window`] with a capacity, drained
//! shortest window first. Constructors validate, so an invalid plan cannot be built.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollhouse_core::{Concurrency, Dimension, Limit, LimitZone, Plan, Tier, Window};
//!
//! let count = Limit::new(
//!     "count",
//!     Dimension::Requests,
//!     LimitZone::Server,
//!     vec![
//!         Tier::new(Window::Minute, 100)?,
//!         Tier::new(Window::Hour, 2600)?,
//!         Tier::new(Window::Day, 1150)?,
//!     ],
//! )?;
//! let plan = Plan::new("data", vec![count])?
//!     .with_concurrency(Concurrency::new(3, Duration::ZERO)?);
//! assert_eq!(plan.limits()[0].total_capacity(), 3850);
//! # Ok::<(), tollhouse_core::PolicyError>(())
//! ```

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;

use crate::error::PolicyError;
use crate::rate::Rate;
use crate::tier::MAX_TIERS;
use crate::window::Window;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Each metered request charges 1.
    Requests,
    /// Each request charges its route's cost (1 by default), correctable after the handler ran.
    Points,
    /// Each request charges its measured duration in milliseconds, after it ends.
    LatencyMs,
}

impl Dimension {
    /// The name used in policy files: `requests`, `points`, `latency_ms`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Points => "points",
            Dimension::LatencyMs => "latency_ms",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dimension {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "requests" => Ok(Dimension::Requests),
            "points" => Ok(Dimension::Points),
            "latency_ms" => Ok(Dimension::LatencyMs),
            other => Err(PolicyError::invalid(
                "dimension",
                format!("unknown dimension {other:?}"),
                "use \"requests\", \"points\" or \"latency_ms\"",
            )),
        }
    }
}

/// Whose wall clock a limit's windows follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LimitZone {
    /// The org's own zone (the default).
    #[default]
    Org,
    /// The server's zone (`[server] time_zone`).
    Server,
    /// A fixed IANA zone.
    Named(Tz),
}

impl FromStr for LimitZone {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "org" => Ok(LimitZone::Org),
            "server" => Ok(LimitZone::Server),
            name => parse_zone(name).map(LimitZone::Named).map_err(|_| {
                PolicyError::invalid(
                    "zone",
                    format!("{name:?} is neither \"org\", \"server\" nor a known time zone"),
                    "use \"org\" (the org's zone), \"server\" (the server's) or an IANA zone \
                     name such as \"Europe/Amsterdam\"",
                )
            }),
        }
    }
}

/// Parses an IANA zone name, with an error that says what to write instead.
pub fn parse_zone(name: &str) -> Result<Tz, PolicyError> {
    name.parse::<Tz>().map_err(|_| {
        PolicyError::invalid(
            "zone",
            format!("unknown time zone {name:?}"),
            "use an IANA zone name such as \"Europe/Amsterdam\" or \"UTC\"",
        )
    })
}

/// The largest capacity a tier may have (2^50): sums of four tiers, and debts, stay far inside `i64`.
pub const MAX_CAPACITY: u64 = 1 << 50;

/// One bucket of a limit: a calendar window and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tier {
    window: Window,
    capacity: u64,
}

impl Tier {
    /// A tier holding `capacity` units per `window`; the capacity must be at least 1.
    pub fn new(window: Window, capacity: u64) -> Result<Self, PolicyError> {
        if capacity == 0 {
            return Err(PolicyError::invalid(
                "capacity",
                "a capacity of 0 admits nothing",
                "set a capacity of at least 1, or remove the tier",
            ));
        }
        if capacity > MAX_CAPACITY {
            return Err(PolicyError::invalid(
                "capacity",
                format!("a capacity of {capacity} is more than tollhouse counts ({MAX_CAPACITY})"),
                format!("set a capacity of at most {MAX_CAPACITY}"),
            ));
        }
        Ok(Self { window, capacity })
    }

    /// The tier's calendar window.
    pub const fn window(&self) -> Window {
        self.window
    }

    /// Units the tier holds per window.
    pub const fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// A named budget over one dimension: tiers drained shortest window first, or a smooth [`Rate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    name: Arc<str>,
    dimension: Dimension,
    zone: LimitZone,
    tiers: Vec<Tier>,
    rate: Option<Rate>,
}

impl Limit {
    /// A limit of a smooth rate with a burst instead of tiers (it has no zone: a rate is not
    /// aligned to any clock).
    pub fn with_rate(
        name: impl Into<Arc<str>>,
        dimension: Dimension,
        rate: Rate,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        check_name(&name)?;
        Ok(Self {
            name,
            dimension,
            zone: LimitZone::Org,
            tiers: Vec::new(),
            rate: Some(rate),
        })
    }

    /// A limit; `tiers` must be non-empty (at most [`MAX_TIERS`]) and ordered from short to long
    /// windows, each window once.
    pub fn new(
        name: impl Into<Arc<str>>,
        dimension: Dimension,
        zone: LimitZone,
        tiers: Vec<Tier>,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        check_name(&name)?;
        if tiers.is_empty() {
            return Err(PolicyError::invalid(
                "tiers",
                format!("limit {name:?} has no tiers"),
                "give at least one tier, such as tiers = [{ window = \"day\", capacity = 2500 }], \
                 or a rate, such as rate = { amount = 10, per = \"second\", burst = 20 }",
            ));
        }
        if tiers.len() > MAX_TIERS {
            return Err(PolicyError::invalid(
                format!("tiers[{MAX_TIERS}]"),
                format!(
                    "limit {name:?} has {} tiers; a limit holds at most {MAX_TIERS}",
                    tiers.len()
                ),
                format!("keep at most {MAX_TIERS} tiers, or split them over two limits"),
            ));
        }
        for (index, pair) in tiers.windows(2).enumerate() {
            if pair[0].window >= pair[1].window {
                return Err(PolicyError::invalid(
                    format!("tiers[{}]", index + 1),
                    format!(
                        "tier {:?} comes after {:?}, but tiers must go from short to long windows, each window once",
                        pair[1].window.as_str(),
                        pair[0].window.as_str()
                    ),
                    "order the tiers from the shortest window to the longest (second, minute, \
                     \"5 minutes\", hour, day, week, month, year, …), each window once",
                ));
            }
        }
        Ok(Self {
            name,
            dimension,
            zone,
            tiers,
            rate: None,
        })
    }

    /// The limit's name, as headers and problem bodies show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a shared string.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// What the limit counts.
    pub const fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// Whose clock the windows follow.
    pub const fn zone(&self) -> LimitZone {
        self.zone
    }

    /// The tiers, shortest window first (none for a rate).
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The smooth rate, for a limit that has one instead of tiers.
    pub const fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// The sum of the tiers' capacities.
    pub fn total_capacity(&self) -> u64 {
        match self.rate {
            Some(rate) => rate.burst(),
            None => self.tiers.iter().map(|tier| tier.capacity).sum(),
        }
    }

    /// The names this limit's items go by in the headers, each with a description for errors.
    fn items(&self) -> Vec<(Cow<'_, str>, String)> {
        if self.rate.is_some() {
            return vec![(
                Cow::Borrowed(&*self.name),
                format!("rate limit {:?}", self.name),
            )];
        }
        self.tiers
            .iter()
            .map(|tier| (self.item_name(tier.window), self.describe_tier(tier.window)))
            .collect()
    }

    /// "limit \"daily\"", or "the hour tier of limit \"count\"" when it has several tiers.
    fn describe_tier(&self, window: Window) -> String {
        if self.tiers.len() > 1 {
            format!("the {} tier of limit {:?}", window.as_str(), self.name)
        } else {
            format!("limit {:?}", self.name)
        }
    }

    /// The name of the tier with this window in the `RateLimit-Policy` and `RateLimit` headers
    /// and in a 429's violated policies: the limit's name, or `limit.window` when the limit has
    /// several tiers.
    pub fn item_name(&self, window: Window) -> Cow<'_, str> {
        item_name(&self.name, self.tiers.len(), window)
    }
}

/// The name the concurrency limit goes by in headers and 429 bodies; no limit may take it.
pub const CONCURRENCY: &str = "concurrency";

/// Refuses a limit name headers cannot carry, or the reserved one.
fn check_name(name: &str) -> Result<(), PolicyError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(PolicyError::invalid(
            "name",
            format!(
                "limit name {name:?} is empty or has characters other than letters, digits, '_', '-' and '.'"
            ),
            "name the limit with letters, digits, '_', '-' or '.', such as \"daily\"",
        ));
    }
    if name == CONCURRENCY {
        return Err(PolicyError::invalid(
            "name",
            "the name \"concurrency\" is reserved: 429 bodies and the `RateLimit` headers use it \
             for the concurrency limit",
            "give the limit another name, such as \"requests\"; set a plan's concurrency with \
             `concurrency = N`",
        ));
    }
    Ok(())
}

/// The header item name of the tier with `window` of a limit called `name` with `tiers` tiers:
/// `name`, or `name.window` when there are several (see [`Limit::item_name`]).
pub fn item_name(name: &str, tiers: usize, window: Window) -> Cow<'_, str> {
    if tiers > 1 {
        Cow::Owned(format!("{name}.{}", window.item_str()))
    } else {
        Cow::Borrowed(name)
    }
}

/// At most `max` requests of one org in flight, waiting up to `wait` for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Concurrency {
    max: u32,
    wait: Duration,
}

/// The longest a request may wait for a concurrency slot (`concurrency_wait_ms`).
pub const MAX_CONCURRENCY_WAIT: Duration = Duration::from_secs(60);

/// Requests of one org that may wait for a slot on one instance at once; more are refused at
/// once, as if the plan allowed no wait.
pub const MAX_WAITERS: usize = 64;

impl Concurrency {
    /// A concurrency limit of `max` (at least 1) requests in flight, with a wait of up to `wait`
    /// for a slot before rejecting (zero rejects at once).
    pub fn new(max: u32, wait: Duration) -> Result<Self, PolicyError> {
        if max == 0 {
            return Err(PolicyError::invalid(
                "concurrency",
                "a concurrency of 0 admits nothing",
                "set concurrency to at least 1, or remove it to allow any number in flight",
            ));
        }
        if wait > MAX_CONCURRENCY_WAIT {
            return Err(PolicyError::invalid(
                "concurrency_wait_ms",
                format!(
                    "a wait of {} ms for a concurrency slot holds a request open for too long",
                    wait.as_millis()
                ),
                "set concurrency_wait_ms to at most 60000 (a minute)",
            ));
        }
        Ok(Self { max, wait })
    }

    /// Requests in flight at most.
    pub const fn max(&self) -> u32 {
        self.max
    }

    /// How long a request may wait for a slot.
    pub const fn wait(&self) -> Duration {
        self.wait
    }

    pub(crate) fn divided(self, divisor: u32) -> Self {
        Self {
            max: (self.max / divisor.max(1)).max(1),
            wait: self.wait,
        }
    }
}

/// A named set of limits and an optional concurrency limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    name: Arc<str>,
    limits: Vec<Limit>,
    concurrency: Option<Concurrency>,
    shadow: bool,
}

impl Plan {
    /// A plan with these limits; limit names must be unique, and so must the names their tiers
    /// go by in the headers ([`Limit::item_name`]).
    pub fn new(name: impl Into<Arc<str>>, limits: Vec<Limit>) -> Result<Self, PolicyError> {
        let name = name.into();
        for (index, limit) in limits.iter().enumerate() {
            let earlier = &limits[..index];
            if earlier.iter().any(|earlier| earlier.name == limit.name) {
                return Err(PolicyError::invalid(
                    format!("limits[{index}]"),
                    format!("plan {name:?} has two limits named {:?}", limit.name),
                    "give every limit of a plan its own name",
                ));
            }
            for (item, what) in limit.items() {
                let taken = earlier.iter().find_map(|other| {
                    other
                        .items()
                        .into_iter()
                        .find(|(theirs, _)| *theirs == item)
                        .map(|(_, theirs)| theirs)
                });
                if let Some(theirs) = taken {
                    return Err(PolicyError::invalid(
                        format!("limits[{index}]"),
                        format!(
                            "in plan {name:?}, {what} and {theirs} both go by {item:?} in the \
                             RateLimit headers",
                        ),
                        "rename one of the two limits: a limit with several tiers calls each \
                         `limit.window` in the RateLimit headers",
                    ));
                }
            }
        }
        Ok(Self {
            name,
            limits,
            concurrency: None,
            shadow: false,
        })
    }

    /// This plan with a concurrency limit.
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// This plan in shadow mode: decisions are made and reported, but nothing is rejected.
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The plan's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limits, in the order they were declared.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The limit with this name.
    pub fn limit(&self, name: &str) -> Option<&Limit> {
        self.limits.iter().find(|limit| &*limit.name == name)
    }

    /// The concurrency limit, if any.
    pub const fn concurrency(&self) -> Option<Concurrency> {
        self.concurrency
    }

    /// Whether the plan only reports what it would reject.
    pub const fn shadow(&self) -> bool {
        self.shadow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_capacity_is_refused() {
        let error = Tier::new(Window::Day, 0).expect_err("zero capacity");
        assert!(error.to_string().contains("at least 1"), "{error}");
    }

    #[test]
    fn tiers_must_go_short_to_long() {
        let tiers = vec![
            Tier::new(Window::Hour, 10).expect("tier"),
            Tier::new(Window::Minute, 1).expect("tier"),
        ];
        let error =
            Limit::new("count", Dimension::Requests, LimitZone::Org, tiers).expect_err("unordered");
        assert!(error.to_string().contains("order the tiers"), "{error}");
        let twice = vec![
            Tier::new(Window::Day, 1).expect("tier"),
            Tier::new(Window::Day, 2).expect("tier"),
        ];
        assert!(Limit::new("count", Dimension::Requests, LimitZone::Org, twice).is_err());
    }

    #[test]
    fn duplicate_limit_names_are_refused() {
        let limit = Limit::new(
            "daily",
            Dimension::Requests,
            LimitZone::Org,
            vec![Tier::new(Window::Day, 1).expect("tier")],
        )
        .expect("limit");
        let error = Plan::new("build", vec![limit.clone(), limit]).expect_err("duplicate");
        assert!(
            error.to_string().contains("two limits named \"daily\""),
            "{error}"
        );
    }

    #[test]
    fn limits_may_not_share_a_header_item_name() {
        let tier = |window| Tier::new(window, 10).expect("tier");
        let count = Limit::new(
            "count",
            Dimension::Requests,
            LimitZone::Org,
            vec![tier(Window::Minute), tier(Window::Hour)],
        )
        .expect("limit");
        assert_eq!(count.item_name(Window::Minute), "count.minute");
        let minute = |tiers| {
            Limit::new("count.minute", Dimension::Points, LimitZone::Org, tiers).expect("limit")
        };
        let error = Plan::new(
            "build",
            vec![count.clone(), minute(vec![tier(Window::Day)])],
        )
        .expect_err("the same item name twice");
        assert!(
            error.to_string().contains(
                "limit \"count.minute\" and the minute tier of limit \"count\" both go by"
            ),
            "{error}"
        );
        // The other way round, the message still names each side right.
        let error = Plan::new(
            "build",
            vec![minute(vec![tier(Window::Day)]), count.clone()],
        )
        .expect_err("the same item name twice");
        assert!(
            error.to_string().contains(
                "the minute tier of limit \"count\" and limit \"count.minute\" both go by"
            ),
            "{error}"
        );
        // With several tiers of its own, "count.minute" names its items "count.minute.day" and so on.
        Plan::new(
            "build",
            vec![count, minute(vec![tier(Window::Hour), tier(Window::Day)])],
        )
        .expect("distinct item names");
        let reserved = Limit::new(
            CONCURRENCY,
            Dimension::Requests,
            LimitZone::Org,
            vec![tier(Window::Minute)],
        )
        .expect_err("a reserved name");
        assert!(reserved.to_string().contains("reserved"), "{reserved}");
    }

    #[test]
    fn sandbox_concurrency_never_below_one() {
        let concurrency = Concurrency::new(3, Duration::ZERO).expect("concurrency");
        assert_eq!(concurrency.divided(2).max(), 1);
        assert_eq!(concurrency.divided(5).max(), 1);
        assert_eq!(
            Concurrency::new(8, Duration::ZERO)
                .expect("c")
                .divided(2)
                .max(),
            4
        );
    }
}
