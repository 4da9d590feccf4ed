//! The KV cache: keys and values of every position already seen, so that decoding one more
//! token costs one row of attention instead of the whole square.

use burn::prelude::*;

/// Keys and values (after projection, and after rotary embedding when it is on) of the
/// positions processed so far, per head.
///
/// For self-attention the cache grows by one row per decoded token: the new token's key and
/// value are appended, and its query attends over all rows. For cross-attention it is filled
/// once from the encoder output on the first call and reused unchanged afterwards.
///
/// A cache belongs to one layer and one batch; start a new one (or [`clear`](Self::clear)
/// it) for a new sequence.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// `[batch, n_heads, len, d_head]`
    pub(crate) keys: Option<Tensor<4>>,
    /// `[batch, n_heads, len, d_head]`
    pub(crate) values: Option<Tensor<4>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Whether nothing is stored yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything stored.
    pub fn clear(&mut self) {
        self.keys = None;
        self.values = None;
    }

    /// The stored keys, `[batch, n_heads, len, d_head]`.
    pub fn keys(&self) -> Option<&Tensor<4>> {
        self.keys.as_ref()
    }

    /// The stored values, `[batch, n_heads, len, d_head]`.
    pub fn values(&self) -> Option<&Tensor<4>> {
        self.values.as_ref()
    }

    /// Keeps only batch rows `indices` (in that order), as beam search needs after it
    /// re-ranks its hypotheses.
    pub fn select_batch(&mut self, indices: Tensor<1, Int>) {
        self.keys = self.keys.take().map(|k| k.select(0, indices.clone()));
        self.values = self.values.take().map(|v| v.select(0, indices));
    }

    /// Appends new rows and returns all keys and values.
    pub(crate) fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let keys = match self.keys.take() {
            Some(old) => Tensor::cat(vec![old, keys], 2),
            None => keys,
        };
        let values = match self.values.take() {
            Some(old) => Tensor::cat(vec![old, values], 2),
            None => values,
        };
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }
}
