//! The usage routes over real HTTP on loopback: the JSON shape of every route, the last 100 calls,
//! one org never seeing another's usage, the polling report, billing days, and 401s.

mod usage_fixture;

use serde_json::Value;
use tollhouse_core::Timestamp;
use usage_fixture::{
    Call, DAY, Harness, START, array, assert_members, is_rfc3339_at, string, uint,
};

const ROUTES: [&str; 4] = [
    "/v1/usage",
    "/v1/usage/calls",
    "/v1/usage/billing",
    "/v1/usage/report",
];

fn assert_tier(tier: &Value) {
    assert_members(tier, &["window", "capacity", "used", "remaining", "reset"]);
    assert!(
        ["minute", "hour", "day", "month"].contains(&string(tier, "window")),
        "{tier}"
    );
    uint(tier, "capacity");
    assert!(tier["used"].is_i64(), "used is an integer: {tier}");
    uint(tier, "remaining");
    string(tier, "reset");
}

fn assert_limit(limit: &Value) {
    assert_members(
        limit,
        &["name", "dimension", "limit", "remaining", "reset", "tiers"],
    );
    string(limit, "name");
    assert!(
        ["requests", "points", "latency_ms"].contains(&string(limit, "dimension")),
        "{limit}"
    );
    uint(limit, "limit");
    uint(limit, "remaining");
    string(limit, "reset");
    for tier in array(limit, "tiers") {
        assert_tier(tier);
    }
}

#[tokio::test]
async fn usage_has_every_field_with_its_type_and_zone() {
    let h = Harness::start().await;
    h.admit(&Call::get("acme-key-1", "/v1/items"));
    h.admit(&Call {
        cost: 3,
        ..Call::get("acme-key-2", "/v1/reports")
    });
    h.reject(&Call::get("acme-key-1", "/v1/items"), "daily");
    h.exempt(&Call::get("acme-key-1", "/v1/files/7"));
    let in_flight = h.hold(&Call::get("acme-key-1", "/v1/slow?ms=5000"));

    let usage = h.json("/v1/usage", "acme-key-1").await;
    assert_members(
        &usage,
        &[
            "org",
            "date",
            "time_zone",
            "calls_today",
            "billable_today",
            "in_flight",
            "concurrency",
            "limits",
        ],
    );
    assert_eq!(string(&usage, "org"), "acme");
    assert_eq!(string(&usage, "date"), "2026-03-14");
    assert_eq!(string(&usage, "time_zone"), "Europe/Amsterdam");
    assert_eq!(uint(&usage, "calls_today"), 2, "admitted calls only");
    assert_eq!(
        uint(&usage, "billable_today"),
        4,
        "rejected and exempt bill too"
    );
    assert_eq!(uint(&usage, "in_flight"), 1);
    assert_eq!(uint(&usage, "concurrency"), 3);

    let limits = array(&usage, "limits");
    let names: Vec<&str> = limits.iter().map(|limit| string(limit, "name")).collect();
    assert_eq!(names, ["points", "daily", "latency"], "plan order");
    for limit in limits {
        assert_limit(limit);
        for tier in array(limit, "tiers") {
            assert!(is_rfc3339_at(string(tier, "reset"), "+01:00"), "{tier}");
        }
        assert!(is_rfc3339_at(string(limit, "reset"), "+01:00"), "{limit}");
    }

    // points: 1 + 3 + 1 (in flight) charged to the minute tier first.
    let points = &limits[0];
    assert_eq!(string(points, "dimension"), "points");
    assert_eq!(uint(points, "limit"), 2100);
    assert_eq!(uint(points, "remaining"), 2095);
    let tiers = array(points, "tiers");
    assert_eq!(tiers.len(), 2);
    assert_eq!(string(&tiers[0], "window"), "minute");
    assert_eq!(uint(&tiers[0], "capacity"), 100);
    assert_eq!(tiers[0]["used"], 5);
    assert_eq!(uint(&tiers[0], "remaining"), 95);
    assert_eq!(string(&tiers[0], "reset"), "2026-03-14T10:01:00+01:00");
    assert_eq!(string(&tiers[1], "window"), "hour");
    assert_eq!(tiers[1]["used"], 0);
    assert_eq!(string(&tiers[1], "reset"), "2026-03-14T11:00:00+01:00");

    // daily: three admissions; resets at Amsterdam's midnight, not UTC's.
    let daily = &limits[1];
    assert_eq!(string(daily, "dimension"), "requests");
    assert_eq!(uint(daily, "limit"), 2500);
    assert_eq!(uint(daily, "remaining"), 2497);
    assert_eq!(string(daily, "reset"), "2026-03-15T00:00:00+01:00");
    assert_eq!(array(daily, "tiers")[0]["used"], 3);

    // latency: the two settled calls took 20 ms each.
    let latency = &limits[2];
    assert_eq!(string(latency, "dimension"), "latency_ms");
    assert_eq!(array(latency, "tiers")[0]["used"], 40);

    drop(in_flight);
    let usage = h.json("/v1/usage", "acme-key-1").await;
    assert_eq!(uint(&usage, "in_flight"), 0, "the permit was released");

    // Another org: its own zone, no concurrency limit (null), three tiers.
    let globex = h.json("/v1/usage", "globex-key-1").await;
    assert_eq!(string(&globex, "org"), "globex");
    assert_eq!(string(&globex, "time_zone"), "America/New_York");
    assert_eq!(string(&globex, "date"), "2026-03-14");
    assert!(globex["concurrency"].is_null(), "{globex}");
    let count = &array(&globex, "limits")[0];
    assert_limit(count);
    assert_eq!(array(count, "tiers").len(), 3);
    assert!(
        is_rfc3339_at(string(count, "reset"), "-04:00"),
        "written in New York's zone: {count}"
    );
}

