//! Text generation: prompts in, tokens out, one at a time, through the KV cache.

use std::ops::ControlFlow;

use burn::prelude::*;
use qkv_attention::KvCache;

use crate::error::ModelError;
use crate::gpt::Gpt;
use crate::sampling::{Sampling, SplitMix64, sample};

/// What to generate and how.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// How many tokens to add to each prompt at most.
    pub max_new_tokens: usize,
    /// Generation of a prompt stops after it produces one of these (which is kept).
    pub stop_tokens: Vec<u32>,
    /// Greedy or random.
    pub sampling: Sampling,
    /// Reuse keys and values across steps (the default). `false` recomputes the whole
    /// context at every step: slower, for comparison and tests.
    pub use_cache: bool,
    /// Also return the logits behind every chosen token.
    pub keep_logits: bool,
    /// Also record, for every new token, each layer's attention over the context it was
    /// chosen from (see [`Generation::attention`]).
    pub record_attention: bool,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, with the cache, no stop tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            stop_tokens: Vec::new(),
            sampling: Sampling::Greedy,
            use_cache: true,
            keep_logits: false,
            record_attention: false,
        }
    }
}

/// What [`Gpt::generate`] returns, per prompt in the order given.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new tokens of each prompt (not the prompt itself), ending with the stop token
    /// when one was produced.
    pub tokens: Vec<Vec<u32>>,
    /// With `keep_logits`: for each prompt, for each new token, the logits it was chosen
    /// from (`vocab_size` values).
    pub logits: Vec<Vec<Vec<f32>>>,
    /// With `record_attention`: for each prompt, for each new token, for each layer, the
    /// probabilities with which the position that chose it attended to the context,
    /// `[n_heads, context_len]` row-major (the context being the window the model saw).
    pub attention: Vec<Vec<Vec<Vec<f32>>>>,
}

