//! Generation speed of the shakespeare-char model (4 layers, 4 heads, 128 wide, block 64,
//! vocabulary 65): 500 new tokens from a one-token prompt, greedy, batch 1, with the KV
//! cache and without it (recomputing the whole context every step). Throughput is in
//! tokens. Random weights: speed does not depend on what the model has learned.

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkv_benches::{cpu_backends, sync};
use qkv_transformer::{GenerationConfig, GptConfig};

const NEW_TOKENS: usize = 500;
const VOCAB: usize = 65;

fn generation(c: &mut Criterion) {
    for (name, device) in cpu_backends() {
        device.seed(0);
        let model = GptConfig::shakespeare_char(VOCAB).init(&device);
        let mut group = c.benchmark_group(format!("{name}_generate_shakespeare_char"));
        group.throughput(Throughput::Elements(NEW_TOKENS as u64));
        group.sample_size(10);
        for use_cache in [true, false] {
            let config = GenerationConfig {
                use_cache,
                ..GenerationConfig::greedy(NEW_TOKENS)
            };
            let label = if use_cache { "kv_cache" } else { "no_cache" };
            group.bench_function(label, |b| {
                b.iter(|| {
                    let out = model
                        .generate(&[vec![0]], &config, |_, _| {})
                        .expect("generation");
                    sync(&device);
                    out
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, generation);
criterion_main!(benches);
