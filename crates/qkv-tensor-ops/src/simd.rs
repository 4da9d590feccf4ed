//! The SIMD level qkv's CPU kernels run at: the widest this CPU has, or a narrower one chosen
//! with the `QKV_SIMD` environment variable or [`set_limit`].
//!
//! Every fused CPU kernel of this crate (LayerNorm, softmax, GELU, dropout, AdamW, the loss,
//! the flash attention kernel and its tile products and transposes) is compiled for several
//! levels and picks one at run time, the level [`active`] reports. A limit makes an AVX-512
//! machine run the AVX2 or the scalar code, so that those paths are tested and timed where
//! they would otherwise never run. It does not reach the matrix products of `qkv-gemm` (the
//! `gemm` crate picks its own kernels) or Burn's own ops.
//!
//! ```
//! use qkv_tensor_ops::simd::{self, SimdLevel};
//!
//! let level: SimdLevel = "avx2".parse().unwrap();
//! assert_eq!(level, SimdLevel::Avx2);
//! assert!("avx1024".parse::<SimdLevel>().is_err());
//! // Whatever the limit, the kernels never run wider than the CPU allows.
//! assert!(simd::active().width() <= simd::detected().width());
//! ```

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Once, OnceLock};

/// The environment variable that limits the SIMD level (`avx512`, `avx2` or `scalar`, and
/// `neon` on ARM), read once, the first time a kernel runs.
pub const ENV_VAR: &str = "QKV_SIMD";

/// A family of vector instructions the kernels can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// No vector instructions beyond the target's baseline (SSE2 on x86-64).
    Scalar,
    /// x86-64 AVX2 with FMA (with BMI1/2, LZCNT, F16C and MOVBE: the x86-64-v3 level).
    Avx2,
    /// x86-64 AVX-512 F, BW, CD, DQ and VL (the x86-64-v4 level).
    Avx512,
    /// AArch64 NEON.
    Neon,
}

impl SimdLevel {
    /// The vector width in bits: 0 for [`Scalar`](Self::Scalar). A limit lets through every
    /// level no wider than itself.
    pub fn width(self) -> u32 {
        match self {
            Self::Scalar => 0,
            Self::Neon => 128,
            Self::Avx2 => 256,
            Self::Avx512 => 512,
        }
    }

    /// The name reports and benchmark JSON use: `AVX-512`, `AVX2+FMA`, `NEON`, and for
    /// [`Scalar`](Self::Scalar) the baseline (`SSE2` on x86-64, `none` elsewhere).
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "AVX-512",
            Self::Avx2 => "AVX2+FMA",
            Self::Neon => "NEON",
            Self::Scalar if cfg!(target_arch = "x86_64") => "SSE2",
            Self::Scalar => "none",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Scalar => 2,
            Self::Avx2 => 3,
            Self::Avx512 => 4,
            Self::Neon => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            2 => Some(Self::Scalar),
            3 => Some(Self::Avx2),
            4 => Some(Self::Avx512),
            5 => Some(Self::Neon),
            _ => None,
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A SIMD level name that is not one of those [`SimdLevel`] knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSimdLevel(pub String);

impl std::fmt::Display for UnknownSimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown SIMD level {:?}: use avx512, avx2, neon or scalar (or leave {ENV_VAR} unset \
             for the widest this CPU has)",
            self.0
        )
    }
}

impl std::error::Error for UnknownSimdLevel {}

impl std::str::FromStr for SimdLevel {
    type Err = UnknownSimdLevel;

    /// Parses `avx512` (or `avx-512`), `avx2`, `neon` or `scalar` (or `none`, `sse2`), in any
    /// case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" => Ok(Self::Avx512),
            "avx2" | "avx2+fma" => Ok(Self::Avx2),
            "neon" => Ok(Self::Neon),
            "scalar" | "none" | "sse2" => Ok(Self::Scalar),
            _ => Err(UnknownSimdLevel(s.to_string())),
        }
    }
}

/// 0: the environment not read yet; 1: no limit; otherwise [`SimdLevel::code`].
static LIMIT: AtomicU8 = AtomicU8::new(0);
const UNREAD: u8 = 0;
const NO_LIMIT: u8 = 1;

/// The limit `QKV_SIMD` sets: `Ok(None)` when it is unset or empty.
pub fn limit_from_env() -> Result<Option<SimdLevel>, UnknownSimdLevel> {
    match std::env::var(ENV_VAR) {
        Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
        _ => Ok(None),
    }
}

/// Limits the kernels of this process to `limit` and narrower (`None`: the widest the CPU
/// has), from the next kernel call on, on every thread. This overrides `QKV_SIMD`.
pub fn set_limit(limit: Option<SimdLevel>) {
    LIMIT.store(limit.map_or(NO_LIMIT, SimdLevel::code), Ordering::Relaxed);
}

