//! After training the default recall task, some head looks straight at the answer: at the
//! query position, its highest weight falls on the pair with the queried key.

use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_data::Split;
use qkv_transformer::SplitMix64;

use super::lm_trainer;
use super::temp_dir;
use crate::{BatchSource, Start, TrainConfig};

#[test]
fn a_trained_recall_head_finds_the_matching_pair() {
    let _rng = super::rng_lock();
    let dir = temp_dir("recall-heads");
    let mut config = TrainConfig::recall();
    // The lookup forms around step 700 (see TrainConfig::recall); 1200 steps leave margin.
    config.max_iters = 1200;
    config.lr_decay_iters = 1200;
    config.eval_interval = 1200;
    let device = qkv_test_support::flex().autodiff();
    let mut trainer = lm_trainer(config.clone(), &dir, &dir, &device, Start::Fresh).unwrap();
    let summary = trainer.run(&AtomicBool::new(false), None, |_| {}).unwrap();
    let accuracy = summary.final_eval.unwrap().val_accuracy;
    assert!(accuracy > 0.99, "held-out accuracy {accuracy}");

    let BatchSource::Recall(task) = &trainer.task.source else {
        panic!("recall source")
    };
    let model = trainer.model.valid();
    let plain = device.without_autodiff();
    let mut rng = SplitMix64::new(99);
    let batch = task.batch(Split::Val, 200, &mut |n| rng.below(n));
    let (x, _) = crate::tensors(&batch, &plain);
    let recorded = model.forward_detailed(x, None, true).unwrap();
    let seq = batch.seq;
    let n_pairs = task.n_pairs;
    let mut best = (0.0, 0, 0);
    for (layer, probs) in recorded.attention.iter().enumerate() {
        let [_, n_heads, _, _] = probs.dims();
        let p: Vec<f32> = probs.clone().into_data().try_into_vec_as().unwrap();
        for head in 0..n_heads {
            let (mut hits, mut queries) = (0, 0);
            for b in 0..batch.batch {
                let row_ids = &batch.inputs[b * seq..(b + 1) * seq];
                for t in (0..seq).filter(|&t| batch.targets[b * seq + t] != qkv_data::IGNORE) {
                    // The pair token whose key is the queried key x[t].
                    let key = row_ids[t] as usize - (task.n_values + 1);
                    let pair = (0..n_pairs)
                        .find(|&j| {
                            (row_ids[j] as usize - (task.n_values + 1 + task.n_keys))
                                / task.n_values
                                == key
                        })
                        .unwrap();
                    let row = &p[((b * n_heads + head) * seq + t) * seq..][..seq];
                    let argmax = (0..seq).fold(0, |m, j| if row[j] > row[m] { j } else { m });
                    hits += (argmax == pair) as usize;
                    queries += 1;
                }
            }
            let rate = hits as f64 / queries as f64;
            if rate > best.0 {
                best = (rate, layer, head);
            }
        }
    }
    assert!(
        best.0 >= 0.95,
        "best head: layer {} head {} finds the pair in {:.1}% of queries",
        best.1,
        best.2,
        best.0 * 100.0
    );
}
