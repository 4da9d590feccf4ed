//! Tests of the model: PyTorch parity, cached generation, weights, configuration.

mod generation;
mod gradients;
mod interp;
mod model;
mod pytorch_parity;
mod recurrent;
mod seq2seq;
mod spectra;
mod weights;

use std::path::PathBuf;

/// The directory of committed fixtures (made by `fixtures/make_fixtures.py`).
pub(crate) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The fixture JSON with the reference batch, losses and generation.
pub(crate) fn reference_json() -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixtures().join("gpt2-tiny-reference.json")).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

pub(crate) use qkv_test_support::temp_dir;
