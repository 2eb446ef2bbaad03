//! A real headless Chromium for tests of pages, driven through chromedriver (WebDriver) by
//! [`fantoccini`].
//!
//! [`Browser::launch`] starts Debian's `chromedriver` on a free loopback port with a fresh profile
//! and opens one headless session; dropping the [`Browser`] stops the driver and deletes the
//! profile. When Chromium or chromedriver is not installed, `launch` says so with
//! [`LaunchError::Missing`], and a test calls [`skip_or_fail`]: it skips with a `SKIP:` line on a
//! developer's machine and fails under `CI=true` (`.ci/install-chromium.sh` installs both).
//!
//! Waits poll an observable condition until a deadline ([`poll_until`]); nothing sleeps a fixed time
//! hoping the page is ready.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tollhouse_tests::browser::{Browser, LaunchError, poll_until, skip_or_fail};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let browser = match Browser::launch().await {
//!     Ok(browser) => browser,
//!     Err(LaunchError::Missing(why)) => {
//!         skip_or_fail(&why);
//!         return Ok(());
//!     }
//!     Err(error) => panic!("{error}"),
//! };
//! browser.client().goto("http://127.0.0.1:3000/usage").await?;
//! let title = poll_until("the page title", Duration::from_secs(10), || {
//!     let client = browser.client().clone();
//!     async move {
//!         let title = client.title().await.map_err(|e| e.to_string())?;
//!         if title.is_empty() { Err("no title yet".to_owned()) } else { Ok(title) }
//!     }
//! })
//! .await;
//! assert_eq!(title, "API usage");
//! browser.close().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use serde_json::json;

/// Where a Chromium may be installed, when `CHROMIUM` does not name one.
const CHROMIUM_PATHS: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/lib/chromium/chromium",
    "/usr/bin/google-chrome",
];

/// Where chromedriver may be installed, when `CHROMEDRIVER` does not name one.
const CHROMEDRIVER_PATHS: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// How long chromedriver may take to start listening.
const DRIVER_START: Duration = Duration::from_secs(20);

/// The flags every session's Chromium runs with: headless, no sandbox (containers), nothing that
/// reaches the network on its own.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--lang=en-US",
    "--hide-scrollbars",
    "--window-size=1280,900",
];

/// Why no browser could be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum LaunchError {
    /// Chromium or chromedriver is not installed (the message says which, and how to install it).
    Missing(String),
    /// They are installed but did not start a session.
    Failed(String),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Missing(why) => write!(f, "{why}"),
            LaunchError::Failed(why) => write!(f, "the browser did not start: {why}"),
        }
    }
}

impl std::error::Error for LaunchError {}

/// Says a browser test cannot run: prints `SKIP: <reason>` on a developer's machine, and panics
/// under `CI=true`, where the browser must be installed.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!(
            "{reason} (CI=true: the browser test must run; .ci/install-chromium.sh installs it)"
        );
    }
    println!("SKIP: {reason}");
}

fn find(env: &str, paths: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    paths.iter().map(PathBuf::from).find(|path| path.is_file())
}

/// The folder test artifacts (screenshots) go to: `target/artifacts` of the workspace, or of
/// `CARGO_TARGET_DIR`. Created if missing.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")))
                .join("target")
        });
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts folder");
    dir
}

/// Calls `probe` until it returns `Ok`, at most until `timeout` has passed, pausing briefly between
/// calls; panics with `what` and the last `Err` (the state seen instead) when time runs out.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A headless Chromium session and the chromedriver behind it; both end when this is dropped.
pub struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver.id())
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

fn free_port() -> Result<u16, LaunchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| LaunchError::Failed(format!("no free loopback port: {error}")))
}

fn fresh_profile() -> Result<PathBuf, LaunchError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tollhouse-chromium-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|error| LaunchError::Failed(format!("create {}: {error}", dir.display())))?;
    Ok(dir)
}

