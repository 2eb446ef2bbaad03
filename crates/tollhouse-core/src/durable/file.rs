//! The state directory: one process at a time (a lock file naming its holder), and an SQLite
//! database in WAL mode whose schema carries a version.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::DurableError;

/// The schema this build writes; a file of a later one is refused.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// The database's file name in the state directory.
pub(super) const DATABASE: &str = "tollhouse.sqlite3";
/// The lock file's name in the state directory.
const LOCK: &str = "LOCK";

const SCHEMA: &str = "
CREATE TABLE counters (
    org        TEXT    NOT NULL,
    limit_name TEXT    NOT NULL,
    window     TEXT    NOT NULL,
    start_ms   INTEGER NOT NULL,
    end_ms     INTEGER NOT NULL,
    used       INTEGER NOT NULL,
    PRIMARY KEY (org, limit_name, window)
) WITHOUT ROWID;
CREATE TABLE billing (
    org      TEXT    NOT NULL,
    date     TEXT    NOT NULL,
    billable INTEGER NOT NULL,
    PRIMARY KEY (org, date)
) WITHOUT ROWID;
CREATE TABLE usage (
    org       TEXT PRIMARY KEY,
    latest_ms INTEGER,
    state     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE overrides (
    org        TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    adjustment TEXT NOT NULL,
    until_ms   INTEGER,
    PRIMARY KEY (org, limit_name)
) WITHOUT ROWID;
";

/// The state directory, held by this process until dropped.
#[derive(Debug)]
pub(super) struct StateDir {
    pub(super) path: PathBuf,
    /// Held open for the lock it carries.
    _lock: File,
}

impl StateDir {
    /// Creates `path` if needed and takes its lock; refuses when another process holds it.
    pub(super) fn lock(path: &Path) -> Result<Self, DurableError> {
        std::fs::create_dir_all(path).map_err(|source| DurableError::Io {
            path: path.to_owned(),
            source,
        })?;
        let lock_path = path.join(LOCK);
        let io = |source| DurableError::Io {
            path: lock_path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io)?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(DurableError::Locked {
                path: path.to_owned(),
                holder: holder.trim().to_owned(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        writeln!(file, "process {} {host}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            _lock: file,
        })
    }

    /// Opens the database, creating its schema in a new file and refusing one of a later schema
    /// or one that is damaged.
    pub(super) fn open(&self) -> Result<Connection, DurableError> {
        let path = self.path.join(DATABASE);
        let bad = |source| DurableError::Damaged {
            path: path.clone(),
            source,
        };
        let connection = Connection::open(&path).map_err(bad)?;
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(bad)?;
        // WAL: a crash never leaves a file that will not open; NORMAL: a crash of the process
        // loses nothing written, a power loss at most the last writes.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(bad)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(bad)?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(bad)?;
        match version {
            0 => {
                connection
                    .execute_batch(&format!(
                        "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(bad)?;
            }
            SCHEMA_VERSION => {
                let check: String = connection
                    .pragma_query_value(None, "quick_check", |row| row.get(0))
                    .map_err(bad)?;
                if check != "ok" {
                    return Err(DurableError::Damaged {
                        path,
                        source: rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                            Some(check),
                        ),
                    });
                }
            }
            later => {
                return Err(DurableError::Newer {
                    path,
                    version: later,
                });
            }
        }
        Ok(connection)
    }
}
