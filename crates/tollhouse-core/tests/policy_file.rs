//! Loading policy files: the example of SPEC section 5, and one test per kind of mistake, each
//! checking the line the error points at, the place it names and the fix it suggests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tollhouse_core::{
    Dimension, Environment, KeyDigest, LimitZone, OnStoreError, Policy, PolicyError, ResetFormat,
    Timestamp, Treatment, Window,
};

/// The example policy file of SPEC section 5, verbatim.
const SPEC_EXAMPLE: &str = r#"[server]
time_zone = "UTC"            # zone of limits with zone = "server"
sandbox_divisor = 2
reset_format = "epoch"       # epoch | http-date | delta
legacy_headers = true        # X-RateLimit-*
ietf_headers = true          # RateLimit-Policy / RateLimit
on_store_error = "allow"     # allow | deny

[plans.build]
concurrency = 3              # optional; in-flight requests per org
concurrency_wait_ms = 0      # 0: reject at once

[[plans.build.limits]]
name = "points"
dimension = "points"         # requests | points | latency_ms
tiers = [{ window = "minute", capacity = 100 }]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
zone = "org"                 # org (default) | server | an IANA name
tiers = [{ window = "day", capacity = 2500 }]

[[plans.data.limits]]
name = "count"
dimension = "requests"
zone = "server"
tiers = [
  { window = "minute", capacity = 100 },
  { window = "hour", capacity = 2600 },
  { window = "day", capacity = 1150 },
]

[[orgs]]
id = "acme"
plan = "build"
time_zone = "Europe/Amsterdam"
environment = "production"   # production | sandbox
keys = ["acme-key-1", "acme-key-2"]
overrides = [{ limit = "daily", capacity = 5000, until = "2026-12-31T00:00:00Z" }]

[[routes]]
match = "GET /v1/reports"    # METHOD /path, axum-style {param} segments; "*" for any method
cost = 10

[[routes]]
match = "GET /v1/files/{id}"
exempt = true

[[routes]]
match = "POST /v1/connectors/{name}"
exempt = true
billable = false
"#;

fn load(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_toml_str(text, Path::new("policy.toml"))
}

/// The line, column and message of the error loading `text` gives.
fn mistake(text: &str) -> (usize, usize, String) {
    match load(text).expect_err("the file has a mistake") {
        PolicyError::File {
            path,
            line,
            column,
            message,
        } => {
            assert_eq!(path, PathBuf::from("policy.toml"));
            (line, column, message)
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

/// Asserts the error points at `line` and its message starts with `place` and mentions `fix`.
#[track_caller]
fn assert_mistake(text: &str, line: usize, place: &str, fix: &str) -> (usize, String) {
    let (found_line, column, message) = mistake(text);
    assert_eq!(found_line, line, "wrong line for: {message}");
    assert!(
        message.starts_with(&format!("{place}: ")),
        "message should name {place}: {message}"
    );
    assert!(
        message.contains(fix),
        "message should say {fix:?}: {message}"
    );
    (column, message)
}

/// Two plans every mistake below is made against.
const PLANS: &str = r#"[plans.build]
concurrency = 3

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 100 }]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2500 }]
"#;