/// Waits until chromedriver on `port` answers `/status` with `ready`, or its process exits.
async fn wait_for_driver(driver: &mut Child, port: u16) -> Result<(), LaunchError> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|error| LaunchError::Failed(error.to_string()))?;
    let url = format!("http://127.0.0.1:{port}/status");
    let deadline = Instant::now() + DRIVER_START;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(LaunchError::Failed(format!(
                "chromedriver exited with {status} before it was ready"
            )));
        }
        if let Ok(response) = http.get(&url).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
            && body["value"]["ready"] == true
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::Failed(format!(
                "chromedriver did not answer on port {port} within {DRIVER_START:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with [`CHROMIUM_FLAGS`] and a fresh
    /// `--user-data-dir`. `CHROMIUM` and `CHROMEDRIVER` may name the binaries.
    pub async fn launch() -> Result<Browser, LaunchError> {
        let chromium = find("CHROMIUM", CHROMIUM_PATHS).ok_or_else(|| {
            LaunchError::Missing(
                "Chromium is not installed (apt-get install chromium, or set CHROMIUM)".to_owned(),
            )
        })?;
        let chromedriver = find("CHROMEDRIVER", CHROMEDRIVER_PATHS).ok_or_else(|| {
            LaunchError::Missing(
                "chromedriver is not installed (apt-get install chromium-driver, or set CHROMEDRIVER)"
                    .to_owned(),
            )
        })?;
        let profile = fresh_profile()?;
        let mut last_error = None;
        // A port found free can be taken before chromedriver binds it: try a few.
        for _ in 0..3 {
            let port = free_port()?;
            let mut driver = Command::new(&chromedriver)
                // Its own process group, so that Chromium, which it starts, can be stopped with it.
                .process_group(0)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|error| {
                    LaunchError::Failed(format!("run {}: {error}", chromedriver.display()))
                })?;
            if let Err(error) = wait_for_driver(&mut driver, port).await {
                stop(&mut driver);
                last_error = Some(error);
                continue;
            }
            let mut args: Vec<String> =
                CHROMIUM_FLAGS.iter().map(|&flag| flag.to_owned()).collect();
            args.push(format!("--user-data-dir={}", profile.display()));
            let mut capabilities = Capabilities::new();
            capabilities.insert("browserName".to_owned(), json!("chrome"));
            capabilities.insert(
                "goog:chromeOptions".to_owned(),
                json!({ "binary": chromium, "args": args }),
            );
            let connected =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await;
            match connected {
                Ok(client) => {
                    return Ok(Browser {
                        client,
                        driver,
                        profile,
                    });
                }
                Err(error) => {
                    stop(&mut driver);
                    let _ = std::fs::remove_dir_all(&profile);
                    return Err(LaunchError::Failed(format!("new session: {error}")));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&profile);
        Err(last_error
            .unwrap_or_else(|| LaunchError::Failed("chromedriver did not start".to_owned())))
    }

    /// The WebDriver client of the session (cheap to clone).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Resizes the window to the page's full height (at most `max_height`) and saves a PNG
    /// screenshot to `path`; returns the PNG's size in bytes.
    pub async fn screenshot_full_page(
        &self,
        path: &Path,
        width: u32,
        max_height: u32,
    ) -> Result<usize, Box<dyn std::error::Error>> {
        let height = self
            .client
            .execute(
                "window.scrollTo(0, 0); return Math.ceil(document.documentElement.scrollHeight);",
                Vec::new(),
            )
            .await?
            .as_u64()
            .unwrap_or(900);
        let height = u32::try_from(height)
            .unwrap_or(max_height)
            .clamp(600, max_height);
        self.client.set_window_size(width, height).await?;
        // The new size is laid out before the next frame; wait for the viewport to follow.
        let client = self.client.clone();
        poll_until(
            "the window to take its new size",
            Duration::from_secs(5),
            || {
                let client = client.clone();
                async move {
                    let inner = client
                        .execute(
                            "window.scrollTo(0, 0); return window.innerHeight;",
                            Vec::new(),
                        )
                        .await
                        .map_err(|error| error.to_string())?
                        .as_u64()
                        .unwrap_or(0);
                    if inner + 200 >= u64::from(height) {
                        Ok(())
                    } else {
                        Err(format!("innerHeight {inner}"))
                    }
                }
            },
        )
        .await;
        let png = self.client.screenshot().await?;
        std::fs::write(path, &png)?;
        Ok(png.len())
    }

    /// Ends the WebDriver session (closing Chromium), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        // Drop stops chromedriver and removes the profile.
    }
}

/// Stops chromedriver and whatever is left of the Chromium it started: both run in the process
/// group `launch` made for chromedriver (after a closed session, only chromedriver is left).
fn stop(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
