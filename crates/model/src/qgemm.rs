//! Quantized matrix multiplies, `y = x Wᵀ`: our own Q8_0 kernel for decode, and the GGML types
//! without a kernel of ours through candle's block dot products called on the blocks directly
//! ([`blocks_matmul`]). Which kernel takes which call is decided in `nn.rs`: on AVX2 and AVX-512
//! CPUs chunks of 9+ rows go through `crate::int8_gemm` (Q8_0, Q4_0, Q4_K, Q6_K) and Q4_K/Q6_K
//! decode (up to 8 rows: one token, or a batch of sequences) through `crate::kquant_gemv`; 32+
//! rows of the other types are widened to f32 with [`dequantize_rows`] for candle's GEMM.
//!
//! candle's Q8_0 kernel converts each block's f16 scale with a function call and reduces every
//! block horizontally; on a 2-core AVX2 host it reached ~10 GMAC/s, so a 512-token prefill of
//! the Qwen3.5-0.8B shape took 8× llama.cpp's time. Here:
//! - the activation rows are quantized once per call to Q8_0 as llama.cpp does (`d = amax/127`,
//!   `q = round(x/d)`), kept as separate int8 and f32-scale arrays;
//! - for several activation rows the weight scales of a group of 8 weight rows are widened to
//!   f32 once per group, and the group's weight blocks stay in L1 while every activation row
//!   passes by; one activation row (single-sequence decode) widens each scale as its block is
//!   read, and on AVX2 reads the group row after row — one sequential stream (AVX-512 reads the
//!   8 rows side by side: 8 streams in flight measured 18 GB/s there against 15 with 4);
//! - integer dot products (AVX2 `sign`/`maddubs`/`madd`) accumulate into 8-lane f32 sums that
//!   are reduced once per output, not once per block.
//!
//! The path is chosen at run time from `hybrid_simd`'s tier: AVX-512 VNNI (two blocks per
//! 512-bit step, `vpdpbusd` for the integer dots; one row widens each scale as its block is
//! read, several rows share the group's scales widened by one gather per 16 blocks and each
//! weight block pair, up to four rows per pass, with `vpdpbusd` on `x + 128`), AVX2 with
//! FMA and F16C (two rows share each weight block load), else portable Rust. All give the same
//! integer dot products and differ only in f32 summation order; within a tier a row's sums do
//! not depend on how many rows the call has, so a batched decode step gives each sequence
//! exactly what it gets alone.

use crate::parallel::{by_weight_rows, in_parallel};
use crate::Result;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;
use half::f16;
use hybrid_simd::Tier;

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale and 32 int8 values.
const BLOCK_BYTES: usize = 34;
/// Weight rows computed together (each activation block is loaded once for all of them).
const GROUP: usize = 8;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Activation rows quantized to Q8_0: `q[r·k + i]` and one f32 scale per block.
pub(crate) struct QuantizedRows {
    pub(crate) q: Vec<i8>,
    pub(crate) d: Vec<f32>,
    /// `q + 128` as unsigned bytes, filled only for the kernels that take them.
    pub(crate) u: Vec<u8>,
}

/// llama.cpp's `quantize_row_q8_0`: per block, `d = amax / 127` (stored as f16 in a block, so
/// rounded through f16 here too) and `q = round(x / d)`.
pub(crate) fn quantize_rows(x: &[f32]) -> QuantizedRows {
    let blocks = x.len() / BLOCK;
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; blocks];
    for (b, (values, out)) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for (o, v) in out.iter_mut().zip(values) {
            *o = (v * inverse).round() as i8;
        }
        d[b] = f16::from_f32(scale).to_f32();
    }
    QuantizedRows {
        q,
        d,
        u: Vec::new(),
    }
}

/// `y[r][j] = Σ_i W[j][i] x[r][i]` for Q8_0 weights `w` (`n` rows of `k` values, raw GGML
/// blocks) and f32 activations `x` (`m × k`), writing `y` (`m × n`). `k` must be a multiple of
/// 32 and the slices must have the sizes these imply (checked by the caller).
pub fn q8_0_matmul(w: &[u8], n: usize, k: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    q8_0_matmul_at(hybrid_simd::quantized_gemv_tier(), w, n, k, x, y)
}

