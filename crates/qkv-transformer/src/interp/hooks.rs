//! Hook points, hooks and the activation cache: read or replace any activation of a
//! [`Gpt`]'s forward pass, and keep only the ones asked for.
//!
//! [`Gpt::run_with_hooks`] walks the same steps as [`Gpt::forward`], and at each named
//! [`HookPoint`] hands the activation to the edits set for it, then records it if asked. A
//! layer whose attention internals (Q, K, V, scores, pattern, per-head output) nobody asked
//! for runs the very code of the plain pass, so its activations are equal bit for bit; a layer
//! whose internals are wanted computes attention step by step instead (as
//! [`Hooks::explicit_attention`] does for every layer). [`Gpt::forward`] itself knows nothing
//! of hooks and pays nothing for them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

use crate::error::ModelError;
#[cfg(doc)]
use crate::gpt::Gpt;

/// A named activation of the forward pass. Shapes for a `[batch, seq]` input; `d_head` is
/// `d_model / n_heads`, `d_ff` the MLP's hidden width.
///
/// | point | name | shape |
/// | --- | --- | --- |
/// | `Embed` | `embed` | `[batch, seq, d_model]`: token (plus position) embeddings |
/// | `ResidPre(l)` | `blocks.l.resid_pre` | `[batch, seq, d_model]`: the stream entering block `l` |
/// | `AttnIn(l)` | `blocks.l.attn_in` | `[batch, seq, d_model]`: `ln_1` of it |
/// | `Query(l)`, `Key(l)`, `Value(l)` | `blocks.l.attn.q`, `.k`, `.v` | `[batch, n_heads, seq, d_head]` |
/// | `Scores(l)` | `blocks.l.attn.scores` | `[batch, n_heads, seq, seq]`: `q·kᵀ/√d_head`, hidden keys `-inf` |
/// | `Pattern(l)` | `blocks.l.attn.pattern` | `[batch, n_heads, seq, seq]`: the softmax of the scores |
/// | `HeadOutput(l)` | `blocks.l.attn.z` | `[batch, n_heads, seq, d_head]`: each head's pattern·v |
/// | `AttnOut(l)` | `blocks.l.attn_out` | `[batch, seq, d_model]`: the heads projected, as added to the stream |
/// | `ResidMid(l)` | `blocks.l.resid_mid` | `[batch, seq, d_model]`: the stream after attention |
/// | `MlpIn(l)` | `blocks.l.mlp_in` | `[batch, seq, d_model]`: `ln_2` of it |
/// | `MlpHidden(l)` | `blocks.l.mlp.hidden` | `[batch, seq, d_ff]`: the activated neurons |
/// | `MlpOut(l)` | `blocks.l.mlp_out` | `[batch, seq, d_model]`: as added to the stream |
/// | `ResidPost(l)` | `blocks.l.resid_post` | `[batch, seq, d_model]`: the stream leaving block `l` |
/// | `FinalNorm` | `ln_f` | `[batch, seq, d_model]`: the final LayerNorm of the stream |
/// | `Logits` | `logits` | `[batch, seq, vocab_size]` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// Token plus position embeddings.
    Embed,
    /// The residual stream entering a block.
    ResidPre(usize),
    /// The first LayerNorm's output, attention's input.
    AttnIn(usize),
    /// Queries, after rotation when the model is rotary.
    Query(usize),
    /// Keys, after rotation when the model is rotary.
    Key(usize),
    /// Values.
    Value(usize),
    /// Scaled scores before the softmax; keys a query may not see hold `-inf`.
    Scores(usize),
    /// Attention probabilities.
    Pattern(usize),
    /// Each head's attended values, before the output projection (TransformerLens' `z`).
    HeadOutput(usize),
    /// Attention's output as added to the residual stream.
    AttnOut(usize),
    /// The residual stream between attention and the MLP.
    ResidMid(usize),
    /// The second LayerNorm's output, the MLP's input.
    MlpIn(usize),
    /// The MLP's activated hidden features.
    MlpHidden(usize),
    /// The MLP's output as added to the residual stream.
    MlpOut(usize),
    /// The residual stream leaving a block.
    ResidPost(usize),
    /// The final LayerNorm's output.
    FinalNorm,
    /// Next-token logits.
    Logits,
}

