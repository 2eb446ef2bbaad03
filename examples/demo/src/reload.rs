//! Policy changes without downtime: the file is read again on SIGHUP and when its modification time
//! changes (checked every second). Counts in open windows are kept (stores key them by org and limit
//! name); a file that fails validation is refused, its error logged, and the running policy stays.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tollhouse::{Policy, RateLimitLayer};

/// How often the file's modification time is looked at.
const POLL: Duration = Duration::from_secs(1);

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Reads `path` again whenever asked or changed, and puts a valid policy in force on `limits`.
/// The SIGHUP handler is in place when this returns (before the demo says it listens); the
/// returned future does the watching.
pub(crate) fn watch(path: PathBuf, limits: RateLimitLayer) -> impl Future<Output = ()> + Send {
    let hangup = hangups();
    run(path, limits, hangup)
}

async fn run(path: PathBuf, limits: RateLimitLayer, mut hangup: Hangups) {
    let mut every = tokio::time::interval(POLL);
    let mut seen = modified(&path);
    loop {
        let reason = tokio::select! {
            Some(()) = next_hangup(&mut hangup) => "SIGHUP",
            _ = every.tick() => {
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                "file changed"
            }
        };
        seen = modified(&path);
        match Policy::from_toml_file(&path) {
            Ok(policy) => {
                limits.replace_policy(policy);
                tracing::info!(policy = %path.display(), reason, "policy reloaded; counts kept");
            }
            Err(error) => {
                tracing::error!(%error, reason, "policy file refused; the running policy stays");
            }
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {
    None
}

/// The next SIGHUP; never, where there are none.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}
