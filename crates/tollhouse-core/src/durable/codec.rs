//! An org's usage (all but its billing, which has a table of its own) as JSON in the `usage`
//! table: readable with `sqlite3`, and free to gain fields without a new schema.

use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;
use crate::usage::{CallRecord, Outcome, Row, SavedUsage};

#[derive(Serialize, Deserialize)]
struct UsageJson {
    today: Option<String>,
    admitted_today: u64,
    latest_ms: Option<i64>,
    calls: Vec<CallJson>,
    endpoints: Vec<RowJson>,
    repeated: Vec<RowJson>,
}

#[derive(Serialize, Deserialize)]
struct CallJson {
    at: i64,
    key: Arc<str>,
    method: Arc<str>,
    path: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_len: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    route: Option<Arc<str>>,
    status: u16,
    cost: u64,
    latency_ms: u64,
    outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<Arc<str>>,
    billable: bool,
}

#[derive(Serialize, Deserialize)]
struct RowJson {
    key: u64,
    method: Arc<str>,
    path: Arc<str>,
    count: u64,
    points: u64,
    first: i64,
    last: i64,
}

/// `usage` (its billing aside) as JSON.
pub(super) fn encode(usage: &SavedUsage) -> String {
    let json = UsageJson {
        today: usage.today.map(|date| date.to_string()),
        admitted_today: usage.admitted_today,
        latest_ms: usage.latest.map(Timestamp::as_millis),
        calls: usage.calls.iter().map(call_json).collect(),
        endpoints: usage.endpoints.iter().map(row_json).collect(),
        repeated: usage.repeated.iter().map(row_json).collect(),
    };
    // Strings, integers and booleans only: serializing them cannot fail.
    serde_json::to_string(&json).unwrap_or_default()
}

/// The usage `text` holds, with `billable_days` from the billing table.
pub(super) fn decode(
    text: &str,
    billable_days: Vec<(NaiveDate, u64)>,
) -> Result<SavedUsage, serde_json::Error> {
    let json: UsageJson = serde_json::from_str(text)?;
    Ok(SavedUsage {
        today: json.today.and_then(|date| date.parse().ok()),
        admitted_today: json.admitted_today,
        billable_days,
        calls: json.calls.into_iter().map(call_record).collect(),
        endpoints: json.endpoints.into_iter().map(row).collect(),
        repeated: json.repeated.into_iter().map(row).collect(),
        latest: json.latest_ms.map(Timestamp::from_millis),
    })
}

fn call_json(call: &CallRecord) -> CallJson {
    let (outcome, limit) = match &call.outcome {
        Outcome::Admitted => ("admitted", None),
        Outcome::Rejected { limit } => ("rejected", Some(limit.clone())),
        Outcome::Exempt => ("exempt", None),
    };
    CallJson {
        at: call.at.as_millis(),
        key: call.key.clone(),
        method: call.method.clone(),
        path: call.path.clone(),
        path_len: call.path_len,
        route: call.route.clone(),
        status: call.status,
        cost: call.cost,
        latency_ms: call.latency_ms,
        outcome: outcome.to_owned(),
        limit,
        billable: call.billable,
    }
}

fn call_record(call: CallJson) -> CallRecord {
    let outcome = match (call.outcome.as_str(), call.limit) {
        ("rejected", Some(limit)) => Outcome::Rejected { limit },
        ("exempt", _) => Outcome::Exempt,
        _ => Outcome::Admitted,
    };
    CallRecord {
        at: Timestamp::from_millis(call.at),
        key: call.key,
        method: call.method,
        path: call.path,
        path_len: call.path_len,
        route: call.route,
        status: call.status,
        cost: call.cost,
        latency_ms: call.latency_ms,
        outcome,
        billable: call.billable,
        logged: true,
    }
}

fn row_json((key, row): &(u64, Row)) -> RowJson {
    RowJson {
        key: *key,
        method: row.method.clone(),
        path: row.path.clone(),
        count: row.count,
        points: row.points,
        first: row.first.as_millis(),
        last: row.last.as_millis(),
    }
}

fn row(json: RowJson) -> (u64, Row) {
    (
        json.key,
        Row {
            method: json.method,
            path: json.path,
            count: json.count,
            points: json.points,
            first: Timestamp::from_millis(json.first),
            last: Timestamp::from_millis(json.last),
        },
    )
}
