//! The one place in qkv that names concrete Burn backends: a backend name (`flex`, `ndarray`,
//! `wgpu`, `vulkan`, `cuda`) to a [`Device`], plus a description of the machine for benchmark
//! reports.
//!
//! The GPU backends are Burn's CubeCL backend on several runtimes (wgpu by default; Vulkan
//! with SPIR-V and CUDA behind this crate's `vulkan` and `cuda` features), all compiled with
//! Burn's `fusion` (element-wise operations fused into the kernels around them, instead of
//! one launch each) and `autotune` (kernel variants timed on the device, the fastest kept).
//!
//! Library crates (tensor ops, attention, model, trainer) take a `&Device` and never name a
//! backend; the command line, the benchmarks, the examples and the cross-backend tests pick
//! one here.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

mod devices;
pub use devices::DeviceSpec;
mod launches;
pub use launches::{LaunchCounts, count_launches};

use burn::prelude::*;

/// The backends qkv runs on. Every one of them runs everything: attention, the model,
/// training and generation; only the device differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (SIMD + rayon): the default.
    Flex,
    /// The ndarray CPU backend (deprecated in Burn 0.22, kept for comparison).
    Ndarray,
    /// The GPU through wgpu and CubeCL, shaders in WGSL: portable (Vulkan, Metal, DX12).
    /// With no GPU it runs on a software Vulkan driver such as Mesa's lavapipe: correct, but
    /// slow.
    Wgpu,
    /// The GPU through wgpu on Vulkan, shaders compiled to SPIR-V by CubeCL (Burn documents
    /// it as faster than WGSL, above all for matrix products). Compiled in only with this
    /// crate's `vulkan` feature; without it, [`Backend::check`] says how to build it.
    Vulkan,
    /// NVIDIA GPUs through CUDA (the driver's `libcuda` and NVRTC, loaded at run time).
    /// Compiled in only with this crate's `cuda` feature; without it, [`Backend::check`]
    /// says how to build it.
    Cuda,
}

impl Backend {
    /// Every backend, in the order reports list them.
    pub const ALL: [Backend; 5] = [
        Backend::Flex,
        Backend::Ndarray,
        Backend::Wgpu,
        Backend::Vulkan,
        Backend::Cuda,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether the backend computes on the CPU of this process.
    pub fn is_cpu(self) -> bool {
        matches!(self, Backend::Flex | Backend::Ndarray)
    }

    /// The device for this backend, without autodiff (call `.autodiff()` for training).
    ///
    /// For wgpu this is the default adapter wgpu finds (a discrete GPU first); on a machine
    /// with no Vulkan driver at all, the first operation on it fails: see [`Backend::check`].
    pub fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex(),
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            Backend::Wgpu => Device::wgpu(DeviceKind::DefaultDevice),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => Device::vulkan(DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(0usize),
            // Never started: `check` refuses them first. The CPU device keeps this total.
            #[cfg(not(feature = "cuda"))]
            Backend::Cuda => Device::flex(),
            #[cfg(not(feature = "vulkan"))]
            Backend::Vulkan => Device::flex(),
        }
    }

    /// An error saying how to build the backend when this build lacks it (`vulkan`, `cuda`).
    fn built(self) -> Result<(), BackendError> {
        if self == Backend::Cuda && !cfg!(feature = "cuda") {
            return Err(BackendError::NotBuilt {
                backend: self,
                how: "rebuild with the cuda feature (cargo run --release -p xtask --features cuda -- …); \
                      building it downloads an LLVM bundle for CubeCL's CUDA compiler"
                    .into(),
            });
        }
        if self == Backend::Vulkan && !cfg!(feature = "vulkan") {
            return Err(BackendError::NotBuilt {
                backend: self,
                how: "rebuild with the vulkan feature (cargo run --release -p xtask --features vulkan -- …); \
                      it is off by default because Mesa's software Vulkan driver crashes on its shaders"
                    .into(),
            });
        }
        Ok(())
    }

    /// Runs one tiny operation on the backend and reports a clear error when it cannot run,
    /// for instance when wgpu finds no adapter because no Vulkan driver is installed.
    ///
    /// While the probe runs, the process's panic hook is replaced by a silent one (the
    /// failure may panic on a backend worker thread); it is restored before returning.
    /// Call it once at start-up, as the command line does, not while other threads may
    /// be panicking.
    pub fn check(self) -> Result<Device, BackendError> {
        self.built()?;
        let device = self.device();
        // A backend that cannot start panics, possibly on a worker thread (wgpu's device
        // thread), before the panic reaches us as a broken channel: the probe keeps the first
        // panic message, which names the real cause, and prints none of them.
        probe(&device)
            .map(|()| device)
            .map_err(|reason| BackendError::Unusable {
                backend: self,
                reason,
            })
    }
}

