//! The AVX2 kernels of [`crate::dense_gemm`]: a register tile of 6 activation rows × 16 weight
//! rows (12 accumulators, two weight loads and six broadcasts per column — 15 of the 16 ymm
//! registers), and the panel packing that widens and transposes weight rows 8 × 8 at a time.

use std::arch::x86_64::*;

use crate::gemv::WeightElement;

/// Weight rows per packed panel: two 8-lane vectors.
pub(crate) const PANEL: usize = 16;
/// Activation rows per register tile.
pub(crate) const TILE_ROWS: usize = 6;

/// One register tile: `TILE_ROWS` packed activation rows (`x[i · 6 + c]`) against `PANEL` packed
/// weight rows (`panel[i · 16 + r]`) over `k` columns, into `tile[c · 16 + r]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `panel` must hold `k × 16` values, `x` `k × 6` and
/// `tile` `6 × 16`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dense_tile(panel: &[f32], x: &[f32], k: usize, tile: &mut [f32]) {
    debug_assert!(
        panel.len() >= k * PANEL && x.len() >= k * TILE_ROWS && tile.len() >= PANEL * TILE_ROWS
    );
    let mut lo = [_mm256_setzero_ps(); TILE_ROWS];
    let mut hi = [_mm256_setzero_ps(); TILE_ROWS];
    let (w, xs) = (panel.as_ptr(), x.as_ptr());
    for i in 0..k {
        // SAFETY: i < k, so the 16 weights at 16i and the 6 activations at 6i are inside.
        unsafe {
            let w0 = _mm256_loadu_ps(w.add(PANEL * i));
            let w1 = _mm256_loadu_ps(w.add(PANEL * i + 8));
            for c in 0..TILE_ROWS {
                let xb = _mm256_broadcast_ss(&*xs.add(TILE_ROWS * i + c));
                lo[c] = _mm256_fmadd_ps(w0, xb, lo[c]);
                hi[c] = _mm256_fmadd_ps(w1, xb, hi[c]);
            }
        }
    }
    for c in 0..TILE_ROWS {
        // SAFETY: `tile` holds TILE_ROWS rows of PANEL values.
        unsafe {
            _mm256_storeu_ps(tile.as_mut_ptr().add(c * PANEL), lo[c]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(c * PANEL + 8), hi[c]);
        }
    }
}

/// Widens 8 × 8 blocks of up to 16 weight rows (`w`, `k` values each) into the transposed panel
/// (`panel[i · 16 + r]`), transposing each block in registers (8 loads, three rounds of 8
/// shuffles, 8 stores per 64 values). Columns past the last multiple of 8 and rows past `w`'s are
/// left to the caller.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must hold whole rows of `k` values (at most 16
/// rows) and `panel` `k × 16` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pack_panel<W: WeightElement>(w: &[W], k: usize, panel: &mut [f32]) {
    let rows = w.len() / k;
    debug_assert!(rows <= PANEL && panel.len() >= k * PANEL);
    for r0 in (0..rows).step_by(8) {
        let mut i0 = 0;
        while i0 + 8 <= k {
            // SAFETY: rows r0 + j < rows exist with k ≥ i0 + 8 values; the 8 stores land at
            // columns i0..i0 + 8 of the panel, rows r0..r0 + 8 (r0 + 8 ≤ 16).
            unsafe {
                let v: [__m256; 8] = std::array::from_fn(|j| {
                    if r0 + j < rows {
                        W::load8(w.as_ptr().add((r0 + j) * k + i0))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                // Round 1: rows 2q and 2q + 1 interleaved within each 128-bit lane.
                let t: [__m256; 8] = std::array::from_fn(|j| {
                    let (a, b) = (v[j & !1], v[j | 1]);
                    if j % 2 == 0 {
                        _mm256_unpacklo_ps(a, b)
                    } else {
                        _mm256_unpackhi_ps(a, b)
                    }
                });
                // Round 2: u[4h + c] holds column c (low lane) and c + 4 (high lane) of rows
                // 4h..4h + 4.
                let u: [__m256; 8] = std::array::from_fn(|j| {
                    let (h, c) = (j / 4, j % 4);
                    let (a, b) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
                    if c % 2 == 0 {
                        _mm256_shuffle_ps::<0x44>(a, b)
                    } else {
                        _mm256_shuffle_ps::<0xEE>(a, b)
                    }
                });
                // Round 3: the low lanes of rows 0..4 and 4..8 make column c, the high ones c + 4.
                for c in 0..4 {
                    let low = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
                    let high = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
                    _mm256_storeu_ps(panel.as_mut_ptr().add((i0 + c) * PANEL + r0), low);
                    _mm256_storeu_ps(panel.as_mut_ptr().add((i0 + c + 4) * PANEL + r0), high);
                }
            }
            i0 += 8;
        }
    }
}
