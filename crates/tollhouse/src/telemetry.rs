//! tracing events and `metrics` for every decision.
//!
//! - a `debug` event per decision, with every limit's remaining count;
//! - an `info` event when a request takes an org past 80% of a `requests` or `points` limit;
//! - a `warn` event per rejection (and per request a shadow plan would have rejected);
//! - `tollhouse_decisions_total{outcome,limit}`, `tollhouse_decision_seconds`,
//!   `tollhouse_in_flight{org}`, `tollhouse_store_errors_total` and
//!   `tollhouse_unidentified_total{reason}` through the `metrics` facade.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tollhouse_core::{Charge, Dimension, LimitStatus, ResolvedOrg, Snapshot};

use crate::identity::Unidentified;

/// Every limit's remaining count as `name=remaining` pairs, formatted only if an event is enabled.
pub(crate) struct Remaining<'a> {
    pub(crate) org: &'a ResolvedOrg,
    pub(crate) statuses: &'a [LimitStatus],
}

impl fmt::Display for Remaining<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_remaining(f, self.org, self.statuses.iter().copied())
    }
}

/// [`Remaining`] of a snapshot, whose numbers are computed only if an event is enabled.
pub(crate) struct SnapshotRemaining<'a> {
    pub(crate) org: &'a ResolvedOrg,
    pub(crate) snapshot: &'a Snapshot,
}

impl fmt::Display for SnapshotRemaining<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_remaining(f, self.org, self.snapshot.iter(self.org))
    }
}

fn write_remaining(
    f: &mut fmt::Formatter<'_>,
    org: &ResolvedOrg,
    statuses: impl Iterator<Item = LimitStatus>,
) -> fmt::Result {
    for (position, status) in statuses.enumerate() {
        let name = org
            .limits()
            .get(status.index)
            .map_or("?", |limit| limit.name());
        if position > 0 {
            f.write_str(" ")?;
        }
        write!(f, "{name}={}/{}", status.remaining, status.limit)?;
    }
    Ok(())
}

/// Counts one decision and times it. The decisions no limit caused (`limit = None`) use static
/// metric keys, so counting them allocates nothing.
pub(crate) fn decision(outcome: &'static str, limit: Option<&Arc<str>>, started: Instant) {
    let counter = match (outcome, limit) {
        ("admitted", None) => metrics::counter!(
            "tollhouse_decisions_total",
            "outcome" => "admitted",
            "limit" => ""
        ),
        ("exempt", None) => metrics::counter!(
            "tollhouse_decisions_total",
            "outcome" => "exempt",
            "limit" => ""
        ),
        ("store_error", None) => metrics::counter!(
            "tollhouse_decisions_total",
            "outcome" => "store_error",
            "limit" => ""
        ),
        (outcome, limit) => metrics::counter!(
            "tollhouse_decisions_total",
            "outcome" => outcome,
            "limit" => limit.map_or_else(|| metrics::SharedString::const_str(""), |limit| Arc::clone(limit).into())
        ),
    };
    counter.increment(1);
    metrics::histogram!("tollhouse_decision_seconds").record(started.elapsed().as_secs_f64());
}

/// Counts a caller that was not identified, by reason: `tollhouse_unidentified_total{reason}`
/// (`missing`, `malformed`, `unknown`, `unavailable`).
pub(crate) fn unidentified(reason: Unidentified) {
    let reason = match reason {
        Unidentified::Missing => "missing",
        Unidentified::Malformed => "malformed",
        Unidentified::Unknown => "unknown",
        Unidentified::Unavailable => "unavailable",
    };
    metrics::counter!("tollhouse_unidentified_total", "reason" => reason).increment(1);
}

/// The key of an org's `tollhouse_in_flight` gauge; the engine keeps one per org (see
/// [`in_flight`]). Without `org_label` (`metrics_org_label = false`), every org shares one series.
pub(crate) fn in_flight_key(org: &ResolvedOrg, org_label: bool) -> metrics::Key {
    if !org_label {
        return metrics::Key::from_static_name("tollhouse_in_flight");
    }
    metrics::Key::from_parts(
        "tollhouse_in_flight",
        vec![metrics::Label::new("org", org.id().as_arc().clone())],
    )
}

/// Moves an org's in-flight gauge, by its cached key (building the key's labels per request would
/// allocate).
pub(crate) fn in_flight(key: &metrics::Key, delta: f64) {
    static METADATA: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    metrics::with_recorder(|recorder| recorder.register_gauge(key, &METADATA)).increment(delta);
}

/// Logs an admission (the numbers are computed from `snapshot` only if the event is enabled).
pub(crate) fn admitted(org: &ResolvedOrg, snapshot: &Snapshot, charge: Charge) {
    tracing::debug!(
        org = org.id().as_str(),
        cost = charge.points,
        remaining = %SnapshotRemaining { org, snapshot },
        "tollhouse: admitted"
    );
}