/// Runs a tiny sum on `device`, catching a panic and keeping its message quiet.
pub(crate) fn probe(device: &Device) -> Result<(), String> {
    let first_message: Arc<Mutex<Option<String>>> = Arc::default();
    let previous_hook = std::panic::take_hook();
    let sink = Arc::clone(&first_message);
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(panic_text(info.payload()));
        }
    }));
    let result = std::panic::catch_unwind(|| {
        let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], device);
        t.sum().into_scalar::<f32>()
    });
    std::panic::set_hook(previous_hook);
    match result {
        Ok(sum) if (sum - 6.0).abs() < 1e-6 => Ok(()),
        Ok(sum) => Err(format!("a probe sum of [1, 2, 3] gave {sum}, not 6")),
        Err(panic) => Err(first_message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| panic_text(panic.as_ref()))),
    }
}

/// The message of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the backend panicked while starting".into())
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| BackendError::Unknown(s.to_string()))
    }
}

/// Parses a comma-separated list such as `flex,ndarray,wgpu` (duplicates removed, order kept).
pub fn parse_list(list: &str) -> Result<Vec<Backend>, BackendError> {
    let mut out = Vec::new();
    for name in list.split(',').filter(|s| !s.trim().is_empty()) {
        let b: Backend = name.parse()?;
        if !out.contains(&b) {
            out.push(b);
        }
    }
    if out.is_empty() {
        return Err(BackendError::Unknown(list.to_string()));
    }
    Ok(out)
}

/// Why a backend could not be chosen or started.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendError {
    /// The name is not one of `flex`, `ndarray`, `wgpu`, `vulkan`, `cuda`.
    Unknown(String),
    /// The backend is not compiled into this build.
    NotBuilt {
        /// Which backend.
        backend: Backend,
        /// How to build it.
        how: String,
    },
    /// The backend is compiled in but cannot run here.
    Unusable {
        /// Which backend.
        backend: Backend,
        /// What went wrong.
        reason: String,
    },
    /// A device of `--devices` that the backend does not have.
    NoSuchDevice {
        /// The backend of local entries.
        backend: Backend,
        /// The entry, as written.
        device: String,
        /// Why it cannot be opened.
        reason: String,
    },
    /// A remote device that cannot be connected or does not compute.
    Remote {
        /// Its address, as written in `--devices`.
        device: String,
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Unknown(name) => write!(
                f,
                "unknown backend {name:?}: choose one of flex, ndarray, wgpu, vulkan, cuda (for example --backend flex)"
            ),
            BackendError::NotBuilt { backend, how } => write!(
                f,
                "the {backend} backend is not in this build: {how}; or choose --backend wgpu, \
                 or a CPU backend with --backend flex"
            ),
            BackendError::Unusable {
                backend: Backend::Wgpu,
                reason,
            } => write!(
                f,
                "the wgpu backend cannot start ({reason}); it needs a GPU driver or, with no GPU, \
                 Mesa's software Vulkan driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1), \
                 or choose a CPU backend with --backend flex"
            ),
            BackendError::Unusable {
                backend: Backend::Vulkan,
                reason,
            } => write!(
                f,
                "the vulkan backend cannot start ({reason}); it needs a Vulkan driver: the GPU vendor's, \
                 or with no GPU Mesa's software one (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1); \
                 or choose --backend wgpu (any graphics API) or a CPU backend with --backend flex"
            ),
            BackendError::Unusable {
                backend: Backend::Cuda,
                reason,
            } => write!(
                f,
                "the cuda backend cannot start ({reason}); it needs an NVIDIA GPU with its driver \
                 (libcuda.so) and the CUDA runtime compiler (libnvrtc.so, from the CUDA toolkit) on \
                 the library path; or choose --backend wgpu, or a CPU backend with --backend flex"
            ),
            BackendError::Unusable { backend, reason } => {
                write!(f, "the {backend} backend cannot start: {reason}")
            }
            BackendError::NoSuchDevice {
                backend,
                device,
                reason,
            } => write!(
                f,
                "--devices names {backend} device {device}, which cannot be opened: {reason}"
            ),
            BackendError::Remote { device, reason } => write!(
                f,
                "the remote device {device} cannot be used: {reason}; start it on that machine with \
                 cargo xtask serve-device --backend flex --port PORT (a build of the same qkv and Burn), \
                 and check the address and that the port is reachable"
            ),
        }
    }
}

impl std::error::Error for BackendError {}

/// Waits until every operation queued on `device` has finished, so that a clock read after
/// it measures the work and not just its queueing (GPU backends run asynchronously).
pub fn sync(device: &Device) {
    device.sync().expect("device sync failed");
}

