//! Starting and stopping the demo binary in tests.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The demo binary cargo built for these tests.
pub const DEMO: &str = env!("CARGO_BIN_EXE_tollhouse-demo");

/// Writes `text` to a policy file of this test process and returns its path.
pub fn temp_policy(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollhouse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("the policy file is written");
    path
}

/// A state directory no other demo of this test run uses.
pub fn fresh_state_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tollhouse-demo-{}-state-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running demo, killed when dropped however the test ends.
pub struct Demo {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    /// Starts the demo with `args` (plus `--listen 127.0.0.1:0`) and waits for the line that says
    /// where it listens.
    pub fn start(args: &[&str]) -> Demo {
        Self::start_with(Command::new(DEMO), args)
    }

    /// [`start`](Self::start) with a command of the caller's (another copy of the binary, another
    /// working directory). Unless `args` name a state directory (or Redis), the demo keeps its
    /// state in a fresh one of its own, so tests that share a policy file do not share state.
    pub fn start_with(mut command: Command, args: &[&str]) -> Demo {
        let own_state = !args
            .iter()
            .any(|arg| *arg == "--state" || *arg == "--redis");
        if own_state {
            command.arg("--state").arg(fresh_state_dir());
        }
        let mut child = command
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the demo prints its address");
        let base = line
            .trim()
            .strip_prefix("tollhouse-demo listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Demo { child, base, log }
    }

    /// Waits for the demo to exit (after a signal the test sent).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("the demo exits")
    }

    /// The demo's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the demo has logged a line containing `text` (on stderr).
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|line| line.contains(text))
    }

    /// The URL of `path` on this instance.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` on this instance with `Authorization: Bearer key`.
    #[allow(
        dead_code,
        reason = "not every test binary that shares this module sends requests"
    )]
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