/// [`q8_0_matmul`] at a given SIMD tier (lowered to what this CPU supports), for tests and
/// benchmarks that compare the paths.
pub fn q8_0_matmul_at(
    tier: Tier,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let m = x.len() / k;
    let mut rows = quantize_rows(x);
    let row_bytes = k / BLOCK * BLOCK_BYTES;
    let tier = tier.min(Tier::detect());
    if tier >= Tier::Avx512 && m > 1 {
        // The multi-row VNNI kernel takes the activations as unsigned bytes, x + 128.
        rows.u = rows.q.iter().map(|&q| (q as u8) ^ 0x80).collect();
    }
    by_weight_rows("Q8_0 matmul", y, m, n, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / m;
        let weights = &w[first * row_bytes..(first + count) * row_bytes];
        rows_task(weights, count, k, &rows, m, out, tier);
    })
}

/// The shape rules every kernel over raw GGML rows shares: `k` whole blocks of `dtype` per row,
/// `x` whole rows of `k`, `w` at least `n` rows, `y` exactly `m × n`. Returns `(m, row_bytes)`,
/// or an error that names `kernel`, the type and what does not fit.
pub(crate) fn check_shapes(
    kernel: &str,
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &[f32],
) -> Result<(usize, usize)> {
    let bad = |why: String| {
        Err(candle_core::Error::Msg(format!("{kernel} of {dtype:?} weights: {why}")).into())
    };
    let block = dtype.block_size();
    if k == 0 || !k.is_multiple_of(block) || !x.len().is_multiple_of(k) {
        return bad(format!(
            "{k} columns are not whole {block}-value blocks, or x ({} values) not whole rows",
            x.len()
        ));
    }
    let m = x.len() / k;
    let row_bytes = k / block * dtype.type_size();
    if w.len() < n * row_bytes || y.len() != m * n {
        return bad(format!(
            "[{m}, {k}] × [{n}, {k}]ᵀ does not fit {} weight bytes and {} outputs",
            w.len(),
            y.len()
        ));
    }
    Ok((m, row_bytes))
}

/// One operation on the weights' blocks, whatever their GGML type ([`with_blocks`]).
trait BlocksOp {
    fn run<T: GgmlType + Sync>(self, blocks: &[T]) -> Result<()>;
}

/// Runs `op` on `bytes` viewed as blocks of `dtype` (the quantized types only).
fn with_blocks(dtype: GgmlDType, bytes: &[u8], op: impl BlocksOp) -> Result<()> {
    fn view<T: GgmlType>(bytes: &[u8]) -> candle_core::Result<&[T]> {
        let size = std::mem::size_of::<T>();
        if !bytes.len().is_multiple_of(size)
            || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        {
            candle_core::bail!(
                "{:?} weights of {} bytes are not whole aligned blocks",
                T::DTYPE,
                bytes.len()
            );
        }
        // SAFETY: length and alignment were checked for T, and T is one of candle's
        // `#[repr(C)]` GGML blocks (integers and f16 only), valid for any bit pattern.
        Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
    }
    match dtype {
        GgmlDType::Q4_0 => op.run(view::<BlockQ4_0>(bytes)?),
        GgmlDType::Q4_1 => op.run(view::<BlockQ4_1>(bytes)?),
        GgmlDType::Q5_0 => op.run(view::<BlockQ5_0>(bytes)?),
        GgmlDType::Q5_1 => op.run(view::<BlockQ5_1>(bytes)?),
        GgmlDType::Q8_0 => op.run(view::<BlockQ8_0>(bytes)?),
        GgmlDType::Q2K => op.run(view::<BlockQ2K>(bytes)?),
        GgmlDType::Q3K => op.run(view::<BlockQ3K>(bytes)?),
        GgmlDType::Q4K => op.run(view::<BlockQ4K>(bytes)?),
        GgmlDType::Q5K => op.run(view::<BlockQ5K>(bytes)?),
        GgmlDType::Q6K => op.run(view::<BlockQ6K>(bytes)?),
        other => {
            Err(candle_core::Error::Msg(format!("no block kernels for {other:?} weights")).into())
        }
    }
}

/// `y = x Wᵀ` for the other GGML types with candle's block dot products, called on the blocks
/// directly: candle's `QTensor` matmul would build a repacked copy of Q4_K/Q6_K/Q8_0 weights on
/// first use and keep both (1.3× more bytes streamed per token and 2.3× the memory of those
/// weights), and would run on a thread pool of its own instead of the hot pool.
pub fn blocks_matmul(
    dtype: GgmlDType,
    bytes: &[u8],
    mkn: (usize, usize, usize),
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    struct Matmul<'a> {
        mkn: (usize, usize, usize),
        x: &'a [f32],
        y: &'a mut [f32],
    }
    impl BlocksOp for Matmul<'_> {
        fn run<T: GgmlType + Sync>(self, blocks: &[T]) -> Result<()> {
            block_dots(self.mkn, self.x, blocks, self.y)
        }
    }
    with_blocks(dtype, bytes, Matmul { mkn, x, y })
}