/// The machine a benchmark ran on, for reports: CPU model, cores, threads and GPU adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineInfo {
    /// The CPU model name, with its family and model numbers where `/proc/cpuinfo` gives them
    /// (a virtual machine may name only the brand, as in `AMD EPYC (family 25, model 17)`);
    /// "unknown" off Linux.
    pub cpu: String,
    /// Logical CPUs the operating system reports.
    pub logical_cpus: usize,
    /// Threads the CPU backends use (`RAYON_NUM_THREADS`, else every logical CPU).
    pub threads: usize,
    /// The operating system and architecture, such as `linux x86_64`.
    pub os: String,
    /// The SIMD level qkv's fused kernels run at: `AVX-512`, `AVX2+FMA` or `SSE2` on x86-64,
    /// `NEON` on AArch64; the widest this CPU offers to run-time dispatch (where Flex's own
    /// kernels and the matrix products run too), unless `QKV_SIMD` narrows it, which is then
    /// said: `AVX2+FMA (QKV_SIMD; the CPU has AVX-512)`.
    pub simd: String,
}

impl MachineInfo {
    /// Reads the description of this machine.
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| describe_cpu(&s))
            .unwrap_or_else(|| "unknown".into());
        let logical_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(logical_cpus);
        Self {
            cpu,
            logical_cpus,
            threads,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            simd: simd_level(),
        }
    }
}

/// The first CPU of a `/proc/cpuinfo` text: its model name, followed by `(family F, model M)`
/// when both numbers are there (two CPUs of one brand name can differ in generation and in
/// SIMD units); `None` without a model name.
fn describe_cpu(cpuinfo: &str) -> Option<String> {
    let field = |key: &str| {
        cpuinfo
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name")?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        _ => name,
    })
}

/// The level qkv's kernels run at, and the CPU's own when a limit narrows it (see
/// [`MachineInfo::simd`]).
fn simd_level() -> String {
    use qkv_tensor_ops::simd;
    let (active, detected) = (simd::active(), simd::detected());
    if active == detected {
        active.name().to_string()
    } else {
        format!("{active} ({}; the CPU has {detected})", simd::ENV_VAR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_description_names_family_and_model() {
        let two_cpus = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                        model\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n\n\
                        processor\t: 1\ncpu family\t: 6\nmodel\t\t: 85\n\
                        model name\t: Other\n";
        assert_eq!(
            describe_cpu(two_cpus).as_deref(),
            Some("AMD EPYC (family 25, model 17)")
        );
        let name_only = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(
            describe_cpu(name_only).as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(describe_cpu("processor\t: 0\nBogoMIPS\t: 100\n"), None);
    }

    #[test]
    fn names_round_trip_and_unknown_names_say_what_to_do() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        }
        assert_eq!("WGPU".parse::<Backend>().unwrap(), Backend::Wgpu);
        let err = "tpu".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("unknown backend \"tpu\""), "{err}");
        assert!(err.contains("flex, ndarray, wgpu, vulkan, cuda"), "{err}");
        assert_eq!(
            parse_list("flex, ndarray,flex").unwrap(),
            vec![Backend::Flex, Backend::Ndarray]
        );
        assert!(parse_list(",").is_err());
        assert!(parse_list("flex,tpu").is_err());
    }

    #[test]
    fn cpu_backends_pass_the_probe() {
        for b in [Backend::Flex, Backend::Ndarray] {
            b.check().unwrap();
        }
    }

    /// CUDA and Vulkan either run (built with their feature, on a machine with the driver:
    /// the probe's sum is right) or fail with the message that says what to build or
    /// install; they never panic. The default build (CI's) checks the messages.
    #[test]
    fn optional_gpu_backends_run_or_say_what_they_need() {
        for (backend, built, missing_driver) in [
            (Backend::Cuda, cfg!(feature = "cuda"), "libcuda.so"),
            (
                Backend::Vulkan,
                cfg!(feature = "vulkan"),
                "mesa-vulkan-drivers",
            ),
        ] {
            match backend.check() {
                Ok(device) => {
                    assert!(built, "{backend} ran in a build without it");
                    let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &device);
                    assert_eq!(t.sum().into_scalar::<f32>(), 10.0);
                }
                Err(error) => {
                    let message = error.to_string();
                    let expected = if built {
                        missing_driver.to_string()
                    } else {
                        format!("--features {backend}")
                    };
                    assert!(
                        message.contains(&format!("the {backend} backend"))
                            && message.contains(&expected)
                            && message.contains("--backend flex"),
                        "{message}"
                    );
                }
            }
        }
    }
}

/// The examples of this crate's README, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
