//! Our layer against Burn's own `nn::attention::MultiHeadAttention` with the same weights.
//!
//! Where they differ, by design: Burn fills masked scores with `min_float = -1e4`, a finite
//! number. For ordinary scores that is indistinguishable from `-inf` (exp underflows to 0),
//! which the first tests check. It differs in two cases: a query whose keys are all masked
//! gets a *uniform* average of all values from Burn and zero from us; and a score above
//! about `1e4 - 88` lets a "masked" key through in Burn. Burn also applies dropout to the
//! weights it returns; we return the probabilities before dropout.

use burn::nn::attention::{
    MhaInput as BurnInput, MultiHeadAttentionConfig as BurnConfig, generate_autoregressive_mask,
};
use burn::prelude::*;
use qkv_tensor_ops::padding_mask_from_lengths;
use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

use super::seeded_layer;
use crate::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};

fn burn_copy(
    ours: &MultiHeadAttention,
    device: &Device,
) -> burn::nn::attention::MultiHeadAttention {
    let mut theirs = BurnConfig::new(ours.d_model, ours.n_heads)
        .with_dropout(0.0)
        .init(device);
    theirs.query = ours.query.clone();
    theirs.key = ours.key.clone();
    theirs.value = ours.value.clone();
    theirs.output = ours.output.clone();
    theirs
}

test_on_cpu_backends!(matches_burn_mha, |device: &Device| {
    let ours = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 31, device);
    let theirs = burn_copy(&ours, device);
    let mut rng = SeededRng::new(32);
    let x = random_tensor(&mut rng, [3, 7, 20], 1.0, device);
    let source = random_tensor(&mut rng, [3, 13, 20], 1.0, device);

    // No mask.
    let a = ours.forward(MhaInput::self_attn(x.clone()).return_probs());
    let b = theirs.forward(BurnInput::self_attn(x.clone()));
    assert_close(
        &values(a.context),
        &values(b.context),
        1e-5,
        "self-attention",
    );
    assert_close(
        &values(a.probs.unwrap()),
        &values(b.weights),
        1e-6,
        "weights",
    );

    // Causal.
    let a = ours.forward(MhaInput::self_attn(x.clone()).causal());
    let b = theirs.forward(
        BurnInput::self_attn(x.clone()).mask_attn(generate_autoregressive_mask(3, 7, device)),
    );
    assert_close(&values(a.context), &values(b.context), 1e-5, "causal");

    // Padding (no sequence fully padded).
    let pad = padding_mask_from_lengths(&[7, 3, 5], 7, device);
    let a = ours.forward(MhaInput::self_attn(x.clone()).key_padding(pad.clone()));
    let b = theirs.forward(BurnInput::self_attn(x.clone()).mask_pad(pad));
    assert_close(&values(a.context), &values(b.context), 1e-5, "padding");

    // Cross-attention.
    let a = ours.forward(MhaInput::cross_attn(x.clone(), source.clone()));
    let b = theirs.forward(BurnInput::new(x, source.clone(), source));
    assert_close(
        &values(a.context),
        &values(b.context),
        1e-5,
        "cross-attention",
    );
});

test_on_cpu_backends!(
    documented_difference_on_fully_masked_rows,
    |device: &Device| {
        let ours = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 33, device);
        let theirs = burn_copy(&ours, device);
        let mut rng = SeededRng::new(34);
        let x = random_tensor(&mut rng, [1, 4, 20], 1.0, device);
        let pad = padding_mask_from_lengths(&[0], 4, device);
        let a = ours.forward(
            MhaInput::self_attn(x.clone())
                .key_padding(pad.clone())
                .return_probs(),
        );
        let b = theirs.forward(BurnInput::self_attn(x).mask_pad(pad));
        // Ours: nothing to attend to, all-zero probabilities. Burn: uniform, 1/4 each.
        assert!(values(a.probs.unwrap()).iter().all(|&p| p == 0.0));
        assert_close(
            &values(b.weights),
            &[0.25; 5 * 4 * 4],
            1e-6,
            "Burn's uniform row",
        );
    }
);