#[test]
fn the_spec_example_loads() {
    let policy = load(SPEC_EXAMPLE).expect("the example of SPEC section 5 is valid");

    let server = policy.server();
    assert_eq!(server.time_zone, chrono_tz::UTC);
    assert_eq!(server.sandbox_divisor, 2);
    assert_eq!(server.reset_format, ResetFormat::Epoch);
    assert!(server.legacy_headers);
    assert!(server.ietf_headers);
    assert_eq!(server.on_store_error, OnStoreError::Allow);
    assert_eq!(server.calls_kept, 100, "calls_kept keeps its default");

    let names: Vec<&str> = policy.plans().iter().map(|plan| plan.name()).collect();
    assert_eq!(names, ["build", "data"]);

    let build = policy.plan("build").expect("plan build");
    let concurrency = build.concurrency().expect("build has a concurrency limit");
    assert_eq!(concurrency.max(), 3);
    assert_eq!(concurrency.wait(), Duration::ZERO);
    assert!(!build.shadow());
    assert_eq!(build.limits().len(), 2);
    let points = &build.limits()[0];
    assert_eq!(points.name(), "points");
    assert_eq!(points.dimension(), Dimension::Points);
    assert_eq!(points.zone(), LimitZone::Org);
    assert_eq!(points.tiers().len(), 1);
    assert_eq!(points.tiers()[0].window(), Window::Minute);
    assert_eq!(points.tiers()[0].capacity(), 100);
    let daily = &build.limits()[1];
    assert_eq!(daily.name(), "daily");
    assert_eq!(daily.dimension(), Dimension::Requests);
    assert_eq!(daily.zone(), LimitZone::Org);
    assert_eq!(daily.tiers()[0].window(), Window::Day);
    assert_eq!(daily.tiers()[0].capacity(), 2500);

    let data = policy.plan("data").expect("plan data");
    assert!(data.concurrency().is_none());
    let count = data.limit("count").expect("limit count");
    assert_eq!(count.dimension(), Dimension::Requests);
    assert_eq!(count.zone(), LimitZone::Server);
    let tiers: Vec<(Window, u64)> = count
        .tiers()
        .iter()
        .map(|tier| (tier.window(), tier.capacity()))
        .collect();
    assert_eq!(
        tiers,
        [
            (Window::Minute, 100),
            (Window::Hour, 2600),
            (Window::Day, 1150)
        ]
    );

    let acme = policy
        .org_by_key("acme-key-1")
        .expect("acme-key-1 is acme's");
    assert_eq!(acme.id().as_str(), "acme");
    assert_eq!(acme.plan(), "build");
    assert_eq!(acme.time_zone(), chrono_tz::Europe::Amsterdam);
    assert_eq!(acme.environment(), Environment::Production);
    assert_eq!(
        policy.org_by_key("acme-key-2").map(|org| org.id().as_str()),
        Some("acme")
    );
    assert!(policy.org_by_key("acme-key-3").is_none());
    assert_eq!(acme.concurrency().map(|c| c.max()), Some(3));
    // Limits with zone = "org" follow the org's clock.
    assert_eq!(acme.limits()[0].zone(), chrono_tz::Europe::Amsterdam);

    // The override raises daily to 5000 until 2026-12-31T00:00:00Z, then 2500 applies again.
    let until = Timestamp::from_secs(1_798_675_200);
    let daily = &acme.limits()[acme.limit_index("daily").expect("daily")];
    assert_eq!(daily.override_until(), Some(until));
    assert_eq!(daily.capacity(0, Timestamp::from_secs(1_798_675_199)), 5000);
    assert_eq!(daily.capacity(0, until), 2500);
    assert_eq!(acme.limits()[0].override_until(), None);
    assert_eq!(acme.limits()[0].capacity(0, until), 100);

    let routes = policy.routes();
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0].method(), Some("GET"));
    assert_eq!(routes[0].pattern().as_str(), "/v1/reports");
    assert_eq!(routes[0].treatment(), Treatment::Cost(10));
    assert_eq!(routes[1].treatment(), Treatment::Exempt { billable: true });
    assert_eq!(routes[2].treatment(), Treatment::Exempt { billable: false });
    assert_eq!(
        policy.treatment("GET", "/v1/files/42").map(|(_, t)| t),
        Some(Treatment::Exempt { billable: true })
    );
    assert_eq!(
        policy
            .treatment("POST", "/v1/connectors/forms")
            .map(|(_, t)| t),
        Some(Treatment::Exempt { billable: false })
    );
    assert!(policy.treatment("GET", "/v1/items").is_none());
    assert!(policy.admin_token().is_none());
}

#[test]
fn the_spec_example_loads_from_a_file() {
    let path = std::env::temp_dir().join(format!("tollhouse-policy-{}.toml", std::process::id()));
    std::fs::write(&path, SPEC_EXAMPLE).expect("write a temporary policy file");
    let loaded = Policy::from_toml_file(&path);
    let broken = SPEC_EXAMPLE.replace("capacity = 2600", "capacity = 0");
    std::fs::write(&path, broken).expect("write a temporary policy file");
    let failed = Policy::from_toml_file(&path);
    std::fs::remove_file(&path).expect("remove the temporary policy file");

    let policy = loaded.expect("the example loads from a file");
    assert_eq!(policy.plans().len(), 2);
    let error = failed.expect_err("capacity 0");
    assert!(
        error.to_string().starts_with(&format!(
            "{}:30:33: plans.data.limits[0].tiers[1].capacity:",
            path.display()
        )),
        "the error names the file and line: {error}"
    );
}