/// `y = x Wᵀ` (`x` is `m × k`, `W` is `n` rows of `k / T::BLCK_SIZE` blocks): each activation
/// row is quantized once to the type's dot-product partner (Q8_0 or Q8_K, as ggml does), then
/// weight rows are split over the hot pool, four at a time through candle's `vec_dot_4`.
fn block_dots<T: GgmlType + Sync>(
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    blocks: &[T],
    y: &mut [f32],
) -> Result<()> {
    let per_row = k / T::BLCK_SIZE;
    if k % T::BLCK_SIZE != 0 || blocks.len() < n * per_row || x.len() < m * k || y.len() < m * n {
        return Err(candle_core::Error::Msg(format!(
            "{:?} matmul of [{m}, {k}] × [{n}, {k}]ᵀ does not fit its buffers",
            T::DTYPE
        ))
        .into());
    }
    let mut xq = vec![T::VecDotType::zeros(); m * per_row];
    for (row, out) in x.chunks_exact(k).zip(xq.chunks_exact_mut(per_row)) {
        T::VecDotType::from_float(row, out);
    }
    let row = |j: usize| &blocks[j * per_row..(j + 1) * per_row];
    by_weight_rows("quantized matmul", y, m, n, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / m;
        for r in 0..m {
            let xr = &xq[r * per_row..(r + 1) * per_row];
            let mut j = 0;
            while j + 4 <= count {
                let w = first + j;
                let (a, b, c, d) = T::vec_dot_4(k, row(w), row(w + 1), row(w + 2), row(w + 3), xr);
                for (g, v) in [a, b, c, d].into_iter().enumerate() {
                    out[r * count + j + g] = v;
                }
                j += 4;
            }
            for j in j..count {
                out[r * count + j] = T::vec_dot(k, row(first + j), xr);
            }
        }
    })
}

/// Rows `first..first + rows` of quantized weights (`bytes`, `k` values per row) widened to
/// f32 into `out` (`rows × k`), with candle's (ggml-identical) dequantization, rows in parallel.
pub fn dequantize_rows(
    dtype: GgmlDType,
    bytes: &[u8],
    k: usize,
    first: usize,
    out: &mut [f32],
) -> Result<()> {
    struct Dequantize<'a> {
        k: usize,
        first: usize,
        out: &'a mut [f32],
    }
    impl BlocksOp for Dequantize<'_> {
        fn run<T: GgmlType + Sync>(self, blocks: &[T]) -> Result<()> {
            let (k, first) = (self.k, self.first);
            let per_row = k / T::BLCK_SIZE;
            let rows = self.out.len() / k;
            if (first + rows) * per_row > blocks.len() {
                return Err(candle_core::Error::Msg(format!(
                    "rows {first}..{} beyond the weights",
                    first + rows
                ))
                .into());
            }
            in_parallel("dequantize", self.out, k, &|r, row| {
                let start = (first + r) * per_row;
                T::to_float(&blocks[start..start + per_row], row);
            })
        }
    }
    with_blocks(dtype, bytes, Dequantize { k, first, out })
}

