//! Instructions and atomic operations per request of the same routers the `layer` benchmark
//! times, counted by valgrind.
//!
//! Wall-clock numbers on a small shared machine move by 10–30% from run to run; instruction
//! counts move by a few percent (seeded hashers, the allocator). Each router serves `N` and then
//! `3N` requests under `valgrind --tool=callgrind`; the difference divided by `2N` is what one
//! request costs, without start-up. Overhead is that minus the bare router's.
//!
//! Atomic operations (reference counts, locks) cost far more than their one instruction each, and
//! a count that every request of an org writes is a cache line the cores pass back and forth. They
//! are counted from the same runs: callgrind records how often each instruction ran, and `objdump
//! -d` of this program says which of its instructions are atomic (a `lock` prefix, or `xchg` with
//! memory). The C library's are not counted. Without `objdump` on the `PATH` that column is left
//! out, with a message saying so.
//!
//! Valgrind's virtual CPU has no SHA extensions, so the SHA-256 of the API key runs in software
//! here (about 3,400 instructions) where real x86 hardware with SHA-NI spends a few hundred.
//!
//! ```text
//! cargo bench -p tollhouse --bench instructions
//! ```
//!
//! Without valgrind on the `PATH` it says so and measures nothing.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
    let atomic = atomic_instructions(&this);
    if atomic.is_none() {
        eprintln!(
            "instructions: objdump listed no atomic instructions (is binutils installed?); \
             atomic operations are not counted"
        );
    }
    println!(
        "per request (callgrind; {REQUESTS} and {} requests)",
        3 * REQUESTS
    );
    let mut bare = None;
    for name in common::NAMES {
        let (Some(short), Some(long)) = (
            count(&this, name, REQUESTS, atomic.as_ref()),
            count(&this, name, 3 * REQUESTS, atomic.as_ref()),
        ) else {
            eprintln!("instructions: valgrind did not report a count for {name}");
            return;
        };
        let per_request = long.instructions.saturating_sub(short.instructions) / (2 * REQUESTS);
        let base = *bare.get_or_insert(per_request);
        print!(
            "{name:>22}: {per_request:>7} instructions, overhead {:>7}",
            per_request.saturating_sub(base)
        );
        if atomic.is_some() {
            let atomics = long.atomics.saturating_sub(short.atomics) as f64 / (2 * REQUESTS) as f64;
            print!(", {atomics:>5.1} atomic operations");
        }
        println!();
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

/// What callgrind counted in one run.
struct Counts {
    /// Instructions executed.
    instructions: u64,
    /// Executions of this program's atomic instructions (0 when they are not known).
    atomics: u64,
}

/// The instructions (and, if `atomic` is given, the executions of those atomic instructions)
/// callgrind counts while this program serves `requests` with router `name`.
fn count(this: &Path, name: &str, requests: u64, atomic: Option<&HashSet<u64>>) -> Option<Counts> {
    let out = std::env::temp_dir().join(format!(
        "tollhouse-callgrind-{}-{name}-{requests}.out",
        std::process::id()
    ));
    let output = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=instructions::measured",
            "--dump-instr=yes",
            "--dump-line=no",
            "--compress-pos=no",
            "--compress-strings=no",
        ])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(this)
        .args(["--serve", name, &requests.to_string()])
        .output()
        .ok()?;
    let report = String::from_utf8_lossy(&output.stderr);
    let instructions = report
        .lines()
        .find_map(|line| line.split("Collected : ").nth(1))
        .and_then(|count| count.trim().parse().ok())?;
    let atomics = atomic.map_or(0, |atomic| {
        let profile = std::fs::read_to_string(&out).unwrap_or_default();
        executions(&profile, this, atomic)
    });
    let _ = std::fs::remove_file(&out);
    Some(Counts {
        instructions,
        atomics,
    })
}

/// The addresses of this program's atomic instructions, from `objdump -d`: those with a `lock`
/// prefix, and `xchg` with a memory operand (atomic without one).
fn atomic_instructions(this: &Path) -> Option<HashSet<u64>> {
    let output = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(this)
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let addresses = listing
        .lines()
        .filter_map(|line| {
            let (address, instruction) = line.trim_start().split_once(':')?;
            let instruction = instruction.trim_start();
            let atomic = instruction.starts_with("lock ")
                || (instruction.starts_with("xchg") && instruction.contains('('));
            atomic.then(|| u64::from_str_radix(address, 16).ok())?
        })
        .collect::<HashSet<_>>();
    (!addresses.is_empty()).then_some(addresses)
}

/// How often the instructions at `addresses` of `this` program ran, from a callgrind profile
/// written with `--dump-instr=yes --dump-line=no --compress-pos=no --compress-strings=no`: each
/// cost line is an address and its count; the line after a `calls=` line is the call's inclusive
/// cost, not the instruction's own, and `ob=` names the object the addresses belong to.
fn executions(profile: &str, this: &Path, addresses: &HashSet<u64>) -> u64 {
    // Callgrind names objects by their real path.
    let program: PathBuf = std::fs::canonicalize(this).unwrap_or_else(|_| this.to_path_buf());
    let mut in_program = false;
    let mut after_call = false;
    let mut total = 0;
    for line in profile.lines() {
        if let Some(object) = line.strip_prefix("ob=") {
            in_program = Path::new(object.trim()) == program;
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if let Some(cost) = line.strip_prefix("0x") {
            if std::mem::take(&mut after_call) || !in_program {
                continue;
            }
            let mut fields = cost.split_whitespace();
            let address = fields.next().and_then(|a| u64::from_str_radix(a, 16).ok());
            let count = fields.next().and_then(|c| c.parse::<u64>().ok());
            if let (Some(address), Some(count)) = (address, count)
                && addresses.contains(&address)
            {
                total += count;
            }
        }
    }
    total
}