#[test]
fn the_spec_example_with_a_zero_capacity_fails_as_documented() {
    let broken = SPEC_EXAMPLE.replace("capacity = 2500", "capacity = 0");
    let error = load(&broken).expect_err("capacity 0");
    assert_eq!(
        error.to_string(),
        "policy.toml:22:39: plans.build.limits[1].tiers[0].capacity: a capacity of 0 admits nothing; \
         set a capacity of at least 1, or remove the tier"
    );
}

#[test]
fn plans_keep_the_order_of_the_file() {
    let text = r#"[[plans.zeta.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 10 }]

[plans.alpha]
shadow = true

[plans.mid]
concurrency = 1
"#;
    let policy = load(text).expect("valid");
    let names: Vec<&str> = policy.plans().iter().map(|plan| plan.name()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert!(policy.plan("alpha").expect("alpha").shadow());
}

#[test]
fn server_settings_and_admin_token_are_read() {
    let text = r#"[server]
time_zone = "Asia/Tokyo"
sandbox_divisor = 4
reset_format = "http-date"
legacy_headers = false
ietf_headers = true
on_store_error = "deny"
calls_kept = 250

[admin]
token = "s3cret"
"#;
    let policy = load(&format!("{text}\n{PLANS}")).expect("valid");
    let server = policy.server();
    assert_eq!(server.time_zone, chrono_tz::Asia::Tokyo);
    assert_eq!(server.sandbox_divisor, 4);
    assert_eq!(server.reset_format, ResetFormat::HttpDate);
    assert!(!server.legacy_headers);
    assert!(server.ietf_headers);
    assert_eq!(server.on_store_error, OnStoreError::Deny);
    assert_eq!(server.calls_kept, 250);
    assert_eq!(policy.admin_token(), Some(&KeyDigest::of("s3cret")));
    assert_eq!(
        load(&format!("[server]\nreset_format = \"delta\"\n{PLANS}"))
            .expect("valid")
            .server()
            .reset_format,
        ResetFormat::Delta
    );
}

#[test]
fn a_file_without_plans_is_refused() {
    // Empty, or cut short while it was being written (a reload then keeps the running policy).
    for text in ["", "  \n", "[server]\ntime_zone = \"UTC\"\n"] {
        assert_mistake(
            text,
            1,
            "the policy file",
            "define at least one plan ([plans.NAME] with its [[plans.NAME.limits]])",
        );
    }
    let (_, _, message) = mistake("");
    assert!(message.contains("defines no plans"), "{message}");
}

#[test]
fn overrides_accept_capacities_scale_and_a_toml_datetime() {
    let text = format!(
        r#"{PLANS}
[[plans.data.limits]]
name = "count"
dimension = "requests"
tiers = [{{ window = "minute", capacity = 100 }}, {{ window = "hour", capacity = 2600 }}]

[[orgs]]
id = "acme"
plan = "build"
environment = "sandbox"
overrides = [{{ limit = "points", scale = 3, until = 2026-12-31T01:00:00+01:00 }}]

[[orgs]]
id = "globex"
plan = "data"
overrides = [{{ limit = "count", capacities = [10, 20] }}]
"#
    );
    let policy = load(&text).expect("valid");
    let now = Timestamp::from_secs(0);
    let acme = policy.org("acme").expect("acme");
    // Sandbox halves 300 (100 scaled by 3); the TOML datetime is the same instant as midnight UTC.
    assert_eq!(acme.limits()[0].capacity(0, now), 150);
    assert_eq!(
        acme.limits()[0].override_until(),
        Some(Timestamp::from_secs(1_798_675_200))
    );
    let globex = policy.org("globex").expect("globex");
    assert_eq!(globex.limits()[0].capacity(0, now), 10);
    assert_eq!(globex.limits()[0].capacity(1, now), 20);
    assert_eq!(globex.limits()[0].override_until(), None);
}

// ----- one test per mistake ------------------------------------------------------------------

#[test]
fn toml_syntax_error() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2500 }
"#;
    let (_, message) = assert_mistake(
        text,
        4,
        "plans.build.limits[0].tiers",
        "correct the syntax at this line and column",
    );
    assert!(message.contains("not valid TOML"), "{message}");
}

