//! Writing what changed, and reading it all back: one transaction per flush, merged per org.

use std::collections::HashMap;

use chrono::{Days, NaiveDate};
use rusqlite::{Connection, params};

use super::codec;
use crate::ledger::SavedTier;
use crate::memory::SavedOrg;
use crate::org::OrgId;
use crate::tier::TierState;
use crate::time::Timestamp;
use crate::usage::{DAYS_KEPT, SavedUsage};

/// An org's state as read on start.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub(super) tiers: Vec<SavedTier>,
    pub(super) usage: Option<SavedUsage>,
}

/// Writes every org of `changed` in one transaction, and forgets what has ended by `now`: tier
/// windows that have passed and billing days past the last 31.
pub(super) fn write(
    connection: &mut Connection,
    changed: &[SavedOrg],
    now: Timestamp,
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut clear_counters =
            transaction.prepare_cached("DELETE FROM counters WHERE org = ?1")?;
        let mut counter = transaction.prepare_cached(
            "INSERT OR REPLACE INTO counters (org, limit_name, window, start_ms, end_ms, used)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut usage = transaction.prepare_cached(
            "INSERT OR REPLACE INTO usage (org, latest_ms, state) VALUES (?1, ?2, ?3)",
        )?;
        let mut billing = transaction.prepare_cached(
            "INSERT OR REPLACE INTO billing (org, date, billable) VALUES (?1, ?2, ?3)",
        )?;
        for saved in changed {
            let org = saved.org.as_str();
            if let Some(tiers) = &saved.tiers {
                clear_counters.execute([org])?;
                for tier in tiers {
                    counter.execute(params![
                        org,
                        &*tier.limit,
                        tier.window.as_str(),
                        tier.state.start.as_millis(),
                        tier.state.end.as_millis(),
                        tier.state.used,
                    ])?;
                }
            }
            if let Some(saved_usage) = &saved.usage {
                usage.execute(params![
                    org,
                    saved_usage.latest.map(Timestamp::as_millis),
                    codec::encode(saved_usage),
                ])?;
                for (date, count) in &saved_usage.billable_days {
                    billing.execute(params![
                        org,
                        date.to_string(),
                        i64::try_from(*count).unwrap_or(i64::MAX)
                    ])?;
                }
            }
        }
    }
    prune(&transaction, now)?;
    transaction.commit()
}

/// Forgets windows that have ended, billing past 31 days and usage silent for longer.
fn prune(transaction: &rusqlite::Transaction<'_>, now: Timestamp) -> rusqlite::Result<()> {
    transaction
        .prepare_cached("DELETE FROM counters WHERE end_ms <= ?1")?
        .execute([now.as_millis()])?;
    let oldest = crate::usage::local_date(chrono_tz::UTC, now)
        .checked_sub_days(Days::new(DAYS_KEPT as u64 + 1))
        .map(|date| date.to_string());
    if let Some(oldest) = oldest {
        transaction
            .prepare_cached("DELETE FROM billing WHERE date < ?1")?
            .execute([oldest])?;
    }
    let silent_since = now
        .as_millis()
        .saturating_sub((DAYS_KEPT as i64 + 1) * 86_400_000);
    transaction
        .prepare_cached("DELETE FROM usage WHERE latest_ms IS NULL OR latest_ms < ?1")?
        .execute([silent_since])?;
    Ok(())
}

/// Every org's state still worth having at `now`.
pub(super) fn read(
    connection: &Connection,
    now: Timestamp,
) -> rusqlite::Result<HashMap<OrgId, Loaded>> {
    let mut loaded: HashMap<OrgId, Loaded> = HashMap::new();
    let mut counters = connection.prepare(
        "SELECT org, limit_name, window, start_ms, end_ms, used FROM counters WHERE end_ms > ?1",
    )?;
    let rows = counters.query_map([now.as_millis()], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (org, limit, window, start, end, used) = row?;
        // A window this build does not know (a file written by another) is left out.
        let Ok(window) = window.parse() else { continue };
        loaded
            .entry(OrgId::new(org))
            .or_default()
            .tiers
            .push(SavedTier {
                limit: limit.into(),
                window,
                state: TierState {
                    start: Timestamp::from_millis(start),
                    end: Timestamp::from_millis(end),
                    used,
                },
            });
    }
    let mut billing: HashMap<String, Vec<(NaiveDate, u64)>> = HashMap::new();
    let mut days = connection.prepare("SELECT org, date, billable FROM billing ORDER BY date")?;
    let rows = days.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (org, date, count) = row?;
        if let Ok(date) = date.parse() {
            billing
                .entry(org)
                .or_default()
                .push((date, u64::try_from(count).unwrap_or(0)));
        }
    }
    let mut usage = connection.prepare("SELECT org, state FROM usage")?;
    let rows = usage.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (org, state) = row?;
        let days = billing.remove(&org).unwrap_or_default();
        match codec::decode(&state, days) {
            Ok(saved) => loaded.entry(OrgId::new(org)).or_default().usage = Some(saved),
            Err(error) => {
                tracing::warn!(org, %error, "tollhouse: an org's saved usage could not be read; it starts empty");
            }
        }
    }
    // Billing of orgs whose usage row is gone still counts.
    for (org, days) in billing {
        loaded.entry(OrgId::new(org)).or_default().usage = Some(SavedUsage {
            billable_days: days,
            ..SavedUsage::default()
        });
    }
    Ok(loaded)
}
