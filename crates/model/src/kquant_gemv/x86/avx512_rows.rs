//! The AVX-512 K-quant kernels for several activation rows (a batched decode step): each
//! super-block's header, scales and unpacked weights are decoded once and used for every row,
//! where running the single-row kernels row after row decoded them once per row (0.8B Q4_K_M,
//! 2-core Xeon: `bench --batch 8` only 1.7× the aggregate of one sequence).
//!
//! Every float step per (weight row, activation row) is the single-row kernel's
//! ([`super::q4_k_group_avx512`], [`super::q6_k_group_avx512`]) in the same order: a lane
//! permutation of `c · scales` equals `c ·` the permuted scales for a broadcast `c`, so the
//! scale vectors are built the same way, and each row of a batch gets bit for bit the sums it
//! gets alone.

use std::arch::x86_64::*;

use super::super::{SuperRows, SUPER};
use super::{f16_at, hsum_i32, prefetch_super_block, q4_k_min_dot, q4_k_scales_mins};
use super::{Q4K_BYTES, Q6K_BYTES};

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
    let low = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    // Lanes 0–7 take sub-block a's scale, 8–15 sub-block b's, for the (a, b) pairs of the
    // low and high nibbles of chunks (0, 1) and (2, 3).
    let pick = |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
    let order = [pick(0, 2), pick(1, 3), pick(4, 6), pick(5, 7)];
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    let mut mins = [[0f32; R]; G];
    let w = weights.as_ptr();
    for s in 0..supers {
        // SAFETY: s < supers and rows r0..r0 + R exist, so each row's 256 values, scale and
        // eight sums of 32 of this super-block are inside `rows`; each weight row's block is
        // inside `weights`; prefetches never fault.
        unsafe {
            let at: [usize; R] = std::array::from_fn(|i| (r0 + i) * supers + s);
            let dx: [f32; R] = std::array::from_fn(|i| *rows.d.get_unchecked(at[i]));
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
                // The nibbles of both 64-byte pairs of chunks, low then high.
                let nibbles: [__m512i; 4] = std::array::from_fn(|j| {
                    let q = _mm512_loadu_si512(block.add(16 + 64 * (j / 2)).cast());
                    if j % 2 == 0 {
                        _mm512_and_si512(q, low)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16(q, 4), low)
                    }
                });
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
    let low = _mm512_set1_epi8(0x0F);
    let two_bits = _mm512_set1_epi8(3);
    let zero = _mm512_setzero_si512();
    // Per 16-bit lane: the high-bit pair of values 0–31 | 32–63 (shifts 0 | 2) and of
    // 64–95 | 96–127 (4 | 6).
    let split = |a: i16, b: i16| {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi16(a)),
            _mm256_set1_epi16(b),
        )
    };
    let (shift_a, shift_b) = (split(0, 2), split(4, 6));
    // Four lanes per sub-block of 16: sub-blocks 4i..4i + 4 of the super-block.
    let quad = |i: i32| {
        let b = 4 * i;
        _mm512_setr_epi32(
            b,
            b,
            b,
            b,
            b + 1,
            b + 1,
            b + 1,
            b + 1,
            b + 2,
            b + 2,
            b + 2,
            b + 2,
            b + 3,
            b + 3,
            b + 3,
            b + 3,
        )
    };
    let order = [quad(0), quad(1), quad(2), quad(3)];
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    let mut offsets = [[0f32; R]; G];
    let w = weights.as_ptr();
    for s in 0..supers {
        // SAFETY: as in `q4_k_rows_avx512`, for 210-byte blocks and the 16 sums of 16.
        unsafe {
            let at: [usize; R] = std::array::from_fn(|i| (r0 + i) * supers + s);
            let dx: [f32; R] = std::array::from_fn(|i| *rows.d.get_unchecked(at[i]));
            for g in 0..G {
                let block = w.add(g * row_bytes + s * Q6K_BYTES);
                prefetch_super_block(block.wrapping_add(G * row_bytes));
                let scale_bytes = _mm_loadu_si128(block.add(192).cast());
                let d = f16_at(block.add(208));
                let scales16 = _mm256_cvtepi8_epi16(scale_bytes);
                let scales_f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scale_bytes));
                // Values 0–63 and 64–127 of each half super-block, 0–63 with the high bits.
                let values: [__m512i; 4] = std::array::from_fn(|j| {
                    let half = j / 2;
                    let l = _mm512_loadu_si512(block.add(64 * half).cast());
                    let h = _mm256_loadu_si256(block.add(128 + 32 * half).cast());
                    let hh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), h);
                    let (nibbles, shift) = if j % 2 == 0 {
                        (_mm512_and_si512(l, low), shift_a)
                    } else {
                        (_mm512_and_si512(_mm512_srli_epi16(l, 4), low), shift_b)
                    };
                    let bits = _mm512_and_si512(_mm512_srlv_epi16(hh, shift), two_bits);
                    _mm512_or_si512(nibbles, _mm512_slli_epi16(bits, 4))
                });
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
                        let sc = _mm512_permutexvar_ps(order[j], scales);
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
