//! Bad configurations and bad input shapes get an error that names the mismatch.

use burn::prelude::*;

use crate::{AttentionError, KvCache, MhaInput, MultiHeadAttentionConfig};

fn device() -> Device {
    qkv_test_support::flex()
}

#[test]
fn heads_must_divide_width() {
    let err = MultiHeadAttentionConfig::new(30, 4)
        .try_init(&device())
        .unwrap_err();
    assert_eq!(
        err,
        AttentionError::HeadsDoNotDivide {
            d_model: 30,
            n_heads: 4
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("d_model (30)") && message.contains("n_heads (4)"),
        "{message}"
    );
}

#[test]
#[should_panic(expected = "d_model (30) is not divisible by n_heads (4)")]
fn init_panics_with_the_message() {
    let _ = MultiHeadAttentionConfig::new(30, 4).init(&device());
}

#[test]
fn other_bad_configs() {
    let d = device();
    for (config, needle) in [
        (MultiHeadAttentionConfig::new(0, 1), "at least 1"),
        (MultiHeadAttentionConfig::new(8, 0), "at least 1"),
        (
            MultiHeadAttentionConfig::new(15, 5).with_rotary_base(Some(1e4)),
            "even",
        ),
        (
            MultiHeadAttentionConfig::new(8, 2).with_dropout(1.0),
            "dropout",
        ),
        (
            MultiHeadAttentionConfig::new(8, 2).with_rotary_base(Some(f64::NAN)),
            "rotary_base",
        ),
    ] {
        let message = config.try_init(&d).unwrap_err().to_string();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[test]
fn wrong_widths_and_shapes_are_named() {
    let d = device();
    let mha = MultiHeadAttentionConfig::new(8, 2).init(&d);
    let err = mha
        .try_forward(MhaInput::self_attn(Tensor::zeros([2, 3, 6], &d)))
        .unwrap_err();
    assert_eq!(
        err,
        AttentionError::WidthMismatch {
            input: "query",
            got: 6,
            expected: 8
        }
    );
    assert!(err.to_string().contains("[batch, seq, 8]"));

    let q = Tensor::<3>::zeros([2, 3, 8], &d);
    let err = mha
        .try_forward(MhaInput::cross_attn(
            q.clone(),
            Tensor::zeros([2, 5, 7], &d),
        ))
        .unwrap_err();
    assert_eq!(
        err,
        AttentionError::WidthMismatch {
            input: "source",
            got: 7,
            expected: 8
        }
    );

    let err = mha
        .try_forward(MhaInput::cross_attn(
            q.clone(),
            Tensor::zeros([4, 5, 8], &d),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("different batch sizes"), "{err}");

    let bad_pad = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; 8], [2, 4]), &d);
    let err = mha
        .try_forward(MhaInput::self_attn(q.clone()).key_padding(bad_pad))
        .unwrap_err();
    assert!(
        err.to_string().contains("[2, 4]") && err.to_string().contains("[2, 3]"),
        "{err}"
    );

    let err = mha
        .try_forward(MhaInput::self_attn(Tensor::zeros([2, 0, 8], &d)))
        .unwrap_err();
    assert_eq!(err, AttentionError::EmptySequence { input: "query" });

    let err = mha
        .try_forward(MhaInput::cross_attn(q.clone(), Tensor::zeros([2, 2, 8], &d)).causal())
        .unwrap_err();
    assert!(err.to_string().contains("at least as many keys"), "{err}");

    let mut cache = KvCache::new();
    mha.forward_cached(MhaInput::self_attn(q), &mut cache)
        .unwrap();
    let err = mha
        .forward_cached(
            MhaInput::self_attn(Tensor::zeros([3, 1, 8], &d)),
            &mut cache,
        )
        .unwrap_err();
    assert!(err.to_string().contains("another batch size"), "{err}");
}

#[test]
#[should_panic(expected = "has width 6 in its last dimension, but this layer has d_model = 8")]
fn forward_panics_with_the_message() {
    let d = device();
    let mha = MultiHeadAttentionConfig::new(8, 2).init(&d);
    let _ = mha.forward(MhaInput::self_attn(Tensor::zeros([2, 3, 6], &d)));
}
