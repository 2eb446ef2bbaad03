//! Instructions per request of the same routers the `layer` benchmark times, counted by valgrind.
//!
//! Wall-clock numbers on a small shared machine move by 10–30% from run to run; instruction
//! counts move by a few percent (seeded hashers, the allocator). Each router serves `N` and then
//! `3N` requests under `valgrind --tool=callgrind`; the difference divided by `2N` is what one
//! request costs, without start-up. Overhead is that minus the bare router's.
//!
//! Valgrind's virtual CPU has no SHA extensions, so the SHA-256 of the API key runs in software
//! here (about 3,400 instructions) where real x86 hardware with SHA-NI spends a few hundred.
//!
//! ```text
//! cargo bench -p tollgate --bench instructions
//! ```
//!
//! Without valgrind on the `PATH` it says so and measures nothing.

mod common;

use std::process::Command;

/// Requests in the shorter of the two runs; the longer serves three times as many.
const REQUESTS: u64 = 5_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name, count, ..] = args.as_slice()
        && flag == "--serve"
    {
        serve(name, count.parse().expect("a request count"));
        return;
    }
    let Ok(this) = std::env::current_exe() else {
        eprintln!("instructions: cannot find this program's path; nothing measured");
        return;
    };
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("instructions: SKIP, valgrind is not installed (apt-get install valgrind)");
        return;
    }
    println!(
        "instructions per request (callgrind; {REQUESTS} and {} requests)",
        3 * REQUESTS
    );
    let mut bare = None;
    for name in common::NAMES {
        let (Some(short), Some(long)) = (
            count(&this, name, REQUESTS),
            count(&this, name, 3 * REQUESTS),
        ) else {
            eprintln!("instructions: valgrind did not report a count for {name}");
            return;
        };
        let per_request = long.saturating_sub(short) / (2 * REQUESTS);
        let base = *bare.get_or_insert(per_request);
        println!(
            "{name:>22}: {per_request:>7} instructions, overhead {:>7}",
            per_request.saturating_sub(base)
        );
    }
}

/// Serves `count` requests with the router called `name`.
fn serve(name: &str, count: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let app = common::router_named(name);
    // One request first: lazily initialised state (clock calibration, say) stays out of the count.
    runtime.block_on(common::drive(app.clone()));
    measured(&runtime, &app, count);
}

/// The requests callgrind counts (it collects only inside this function).
#[inline(never)]
fn measured(runtime: &tokio::runtime::Runtime, app: &axum::Router, count: u64) {
    runtime.block_on(async {
        for _ in 0..count {
            common::drive(app.clone()).await;
        }
    });
}

/// The instructions callgrind counts while this program serves `requests` with router `name`.
fn count(this: &std::path::Path, name: &str, requests: u64) -> Option<u64> {
    let output = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            "--collect-atstart=no",
            "--toggle-collect=instructions::measured",
        ])
        .arg(this)
        .args(["--serve", name, &requests.to_string()])
        .output()
        .ok()?;
    let report = String::from_utf8_lossy(&output.stderr);
    report
        .lines()
        .find_map(|line| line.split("Collected : ").nth(1))
        .and_then(|count| count.trim().parse().ok())
}