#[tokio::test]
async fn calls_have_every_field_and_name_the_limit_only_on_rejections() {
    let h = Harness::start().await;
    h.admit(&Call {
        cost: 3,
        latency_ms: 250,
        ..Call::get("acme-key-1", "/v1/reports?month=3")
    });
    h.advance_secs(1);
    h.reject(
        &Call {
            route: None,
            ..Call::get("acme-key-2", "/v1/unknown")
        },
        "daily",
    );
    h.advance_secs(1);
    h.exempt(&Call {
        route: Some("/v1/files/{id}"),
        ..Call::get("acme-key-1", "/v1/files/7")
    });

    let body = h.json("/v1/usage/calls", "acme-key-1").await;
    assert_members(&body, &["calls"]);
    let calls = array(&body, "calls");
    assert_eq!(calls.len(), 3);
    let common = [
        "at",
        "key",
        "method",
        "path",
        "route",
        "status",
        "cost",
        "latency_ms",
        "outcome",
    ];
    for call in calls {
        string(call, "at");
        string(call, "key");
        string(call, "method");
        string(call, "path");
        assert!(
            call["route"].is_string() || call["route"].is_null(),
            "{call}"
        );
        uint(call, "status");
        uint(call, "cost");
        uint(call, "latency_ms");
        assert!(is_rfc3339_at(string(call, "at"), "+01:00"), "{call}");
    }

    // Newest first: exempt, rejected, admitted.
    let exempt = &calls[0];
    assert_members(exempt, &common);
    assert_eq!(string(exempt, "outcome"), "exempt");
    assert_eq!(string(exempt, "route"), "/v1/files/{id}");
    assert_eq!(string(exempt, "at"), "2026-03-14T10:00:02.000+01:00");

    let rejected = &calls[1];
    let mut with_limit = common.to_vec();
    with_limit.push("limit");
    assert_members(rejected, &with_limit);
    assert_eq!(string(rejected, "outcome"), "rejected");
    assert_eq!(string(rejected, "limit"), "daily");
    assert_eq!(uint(rejected, "status"), 429);
    assert!(rejected["route"].is_null(), "no route matched: {rejected}");
    assert_eq!(string(rejected, "key"), "…ey-2");

    let admitted = &calls[2];
    assert_members(admitted, &common);
    assert_eq!(string(admitted, "outcome"), "admitted");
    assert_eq!(string(admitted, "method"), "GET");
    assert_eq!(
        string(admitted, "path"),
        "/v1/reports?month=3",
        "query kept"
    );
    assert_eq!(string(admitted, "route"), "/v1/reports");
    assert_eq!(uint(admitted, "status"), 200);
    assert_eq!(uint(admitted, "cost"), 3);
    assert_eq!(uint(admitted, "latency_ms"), 250);
    assert_eq!(string(admitted, "key"), "…ey-1");
    assert_eq!(string(admitted, "at"), "2026-03-14T10:00:00.000+01:00");
}