#[test]
fn toml_syntax_error_names_the_table_it_follows() {
    let text = r#"[server]
time_zone = "UTC"

[[plans.build.limits]]
name = "daily"
dimension "requests"
"#;
    let (line, _, message) = mistake(text);
    assert_eq!(line, 6, "{message}");
    assert!(message.contains("not valid TOML"), "{message}");
    assert!(message.contains("correct the syntax"), "{message}");
}

#[test]
fn unknown_key() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capcity = 2500 }]
"#;
    let (column, message) = assert_mistake(
        text,
        4,
        "plans.build.limits[0].tiers[0].capcity",
        "remove it, or write one of the keys allowed here: `window` or `capacity`",
    );
    assert_eq!(column, 28);
    assert!(message.contains("unknown key `capcity`"), "{message}");
}

#[test]
fn unknown_top_level_section() {
    let text = "[server]\nsandbox_divisor = 2\n\n[plan.build]\nconcurrency = 3\n";
    assert_mistake(
        text,
        4,
        "plan",
        "remove it, or write one of the keys allowed here",
    );
}

#[test]
fn wrong_type() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = "lots" }]
"#;
    let (column, message) = assert_mistake(
        text,
        4,
        "plans.build.limits[0].tiers[0].capacity",
        "write an integer here",
    );
    assert_eq!(column, 39);
    assert!(message.contains("found the string \"lots\""), "{message}");
}

#[test]
fn missing_required_key() {
    let text = r#"[[plans.build.limits]]
name = "daily"
tiers = [{ window = "day", capacity = 2500 }]
"#;
    assert_mistake(text, 1, "plans.build.limits[0]", "add `dimension`");
}

#[test]
fn unknown_zone() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
zone = "Mars/Olympus"
tiers = [{ window = "day", capacity = 2500 }]
"#;
    let (_, message) = assert_mistake(
        text,
        4,
        "plans.build.limits[0].zone",
        "use \"org\" (the org's zone), \"server\" (the server's) or an IANA zone name such as \"Europe/Amsterdam\"",
    );
    assert!(
        message.contains("\"Mars/Olympus\" is neither \"org\", \"server\" nor a known time zone"),
        "{message}"
    );
}

#[test]
fn unknown_org_time_zone() {
    let text = format!(
        "{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\ntime_zone = \"Europe/Amsterdm\"\n"
    );
    assert_mistake(&text, 17, "orgs[0].time_zone", "use an IANA zone name");
}

#[test]
fn unknown_server_time_zone() {
    assert_mistake(
        "[server]\n\ntime_zone = \"Nowhere\"\n",
        3,
        "server.time_zone",
        "use an IANA zone name",
    );
}

#[test]
fn unknown_window() {
    let text = r#"[[plans.build.limits]]
name = "weekly"
dimension = "requests"
tiers = [
  { window = "day", capacity = 2500 },
  { window = "fortnight", capacity = 10000 },
]
"#;
    let (column, message) = assert_mistake(
        text,
        6,
        "plans.build.limits[0].tiers[1].window",
        "allowed: second, minute, hour, day, week, month, year",
    );
    assert_eq!(column, 14);
    assert!(
        message.contains("window \"fortnight\" is not allowed"),
        "{message}"
    );
}

#[test]
fn a_multiple_not_allowed_lists_those_that_are() {
    let text = r#"[[plans.build.limits]]
name = "burst"
dimension = "requests"
tiers = [
  { window = "7 minutes", capacity = 100 },
]
"#;
    assert_mistake(
        text,
        5,
        "plans.build.limits[0].tiers[0].window",
        "window \"7 minutes\" is not allowed; allowed: 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 minutes",
    );
}

