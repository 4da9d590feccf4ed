//! `--backend NAME` to a Burn device: the one place in qkv that names concrete backends.

use burn::prelude::*;
use clap::ValueEnum;

/// The backends qkv can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (SIMD + rayon).
    Flex,
    /// The ndarray CPU backend (deprecated in Burn 0.22, kept for comparison).
    Ndarray,
}

impl Backend {
    /// The device for this backend, without autodiff.
    pub fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex(),
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
        }
    }
}