#[tokio::test]
async fn of_101_calls_the_newest_100_are_kept_newest_first_with_masked_keys() {
    let h = Harness::start().await;
    for i in 0..101 {
        let key = if i % 2 == 0 {
            "acme-key-1"
        } else {
            "acme-key-2"
        };
        let path = format!("/v1/items?n={i}");
        h.admit(&Call::get(key, &path));
        h.advance_secs(1);
    }

    let response = h.get("/v1/usage/calls", Some("Bearer acme-key-2")).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(
        !text.contains("acme-key-1"),
        "no full key in the log: {text:.200}"
    );
    let body: Value = serde_json::from_str(&text).expect("JSON");
    let calls = array(&body, "calls");
    assert_eq!(calls.len(), 100, "exactly the newest 100");
    for (position, call) in calls.iter().enumerate() {
        let n = 100 - position;
        assert_eq!(string(call, "path"), format!("/v1/items?n={n}"));
        let key = if n % 2 == 0 { "…ey-1" } else { "…ey-2" };
        assert_eq!(string(call, "key"), key, "masked to the last 4 characters");
    }
    let times: Vec<&str> = calls.iter().map(|call| string(call, "at")).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] > pair[1]),
        "strictly newest first: {times:?}"
    );
    assert_eq!(
        times[99], "2026-03-14T10:00:01.000+01:00",
        "call 0 fell off"
    );

    let usage = h.json("/v1/usage", "acme-key-1").await;
    assert_eq!(uint(&usage, "calls_today"), 101, "the count keeps them all");
}

#[tokio::test]
async fn an_org_sees_only_its_own_usage() {
    let h = Harness::start().await;
    for _ in 0..5 {
        h.admit(&Call::get("acme-key-1", "/v1/acme-secret?q=1"));
    }
    for _ in 0..12 {
        h.admit(&Call::get("acme-key-1", "/v1/acme-poll"));
    }
    for _ in 0..2 {
        h.admit(&Call::get("globex-key-1", "/v1/globex-items"));
    }

    for suffix in ["", "?org=acme"] {
        let usage = h.json(&format!("/v1/usage{suffix}"), "globex-key-1").await;
        assert_eq!(string(&usage, "org"), "globex");
        assert_eq!(uint(&usage, "calls_today"), 2);
        assert_eq!(uint(&usage, "billable_today"), 2);

        let calls = h
            .json(&format!("/v1/usage/calls{suffix}"), "globex-key-1")
            .await;
        let calls = array(&calls, "calls");
        assert_eq!(calls.len(), 2);
        assert!(
            calls
                .iter()
                .all(|call| string(call, "path") == "/v1/globex-items")
        );

        let report = h
            .json(&format!("/v1/usage/report{suffix}"), "globex-key-1")
            .await;
        let routes: Vec<&str> = array(&report, "endpoints")
            .iter()
            .map(|endpoint| string(endpoint, "route"))
            .collect();
        assert_eq!(routes, ["/v1/globex-items"]);
        assert!(array(&report, "repeated").is_empty(), "{report}");

        let billing = h
            .json(&format!("/v1/usage/billing{suffix}"), "globex-key-1")
            .await;
        let days = array(&billing, "days");
        assert_eq!(uint(&days[days.len() - 1], "billable"), 2);
    }

    let acme = h.json("/v1/usage", "acme-key-2").await;
    assert_eq!(string(&acme, "org"), "acme");
    assert_eq!(uint(&acme, "calls_today"), 17);
    let calls = h.json("/v1/usage/calls", "acme-key-2").await;
    assert!(
        array(&calls, "calls")
            .iter()
            .all(|call| string(call, "path").starts_with("/v1/acme-"))
    );
}

