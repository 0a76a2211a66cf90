//! Which SIMD kernels the CPU runs, chosen once at run time from what the processor has, so
//! one binary runs on every x86-64 and aarch64 machine (the build targets the baseline of
//! each architecture; the kernels are `#[target_feature]` functions).
//!
//! A set covers every hand-written kernel: the decode products (`gemv`), the batched ones
//! (`gemm`) and attention. `HYBRID_KERNELS=scalar|avx2|avx512|neon` forces a set (the tests
//! compare sets on one machine); a set the CPU lacks is refused when a model loads.
use crate::{Error, Result};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// Plain Rust: the tests' reference, and what runs below AVX2 or off x86 and aarch64.
    Scalar,
    /// AVX2 + FMA + F16C, with AVX-VNNI's 256-bit dot products where the CPU has them
    /// (Intel client CPUs since Alder Lake, AMD Zen 5).
    Avx2,
    /// AVX512F/BW + AVX512-VNNI (Intel servers since Cascade Lake, AMD Zen 4 and later).
    Avx512,
    /// aarch64 NEON, with the dot-product extension where the CPU has it (Apple M1 and
    /// later, Graviton 2 and later).
    Neon,
}

/// What chooses the set: read by [`KernelSet::active`] and checked by [`KernelSet::select`].
pub const ENV: &str = "HYBRID_KERNELS";

impl KernelSet {
    const ALL: [KernelSet; 4] = [KernelSet::Avx512, KernelSet::Avx2, KernelSet::Neon, KernelSet::Scalar];

    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Scalar => "scalar",
            KernelSet::Avx2 => "avx2",
            KernelSet::Avx512 => "avx512",
            KernelSet::Neon => "neon",
        }
    }

    /// The name with the optional extension in use: `avx2+avxvnni`, `neon+dotprod`.
    pub fn describe(self) -> String {
        let extension = match self {
            KernelSet::Avx2 if has_avx_vnni() => "+avxvnni",
            KernelSet::Neon if has_neon_dotprod() => "+dotprod",
            _ => "",
        };
        format!("{}{extension}", self.name())
    }

    /// Whether this CPU runs the set.
    pub fn runs_here(self) -> bool {
        match self {
            KernelSet::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") && is_x86_feature_detected!("bmi2")
            }
            #[cfg(target_arch = "x86_64")]
            KernelSet::Avx512 => {
                KernelSet::Avx2.runs_here()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            KernelSet::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every set this CPU runs, fastest first.
    pub fn available() -> Vec<KernelSet> {
        Self::ALL.into_iter().filter(|set| set.runs_here()).collect()
    }

    /// The fastest set this CPU runs.
    pub fn detect() -> KernelSet {
        Self::available()[0]
    }

    /// The set `HYBRID_KERNELS` asks for, else the fastest: an error naming the sets this CPU
    /// runs when the variable names an unknown set or one the CPU lacks. Model loading calls
    /// this, so a wrong setting stops the program before any kernel runs.
    pub fn select() -> Result<KernelSet> {
        let Ok(wanted) = std::env::var(ENV) else { return Ok(Self::detect()) };
        let here = Self::available().iter().map(|set| set.name()).collect::<Vec<_>>().join(", ");
        let set = Self::ALL.into_iter().find(|set| set.name() == wanted.trim()).ok_or_else(|| {
            Error::InvalidInput(format!("{ENV}={wanted} is not a kernel set: use one of scalar, avx2, avx512, neon (this CPU runs {here}), or unset it"))
        })?;
        match set.runs_here() {
            true => Ok(set),
            false => Err(Error::InvalidInput(format!("{ENV}={wanted}: this CPU lacks the instructions of that set; it runs {here} (or unset {ENV})"))),
        }
    }

    /// The set every kernel uses in this process: [`select`](Self::select)'s choice, or the
    /// fastest if that was an error (which model loading has reported).
    pub fn active() -> KernelSet {
        static ACTIVE: OnceLock<KernelSet> = OnceLock::new();
        *ACTIVE.get_or_init(|| Self::select().unwrap_or_else(|_| Self::detect()))
    }
}

/// Runs `f` compiled for the active set's vector width. `f` is inlined into a function with
/// the set's target features, so its plain loops (norms, SiLU, quantizing activations,
/// unpacking weights) use AVX2 or AVX512 registers instead of the baseline's SSE2. The
/// results are the same bits either way: Rust never fuses or reorders float operations. Only
/// what is inlined into `f` is recompiled: loops written out in it or in `#[inline(always)]`
/// functions, not the functions it calls (`collect`'s among them).
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match KernelSet::active() {
        // SAFETY: the active set runs on this CPU.
        KernelSet::Avx512 => return unsafe { with_avx512(f) },
        KernelSet::Avx2 => return unsafe { with_avx2(f) },
        _ => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// candle's own kernels (which run the products our kernels do not cover) choose their
/// instructions by themselves; a forced AVX2 or scalar set asks candle for its AVX2 tier too
/// (its `MISTRALRS_FORCE_AVX2`), so that an A/B on one machine compares like with like.
/// Called first thing in `main`, before any thread reads the environment.
pub fn align_candle_with_the_set() {
    if matches!(std::env::var(ENV).as_deref().map(str::trim), Ok("avx2" | "scalar")) && std::env::var_os("MISTRALRS_FORCE_AVX2").is_none() {
        std::env::set_var("MISTRALRS_FORCE_AVX2", "1");
    }
}

pub fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avxvnni");
    #[allow(unreachable_code)]
    false
}

pub fn has_neon_dotprod() -> bool {
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("dotprod");
    #[allow(unreachable_code)]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detected_set_runs_here_and_scalar_always_does() {
        let available = KernelSet::available();
        assert_eq!(available[0], KernelSet::detect());
        assert_eq!(available.last(), Some(&KernelSet::Scalar));
        assert!(available.iter().all(|set| set.runs_here()));
        #[cfg(target_arch = "x86_64")]
        assert!(!KernelSet::Neon.runs_here());
        #[cfg(target_arch = "aarch64")]
        assert!(!KernelSet::Avx2.runs_here() && KernelSet::Neon.runs_here());
    }

    /// tests/arm/run.sh runs the tests under qemu on CPUs with and without the dot-product
    /// extension and says which (`HYBRID_TEST_DOTPROD=1|0`), so that each run is sure to take
    /// the NEON flavour it is meant to test.
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn dotprod_is_detected_where_the_cpu_has_it() {
        let Ok(want) = std::env::var("HYBRID_TEST_DOTPROD") else { return };
        assert_eq!(has_neon_dotprod(), want == "1", "HYBRID_TEST_DOTPROD={want}");
        assert_eq!(KernelSet::Neon.describe(), if want == "1" { "neon+dotprod" } else { "neon" });
    }
}
