//! The prefill GEMM for dense weights (f32, bf16, f16) on AVX-512 CPUs, `y = x Wᵀ` over a chunk
//! of tokens.
//!
//! candle's CPU matmul runs on the `gemm` crate, whose AVX-512 kernels need a nightly compiler:
//! on a stable build every prefill projection ran its AVX2 microkernel (perf: 62 % of a
//! 512-token prefill in `gemm_f32::microkernel::fma::f32::x2x6`), half the multiply-adds per
//! instruction an AVX-512 CPU has, and bf16 weights were first widened to an f32 copy of the whole
//! matrix per call. Here:
//! - weights are widened panel by panel (32 rows, transposed so one 512-bit load holds
//!   one column of 16 rows) into a buffer that stays in L2 while every activation row passes by;
//! - activation rows are repacked once per call into tiles of 12 rows, interleaved
//!   by column, so the kernel's broadcasts read consecutive memory (the last tile zero-padded);
//! - the register tile is 12 activation rows × 32 weight rows: 24 accumulators, per column two
//!   weight loads, twelve broadcasts and 24 FMAs.
//!
//! AVX2 CPUs keep candle's GEMM (its AVX2 kernel is this one's equal there).

use hybrid_simd::Tier;

use crate::gemv::{WeightElement, WeightRows};
use crate::parallel::by_weight_rows;
use crate::Result;

/// Weight rows per packed panel: two 16-lane vectors.
pub(crate) const PANEL: usize = 32;
/// Activation rows per register tile.
pub(crate) const TILE_ROWS: usize = 12;
/// Weight rows per parallel task (whole panels).
const ROWS_PER_TASK: usize = 64;

/// True when [`dense_matmul`] has a kernel on this CPU (and `HYBRID_SIMD`).
pub fn supported() -> bool {
    hybrid_simd::tier() >= Tier::Avx512
}

/// `y[r][j] = Σ_i W[j][i] x[r][i]` for dense weights (`[n, k]` row-major, `n = len / k`) and f32
/// activations `x` (`m × k`), writing `y` (`m × n`). Needs the AVX-512 tier ([`supported`]).
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
    if !supported() {
        return bad("needs the AVX-512 tier (check dense_gemm::supported first)".into());
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
    let tiles = pack_activations(x, k);
    by_weight_rows("dense GEMM", y, m, n, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / m;
        let mut panel = vec![0f32; k * PANEL];
        let mut tile = [[0f32; PANEL]; TILE_ROWS];
        let mut start = 0;
        while start < count {
            let rows = PANEL.min(count - start);
            pack_panel(
                &w[(first + start) * k..(first + start + rows) * k],
                k,
                &mut panel,
            );
            for (t, packed) in tiles.chunks_exact(k * TILE_ROWS).enumerate() {
                // SAFETY: the AVX-512 tier was checked above; `panel` holds k × PANEL values and
                // `packed` k × TILE_ROWS.
                unsafe { crate::avx512::dense_tile(&panel, packed, k, &mut tile) };
                let c0 = t * TILE_ROWS;
                for (c, values) in tile.iter().enumerate().take(m.saturating_sub(c0)) {
                    let at = (c0 + c) * count + start;
                    out[at..at + rows].copy_from_slice(&values[..rows]);
                }
            }
            start += rows;
        }
    })
}

/// `x` (`m × k`) as tiles of 12 rows, each `[k][TILE_ROWS]` (column-interleaved),
/// the last padded with zero rows.
fn pack_activations(x: &[f32], k: usize) -> Vec<f32> {
    let m = x.len() / k;
    let tiles = m.div_ceil(TILE_ROWS);
    let mut packed = vec![0f32; tiles * k * TILE_ROWS];
    for (r, row) in x.chunks_exact(k).enumerate() {
        let tile = &mut packed[(r / TILE_ROWS) * k * TILE_ROWS..];
        let lane = r % TILE_ROWS;
        for (i, &v) in row.iter().enumerate() {
            tile[i * TILE_ROWS + lane] = v;
        }
    }
    packed
}

/// Up to [`PANEL`] weight rows (`w`, `k` values each) widened to f32 and transposed into
/// `panel[i · PANEL + r]`; rows past the matrix are zero. Whole 16 × 16 blocks are transposed in
/// registers (the scalar loop took 11 % of a bf16 prefill), the column tail here.
fn pack_panel<W: WeightElement>(w: &[W], k: usize, panel: &mut [f32]) {
    let rows = w.len() / k;
    if rows < PANEL {
        panel.fill(0.0);
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: the AVX-512 tier was checked; `w` holds `rows` ≤ PANEL whole rows and `panel`
        // k × PANEL values.
        unsafe { crate::avx512::pack_panel(w, k, panel) };
        done = k / 16 * 16;
    }
    for (r, row) in w.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate().skip(done) {
            panel[i * PANEL + r] = v.widen();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Against a plain f64 product, for every weight type, with partial panels, tasks and tiles
    /// and a column count that leaves a tail after the 16 × 16 transposed blocks.
    #[test]
    fn dense_gemm_matches_a_plain_product() {
        if !supported() {
            eprintln!("skipped: no AVX-512 tier on this CPU (candle's GEMM runs instead)");
            return;
        }
        for (n, k, m) in [
            (70, 96, 13),
            (32, 64, 12),
            (5, 16, 1),
            (129, 48, 40),
            (20, 40, 9),
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