#[tokio::test]
async fn a_repeated_request_appears_in_the_report_with_its_count() {
    let h = Harness::start().await;
    for _ in 0..12 {
        h.admit(&Call::get("acme-key-1", "/v1/items?status=open"));
        h.advance_secs(30);
    }
    for _ in 0..9 {
        h.admit(&Call::get("acme-key-1", "/v1/items?status=closed"));
        h.advance_secs(1);
    }
    for _ in 0..3 {
        h.admit(&Call {
            cost: 10,
            ..Call::get("acme-key-2", "/v1/reports")
        });
        h.advance_secs(1);
    }

    let report = h.json("/v1/usage/report", "acme-key-1").await;
    assert_members(&report, &["endpoints", "repeated"]);

    let endpoints = array(&report, "endpoints");
    for endpoint in endpoints {
        assert_members(endpoint, &["route", "method", "calls", "points"]);
    }
    assert_eq!(endpoints.len(), 2);
    assert_eq!(string(&endpoints[0], "route"), "/v1/items");
    assert_eq!(string(&endpoints[0], "method"), "GET");
    assert_eq!(uint(&endpoints[0], "calls"), 21, "most calls first");
    assert_eq!(uint(&endpoints[0], "points"), 21);
    assert_eq!(string(&endpoints[1], "route"), "/v1/reports");
    assert_eq!(uint(&endpoints[1], "calls"), 3);
    assert_eq!(uint(&endpoints[1], "points"), 30);

    let repeated = array(&report, "repeated");
    assert_eq!(repeated.len(), 1, "9 of the same is below 10: {report}");
    let poll = &repeated[0];
    assert_members(poll, &["method", "path", "count", "mean_interval_s"]);
    assert_eq!(string(poll, "method"), "GET");
    assert_eq!(string(poll, "path"), "/v1/items?status=open");
    assert_eq!(uint(poll, "count"), 12);
    let mean = poll["mean_interval_s"].as_f64().expect("a number");
    assert!((mean - 30.0).abs() < 1e-9, "mean interval {mean}");

    // Once the closed-status poll reaches 10, it is reported too, after the more frequent one.
    h.admit(&Call::get("acme-key-1", "/v1/items?status=closed"));
    let report = h.json("/v1/usage/report", "acme-key-1").await;
    let paths: Vec<(&str, u64)> = array(&report, "repeated")
        .iter()
        .map(|r| (string(r, "path"), uint(r, "count")))
        .collect();
    assert_eq!(
        paths,
        [
            ("/v1/items?status=open", 12),
            ("/v1/items?status=closed", 10)
        ]
    );
}