impl HookPoint {
    /// Every point of a model with `n_layers` blocks, in the order the forward pass meets
    /// them.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut points = vec![HookPoint::Embed];
        for l in 0..n_layers {
            points.extend(HookPoint::of_layer(l));
        }
        points.extend([HookPoint::FinalNorm, HookPoint::Logits]);
        points
    }

    /// The points of block `layer`, in forward order.
    pub fn of_layer(layer: usize) -> [HookPoint; 14] {
        use HookPoint::*;
        [
            ResidPre(layer),
            AttnIn(layer),
            Query(layer),
            Key(layer),
            Value(layer),
            Scores(layer),
            Pattern(layer),
            HeadOutput(layer),
            AttnOut(layer),
            ResidMid(layer),
            MlpIn(layer),
            MlpHidden(layer),
            MlpOut(layer),
            ResidPost(layer),
        ]
    }

    /// The block this point belongs to, if any.
    pub fn layer(self) -> Option<usize> {
        use HookPoint::*;
        match self {
            Embed | FinalNorm | Logits => None,
            ResidPre(l) | AttnIn(l) | Query(l) | Key(l) | Value(l) | Scores(l) | Pattern(l)
            | HeadOutput(l) | AttnOut(l) | ResidMid(l) | MlpIn(l) | MlpHidden(l) | MlpOut(l)
            | ResidPost(l) => Some(l),
        }
    }

    /// Whether the activation has one row per head (rank 4) rather than one per position
    /// (rank 3).
    pub fn is_per_head(self) -> bool {
        use HookPoint::*;
        matches!(
            self,
            Query(_) | Key(_) | Value(_) | Scores(_) | Pattern(_) | HeadOutput(_)
        )
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HookPoint::*;
        let (layer, name) = match *self {
            Embed => return f.write_str("embed"),
            FinalNorm => return f.write_str("ln_f"),
            Logits => return f.write_str("logits"),
            ResidPre(l) => (l, "resid_pre"),
            AttnIn(l) => (l, "attn_in"),
            Query(l) => (l, "attn.q"),
            Key(l) => (l, "attn.k"),
            Value(l) => (l, "attn.v"),
            Scores(l) => (l, "attn.scores"),
            Pattern(l) => (l, "attn.pattern"),
            HeadOutput(l) => (l, "attn.z"),
            AttnOut(l) => (l, "attn_out"),
            ResidMid(l) => (l, "resid_mid"),
            MlpIn(l) => (l, "mlp_in"),
            MlpHidden(l) => (l, "mlp.hidden"),
            MlpOut(l) => (l, "mlp_out"),
            ResidPost(l) => (l, "resid_post"),
        };
        write!(f, "blocks.{layer}.{name}")
    }
}

impl FromStr for HookPoint {
    type Err = String;

