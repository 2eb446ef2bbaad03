//! The durable store's choice of file: one write-behind flush of 1,000 changed orgs (each its
//! counters and a usage record of about 30 KB, as a busy org's is) in one transaction, in SQLite
//! (WAL, `synchronous = NORMAL`, what the store uses) and in redb, on the same disk in the same run.
//!
//! ```text
//! cargo bench -p tollhouse-core --bench state_file
//! ```

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const ORGS: usize = 1_000;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tollhouse-state-bench-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    dir
}

/// A changed org: its id, three counters and its usage record.
type Changed = (String, [(String, i64); 3], String);

/// 1,000 changed orgs.
fn orgs() -> Vec<Changed> {
    (0..ORGS)
        .map(|i| {
            (
                format!("org-{i}"),
                [
                    ("points:minute".to_owned(), 37),
                    ("points:day".to_owned(), 1_200),
                    ("daily:day".to_owned(), 410),
                ],
                "x".repeat(30_000),
            )
        })
        .collect()
}

fn sqlite(c: &mut Group<'_>, changed: &[Changed]) {
    let path = dir("sqlite").join("state.sqlite3");
    let mut connection = rusqlite::Connection::open(&path).expect("open");
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .expect("NORMAL");
    connection
        .execute_batch(
            "CREATE TABLE counters (org TEXT, name TEXT, used INTEGER, PRIMARY KEY (org, name)) WITHOUT ROWID;
             CREATE TABLE usage (org TEXT PRIMARY KEY, state TEXT) WITHOUT ROWID;",
        )
        .expect("schema");
    c.bench_function(BenchmarkId::new("flush_1000_orgs", "sqlite"), |b| {
        b.iter(|| {
            let transaction = connection.transaction().expect("a transaction");
            {
                let mut counter = transaction
                    .prepare_cached("INSERT OR REPLACE INTO counters VALUES (?1, ?2, ?3)")
                    .expect("prepare");
                let mut usage = transaction
                    .prepare_cached("INSERT OR REPLACE INTO usage VALUES (?1, ?2)")
                    .expect("prepare");
                for (org, counters, state) in changed {
                    for (name, used) in counters {
                        counter
                            .execute(rusqlite::params![org, name, used])
                            .expect("insert");
                    }
                    usage
                        .execute(rusqlite::params![org, state])
                        .expect("insert");
                }
            }
            transaction.commit().expect("commit");
        })
    });
}

fn redb(c: &mut Group<'_>, changed: &[Changed]) {
    const COUNTERS: redb::TableDefinition<'_, (&str, &str), i64> =
        redb::TableDefinition::new("counters");
    const USAGE: redb::TableDefinition<'_, &str, &str> = redb::TableDefinition::new("usage");
    let path = dir("redb").join("state.redb");
    let database = redb::Database::create(&path).expect("create");
    c.bench_function(BenchmarkId::new("flush_1000_orgs", "redb"), |b| {
        b.iter(|| {
            let transaction = database.begin_write().expect("a transaction");
            {
                let mut counters = transaction.open_table(COUNTERS).expect("table");
                let mut usage = transaction.open_table(USAGE).expect("table");
                for (org, org_counters, state) in changed {
                    for (name, used) in org_counters {
                        counters
                            .insert((org.as_str(), name.as_str()), used)
                            .expect("insert");
                    }
                    usage.insert(org.as_str(), state.as_str()).expect("insert");
                }
            }
            transaction.commit().expect("commit");
        })
    });
}

fn flush(c: &mut Criterion) {
    let changed: Vec<Changed> = orgs();
    let mut group = c.benchmark_group("state_file");
    group.throughput(Throughput::Elements(ORGS as u64));
    group.sample_size(20);
    sqlite(&mut group, black_box(&changed));
    redb(&mut group, black_box(&changed));
    group.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

criterion_group!(benches, flush);
criterion_main!(benches);
