//! The recurrent language models against Burn's own `Lstm::forward` and `Gru::forward`:
//! the same logits and the same gradient for every parameter.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::prelude::*;
use qkv_test_support::{SeededRng, assert_rel_close, test_on_cpu_backends, values};

use crate::recurrent::{RecurrentCell, RecurrentConfig, RecurrentLm};
use crate::weights::{NamedVisitor, load_module_tensors, module_tensors, visit_named};

const VOCAB: usize = 13;

/// A model with seeded weights large enough that every gate matters.
fn model(cell: RecurrentCell, device: &Device) -> RecurrentLm {
    let config = RecurrentConfig {
        vocab_size: VOCAB,
        d_model: 8,
        n_layers: 2,
        cell,
    };
    let model = config.try_init(device).unwrap();
    let mut rng = SeededRng::new(5);
    let tensors = module_tensors(&model)
        .into_iter()
        .map(|(name, (shape, v))| (name, (shape, rng.vec(v.len(), 0.6))))
        .collect();
    load_module_tensors(model, tensors, std::path::Path::new("seeded")).unwrap()
}

/// The same model run through Burn's layers, whole sequences at a time.
fn reference_forward(model: &RecurrentLm, tokens: Tensor<2, Int>) -> Tensor<3> {
    let mut x = model.token_embedding.forward(tokens);
    for lstm in &model.lstm {
        x = lstm.forward(x, None).0;
    }
    for gru in &model.gru {
        x = gru.forward(x, None);
    }
    model.lm_head.forward(model.ln_f.forward(x))
}

fn tokens(device: &Device) -> Tensor<2, Int> {
    let mut rng = SeededRng::new(8);
    let ids: Vec<i64> = (0..3 * 7).map(|_| rng.below(VOCAB) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [3, 7]), device)
}

fn grads_by_name(model: &RecurrentLm, loss: Tensor<1>) -> BTreeMap<String, Vec<f32>> {
    struct Collect<'a>(&'a burn::tensor::Gradients, BTreeMap<String, Vec<f32>>);
    impl NamedVisitor for Collect<'_> {
        fn visit<const D: usize>(&mut self, name: &str, param: &Param<Tensor<D>>) {
            let g = param
                .val()
                .grad(self.0)
                .expect("every parameter has a gradient");
            self.1.insert(name.to_string(), values(g));
        }
    }
    let grads = loss.backward();
    let mut collect = Collect(&grads, BTreeMap::new());
    visit_named(model, &mut collect);
    collect.1
}

test_on_cpu_backends!(recurrent_models_equal_burns_layers, |device: &Device| {
    let ad = device.clone().autodiff();
    for cell in [RecurrentCell::Lstm, RecurrentCell::Gru] {
        let model = model(cell, &ad);
        let ours = model.forward(tokens(&ad));
        let theirs = reference_forward(&model, tokens(&ad));
        assert_eq!(ours.dims(), [3, 7, VOCAB]);
        assert_rel_close(
            &values(ours.clone()),
            &values(theirs.clone()),
            1e-4,
            &format!("{cell:?} logits"),
        );
        // A loss that weights every position and logit differently.
        let weights = Tensor::<3>::from_data(
            TensorData::new(
                (0..3 * 7 * VOCAB)
                    .map(|i| ((i * 7) % 11) as f32 - 5.0)
                    .collect::<Vec<_>>(),
                [3, 7, VOCAB],
            ),
            &ad,
        );
        let ours = grads_by_name(&model, (ours * weights.clone()).sum());
        let theirs = grads_by_name(&model, (theirs * weights).sum());
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.len() >= 10, "{:?}", ours.keys());
        for (name, g) in &ours {
            assert_rel_close(
                g,
                &theirs[name],
                1e-3,
                &format!("{cell:?} gradient of {name}"),
            );
        }
    }
});

#[test]
fn bad_configs_are_errors() {
    let device = qkv_test_support::flex();
    for (config, needle) in [
        ((0, 8, 1), "vocab_size"),
        ((5, 0, 1), "d_model"),
        ((5, 8, 0), "n_layers"),
        ((5, 1 << 20, 1), "d_model"),
    ] {
        let err = RecurrentConfig {
            vocab_size: config.0,
            d_model: config.1,
            n_layers: config.2,
            cell: RecurrentCell::Gru,
        }
        .try_init(&device)
        .unwrap_err()
        .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
