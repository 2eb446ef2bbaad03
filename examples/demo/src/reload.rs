//! Policy changes without downtime: the file is read again on SIGHUP, and when its contents change
//! (looked at every second). Counts in open windows are kept (stores key them by org and limit
//! name); a file that fails validation is refused, its error logged, and the running policy stays.
//!
//! A file being written is not loaded half-way: a change is loaded once the same contents have
//! been seen on two looks in a row (a second apart), and contents already in force are not loaded
//! again. Editors and deploy tools that write a new file and rename it over the old one (an
//! atomic rename) are picked up on the next look.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollhouse::{Policy, RateLimitLayer};

/// How often the file is looked at.
const POLL: Duration = Duration::from_secs(1);

/// A fingerprint of the file's contents, or `None` when it cannot be read.
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
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
    // The contents in force, and the changed contents seen on the last look.
    let mut loaded = fingerprint(&path);
    let mut pending = None;
    loop {
        let reason = tokio::select! {
            Some(()) = next_hangup(&mut hangup) => "SIGHUP",
            _ = every.tick() => {
                let now = fingerprint(&path);
                if now.is_none() || now == loaded {
                    pending = None;
                    continue;
                }
                if now != pending {
                    // Changed since the last look: it may still be being written.
                    pending = now;
                    continue;
                }
                "file changed"
            }
        };
        pending = None;
        loaded = fingerprint(&path);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(capacity: u64) -> String {
        format!(
            "[[plans.p.limits]]\nname = \"daily\"\ndimension = \"requests\"\n\
             tiers = [{{ window = \"day\", capacity = {capacity} }}]\n"
        )
    }

    fn capacity(limits: &RateLimitLayer) -> u64 {
        limits.engine().policy().plans()[0].limits()[0].tiers()[0].capacity()
    }

    /// Lets the watcher run until it waits for its next look.
    async fn look() {
        tokio::time::advance(POLL).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_loaded_once_it_has_held_still_for_a_look() {
        let path =
            std::env::temp_dir().join(format!("tollhouse-reload-{}.toml", std::process::id()));
        std::fs::write(&path, policy(2)).expect("write");
        let limits = RateLimitLayer::new(Policy::from_toml_file(&path).expect("valid"));
        tokio::spawn(run(path.clone(), limits.clone(), None));
        look().await;
        // A write in progress: seen once, not loaded.
        std::fs::write(&path, policy(3)).expect("write");
        look().await;
        assert_eq!(capacity(&limits), 2, "a change seen once is not loaded yet");
        // The write goes on before the next look: still not loaded.
        std::fs::write(&path, policy(5)).expect("write");
        look().await;
        assert_eq!(capacity(&limits), 2);
        // The same contents on the next look: loaded.
        look().await;
        assert_eq!(capacity(&limits), 5);
        std::fs::remove_file(&path).expect("clean up");
    }
}
