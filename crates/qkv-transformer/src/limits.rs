//! Upper bounds on every size a user can set, and a check of memory before a large
//! allocation: a config or weight file that asks for 10¹² layers gets an error that names
//! the limit, never an allocation abort.
//!
//! The bounds are far above any model this library trains or loads (GPT-2 XL has 48
//! layers, 1600 wide, 50257 tokens, 1024 positions), and low enough that sizes multiplied
//! together cannot overflow.

use crate::error::ModelError;

/// Most tokens in a vocabulary.
pub const MAX_VOCAB: usize = 1 << 24;
/// Most positions (block size, longest source or target).
pub const MAX_CONTEXT: usize = 1 << 20;
/// Most layers (blocks) in a stack.
pub const MAX_LAYERS: usize = 1 << 10;
/// Widest residual stream.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most heads per layer.
pub const MAX_HEADS: usize = 1 << 12;
/// Largest MLP ratio.
pub const MAX_MLP_RATIO: usize = 64;

/// Errors unless `value <= max`, naming the setting and the limit.
pub fn check(name: &str, value: usize, max: usize) -> Result<(), ModelError> {
    if value > max {
        return Err(ModelError::InvalidConfig(format!(
            "{name} is {value}, above the limit of {max}"
        )));
    }
    Ok(())
}

/// Bytes of memory the operating system can still hand out (Linux's `MemAvailable`), or
/// `None` where it does not say.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Errors when `bytes` (what `what` needs) exceed the memory available, naming both and
/// `hint`, what to change. Where the system does not report its memory, only the bounds
/// above apply.
pub fn ensure_fits(bytes: u64, what: &str, hint: &str) -> Result<(), ModelError> {
    match available_memory() {
        Some(available) if bytes > available => Err(ModelError::InvalidConfig(format!(
            "{what} needs about {}, but {} of memory is available; {hint}",
            gib(bytes),
            gib(available)
        ))),
        _ => Ok(()),
    }
}

/// A byte count in GiB, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