impl Gpt {
    /// Continues each prompt.
    ///
    /// Prompts longer than the block size are cropped from the left. Prompts of equal
    /// length run together as one batch; prompts of different lengths run in groups of equal
    /// length. Each new token is handed to `on_token(prompt_index, token)` as soon as it is
    /// chosen (streaming).
    ///
    /// With the cache, each step feeds one token and computes one row of attention per
    /// layer. Once the context fills the block, the window slides: the positions of every
    /// kept token change, so the cache is rebuilt from the last `block_size` tokens at each
    /// further step, exactly as recomputing would (this is what keeps cached and uncached
    /// generation identical).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Generation, ModelError> {
        self.generate_with(prompts, config, |prompt, token| {
            on_token(prompt, token);
            ControlFlow::Continue(())
        })
    }

    /// [`generate`](Self::generate), where `on_token` also decides whether its prompt goes
    /// on: `ControlFlow::Break(())` ends that prompt's generation after this token (a stop
    /// string, a time limit), as a stop token would. The token is kept in the result.
    pub fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Generation, ModelError> {
        config
            .sampling
            .validate()
            .map_err(ModelError::InvalidInput)?;
        for (i, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "prompt {i} is empty; give at least one token"
                )));
            }
            if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    token: bad as i64,
                    vocab_size: self.vocab_size,
                });
            }
        }
        // One short forward pass per token: keep the CPU pool's other workers awake throughout.
        let _warm = qkv_tensor_ops::pool::KeepWarm::start();
        let seed = match config.sampling {
            Sampling::Random { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        let mut rng = SplitMix64::new(seed);
        let mut tokens = vec![Vec::new(); prompts.len()];
        let mut logits = vec![Vec::new(); prompts.len()];
        let mut attention = vec![Vec::new(); prompts.len()];
        let mut lengths: Vec<usize> = prompts
            .iter()
            .map(|p| p.len().min(self.block_size))
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        for length in lengths {
            let group: Vec<usize> = (0..prompts.len())
                .filter(|&i| prompts[i].len().min(self.block_size) == length)
                .collect();
            let cropped: Vec<Vec<u32>> = group
                .iter()
                .map(|&i| prompts[i][prompts[i].len() - length..].to_vec())
                .collect();
            let out = self.generate_batch(cropped, config, &mut rng, |row, token| {
                on_token(group[row], token)
            })?;
            for (row, &i) in group.iter().enumerate() {
                tokens[i] = out.tokens[row].clone();
                if config.keep_logits {
                    logits[i] = out.logits[row].clone();
                }
                if config.record_attention {
                    attention[i] = out.attention[row].clone();
                }
            }
        }
        Ok(Generation {
            tokens,
            logits,
            attention,
        })
    }

    /// Generation for prompts of one length, as one batch.
    fn generate_batch(
        &self,
        mut contexts: Vec<Vec<u32>>,
        config: &GenerationConfig,
        rng: &mut SplitMix64,
        mut on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Generation, ModelError> {
        let batch = contexts.len();
        let device = self.token_embedding.weight.val().device();
        let mut caches: Vec<KvCache> = self.new_caches();
        let mut done = vec![false; batch];
        let mut out_tokens = vec![Vec::new(); batch];
        let mut out_logits = vec![Vec::new(); batch];
        let mut out_attention: Vec<Vec<Vec<Vec<f32>>>> = vec![Vec::new(); batch];
        let record = config.record_attention;
        let mut next: Option<Vec<u32>> = None; // tokens to feed when continuing the cache
        for _ in 0..config.max_new_tokens {
            let context_len = contexts[0].len();
            let cache_fits = caches[0].len() < self.block_size && next.is_some();
            let (last_logits, probs): (Tensor<3>, Vec<Tensor<4>>) = if config.use_cache
                && cache_fits
            {
                let feed = next.take().expect("checked above");
                let input = tokens_tensor(&[feed], batch, 1, &device, true);
                let out = self.forward_detailed(input, Some(&mut caches), record)?;
                (out.logits, out.attention)
            } else {
                // First step, no cache, or a full window: encode the last block_size tokens.
                let window = context_len.min(self.block_size);
                let rows: Vec<&[u32]> = contexts.iter().map(|c| &c[c.len() - window..]).collect();
                let input = tokens_tensor(&rows, batch, window, &device, false);
                caches = self.new_caches();
                let cache_arg = config.use_cache.then_some(&mut caches[..]);
                let out = self.forward_last(input, cache_arg, record)?;
                let probs = out
                    .attention
                    .into_iter()
                    .map(|p| p.slice(s![.., .., window - 1..window, ..]))
                    .collect();
                (out.logits, probs)
            };
            // Per layer, [batch, n_heads, 1, context] -> per row, per layer, n_heads × context.
            let step_attention: Vec<Vec<f32>> = probs
                .into_iter()
                .map(|p| {
                    p.into_data()
                        .try_into_vec_as::<f32>()
                        .expect("float probabilities")
                })
                .collect();
            let rows: Vec<f32> = last_logits
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("float logits");
            let vocab = self.vocab_size;
            let mut chosen = Vec::with_capacity(batch);
            for row in 0..batch {
                let row_logits = &rows[row * vocab..(row + 1) * vocab];
                let token = sample(row_logits, &config.sampling, rng);
                chosen.push(token);
                contexts[row].push(token);
                if !done[row] {
                    out_tokens[row].push(token);
                    if config.keep_logits {
                        out_logits[row].push(row_logits.to_vec());
                    }
                    if record {
                        let per_row = |layer: &Vec<f32>| {
                            let n = layer.len() / batch;
                            layer[row * n..(row + 1) * n].to_vec()
                        };
                        out_attention[row].push(step_attention.iter().map(per_row).collect());
                    }
                    let broke = on_token(row, token).is_break();
                    done[row] = broke || config.stop_tokens.contains(&token);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            next = Some(chosen);
        }
        Ok(Generation {
            tokens: out_tokens,
            logits: out_logits,
            attention: out_attention,
        })
    }
}

/// Token rows as an `[batch, seq]` Int tensor. `columnwise` reads `rows[0]` as one token
/// per batch row (a decoding step).
fn tokens_tensor<R: AsRef<[u32]>>(
    rows: &[R],
    batch: usize,
    seq: usize,
    device: &Device,
    columnwise: bool,
) -> Tensor<2, Int> {
    let ids: Vec<i64> = if columnwise {
        rows[0].as_ref().iter().map(|&t| t as i64).collect()
    } else {
        rows.iter()
            .flat_map(|r| r.as_ref().iter().map(|&t| t as i64))
            .collect()
    };
    Tensor::from_data(TensorData::new(ids, [batch, seq]), device)
}