/// Logs an org passing 80% of a `requests` or `points` limit with this charge.
pub(crate) fn passed_80(org: &ResolvedOrg, status: &LimitStatus, charge: Charge) {
    let Some(limit) = org.limits().get(status.index) else {
        return;
    };
    let amount = match limit.dimension() {
        Dimension::Requests | Dimension::Points => charge.amount(limit.dimension()),
        Dimension::LatencyMs => return,
    };
    let capacity = u128::from(status.limit);
    let used_after = capacity.saturating_sub(u128::from(status.remaining));
    let used_before = used_after.saturating_sub(u128::from(amount));
    if used_before * 5 < capacity * 4 && used_after * 5 >= capacity * 4 {
        tracing::info!(
            org = org.id().as_str(),
            limit = limit.name(),
            remaining = status.remaining,
            capacity = status.limit,
            reset = %status.reset,
            "tollhouse: org passed 80% of a limit"
        );
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt};

    use crate::test_support::{fixture, get, ok, policy};

    /// The value of the metric `name` whose labels include `labels`, from a debugging recorder.
    fn metric<'a>(
        snapshot: &'a [(
            metrics_util::CompositeKey,
            Option<metrics::Unit>,
            Option<metrics::SharedString>,
            metrics_util::debugging::DebugValue,
        )],
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a metrics_util::debugging::DebugValue> {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.key().name() == name
                    && labels.iter().all(|(label, value)| {
                        key.key()
                            .labels()
                            .any(|l| l.key() == *label && l.value() == *value)
                    })
            })
            .map(|(.., value)| value)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counts_and_times_decisions_and_tracks_requests_in_flight()
    -> Result<(), Box<dyn std::error::Error>> {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);

        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(tower::service_fn(
            |_request: http::Request<axum::body::Body>| async { ok(axum::body::Body::empty()) },
        ));
        // Four admitted (20 points: three 5-point reports and an item), then a report with 4
        // points left is rejected by the `points` limit. The first response is kept: its
        // request stays in flight until its body is dropped.
        let mut kept = None;
        for path in ["/reports", "/reports", "/reports", "/items", "/reports"] {
            let response = svc
                .ready()
                .await?
                .call(get(path, Some("acme-key-1")))
                .await?;
            kept.get_or_insert(response);
        }
        let snapshot = snapshotter.snapshot().into_vec();
        assert_eq!(
            metric(
                &snapshot,
                "tollhouse_decisions_total",
                &[("outcome", "admitted"), ("limit", "")]
            ),
            Some(&DebugValue::Counter(4))
        );
        assert_eq!(
            metric(
                &snapshot,
                "tollhouse_decisions_total",
                &[("outcome", "rejected"), ("limit", "points")]
            ),
            Some(&DebugValue::Counter(1))
        );
        match metric(&snapshot, "tollhouse_decision_seconds", &[]) {
            Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 5),
            other => panic!("no decision-time histogram: {other:?}"),
        }
        assert_eq!(
            metric(&snapshot, "tollhouse_in_flight", &[("org", "acme")]),
            Some(&DebugValue::Gauge(1.0.into())),
            "the kept response's request is in flight"
        );

        // A snapshot takes the values and resets them: the second one shows the drop's move.
        drop(kept);
        let snapshot = snapshotter.snapshot().into_vec();
        assert_eq!(
            metric(&snapshot, "tollhouse_in_flight", &[("org", "acme")]),
            Some(&DebugValue::Gauge((-1.0).into()))
        );
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_recorder_that_takes_over_gets_the_next_requests()
    -> Result<(), Box<dyn std::error::Error>> {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let f = fixture(policy(""));
        let mut svc = f.layer.clone().layer(tower::service_fn(
            |_request: http::Request<axum::body::Body>| async { ok(axum::body::Body::empty()) },
        ));
        // No recorder for the first request, then one, then another: each sees its own requests.
        drop(
            svc.ready()
                .await?
                .call(get("/items", Some("acme-key-1")))
                .await?,
        );
        for requests in [2, 3] {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            let guard = metrics::set_default_local_recorder(&recorder);
            for _ in 0..requests {
                drop(
                    svc.ready()
                        .await?
                        .call(get("/items", Some("acme-key-1")))
                        .await?,
                );
            }
            drop(guard);
            let snapshot = snapshotter.snapshot().into_vec();
            assert_eq!(
                metric(
                    &snapshot,
                    "tollhouse_decisions_total",
                    &[("outcome", "admitted")]
                ),
                Some(&DebugValue::Counter(requests))
            );
            match metric(&snapshot, "tollhouse_decision_seconds", &[]) {
                Some(DebugValue::Histogram(samples)) => {
                    assert_eq!(samples.len(), usize::try_from(requests)?);
                }
                other => panic!("no decision-time histogram: {other:?}"),
            }
            // Each request moved the gauge up and back down.
            assert_eq!(
                metric(&snapshot, "tollhouse_in_flight", &[("org", "acme")]),
                Some(&DebugValue::Gauge(0.0.into()))
            );
        }
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_in_flight_series_without_the_org_label_and_401s_counted_by_reason()
    -> Result<(), Box<dyn std::error::Error>> {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let f = fixture(policy("[server]\nmetrics_org_label = false\n"));
        let mut svc = f.layer.clone().layer(tower::service_fn(
            |_request: http::Request<axum::body::Body>| async { ok(axum::body::Body::empty()) },
        ));
        let kept = svc
            .ready()
            .await?
            .call(get("/items", Some("acme-key-1")))
            .await?;
        for key in [None, Some("nobody"), Some("nobody")] {
            drop(svc.ready().await?.call(get("/items", key)).await?);
        }
        let snapshot = snapshotter.snapshot().into_vec();
        let in_flight: Vec<_> = snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == "tollhouse_in_flight")
            .collect();
        assert_eq!(in_flight.len(), 1, "one series for every org");
        assert_eq!(in_flight[0].0.key().labels().count(), 0, "no org label");
        assert_eq!(in_flight[0].3, DebugValue::Gauge(1.0.into()));
        assert_eq!(
            metric(
                &snapshot,
                "tollhouse_unidentified_total",
                &[("reason", "unknown")]
            ),
            Some(&DebugValue::Counter(2))
        );
        assert_eq!(
            metric(
                &snapshot,
                "tollhouse_unidentified_total",
                &[("reason", "missing")]
            ),
            Some(&DebugValue::Counter(1))
        );
        drop(kept);
        Ok(())
    }
}
