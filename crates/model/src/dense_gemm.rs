//! The prefill GEMM for dense weights (f32, bf16, f16) on AVX-512 and AVX2 CPUs, `y = x Wᵀ` over
//! a chunk of tokens.
//!
//! candle's CPU matmul runs on the `gemm` crate, whose AVX-512 kernels need a nightly compiler:
//! on a stable build every prefill projection ran its AVX2 microkernel (perf: 62 % of a
//! 512-token prefill in `gemm_f32::microkernel::fma::f32::x2x6`), half the multiply-adds per
//! instruction an AVX-512 CPU has, and bf16 weights were first widened to an f32 copy of the whole
//! matrix per call (on the AVX2-only AMD EPYC host that copy — fresh pages, one more pass over
//! the weights — left bf16 prefill 22 % behind f32). Here:
//! - weights are widened panel by panel (32 rows on AVX-512, 16 on AVX2, transposed so one
//!   vector load holds one column of a vector's worth of rows) into a buffer that stays in L2
//!   while every activation row passes by;
//! - activation rows are repacked once per call into tiles (12 rows on AVX-512, 6 on AVX2),
//!   interleaved by column, so the kernel's broadcasts read consecutive memory (the last tile
//!   zero-padded);
//! - the register tile is one tile of activation rows × one panel: per column two weight loads,
//!   a broadcast per activation row and two FMAs per broadcast (24 accumulators of 16 lanes on
//!   AVX-512, 12 of 8 lanes on AVX2 — `crate::dense_gemm_avx2`).

use hybrid_simd::Tier;

use crate::gemv::{WeightElement, WeightRows};
use crate::parallel::by_weight_rows;
use crate::Result;

/// Weight rows per parallel task (whole panels of either tier).
const ROWS_PER_TASK: usize = 64;

/// The register tile of one SIMD tier.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Weight rows per packed panel.
    panel: usize,
    /// Activation rows per register tile.
    tile_rows: usize,
}

/// True when [`dense_matmul`] has a kernel on this CPU (and `HYBRID_SIMD`).
pub fn supported() -> bool {
    hybrid_simd::tier() >= Tier::Avx2
}

/// `y[r][j] = Σ_i W[j][i] x[r][i]` for dense weights (`[n, k]` row-major, `n = len / k`) and f32
/// activations `x` (`m × k`), writing `y` (`m × n`). Needs the AVX2 tier or above
/// ([`supported`]).
pub fn dense_matmul(weight: WeightRows<'_>, k: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    match weight {
        WeightRows::F32(w) => matmul(w, k, x, y),
        WeightRows::Bf16(w) => matmul(w, k, x, y),
        WeightRows::F16(w) => matmul(w, k, x, y),
    }
}

fn matmul<W: WeightElement + Sync>(w: &[W], k: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    let bad = |why: String| -> Result<()> {
        Err(candle_core::Error::Msg(format!("dense GEMM: {why}")).into())
    };
    if !supported() || !cfg!(target_arch = "x86_64") {
        return bad("needs the AVX2 tier or above (check dense_gemm::supported first)".into());
    }
    if k == 0 || !w.len().is_multiple_of(k) || !x.len().is_multiple_of(k) {
        return bad(format!(
            "{} weights or {} activations are not rows of {k}",
            w.len(),
            x.len()
        ));
    }
    let (n, m) = (w.len() / k, x.len() / k);
    if y.len() != m * n {
        return bad(format!(
            "[{m}, {k}] × [{n}, {k}]ᵀ does not fit {} outputs",
            y.len()
        ));
    }
    let avx512 = hybrid_simd::tier() >= Tier::Avx512;
    #[cfg(target_arch = "x86_64")]
    let geometry = if avx512 {
        Geometry {
            panel: crate::avx512::DENSE_PANEL,
            tile_rows: crate::avx512::DENSE_TILE_ROWS,
        }
    } else {
        Geometry {
            panel: crate::dense_gemm_avx2::PANEL,
            tile_rows: crate::dense_gemm_avx2::TILE_ROWS,
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let geometry = Geometry {
        panel: 1,
        tile_rows: 1,
    };
    let Geometry { panel, tile_rows } = geometry;
    let tiles = pack_activations(x, k, tile_rows);
    by_weight_rows("dense GEMM", y, m, n, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / m;
        let mut packed_panel = vec![0f32; k * panel];
        let mut tile = vec![0f32; tile_rows * panel];
        let mut start = 0;
        while start < count {
            let rows = panel.min(count - start);
            let weights = &w[(first + start) * k..(first + start + rows) * k];
            // SAFETY: the tier was checked above (AVX-512 when `avx512`, else AVX2).
            unsafe { pack_panel(weights, k, &mut packed_panel, geometry, avx512) };
            for (t, packed) in tiles.chunks_exact(k * tile_rows).enumerate() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the AVX2 tier (AVX-512 when `avx512`) was checked above; the panel
                // holds k × panel values, `packed` k × tile_rows and `tile` tile_rows × panel.
                unsafe {
                    if avx512 {
                        crate::avx512::dense_tile(&packed_panel, packed, k, &mut tile);
                    } else {
                        crate::dense_gemm_avx2::dense_tile(&packed_panel, packed, k, &mut tile);
                    }
                }
                let c0 = t * tile_rows;
                for (c, values) in tile
                    .chunks_exact(panel)
                    .enumerate()
                    .take(m.saturating_sub(c0))
                {
                    let at = (c0 + c) * count + start;
                    out[at..at + rows].copy_from_slice(&values[..rows]);
                }
            }
            start += rows;
        }
    })
}

