//! The demo binary: refuses a bad policy file with the loader's message, and serves the shipped
//! policy when given no file.

use std::path::PathBuf;
use std::process::Command;

mod common;

use common::{DEMO, Demo, temp_policy};

#[test]
fn refuses_a_bad_policy_file_naming_file_line_and_column() {
    let text = r#"
[plans.build]
concurrency = 3

[[plans.build.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 0 }]
"#;
    let path = temp_policy("zero-capacity.toml", text);
    let output = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("the demo runs");
    assert!(
        !output.status.success(),
        "a bad file must not start the server"
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "nothing served: {:?}",
        output.stdout
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let place = format!("{}:8:", path.display());
    assert!(
        stderr.contains(&place),
        "the message names the file and line: {stderr}"
    );
    assert!(stderr.contains("capacity"), "{stderr}");
    assert!(
        stderr.contains("at least 1"),
        "the message says the fix: {stderr}"
    );
}

#[test]
fn refuses_a_missing_policy_file_and_a_syntax_error() {
    let output = Command::new(DEMO)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/policy.toml",
        ])
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/policy.toml"));

    let path = temp_policy("syntax.toml", "[server\ntime_zone = \"UTC\"\n");
    let output = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:1:", path.display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn serves_the_shipped_policy_with_headers_and_exemptions() {
    let demo = Demo::start(&[]);
    let base = demo.base.clone();
    let client = reqwest::Client::new();

    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(health.headers().get("x-ratelimit-limit").is_none());

    let anonymous = client
        .get(format!("{base}/v1/items"))
        .send()
        .await
        .expect("items");
    assert_eq!(anonymous.status(), 401);

    let report = client
        .get(format!("{base}/v1/reports"))
        .bearer_auth("acme-key-1")
        .send()
        .await
        .expect("reports");
    assert_eq!(report.status(), 200);
    assert_eq!(report.headers()["x-ratelimit-limit"], "100");
    assert_eq!(report.headers()["x-ratelimit-remaining"], "90");
    assert!(report.headers().contains_key("ratelimit-policy"));

    let search = client
        .get(format!("{base}/v1/search?rows=4500"))
        .bearer_auth("acme-key-2")
        .send()
        .await
        .expect("search");
    assert_eq!(search.status(), 200);
    let body: serde_json::Value = search.json().await.expect("JSON");
    assert_eq!(body["cost"], 5);

    let file = client
        .get(format!("{base}/v1/files/7"))
        .bearer_auth("acme-key-1")
        .send()
        .await
        .expect("file");
    assert_eq!(file.status(), 200);
    assert!(file.headers().get("x-ratelimit-limit").is_none());
    assert_eq!(file.bytes().await.expect("bytes").len(), 64 * 1024);

    let connector = client
        .post(format!("{base}/v1/connectors/forms"))
        .bearer_auth("acme-key-1")
        .send()
        .await
        .expect("connector");
    assert_eq!(connector.status(), 202);

    let created = client
        .post(format!("{base}/v1/items"))
        .bearer_auth("acme-key-1")
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    // 100 - 10 (report) - 5 (search, corrected from 1) - 3 (create) = 82.
    assert_eq!(created.headers()["x-ratelimit-remaining"], "82");
}

