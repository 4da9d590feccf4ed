//! The qkv benchmark suite, defined once: each [`Workload`] (attention, one training step,
//! generation) builds its inputs on a device and hands back a closure that runs one
//! iteration and waits for the device. The Criterion benches in `benches/` and
//! `cargo xtask bench` both time these closures, so they measure the same work; the PyTorch
//! peer in `benches/pytorch/bench.py` mirrors each workload by its [`Workload::id`].

use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::Distribution;
use qkv_attention::{MhaInput, MultiHeadAttentionConfig};
use qkv_tensor_ops::fused::{gpu_kernels_serve, with_dropout_seeds};
use qkv_trainer::optim::{AdamW, AdamWSettings};
use qkv_trainer::{MixedPrecision, Precision, train_step_mixed};
use qkv_transformer::{GenerationConfig, Gpt, GptConfig, cross_entropy};

pub use qkv_backends::{Backend, MachineInfo, sync};

/// Sequence lengths of the attention benchmarks.
pub const ATTENTION_SEQ_LENS: [usize; 3] = [64, 256, 1024];
/// Model widths of the attention benchmarks (64-wide heads: 2, 6 and 12 heads).
pub const ATTENTION_D_MODELS: [usize; 3] = [128, 384, 768];
/// Width of one attention head in the attention benchmarks.
pub const ATTENTION_D_HEAD: usize = 64;
/// Matrix products `[m, k] · [k, n]` of the matmul benchmarks, as `(m, k, n)`: the 4/4/128
/// step's projections (768 rows: 12 sequences of 64) forward and backward, the 6/6/384 step's
/// MLP (16,384 rows), and one large square product.
pub const MATMUL_SHAPES: [(usize, usize, usize); 5] = [
    (768, 128, 384),
    (768, 128, 512),
    (768, 512, 128),
    (16384, 384, 1536),
    (2048, 2048, 2048),
];
/// Vocabulary of the character-level Shakespeare models (65 distinct characters).
pub const SHAKESPEARE_VOCAB: usize = 65;

/// One of nanoGPT's two shakespeare-char training recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// The CPU recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0.
    ShakespeareChar,
    /// The GPU recipe: 6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2.
    ShakespeareCharGpu,
}

impl Recipe {
    /// The model configuration.
    pub fn model(self) -> GptConfig {
        match self {
            Recipe::ShakespeareChar => GptConfig::shakespeare_char(SHAKESPEARE_VOCAB),
            Recipe::ShakespeareCharGpu => GptConfig::shakespeare_char_gpu(SHAKESPEARE_VOCAB),
        }
    }

    /// Sequences per batch.
    pub fn batch_size(self) -> usize {
        match self {
            Recipe::ShakespeareChar => 12,
            Recipe::ShakespeareCharGpu => 64,
        }
    }

    fn id(self) -> &'static str {
        match self {
            Recipe::ShakespeareChar => "4x4x128_b12_t64",
            Recipe::ShakespeareCharGpu => "6x6x384_b64_t256",
        }
    }
}

/// One benchmark: what it runs, independent of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Causal multi-head self-attention (Q, K, V and output projections included), batch 1,
    /// forward only on a device without autodiff.
    AttentionForward {
        /// Sequence length.
        seq: usize,
        /// Model width.
        d_model: usize,
    },
    /// The same attention, forward and backward to the input and weights, on an autodiff
    /// device.
    AttentionForwardBackward {
        /// Sequence length.
        seq: usize,
        /// Model width.
        d_model: usize,
    },
    /// One matrix product `[m, k] · [k, n]` of random values, on a device without autodiff.
    Matmul {
        /// Rows of the left factor and of the result.
        m: usize,
        /// The shared dimension.
        k: usize,
        /// Columns of the right factor and of the result.
        n: usize,
    },
    /// One full optimisation step of a recipe: forward, cross-entropy, backward, global-norm
    /// clipping at 1.0 and AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1), on a fixed
    /// random batch.
    TrainStep(Recipe),
    /// Greedy generation with the shakespeare-char model (random weights), batch 1, from a
    /// one-token prompt until the 64-token block is full: 63 new tokens per iteration.
    Generate {
        /// With the KV cache (one new row of attention per token), or recomputing the whole
        /// context at every step.
        kv_cache: bool,
    },
}

