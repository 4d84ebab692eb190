//! The prefill GEMM for quantized weights, `y = x Wᵀ` over a chunk of tokens, in 8-bit integer
//! arithmetic, with AVX-512 VNNI (`vpdpbusd`: 64 multiply-adds per instruction, four times the
//! f32 FMAs of the AVX2 GEMM that widened weights otherwise go through).
//!
//! - The activation rows are quantized once per call to int8 in blocks of 32 (as llama.cpp's
//!   Q8_0: `d = amax/127`), and each sub-block's `d` and `d·Σq` are kept for the corrections.
//! - Weights are unpacked panel by panel (32 rows) into unsigned bytes with one affine
//!   scale and offset per sub-block (`int8_unpack.rs`), interleaved four bytes per row so
//!   one 512-bit load holds the next four values of 16 rows. A panel (32 × k bytes) stays in
//!   L2 while every activation row passes by, so each weight byte comes from memory once per call.
//! - The tile kernel keeps 4 activation rows × 32 weight rows in registers: per four
//!   values one broadcast of each activation row and one `vpdpbusd` per 16 weight rows; per
//!   sub-block the integer sums are scaled and the offset correction added in f32.
//!
//! AVX2 CPUs run the same tiles on `maddubs` (its `avx2` module), 16 weight rows at a time: three
//! instructions per 32 products instead of one per 64, still ahead of widening the weights to
//! f32 for candle's GEMM (bench, Qwen3.5-0.8B shape, 512-token prefill, `HYBRID_SIMD=avx2` on
//! the 2-core Xeon, two alternating runs: Q8_0 61/54 → 64/86 tok/s, Q4_K_M 57/60 → 74/105).
//! The portable tile computes the same numbers (the same integer sums and f32 operations in
//! the same order, bit for bit, except Q8_0 on AVX2, see the `avx2` module) and is the tests' reference.

use candle_core::quantized::GgmlDType;
use hybrid_simd::Tier;

use crate::int8_unpack::{max_value, subblock_len, unpack_row};
use crate::parallel::by_weight_rows;
use crate::qgemm::{check_shapes, quantize_rows};
use crate::Result;

/// Weight rows per packed panel: two 16-lane vectors.
pub(crate) const PANEL: usize = 32;
/// Activation rows per register tile.
pub(crate) const TILE_ROWS: usize = 4;
/// Weight rows per parallel task (whole panels).
const ROWS_PER_TASK: usize = 64;

/// True when [`int8_matmul`] takes `dtype` weights on this CPU (and `HYBRID_SIMD`).
pub fn supports(dtype: GgmlDType) -> bool {
    hybrid_simd::tier() >= Tier::Avx2 && subblock_len(dtype).is_some()
}

/// `y[r][j] = Σ_i W[j][i] x[r][i]` for GGML weights `w` of `dtype` (`n` rows of `k` values, raw
/// blocks) and f32 activations `x` (`m × k`), writing `y` (`m × n`).
pub fn int8_matmul(
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    int8_matmul_at(hybrid_simd::tier(), dtype, w, n, k, x, y)
}

/// [`int8_matmul`] at a given SIMD tier (lowered to what this CPU supports): the AVX-512 or
/// AVX2 tile kernel, or the portable tile (the same numbers, for tests).
pub fn int8_matmul_at(
    tier: Tier,
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let Some(len) = subblock_len(dtype) else {
        return Err(candle_core::Error::Msg(format!(
            "int8 GEMM of {dtype:?} weights: type not supported (see int8_gemm::supports)"
        ))
        .into());
    };
    let (m, row_bytes) = check_shapes("int8 GEMM", dtype, w, n, k, x, y)?;
    let acts = Activations::new(x, k, len);
    let tier = tier.min(Tier::detect());
    by_weight_rows("int8 GEMM", y, m, n, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / m;
        let mut panel = Panel::new(dtype, k, len);
        let mut start = 0;
        while start < count {
            let rows = PANEL.min(count - start);
            let at = (first + start) * row_bytes;
            panel.pack(dtype, &w[at..at + rows * row_bytes], row_bytes, rows);
            let mut c0 = 0;
            while c0 < m {
                let c = TILE_ROWS.min(m - c0);
                let mut tile = [[0f32; PANEL]; TILE_ROWS];
                compute_tile(tier, &panel, &acts, c0, c, &mut tile);
                for (ci, values) in tile.iter().enumerate().take(c) {
                    let at = (c0 + ci) * count + start;
                    out[at..at + rows].copy_from_slice(&values[..rows]);
                }
                c0 += c;
            }
            start += rows;
        }
    })
}