/// Computes `count` weight rows (`weights`) against every activation row into `out`
/// (`[m][count]`), at `tier` (which the CPU supports). Every (weight row, activation row) pair
/// is summed in the same order whatever `m` is, so a row of a batched decode step gets bit for
/// bit what it gets alone.
fn rows_task(
    weights: &[u8],
    count: usize,
    k: usize,
    rows: &QuantizedRows,
    m: usize,
    out: &mut [f32],
    tier: Tier,
) {
    let blocks = k / BLOCK;
    let row_bytes = blocks * BLOCK_BYTES;
    let mut scales = vec![0f32; GROUP * blocks];
    let avx2 = tier >= Tier::Avx2;
    let avx512 = cfg!(target_arch = "x86_64") && tier >= Tier::Avx512;
    // The AVX2 two-row kernel's scale products (see `x86::combine_scales`); other paths need none.
    let mut combined = if avx2 && !avx512 && m > 1 {
        vec![0f32; 2 * GROUP * blocks]
    } else {
        Vec::new()
    };
    let x_rows = |r: usize| {
        (
            &rows.q[r * k..(r + 1) * k],
            &rows.d[r * blocks..(r + 1) * blocks],
        )
    };
    let mut start = 0;
    while start < count {
        let group = GROUP.min(count - start);
        let group_weights = &weights[start * row_bytes..(start + group) * row_bytes];
        let fast = cfg!(target_arch = "x86_64") && avx2 && group == GROUP;
        // With one activation row the scales are widened where the blocks are read (the weights
        // stream through once); with several, once per group for all rows.
        if !(fast && (m == 1 || avx512)) {
            widen_scales(group_weights, group, blocks, &mut scales, avx2);
        }
        let mut put = |r: usize, sums: &[f32]| {
            out[r * count + start..r * count + start + group].copy_from_slice(&sums[..group]);
        };
        #[cfg(target_arch = "x86_64")]
        if fast && avx512 {
            // Two blocks per 512-bit step; one row streams the scales, several rows share the
            // group's widened scales and each weight block load (up to four rows per pass).
            if m == 1 {
                let (xq, xd) = x_rows(0);
                // SAFETY: the AVX-512 tier was checked; the group holds GROUP rows of `blocks`
                // blocks, `xq` `k` values and `xd` `blocks`.
                let sums = unsafe {
                    crate::avx512::q8_0_dot_group::<GROUP>(group_weights, blocks, xq, xd)
                };
                put(0, &sums);
                start += group;
                continue;
            }
            // SAFETY: as above; `scales` holds GROUP × `blocks` values.
            unsafe { crate::avx512::widen_q8_0_scales(group_weights, GROUP, blocks, &mut scales) };
            let mut r = 0;
            while r < m {
                let take = (m - r).min(4);
                let at = RowsAt {
                    weights: group_weights,
                    scales: &scales,
                    rows,
                    k,
                    first: r,
                };
                let mut put_row = |i: usize, sums: &[f32]| put(r + i, sums);
                match take {
                    4 => at.run::<4>(&mut put_row),
                    3 => at.run::<3>(&mut put_row),
                    2 => at.run::<2>(&mut put_row),
                    _ => at.run::<1>(&mut put_row),
                }
                r += take;
            }
            start += group;
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if fast {
            let mut r = 0;
            while r < m {
                // SAFETY: `fast` implies AVX2, FMA and F16C; the group holds GROUP rows of
                // `blocks` blocks, `scales` GROUP × `blocks` values, each x row `k` values and
                // `blocks` scales.
                unsafe {
                    if m == 1 {
                        let (xq, xd) = x_rows(0);
                        put(0, &x86::dot_group_by_row(group_weights, blocks, xq, xd));
                        r = 1;
                    } else if r + 1 < m {
                        // Two activation rows share each weight block load.
                        let rows2 = [x_rows(r), x_rows(r + 1)];
                        x86::combine_scales(&scales, blocks, rows2.map(|x| x.1), &mut combined);
                        let sums = x86::dot_group_pair(
                            group_weights,
                            &combined,
                            blocks,
                            rows2.map(|x| x.0),
                        );
                        put(r, &sums.map(|s| s[0]));
                        put(r + 1, &sums.map(|s| s[1]));
                        r += 2;
                    } else {
                        let (xq, xd) = x_rows(r);
                        put(r, &x86::dot_group(group_weights, &scales, blocks, xq, xd));
                        r += 1;
                    }
                }
            }
            start += group;
            continue;
        }
        for r in 0..m {
            let (xq, xd) = x_rows(r);
            let mut sums = [0f32; GROUP];
            portable_group(group_weights, group, &scales, blocks, xq, xd, &mut sums);
            put(r, &sums);
        }
        start += group;
    }
}

/// One [`crate::avx512::q8_0_dot_rows`] call of `rows_task`: a group of GROUP weight rows (their
/// scales widened in `scales`) against the activation rows from `first` on.
#[cfg(target_arch = "x86_64")]
struct RowsAt<'a> {
    weights: &'a [u8],
    scales: &'a [f32],
    rows: &'a QuantizedRows,
    k: usize,
    first: usize,
}

#[cfg(target_arch = "x86_64")]
impl RowsAt<'_> {
    /// Activation rows `first..first + R`: each row's GROUP sums handed to `put(i, sums)`.
    /// Must run on the AVX-512 tier with `rows.u` filled.
    fn run<const R: usize>(&self, put: &mut dyn FnMut(usize, &[f32])) {
        let (k, blocks) = (self.k, self.k / BLOCK);
        let row = |i: usize| self.first + i;
        let xd: [&[f32]; R] = std::array::from_fn(|i| &self.rows.d[row(i) * blocks..][..blocks]);
        let xq: [&[i8]; R] = std::array::from_fn(|i| &self.rows.q[row(i) * k..][..k]);
        let xu: [&[u8]; R] = std::array::from_fn(|i| &self.rows.u[row(i) * k..][..k]);
        // SAFETY: the AVX-512 tier was checked by the caller; the group holds GROUP rows of
        // `blocks` blocks and `scales` GROUP × `blocks` values; each row's `xd` holds `blocks`
        // values, its `xq` and `xu` `k`; ggml's Q8_0 weights lie in −127..=127.
        let sums = unsafe {
            crate::avx512::q8_0_dot_rows::<GROUP, R>(self.weights, self.scales, blocks, xd, xq, xu)
        };
        for i in 0..R {
            put(i, &sums.map(|s| s[i]));
        }
    }
}

