//! Initialisation helpers shared by the models.

use burn::module::Param;
use burn::nn::Linear;

/// A linear layer with its bias (if any) set to zero, as GPT-2 initialises them.
pub(crate) fn zero_bias(mut linear: Linear) -> Linear {
    if let Some(bias) = &linear.bias {
        let val = bias.val();
        linear.bias = Some(Param::from_tensor(val.zeros_like()));
    }
    linear
}