#[test]
fn new_windows_load_as_tiers_with_spill_over() {
    let text = r#"[[plans.build.limits]]
name = "count"
dimension = "requests"
tiers = [
  { window = "second", capacity = 10 },
  { window = "5 minutes", capacity = 1000 },
  { window = "6 hours", capacity = 20000 },
  { window = "week", capacity = 100000 },
  { window = "year", capacity = 1000000 },
]
"#;
    let policy = Policy::from_toml_str(text, "windows.toml".as_ref()).expect("valid");
    let limit = policy.plans()[0].limit("count").expect("defined");
    let windows: Vec<&str> = limit.tiers().iter().map(|t| t.window().as_str()).collect();
    assert_eq!(windows, ["second", "5 minutes", "6 hours", "week", "year"]);
    assert_eq!(limit.item_name(limit.tiers()[1].window()), "count.5minutes");
}

#[test]
fn at_most_eight_tiers() {
    let windows = [
        "second",
        "minute",
        "5 minutes",
        "hour",
        "6 hours",
        "day",
        "week",
        "month",
        "year",
    ];
    let tiers: Vec<String> = windows
        .iter()
        .map(|window| format!("  {{ window = \"{window}\", capacity = 10 }},"))
        .collect();
    let text = format!(
        "[[plans.build.limits]]\nname = \"count\"\ndimension = \"requests\"\ntiers = [\n{}\n]\n",
        tiers.join("\n")
    );
    let error = Policy::from_toml_str(&text, "nine.toml".as_ref()).expect_err("nine tiers");
    assert!(error.to_string().contains("at most 8"), "{error}");
    let eight = text.replace("  { window = \"year\", capacity = 10 },\n", "");
    Policy::from_toml_str(&eight, "eight.toml".as_ref()).expect("eight tiers load");
}

#[test]
fn unknown_dimension() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "bytes"
tiers = [{ window = "day", capacity = 2500 }]
"#;
    assert_mistake(
        text,
        3,
        "plans.build.limits[0].dimension",
        "use \"requests\", \"points\" or \"latency_ms\"",
    );
}

#[test]
fn unknown_plan() {
    let text = format!("{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"enterprise\"\n");
    let (column, message) = assert_mistake(
        &text,
        16,
        "orgs[0].plan",
        "use one of the defined plans (build) or define [plans.enterprise]",
    );
    assert_eq!(column, 8);
    assert!(
        message.contains("\"enterprise\", which is not defined"),
        "{message}"
    );
}

#[test]
fn capacity_zero() {
    let text = r#"[plans.build]
concurrency = 3

[[plans.build.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 100 }]

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [
  { window = "hour", capacity = 500 },
  { window = "day", capacity = 0 },
]
"#;
    let (column, _) = assert_mistake(
        text,
        14,
        "plans.build.limits[1].tiers[1].capacity",
        "set a capacity of at least 1, or remove the tier",
    );
    assert_eq!(column, 32);
}

#[test]
fn capacity_beyond_64_bits() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 18446744073709551615 }]
"#;
    let (_, message) = assert_mistake(
        text,
        4,
        "plans.build.limits[0].tiers[0].capacity",
        "write a smaller number (a capacity is at most 1125899906842624)",
    );
    assert!(
        message.contains("18446744073709551615 is too large"),
        "{message}"
    );
}

#[test]
fn an_override_scaled_past_the_largest_capacity() {
    let text = format!(
        "{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\noverrides = [{{ limit = \"daily\", scale = 1e300 }}]\n"
    );
    let (_, message) = assert_mistake(
        &text,
        17,
        "orgs[0].overrides[0].scale",
        "use a scale of at most",
    );
    assert!(
        message.contains("scale 1e300 makes a capacity of 2500 more than tollhouse counts"),
        "{message}"
    );
}

#[test]
fn negative_capacity() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = -5 }]
"#;
    let (_, message) = assert_mistake(
        text,
        4,
        "plans.build.limits[0].tiers[0].capacity",
        "set a capacity of at least 1",
    );
    assert!(message.contains("-5 is negative"), "{message}");
}

#[test]
fn cost_zero() {
    let text = format!("{PLANS}\n[[routes]]\nmatch = \"GET /v1/reports\"\ncost = 0\n");
    assert_mistake(
        &text,
        16,
        "routes[0].cost",
        "set a cost of at least 1, or mark the route exempt = true",
    );
}

