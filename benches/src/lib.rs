//! Shared pieces of the qkv benchmarks: the backends they run on (benches, like tests and
//! xtask, may name concrete backends) and a device sync so that no clock stops before the
//! work is done.

use burn::prelude::*;

/// The CPU backends every benchmark runs on, by name.
pub fn cpu_backends() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let ndarray = Device::ndarray();
    vec![("flex", Device::flex()), ("ndarray", ndarray)]
}

/// Waits until the device has finished all queued work.
pub fn sync(device: &Device) {
    device.sync().expect("device sync");
}