/// New tokens per iteration of [`Workload::Generate`].
pub const GENERATE_NEW_TOKENS: usize = 63;

impl Workload {
    /// Every benchmark of the suite, in report order.
    pub fn suite() -> Vec<Workload> {
        let mut out = Vec::new();
        for backward in [false, true] {
            for d_model in ATTENTION_D_MODELS {
                for seq in ATTENTION_SEQ_LENS {
                    out.push(if backward {
                        Workload::AttentionForwardBackward { seq, d_model }
                    } else {
                        Workload::AttentionForward { seq, d_model }
                    });
                }
            }
        }
        for (m, k, n) in MATMUL_SHAPES {
            out.push(Workload::Matmul { m, k, n });
        }
        out.push(Workload::TrainStep(Recipe::ShakespeareChar));
        out.push(Workload::TrainStep(Recipe::ShakespeareCharGpu));
        out.push(Workload::Generate { kv_cache: true });
        out.push(Workload::Generate { kv_cache: false });
        out
    }

    /// A stable name, shared with the PyTorch peer, such as `attention_fwd/d384/seq256`,
    /// `train_step/4x4x128_b12_t64` or `generate/kv_cache`.
    pub fn id(&self) -> String {
        match self {
            Workload::AttentionForward { seq, d_model } => {
                format!("attention_fwd/d{d_model}/seq{seq}")
            }
            Workload::AttentionForwardBackward { seq, d_model } => {
                format!("attention_fwd_bwd/d{d_model}/seq{seq}")
            }
            Workload::Matmul { m, k, n } => format!("matmul/{m}x{k}x{n}"),
            Workload::TrainStep(recipe) => format!("train_step/{}", recipe.id()),
            Workload::Generate { kv_cache: true } => "generate/kv_cache".into(),
            Workload::Generate { kv_cache: false } => "generate/no_cache".into(),
        }
    }

    /// Tokens one iteration produces or consumes, for a throughput figure.
    pub fn tokens_per_iter(&self) -> usize {
        match *self {
            Workload::AttentionForward { seq, .. }
            | Workload::AttentionForwardBackward { seq, .. } => seq,
            Workload::Matmul { m, .. } => m,
            Workload::TrainStep(r) => r.batch_size() * r.model().block_size,
            Workload::Generate { .. } => GENERATE_NEW_TOKENS,
        }
    }

    /// How many timed iterations are worth running: heavy workloads get fewer.
    pub fn plan(&self, quick: bool) -> Plan {
        let heavy = matches!(self, Workload::TrainStep(Recipe::ShakespeareCharGpu));
        match (heavy, quick) {
            (true, true) => Plan::new(1, 2, Duration::ZERO),
            (true, false) => Plan::new(1, 3, Duration::ZERO),
            (false, true) => Plan::new(2, 5, Duration::from_millis(500)),
            (false, false) => Plan::new(3, 10, Duration::from_secs(2)),
        }
    }

    /// Builds the inputs on `device` and returns a closure that runs one iteration and waits
    /// for the device to finish it. Models use random weights: speed does not depend on
    /// what a model has learned.
    pub fn prepare(&self, device: &Device) -> Box<dyn FnMut()> {
        self.prepare_in(device, Precision::F32)
    }

