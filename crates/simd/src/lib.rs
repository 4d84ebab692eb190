//! # hybrid-simd
//!
//! The instruction-set tier every hot CPU kernel of hybrid-decode runs at — dense and quantized
//! GEMV, the Gated DeltaNet step — decided once per process from the CPU, so that one binary
//! takes the widest path each machine has:
//!
//! - [`Tier::Avx512`]: AVX-512 F, BW, VL and VNNI (Intel Ice Lake and later, AMD Zen 4 and later);
//! - [`Tier::Avx2`]: AVX2, FMA and F16C (every x86-64 CPU since Haswell / Zen 1);
//! - [`Tier::Portable`]: plain Rust, any CPU.
//!
//! The environment variable [`ENV`] (`HYBRID_SIMD=avx2` or `portable`) lowers the tier, to
//! measure the AVX2 path on an AVX-512 machine; the command-line tools check it with
//! [`requested`] before they start, so a misspelt value is an error, never ignored.

#![warn(missing_docs)]

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub mod exp;

/// The environment variable that lowers the tier: `avx512`, `avx2` or `portable`.
pub const ENV: &str = "HYBRID_SIMD";

/// A SIMD instruction-set tier, ordered from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Plain Rust (the compiler's baseline vectorisation).
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/VNNI (with everything [`Tier::Avx2`] needs).
    Avx512,
}

impl Tier {
    /// Every tier, narrowest first.
    pub const ALL: [Tier; 3] = [Tier::Portable, Tier::Avx2, Tier::Avx512];

    /// The spelling [`ENV`] accepts.
    pub fn key(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    /// A human-readable name, e.g. for `kernels: …` lines.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "AVX2+FMA",
            Tier::Avx512 => "AVX-512 VNNI",
        }
    }

    /// True when this CPU can execute the tier's instructions.
    pub fn is_supported(self) -> bool {
        match self {
            Tier::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => {
                Tier::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest tier this CPU supports (detected once per process: kernels call this to
    /// lower a tier they are given).
    pub fn detect() -> Tier {
        static DETECTED: OnceLock<Tier> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Tier::ALL
                .into_iter()
                .rev()
                .find(|t| t.is_supported())
                .unwrap_or(Tier::Portable)
        })
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`ENV`] cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimdError {
    /// The value names no tier.
    #[error("{ENV}={value:?} is not a SIMD tier: use avx512, avx2 or portable (or unset it)")]
    Unknown {
        /// The value as set.
        value: String,
    },
    /// The value names a tier this CPU lacks.
    #[error("{ENV}={} asks for {tier}, which this CPU does not support (it has {detected}): use a lower tier or unset it", tier.key())]
    Unsupported {
        /// The tier asked for.
        tier: Tier,
        /// The widest tier the CPU has.
        detected: Tier,
    },
}

/// The tier [`ENV`] asks for, if it is set: an error for a value that names no tier or a tier
/// this CPU lacks.
pub fn requested() -> Result<Option<Tier>, SimdError> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    let key = value.trim().to_ascii_lowercase();
    let tier = Tier::ALL
        .into_iter()
        .find(|t| t.key() == key)
        .ok_or_else(|| SimdError::Unknown {
            value: value.to_string(),
        })?;
    if !tier.is_supported() {
        return Err(SimdError::Unsupported {
            tier,
            detected: Tier::detect(),
        });
    }
    Ok(Some(tier))
}

/// The tier the kernels run at: the CPU's widest, or the one [`ENV`] asks for. Decided once per
/// process. A value of [`ENV`] that [`requested`] refuses is ignored here (the kernels must run
/// on what the CPU has); the tools report it through [`requested`] before any kernel runs.
pub fn tier() -> Tier {
    static TIER: OnceLock<Tier> = OnceLock::new();
    *TIER.get_or_init(|| requested().ok().flatten().unwrap_or_else(Tier::detect))
}

/// The tier the quantized decode GEMV kernels (Q8_0, Q4_K, Q6_K against one or a few activation
/// rows) run at: [`tier`], except on a CPU that runs each 512-bit operation as two 256-bit halves
/// (AMD Zen 4), where their AVX2 kernels are faster and this is [`Tier::Avx2`]. The AVX-512 Q8_0
/// kernel gathers block scales and the Q4_K one permutes them across the whole register, both
/// far slower there: 0.8B-shape Q8_0 decode, 2-core AMD EPYC Zen 4, two alternating rounds,
/// 18.1–18.4 tok/s at AVX-512 against 25.0–26.5 at AVX2 (README, "CPU kernels and SIMD tiers").
/// Prefill's GEMMs keep [`tier`], where AVX-512 wins on the same CPU. An explicit [`ENV`] is
/// obeyed as it is (`HYBRID_SIMD=avx512` measures the AVX-512 kernels on Zen 4).
pub fn quantized_gemv_tier() -> Tier {
    static TIER: OnceLock<Tier> = OnceLock::new();
    *TIER.get_or_init(|| match requested() {
        Ok(Some(asked)) => asked,
        _ if Tier::detect() == Tier::Avx512 && splits_512_bit_operations() => Tier::Avx2,
        _ => Tier::detect(),
    })
}

/// True on AMD Zen 4 (vendor AuthenticAMD, family 0x19 with AVX-512; Zen 3 shares the family but
/// has no AVX-512, Zen 5 is family 0x1A with a full 512-bit data path).
#[cfg(target_arch = "x86_64")]
fn splits_512_bit_operations() -> bool {
    use std::arch::x86_64::__cpuid;
    let vendor = __cpuid(0);
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    let signature = __cpuid(1).eax;
    let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
    amd && family == 0x19
}

#[cfg(not(target_arch = "x86_64"))]
fn splits_512_bit_operations() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantized decode tier is one the CPU has, and differs from the detected tier only
    /// on Zen 4 (AVX2 there) or when HYBRID_SIMD asks for a tier.
    #[test]
    fn quantized_gemv_tier_is_lowered_only_on_zen_4() {
        let chosen = quantized_gemv_tier();
        assert!(chosen.is_supported());
        if requested().ok().flatten().is_none() {
            let zen4 = Tier::detect() == Tier::Avx512 && splits_512_bit_operations();
            let expected = if zen4 { Tier::Avx2 } else { Tier::detect() };
            assert_eq!(chosen, expected);
        }
    }

    #[test]
    fn the_chosen_tier_runs_on_this_cpu_and_names_round_trip() {
        assert!(tier().is_supported());
        assert!(Tier::detect() >= tier() || requested().is_err());
        for t in Tier::ALL {
            assert_eq!(Tier::ALL.iter().find(|o| o.key() == t.key()), Some(&t));
        }
        assert!(Tier::Portable.is_supported());
    }
}