/// Seconds from `now` (ms since 1970) to the next clock 5 minutes, rounded up.
fn to_next_five_minutes(now_ms: u128) -> u128 {
    let window = 300_000;
    (window - now_ms % window).div_ceil(1000)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

#[tokio::test]
async fn serves_a_smooth_rate_beside_calendar_windows() {
    let demo = Demo::start(&[]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/items", demo.base);
    let before = now_ms();
    let first = client
        .get(&url)
        .bearer_auth("hooli-key-1")
        .send()
        .await
        .expect("items");
    let after = now_ms();
    assert_eq!(first.status(), 200);
    let policy = first.headers()["ratelimit-policy"].to_str().expect("ASCII");
    // A rate's q is its burst and w the seconds an empty bucket takes to fill (20 / 10 a second).
    assert!(policy.contains(r#""rate";q=20;w=2"#), "{policy}");
    assert!(policy.contains(r#""window";q=1000;w=300"#), "{policy}");
    assert!(policy.contains(r#""daily";q=2500;w=86400"#), "{policy}");
    let state = first.headers()["ratelimit"].to_str().expect("ASCII");
    // 19 units left; the next one is back within 0.1 s, announced as 1 s (rounded up).
    assert!(state.contains(r#""rate";r=19;t=1"#), "{state}");
    // The 5-minute window ends at the next :00, :05, … of the clock.
    let t: u128 = state
        .split(", ")
        .find_map(|item| item.strip_prefix(r#""window";r=999;t="#))
        .and_then(|t| t.parse().ok())
        .expect("the window's t");
    assert!(
        (to_next_five_minutes(after)..=to_next_five_minutes(before)).contains(&t),
        "{state}"
    );

    // A burst of 40 at once: the bucket's 19 (plus what a few milliseconds give back), then 429s
    // that name the rate and say when one unit is back.
    let answers = futures_util::future::join_all(
        (0..40).map(|_| client.get(&url).bearer_auth("hooli-key-1").send()),
    )
    .await;
    let mut refused = 0;
    for answer in answers {
        let answer = answer.expect("answered");
        if answer.status() == 429 {
            refused += 1;
            assert_eq!(answer.headers()["retry-after"], "1");
            assert_eq!(answer.headers()["x-ratelimit-limit"], "20");
            let body: serde_json::Value = answer.json().await.expect("problem JSON");
            assert_eq!(body["limit"], "rate");
        }
    }
    assert!((15..=21).contains(&refused), "{refused} refused");
    let usage: serde_json::Value = client
        .get(format!("{}/v1/usage", demo.base))
        .bearer_auth("hooli-key-1")
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("JSON");
    let rate = &usage["limits"][0];
    assert_eq!(rate["tiers"], serde_json::json!([]));
    assert_eq!(rate["rate"]["amount"], 10);
    assert_eq!(rate["rate"]["per"], "second");
    assert_eq!(rate["rate"]["burst"], 20);
    assert!(rate["rate"]["full_at"].is_string(), "{usage}");
    assert_eq!(usage["limits"][1]["tiers"][0]["window"], "5 minutes");
}

#[test]
fn the_shipped_policy_expresses_the_seeds() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let policy = tollhouse::Policy::from_toml_file(&path).expect("the shipped policy loads");
    let now = tollhouse::Timestamp::from_secs(1_780_000_000);
    let acme = policy.org_by_key("acme-key-2").expect("acme's second key");
    assert_eq!(acme.id().as_str(), "acme");
    assert_eq!(acme.concurrency().map(|c| c.max()), Some(3));
    let globex = policy.org("globex").expect("globex");
    let count = &globex.limits()[0];
    assert_eq!(count.total_capacity(now), 100 + 2600 + 1150);
    let sandbox = policy.org("globex-sandbox").expect("sandbox");
    assert_eq!(sandbox.limits()[0].capacity(0, now), 50);
    assert_eq!(
        policy
            .treatment("POST", "/v1/connectors/forms")
            .map(|(_, t)| t),
        Some(tollhouse::Treatment::Exempt { billable: false })
    );
    assert_eq!(
        policy.treatment("GET", "/v1/reports").map(|(_, t)| t),
        Some(tollhouse::Treatment::Cost(10))
    );
}

#[tokio::test]
async fn serves_metrics_in_prometheus_text_format() {
    let demo = Demo::start(&[]);
    let client = reqwest::Client::new();
    for key in ["acme-key-1", "acme-key-1", "nobody"] {
        client
            .get(demo.url("/v1/items"))
            .bearer_auth(key)
            .send()
            .await
            .expect("items");
    }
    let metrics = client
        .get(demo.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers().get("x-ratelimit-limit").is_none(),
        "/metrics is outside the layer"
    );
    let text = metrics.text().await.expect("text");
    let admitted = text
        .lines()
        .find(|line| {
            line.starts_with("tollhouse_decisions_total{") && line.contains("outcome=\"admitted\"")
        })
        .unwrap_or_else(|| panic!("no admitted decisions counted in:\n{text}"));
    assert!(admitted.ends_with(" 2"), "{admitted}");
    assert!(text.contains("# TYPE tollhouse_decision_seconds"), "{text}");
}

fn daily_policy(capacity: u64) -> String {
    format!(
        r#"
[[plans.p.limits]]
name = "daily"
dimension = "requests"
tiers = [{{ window = "day", capacity = {capacity} }}]

[[orgs]]
id = "acme"
plan = "p"
keys = ["only-key-01"]
"#
    )
}

/// Sends one request and returns its status and `X-RateLimit-Limit` / `-Remaining`.
async fn call(client: &reqwest::Client, demo: &Demo) -> (u16, String, String) {
    let response = client
        .get(demo.url("/v1/items"))
        .bearer_auth("only-key-01")
        .send()
        .await
        .expect("a response");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (
        response.status().as_u16(),
        header("x-ratelimit-limit"),
        header("x-ratelimit-remaining"),
    )
}

#[tokio::test]
async fn reloads_the_policy_on_sighup_and_on_change_keeping_counts() {
    let path = temp_policy("reload.toml", &daily_policy(2));
    let demo = Demo::start(&["--config", path.to_str().expect("utf-8 path")]);
    let client = reqwest::Client::new();
    assert_eq!(call(&client, &demo).await.0, 200);
    assert_eq!(call(&client, &demo).await.0, 200);
    assert_eq!(call(&client, &demo).await.0, 429);

    // Raise the capacity and say so with SIGHUP: the two calls already made still count.
    std::fs::write(&path, daily_policy(5)).expect("rewrite");
    let hup = Command::new("kill")
        .args(["-HUP", &demo.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, limit, remaining) = call(&client, &demo).await;
        if status == 200 {
            assert_eq!(
                (limit.as_str(), remaining.as_str()),
                ("5", "2"),
                "2 + this call used of 5"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new policy never came into force"
        );
    }

    // A broken file is refused with its error logged, and the running policy stays.
    std::fs::write(&path, "[plans.p\n").expect("rewrite");
    let hup = Command::new("kill")
        .args(["-HUP", &demo.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !demo.logged("policy file refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file was never reported"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        call(&client, &demo).await,
        (200, "5".to_owned(), "1".to_owned())
    );

    // Editing the file is enough, without a signal.
    std::fs::write(&path, daily_policy(10)).expect("rewrite");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut used = 4;
    loop {
        let (status, limit, _) = call(&client, &demo).await;
        used += u64::from(status == 200);
        if limit == "10" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edited file was never picked up"
        );
    }
    let (_, limit, remaining) = call(&client, &demo).await;
    assert_eq!(limit, "10");
    assert_eq!(
        remaining,
        (10 - used - 1).to_string(),
        "counts kept across every reload"
    );
}

#[tokio::test]
async fn serves_while_redis_does_not_answer_and_refuses_a_malformed_redis_url() {
    // A port nobody listens on: Redis is down, which is an outage to ride out, not a mistake.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let demo = Demo::start(&["--redis", &url, "--redis-timeout-ms", "50"]);
    let response = demo.get("/v1/items", "acme-key-1").await;
    // The shipped policy fails open: let through, without rate-limit headers.
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-ratelimit-limit").is_none());
    tollhouse_tests::http::eventually("the demo warns that Redis does not answer", || async {
        demo.logged("Redis does not answer yet")
    })
    .await;

    let output = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--redis", "notaurl"])
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing served");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot use Redis at notaurl: the redis URL is not valid"),
        "the message says what is wrong with the URL: {stderr}"
    );
    assert!(
        stderr.contains("rediss://"),
        "and how to write one: {stderr}"
    );
}

/// A wrong password stops the start with what is wrong, not "does not answer"; the password
/// itself is never printed.
#[tokio::test]
async fn a_wrong_redis_password_stops_the_start_with_its_cause() {
    let Some(redis) =
        tollhouse_tests::redis_tls::tls_redis_for("wrong_redis_password", "right-one")
    else {
        return;
    };
    let output = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--state", "none", "--redis"])
        .arg(redis.url("wrong-one"))
        .arg("--redis-ca")
        .arg(redis.ca())
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(
        !stderr.contains("wrong-one"),
        "the password is not printed: {stderr}"
    );
}

#[test]
fn listens_on_a_host_name() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(DEMO)
        .args(["--listen", "localhost:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the demo starts");
    let mut line = String::new();
    let read = child
        .stdout
        .take()
        .map(|stdout| BufReader::new(stdout).read_line(&mut line));
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(read, Some(Ok(_))), "the demo printed its address");
    assert!(
        line.starts_with("tollhouse-demo listening on http://127.0.0.1:")
            || line.starts_with("tollhouse-demo listening on http://[::1]:"),
        "{line:?}"
    );
}

#[tokio::test]
async fn loads_a_policy_beside_the_binary_when_given_none() {
    // A copy of the demo installed with a policy file of its own, run from that directory.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-beside-its-policy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let binary = dir.join("tollhouse-demo");
    if std::fs::hard_link(DEMO, &binary).is_err() {
        std::fs::copy(DEMO, &binary).expect("a copy of the demo");
    }
    let policy = r#"
[[plans.small.limits]]
name = "points"
dimension = "points"
tiers = [{ window = "minute", capacity = 7 }]

[[orgs]]
id = "acme"
plan = "small"
keys = ["acme-key-1"]
"#;
    std::fs::write(dir.join("policy.toml"), policy).expect("the policy file");
    let mut command = Command::new(&binary);
    command.current_dir(&dir);
    let demo = Demo::start_with(command, &[]);
    let response = demo.get("/v1/items", "acme-key-1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ratelimit-limit"], "7");
}

/// `--check --config FILE` on the shipped policy: exit 0 and one line that sums the file up.
#[test]
fn check_summarises_a_valid_policy_file() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let output = Command::new(DEMO)
        .arg("--check")
        .arg("--config")
        .arg(&shipped)
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [format!(
            "{}: ok, 4 plans, 6 orgs, 7 keys, 5 routes",
            shipped.display()
        )],
        "one line, naming the file and what it holds"
    );
}

/// `--check` on a broken file: exit 1 and the loader's message (file, line, column, the fix),
/// the same text start-up gives; nothing on stdout.
#[test]
fn check_refuses_a_broken_policy_file_with_the_start_up_message() {
    let text = "[plans.build]\n[[plans.build.limits]]\nname = \"daily\"\ndimension = \"requests\"\ntiers = [{ window = \"day\", capacity = 0 }]\n";
    let path = temp_policy("check-zero-capacity.toml", text);
    let check = Command::new(DEMO)
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("the demo runs");
    assert_eq!(check.status.code(), Some(1));
    assert!(check.stdout.is_empty(), "{:?}", check.stdout);
    let message = String::from_utf8_lossy(&check.stderr);
    assert!(
        message.contains(&format!("{}:5:39:", path.display())),
        "file, line and column: {message}"
    );
    assert!(message.contains("at least 1"), "the fix: {message}");

    let start = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("the demo runs");
    let error = message.trim().trim_start_matches("tollhouse-demo: ");
    assert!(
        String::from_utf8_lossy(&start.stderr).contains(error),
        "start-up gives the same error text"
    );
}

/// `--check` on a file that is not there: exit 1, naming the path.
#[test]
fn check_refuses_a_missing_policy_file() {
    let output = Command::new(DEMO)
        .args(["--check", "--config", "/nonexistent/tollhouse/policy.toml"])
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("/nonexistent/tollhouse/policy.toml"),
        "{output:?}"
    );
}

/// A client that never finishes its request head is cut off after the header timeout, while a
/// request whose handler takes longer than that still completes.
#[tokio::test]
async fn a_slow_client_is_cut_off_and_a_slow_handler_is_not() {
    use std::io::{Read, Write};

    let demo = Demo::start(&["--header-timeout-ms", "300"]);
    let address = demo.base.trim_start_matches("http://").to_owned();
    let slow_client = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("a read timeout");
        stream
            .write_all(b"GET /v1/items HTTP/1.1\r\nHost: demo\r\n")
            .expect("half a head");
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest).is_ok();
        (closed, started.elapsed())
    });
    let response = reqwest::Client::new()
        .get(format!("{}/v1/slow?ms=1000", demo.base))
        .bearer_auth("acme-key-1")
        .send()
        .await
        .expect("the demo answers");
    assert_eq!(
        response.status(),
        200,
        "a handler slower than the header timeout completes"
    );
    let (closed, after) = slow_client.join().expect("the client thread");
    assert!(closed, "the server closed the connection");
    assert!(
        after < std::time::Duration::from_secs(5),
        "closed after {after:?}, not when the client gave up"
    );
}

#[test]
fn check_names_the_windows_and_rates_allowed() {
    let cases = [
        (
            "tiers = [{ window = \"7 minutes\", capacity = 10 }]",
            "allowed: 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 minutes",
        ),
        (
            "tiers = [{ window = \"fortnight\", capacity = 10 }]",
            "allowed: second, minute, hour, day, week, month, year",
        ),
        (
            "rate = { amount = 10, per = \"60 minutes\", burst = 20 }",
            "allowed: 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 minutes",
        ),
        (
            "rate = { amount = 0, per = \"second\" }",
            "set amount to at least 1",
        ),
        (
            "rate = { amount = 1, per = \"second\" }\ntiers = [{ window = \"day\", capacity = 10 }]",
            "has both tiers and a rate",
        ),
    ];
    for (index, (limit, allowed)) in cases.into_iter().enumerate() {
        let text =
            format!("[[plans.p.limits]]\nname = \"count\"\ndimension = \"requests\"\n{limit}\n");
        let path = temp_policy(&format!("check-window-{index}.toml"), &text);
        let check = Command::new(DEMO)
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("the demo runs");
        assert_eq!(check.status.code(), Some(1), "{limit}");
        let message = String::from_utf8_lossy(&check.stderr);
        assert!(message.contains(allowed), "{limit}: {message}");
        assert!(
            message.contains(&format!("{}:4:", path.display())),
            "{limit}: the line: {message}"
        );
    }
}

#[test]
fn grants_without_redis_are_refused() {
    let output = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--state", "none", "--grants"])
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--grants") && stderr.contains("--redis"),
        "{stderr}"
    );
}
