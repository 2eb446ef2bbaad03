//! The JSON bodies of the usage routes, as serde types: the server builds them from the store's
//! numbers, and a client (or a test) can deserialize them.
//!
//! Instants are RFC 3339 strings in the org's own time zone (`2026-03-15T00:00:00+01:00`), dates are
//! the org's local dates (`2026-03-14`).
//!
//! # Example
//!
//! ```
//! use tollhouse::usage::json::Billing;
//!
//! let billing: Billing = serde_json::from_str(
//!     r#"{"days": [{"date": "2026-03-13", "billable": 4}, {"date": "2026-03-14", "billable": 9}]}"#,
//! )?;
//! assert_eq!(billing.days.last().map(|day| day.billable), Some(9));
//! # Ok::<(), serde_json::Error>(())
//! ```

use chrono::{SecondsFormat, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tollhouse_core::usage::{EndpointUsage, RepeatedRequest};
use tollhouse_core::{CallRecord, LimitStatus, OrgUsage, Outcome, ResolvedOrg, Timestamp};

use super::CALLS_SHOWN;

/// `GET /v1/usage`: the org's numbers right now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The org's id.
    pub org: String,
    /// The org's local date (`YYYY-MM-DD`).
    pub date: String,
    /// The org's IANA time zone, in which every instant here is written.
    pub time_zone: String,
    /// Metered requests admitted today: what the org's limits counted.
    pub calls_today: u64,
    /// Billable requests today: admitted, rejected and exempt alike (unless a route is not billable).
    pub billable_today: u64,
    /// Requests of the org in flight now.
    pub in_flight: u32,
    /// The most requests the org may have in flight, if its plan limits it.
    pub concurrency: Option<u32>,
    /// Every limit of the org's plan, in plan order.
    pub limits: Vec<Limit>,
}

/// One limit in [`Usage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// The limit's name.
    pub name: String,
    /// What it counts: `requests`, `points` or `latency_ms`.
    pub dimension: String,
    /// The sum of its tiers' capacities (after sandbox and overrides).
    pub limit: u64,
    /// What can still be charged now.
    pub remaining: u64,
    /// When `remaining` next goes up (RFC 3339, org's zone).
    pub reset: String,
    /// Its tiers, shortest window first (none for a rate).
    pub tiers: Vec<Tier>,
    /// For a rate limit, the rate and its bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateUsage>,
}

/// A rate limit's bucket in [`Limit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateUsage {
    /// Units given back per `per`.
    pub amount: u64,
    /// The window whose nominal length `amount` is given back over.
    pub per: String,
    /// The most units the bucket holds.
    pub burst: u64,
    /// The units there now.
    pub available: u64,
    /// When the bucket is full again (RFC 3339, org's zone; now, if it is full).
    pub full_at: String,
}

/// One tier of a [`Limit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// The calendar window: `minute`, `hour`, `day` or `month`.
    pub window: String,
    /// What the tier holds in each window.
    pub capacity: u64,
    /// What it used in the current window (above the capacity only for latency debt).
    pub used: i64,
    /// What it still holds.
    pub remaining: u64,
    /// When the current window ends and the tier refills (RFC 3339, org's zone).
    pub reset: String,
}

/// `GET /v1/usage/calls`: the most recent calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calls {
    /// At most 100 calls, newest first.
    pub calls: Vec<Call>,
}

/// One call in [`Calls`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// When it arrived (RFC 3339 with milliseconds, org's zone).
    pub at: String,
    /// The API key, masked to its last four characters.
    pub key: String,
    /// The HTTP method.
    pub method: String,
    /// The request target, with its query string.
    pub path: String,
    /// The matched route pattern (`null` when no rule or route matched).
    pub route: Option<String>,
    /// The response status.
    pub status: u16,
    /// Points charged.
    pub cost: u64,
    /// Milliseconds until the response body ended.
    pub latency_ms: u64,
    /// `admitted`, `rejected` or `exempt`.
    pub outcome: String,
    /// On a rejection, the limit that rejected it (or `concurrency`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// `GET /v1/usage/billing`: billable calls per day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Billing {
    /// One entry per local date, oldest first, today last.
    pub days: Vec<BillingDay>,
}

/// One day of [`Billing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingDay {
    /// The org's local date (`YYYY-MM-DD`).
    pub date: String,
    /// Billable calls on that date.
    pub billable: u64,
}

/// `GET /v1/usage/report`: what drives the org's usage today.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Endpoints by calls today, most first.
    pub endpoints: Vec<Endpoint>,
    /// Identical requests (method and path with query) seen at least 10 times today, most first.
    pub repeated: Vec<Repeated>,
}

/// One endpoint of a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The route pattern (the path when no pattern matched; `(other)` past the tracked maximum).
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// Calls today.
    pub calls: u64,
    /// Points charged today.
    pub points: u64,
}

/// One repeated request of a [`Report`]: typically an integration polling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Repeated {
    /// The HTTP method.
    pub method: String,
    /// The request target with its query string.
    pub path: String,
    /// Times seen today.
    pub count: u64,
    /// Mean seconds between two of them.
    pub mean_interval_s: f64,
}

/// `instant` as RFC 3339 in `tz`.
fn rfc3339(tz: Tz, at: Timestamp, format: SecondsFormat) -> String {
    tz.from_utc_datetime(&at.to_utc().naive_utc())
        .to_rfc3339_opts(format, false)
}

