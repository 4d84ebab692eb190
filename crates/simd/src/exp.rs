//! `e^x` over SIMD lanes, for the kernels that need it in their inner loops (the GDN gates and
//! SiLU, the attention softmax): Cody–Waite range reduction and the Cephes degree-6 polynomial,
//! ≈ 1 ulp where the result is a normal f32 and x ≤ 88.0; 0 below −87.3; +inf from where the
//! reduction's 2^n leaves f32's exponents (x ≈ 88.03, a little short of f32's own limit, 88.72).
//! One routine per width, so that every kernel rounds alike.

use std::arch::x86_64::*;

/// The polynomial's coefficients after the constant and linear terms, highest degree first.
const POLYNOMIAL: [f32; 5] = [
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
const DEGREE_SIX: f32 = 1.987_569_1e-4;
/// ln 2 split in a part exact in f32 and a small correction.
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
const LOWEST: f32 = -87.336_55;
const HIGHEST: f32 = 88.722_83;

/// `e^x` for eight lanes.
///
/// # Safety
/// Safe to call from code compiled with AVX2 and FMA enabled; elsewhere the caller must know
/// the CPU has them (as [`crate::Tier::Avx2`] does).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub fn exp_avx2(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(LOWEST)),
        _mm256_set1_ps(HIGHEST),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HIGH), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LOW), r);
    let mut p = _mm256_set1_ps(DEGREE_SIX);
    for c in POLYNOMIAL {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// `e^x` for sixteen lanes, the same arithmetic as [`exp_avx2`].
///
/// # Safety
/// Safe to call from code compiled with AVX-512 F, AVX2 and FMA enabled; elsewhere the caller
/// must know the CPU has them (as [`crate::Tier::Avx512`] does).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub fn exp_avx512(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(LOWEST)),
        _mm512_set1_ps(HIGHEST),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HIGH), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LOW), r);
    let mut p = _mm512_set1_ps(DEGREE_SIX);
    for c in POLYNOMIAL {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tier;

    /// Both widths against f64 `exp` from deep underflow to overflow: within 2 ulp (relative
    /// 2.4e-7) where the result is a normal f32 up to 88.0, 0 below the range, +inf above
    /// 88.72, and between the two either +inf or accurate.
    #[test]
    fn matches_f64_exp_across_the_range() {
        let xs: Vec<f32> = (-1000..=1000).map(|i| i as f32 * 0.09).collect();
        let check = |x: f32, got: f32| {
            let want = f64::from(x).exp();
            if x < LOWEST {
                assert!(got < 1e-37, "e^{x} = {got}");
            } else if x > HIGHEST {
                assert!(got.is_infinite(), "e^{x} = {got}");
            } else if x > 88.0 && got.is_infinite() {
                // 2^n overflowed first: the documented early saturation.
            } else if want > 1.2e-38 {
                let error = (f64::from(got) - want).abs() / want;
                assert!(error < 2.4e-7, "e^{x}: {got} vs {want} ({error:e})");
            }
        };
        if Tier::Avx2.is_supported() {
            for chunk in xs.chunks_exact(8) {
                let mut out = [0f32; 8];
                // SAFETY: AVX2 and FMA are supported (checked above); 8 lanes in and out.
                unsafe {
                    _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(chunk.as_ptr())))
                };
                chunk.iter().zip(out).for_each(|(x, y)| check(*x, y));
            }
        }
        if Tier::Avx512.is_supported() {
            for chunk in xs.chunks_exact(16) {
                let mut out = [0f32; 16];
                // SAFETY: AVX-512 F is supported (checked above); 16 lanes in and out.
                unsafe {
                    _mm512_storeu_ps(
                        out.as_mut_ptr(),
                        exp_avx512(_mm512_loadu_ps(chunk.as_ptr())),
                    )
                };
                chunk.iter().zip(out).for_each(|(x, y)| check(*x, y));
            }
        }
    }
}
