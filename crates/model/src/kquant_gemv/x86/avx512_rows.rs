//! The AVX-512 K-quant kernels for several activation rows (a batched decode step): each
//! super-block's header, scales and unpacked weights are decoded once and used for every row,
//! where running the single-row kernels row after row decoded them once per row (0.8B Q4_K_M,
//! 2-core Xeon: `bench --batch 8` only 1.7–1.9× the aggregate of one sequence).
//!
//! Every float step per (weight row, activation row) is the single-row kernel's
//! ([`super::q4_k_group_avx512`], [`super::q6_k_group_avx512`]) in the same order, so each row
//! of a batch gets bit for bit the sums it gets alone.

use std::arch::x86_64::*;

use super::super::{SuperRows, SUPER};
use super::{f16_at, hsum_i32, prefetch_super_block, q4_k_min_dot, q4_k_scales_mins};
use super::{q4_k_nibbles_avx512, q4_k_scale_orders, q6_k_values_avx512, Q6kLanes};
use super::{Q4K_BYTES, Q6K_BYTES};

/// Where activation rows `r0..r0 + R` keep super-block `s` (an index into `rows.d` and, times
/// the values or sums per super-block, into the other arrays), and their scales.
///
/// # Safety
/// Rows `r0..r0 + R` must exist in `rows` and `s` < `supers` = `rows.k / 256`.
#[inline(always)]
unsafe fn super_blocks<const R: usize>(
    rows: &SuperRows,
    r0: usize,
    supers: usize,
    s: usize,
) -> ([usize; R], [f32; R]) {
    let at: [usize; R] = std::array::from_fn(|i| (r0 + i) * supers + s);
    // SAFETY: see # Safety; `d` holds one scale per super-block of every row.
    let dx = std::array::from_fn(|i| unsafe { *rows.d.get_unchecked(at[i]) });
    (at, dx)
}

/// The dot products of `G` rows of Q4_K weights (`weights`, `row_bytes` each) with activation
/// rows `r0..r0 + R` of `rows`, `[weight row][activation row]`.
///
/// # Safety
/// The CPU must support the AVX-512 tier; `weights` must hold `G` rows of `row_bytes` bytes,
/// which are `rows.k / 256` super-blocks; rows `r0..r0 + R` must exist in `rows`, which must
/// hold `q4k_order`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::kquant_gemv) unsafe fn q4_k_rows_avx512<const G: usize, const R: usize>(
    weights: &[u8],
    row_bytes: usize,
    rows: &SuperRows,
    r0: usize,
) -> [[f32; R]; G] {
    let supers = rows.k / SUPER;
    debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q4K_BYTES);
    debug_assert!(rows.q4k_order.len() >= (r0 + R) * rows.k);
    let zero = _mm512_setzero_si512();
    let order = q4_k_scale_orders();
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    let mut mins = [[0f32; R]; G];
    let w = weights.as_ptr();
    for s in 0..supers {
        // SAFETY: s < supers and rows r0..r0 + R exist, so each row's 256 values, scale and
        // eight sums of 32 of this super-block are inside `rows`; each weight row's block is
        // inside `weights`; prefetches never fault.
        unsafe {
            let (at, dx) = super_blocks::<R>(rows, r0, supers, s);
            let sums32: [__m128i; R] = std::array::from_fn(|i| {
                _mm_loadu_si128(rows.sums32.as_ptr().add(at[i] * 8).cast())
            });
            for g in 0..G {
                let block = w.add(g * row_bytes + s * Q4K_BYTES);
                prefetch_super_block(block.wrapping_add(G * row_bytes));
                let d = f16_at(block);
                let dmin = f16_at(block.add(2));
                let (scales, mins_of) =
                    q4_k_scales_mins(block.add(4).cast::<[u8; 12]>().read_unaligned());
                let eight = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi64x(
                    0,
                    i64::from_le_bytes(scales),
                )));
                // Chunks 0–1 low, 0–1 high, 2–3 low, 2–3 high: decoded once for every row.
                let [lo0, hi0] = q4_k_nibbles_avx512(block, 0);
                let [lo1, hi1] = q4_k_nibbles_avx512(block, 1);
                let nibbles = [lo0, hi0, lo1, hi1];
                for i in 0..R {
                    let x = rows.q4k_order.as_ptr().add(at[i] * SUPER);
                    let scaled = _mm256_mul_ps(eight, _mm256_set1_ps(d * dx[i]));
                    let wide = _mm512_castps256_ps512(scaled);
                    for (j, &nib) in nibbles.iter().enumerate() {
                        let xv = _mm512_loadu_si512(x.add(64 * j).cast());
                        let dots = _mm512_dpbusd_epi32(zero, nib, xv);
                        let sc = _mm512_permutexvar_ps(order[j], wide);
                        acc[g][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), sc, acc[g][i]);
                    }
                    mins[g][i] += dmin * dx[i] * q4_k_min_dot(mins_of, sums32[i]) as f32;
                }
            }
        }
    }
    std::array::from_fn(|g| std::array::from_fn(|i| _mm512_reduce_add_ps(acc[g][i]) - mins[g][i]))
}