/// Activation rows quantized to int8 in blocks of 32, with per sub-block (of the weight type's
/// length) the block scale `d` and `d · Σq` (for the weights' offsets).
pub(crate) struct Activations {
    /// `m × k` int8 values.
    pub(crate) q: Vec<i8>,
    /// `m × subblocks` scales.
    pub(crate) d: Vec<f32>,
    /// `m × subblocks` values of `d · Σq`.
    pub(crate) sums: Vec<f32>,
    /// Values per row.
    pub(crate) k: usize,
    /// Sub-blocks per row.
    pub(crate) subblocks: usize,
}

impl Activations {
    fn new(x: &[f32], k: usize, len: usize) -> Self {
        let rows = quantize_rows(x);
        let m = x.len() / k;
        let subblocks = k / len;
        let mut d = Vec::with_capacity(m * subblocks);
        let mut sums = Vec::with_capacity(m * subblocks);
        for (row, scales) in rows.q.chunks_exact(k).zip(rows.d.chunks_exact(k / 32)) {
            for (b, values) in row.chunks_exact(len).enumerate() {
                let scale = scales[b * len / 32];
                let sum: i32 = values.iter().map(|&v| i32::from(v)).sum();
                d.push(scale);
                sums.push(scale * sum as f32);
            }
        }
        Activations {
            q: rows.q,
            d,
            sums,
            k,
            subblocks,
        }
    }

    /// Row `r`'s values, scales and sums.
    fn row(&self, r: usize) -> (&[i8], &[f32], &[f32]) {
        let s = self.subblocks;
        (
            &self.q[r * self.k..(r + 1) * self.k],
            &self.d[r * s..(r + 1) * s],
            &self.sums[r * s..(r + 1) * s],
        )
    }
}

/// [`PANEL`] weight rows unpacked and interleaved: `quads[q · PANEL + r]` holds values
/// `4q..4q + 4` of row `r` (little-endian bytes), `scales`/`offsets[b · PANEL + r]` sub-block
/// `b`'s. Rows past the matrix are zero (their outputs are dropped).
pub(crate) struct Panel {
    pub(crate) quads: Vec<u32>,
    pub(crate) scales: Vec<f32>,
    pub(crate) offsets: Vec<f32>,
    pub(crate) len: usize,
    /// The largest unpacked value of the weight type (15, 63 or 255).
    pub(crate) max_value: u8,
    row: Vec<u8>,
    row_scales: Vec<f32>,
    row_offsets: Vec<f32>,
}

impl Panel {
    fn new(dtype: GgmlDType, k: usize, len: usize) -> Self {
        let subblocks = k / len;
        Panel {
            max_value: max_value(dtype),
            quads: vec![0; k / 4 * PANEL],
            scales: vec![0.0; subblocks * PANEL],
            offsets: vec![0.0; subblocks * PANEL],
            len,
            row: vec![0; k],
            row_scales: vec![0.0; subblocks],
            row_offsets: vec![0.0; subblocks],
        }
    }

    /// Unpacks `rows` (≤ [`PANEL`]) rows of `row_bytes` raw bytes each from `weights`.
    fn pack(&mut self, dtype: GgmlDType, weights: &[u8], row_bytes: usize, rows: usize) {
        for r in 0..PANEL {
            if r < rows {
                let bytes = &weights[r * row_bytes..(r + 1) * row_bytes];
                unpack_row(
                    dtype,
                    bytes,
                    &mut self.row,
                    &mut self.row_scales,
                    &mut self.row_offsets,
                );
            } else {
                self.row.fill(0);
                self.row_scales.fill(0.0);
                self.row_offsets.fill(0.0);
            }
            for (q, four) in self.row.chunks_exact(4).enumerate() {
                self.quads[q * PANEL + r] =
                    u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
            }
            for (b, (&s, &o)) in self.row_scales.iter().zip(&self.row_offsets).enumerate() {
                self.scales[b * PANEL + r] = s;
                self.offsets[b * PANEL + r] = o;
            }
        }
    }
}