/// `x` (`m × k`) as tiles of `tile_rows` rows, each `[k][tile_rows]` (column-interleaved), the
/// last padded with zero rows.
fn pack_activations(x: &[f32], k: usize, tile_rows: usize) -> Vec<f32> {
    let m = x.len() / k;
    let tiles = m.div_ceil(tile_rows);
    let mut packed = vec![0f32; tiles * k * tile_rows];
    for (r, row) in x.chunks_exact(k).enumerate() {
        let tile = &mut packed[(r / tile_rows) * k * tile_rows..];
        let lane = r % tile_rows;
        for (i, &v) in row.iter().enumerate() {
            tile[i * tile_rows + lane] = v;
        }
    }
    packed
}

/// Up to one panel of weight rows (`w`, `k` values each) widened to f32 and transposed into
/// `panel[i · geometry.panel + r]`; rows past the matrix are zero. Whole square blocks (16 × 16
/// on AVX-512, 8 × 8 on AVX2) are transposed in registers (the scalar loop took 11 % of a bf16
/// prefill), the column tail here.
///
/// # Safety
/// The CPU must support the AVX-512 tier when `avx512`, else the AVX2 tier (on x86-64).
unsafe fn pack_panel<W: WeightElement>(
    w: &[W],
    k: usize,
    panel: &mut [f32],
    geometry: Geometry,
    avx512: bool,
) {
    let rows = w.len() / k;
    if rows < geometry.panel {
        panel.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees the tier (AVX-512 when `avx512`, else AVX2); `w` holds
    // `rows` ≤ one panel of whole rows and `panel` k × geometry.panel values.
    let done = unsafe {
        if avx512 {
            crate::avx512::pack_panel(w, k, panel);
            k / 16 * 16
        } else {
            crate::dense_gemm_avx2::pack_panel(w, k, panel);
            k / 8 * 8
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (r, row) in w.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate().skip(done) {
            panel[i * geometry.panel + r] = v.widen();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Against a plain f64 product, for every weight type at this CPU's tier, with partial
    /// panels, tasks and tiles and column counts that leave a tail after the transposed blocks
    /// (16 × 16 on AVX-512, 8 × 8 on AVX2).
    #[test]
    fn dense_gemm_matches_a_plain_product() {
        if !supported() {
            eprintln!(
                "skipped: SIMD tier below AVX2 (CPU or HYBRID_SIMD); candle's GEMM runs instead"
            );
            return;
        }
        for (n, k, m) in [
            (70, 96, 13),
            (32, 64, 12),
            (5, 16, 1),
            (129, 48, 40),
            (20, 40, 9),
            (23, 37, 7),
            (13, 24, 5),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 64.0)
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729 % 173) as f32 - 86.0) / 32.0)
                .collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            for weights in [
                WeightRows::F32(&w),
                WeightRows::Bf16(&wb),
                WeightRows::F16(&wh),
            ] {
                let value = |j: usize, i: usize| match weights {
                    WeightRows::F32(w) => f64::from(w[j * k + i]),
                    WeightRows::Bf16(w) => f64::from(w[j * k + i].to_f32()),
                    WeightRows::F16(w) => f64::from(w[j * k + i].to_f32()),
                };
                let mut y = vec![0f32; m * n];
                dense_matmul(weights, k, &x, &mut y).unwrap();
                for r in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|i| value(j, i) * f64::from(x[r * k + i])).sum();
                        let got = f64::from(y[r * n + j]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{n}x{k} m={m} [{r}][{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
