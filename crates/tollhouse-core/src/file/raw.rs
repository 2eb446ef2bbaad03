//! The policy file as written: every value that can be wrong keeps its span, so that an error
//! can point at it.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFile {
    pub(super) server: Option<RawServer>,
    #[serde(default)]
    pub(super) plans: BTreeMap<Spanned<String>, RawPlan>,
    #[serde(default)]
    pub(super) orgs: Vec<RawOrg>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    pub(super) admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawServer {
    pub(super) time_zone: Option<Spanned<String>>,
    pub(super) sandbox_divisor: Option<Spanned<i64>>,
    pub(super) reset_format: Option<Spanned<String>>,
    pub(super) legacy_headers: Option<bool>,
    pub(super) ietf_headers: Option<bool>,
    pub(super) on_store_error: Option<Spanned<String>>,
    pub(super) on_lookup_error: Option<Spanned<String>>,
    pub(super) calls_kept: Option<Spanned<i64>>,
    pub(super) metrics_org_label: Option<bool>,
    pub(super) usage_query: Option<Spanned<String>>,
    pub(super) redact_query: Option<Vec<Spanned<String>>>,
    pub(super) max_latency_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawPlan {
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) concurrency_wait_ms: Option<Spanned<i64>>,
    pub(super) shadow: Option<bool>,
    #[serde(default)]
    pub(super) limits: Vec<RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawLimit {
    pub(super) name: Spanned<String>,
    pub(super) dimension: Spanned<String>,
    pub(super) zone: Option<Spanned<String>>,
    pub(super) tiers: Option<Spanned<Vec<RawTier>>>,
    pub(super) rate: Option<Spanned<RawRate>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { amount = 10, per = \"second\", burst = 20 }"
)]
pub(super) struct RawRate {
    pub(super) amount: Spanned<i64>,
    pub(super) per: Spanned<String>,
    pub(super) burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTier {
    pub(super) window: Spanned<String>,
    pub(super) capacity: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawOrg {
    pub(super) id: Spanned<String>,
    pub(super) plan: Spanned<String>,
    pub(super) time_zone: Option<Spanned<String>>,
    pub(super) environment: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) keys: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) overrides: Vec<Spanned<RawOverride>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawOverride {
    pub(super) limit: Spanned<String>,
    pub(super) capacity: Option<Spanned<i64>>,
    pub(super) capacities: Option<Spanned<Vec<Spanned<i64>>>>,
    pub(super) scale: Option<Spanned<f64>>,
    pub(super) until: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRoute {
    #[serde(rename = "match")]
    pub(super) pattern: Spanned<String>,
    pub(super) cost: Option<Spanned<i64>>,
    pub(super) exempt: Option<Spanned<bool>>,
    pub(super) billable: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAdmin {
    pub(super) token: Spanned<String>,
}