    /// [`Self::prepare`], with a training step computing in `precision` (f32 weights and
    /// AdamW, see `qkv_trainer::precision`); the other workloads are always f32.
    pub fn prepare_in(&self, device: &Device, precision: Precision) -> Box<dyn FnMut()> {
        device.seed(0);
        match *self {
            Workload::AttentionForward { seq, d_model } => {
                attention(device.clone(), seq, d_model, false)
            }
            Workload::AttentionForwardBackward { seq, d_model } => {
                attention(device.clone().autodiff(), seq, d_model, true)
            }
            Workload::Matmul { m, k, n } => matmul(device.clone(), m, k, n),
            Workload::TrainStep(recipe) => train_step(device, recipe, precision),
            Workload::Generate { kv_cache } => generate(device, kv_cache),
        }
    }

    /// Floating-point operations of one iteration, where they are simple to count (matrix
    /// products: `2·m·k·n`), for a GFLOP/s figure.
    pub fn flops_per_iter(&self) -> Option<f64> {
        match *self {
            Workload::Matmul { m, k, n } => Some(2.0 * (m * k * n) as f64),
            _ => None,
        }
    }
}

fn matmul(device: Device, m: usize, k: usize, n: usize) -> Box<dyn FnMut()> {
    let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
    Box::new(move || {
        // The product the model's linear layers run (`qkv-gemm` on Flex, Burn's elsewhere).
        let c = qkv_tensor_ops::fused::matmul(a.clone(), b.clone());
        sync(&device);
        drop(c);
    })
}

fn attention(device: Device, seq: usize, d_model: usize, backward: bool) -> Box<dyn FnMut()> {
    let mha = MultiHeadAttentionConfig::new(d_model, d_model / ATTENTION_D_HEAD).init(&device);
    let x = Tensor::<3>::random([1, seq, d_model], Distribution::Normal(0.0, 1.0), &device);
    Box::new(move || {
        let input = if backward {
            x.clone().require_grad()
        } else {
            x.clone()
        };
        let out = mha
            .forward(MhaInput::self_attn(input.clone()).causal())
            .context;
        if backward {
            let grads = out.sum().backward();
            let g = input.grad(&grads).expect("input gradient");
            sync(&device);
            drop(g);
        } else {
            sync(&device);
        }
    })
}

/// One training step: the trainer's own [`train_step_mixed`], in `precision`.
fn train_step(device: &Device, recipe: Recipe, precision: Precision) -> Box<dyn FnMut()> {
    let device = device.clone().autodiff();
    let config = recipe.model();
    let (batch, block) = (recipe.batch_size(), config.block_size);
    let mut model: Option<Gpt> = Some(config.init(&device));
    let draw = |device: &Device| {
        Tensor::<2, Int>::random(
            [batch, block],
            Distribution::Uniform(0.0, SHAKESPEARE_VOCAB as f64),
            device,
        )
    };
    let (x, y) = (draw(&device), draw(&device));
    let mut adamw = AdamW::new(AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    // As the trainer does on a GPU, dropout's seeds come from a host stream (one per
    // iteration) rather than from the device, which would wait for it at every dropout.
    let on_gpu = gpu_kernels_serve(&device);
    let mut mixed = MixedPrecision::new(precision);
    let mut iteration = 0u64;
    Box::new(move || {
        let m = model.take().expect("model");
        let step = || {
            train_step_mixed(m, &mut adamw, &mut mixed, 1, 1e-3, 1.0, |m| {
                Ok(cross_entropy(m.forward(x.clone()), y.clone(), None))
            })
        };
        iteration += 1;
        let result = if on_gpu {
            with_dropout_seeds(iteration, step)
        } else {
            step()
        };
        let (m, report) = result.expect("training step");
        // An f16 step whose gradients overflow is skipped (and the scale halved), as in
        // training: it did the same work.
        assert!(
            report.applied || report.overflowed,
            "the benchmark's step diverged"
        );
        sync(&device);
        model = Some(m);
    })
}

fn generate(device: &Device, kv_cache: bool) -> Box<dyn FnMut()> {
    let model = GptConfig::shakespeare_char(SHAKESPEARE_VOCAB).init(device);
    let config = GenerationConfig {
        use_cache: kv_cache,
        ..GenerationConfig::greedy(GENERATE_NEW_TOKENS)
    };
    let device = device.clone();
    Box::new(move || {
        let out = model
            .generate(&[vec![0]], &config, |_, _| {})
            .expect("generation");
        assert_eq!(out.tokens[0].len(), GENERATE_NEW_TOKENS);
        sync(&device);
    })
}

/// How long to time a workload: warm-up iterations (not timed: they compile kernels and
/// fill caches), then at least `min_samples` timed ones, more while `budget` lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations at least.
    pub min_samples: usize,
    /// Keep timing until this much time has passed (at most 10 × `min_samples` iterations).
    pub budget: Duration,
}

