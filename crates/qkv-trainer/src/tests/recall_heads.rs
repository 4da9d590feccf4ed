//! After training the default recall task, some head looks straight at the answer: at the
//! query position, its highest weight falls on the pair with the queried key. Ablation and
//! activation patching both single out the same head, and it is one that does this (training
//! may grow two such heads).

use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_data::Split;
use qkv_transformer::interp::activation_patching;
use qkv_transformer::{SplitMix64, cross_entropy};

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
    // Each head's hit rate: training may grow more than one head that finds the pair.
    let mut rates = Vec::new();
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
            rates.push(((layer, head), rate));
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

    // Ablation: the head whose removal raises the held-out loss most.
    let (x, y) = crate::tensors(&batch, &plain);
    let loss = |m: &qkv_transformer::Gpt| {
        cross_entropy(m.forward(x.clone()), y.clone(), Some(qkv_data::IGNORE)).into_scalar::<f32>()
    };
    let base = loss(&model);
    let n_heads = model.blocks[0].attn.n_heads;
    let mut ablation = Vec::new();
    for layer in 0..model.n_layers() {
        for head in 0..n_heads {
            let ablated = model.clone().ablate_head(layer, head).unwrap();
            ablation.push(((layer, head), loss(&ablated) - base));
        }
    }
    let by_ablation = ablation
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0;

    // Patching: clean prompts end in a query; the corrupted ones ask for another key of the
    // same prompt. Which head's output, patched from clean into corrupted, brings back the
    // clean answer over the other key's value?
    let mut restored = vec![0.0f32; model.n_layers() * n_heads];
    let mut prompts = 0;
    for b in 0..batch.batch {
        let row = &batch.inputs[b * seq..(b + 1) * seq];
        let Some(t) = (0..seq).find(|&t| batch.targets[b * seq + t] != qkv_data::IGNORE) else {
            continue;
        };
        let clean: Vec<u32> = row[..=t].iter().map(|&i| i as u32).collect();
        let key_base = task.n_values + 1;
        let pair_base = key_base + task.n_keys;
        let answer = batch.targets[b * seq + t] as u32;
        let asked = clean[t] as usize - key_base;
        // Another pair of the prompt, with another key and value.
        let Some(other) = (0..n_pairs)
            .map(|j| clean[j] as usize - pair_base)
            .find(|p| p / task.n_values != asked && (p % task.n_values) as u32 != answer)
        else {
            continue;
        };
        let mut corrupted = clean.clone();
        corrupted[t] = (key_base + other / task.n_values) as u32;
        let wrong = (other % task.n_values) as u32;
        let result = activation_patching(&model, &clean, &corrupted, answer, wrong).unwrap();
        for (slot, r) in restored.iter_mut().zip(result.heads.iter().flatten()) {
            *slot += r;
        }
        prompts += 1;
        if prompts == 20 {
            break;
        }
    }
    assert_eq!(prompts, 20, "enough prompts with two distinct pairs");
    let top = (0..restored.len())
        .max_by(|&a, &b| restored[a].total_cmp(&restored[b]))
        .unwrap();
    let by_patching = (top / n_heads, top % n_heads);
    assert_eq!(
        by_patching,
        by_ablation,
        "patching restores most through {by_patching:?} ({:.2} of the gap on average), \
         ablation hurts most at {by_ablation:?}",
        restored[top] / prompts as f32
    );
    let rate = rates
        .iter()
        .find(|(head, _)| *head == by_patching)
        .map_or(0.0, |(_, rate)| *rate);
    // The best head is held to 95% above. When training grows two heads that find the pair,
    // the one patching and ablation single out need not be the best: the run's rounding
    // differs with the kernels' SIMD level, and on an AVX2-only EPYC it was a second head at
    // 94.9% (the best 98.1%, no other head above 35%). 90% still tells a head that does the
    // lookup from one that does not.
    assert!(
        rate >= 0.9,
        "and it is a head that looks at the pair: {by_patching:?} finds it in {:.1}% of \
         queries (heads and rates: {rates:?})",
        rate * 100.0
    );
    assert!(
        restored[top] / prompts as f32 > 0.5,
        "that head alone restores {:.2} of the gap",
        restored[top] / prompts as f32
    );
}
