//! What every Criterion bench of qkv does: time the suite's workloads whose id starts with a
//! prefix, on each backend of `QKV_BENCH_BACKENDS` (default: flex, ndarray), one group per
//! backend and prefix, throughput in tokens.

use criterion::{Criterion, Throughput};
use qkv_benches::{Workload, bench_backends};

/// Benches every workload whose id is `prefix/…`, named `backend/prefix/…`.
pub fn bench_prefix(c: &mut Criterion, prefix: &str) {
    for backend in bench_backends() {
        let device = backend.check().unwrap_or_else(|e| panic!("{e}"));
        let mut group = c.benchmark_group(format!("{backend}/{prefix}"));
        group.sample_size(10);
        for w in Workload::suite() {
            let id = w.id();
            let Some(label) = id.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            let mut iteration = w.prepare(&device);
            group.throughput(Throughput::Elements(w.tokens_per_iter() as u64));
            group.bench_function(label, |b| b.iter(&mut iteration));
        }
        group.finish();
    }
}
