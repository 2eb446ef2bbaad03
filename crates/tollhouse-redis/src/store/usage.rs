//! Reading an org's usage back: today's counts, billable days, endpoints, repeated requests and
//! the call log, in one script call.

use std::collections::HashMap;

use chrono::{Days, NaiveDate};
use redis::Value;
use tollhouse_core::usage::{
    CALLS_SHOWN, DAYS_KEPT, EndpointUsage, REPEAT_THRESHOLD, REPORT_ROWS, RepeatedRequest, Row,
    local_date, sort_endpoints, sort_newest_first, sort_repeated,
};
use tollhouse_core::{OrgUsage, ResolvedOrg, StoreError, Timestamp, UsageSnapshot, UsageView};

use super::reply::{array, int, protocol, text};
use super::{Inner, SCRIPTS, day_number};
use crate::codec;

impl Inner {
    pub(super) async fn usage(
        &self,
        org: &ResolvedOrg,
        now: Timestamp,
        view: UsageView,
    ) -> Result<OrgUsage, StoreError> {
        let keys = self.keys(org.id());
        // What this instance has queued for the org is read too.
        self.write_org(&keys.leases()).await;
        let date = local_date(org.time_zone(), now);
        let days = view.days().clamp(1, DAYS_KEPT);
        let log_count = match view {
            UsageView::All { .. } => self.calls_kept,
            UsageView::Calls => CALLS_SHOWN,
            _ => 0,
        };
        let report_rows = if view.report() { REPORT_ROWS } else { 0 };
        let dates: Vec<NaiveDate> = (0..days)
            .rev()
            .filter_map(|back| date.checked_sub_days(Days::new(back as u64)))
            .collect();
        let mut invocation = SCRIPTS.usage.prepare_invoke();
        invocation
            .key(keys.leases())
            .key(keys.today())
            .key(keys.day(date))
            .key(keys.endpoint_calls(date))
            .key(keys.endpoint_points(date))
            .key(keys.repeated(date))
            .key(keys.repeated_info(date))
            .key(keys.log())
            .key(keys.granted_in_flight());
        for day in &dates {
            invocation.key(keys.day(*day));
        }
        invocation
            .arg(day_number(date))
            .arg(log_count)
            .arg(report_rows)
            .arg(REPEAT_THRESHOLD)
            .arg(self.instance_name());
        let mut conn = self.conn.clone();
        let reply = array(
            self.run(invocation.invoke_async::<Value>(&mut conn))
                .await?,
        )?;
        let Ok::<[Value; 8], _>(
            [
                in_flight,
                current,
                admitted,
                billable,
                calls,
                points,
                repeated,
                log,
            ],
        ) = reply.try_into()
        else {
            return Err(protocol("a usage reply of the wrong shape"));
        };
        let current = int(&current)? == 1;
        let billable = array(billable)?;
        if billable.len() != dates.len() {
            return Err(protocol("a usage reply with the wrong number of days"));
        }
        let billable_days = dates
            .iter()
            .zip(&billable)
            .map(|(day, count)| Ok((*day, u64::try_from(int(count)?).unwrap_or(0))))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut endpoints = endpoints(array(calls)?, array(points)?)?;
        sort_endpoints(&mut endpoints);
        let mut repeated = repeated_requests(array(repeated)?)?;
        sort_repeated(&mut repeated);
        let mut calls = array(log)?
            .iter()
            .map(|entry| match entry {
                Value::BulkString(bytes) => codec::decode(bytes),
                _ => Err(protocol("a call log entry that is not a string")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        sort_newest_first(&mut calls);
        let usage = UsageSnapshot {
            date,
            calls_today: if current {
                u64::try_from(int(&admitted)?).unwrap_or(0)
            } else {
                0
            },
            billable_today: billable_days.last().map_or(0, |(_, count)| *count),
            billable_days,
            calls,
            endpoints,
            repeated,
        };
        // This instance's own part of the grants' count, fresher than what it published.
        let adjustment = self
            .grants
            .as_ref()
            .map_or(0, |book| book.in_flight_adjustment(org.id()));
        let in_flight = int(&in_flight)?.saturating_add(adjustment).max(0);
        Ok(OrgUsage {
            usage,
            in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
        })
    }
}

fn split_field(field: &str) -> (&str, &str) {
    field.split_once('\n').unwrap_or(("", field))
}

fn endpoints(calls: Vec<Value>, points: Vec<Value>) -> Result<Vec<EndpointUsage>, StoreError> {
    let mut points_of = HashMap::with_capacity(points.len() / 2);
    for pair in points.chunks(2) {
        if let [field, value] = pair {
            points_of.insert(text(field)?.to_owned(), int(value)?);
        }
    }
    let mut out = Vec::with_capacity(calls.len() / 2);
    for pair in calls.chunks(2) {
        let [field, value] = pair else {
            return Err(protocol("an endpoint without its count"));
        };
        let field = text(field)?;
        let (method, route) = split_field(field);
        out.push(EndpointUsage {
            method: method.into(),
            route: route.into(),
            calls: u64::try_from(int(value)?).unwrap_or(0),
            points: u64::try_from(points_of.get(field).copied().unwrap_or(0)).unwrap_or(0),
        });
    }
    Ok(out)
}

fn repeated_requests(entries: Vec<Value>) -> Result<Vec<RepeatedRequest>, StoreError> {
    let mut out = Vec::with_capacity(entries.len() / 3);
    for triple in entries.chunks(3) {
        let [_entry, count, info] = triple else {
            return Err(protocol(
                "a repeated request without its count and what it is",
            ));
        };
        let count: u64 = text(count)?
            .parse()
            .map_err(|_| protocol("a repeated request count that is not a number"))?;
        let mut parts = text(info)?.splitn(3, ' ');
        let (Some(Ok(first)), Some(Ok(last)), Some(display)) = (
            parts.next().map(str::parse::<i64>),
            parts.next().map(str::parse::<i64>),
            parts.next(),
        ) else {
            return Err(protocol(
                "a repeated request that is not 'first last method\\npath'",
            ));
        };
        let (method, path) = split_field(display);
        out.push(RepeatedRequest::of(&Row {
            method: method.into(),
            path: path.into(),
            count,
            points: 0,
            first: Timestamp::from_millis(first),
            last: Timestamp::from_millis(last),
        }));
    }
    Ok(out)
}
