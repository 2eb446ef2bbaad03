//! The SQLite example over HTTP: a key made by the admin route works on the next request, a
//! revoked key stops at once on the instance that revoked it and within the cache's time to live
//! on another instance sharing the file, and a database that cannot answer is a 503, not a 401.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

const BINARY: &str = env!("CARGO_BIN_EXE_sqlite-keys");
const ADMIN: &str = "admin-token-for-tests";
const TTL: Duration = Duration::from_millis(400);

/// A running example, killed when dropped.
struct Instance {
    child: Child,
    base: String,
}

impl Instance {
    fn start(db: &Path) -> Self {
        let mut child = Command::new(BINARY)
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0", "--admin-token", ADMIN])
            .arg("--cache-ttl-ms")
            .arg(TTL.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the example starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the example prints its address");
        let base = line
            .trim()
            .strip_prefix("sqlite-keys listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, base }
    }

    async fn items(&self, key: &str) -> StatusCode {
        reqwest::Client::new()
            .get(format!("{}/v1/items", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("the example answers")
            .status()
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the example answers")
    }

    async fn new_key(&self, org: &str) -> String {
        let made = self
            .admin(
                reqwest::Method::POST,
                &format!("/admin/orgs/{org}/keys"),
                None,
            )
            .await;
        assert_eq!(made.status(), StatusCode::CREATED);
        let body: serde_json::Value = made.json().await.expect("JSON");
        body["key"].as_str().expect("a key").to_owned()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollhouse-sqlite-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

#[tokio::test]
async fn a_created_key_works_and_a_revoked_one_stops_within_the_ttl() {
    let db = temp_db("keys.sqlite");
    let a = Instance::start(&db);
    let b = Instance::start(&db);
    let org = a
        .admin(
            reqwest::Method::POST,
            "/admin/orgs",
            Some(serde_json::json!({ "id": "acme", "plan": "free", "time_zone": "Europe/Amsterdam" })),
        )
        .await;
    assert_eq!(org.status(), StatusCode::CREATED);

    let key = a.new_key("acme").await;
    assert_eq!(
        a.items(&key).await,
        StatusCode::OK,
        "works on the next request"
    );
    assert_eq!(
        b.items(&key).await,
        StatusCode::OK,
        "on every instance sharing the file"
    );
    assert_eq!(a.items("sk_not-a-key").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.admin(reqwest::Method::POST, "/admin/orgs/nobody/keys", None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let revoked = a
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{key}"), None)
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        a.items(&key).await,
        StatusCode::UNAUTHORIZED,
        "the instance that revoked it forgets it at once"
    );
    // The other instance trusts its cached answer until the TTL runs out, then asks the file.
    let revoked_at = Instant::now();
    loop {
        match b.items(&key).await {
            StatusCode::UNAUTHORIZED => break,
            StatusCode::OK => {}
            other => panic!("unexpected {other}"),
        }
        assert!(
            revoked_at.elapsed() < TTL + Duration::from_secs(2),
            "a revoked key must stop within the cache's TTL"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Another key of the same org still works.
    let other = a.new_key("acme").await;
    assert_eq!(b.items(&other).await, StatusCode::OK);
}

#[tokio::test]
async fn a_key_database_that_cannot_answer_is_a_503_not_a_wrong_key() {
    let db = temp_db("broken.sqlite");
    let instance = Instance::start(&db);
    instance
        .admin(
            reqwest::Method::POST,
            "/admin/orgs",
            Some(serde_json::json!({ "id": "acme", "plan": "pro" })),
        )
        .await;
    let key = instance.new_key("acme").await;
    // Break the database under the running service: its key table is gone.
    rusqlite::Connection::open(&db)
        .and_then(|connection| connection.execute_batch("DROP TABLE api_keys;"))
        .expect("the test drops the key table");
    let response = reqwest::Client::new()
        .get(format!("{}/v1/items", instance.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("the example answers");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(response.headers().get("www-authenticate").is_none());
}
