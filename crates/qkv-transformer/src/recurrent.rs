//! Recurrent language models, LSTM and GRU, on Burn's recurrent layers: the architecture
//! attention replaced, kept as a baseline to measure it against (`cargo xtask compare`).
//!
//! ```text
//! tokens [batch, seq]
//!   -> token_embedding                                   seq × [batch, d_model]
//!   -> n_layers × (LSTM | GRU), one time step after another
//!   -> ln_f -> lm_head                                   [batch, seq, vocab_size]
//! ```
//!
//! The parameters are those of Burn's [`Lstm`] and [`Gru`] (and their weight names), and the
//! cell equations are theirs; the time loop is ours. Burn's layers slice one step out of a
//! `[batch, seq, d]` tensor and assign each output back into one, and under autodiff every
//! such slice and assignment costs a full `[batch, seq, d]` tensor on the way back: training
//! time grows with `seq²`. Here each time step is its own `[batch, d]` tensor from the
//! embedding on, the four (LSTM) or three (GRU) gates of a step are one matrix product, and
//! only the last layer's outputs are stacked. The tests check that the results and every
//! gradient equal Burn's own `forward`.
//!
//! Every step depends on the previous one, so a sequence of `seq` tokens takes `seq`
//! dependent steps per layer, where a transformer layer takes one; that is the parallelism
//! claim `cargo xtask compare` measures.

use burn::module::Module;
use burn::nn::{
    Embedding, EmbeddingConfig, GateController, Gru, GruConfig, Linear, LinearConfig, Lstm,
    LstmConfig,
};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, tanh};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::norm::LayerNorm;

/// Which recurrent cell a [`RecurrentLm`] stacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecurrentCell {
    /// Long short-term memory (Hochreiter & Schmidhuber, 1997): input, forget, cell and
    /// output gates, a cell state beside the hidden state.
    #[default]
    Lstm,
    /// Gated recurrent unit (Cho et al., 2014): update, reset and new gates, reset applied
    /// after the hidden product (as in PyTorch).
    Gru,
}

impl RecurrentCell {
    /// `lstm` or `gru`.
    pub fn name(self) -> &'static str {
        match self {
            RecurrentCell::Lstm => "lstm",
            RecurrentCell::Gru => "gru",
        }
    }
}

/// The shape of a [`RecurrentLm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrentConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the embedding and of every hidden state.
    pub d_model: usize,
    /// Recurrent layers stacked.
    pub n_layers: usize,
    /// LSTM or GRU.
    pub cell: RecurrentCell,
}

impl RecurrentConfig {
    /// Checks every size against the bounds of [`crate::limits`].
    pub fn validate(&self) -> Result<(), ModelError> {
        use crate::limits::{MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
        let check = |value: usize, max: usize, what: &str| {
            if value == 0 || value > max {
                Err(ModelError::InvalidConfig(format!(
                    "{what} must be in 1..={max}, got {value}"
                )))
            } else {
                Ok(())
            }
        };
        check(self.vocab_size, MAX_VOCAB, "vocab_size")?;
        check(self.d_model, MAX_WIDTH, "d_model")?;
        check(self.n_layers, MAX_LAYERS, "n_layers")
    }

    /// Learned parameters: the embedding, each layer's gates (input and hidden weights and
    /// biases), the final LayerNorm and the head.
    pub fn parameter_count(&self) -> u128 {
        let d = self.d_model as u128;
        let v = self.vocab_size as u128;
        let gates = match self.cell {
            RecurrentCell::Lstm => 4,
            RecurrentCell::Gru => 3,
        };
        v * d + self.n_layers as u128 * gates * (2 * d * d + 2 * d) + 2 * d + d * v + v
    }

    /// A freshly initialised model (Burn's initialisation of each layer), after
    /// [`validate`](Self::validate) and a check that its weights fit in memory.
    pub fn try_init(&self, device: &Device) -> Result<RecurrentLm, ModelError> {
        self.validate()?;
        crate::limits::ensure_fits(
            self.parameter_count()
                .saturating_mul(4)
                .min(u64::MAX as u128) as u64,
            "this recurrent model's weights",
            "lower d_model or n_layers",
        )?;
        let d = self.d_model;
        let (lstm, gru) = match self.cell {
            RecurrentCell::Lstm => (
                (0..self.n_layers)
                    .map(|_| LstmConfig::new(d, d, true).init(device))
                    .collect(),
                Vec::new(),
            ),
            RecurrentCell::Gru => (
                Vec::new(),
                (0..self.n_layers)
                    .map(|_| GruConfig::new(d, d, true).init(device))
                    .collect(),
            ),
        };
        Ok(RecurrentLm {
            token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
            lstm,
            gru,
            ln_f: LayerNorm::new(d, 1e-5, true, device),
            lm_head: LinearConfig::new(d, self.vocab_size).init(device),
            vocab_size: self.vocab_size,
        })
    }
}

/// A stack of LSTM or GRU layers with an embedding and an LM head. See the
/// [module documentation](self).
#[derive(Module, Debug)]
pub struct RecurrentLm {
    /// Token embedding `[vocab_size, d_model]`.
    pub token_embedding: Embedding,
    /// The LSTM layers (empty for a GRU model).
    pub lstm: Vec<Lstm>,
    /// The GRU layers (empty for an LSTM model).
    pub gru: Vec<Gru>,
    /// LayerNorm on the last layer's hidden states.
    pub ln_f: LayerNorm,
    /// The LM head `[d_model, vocab_size]`.
    pub lm_head: Linear,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
}

impl RecurrentLm {
    /// Recurrent layers stacked.
    pub fn n_layers(&self) -> usize {
        self.lstm.len() + self.gru.len()
    }

