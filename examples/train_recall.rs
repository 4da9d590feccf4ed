//! Driving a training run from Rust: the recall task with the trainer's API, then one look
//! at what the trained model answers.
//!
//! `cargo run --release -p qkv-examples --example train_recall`

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use qkv_trainer::{Event, LanguageModel, Start, TrainConfig, TrainError, Trainer};

fn main() -> Result<(), TrainError> {
    let mut config = TrainConfig::recall();
    config.max_iters = 1200;
    config.lr_decay_iters = 1200;
    let device = Device::flex().autodiff();
    let run_dir = Path::new("runs/example-recall");
    // The language-model task (its data opened from the config); `Start::Overwrite`
    // replaces the run an earlier launch of this example left.
    let task = LanguageModel::open(config, Path::new("data"))?;
    let mut trainer = Trainer::new(task, run_dir, &device, Start::Overwrite)?;
    let summary = trainer.run(&AtomicBool::new(false), None, |event| {
        if let Event::Eval { step, evaluation } = event {
            println!(
                "step {step}: val loss {:.4}, accuracy {:.1}%",
                evaluation.val_loss,
                evaluation.val_accuracy * 100.0
            );
        }
    })?;
    println!("{} steps in {:.1} s", summary.step, summary.wall_s);

    let tokenizer = trainer.task.source.tokenizer();
    let prompt = "c7 a2 k0 f5 b9 h3 ? k";
    let ids = tokenizer.encode(prompt)?;
    let model = trainer.model.valid();
    let x = Tensor::<2, Int>::from_data(
        TensorData::new(
            ids.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            [1, ids.len()],
        ),
        &device.without_autodiff(),
    );
    let logits = model.forward(x);
    let next = logits
        .slice(s![.., ids.len() - 1.., ..])
        .argmax(2)
        .into_data()
        .convert::<i64>();
    let answer = next.try_into_vec_as::<i64>().expect("ints")[0] as u32;
    println!("{prompt} -> {}", tokenizer.decode(&[answer])?);
    Ok(())
}
