//! The LSTM and GRU baselines through the one trainer: they learn, they resume exactly, and a
//! run of one cell does not resume as the other.

use std::sync::atomic::AtomicBool;

use qkv_transformer::recurrent::RecurrentCell;

use super::{runs_device, temp_dir, tiny_recall};
use crate::{
    DataConfig, ModelSettings, RecurrentLanguageModel, Start, TrainConfig, Trainer, metrics,
};

fn trainer(
    config: TrainConfig,
    cell: RecurrentCell,
    run: &std::path::Path,
    cache: &std::path::Path,
    start: Start,
) -> Result<Trainer<RecurrentLanguageModel>, crate::TrainError> {
    let task = RecurrentLanguageModel::open(config, cell, cache)?;
    Trainer::new(task, run, &runs_device(), start)
}

#[test]
fn tiny_recurrent_models_memorise_a_tiny_corpus() {
    let _rng = super::rng_lock();
    let dir = temp_dir("rnn-overfit");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "qkv07 ZEBRA-jumps!".repeat(12)).unwrap();
    for cell in [RecurrentCell::Lstm, RecurrentCell::Gru] {
        let mut config = tiny_recall(150, 0.0);
        config.data = DataConfig::TextFile {
            path: corpus.clone(),
            tokenizer: crate::TokenizerChoice::Char,
        };
        config.model = ModelSettings {
            n_layers: 1,
            n_heads: 1,
            d_model: 32,
            block_size: 8,
            dropout: 0.0,
            bias: true,
            positional: qkv_transformer::PositionalEncoding::Learned,
        };
        config.lr = 1e-2;
        config.min_lr = 1e-2;
        config.weight_decay = 0.0;
        config.eval_interval = 150;
        let run = dir.join(cell.name());
        trainer(config, cell, &run, &dir, Start::Fresh)
            .unwrap()
            .run(&AtomicBool::new(false), None, |_| {})
            .unwrap();
        let records = metrics::read(&run.join("metrics.jsonl")).unwrap();
        let first = records[0].loss;
        let last = records.last().unwrap().train_loss.unwrap();
        assert!(first > 2.0, "{cell:?} starts near log(vocab): {first}");
        // The first character of a window has no context, so the floor is above zero: 1 of
        // 8 positions guesses among the corpus's characters.
        assert!(last < 0.4, "{cell:?} memorised: final train loss {last}");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("checkpoint/state.json")).unwrap())
                .unwrap();
        assert_eq!(state["task"], "rnn", "{state}");
    }
}

#[test]
fn recurrent_runs_resume_exactly_and_only_as_their_own_cell() {
    let _rng = super::rng_lock();
    let config = tiny_recall(8, 0.0);
    let cache = temp_dir("rnn-cache");
    let stop = AtomicBool::new(false);
    let straight = temp_dir("rnn-straight");
    trainer(
        config.clone(),
        RecurrentCell::Gru,
        &straight,
        &cache,
        Start::Fresh,
    )
    .unwrap()
    .run(&stop, None, |_| {})
    .unwrap();
    let halves = temp_dir("rnn-halves");
    trainer(
        config.clone(),
        RecurrentCell::Gru,
        &halves,
        &cache,
        Start::Fresh,
    )
    .unwrap()
    .run(&stop, Some(4), |_| {})
    .unwrap();
    let err = trainer(
        config.clone(),
        RecurrentCell::Lstm,
        &halves,
        &cache,
        Start::Resume,
    )
    .err()
    .expect("an LSTM does not resume a GRU run")
    .to_string();
    assert!(err.contains("Gru") && err.contains("Lstm"), "{err}");
    trainer(config, RecurrentCell::Gru, &halves, &cache, Start::Resume)
        .unwrap()
        .run(&stop, None, |_| {})
        .unwrap();
    let losses = |dir: &std::path::Path| -> Vec<u64> {
        metrics::read(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.loss.to_bits())
            .collect()
    };
    assert_eq!(losses(&straight).len(), 8);
    assert_eq!(losses(&straight), losses(&halves));
}
