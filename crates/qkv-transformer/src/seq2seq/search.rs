//! Decoding with a trained [`Seq2Seq`]: greedy over a padded batch, beam search per
//! sentence (both with or without the caches), and the cross-attention of a finished
//! translation.

use burn::prelude::*;

use super::{DecoderCache, Seq2Seq};
use crate::error::ModelError;

/// How [`Seq2Seq::translate`] decodes.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeConfig {
    /// Beams kept per source; 1 is greedy decoding.
    pub beam_width: usize,
    /// GNMT length penalty α: finished hypotheses are ranked by
    /// `log p / ((5 + len) / 6)^α`; 0 ranks by `log p` alone.
    pub length_penalty: f64,
    /// Most tokens to produce (end-of-sequence included); capped by the model's
    /// `max_tgt_len`.
    pub max_len: usize,
    /// Reuse keys and values across steps (default), or recompute the prefix every step.
    pub use_cache: bool,
    /// The id that starts every target.
    pub bos: u32,
    /// The id that ends a target.
    pub eos: u32,
}

impl DecodeConfig {
    /// Greedy decoding with the cache, up to `max_len` tokens.
    pub fn greedy(max_len: usize, bos: u32, eos: u32) -> Self {
        Self {
            beam_width: 1,
            length_penalty: 0.0,
            max_len,
            use_cache: true,
            bos,
            eos,
        }
    }
}

/// One decoded target.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The target tokens, without `<bos>` and without the final `<eos>`.
    pub tokens: Vec<u32>,
    /// Whether the model ended it with `<eos>` (rather than running out of length).
    pub finished: bool,
    /// Summed log-probability of the chosen tokens (`<eos>` included when finished).
    pub log_prob: f64,
}

impl Seq2Seq {
    /// Translates each source (ids ending in `<eos>`, no padding) independently: greedy
    /// when `beam_width` is 1, beam search otherwise. Sources of different lengths may be
    /// given together; greedy decoding runs them as one padded batch, and padding never
    /// changes a sentence's result.
    pub fn translate(
        &self,
        sources: &[Vec<u32>],
        config: &DecodeConfig,
        device: &Device,
    ) -> Result<Vec<Translation>, ModelError> {
        if config.beam_width == 0 {
            return Err(ModelError::InvalidInput(
                "beam_width must be at least 1".into(),
            ));
        }
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = sources.iter().position(Vec::is_empty) {
            return Err(ModelError::InvalidInput(format!("source {i} is empty")));
        }
        if config.beam_width == 1 {
            self.greedy(sources, config, device)
        } else {
            sources
                .iter()
                .map(|s| self.beam_search(s, config, device))
                .collect()
        }
    }

    /// Source ids padded into one batch.
    fn source_batch(&self, sources: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
        let len = sources.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = vec![self.pad_id as i64; sources.len() * len];
        for (b, s) in sources.iter().enumerate() {
            for (i, &t) in s.iter().enumerate() {
                ids[b * len + i] = t as i64;
            }
        }
        Tensor::from_data(TensorData::new(ids, [sources.len(), len]), device)
    }

    /// Log-probabilities of the last position of each row, on the host.
    fn last_log_probs(&self, logits: Tensor<3>) -> Vec<Vec<f64>> {
        let [batch, len, vocab] = logits.dims();
        let last = logits
            .slice([0..batch, len - 1..len, 0..vocab])
            .reshape([batch, vocab]);
        let values = last
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float logits");
        values
            .chunks(vocab)
            .map(|row| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&v| (v as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                row.iter().map(|&v| v as f64 - lse).collect()
            })
            .collect()
    }

    /// Greedy decoding of a padded batch of sources (see [`translate`](Self::translate)).
    pub fn greedy(
        &self,
        sources: &[Vec<u32>],
        config: &DecodeConfig,
        device: &Device,
    ) -> Result<Vec<Translation>, ModelError> {
        let batch = sources.len();
        let encoded = self.encode(self.source_batch(sources, device))?;
        let max_len = config.max_len.min(self.max_tgt_len);
        let mut cache = DecoderCache::default();
        let mut prefix: Vec<Vec<u32>> = vec![vec![config.bos]; batch];
        let mut out: Vec<Translation> = (0..batch)
            .map(|_| Translation {
                tokens: Vec::new(),
                finished: false,
                log_prob: 0.0,
            })
            .collect();
        for _ in 0..max_len {
            let input = if config.use_cache {
                prefix
                    .iter()
                    .map(|p| *p.last().unwrap() as i64)
                    .collect::<Vec<_>>()
            } else {
                prefix.iter().flatten().map(|&t| t as i64).collect()
            };
            let width = if config.use_cache { 1 } else { prefix[0].len() };
            let tgt = Tensor::from_data(TensorData::new(input, [batch, width]), device);
            let cache_ref = config.use_cache.then_some(&mut cache);
            let (logits, _) = self.decode(tgt, &encoded, cache_ref, false)?;
            for (b, row) in self.last_log_probs(logits).into_iter().enumerate() {
                let token = argmax(&row);
                // Finished rows keep decoding (the batch stays rectangular), unrecorded.
                if !out[b].finished {
                    out[b].log_prob += row[token as usize];
                    if token == config.eos {
                        out[b].finished = true;
                    } else {
                        out[b].tokens.push(token);
                    }
                }
                prefix[b].push(token);
            }
            if out.iter().all(|t| t.finished) || prefix[0].len() > max_len {
                break;
            }
        }
        Ok(out)
    }