/// The dot products of `G` rows of Q6_K weights (`weights`, `row_bytes` each) with activation
/// rows `r0..r0 + R` of `rows`, `[weight row][activation row]`.
///
/// # Safety
/// As [`q4_k_rows_avx512`], for 210-byte Q6_K super-blocks (no `q4k_order` needed).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::kquant_gemv) unsafe fn q6_k_rows_avx512<const G: usize, const R: usize>(
    weights: &[u8],
    row_bytes: usize,
    rows: &SuperRows,
    r0: usize,
) -> [[f32; R]; G] {
    let supers = rows.k / SUPER;
    debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q6K_BYTES);
    debug_assert!(rows.q.len() >= (r0 + R) * rows.k);
    let zero = _mm512_setzero_si512();
    let lanes = Q6kLanes::new();
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    let mut offsets = [[0f32; R]; G];
    let w = weights.as_ptr();
    for s in 0..supers {
        // SAFETY: as in `q4_k_rows_avx512`, for 210-byte blocks and the 16 sums of 16.
        unsafe {
            let (at, dx) = super_blocks::<R>(rows, r0, supers, s);
            for g in 0..G {
                let block = w.add(g * row_bytes + s * Q6K_BYTES);
                prefetch_super_block(block.wrapping_add(G * row_bytes));
                let scale_bytes = _mm_loadu_si128(block.add(192).cast());
                let d = f16_at(block.add(208));
                let scales16 = _mm256_cvtepi8_epi16(scale_bytes);
                let scales_f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scale_bytes));
                // Values 0–63 and 64–127 of each half: decoded once for every row.
                let [v0, v1] = q6_k_values_avx512(block, 0, &lanes);
                let [v2, v3] = q6_k_values_avx512(block, 1, &lanes);
                let values = [v0, v1, v2, v3];
                for i in 0..R {
                    let x = rows.q.as_ptr().add(at[i] * SUPER);
                    let dd = d * dx[i];
                    let sums16 = _mm256_loadu_si256(rows.sums16.as_ptr().add(at[i] * 16).cast());
                    // The −32 of every value: 32 · Σ_j sc_j · Σ x over sub-block j.
                    let offset = hsum_i32(_mm256_madd_epi16(scales16, sums16));
                    offsets[g][i] += dd * (32 * offset) as f32;
                    let scales = _mm512_mul_ps(scales_f, _mm512_set1_ps(dd));
                    for (j, &v) in values.iter().enumerate() {
                        let xv = _mm512_loadu_si512(x.add(64 * j).cast());
                        let dots = _mm512_dpbusd_epi32(zero, v, xv);
                        let sc = _mm512_permutexvar_ps(lanes.order[j], scales);
                        acc[g][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), sc, acc[g][i]);
                    }
                }
            }
        }
    }
    std::array::from_fn(|g| {
        std::array::from_fn(|i| _mm512_reduce_add_ps(acc[g][i]) - offsets[g][i])
    })
}
