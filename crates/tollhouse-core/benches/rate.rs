//! A smooth rate beside governor, the peer for smooth rates: one thread, 10,000 orgs (keys), every
//! call admitted.
//!
//! - `tollhouse/memory_admit_settle`: `MemoryStore::admit_now` + `settle_now` for a plan of one
//!   rate and no concurrency limit, the instant read from the clock the layer uses
//!   (`SystemClock`: `SystemTime::now`), as the layer calls them.
//! - `tollhouse/memory_admit_settle_fixed_now`: the same with an instant taken once (no clock
//!   read), to show what the clock costs.
//! - `tollhouse/ledger_admit`: the pure decision on each org's `Ledger`, in a `Vec` (no map, no
//!   lock): the arithmetic's floor.
//! - `governor/check_key`: governor's keyed `RateLimiter::check_key` (its default keyed store, a
//!   `DashMap`, and its default clock, quanta's TSC-based one), keys the org ids.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use tollhouse_core::{
    Charge, Clock, Correction, Dimension, Ledger, Limit, MemoryStore, Org, Plan, Policy, Rate,
    ResolvedOrg, Settlement, SystemClock, Timestamp, Verdict, Window,
};

const ORGS: usize = 10_000;
/// A million a second with a burst of a million: every call is admitted.
const PER_SECOND: u32 = 1_000_000;

fn policy() -> Policy {
    let rate = Rate::new(u64::from(PER_SECOND), Window::Second, None).expect("rate");
    let limit = Limit::with_rate("rate", Dimension::Requests, rate).expect("limit");
    let mut builder = Policy::builder().plan(Plan::new("smooth", vec![limit]).expect("plan"));
    for i in 0..ORGS {
        builder = builder.org(Org::new(format!("org-{i}"), "smooth"));
    }
    builder.build().expect("policy")
}

fn admit_settle(store: &MemoryStore, org: &Arc<ResolvedOrg>, now: Timestamp) {
    let decision = store.admit_now(org, Charge::default(), now);
    let Verdict::Admitted { receipt, .. } = decision.verdict else {
        panic!("the bench plan admits everything")
    };
    store.settle_now(
        org,
        Settlement {
            receipt,
            correction: Correction::default(),
            call: None,
            at: now,
        },
    );
    drop(black_box(decision.permit));
}

fn rate_beside_governor(c: &mut Criterion) {
    let policy = policy();
    let orgs: Vec<Arc<ResolvedOrg>> = (0..ORGS)
        .map(|i| Arc::clone(policy.org(&format!("org-{i}")).expect("org")))
        .collect();
    let mut group = c.benchmark_group("rate_10000_orgs_1_thread");
    group.throughput(Throughput::Elements(1));

    let store = MemoryStore::new();
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("tollhouse", "memory_admit_settle"), |b| {
        b.iter(|| {
            i = (i + 1) % ORGS;
            admit_settle(&store, &orgs[i], SystemClock.now());
        })
    });
    let store = MemoryStore::new();
    let now = SystemClock.now();
    group.bench_function(
        BenchmarkId::new("tollhouse", "memory_admit_settle_fixed_now"),
        |b| {
            b.iter(|| {
                i = (i + 1) % ORGS;
                admit_settle(&store, &orgs[i], now);
            })
        },
    );
    let mut ledgers: Vec<Ledger> = orgs.iter().map(|org| Ledger::new(org)).collect();
    group.bench_function(BenchmarkId::new("tollhouse", "ledger_admit"), |b| {
        b.iter(|| {
            i = (i + 1) % ORGS;
            black_box(ledgers[i].admit(&orgs[i], Charge::default(), now));
        })
    });

    let per_second = NonZeroU32::new(PER_SECOND).expect("non-zero");
    let limiter = RateLimiter::keyed(Quota::per_second(per_second));
    let keys: Vec<String> = (0..ORGS).map(|i| format!("org-{i}")).collect();
    group.bench_function(BenchmarkId::new("governor", "check_key"), |b| {
        b.iter(|| {
            i = (i + 1) % ORGS;
            black_box(limiter.check_key(&keys[i]).is_ok());
        })
    });
    group.finish();
}

criterion_group!(benches, rate_beside_governor);
criterion_main!(benches);
