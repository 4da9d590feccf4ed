//! Counting the GPU kernels a piece of work launches, through CubeCL's launch observer: the
//! figure `cargo xtask bench` reports as kernels per iteration on the CubeCL backends, which
//! can be measured without a GPU (Mesa's software Vulkan driver launches the same kernels).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::cubecl::logging::{LaunchObservation, LaunchObserver};

/// The kernels launched during a piece of work: how many of each, by the name CubeCL gives
/// the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchCounts {
    /// Launches per kernel name.
    pub by_kernel: BTreeMap<&'static str, usize>,
}

impl LaunchCounts {
    /// Every launch.
    pub fn total(&self) -> usize {
        self.by_kernel.values().sum()
    }

    /// The `n` kernels launched most often, most first, with their counts.
    pub fn most_launched(&self, n: usize) -> Vec<(&'static str, usize)> {
        let mut all: Vec<_> = self.by_kernel.iter().map(|(k, c)| (*k, *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }
}

/// Counts every launch while installed.
#[derive(Default)]
struct Counter(Mutex<LaunchCounts>);

impl LaunchObserver for Counter {
    fn launched(&self, kernel: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts.by_kernel.entry(kernel).or_default() += 1;
    }
}

/// Runs `work` and returns its result with the CubeCL kernels launched meanwhile, on every
/// thread and device of the process. Burn's fusion launches lazily, so `work` should end with
/// a sync of the device (as [`crate::sync`] does) for the count to include its last kernels.
/// CPU backends (Flex, NdArray) launch no CubeCL kernels: their count is 0.
pub fn count_launches<R>(work: impl FnOnce() -> R) -> (R, LaunchCounts) {
    let counter = Arc::new(Counter::default());
    let observation = LaunchObservation::new(counter.clone());
    let result = work();
    drop(observation);
    let counts = counter.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (result, counts)
}
