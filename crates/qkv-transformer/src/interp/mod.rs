//! Looking inside a trained [`Gpt`](crate::Gpt): hook points and an activation cache, the
//! logit lens, activation patching and direct logit attribution; and hook points on the
//! encoder–decoder ([`Seq2SeqPoint`]).
//!
//! Everything here runs the model through [`Gpt::run_with_hooks`](crate::Gpt::run_with_hooks),
//! which reads or replaces any named activation ([`HookPoint`]) and records only the ones
//! asked for. The plain [`Gpt::forward`](crate::Gpt::forward) is untouched by it.
//!
//! - [`logit_lens`]: the residual stream after every layer, read as next-token logits.
//! - [`run_patched`] and [`activation_patching`]: an activation of a clean prompt put into
//!   the run of a corrupted one, and how much of the clean answer it brings back.
//! - [`spectra`]: the singular values of each head's Query and Key matrices, how aligned
//!   they are, and the eigenvalues of the bilinear form `W_Q W_Kᵀ` that makes its scores.
//! - [`gpt_position_gradients`], [`recurrent_position_gradients`]: how much of the loss's
//!   gradient reaches each layer at each position.
//! - [`direct_logit_attribution`]: the logit of a token split into what the embeddings,
//!   each head, each attention bias and each MLP write towards it.

mod attribution;
mod gpt;
mod gradients;
mod hooks;
mod lens;
mod patch;
mod seq2seq;
pub mod spectra;

pub use attribution::{Attribution, direct_logit_attribution};
pub use gradients::{PositionGradients, gpt_position_gradients, recurrent_position_gradients};
pub use hooks::{Activation, ActivationCache, HookPoint, Hooks, Point};
pub use lens::{LensReport, LensToken, logit_lens, logit_lens_report};
pub use patch::{Patch, PatchingResult, activation_patching, logit_difference, run_patched};
pub use seq2seq::{DecoderPoint, EncoderPoint, Seq2SeqPoint};

use burn::prelude::*;

use crate::error::ModelError;
use crate::gpt::Gpt;

/// Token ids as a `[1, seq]` tensor on `device`, each checked against the vocabulary.
pub(crate) fn prompt_tensor(
    model: &Gpt,
    ids: &[u32],
    device: &Device,
) -> Result<Tensor<2, Int>, ModelError> {
    for &id in ids {
        check_vocab(model, id, "token id")?;
    }
    let data = TensorData::new(
        ids.iter().map(|&t| t as i64).collect::<Vec<_>>(),
        [1, ids.len()],
    );
    Ok(Tensor::from_data(data, device))
}

/// Errors unless `id` is in the model's vocabulary; `what` names it in the message.
pub(crate) fn check_vocab(model: &Gpt, id: u32, what: &str) -> Result<(), ModelError> {
    if (id as usize) < model.vocab_size {
        return Ok(());
    }
    Err(ModelError::InvalidInput(format!(
        "{what} {id} is outside the vocabulary (vocab_size {})",
        model.vocab_size
    )))
}

/// The model's device (that of its token embedding).
pub(crate) fn model_device(model: &Gpt) -> Device {
    model.token_embedding.weight.val().device()
}