impl Usage {
    /// The body of `GET /v1/usage` for `org`, from its usage and its limits' statuses.
    pub fn new(org: &ResolvedOrg, usage: &OrgUsage, statuses: &[LimitStatus]) -> Self {
        let tz = org.time_zone();
        let limits = statuses
            .iter()
            .filter_map(|status| {
                let limit = org.limits().get(status.index)?;
                Some(Limit {
                    name: limit.name().to_owned(),
                    dimension: limit.dimension().as_str().to_owned(),
                    limit: status.limit,
                    remaining: status.remaining,
                    reset: rfc3339(tz, status.reset, SecondsFormat::AutoSi),
                    rate: status
                        .rate
                        .zip(status.full_at)
                        .map(|(rate, full_at)| RateUsage {
                            amount: rate.amount(),
                            per: rate.per().as_str().to_owned(),
                            burst: rate.burst(),
                            available: status.remaining,
                            full_at: rfc3339(tz, full_at, SecondsFormat::AutoSi),
                        }),
                    tiers: status
                        .tiers()
                        .iter()
                        .filter(|_| status.rate.is_none())
                        .map(|tier| Tier {
                            window: tier.window.as_str().to_owned(),
                            capacity: tier.capacity,
                            used: tier.used,
                            remaining: tier.remaining,
                            reset: rfc3339(tz, tier.reset, SecondsFormat::AutoSi),
                        })
                        .collect(),
                })
            })
            .collect();
        Self {
            org: org.id().as_str().to_owned(),
            date: usage.usage.date.to_string(),
            time_zone: tz.name().to_owned(),
            calls_today: usage.usage.calls_today,
            billable_today: usage.usage.billable_today,
            in_flight: usage.in_flight,
            concurrency: org.concurrency().map(|concurrency| concurrency.max()),
            limits,
        }
    }
}

impl Call {
    /// One call as the log shows it, with its instant in `tz`.
    pub fn new(tz: Tz, call: &CallRecord) -> Self {
        let limit = match &call.outcome {
            Outcome::Rejected { limit } => Some(limit.to_string()),
            Outcome::Admitted | Outcome::Exempt => None,
        };
        Self {
            at: rfc3339(tz, call.at, SecondsFormat::Millis),
            key: call.key.to_string(),
            method: call.method.to_string(),
            path: call.path.to_string(),
            route: call.route.as_deref().map(str::to_owned),
            status: call.status,
            cost: call.cost,
            latency_ms: call.latency_ms,
            outcome: call.outcome.as_str().to_owned(),
            limit,
        }
    }
}

impl Calls {
    /// The body of `GET /v1/usage/calls`: at most [`CALLS_SHOWN`] of `usage`'s calls, newest first.
    pub fn new(org: &ResolvedOrg, usage: &OrgUsage) -> Self {
        let tz = org.time_zone();
        Self {
            calls: usage
                .usage
                .calls
                .iter()
                .take(CALLS_SHOWN)
                .map(|call| Call::new(tz, call))
                .collect(),
        }
    }
}

impl Billing {
    /// The body of `GET /v1/usage/billing` from `usage`'s billable days.
    pub fn new(usage: &OrgUsage) -> Self {
        Self {
            days: usage
                .usage
                .billable_days
                .iter()
                .map(|(date, billable)| BillingDay {
                    date: date.to_string(),
                    billable: *billable,
                })
                .collect(),
        }
    }
}

impl From<&EndpointUsage> for Endpoint {
    fn from(endpoint: &EndpointUsage) -> Self {
        Self {
            route: endpoint.route.to_string(),
            method: endpoint.method.to_string(),
            calls: endpoint.calls,
            points: endpoint.points,
        }
    }
}

impl From<&RepeatedRequest> for Repeated {
    fn from(repeated: &RepeatedRequest) -> Self {
        Self {
            method: repeated.method.to_string(),
            path: repeated.path.to_string(),
            count: repeated.count,
            // Milliseconds are all the precision there is; don't print 29.999999999999996.
            mean_interval_s: (repeated.mean_interval_s * 1000.0).round() / 1000.0,
        }
    }
}

impl Report {
    /// The body of `GET /v1/usage/report` from `usage`.
    pub fn new(usage: &OrgUsage) -> Self {
        Self {
            endpoints: usage.usage.endpoints.iter().map(Endpoint::from).collect(),
            repeated: usage.usage.repeated.iter().map(Repeated::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_written_in_the_orgs_zone() {
        let amsterdam: Tz = "Europe/Amsterdam".parse().expect("zone");
        // 2026-03-14T23:00:00Z is midnight in Amsterdam (CET, +01:00).
        let midnight = Timestamp::from_secs(1_773_529_200);
        assert_eq!(
            rfc3339(amsterdam, midnight, SecondsFormat::AutoSi),
            "2026-03-15T00:00:00+01:00"
        );
        assert_eq!(
            rfc3339(
                Tz::UTC,
                Timestamp::from_millis(1_773_529_200_250),
                SecondsFormat::Millis
            ),
            "2026-03-14T23:00:00.250+00:00"
        );
    }

    #[test]
    fn limit_appears_only_on_rejections() {
        let admitted = CallRecord::new(Timestamp::from_secs(0), "GET", "/v1/items");
        let rejected = admitted.clone().with_outcome(Outcome::Rejected {
            limit: "daily".into(),
        });
        let admitted = serde_json::to_value(Call::new(Tz::UTC, &admitted)).expect("json");
        let rejected = serde_json::to_value(Call::new(Tz::UTC, &rejected)).expect("json");
        assert!(admitted.get("limit").is_none());
        assert_eq!(admitted["outcome"], "admitted");
        assert_eq!(rejected["limit"], "daily");
        assert_eq!(rejected["outcome"], "rejected");
    }
}