impl Plan {
    /// A plan.
    pub fn new(warmup: usize, min_samples: usize, budget: Duration) -> Self {
        Self {
            warmup,
            min_samples,
            budget,
        }
    }
}

/// Timings of one workload, in milliseconds per iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// The median iteration.
    pub median_ms: f64,
    /// The fastest iteration.
    pub min_ms: f64,
    /// The slowest iteration.
    pub max_ms: f64,
    /// How many iterations were timed.
    pub samples: usize,
}

impl Stats {
    /// Summarises iteration times (at least one).
    pub fn from_samples(mut ms: Vec<f64>) -> Self {
        assert!(!ms.is_empty(), "no samples");
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median_ms = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Self {
            median_ms,
            min_ms: ms[0],
            max_ms: ms[n - 1],
            samples: n,
        }
    }
}

/// Times `iteration` (which must wait for its device itself) under `plan`.
pub fn measure(plan: Plan, mut iteration: impl FnMut()) -> Stats {
    for _ in 0..plan.warmup {
        iteration();
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < plan.min_samples
        || (started.elapsed() < plan.budget && samples.len() < plan.min_samples * 10)
    {
        let t0 = Instant::now();
        iteration();
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Stats::from_samples(samples)
}

/// The backends Criterion benches run on: `QKV_BENCH_BACKENDS` (comma-separated), else the
/// CPU backends flex and ndarray.
pub fn bench_backends() -> Vec<Backend> {
    match std::env::var("QKV_BENCH_BACKENDS") {
        Ok(list) => qkv_backends::parse_list(&list).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => vec![Backend::Flex, Backend::Ndarray],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_median_of_odd_and_even_counts() {
        let s = Stats::from_samples(vec![3.0, 1.0, 2.0]);
        assert_eq!(
            (s.median_ms, s.min_ms, s.max_ms, s.samples),
            (2.0, 1.0, 3.0, 3)
        );
        assert_eq!(Stats::from_samples(vec![4.0, 1.0, 2.0, 3.0]).median_ms, 2.5);
    }

    #[test]
    fn suite_ids_are_unique_and_cover_the_issue_grid() {
        let suite = Workload::suite();
        let mut ids: Vec<String> = suite.iter().map(Workload::id).collect();
        assert_eq!(ids.len(), 9 * 2 + MATMUL_SHAPES.len() + 2 + 2);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), suite.len());
        assert!(ids.contains(&"attention_fwd_bwd/d768/seq1024".to_string()));
    }

    #[test]
    fn measure_runs_warmup_then_at_least_the_minimum() {
        let mut calls = 0;
        let stats = measure(Plan::new(2, 3, Duration::ZERO), || calls += 1);
        assert_eq!((calls, stats.samples), (5, 3));
    }

    #[test]
    fn every_light_workload_runs_one_iteration_on_flex() {
        let device = Backend::Flex.device();
        for w in [
            Workload::AttentionForward {
                seq: 64,
                d_model: 128,
            },
            Workload::AttentionForwardBackward {
                seq: 64,
                d_model: 128,
            },
            Workload::Matmul {
                m: 96,
                k: 32,
                n: 48,
            },
            Workload::TrainStep(Recipe::ShakespeareChar),
            Workload::Generate { kv_cache: true },
            Workload::Generate { kv_cache: false },
        ] {
            (w.prepare(&device))();
        }
    }
}