    /// Next-token logits.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` -> `[batch, seq, vocab_size]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.forward_probed(tokens, &mut |_, _, x| x)
    }

    /// [`forward`](Self::forward) with every layer's input at every time step passed through
    /// `probe(layer, position, x)` (layer `n_layers` is the input of the final LayerNorm):
    /// the place to add a perturbation and read the gradient that reaches it.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` -> `[batch, seq, vocab_size]`
    /// - `x` handed to `probe`: `[batch, d_model]`, and it must return that shape.
    pub fn forward_probed(
        &self,
        tokens: Tensor<2, Int>,
        probe: &mut dyn FnMut(usize, usize, Tensor<2>) -> Tensor<2>,
    ) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        // Each position embedded on its own, so that no step is a slice of a larger tensor
        // (see the module documentation).
        let mut steps: Vec<Tensor<2>> = (0..seq)
            .map(|t| {
                let ids = tokens.clone().slice([0..batch, t..t + 1]);
                let x = self.token_embedding.forward(ids);
                let d = x.dims()[2];
                x.reshape([batch, d])
            })
            .collect();
        for (layer, lstm) in self.lstm.iter().enumerate() {
            let input = probe_all(steps, layer, probe);
            steps = lstm_steps(lstm, input);
        }
        for (layer, gru) in self.gru.iter().enumerate() {
            let input = probe_all(steps, layer, probe);
            steps = gru_steps(gru, input);
        }
        let last = probe_all(steps, self.n_layers(), probe);
        let hidden = Tensor::stack::<3>(last, 1);
        self.lm_head.forward(self.ln_f.forward(hidden))
    }
}

fn probe_all(
    steps: Vec<Tensor<2>>,
    layer: usize,
    probe: &mut dyn FnMut(usize, usize, Tensor<2>) -> Tensor<2>,
) -> Vec<Tensor<2>> {
    steps
        .into_iter()
        .enumerate()
        .map(|(t, x)| probe(layer, t, x))
        .collect()
}

/// One of the two transforms of several gates side by side: the weights as
/// `[d_in, gates·d_hidden]` and the biases as `[1, gates·d_hidden]` (when the layer has them),
/// so that a time step's gates are one matrix product.
fn stacked(
    gates: &[&GateController],
    transform: fn(&GateController) -> &Linear,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let weight = Tensor::cat(gates.iter().map(|g| transform(g).weight.val()).collect(), 1);
    let biases: Option<Vec<Tensor<1>>> = gates
        .iter()
        .map(|g| transform(g).bias.as_ref().map(|b| b.val()))
        .collect();
    (weight, biases.map(|b| Tensor::cat(b, 0).unsqueeze::<2>()))
}

fn input_of(g: &GateController) -> &Linear {
    &g.input_transform
}

fn hidden_of(g: &GateController) -> &Linear {
    &g.hidden_transform
}

/// Burn's LSTM equations (input, forget, cell, output gates; sigmoid gates, tanh cell and
/// hidden activations), one step at a time.
fn lstm_steps(lstm: &Lstm, inputs: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
    let forget = lstm
        .forget_gate
        .as_ref()
        .expect("RecurrentConfig builds LSTMs with a forget gate");
    let gates = [&lstm.input_gate, forget, &lstm.cell_gate, &lstm.output_gate];
    let (w_x, b_x) = stacked(&gates, input_of);
    let (w_h, b_h) = stacked(&gates, hidden_of);
    let bias = b_x.zip(b_h).map(|(x, h)| x + h);
    let d = lstm.d_hidden;
    let Some(first) = inputs.first() else {
        return Vec::new();
    };
    let batch = first.dims()[0];
    let device = first.device();
    let mut h = Tensor::<2>::zeros([batch, d], &device);
    let mut c = Tensor::<2>::zeros([batch, d], &device);
    let mut out = Vec::with_capacity(inputs.len());
    for x in inputs {
        let mut gates = x.matmul(w_x.clone()) + h.matmul(w_h.clone());
        if let Some(b) = &bias {
            gates = gates + b.clone();
        }
        let i = sigmoid(gates.clone().narrow(1, 0, d));
        let f = sigmoid(gates.clone().narrow(1, d, d));
        let g = tanh(gates.clone().narrow(1, 2 * d, d));
        let o = sigmoid(gates.narrow(1, 3 * d, d));
        c = f * c + i * g;
        h = o * tanh(c.clone());
        out.push(h.clone());
    }
    out
}

/// Burn's GRU equations with the reset applied after the hidden product (update, reset and
/// new gates), one step at a time.
fn gru_steps(gru: &Gru, inputs: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
    let d = gru.d_hidden;
    let gates = [&gru.update_gate, &gru.reset_gate, &gru.new_gate];
    let (w_x, b_x) = stacked(&gates, input_of);
    let (w_h, b_h) = stacked(&gates, hidden_of);
    let Some(first) = inputs.first() else {
        return Vec::new();
    };
    let batch = first.dims()[0];
    let mut h = Tensor::<2>::zeros([batch, d], &first.device());
    let mut out = Vec::with_capacity(inputs.len());
    for x in inputs {
        let mut gx = x.matmul(w_x.clone());
        let mut gh = h.clone().matmul(w_h.clone());
        if let (Some(bx), Some(bh)) = (&b_x, &b_h) {
            gx = gx + bx.clone();
            gh = gh + bh.clone();
        }
        let z = sigmoid(gx.clone().narrow(1, 0, d) + gh.clone().narrow(1, 0, d));
        let r = sigmoid(gx.clone().narrow(1, d, d) + gh.clone().narrow(1, d, d));
        let n = tanh(gx.narrow(1, 2 * d, d) + r * gh.narrow(1, 2 * d, d));
        h = (z.clone().neg() + 1.0) * n + z * h;
        out.push(h.clone());
    }
    out
}