    /// Beam search over one source (ids ending in `<eos>`), with `config.beam_width` beams
    /// (1 is allowed, and gives exactly what greedy decoding gives). Each step extends every
    /// beam by its `width + 1` best tokens and keeps the `width` best unfinished candidates;
    /// a candidate ending in `<eos>` that ranks among the step's best `width` is set aside
    /// as finished. The search ends when `width`
    /// hypotheses have finished or `max_len` tokens were produced; the best by length-
    /// penalised log-probability is returned.
    pub fn beam_search(
        &self,
        source: &[u32],
        config: &DecodeConfig,
        device: &Device,
    ) -> Result<Translation, ModelError> {
        struct Beam {
            tokens: Vec<u32>,
            log_prob: f64,
        }
        let width = config.beam_width;
        let max_len = config.max_len.min(self.max_tgt_len);
        let penalty = |len: usize| ((5.0 + len as f64) / 6.0).powf(config.length_penalty);
        let mut encoded = self.encode(self.source_batch(&[source.to_vec()], device))?;
        let mut cache = DecoderCache::default();
        let mut alive = vec![Beam {
            tokens: vec![config.bos],
            log_prob: 0.0,
        }];
        let mut finished: Vec<(f64, Translation)> = Vec::new();
        for _ in 0..max_len {
            let n = alive.len();
            let width_now = if config.use_cache {
                1
            } else {
                alive[0].tokens.len()
            };
            let input: Vec<i64> = alive
                .iter()
                .flat_map(|b| {
                    b.tokens[b.tokens.len() - width_now..]
                        .iter()
                        .map(|&t| t as i64)
                })
                .collect();
            let tgt = Tensor::from_data(TensorData::new(input, [n, width_now]), device);
            let cache_ref = config.use_cache.then_some(&mut cache);
            let (logits, _) = self.decode(tgt, &encoded, cache_ref, false)?;
            // Every beam's best `width + 1` continuations, best first; ties go to the
            // earlier beam, then the smaller token id (as greedy's argmax does).
            // (score, beam, rank within the beam, token)
            let mut candidates: Vec<(f64, usize, usize, u32)> = Vec::new();
            for (b, row) in self.last_log_probs(logits).into_iter().enumerate() {
                let mut order: Vec<u32> = (0..row.len() as u32).collect();
                order.sort_by(|&x, &y| row[y as usize].total_cmp(&row[x as usize]).then(x.cmp(&y)));
                for (rank, &t) in order.iter().take(width + 1).enumerate() {
                    candidates.push((alive[b].log_prob + row[t as usize], b, rank, t));
                }
            }
            candidates.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
            let mut next = Vec::new();
            let mut parents = Vec::new();
            // An `<eos>` candidate finishes a hypothesis only when it ranks among the best
            // `width` candidates of the step (so width 1 is exactly greedy); the beams are
            // refilled with the best candidates that do not end.
            for (rank, (log_prob, b, _, t)) in candidates.into_iter().enumerate() {
                if t == config.eos {
                    if rank < width && finished.len() < width {
                        let tokens = alive[b].tokens[1..].to_vec();
                        let score = log_prob / penalty(tokens.len() + 1);
                        finished.push((
                            score,
                            Translation {
                                tokens,
                                finished: true,
                                log_prob,
                            },
                        ));
                    }
                } else if next.len() < width {
                    let mut tokens = alive[b].tokens.clone();
                    tokens.push(t);
                    next.push(Beam { tokens, log_prob });
                    parents.push(b as i64);
                }
                if next.len() == width && finished.len() >= width {
                    break;
                }
            }
            if finished.len() >= width || next.is_empty() {
                alive.clear();
                break;
            }
            let indices = Tensor::<1, Int>::from_data(
                TensorData::new(parents.clone(), [parents.len()]),
                device,
            );
            encoded = encoded.select(indices.clone());
            if config.use_cache {
                cache.select(indices);
            }
            alive = next;
        }
        // Out of length: unfinished beams compete too.
        for beam in alive {
            let tokens = beam.tokens[1..].to_vec();
            let score = beam.log_prob / penalty(tokens.len());
            finished.push((
                score,
                Translation {
                    tokens,
                    finished: false,
                    log_prob: beam.log_prob,
                },
            ));
        }
        finished
            .into_iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.0.total_cmp(&b.0).then(j.cmp(i)))
            .map(|(_, (_, t))| t)
            .ok_or_else(|| ModelError::InvalidInput("max_len must be at least 1".into()))
    }

    /// Every decoder layer's cross-attention while reading `target` (tokens without
    /// `<bos>`/`<eos>`) as the translation of `source`: which source tokens each target
    /// position looked at.
    ///
    /// # Shapes
    /// per layer `[n_heads, target.len() + 1, source.len()]`: row `i` is the step that chose
    /// target token `i` (the last row chose `<eos>`).
    pub fn cross_attention(
        &self,
        source: &[u32],
        target: &[u32],
        bos: u32,
        device: &Device,
    ) -> Result<Vec<Tensor<3>>, ModelError> {
        let encoded = self.encode(self.source_batch(&[source.to_vec()], device))?;
        let mut input = vec![bos as i64];
        input.extend(target.iter().map(|&t| t as i64));
        let len = input.len();
        let tgt = Tensor::from_data(TensorData::new(input, [1, len]), device);
        let (_, cross) = self.decode(tgt, &encoded, None, true)?;
        Ok(cross.into_iter().map(|p| p.squeeze_dim::<3>(0)).collect())
    }
}

/// The index of the largest value (the first, on ties).
fn argmax(row: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