#[test]
fn tiers_not_ordered_short_to_long() {
    let text = r#"[[plans.data.limits]]
name = "count"
dimension = "requests"
tiers = [
  { window = "hour", capacity = 2600 },
  { window = "minute", capacity = 100 },
]
"#;
    let (_, message) = assert_mistake(
        text,
        6,
        "plans.data.limits[0].tiers[1]",
        "order the tiers from the shortest window to the longest",
    );
    assert!(
        message.contains("\"minute\" comes after \"hour\""),
        "{message}"
    );
}

#[test]
fn duplicate_limit_names() {
    let text = r#"[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 2500 }]

[[plans.build.limits]]
name = "daily"
dimension = "points"
tiers = [{ window = "day", capacity = 100 }]
"#;
    let (_, message) = assert_mistake(
        text,
        7,
        "plans.build.limits[1]",
        "give every limit of a plan its own name",
    );
    assert!(message.contains("two limits named \"daily\""), "{message}");
}

#[test]
fn a_limit_named_concurrency() {
    let text = r#"[plans.build]
concurrency = 3

[[plans.build.limits]]
name = "concurrency"
dimension = "requests"
tiers = [{ window = "minute", capacity = 10 }]
"#;
    let (_, message) = assert_mistake(
        text,
        5,
        "plans.build.limits[0].name",
        "give the limit another name",
    );
    assert!(message.contains("\"concurrency\" is reserved"), "{message}");
}

#[test]
fn a_limit_named_like_another_limits_tier() {
    let text = r#"[[plans.build.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 10 }, { window = "hour", capacity = 100 }]

[[plans.build.limits]]
name = "count.hour"
dimension = "points"
tiers = [{ window = "day", capacity = 100 }]
"#;
    let (_, message) = assert_mistake(
        text,
        7,
        "plans.build.limits[1]",
        "rename one of the two limits",
    );
    assert!(
        message.contains(
            "limit \"count.hour\" and the hour tier of limit \"count\" both go by \"count.hour\""
        ),
        "{message}"
    );
}

#[test]
fn duplicate_org_ids() {
    let text = format!(
        "{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\n\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\n"
    );
    let (_, message) = assert_mistake(&text, 19, "orgs[1].id", "give every org its own id");
    assert!(
        message.contains("org \"acme\" is defined twice"),
        "{message}"
    );
}

#[test]
fn key_shared_by_two_orgs() {
    let text = format!(
        r#"{PLANS}
[[orgs]]
id = "acme"
plan = "build"
keys = ["key-acme-01", "key-shared-02"]

[[orgs]]
id = "globex"
plan = "build"
keys = ["key-globex-03",
  "key-shared-02"]
"#
    );
    let (_, message) = assert_mistake(
        &text,
        23,
        "orgs[1].keys[1]",
        "give every org keys of its own",
    );
    assert!(
        message.contains("already belongs to org \"acme\""),
        "{message}"
    );
    assert!(
        !message.contains("key-shared-02"),
        "the key itself is a secret: {message}"
    );
}

#[test]
fn override_on_an_unknown_limit() {
    let text = format!(
        r#"{PLANS}
[[orgs]]
id = "acme"
plan = "build"
overrides = [
  {{ limit = "daily", capacity = 5000 }},
  {{ limit = "weekly", capacity = 5000 }},
]
"#
    );
    let (_, message) = assert_mistake(
        &text,
        19,
        "orgs[0].overrides[1].limit",
        "name one of its limits: points, daily",
    );
    assert!(
        message.contains("plan \"build\" has no limit \"weekly\""),
        "{message}"
    );
}

#[test]
fn override_with_one_capacity_on_a_tiered_limit() {
    let text = r#"[[plans.data.limits]]
name = "count"
dimension = "requests"
tiers = [{ window = "minute", capacity = 100 }, { window = "hour", capacity = 2600 }]

[[orgs]]
id = "acme"
plan = "data"
overrides = [{ limit = "count", capacity = 5 }]
"#;
    assert_mistake(
        text,
        9,
        "orgs[0].overrides[0].capacity",
        "write capacities = [...] with 2 numbers",
    );
}

#[test]
fn override_until_that_is_not_a_date() {
    let text = format!(
        "{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\noverrides = [{{ limit = \"daily\", capacity = 5000, until = \"end of year\" }}]\n"
    );
    assert_mistake(
        &text,
        17,
        "orgs[0].overrides[0].until",
        "write a date-time with a UTC offset, such as until = \"2026-12-31T00:00:00Z\"",
    );
}