#[tokio::test]
async fn billing_days_are_in_order_with_today_last() {
    let h = Harness::start().await;
    let at = |secs_before: u64| {
        Timestamp::from_millis(START.as_millis() - i64::try_from(secs_before * 1000).expect("ms"))
    };
    h.set(at(3 * DAY));
    h.admit(&Call::get("acme-key-1", "/v1/items"));
    h.admit(&Call::get("acme-key-1", "/v1/items"));
    h.set(at(DAY));
    h.admit(&Call::get("acme-key-1", "/v1/items"));
    h.reject(&Call::get("acme-key-1", "/v1/items"), "daily");
    // 23:30 UTC on the 13th is 00:30 on the 14th in Amsterdam: today for this org.
    h.set(at(9 * 3600 + 1800));
    h.admit(&Call::get("acme-key-1", "/v1/items"));
    h.set(START);
    for _ in 0..3 {
        h.admit(&Call::get("acme-key-1", "/v1/items"));
    }

    let billing = h.json("/v1/usage/billing?days=4", "acme-key-1").await;
    assert_members(&billing, &["days"]);
    let days = array(&billing, "days");
    for day in days {
        assert_members(day, &["date", "billable"]);
    }
    let got: Vec<(&str, u64)> = days
        .iter()
        .map(|day| (string(day, "date"), uint(day, "billable")))
        .collect();
    assert_eq!(
        got,
        [
            ("2026-03-11", 2),
            ("2026-03-12", 0),
            ("2026-03-13", 2),
            ("2026-03-14", 4),
        ]
    );

    let usage = h.json("/v1/usage", "acme-key-1").await;
    assert_eq!(uint(&usage, "billable_today"), 4);

    let default = h.json("/v1/usage/billing", "acme-key-1").await;
    let days = array(&default, "days");
    assert_eq!(days.len(), 31, "31 days by default");
    assert_eq!(string(&days[0], "date"), "2026-02-12");
    assert_eq!(
        string(&days[30], "date"),
        string(&usage, "date"),
        "today last"
    );
    let dates: Vec<&str> = days.iter().map(|day| string(day, "date")).collect();
    assert!(
        dates.windows(2).all(|pair| pair[0] < pair[1]),
        "oldest first: {dates:?}"
    );

    let one = h.json("/v1/usage/billing?days=1", "acme-key-1").await;
    assert_eq!(
        array(&one, "days"),
        [serde_json::json!({"date": "2026-03-14", "billable": 4})]
    );

    for bad in ["0", "32", "-1", "seven", "1.5"] {
        let response = h
            .get(
                &format!("/v1/usage/billing?days={bad}"),
                Some("Bearer acme-key-1"),
            )
            .await;
        assert_eq!(response.status(), 400, "days={bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("problem JSON");
        assert_eq!(uint(&problem, "status"), 400);
        assert!(string(&problem, "detail").contains("1 to 31"), "{problem}");
    }
}

#[tokio::test]
async fn every_route_answers_401_without_or_with_a_bad_key() {
    let h = Harness::start().await;
    for route in ROUTES {
        for authorization in [
            None,
            Some("Bearer not-a-key"),
            Some("Basic YWNtZTprZXk="),
            Some("Bearer"),
            Some("acme-key-1"),
        ] {
            let response = h.get(route, authorization).await;
            let case = format!("GET {route} with {authorization:?}");
            assert_eq!(response.status(), 401, "{case}");
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .expect("ascii")
                .to_owned();
            if authorization.is_none() {
                assert_eq!(challenge, "Bearer", "{case}");
            } else {
                assert!(challenge.starts_with("Bearer"), "{case}: {challenge}");
            }
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{case}"
            );
            assert!(
                response.headers().get("x-ratelimit-limit").is_none(),
                "{case}"
            );
            let problem: Value = response.json().await.expect("problem JSON");
            for member in ["type", "title", "detail"] {
                string(&problem, member);
            }
            assert_eq!(uint(&problem, "status"), 401, "{case}");
        }
    }
}

#[tokio::test]
async fn reading_usage_is_never_billed_or_counted() {
    let h = Harness::start().await;
    h.admit(&Call::get("acme-key-1", "/v1/items"));
    for _ in 0..5 {
        for route in ROUTES {
            h.json(route, "acme-key-1").await;
        }
    }
    let usage = h.json("/v1/usage", "acme-key-1").await;
    assert_eq!(uint(&usage, "calls_today"), 1);
    assert_eq!(uint(&usage, "billable_today"), 1);
    let daily = &array(&usage, "limits")[1];
    assert_eq!(uint(daily, "remaining"), 2499);
    let calls = h.json("/v1/usage/calls", "acme-key-1").await;
    assert_eq!(array(&calls, "calls").len(), 1);
}

#[tokio::test]
async fn the_page_and_its_assets_come_from_this_server_only() {
    let h = Harness::start().await;
    let page = h.get("/usage", None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    for needle in [
        "API Calls Today",
        "id=\"calls-today\"",
        "id=\"api-key\"",
        "<label for=\"api-key\">",
        "id=\"log-rows\"",
        "View logs",
        "Billable calls per day",
        "Repeated requests",
        "webhooks",
    ] {
        assert!(html.contains(needle), "the page has {needle}");
    }
    for (asset, kind) in [
        ("/usage/page.js", "text/javascript; charset=utf-8"),
        ("/usage/page.css", "text/css; charset=utf-8"),
    ] {
        let response = h.get(asset, None).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], kind, "{asset}");
        let text = response.text().await.expect("text");
        let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{asset} loads nothing from another host"
        );
    }
    let script = h
        .get("/usage/page.js", None)
        .await
        .text()
        .await
        .expect("js");
    assert!(script.contains("sessionStorage"), "the key is kept per tab");
    assert!(script.contains("Authorization"), "and sent as a header");
}