/// Activation rows `c0..c0 + c` (`c` ≤ [`TILE_ROWS`]) against the panel into `tile[ci][r]`.
fn compute_tile(
    tier: Tier,
    panel: &Panel,
    acts: &Activations,
    c0: usize,
    c: usize,
    tile: &mut [[f32; PANEL]; TILE_ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    if tier >= Tier::Avx512 {
        // SAFETY: the AVX-512 tier (with VNNI) was checked against the CPU by the caller
        // (`int8_matmul_at` lowers the tier to `Tier::detect()`); the panel and activation rows
        // were built for the same `k` and sub-block length.
        unsafe {
            match (panel.len, c) {
                (32, 4) => crate::avx512::int8_tile::<32, 4>(panel, acts, c0, tile),
                (32, 3) => crate::avx512::int8_tile::<32, 3>(panel, acts, c0, tile),
                (32, 2) => crate::avx512::int8_tile::<32, 2>(panel, acts, c0, tile),
                (32, _) => crate::avx512::int8_tile::<32, 1>(panel, acts, c0, tile),
                (_, 4) => crate::avx512::int8_tile::<16, 4>(panel, acts, c0, tile),
                (_, 3) => crate::avx512::int8_tile::<16, 3>(panel, acts, c0, tile),
                (_, 2) => crate::avx512::int8_tile::<16, 2>(panel, acts, c0, tile),
                (_, _) => crate::avx512::int8_tile::<16, 1>(panel, acts, c0, tile),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if tier >= Tier::Avx2 {
        for pair in (0..c).step_by(2) {
            let rows = 2.min(c - pair);
            for half in 0..2 {
                // SAFETY: the AVX2 tier was checked as above; same buffers.
                unsafe { avx2::tile_half(panel, acts, c0 + pair, rows, half, &mut tile[pair..]) };
            }
        }
        return;
    }
    let _ = tier;
    portable_tile(panel, acts, c0, c, tile);
}

/// The tile in portable Rust, with the AVX-512 kernel's operations in its order (`mul_add` is
/// its fused multiply-add), so both give the same bits.
fn portable_tile(
    panel: &Panel,
    acts: &Activations,
    c0: usize,
    c: usize,
    tile: &mut [[f32; PANEL]; TILE_ROWS],
) {
    let quads_per_subblock = panel.len / 4;
    for (ci, out) in tile.iter_mut().enumerate().take(c) {
        let (x, d, sums) = acts.row(c0 + ci);
        for (r, value) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..acts.subblocks {
                let mut dot = 0i32;
                for q in b * quads_per_subblock..(b + 1) * quads_per_subblock {
                    let w = panel.quads[q * PANEL + r].to_le_bytes();
                    for (t, &wt) in w.iter().enumerate() {
                        dot += i32::from(wt) * i32::from(x[4 * q + t]);
                    }
                }
                let scale = panel.scales[b * PANEL + r] * d[b];
                acc = (dot as f32).mul_add(scale, acc);
                acc = panel.offsets[b * PANEL + r].mul_add(sums[b], acc);
            }
            *value = acc;
        }
    }
}

/// The AVX2 tile: 16 weight rows (half a panel) × up to two activation rows per pass.
/// `maddubs` multiplies unsigned weight bytes by signed activations into 16-bit pair sums,
/// which are added in 16 bits for as many quads as cannot overflow (eight for 4-bit values,
/// two for 6-bit) before `madd` widens them to 32 bits. Q8_0's `q + 128` would overflow a pair,
/// so its kernel restores the signed weight and multiplies `|x|` by `q · sign(x)`, which yields
/// `Σ q·x` directly (Q8_0's offset term is then zero): the same value in exact arithmetic,
/// rounded in another order than the portable tile.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Activations, Panel, PANEL};

    /// Activation rows `c0..c0 + rows` (`rows` ≤ 2) against panel rows `16·half..16·half + 16`,
    /// into `tile[ci][16·half..]`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the panel and activations must be built for the same
    /// `k` and sub-block length, and rows `c0..c0 + rows` must exist.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_half(
        panel: &Panel,
        acts: &Activations,
        c0: usize,
        rows: usize,
        half: usize,
        tile: &mut [[f32; PANEL]],
    ) {
        // SAFETY: forwarded (see # Safety); each instance's FLUSH keeps 16-bit sums in range
        // for the values its type can hold.
        unsafe {
            match (panel.len, panel.max_value, rows) {
                (32, 255, 1) => kernel::<32, 1, 1, true>(panel, acts, c0, half, tile),
                (32, 255, _) => kernel::<32, 2, 1, true>(panel, acts, c0, half, tile),
                (32, _, 1) => kernel::<32, 1, 8, false>(panel, acts, c0, half, tile),
                (32, _, _) => kernel::<32, 2, 8, false>(panel, acts, c0, half, tile),
                (_, _, 1) => kernel::<16, 1, 2, false>(panel, acts, c0, half, tile),
                (_, _, _) => kernel::<16, 2, 2, false>(panel, acts, c0, half, tile),
            }
        }
    }

    /// [`tile_half`] for sub-blocks of `LEN` values, `C` activation rows, 16-bit sums over
    /// `FLUSH` quads, and Q8_0's signed form when `SIGNED`.
    ///
    /// # Safety
    /// As [`tile_half`]; `LEN / 4` must be a multiple of `FLUSH`, and `FLUSH` quads of
    /// `maddubs` pairs must fit 16 bits for the panel's values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const LEN: usize, const C: usize, const FLUSH: usize, const SIGNED: bool>(
        panel: &Panel,
        acts: &Activations,
        c0: usize,
        half: usize,
        tile: &mut [[f32; PANEL]],
    ) {
        const { assert!(C <= 2 && (LEN / 4).is_multiple_of(FLUSH)) };
        let (k, subblocks) = (acts.k, acts.subblocks);
        debug_assert!(subblocks * LEN == k && panel.quads.len() >= k / 4 * PANEL);
        debug_assert!(acts.q.len() >= (c0 + C) * k && tile.len() >= C);
        let quads = panel.quads.as_ptr().wrapping_add(16 * half);
        let x: [*const i8; C] = std::array::from_fn(|c| acts.q.as_ptr().wrapping_add((c0 + c) * k));
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); C]; 2];
        for b in 0..subblocks {
            let mut dots = [[_mm256_setzero_si256(); C]; 2];
            let mut q = b * LEN / 4;
            while q < (b + 1) * LEN / 4 {
                let mut pairs = [[_mm256_setzero_si256(); C]; 2];
                for t in q..q + FLUSH {
                    // SAFETY: t < k / 4: the panel's words at t · PANEL + 16·half (+ 8) and each
                    // row's four bytes at 4t are inside the buffers.
                    unsafe {
                        let w = [
                            _mm256_loadu_si256(quads.add(t * PANEL).cast()),
                            _mm256_loadu_si256(quads.add(t * PANEL + 8).cast()),
                        ];
                        for c in 0..C {
                            let xb =
                                _mm256_set1_epi32(x[c].add(4 * t).cast::<i32>().read_unaligned());
                            for p in 0..2 {
                                let product = if SIGNED {
                                    let signed = _mm256_xor_si256(w[p], flip);
                                    _mm256_maddubs_epi16(
                                        _mm256_sign_epi8(xb, xb),
                                        _mm256_sign_epi8(signed, xb),
                                    )
                                } else {
                                    _mm256_maddubs_epi16(w[p], xb)
                                };
                                pairs[p][c] = _mm256_add_epi16(pairs[p][c], product);
                            }
                        }
                    }
                }
                for p in 0..2 {
                    for c in 0..C {
                        dots[p][c] =
                            _mm256_add_epi32(dots[p][c], _mm256_madd_epi16(pairs[p][c], ones));
                    }
                }
                q += FLUSH;
            }
            // SAFETY: b < subblocks: 16 scales and offsets at b · PANEL + 16·half and each
            // row's sub-block values at b are inside the buffers.
            unsafe {
                let at = b * PANEL + 16 * half;
                let scales = panel.scales.as_ptr().add(at);
                let offsets = panel.offsets.as_ptr().add(at);
                let s = [_mm256_loadu_ps(scales), _mm256_loadu_ps(scales.add(8))];
                let o = [_mm256_loadu_ps(offsets), _mm256_loadu_ps(offsets.add(8))];
                for c in 0..C {
                    let row = (c0 + c) * subblocks + b;
                    let dx = _mm256_set1_ps(*acts.d.get_unchecked(row));
                    let dxs = _mm256_set1_ps(*acts.sums.get_unchecked(row));
                    for p in 0..2 {
                        let scale = _mm256_mul_ps(s[p], dx);
                        acc[p][c] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[p][c]), scale, acc[p][c]);
                        if !SIGNED {
                            acc[p][c] = _mm256_fmadd_ps(o[p], dxs, acc[p][c]);
                        }
                    }
                }
            }
        }
        for c in 0..C {
            // SAFETY: each tile row holds PANEL f32s; 16·half + 16 ≤ PANEL.
            unsafe {
                let out = tile[c].as_mut_ptr().add(16 * half);
                _mm256_storeu_ps(out, acc[0][c]);
                _mm256_storeu_ps(out.add(8), acc[1][c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Every type at every tier: bit-identical to the portable tile, and within the activation
    /// quantization's error of the f32 product with candle's dequantized weights; Q8_0 also
    /// against candle's own Q8_0 matmul (which quantizes activations the same way).
    #[test]
    fn int8_gemm_matches_the_portable_tile_and_candle() {
        // 70 weight rows: a partial panel and a partial task; 7 activation rows: a partial
        // tile; 512 columns: two K-quant super-blocks.
        let (n, k, m) = (70, 512, 7);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let bytes = q.data().unwrap();
            let mut reference = vec![0f32; m * n];
            int8_matmul_at(Tier::Portable, dtype, &bytes, n, k, &xs, &mut reference).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap();
            let want = x.matmul(&dense.t().unwrap()).unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
                let mut got = vec![0f32; m * n];
                int8_matmul_at(tier, dtype, &bytes, n, k, &xs, &mut got).unwrap();
                if tier == Tier::Avx2 && dtype == GgmlDType::Q8_0 {
                    // Q8_0's signed AVX2 form: the same sums, another rounding order.
                    for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * scale,
                            "Q8_0 at {tier} [{i}]: {a} vs {b}"
                        );
                    }
                } else {
                    assert_eq!(got, reference, "{dtype:?} at {tier}");
                }
            }
            for (i, (a, b)) in reference.iter().zip(&want).enumerate() {
                // int8 activations: ≤ 0.5/127 of each block's largest value per element.
                assert!(
                    (a - b).abs() <= 0.02 * scale,
                    "{dtype:?} [{i}]: {a} vs dequantized f32 {b}"
                );
            }
            if dtype == GgmlDType::Q8_0 {
                let candle = x.apply_op1_no_bwd(&q).unwrap();
                let candle = candle.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, (a, b)) in reference.iter().zip(&candle).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale.max(1.0),
                        "Q8_0 [{i}]: {a} vs candle's Q8_0 matmul {b}"
                    );
                }
            }
        }
    }

    /// Shapes the kernel refuses are errors naming the problem, not panics.
    #[test]
    fn bad_shapes_are_errors() {
        /// The error and its causes, one line.
        fn chain(err: &dyn std::error::Error) -> String {
            let mut text = err.to_string();
            let mut cause = err.source();
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
        let w = vec![0u8; 34 * 4];
        let mut y = vec![0f32; 4];
        let err = int8_matmul(GgmlDType::Q8_0, &w, 4, 48, &[0.0; 48], &mut y).unwrap_err();
        assert!(chain(&err).contains("48 columns"), "{}", chain(&err));
        let err = int8_matmul(GgmlDType::Q5K, &w, 1, 256, &[0.0; 256], &mut y[..1]).unwrap_err();
        assert!(chain(&err).contains("not supported"), "{}", chain(&err));
        let err = int8_matmul(GgmlDType::Q8_0, &w, 8, 32, &[0.0; 32], &mut y).unwrap_err();
        assert!(chain(&err).contains("does not fit"), "{}", chain(&err));
    }
}