/// Each block's f16 scale of `group` weight rows as f32, `[group][blocks]`: with F16C where
/// present (half's own conversion dispatches at run time on every call, which cost more than
/// the dot products here), else in portable Rust.
fn widen_scales(weights: &[u8], group: usize, blocks: usize, out: &mut [f32], avx2: bool) {
    let row_bytes = blocks * BLOCK_BYTES;
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        assert!(weights.len() >= group * row_bytes && out.len() >= group * blocks);
        // SAFETY: `avx2` is true only when the CPU has F16C; the sizes were checked above.
        unsafe { x86::widen_scales(weights, group, blocks, out) };
        return;
    }
    for g in 0..group {
        for b in 0..blocks {
            let o = g * row_bytes + b * BLOCK_BYTES;
            let bits = u16::from_le_bytes([weights[o], weights[o + 1]]);
            out[g * blocks + b] = f16::from_bits(bits).to_f32();
        }
    }
}

/// The dot products of `group` weight rows with one activation row, in portable Rust.
fn portable_group(
    weights: &[u8],
    group: usize,
    scales: &[f32],
    blocks: usize,
    xq: &[i8],
    xd: &[f32],
    sums: &mut [f32; GROUP],
) {
    let row_bytes = blocks * BLOCK_BYTES;
    for g in 0..group {
        let row = &weights[g * row_bytes..(g + 1) * row_bytes];
        let mut sum = 0f32;
        for b in 0..blocks {
            let qs = &row[b * BLOCK_BYTES + 2..(b + 1) * BLOCK_BYTES];
            let xs = &xq[b * BLOCK..(b + 1) * BLOCK];
            let dot: i32 = qs
                .iter()
                .zip(xs)
                .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                .sum();
            sum += dot as f32 * scales[g * blocks + b] * xd[b];
        }
        sums[g] = sum;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, BLOCK_BYTES, GROUP};
    use crate::gemv::x86::hsum;

    /// One f16 (raw bits) as f32.
    #[inline]
    #[target_feature(enable = "f16c")]
    pub(crate) fn widen_f16(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// [`super::widen_scales`] with F16C, eight scales per conversion (called one at a time
    /// through a function the caller cannot inline, the conversion cost 7 % of a batched
    /// decode step).
    ///
    /// # Safety
    /// The CPU must support F16C; `weights` must hold `group` rows of `blocks` blocks and
    /// `out` `group × blocks` values.
    #[target_feature(enable = "f16c")]
    pub(super) unsafe fn widen_scales(
        weights: &[u8],
        group: usize,
        blocks: usize,
        out: &mut [f32],
    ) {
        let row_bytes = blocks * BLOCK_BYTES;
        let scale = |g: usize, b: usize| {
            let o = g * row_bytes + b * BLOCK_BYTES;
            u16::from_le_bytes([weights[o], weights[o + 1]])
        };
        for g in 0..group {
            let row = &mut out[g * blocks..(g + 1) * blocks];
            let whole = blocks / 8 * 8;
            for b in (0..whole).step_by(8) {
                let bits: [u16; 8] = std::array::from_fn(|i| scale(g, b + i));
                // SAFETY: `bits` is 16 readable bytes and `row[b..b + 8]` 8 writable floats.
                unsafe {
                    let wide = _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().cast()));
                    _mm256_storeu_ps(row.as_mut_ptr().add(b), wide);
                }
            }
            for (b, out) in row.iter_mut().enumerate().skip(whole) {
                *out = widen_f16(scale(g, b));
            }
        }
    }

    /// Eight i32 partial sums of the int8 dot product of 32 values, as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn block_dot(w: __m256i, x_abs: __m256i, x: __m256i) -> __m256 {
        // maddubs needs an unsigned operand: |x| times w carrying x's sign.
        let signed_w = _mm256_sign_epi8(w, x);
        let pairs = _mm256_maddubs_epi16(x_abs, signed_w);
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(quads)
    }

    /// The dot products of GROUP weight rows (`weights`, raw Q8_0 blocks) with one quantized
    /// activation row of a batch, the scales widened in `scales` (`[GROUP][blocks]`, reused by
    /// every row); the next group's blocks are prefetched as these are read (see
    /// `gemv::PREFETCH_ROWS`).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `weights` must hold GROUP rows of `blocks`
    /// blocks, `scales` GROUP × `blocks` values, `xq` `blocks` × 32 values, `xd` `blocks`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group(
        weights: &[u8],
        scales: &[f32],
        blocks: usize,
        xq: &[i8],
        xd: &[f32],
    ) -> [f32; GROUP] {
        let row_bytes = blocks * BLOCK_BYTES;
        debug_assert!(weights.len() >= GROUP * row_bytes && xq.len() >= blocks * BLOCK);
        let mut acc = [_mm256_setzero_ps(); GROUP];
        let w = weights.as_ptr();
        for b in 0..blocks {
            // SAFETY: b < blocks, so every load below is inside the slices (see # Safety).
            unsafe {
                let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK).cast());
                let x_abs = _mm256_sign_epi8(x, x);
                let dx = *xd.get_unchecked(b);
                for (g, a) in acc.iter_mut().enumerate() {
                    let block = w.add(g * row_bytes + b * BLOCK_BYTES);
                    let dw = *scales.get_unchecked(g * blocks + b);
                    if b % 2 == 0 {
                        crate::gemv::prefetch_two_lines(block.wrapping_add(GROUP * row_bytes));
                    }
                    let wv = _mm256_loadu_si256(block.add(2).cast());
                    let scale = _mm256_set1_ps(dw * dx);
                    *a = _mm256_fmadd_ps(block_dot(wv, x_abs, x), scale, *a);
                }
            }
        }
        acc.map(|a| hsum(a))
    }

    /// [`dot_group`] for a lone activation row (a single-sequence decode step): one weight row
    /// after the other, each block's scale widened as the block is read, so the weights are
    /// one sequential stream with nothing beside them, prefetched [`ROW_PREFETCH_BYTES`] ahead. The arithmetic per row is
    /// [`dot_group`]'s (one accumulator, blocks in order), so a row gets the same sums in a
    /// batch. Reading the group's eight rows side by side instead (eight streams, the next
    /// group prefetched) measured 12.6 GiB/s against 14.3 this way (`matvec` Q8_0/avx2, means of
    /// five and four alternating runs, AMD EPYC, 2 cores).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `weights` must hold GROUP rows of `blocks`
    /// blocks, `xq` `blocks` × 32 values, `xd` `blocks`.
    /// How far ahead of the block being read [`dot_group_by_row`] prefetches, in bytes (about
    /// eight rows of 1,024 values). On the 2-core AMD EPYC VM the hardware prefetchers alone
    /// left the one sequential stream at ~15 GiB/s (`matvec` Q8_0/avx2: 14.6, 16.1, 14.2 in
    /// three rounds); 2 KiB ahead gave 18.4 / 17.0 / 16.0, 8 KiB 18.9 / 19.0 / 16.4, 4 and 16
    /// KiB about the same, 32 KiB less; `bench` decode of the Qwen3.5-0.8B Q8_0 GGUF went from
    /// 13.7 / 16.3 to 19.0 / 17.9 tok/s (alternating runs, same session).
    const ROW_PREFETCH_BYTES: usize = 8192;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group_by_row(
        weights: &[u8],
        blocks: usize,
        xq: &[i8],
        xd: &[f32],
    ) -> [f32; GROUP] {
        let row_bytes = blocks * BLOCK_BYTES;
        debug_assert!(weights.len() >= GROUP * row_bytes && xq.len() >= blocks * BLOCK);
        let w = weights.as_ptr();
        std::array::from_fn(|g| {
            let mut acc = _mm256_setzero_ps();
            for b in 0..blocks {
                // SAFETY: g < GROUP and b < blocks: every load is inside the slices.
                unsafe {
                    let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK).cast());
                    let x_abs = _mm256_sign_epi8(x, x);
                    let block = w.add(g * row_bytes + b * BLOCK_BYTES);
                    if b % 2 == 0 {
                        crate::gemv::prefetch_two_lines(block.wrapping_add(ROW_PREFETCH_BYTES));
                    }
                    let dw = widen_f16(u16::from_le(block.cast::<u16>().read_unaligned()));
                    let wv = _mm256_loadu_si256(block.add(2).cast());
                    let scale = _mm256_set1_ps(dw * *xd.get_unchecked(b));
                    acc = _mm256_fmadd_ps(block_dot(wv, x_abs, x), scale, acc);
                }
            }
            hsum(acc)
        })
    }

    /// `out[(r · GROUP + g) · blocks + b] = scales[g · blocks + b] · xd[r][b]`: every
    /// (weight row, activation row, block) scale product of a [`dot_group_rows`] call, made
    /// eight at a time beforehand so that the kernel only broadcasts them from memory (the same
    /// f32 products `dot_group` forms one by one, so results do not change).
    ///
    /// # Safety
    /// The CPU must support AVX2; `scales` must hold GROUP × `blocks` values, each `xd[r]`
    /// `blocks`, and `out` R × GROUP × `blocks`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn combine_scales<const R: usize>(
        scales: &[f32],
        blocks: usize,
        xd: [&[f32]; R],
        out: &mut [f32],
    ) {
        assert!(scales.len() >= GROUP * blocks && out.len() >= R * GROUP * blocks);
        assert!(xd.iter().all(|d| d.len() >= blocks));
        let whole = blocks / 8 * 8;
        for (r, dx) in xd.iter().enumerate() {
            for g in 0..GROUP {
                let (w, o) = (&scales[g * blocks..], (r * GROUP + g) * blocks);
                for b in (0..whole).step_by(8) {
                    // SAFETY: b + 8 <= blocks: inside `w`, `dx` and this part of `out`.
                    unsafe {
                        let product = _mm256_mul_ps(
                            _mm256_loadu_ps(w.as_ptr().add(b)),
                            _mm256_loadu_ps(dx.as_ptr().add(b)),
                        );
                        _mm256_storeu_ps(out.as_mut_ptr().add(o + b), product);
                    }
                }
                let tail = out[o + whole..o + blocks].iter_mut();
                for ((out, w), x) in tail.zip(&w[whole..blocks]).zip(&dx[whole..blocks]) {
                    *out = w * x;
                }
            }
        }
    }

    /// [`dot_group`] (with widened scales) for `R` activation rows at once: each weight block
    /// is loaded once for all of them, and each (weight row, activation row) pair gets exactly
    /// `dot_group`'s arithmetic, so the result for a row does not depend on the others. The
    /// scale products come from [`combine_scales`] (`combined`). The group runs in parts of
    /// `G` weight rows so that the `G × R` accumulators stay in registers. Returns
    /// `[weight row][activation row]`.
    ///
    /// # Safety
    /// `weights` must hold GROUP rows of `blocks` blocks, every row of `xq` `blocks` × 32
    /// values and `combined` R × GROUP × `blocks` values; the CPU must have the features of the
    /// function that inlines this.
    #[inline(always)]
    unsafe fn dot_group_rows<const G: usize, const R: usize>(
        weights: &[u8],
        combined: &[f32],
        blocks: usize,
        xq: [&[i8]; R],
    ) -> [[f32; R]; GROUP] {
        let row_bytes = blocks * BLOCK_BYTES;
        debug_assert!(weights.len() >= GROUP * row_bytes && combined.len() >= R * GROUP * blocks);
        debug_assert!(xq.iter().all(|q| q.len() >= blocks * BLOCK));
        let mut sums = [[0f32; R]; GROUP];
        for part in 0..GROUP / G {
            let mut acc = [[_mm256_setzero_ps(); R]; G];
            for b in 0..blocks {
                // SAFETY: b < blocks and g < GROUP, so every load below is inside the slices
                // (see # Safety).
                unsafe {
                    let xv = xq.map(|q| _mm256_loadu_si256(q.as_ptr().add(b * BLOCK).cast()));
                    let x_abs = xv.map(|v| _mm256_sign_epi8(v, v));
                    for (h, a) in acc.iter_mut().enumerate() {
                        let g = part * G + h;
                        let block = weights.as_ptr().add(g * row_bytes + b * BLOCK_BYTES);
                        if b % 2 == 0 {
                            crate::gemv::prefetch_two_lines(block.wrapping_add(GROUP * row_bytes));
                        }
                        let wv = _mm256_loadu_si256(block.add(2).cast());
                        for r in 0..R {
                            let scale = _mm256_broadcast_ss(
                                combined.get_unchecked((r * GROUP + g) * blocks + b),
                            );
                            a[r] = _mm256_fmadd_ps(block_dot(wv, x_abs[r], xv[r]), scale, a[r]);
                        }
                    }
                }
            }
            for (h, a) in acc.iter().enumerate() {
                sums[part * G + h] = a.map(|v| hsum(v));
            }
        }
        sums
    }

    /// [`dot_group_rows`] for two activation rows in 16 AVX2 registers: 4 weight rows × 2.
    ///
    /// # Safety
    /// As for [`dot_group_rows`]; the CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group_pair(
        weights: &[u8],
        combined: &[f32],
        blocks: usize,
        xq: [&[i8]; 2],
    ) -> [[f32; 2]; GROUP] {
        // SAFETY: forwarded contract.
        unsafe { dot_group_rows::<4, 2>(weights, combined, blocks, xq) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Every type: dequantized rows equal candle's QTensor::dequantize, and the block matmul
    /// equals candle's QTensor matmul.
    #[test]
    fn block_paths_match_candle() {
        let (n, k, m) = (40, 512, 3);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, t).unwrap();
            let bytes = q.data().unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap();
            let want = want
                .narrow(0, 5, 7)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut rows = vec![0f32; 7 * k];
            dequantize_rows(t, &bytes, k, 5, &mut rows).unwrap();
            assert_eq!(rows, want, "{t:?} dequantized rows");
            let mut got = vec![0f32; m * n];
            blocks_matmul(t, &bytes, (m, k, n), &xs, &mut got).unwrap();
            let want = x
                .apply_op1_no_bwd(&q)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{t:?}: {a} vs candle {b}"
                );
            }
        }
    }

    /// Against candle's Q8_0: same weight blocks, candle's matmul (which quantizes the
    /// activations the same way), at odd sizes and row counts, on both paths.
    #[test]
    fn matches_candles_q8_0_matmul() {
        // k = 96 and 544 leave an odd block after the AVX-512 path's pairs; 544 also a
        // 1-block tail after its 16-scale gathers; 130 and 67 rows a partial group.
        for (n, k, m) in [
            (1, 32, 1),
            (7, 64, 3),
            (130, 256, 1),
            (67, 512, 9),
            (256, 96, 65),
            (16, 544, 2),
        ] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let want = x
                .apply_op1_no_bwd(&q)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bytes = q.data().unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut got = vec![0f32; m * n];
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
                q8_0_matmul_at(tier, &bytes, n, k, &xs, &mut got).unwrap();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale.max(1.0),
                        "{tier} {n}x{k} m={m} [{i}]: {a} vs candle {b}"
                    );
                }
            }
            // The portable path gives the same integer dots.
            let rows = quantize_rows(&xs);
            let blocks = k / BLOCK;
            let mut scales = vec![0f32; GROUP * blocks];
            let g = n.min(GROUP);
            for r in 0..g {
                for b in 0..blocks {
                    let o = r * blocks * BLOCK_BYTES + b * BLOCK_BYTES;
                    scales[r * blocks + b] =
                        f16::from_bits(u16::from_le_bytes([bytes[o], bytes[o + 1]])).to_f32();
                }
            }
            let mut sums = [0f32; GROUP];
            portable_group(
                &bytes,
                g,
                &scales,
                blocks,
                &rows.q[..k],
                &rows.d[..blocks],
                &mut sums,
            );
            for j in 0..g {
                assert!((sums[j] - got[j]).abs() <= 1e-5 * scale.max(1.0));
            }
        }
    }

    /// The decode kernels (Q8_0 here, Q4_K and Q6_K in `kquant_gemv`) give a row of a multi-row
    /// call bit for bit what they give it alone, at every tier and for every batch size a
    /// batched decode step sends them: a sequence's tokens must not depend on its batch.
    #[test]
    fn each_row_of_a_batch_equals_that_row_alone() {
        let (n, k) = (70, 512);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, (8, k), &Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .unwrap();
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let bytes = QTensor::quantize(&w, dtype)
                .unwrap()
                .data()
                .unwrap()
                .into_owned();
            let run = |tier: Tier, x: &[f32], y: &mut [f32]| match dtype {
                GgmlDType::Q8_0 => q8_0_matmul_at(tier, &bytes, n, k, x, y),
                _ => crate::kquant_gemv::kquant_matmul_at(tier, dtype, &bytes, n, k, x, y),
            };
            for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
                for m in 1..=8 {
                    let mut batch = vec![0f32; m * n];
                    run(tier, &x[..m * k], &mut batch).unwrap();
                    for r in 0..m {
                        let mut alone = vec![0f32; n];
                        run(tier, &x[r * k..(r + 1) * k], &mut alone).unwrap();
                        assert_eq!(
                            &batch[r * n..(r + 1) * n],
                            &alone[..],
                            "{dtype:?} {tier} m={m} row {r}"
                        );
                    }
                }
            }
        }
    }
}