    /// Parses the names [`Display`](fmt::Display) writes (`blocks.2.attn.pattern`).
    fn from_str(s: &str) -> Result<Self, String> {
        use HookPoint::*;
        let unknown = || {
            format!(
                "unknown hook point {s:?}: expected embed, ln_f, logits or blocks.<layer>.<point> \
                 with <point> one of resid_pre, attn_in, attn.q, attn.k, attn.v, attn.scores, \
                 attn.pattern, attn.z, attn_out, resid_mid, mlp_in, mlp.hidden, mlp_out, resid_post"
            )
        };
        match s {
            "embed" => return Ok(Embed),
            "ln_f" => return Ok(FinalNorm),
            "logits" => return Ok(Logits),
            _ => {}
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let l: usize = layer.parse().map_err(|_| unknown())?;
        Ok(match name {
            "resid_pre" => ResidPre(l),
            "attn_in" => AttnIn(l),
            "attn.q" => Query(l),
            "attn.k" => Key(l),
            "attn.v" => Value(l),
            "attn.scores" => Scores(l),
            "attn.pattern" => Pattern(l),
            "attn.z" => HeadOutput(l),
            "attn_out" => AttnOut(l),
            "resid_mid" => ResidMid(l),
            "mlp_in" => MlpIn(l),
            "mlp.hidden" => MlpHidden(l),
            "mlp_out" => MlpOut(l),
            "resid_post" => ResidPost(l),
            _ => return Err(unknown()),
        })
    }
}

/// A kind of hook point: [`HookPoint`] for a [`Gpt`], [`Seq2SeqPoint`](super::Seq2SeqPoint) for a
/// [`Seq2Seq`](crate::Seq2Seq).
pub trait Point: Copy + Ord + fmt::Display + fmt::Debug {
    /// The stack (`"blocks"`, `"encoder"`, `"decoder"`) and layer the point belongs to.
    fn layer(self) -> Option<(&'static str, usize)>;
    /// Whether the activation has one row per head (rank 4) rather than one per position.
    fn is_per_head(self) -> bool;
}

impl Point for HookPoint {
    fn layer(self) -> Option<(&'static str, usize)> {
        HookPoint::layer(self).map(|l| ("blocks", l))
    }
    fn is_per_head(self) -> bool {
        HookPoint::is_per_head(self)
    }
}

/// One recorded activation: per position (rank 3) or per head (rank 4), see [`HookPoint`].
#[derive(Debug, Clone)]
pub enum Activation {
    /// `[batch, seq, width]`.
    PerPosition(Tensor<3>),
    /// `[batch, n_heads, seq, width]`.
    PerHead(Tensor<4>),
}

impl Activation {
    /// The shape.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Activation::PerPosition(t) => t.dims().to_vec(),
            Activation::PerHead(t) => t.dims().to_vec(),
        }
    }

    /// The values, read back to the host, row-major.
    pub fn to_vec(&self) -> Vec<f32> {
        let data = match self {
            Activation::PerPosition(t) => t.to_data(),
            Activation::PerHead(t) => t.to_data(),
        };
        data.try_into_vec_as::<f32>().expect("activations are f32")
    }
}

/// The activations a hooked run recorded, by [`HookPoint`]. Only the points asked for are
/// kept (see [`Hooks::record`]); the tensors stay on the model's device.
#[derive(Debug, Clone)]
pub struct ActivationCache<P: Point = HookPoint> {
    activations: BTreeMap<P, Activation>,
}

impl<P: Point> Default for ActivationCache<P> {
    fn default() -> Self {
        Self {
            activations: BTreeMap::new(),
        }
    }
}

impl<P: Point> ActivationCache<P> {
    /// The activation at `point`, if it was recorded.
    pub fn get(&self, point: P) -> Option<&Activation> {
        self.activations.get(&point)
    }

    /// A per-position activation (`[batch, seq, width]`), if recorded.
    pub fn per_position(&self, point: P) -> Option<Tensor<3>> {
        match self.activations.get(&point)? {
            Activation::PerPosition(t) => Some(t.clone()),
            Activation::PerHead(_) => None,
        }
    }

    /// A per-head activation (`[batch, n_heads, seq, width]`), if recorded.
    pub fn per_head(&self, point: P) -> Option<Tensor<4>> {
        match self.activations.get(&point)? {
            Activation::PerHead(t) => Some(t.clone()),
            Activation::PerPosition(_) => None,
        }
    }

    /// The recorded points, in forward order within each kind (see [`HookPoint`]'s order).
    pub fn points(&self) -> impl Iterator<Item = P> + '_ {
        self.activations.keys().copied()
    }

    /// How many activations are held.
    pub fn len(&self) -> usize {
        self.activations.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.activations.is_empty()
    }

    /// The number of `f32` values held, over all activations (× 4 for bytes).
    pub fn num_values(&self) -> usize {
        self.activations
            .values()
            .map(|a| a.dims().iter().product::<usize>())
            .sum()
    }

    /// The cache moved to `device` (for example to the CPU, to free an accelerator's memory).
    pub fn to_device(self, device: &Device) -> Self {
        let activations = self
            .activations
            .into_iter()
            .map(|(point, a)| {
                let moved = match a {
                    Activation::PerPosition(t) => Activation::PerPosition(t.to_device(device)),
                    Activation::PerHead(t) => Activation::PerHead(t.to_device(device)),
                };
                (point, moved)
            })
            .collect();
        Self { activations }
    }
}