#[test]
fn bad_match_pattern() {
    let text = format!("{PLANS}\n[[routes]]\nmatch = \"GET v1/reports\"\ncost = 10\n");
    let (_, message) = assert_mistake(
        &text,
        15,
        "routes[0].match",
        "write the path as axum does, such as \"/v1/files/{id}\"",
    );
    assert!(message.contains("does not start with '/'"), "{message}");
    let no_method = format!("{PLANS}\n[[routes]]\ncost = 10\nmatch = \"/v1/reports\"\n");
    assert_mistake(
        &no_method,
        16,
        "routes[0].match",
        "write the method, a space and the path",
    );
}

#[test]
fn cost_together_with_exempt() {
    let text = format!(
        "{PLANS}\n[[routes]]\nmatch = \"GET /v1/items\"\n\n[[routes]]\nmatch = \"GET /v1/files/{{id}}\"\ncost = 5\nexempt = true\n"
    );
    let (_, message) = assert_mistake(
        &text,
        20,
        "routes[1].exempt",
        "remove cost (exempt routes are never charged), or remove exempt = true",
    );
    assert!(
        message.contains("cannot both cost points and be exempt"),
        "{message}"
    );
}

#[test]
fn a_route_that_never_applies() {
    // The same method and path shape (parameter names aside).
    let twice = "[[routes]]\nmatch = \"GET /v1/files/{id}\"\nexempt = true\n\n[[routes]]\nmatch = \"GET /v1/files/{name}\"\ncost = 3\n";
    let (_, message) = assert_mistake(
        twice,
        6,
        "routes[1].match",
        "remove one of them, or put the narrower rule first: a path before a pattern that covers it",
    );
    assert!(
        message.contains(
            "\"GET /v1/files/{name}\" never applies: routes[0] (\"GET /v1/files/{id}\") matches the same requests first"
        ),
        "{message}"
    );
    // A rule for any method before one for GET on the same path.
    let shadowed = "[[routes]]\nmatch = \"* /v1/reports\"\ncost = 5\n\n[[routes]]\nmatch = \"get /v1/reports\"\ncost = 10\n";
    assert_mistake(shadowed, 6, "routes[1].match", "one method before `*`");
    // GET covers HEAD (axum answers HEAD with the GET handler), so a HEAD rule goes first.
    let head = "[[routes]]\nmatch = \"GET /v1/reports\"\ncost = 10\n\n[[routes]]\nmatch = \"HEAD /v1/reports\"\ncost = 1\n";
    assert_mistake(head, 6, "routes[1].match", "HEAD before GET");
    // A pattern that covers a later path: the path never gets its price.
    let wide = "[[routes]]\nmatch = \"GET /v1/{*rest}\"\ncost = 2\n\n[[routes]]\nmatch = \"GET /v1/reports\"\ncost = 10\n";
    let (_, message) = assert_mistake(
        wide,
        6,
        "routes[1].match",
        "a path before a pattern that covers it",
    );
    assert!(
        message.contains("routes[0] (\"GET /v1/{*rest}\") matches the same requests first"),
        "{message}"
    );
    // The other way round, other methods, other shapes: each rule applies somewhere.
    let fine = "[[routes]]\nmatch = \"HEAD /v1/reports\"\ncost = 1\n\n[[routes]]\nmatch = \"GET /v1/reports\"\ncost = 10\n\n[[routes]]\nmatch = \"* /v1/reports\"\ncost = 5\n\n[[routes]]\nmatch = \"POST /v1/files/{id}\"\ncost = 2\n\n[[routes]]\nmatch = \"POST /v1/files/{id}/meta\"\ncost = 2\n\n[[routes]]\nmatch = \"POST /v1/files/{*rest}\"\ncost = 2\n";
    let policy = load(&format!("{PLANS}\n{fine}")).expect("every rule applies to some request");
    assert_eq!(policy.routes().len(), 6);
}

#[test]
fn billable_without_exempt() {
    let text = "[[routes]]\nmatch = \"GET /v1/items\"\ncost = 2\nbillable = false\n";
    assert_mistake(
        text,
        4,
        "routes[0].billable",
        "add exempt = true, or remove billable",
    );
}

