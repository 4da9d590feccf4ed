//! Examples of using the qkv crates from your own code. Run them with
//! `cargo run --release -p qkv-examples --example attention_only` (or `train_recall`).