/// The limit in force: the last [`set_limit`], else `QKV_SIMD`. An unknown `QKV_SIMD` value is
/// reported once on standard error and ignored (binaries should check it at start-up with
/// [`limit_from_env`], as `cargo xtask` does).
pub fn limit() -> Option<SimdLevel> {
    let code = LIMIT.load(Ordering::Relaxed);
    if code != UNREAD {
        return SimdLevel::from_code(code);
    }
    let limit = limit_from_env().unwrap_or_else(|error| {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| eprintln!("qkv: {error}; ignoring it"));
        None
    });
    // A concurrent `set_limit` wins over the environment.
    let _ = LIMIT.compare_exchange(
        UNREAD,
        limit.map_or(NO_LIMIT, SimdLevel::code),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    SimdLevel::from_code(LIMIT.load(Ordering::Relaxed))
}

/// The widest level this CPU has that the kernels are compiled for.
pub fn detected() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(|| level_of(pulp::Arch::new()))
}

/// The level the kernels run at now: the widest this CPU has within [`limit`].
pub fn active() -> SimdLevel {
    level_of(arch())
}

fn level_of(arch: pulp::Arch) -> SimdLevel {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        match arch {
            pulp::Arch::V4(_) => SimdLevel::Avx512,
            pulp::Arch::V3(_) => SimdLevel::Avx2,
            _ => SimdLevel::Scalar,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match arch {
            pulp::Arch::Neon(_) => SimdLevel::Neon,
            _ => SimdLevel::Scalar,
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = arch;
        SimdLevel::Scalar
    }
}

/// What the kernels dispatch on: `pulp`'s widest level for this CPU, narrowed to [`limit`].
#[inline]
pub(crate) fn arch() -> pulp::Arch {
    let best = pulp::Arch::new();
    let Some(limit) = limit() else {
        return best;
    };
    if detected().width() <= limit.width() {
        return best;
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if limit.width() >= SimdLevel::Avx2.width()
        && let Some(v3) = pulp::x86::V3::try_new()
    {
        return pulp::Arch::V3(v3);
    }
    pulp::Arch::Scalar
}

/// Test helper: one caller at a time may change the limit.
#[cfg(test)]
pub(crate) fn level_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Test helper: runs `check` at each level this CPU has (the widest, AVX2 on an AVX-512 CPU,
/// and scalar), with the limit set and checked, then lifts the limit (also when `check`
/// panics). Tests running beside it meanwhile may run narrower than usual; every level
/// computes the same values within each test's tolerance.
#[cfg(test)]
pub(crate) fn at_each_level(mut check: impl FnMut(SimdLevel)) {
    struct Lift;
    impl Drop for Lift {
        fn drop(&mut self) {
            set_limit(None);
        }
    }
    let _guard = level_lock();
    let _lift = Lift;
    let best = detected();
    let mut levels = vec![best];
    if best == SimdLevel::Avx512 {
        levels.push(SimdLevel::Avx2);
    }
    if best != SimdLevel::Scalar {
        levels.push(SimdLevel::Scalar);
    }
    for &level in &levels {
        set_limit(Some(level));
        assert_eq!(active(), level, "the limit did not take");
        check(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_are_refused() {
        for level in [
            SimdLevel::Scalar,
            SimdLevel::Avx2,
            SimdLevel::Avx512,
            SimdLevel::Neon,
        ] {
            assert_eq!(level.name().parse::<SimdLevel>(), Ok(level));
            assert_eq!(SimdLevel::from_code(level.code()), Some(level));
        }
        assert_eq!(" AVX512 ".parse::<SimdLevel>(), Ok(SimdLevel::Avx512));
        let error = "avx3".parse::<SimdLevel>().unwrap_err().to_string();
        assert!(
            error.contains("\"avx3\"") && error.contains("avx2"),
            "{error}"
        );
    }

    /// The narrowing itself, on this CPU (the kernels' values at each level are checked in
    /// `fused::tests::every_kernel_matches_its_reference_at_every_simd_level`).
    #[test]
    fn a_limit_narrows_the_level_and_never_widens_it() {
        let _guard = level_lock();
        let best = detected();
        set_limit(Some(SimdLevel::Scalar));
        assert_eq!(active(), SimdLevel::Scalar);
        set_limit(Some(SimdLevel::Avx512));
        assert_eq!(active(), best);
        set_limit(Some(SimdLevel::Avx2));
        let expected = match best {
            SimdLevel::Avx512 => SimdLevel::Avx2,
            other => other,
        };
        assert_eq!(active(), expected);
        set_limit(None);
        assert_eq!(active(), best);
    }
}
