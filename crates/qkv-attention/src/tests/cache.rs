//! The KV cache: decoding one token at a time equals one causal pass over the whole sequence.

use burn::prelude::*;
use qkv_test_support::{SeededRng, assert_close, random_tensor, test_on_cpu_backends, values};

use super::seeded_layer;
use crate::{KvCache, MhaInput, MultiHeadAttentionConfig};

fn check_step_by_step(device: &Device, config: MultiHeadAttentionConfig, seed: u64) {
    let mha = seeded_layer(&config, seed, device);
    let mut rng = SeededRng::new(seed + 1);
    let (batch, seq) = (3, 13);
    let x = random_tensor(&mut rng, [batch, seq, config.d_model], 1.0, device);
    let full = values(mha.forward(MhaInput::self_attn(x.clone()).causal()).context);

    let mut cache = KvCache::new();
    let mut steps = Vec::new();
    for t in 0..seq {
        let token = x.clone().slice(s![.., t..t + 1, ..]);
        // The causal flag is harmless for one query: it may see every cached key.
        let out = mha
            .forward_cached(MhaInput::self_attn(token).causal(), &mut cache)
            .unwrap();
        assert_eq!(cache.len(), t + 1, "the cache grows by one row per step");
        assert_eq!(
            cache.keys().unwrap().dims(),
            [batch, config.n_heads, t + 1, config.d_head()]
        );
        steps.push(out.context);
    }
    let stepped = values(Tensor::cat(steps, 1));
    assert_close(&stepped, &full, 1e-5, "cached step-by-step vs full causal");
}

test_on_cpu_backends!(
    one_token_at_a_time_equals_full_forward,
    |device: &Device| {
        check_step_by_step(device, MultiHeadAttentionConfig::new(20, 5), 21);
    }
);

test_on_cpu_backends!(one_token_at_a_time_with_rotary, |device: &Device| {
    check_step_by_step(
        device,
        MultiHeadAttentionConfig::new(40, 5).with_rotary_base(Some(10_000.0)),
        22,
    );
});

test_on_cpu_backends!(prefill_then_steps_and_probs, |device: &Device| {
    let config = MultiHeadAttentionConfig::new(40, 5).with_rotary_base(Some(500.0));
    let mha = seeded_layer(&config, 23, device);
    let mut rng = SeededRng::new(24);
    let x = random_tensor(&mut rng, [2, 11, 40], 1.0, device);
    let full = mha.forward(MhaInput::self_attn(x.clone()).causal().return_probs());

    // A 7-token prompt in one chunk, then single tokens.
    let mut cache = KvCache::new();
    let prompt = mha
        .forward_cached(
            MhaInput::self_attn(x.clone().slice(s![.., 0..7, ..])).causal(),
            &mut cache,
        )
        .unwrap();
    let mut pieces = vec![prompt.context];
    let mut last_probs = None;
    for t in 7..11 {
        let token = x.clone().slice(s![.., t..t + 1, ..]);
        let out = mha
            .forward_cached(
                MhaInput::self_attn(token).causal().return_probs(),
                &mut cache,
            )
            .unwrap();
        pieces.push(out.context);
        last_probs = out.probs;
    }
    assert_close(
        &values(Tensor::cat(pieces, 1)),
        &values(full.context),
        1e-5,
        "prefill + steps",
    );
    // The last step's probabilities are the last row of the full ones.
    let want = values(full.probs.unwrap().slice(s![.., .., 10..11, ..]));
    assert_close(
        &values(last_probs.unwrap()),
        &want,
        1e-6,
        "last-row probabilities",
    );
});

test_on_cpu_backends!(cross_attention_cache_is_filled_once, |device: &Device| {
    let mha = seeded_layer(&MultiHeadAttentionConfig::new(20, 5), 25, device);
    let mut rng = SeededRng::new(26);
    let queries = random_tensor(&mut rng, [2, 6, 20], 1.0, device);
    let source = random_tensor(&mut rng, [2, 9, 20], 1.0, device);
    let full = values(
        mha.forward(MhaInput::cross_attn(queries.clone(), source.clone()))
            .context,
    );
    let mut cache = KvCache::new();
    let mut pieces = Vec::new();
    for t in 0..6 {
        let q = queries.clone().slice(s![.., t..t + 1, ..]);
        let out = mha
            .forward_cached(MhaInput::cross_attn(q, source.clone()), &mut cache)
            .unwrap();
        assert_eq!(
            cache.len(),
            9,
            "cross-attention K/V are the source's, computed once"
        );
        pieces.push(out.context);
    }
    assert_close(
        &values(Tensor::cat(pieces, 1)),
        &full,
        1e-5,
        "cached cross-attention",
    );
});
