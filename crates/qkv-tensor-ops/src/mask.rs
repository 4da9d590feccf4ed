//! Boolean attention masks. Convention throughout qkv (and Burn): `true` means *hidden*,
//! the query may not look at that key.

use burn::prelude::*;

/// The causal mask for `seq_q` queries against `seq_k` keys, aligned bottom-right.
///
/// Query `i` sits at absolute position `seq_k - seq_q + i`, so it may see keys `0..=that`.
/// With `seq_q == seq_k` this is the usual upper triangle above the diagonal; with
/// `seq_q == 1` (one new token against a KV cache) nothing is hidden. This is the same
/// alignment as Burn's `AttentionModuleOptions::is_causal` and PyTorch's
/// `scaled_dot_product_attention(is_causal=True)` for square inputs.
///
/// # Shapes
/// returns `[seq_q, seq_k]`, `true` where key `j` lies in query `i`'s future.
///
/// # Panics
/// If `seq_q > seq_k`: a query would have no past to align with.
pub fn causal_mask(seq_q: usize, seq_k: usize, device: &Device) -> Tensor<2, Bool> {
    assert!(
        seq_q <= seq_k,
        "causal_mask: {seq_q} queries cannot be aligned against only {seq_k} keys"
    );
    let offset = seq_k - seq_q;
    let hidden: Vec<bool> = (0..seq_q)
        .flat_map(|i| (0..seq_k).map(move |j| j > offset + i))
        .collect();
    Tensor::from_data(TensorData::new(hidden, [seq_q, seq_k]), device)
}

/// A key-padding mask from the real length of each sequence in a batch.
///
/// # Shapes
/// returns `[batch, seq_len]`, `true` at positions `>= lengths[b]` (padding).
///
/// # Panics
/// If a length exceeds `seq_len`.
pub fn padding_mask_from_lengths(
    lengths: &[usize],
    seq_len: usize,
    device: &Device,
) -> Tensor<2, Bool> {
    let hidden: Vec<bool> = lengths
        .iter()
        .flat_map(|&len| {
            assert!(
                len <= seq_len,
                "padding_mask_from_lengths: length {len} exceeds seq_len {seq_len}"
            );
            (0..seq_len).map(move |j| j >= len)
        })
        .collect();
    Tensor::from_data(TensorData::new(hidden, [lengths.len(), seq_len]), device)
}

/// A key-padding mask from token ids: `true` wherever the token equals `pad_id`.
///
/// # Shapes
/// `tokens`: `[batch, seq_len]` -> `[batch, seq_len]`
pub fn padding_mask(tokens: Tensor<2, Int>, pad_id: i64) -> Tensor<2, Bool> {
    tokens.equal_elem(pad_id)
}

/// Combines an optional causal rule and an optional key-padding mask into one mask that
/// broadcasts against attention scores.
///
/// Returns `None` when nothing is hidden, so callers can skip masking entirely.
///
/// # Shapes
/// `key_padding`: `[batch, seq_k]` -> `[batch or 1, 1, seq_q, seq_k]`
pub fn attention_mask(
    seq_q: usize,
    seq_k: usize,
    causal: bool,
    key_padding: Option<Tensor<2, Bool>>,
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let causal = causal.then(|| causal_mask(seq_q, seq_k, device).reshape([1, 1, seq_q, seq_k]));
    let padding = key_padding.map(|pad| {
        let [batch, _] = pad.dims();
        pad.reshape([batch, 1, 1, seq_k])
            .expand([batch, 1, seq_q, seq_k])
    });
    match (causal, padding) {
        (None, None) => None,
        (Some(c), None) => Some(c),
        (None, Some(p)) => Some(p),
        (Some(c), Some(p)) => {
            let shape = p.dims();
            Some(c.expand(shape).bool_or(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkv_test_support::test_on_cpu_backends;

    fn bools<const D: usize>(t: Tensor<D, Bool>) -> Vec<bool> {
        t.into_data().try_into_vec_as::<bool>().unwrap()
    }

    test_on_cpu_backends!(causal_square_hides_the_future, |device: &Device| {
        let m = bools(causal_mask(3, 3, device));
        #[rustfmt::skip]
        let want = [false, true, true,
                    false, false, true,
                    false, false, false];
        assert_eq!(m, want);
    });

    test_on_cpu_backends!(causal_is_bottom_right_aligned, |device: &Device| {
        // Two new queries at absolute positions 3 and 4 against 5 keys.
        let m = bools(causal_mask(2, 5, device));
        #[rustfmt::skip]
        let want = [false, false, false, false, true,
                    false, false, false, false, false];
        assert_eq!(m, want);
        assert!(bools(causal_mask(1, 9, device)).iter().all(|&h| !h));
    });

    test_on_cpu_backends!(padding_from_lengths_and_ids, |device: &Device| {
        let m = bools(padding_mask_from_lengths(&[2, 4, 0], 4, device));
        #[rustfmt::skip]
        let want = [false, false, true, true,
                    false, false, false, false,
                    true, true, true, true];
        assert_eq!(m, want);
        let ids = Tensor::<2, Int>::from_data([[5, 6, 0], [7, 0, 0]], device);
        assert_eq!(
            bools(padding_mask(ids, 0)),
            [false, false, true, false, true, true]
        );
    });

    test_on_cpu_backends!(combined_mask_is_the_union, |device: &Device| {
        let pad = padding_mask_from_lengths(&[3, 2], 3, device);
        let m = attention_mask(3, 3, true, Some(pad), device).unwrap();
        assert_eq!(m.dims(), [2, 1, 3, 3]);
        #[rustfmt::skip]
        let want = [false, true, true,  false, false, true,  false, false, false,
                    false, true, true,  false, false, true,  false, false, true];
        assert_eq!(bools(m), want);
        assert!(attention_mask(4, 4, false, None, device).is_none());
    });
}