#[test]
fn concurrency_zero() {
    let text = "[plans.build]\nconcurrency = 0\n";
    assert_mistake(
        text,
        2,
        "plans.build.concurrency",
        "set concurrency to at least 1",
    );
    let (_, message) = assert_mistake(
        "[plans.build]\nconcurrency = 99999999999\n",
        2,
        "plans.build.concurrency",
        "set concurrency to a number from 1 to 4294967295",
    );
    assert!(message.contains("99999999999 is too large"), "{message}");
}

#[test]
fn sandbox_divisor_zero() {
    let text = "[server]\nsandbox_divisor = 0\n";
    assert_mistake(
        text,
        2,
        "server.sandbox_divisor",
        "set sandbox_divisor to a number from 1 (sandboxes get full capacity) to 4294967295",
    );
}

#[test]
fn unknown_reset_format() {
    let text = "[server]\nreset_format = \"iso\"\n";
    assert_mistake(
        text,
        2,
        "server.reset_format",
        "use \"epoch\", \"http-date\" or \"delta\"",
    );
}

#[test]
fn unknown_environment() {
    let text =
        format!("{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\nenvironment = \"staging\"\n");
    assert_mistake(
        &text,
        17,
        "orgs[0].environment",
        "use \"production\" or \"sandbox\"",
    );
}

#[test]
fn missing_file() {
    let path = std::env::temp_dir().join(format!(
        "tollhouse-no-such-policy-{}.toml",
        std::process::id()
    ));
    let error = Policy::from_toml_file(&path).expect_err("no such file");
    match &error {
        PolicyError::File {
            path: named,
            line,
            message,
            ..
        } => {
            assert_eq!(named, &path);
            assert_eq!(*line, 0);
            assert!(message.contains("could not be read"), "{message}");
            assert!(
                message.contains("check that the path is right"),
                "{message}"
            );
        }
        other => panic!("expected a file error, got {other:?}"),
    }
    assert!(
        error.to_string().starts_with(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn keys_too_short_to_be_safe_or_that_no_header_can_carry() {
    for (key, fix) in [
        ("short-key", "at least 10 characters"),
        ("has a space", "no spaces"),
        ("tab\\tin-the-key", "no spaces"),
        ("ünïcödé-key-1", "visible ASCII"),
    ] {
        let text =
            format!("{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\nkeys = [\"{key}\"]\n");
        let (_, message) = assert_mistake(&text, 17, "orgs[0].keys[0]", fix);
        assert!(
            !message.contains(key),
            "the key itself is a secret: {message}"
        );
    }
    // The shortest key the examples use still loads.
    let text =
        format!("{PLANS}\n[[orgs]]\nid = \"acme\"\nplan = \"build\"\nkeys = [\"acme-key-1\"]\n");
    assert!(Policy::from_toml_str(&text, "policy.toml".as_ref()).is_ok());
}

#[test]
fn bounds_on_what_a_file_may_ask_for() {
    let wait = PLANS.replace(
        "concurrency = 3",
        "concurrency = 3\nconcurrency_wait_ms = 600000",
    );
    assert_mistake(&wait, 2, "plans.build.concurrency_wait_ms", "at most 60000");
    let calls = format!("[server]\ncalls_kept = 5000\n{PLANS}");
    assert_mistake(&calls, 2, "server.calls_kept", "at most 1000");
    let query = format!("[server]\nusage_query = \"hide\"\n{PLANS}");
    assert_mistake(&query, 2, "server.usage_query", "\"drop\"");
    let redact = format!("[server]\nredact_query = [\"token=\"]\n{PLANS}");
    assert_mistake(&redact, 2, "server.redact_query[0]", "before '='");
}

#[test]
fn the_readmes_policy_file_example_loads() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## The policy file")
        .nth(1)
        .expect("the README has a policy file section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block");
    let policy = Policy::from_toml_str(block, "README.md".as_ref())
        .unwrap_or_else(|error| panic!("{error}"));
    let realtime = policy.plans().iter().find(|plan| plan.name() == "realtime");
    let rate = realtime
        .and_then(|plan| plan.limit("rate"))
        .and_then(|limit| limit.rate());
    assert_eq!(
        rate.map(|rate| (rate.amount(), rate.burst())),
        Some((10, 20))
    );
}