/// One replacement: the point, whether it was set for a per-head point, and the function.
struct Edit<'a, P> {
    point: P,
    per_head: bool,
    apply: Box<dyn FnMut(Activation) -> Activation + 'a>,
}

/// What a hooked run does at each point: which activations to record, which to replace.
///
/// ```
/// # use burn::prelude::*;
/// # use qkv_transformer::GptConfig;
/// use qkv_transformer::interp::{HookPoint, Hooks};
///
/// let device = Device::flex();
/// let model = GptConfig::new(11, 8, 2, 2, 8).init(&device);
/// let tokens = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
/// // Zero head 1 of layer 0 and keep layer 1's pattern.
/// let mut hooks = Hooks::new()
///     .record([HookPoint::Pattern(1)])
///     .edit_per_head(HookPoint::HeadOutput(0), |z| {
///         let [b, _, s, d] = z.dims();
///         z.slice_assign(s![.., 1..2, .., ..], Tensor::zeros([b, 1, s, d], &Device::flex()))
///     });
/// let logits = model.run_with_hooks(tokens, &mut hooks).unwrap();
/// assert_eq!(logits.dims(), [1, 3, 11]);
/// assert_eq!(hooks.cache().per_head(HookPoint::Pattern(1)).unwrap().dims(), [1, 2, 3, 3]);
/// ```
pub struct Hooks<'a, P: Point = HookPoint> {
    record: BTreeSet<P>,
    record_all: bool,
    explicit: bool,
    edits: Vec<Edit<'a, P>>,
    cache: ActivationCache<P>,
}

impl<P: Point> Default for Hooks<'_, P> {
    fn default() -> Self {
        Self {
            record: BTreeSet::new(),
            record_all: false,
            explicit: false,
            edits: Vec::new(),
            cache: ActivationCache::default(),
        }
    }
}

