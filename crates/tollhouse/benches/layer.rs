//! Per-request overhead of the full layer against the same router bare and behind tower_governor.
//!
//! Every request goes through `tower::ServiceExt::oneshot` on an axum `Router` (no sockets) and its
//! body is read to the end, so the layer's settle step (latency, usage record, permit release) is
//! measured too. The tollhouse case runs the complete path: bearer-key identification (SHA-256),
//! route classification, an all-or-nothing admission against 3 limits plus a concurrency permit
//! in the `MemoryStore`, both header families, the usage record and the settlement. tower_governor
//! runs with its headers on (`use_headers`) and a per-key extractor on the same bearer header.
//!
//! ```text
//! cargo bench -p tollhouse --bench layer -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));
    for (name, app) in common::routers() {
        group.bench_with_input(BenchmarkId::new("oneshot", name), &app, |b, app| {
            b.to_async(&runtime).iter(|| common::drive(app.clone()));
        });
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