impl<P: Point> fmt::Debug for Hooks<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("record", &self.record)
            .field("record_all", &self.record_all)
            .field("explicit", &self.explicit)
            .field(
                "edits",
                &self.edits.iter().map(|e| e.point).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<'a, P: Point> Hooks<'a, P> {
    /// No recording, no edits: a hooked run then computes what [`Gpt::forward`] does.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also record these points.
    pub fn record(mut self, points: impl IntoIterator<Item = P>) -> Self {
        self.record.extend(points);
        self
    }

    /// Record every point (memory: all of [`HookPoint`]'s shapes, for every layer).
    pub fn record_all(mut self) -> Self {
        self.record_all = true;
        self
    }

    /// Compute every layer's attention step by step, as when one of its internal points is
    /// hooked, so that runs that hook some heads and runs that hook none round alike.
    pub fn explicit_attention(mut self) -> Self {
        self.explicit = true;
        self
    }

    /// Replace the activation at a per-position `point` (rank 3) with what `edit` returns,
    /// which must keep its shape. Several edits of one point apply in the order set.
    pub fn edit_per_position(
        self,
        point: P,
        mut edit: impl FnMut(Tensor<3>) -> Tensor<3> + 'a,
    ) -> Self {
        self.push_edit(point, false, move |a| match a {
            Activation::PerPosition(t) => Activation::PerPosition(edit(t)),
            other => other,
        })
    }

    /// Replace the activation at a per-head `point` (rank 4) with what `edit` returns, which
    /// must keep its shape.
    pub fn edit_per_head(
        self,
        point: P,
        mut edit: impl FnMut(Tensor<4>) -> Tensor<4> + 'a,
    ) -> Self {
        self.push_edit(point, true, move |a| match a {
            Activation::PerHead(t) => Activation::PerHead(edit(t)),
            other => other,
        })
    }

    /// Adds an edit set for a point of the given kind (checked against the point at run time).
    fn push_edit(
        mut self,
        point: P,
        per_head: bool,
        apply: impl FnMut(Activation) -> Activation + 'a,
    ) -> Self {
        self.edits.push(Edit {
            point,
            per_head,
            apply: Box::new(apply),
        });
        self
    }

    /// What the last run recorded.
    pub fn cache(&self) -> &ActivationCache<P> {
        &self.cache
    }

    /// Empties the cache (at the start of a run).
    pub(crate) fn clear_cache(&mut self) {
        self.cache = ActivationCache::default();
    }

    /// Takes what the last run recorded, leaving the cache empty.
    pub fn take_cache(&mut self) -> ActivationCache<P> {
        std::mem::take(&mut self.cache)
    }

    /// Errors unless every point set names an existing layer (`layers` gives a stack's
    /// count), and every edit has the rank of its point.
    pub(crate) fn check(&self, layers: impl Fn(&str) -> usize) -> Result<(), ModelError> {
        for edit in &self.edits {
            if edit.per_head != edit.point.is_per_head() {
                let (set, needed) = if edit.per_head {
                    ("edit_per_head", "edit_per_position")
                } else {
                    ("edit_per_position", "edit_per_head")
                };
                return Err(ModelError::InvalidInput(format!(
                    "hook point {} was given {set}; its activation needs {needed}",
                    edit.point
                )));
            }
        }
        let edits = self.edits.iter().map(|e| e.point);
        for point in self.record.iter().copied().chain(edits) {
            if let Some((stack, layer)) = point.layer()
                && layer >= layers(stack)
            {
                return Err(ModelError::InvalidInput(format!(
                    "hook point {point}: this model's {stack} has layers 0..{}",
                    layers(stack)
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn wants(&self, point: P) -> bool {
        self.record_all
            || self.record.contains(&point)
            || self.edits.iter().any(|e| e.point == point)
    }

    fn apply(&mut self, point: P, value: Activation) -> Result<Activation, ModelError> {
        let dims = value.dims();
        let mut value = value;
        for edit in self.edits.iter_mut().filter(|e| e.point == point) {
            value = (edit.apply)(value);
            let edited = value.dims();
            if edited != dims {
                return Err(ModelError::InvalidInput(format!(
                    "the edit of hook point {point} returned shape {edited:?}; it must keep {dims:?}"
                )));
            }
        }
        if self.record_all || self.record.contains(&point) {
            self.cache.activations.insert(point, value.clone());
        }
        Ok(value)
    }

    /// Hands a per-position activation through the edits and the recorder.
    pub(crate) fn at3(&mut self, point: P, x: Tensor<3>) -> Result<Tensor<3>, ModelError> {
        if !self.wants(point) {
            return Ok(x);
        }
        match self.apply(point, Activation::PerPosition(x))? {
            Activation::PerPosition(x) => Ok(x),
            Activation::PerHead(_) => unreachable!("checked in apply"),
        }
    }

    /// Hands a per-head activation through the edits and the recorder.
    pub(crate) fn at4(&mut self, point: P, x: Tensor<4>) -> Result<Tensor<4>, ModelError> {
        if !self.wants(point) {
            return Ok(x);
        }
        match self.apply(point, Activation::PerHead(x))? {
            Activation::PerHead(x) => Ok(x),
            Activation::PerPosition(_) => unreachable!("checked in apply"),
        }
    }
}

impl Hooks<'_, HookPoint> {
    /// Whether layer `layer`'s attention must be computed step by step.
    pub(crate) fn opens_attention(&self, layer: usize) -> bool {
        use HookPoint::*;
        self.explicit
            || [
                Query(layer),
                Key(layer),
                Value(layer),
                Scores(layer),
                Pattern(layer),
                HeadOutput(layer),
            ]
            .into_iter()
            .any(|p| self.wants(p))
    }
}
