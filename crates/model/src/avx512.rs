//! The AVX-512 tier of the dense and int8 kernels (F, BW, VL and VNNI; see `hybrid_simd`):
//! 16-lane dense dot products for decode (one row or a batch), a Q8_0 decode kernel that takes
//! two blocks per 512-bit step with VNNI's `vpdpbusd`, the int8 GEMM's VNNI tile and the dense
//! GEMM's tile and panel packing.
//!
//! Every function is `unsafe` only because of its `#[target_feature]`: callers check
//! that the tier they pass is supported (`gemv_at` and `q8_0_matmul_at` lower it to `Tier::detect()`).

use std::arch::x86_64::*;

use crate::gemv::{prefetch_two_lines, WeightElement, PREFETCH_ROWS};

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale and 32 int8 values.
const BLOCK_BYTES: usize = 34;

/// `G` weight rows against `R` activation rows (one decode token, or a batch of them): one
/// 16-lane accumulator per (weight row, activation row) pair, so each weight vector is widened
/// once for all `R` rows and each `x` vector serves `G` weight rows. A pair's sum does not
/// depend on `G` or `R`, so a row of a batch gets bit for bit what it gets alone. Each weight row's
/// bytes [`PREFETCH_ROWS`] rows on are prefetched as it is read (the rows of a GEMV are
/// consecutive).
///
/// # Safety
/// The CPU must support the AVX-512 tier (and AVX2, FMA and F16C, which it implies).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn dot_tile<W: WeightElement, const G: usize, const R: usize>(
    w: [&[W]; G],
    x: [&[f32]; R],
) -> [[f32; R]; G] {
    let n = w
        .iter()
        .map(|r| r.len())
        .chain(x.iter().map(|r| r.len()))
        .min()
        .unwrap_or(0);
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n ≤ every length.
        unsafe {
            let mut wv = [_mm512_setzero_ps(); G];
            for g in 0..G {
                let wp = w[g].as_ptr().add(i);
                if i % 32 == 0 {
                    prefetch_two_lines(wp.wrapping_add(PREFETCH_ROWS * n));
                }
                wv[g] = W::load16(wp);
            }
            for r in 0..R {
                let xv = _mm512_loadu_ps(x[r].as_ptr().add(i));
                for g in 0..G {
                    acc[g][r] = _mm512_fmadd_ps(wv[g], xv, acc[g][r]);
                }
            }
        }
        i += 16;
    }
    let mut sums = [[0f32; R]; G];
    for g in 0..G {
        for r in 0..R {
            sums[g][r] = _mm512_reduce_add_ps(acc[g][r]);
            for k in i..n {
                sums[g][r] += w[g][k].widen() * x[r][k];
            }
        }
    }
    sums
}

/// Each block's f16 scale of `group` rows of Q8_0 blocks (`blocks` per row) as f32, into
/// `out[g · blocks + b]`: sixteen scales per gather (each 4-byte read starts at a block's scale
/// and stays inside the block), narrowed to their low 16 bits and widened by `vcvtph2ps`.
///
/// # Safety
/// The CPU must support the AVX-512 tier; `weights` must hold `group` rows of `blocks` blocks
/// and `out` `group × blocks` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn widen_q8_0_scales(
    weights: &[u8],
    group: usize,
    blocks: usize,
    out: &mut [f32],
) {
    let row_bytes = blocks * BLOCK_BYTES;
    debug_assert!(weights.len() >= group * row_bytes && out.len() >= group * blocks);
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(BLOCK_BYTES as i32),
    );
    for g in 0..group {
        let mut b = 0;
        while b + 16 <= blocks {
            // SAFETY: blocks b..b + 16 of row g lie inside `weights`, and each 4-byte read at a
            // block's start stays inside that 34-byte block; out has room for 16 at g·blocks + b.
            unsafe {
                let base = weights.as_ptr().add(g * row_bytes + b * BLOCK_BYTES);
                let raw = _mm512_i32gather_epi32::<1>(offsets, base.cast());
                let widened = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));
                _mm512_storeu_ps(out.as_mut_ptr().add(g * blocks + b), widened);
            }
            b += 16;
        }
        for b in b..blocks {
            let o = g * row_bytes + b * BLOCK_BYTES;
            let bits = u16::from_le_bytes([weights[o], weights[o + 1]]);
            out[g * blocks + b] = half::f16::from_bits(bits).to_f32();
        }
    }
}

/// The dot products of `G` rows of Q8_0 weights (`weights`, raw blocks) with one quantized
/// activation row (`xq`, int8), two blocks per step: the 64 activation bytes are loaded once
/// for all rows, `vpdpbusd` multiplies |x| by the weights carrying x's sign (the unsigned ×
/// signed form it has) into 16 i32 sums, and those are scaled by each block's weight scale,
/// widened from the block as it is read (one row: the weights stream through once), times the
/// activation block's scale `xd[b]` — the products [`q8_0_dot_rows`] forms for several rows, so
/// a row gets bit for bit the same sums alone or in a batch. The next group's blocks (the `G`
/// rows that follow) are prefetched as these are read.
///
/// # Safety
/// The CPU must support the AVX-512 tier; `weights` must hold `G` rows of `blocks` blocks,
/// `xq` `blocks × 32` values and `xd` `blocks` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_dot_group<const G: usize>(
    weights: &[u8],
    blocks: usize,
    xq: &[i8],
    xd: &[f32],
) -> [f32; G] {
    let row_bytes = blocks * BLOCK_BYTES;
    debug_assert!(weights.len() >= G * row_bytes && xq.len() >= blocks * BLOCK);
    debug_assert!(xd.len() >= blocks);
    let w = weights.as_ptr();
    // Lanes 0–7 take the first block's scale, lanes 8–15 the second's.
    let pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); G];
    let mut b = 0;
    while b + 2 <= blocks {
        // SAFETY: b + 2 ≤ blocks, so both blocks of every row, their scales and the 64
        // activation values are inside the slices (see # Safety).
        unsafe {
            let x = _mm512_loadu_si512(xq.as_ptr().add(b * BLOCK).cast());
            let negative = _mm512_movepi8_mask(x);
            let x_abs = _mm512_abs_epi8(x);
            for (g, a) in acc.iter_mut().enumerate() {
                let first = w.add(g * row_bytes + b * BLOCK_BYTES + 2);
                prefetch_two_lines(first.wrapping_add(G * row_bytes));
                let lo = _mm256_loadu_si256(first.cast());
                let hi = _mm256_loadu_si256(first.add(BLOCK_BYTES).cast());
                let wv = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                let signed = _mm512_mask_sub_epi8(wv, negative, zero, wv);
                let dots = _mm512_dpbusd_epi32(zero, x_abs, signed);
                let two = _mm_setr_ps(
                    scale_product(w, row_bytes, xd, g, b),
                    scale_product(w, row_bytes, xd, g, b + 1),
                    0.0,
                    0.0,
                );
                let scale = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(two));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, *a);
            }
        }
        b += 2;
    }
    let mut sums = acc.map(|a| _mm512_reduce_add_ps(a));
    if b < blocks {
        // An odd block count: the last block with 256-bit VNNI.
        // SAFETY: b < blocks, as above for one block.
        unsafe {
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK).cast());
            let x_abs = _mm256_abs_epi8(x);
            for (g, sum) in sums.iter_mut().enumerate() {
                let block = w.add(g * row_bytes + b * BLOCK_BYTES + 2);
                let signed = _mm256_sign_epi8(_mm256_loadu_si256(block.cast()), x);
                let dots = _mm256_dpbusd_epi32(_mm256_setzero_si256(), x_abs, signed);
                let lanes = _mm256_cvtepi32_ps(dots);
                let product = scale_product(w, row_bytes, xd, g, b);
                *sum += crate::gemv::x86::hsum(lanes) * product;
            }
        }
    }
    sums
}

/// [`q8_0_dot_group`] for `R` activation rows at once, each weight block pair
/// loaded once for all of them. The integer dots come from `vpdpbusd` on `x + 128` (`xu`,
/// unsigned) minus `128 · Σw` (one `vpdpbusd` per weight block pair, shared by the rows) —
/// exactly the i32 lanes the sign trick gives — and every float step per (weight row,
/// activation row) is `q8_0_dot_group`'s, so each row's sums are bit for bit the single-row
/// ones. Weight rows are taken four at a time (`4 × R` accumulators in registers). Each block's
/// scale product is `scales[g][b] · xd[r][b]`, multiplied here as the single-row kernel
/// multiplies it. Returns `[g][r]`.
///
/// # Safety
/// The CPU must support the AVX-512 tier; `weights` must hold `GROUP_ROWS` rows of `blocks`
/// blocks, `scales` `GROUP_ROWS × blocks` values, and for every r: `xd[r]` `blocks` values,
/// `xq[r]` and `xu[r]` `blocks × 32` values. Q8_0 weights must lie in −127..=127 (as ggml quantizes), like the sign
/// trick of the single-row kernel assumes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_dot_rows<const GROUP_ROWS: usize, const R: usize>(
    weights: &[u8],
    scales: &[f32],
    blocks: usize,
    xd: [&[f32]; R],
    xq: [&[i8]; R],
    xu: [&[u8]; R],
) -> [[f32; R]; GROUP_ROWS] {
    const PART: usize = 4;
    let row_bytes = blocks * BLOCK_BYTES;
    debug_assert!(weights.len() >= GROUP_ROWS * row_bytes && GROUP_ROWS.is_multiple_of(PART));
    debug_assert!(scales.len() >= GROUP_ROWS * blocks);
    debug_assert!((0..R).all(|r| xd[r].len() >= blocks
        && xq[r].len() >= blocks * BLOCK
        && xu[r].len() >= blocks * BLOCK));
    let pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let zero = _mm512_setzero_si512();
    let bias = _mm512_set1_epi8(-128);
    let w = weights.as_ptr();
    let mut sums = [[0f32; R]; GROUP_ROWS];
    for part in 0..GROUP_ROWS / PART {
        let mut acc = [[_mm512_setzero_ps(); R]; PART];
        let mut b = 0;
        while b + 2 <= blocks {
            // SAFETY: b + 2 ≤ blocks and g < GROUP_ROWS, so both blocks of every row, their
            // products and the 64 activation values of every row are inside the slices.
            unsafe {
                let mut wv = [zero; PART];
                let mut corr = [zero; PART];
                for h in 0..PART {
                    let first = w.add((part * PART + h) * row_bytes + b * BLOCK_BYTES + 2);
                    prefetch_two_lines(first.wrapping_add(GROUP_ROWS * row_bytes));
                    let lo = _mm256_loadu_si256(first.cast());
                    let hi = _mm256_loadu_si256(first.add(BLOCK_BYTES).cast());
                    wv[h] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                    corr[h] = _mm512_dpbusd_epi32(zero, bias, wv[h]);
                }
                for r in 0..R {
                    let xv = _mm512_loadu_si512(xu[r].as_ptr().add(b * BLOCK).cast());
                    let dx = _mm_castpd_ps(_mm_load_sd(xd[r].as_ptr().add(b).cast()));
                    for h in 0..PART {
                        let g = part * PART + h;
                        let dots = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, xv, wv[h]), corr[h]);
                        let dw =
                            _mm_castpd_ps(_mm_load_sd(scales.as_ptr().add(g * blocks + b).cast()));
                        let two = _mm_mul_ps(dw, dx);
                        let scale = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(two));
                        acc[h][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, acc[h][r]);
                    }
                }
            }
            b += 2;
        }
        for h in 0..PART {
            for r in 0..R {
                sums[part * PART + h][r] = _mm512_reduce_add_ps(acc[h][r]);
            }
        }
        if b < blocks {
            // An odd block count: the last block with 256-bit VNNI, as the single-row kernel.
            // SAFETY: b < blocks, as above for one block.
            unsafe {
                for r in 0..R {
                    let x = _mm256_loadu_si256(xq[r].as_ptr().add(b * BLOCK).cast());
                    let x_abs = _mm256_abs_epi8(x);
                    for h in 0..PART {
                        let g = part * PART + h;
                        let block = w.add(g * row_bytes + b * BLOCK_BYTES + 2);
                        let signed = _mm256_sign_epi8(_mm256_loadu_si256(block.cast()), x);
                        let dots = _mm256_dpbusd_epi32(_mm256_setzero_si256(), x_abs, signed);
                        let lanes = _mm256_cvtepi32_ps(dots);
                        let product =
                            *scales.get_unchecked(g * blocks + b) * *xd[r].get_unchecked(b);
                        sums[g][r] += crate::gemv::x86::hsum(lanes) * product;
                    }
                }
            }
        }
    }
    sums
}

/// Block b of weight row g: its weight scale, widened from the block, times the activation
/// block's `xd[b]`. Inlined into its AVX-512 caller, whose features (F16C) it needs.
///
/// # Safety
/// Row g's block b must lie inside the weights at `w` (`row_bytes` per row), `xd` must hold
/// `b + 1` values, and the CPU must support F16C.
#[inline(always)]
unsafe fn scale_product(w: *const u8, row_bytes: usize, xd: &[f32], g: usize, b: usize) -> f32 {
    // SAFETY: see # Safety.
    unsafe {
        let block = w.add(g * row_bytes + b * BLOCK_BYTES);
        let bits = block.cast::<u16>().read_unaligned();
        crate::qgemm::x86::widen_f16(u16::from_le(bits)) * *xd.get_unchecked(b)
    }
}

/// One register tile of the int8 GEMM ([`crate::int8_gemm`]): activation rows `c0..c0 + C`
/// against the panel's 32 weight rows, into `tile[c][r]`. Per four values: two 512-bit panel
/// loads (16 rows × 4 bytes each) and, per activation row, one broadcast of its four int8 values
/// and two `vpdpbusd` (unsigned weight bytes × signed activations, 4 products per i32 lane).
/// Per sub-block of `LEN` values the i32 sums become f32: `acc += dot · (s · d) + o · (d · Σq)`.
///
/// # Safety
/// The CPU must support the AVX-512 tier (VNNI); `panel` and `acts` must be built for the same
/// `k` with sub-blocks of `LEN` values, and rows `c0..c0 + C` must exist in `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn int8_tile<const LEN: usize, const C: usize>(
    panel: &crate::int8_gemm::Panel,
    acts: &crate::int8_gemm::Activations,
    c0: usize,
    tile: &mut [[f32; crate::int8_gemm::PANEL]; crate::int8_gemm::TILE_ROWS],
) {
    const { assert!(C <= crate::int8_gemm::TILE_ROWS && LEN.is_multiple_of(4)) };
    let (k, subblocks) = (acts.k, acts.subblocks);
    debug_assert!(subblocks * LEN == k && panel.quads.len() >= k / 4 * 32);
    debug_assert!(panel.scales.len() >= subblocks * 32 && acts.q.len() >= (c0 + C) * k);
    let quads = panel.quads.as_ptr();
    let x: [*const i8; C] = std::array::from_fn(|c| acts.q.as_ptr().wrapping_add((c0 + c) * k));
    let d: [*const f32; C] =
        std::array::from_fn(|c| acts.d.as_ptr().wrapping_add((c0 + c) * subblocks));
    let sums: [*const f32; C] =
        std::array::from_fn(|c| acts.sums.as_ptr().wrapping_add((c0 + c) * subblocks));
    let mut acc = [[_mm512_setzero_ps(); C]; 2];
    for b in 0..subblocks {
        let mut dots = [[_mm512_setzero_si512(); C]; 2];
        for q in b * LEN / 4..(b + 1) * LEN / 4 {
            // SAFETY: q < k / 4, so the panel's 32 words at q · 32 and each row's four bytes at
            // 4q are inside the buffers (see # Safety).
            unsafe {
                let w0 = _mm512_loadu_si512(quads.add(q * 32).cast());
                let w1 = _mm512_loadu_si512(quads.add(q * 32 + 16).cast());
                for c in 0..C {
                    let four = x[c].add(4 * q).cast::<i32>().read_unaligned();
                    let xb = _mm512_set1_epi32(four);
                    dots[0][c] = _mm512_dpbusd_epi32(dots[0][c], w0, xb);
                    dots[1][c] = _mm512_dpbusd_epi32(dots[1][c], w1, xb);
                }
            }
        }
        // SAFETY: b < subblocks: the panel's 32 scales and offsets at b · 32 and each row's
        // sub-block values at b are inside the buffers.
        unsafe {
            let scales = panel.scales.as_ptr().add(b * 32);
            let offsets = panel.offsets.as_ptr().add(b * 32);
            let s = [_mm512_loadu_ps(scales), _mm512_loadu_ps(scales.add(16))];
            let o = [_mm512_loadu_ps(offsets), _mm512_loadu_ps(offsets.add(16))];
            for c in 0..C {
                let dx = _mm512_set1_ps(*d[c].add(b));
                let dxs = _mm512_set1_ps(*sums[c].add(b));
                for p in 0..2 {
                    let scale = _mm512_mul_ps(s[p], dx);
                    acc[p][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[p][c]), scale, acc[p][c]);
                    acc[p][c] = _mm512_fmadd_ps(o[p], dxs, acc[p][c]);
                }
            }
        }
    }
    for c in 0..C {
        // SAFETY: each tile row holds 32 f32s.
        unsafe {
            _mm512_storeu_ps(tile[c].as_mut_ptr(), acc[0][c]);
            _mm512_storeu_ps(tile[c].as_mut_ptr().add(16), acc[1][c]);
        }
    }
}

/// Weight rows per packed panel of the dense GEMM on this tier: two 16-lane vectors.
pub(crate) const DENSE_PANEL: usize = 32;
/// Activation rows per register tile of the dense GEMM on this tier.
pub(crate) const DENSE_TILE_ROWS: usize = 12;

/// One register tile of the dense GEMM ([`crate::dense_gemm`]): 12 packed activation rows
/// (`x[i · 12 + c]`) against 32 packed weight rows (`panel[i · 32 + r]`) over `k` columns, into
/// `tile[c · 32 + r]`. Per column: two weight loads, twelve broadcasts and 24 independent FMAs, which
/// keeps both FMA ports busy past their latency.
///
/// # Safety
/// The CPU must support AVX-512 F; `panel` must hold `k × 32` values, `x` `k × 12` and `tile`
/// `12 × 32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn dense_tile(panel: &[f32], x: &[f32], k: usize, tile: &mut [f32]) {
    const ROWS: usize = DENSE_TILE_ROWS;
    debug_assert!(
        panel.len() >= k * DENSE_PANEL && x.len() >= k * ROWS && tile.len() >= DENSE_PANEL * ROWS
    );
    let mut lo = [_mm512_setzero_ps(); ROWS];
    let mut hi = [_mm512_setzero_ps(); ROWS];
    let (w, xs) = (panel.as_ptr(), x.as_ptr());
    for i in 0..k {
        // SAFETY: i < k, so the 32 weights at 32i and the 12 activations at 12i are inside.
        unsafe {
            let w0 = _mm512_loadu_ps(w.add(32 * i));
            let w1 = _mm512_loadu_ps(w.add(32 * i + 16));
            for c in 0..ROWS {
                let xb = _mm512_set1_ps(*xs.add(ROWS * i + c));
                lo[c] = _mm512_fmadd_ps(w0, xb, lo[c]);
                hi[c] = _mm512_fmadd_ps(w1, xb, hi[c]);
            }
        }
    }
    for c in 0..ROWS {
        // SAFETY: `tile` holds ROWS rows of 32 f32s.
        unsafe {
            _mm512_storeu_ps(tile.as_mut_ptr().add(32 * c), lo[c]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(32 * c + 16), hi[c]);
        }
    }
}

/// Widens 16 × 16 blocks of up to 32 weight rows (`w`, `k` values each) into the dense GEMM's
/// transposed panel (`panel[i · 32 + r]`), transposing each block in registers: 16 loads, three
/// rounds of 16 shuffles and 16 stores per 256 values. Columns past the last multiple of 16 and
/// rows past `w`'s are left to the caller (who zeroes or writes them).
///
/// # Safety
/// The CPU must support AVX-512 F; `w` must hold whole rows of `k` values (at most 32 rows) and
/// `panel` `k × 32` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn pack_panel<W: WeightElement>(w: &[W], k: usize, panel: &mut [f32]) {
    let rows = w.len() / k;
    debug_assert!(rows <= 32 && panel.len() >= k * 32);
    for r0 in (0..rows).step_by(16) {
        let mut i0 = 0;
        while i0 + 16 <= k {
            // SAFETY: rows r0 + j < rows exist with k ≥ i0 + 16 values; the 16 stores land at
            // columns i0..i0 + 16 of the panel, rows r0..r0 + 16 (r0 + 16 ≤ 32).
            unsafe {
                let v: [__m512; 16] = std::array::from_fn(|j| {
                    if r0 + j < rows {
                        W::load16(w.as_ptr().add((r0 + j) * k + i0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                // Round 1: pairs of rows interleaved within each 128-bit lane.
                let t: [__m512; 16] = std::array::from_fn(|j| {
                    let (a, b) = (v[j & !1], v[j | 1]);
                    if j % 2 == 0 {
                        _mm512_unpacklo_ps(a, b)
                    } else {
                        _mm512_unpackhi_ps(a, b)
                    }
                });
                // Round 2: u[4q + c] holds, in lane L, column 4L + c of rows 4q..4q + 4.
                let u: [__m512; 16] = std::array::from_fn(|j| {
                    let (q, c) = (j / 4, j % 4);
                    let (a, b) = (t[4 * q + c / 2], t[4 * q + 2 + c / 2]);
                    if c % 2 == 0 {
                        _mm512_shuffle_ps::<0x44>(a, b)
                    } else {
                        _mm512_shuffle_ps::<0xEE>(a, b)
                    }
                });
                // Round 3: gather lane L of u[c], u[4 + c], u[8 + c], u[12 + c] = column 4L + c.
                for c in 0..4 {
                    let s0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
                    let s1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
                    let s2 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
                    let s3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
                    let columns = [
                        _mm512_shuffle_f32x4::<0x88>(s0, s2),
                        _mm512_shuffle_f32x4::<0xDD>(s0, s2),
                        _mm512_shuffle_f32x4::<0x88>(s1, s3),
                        _mm512_shuffle_f32x4::<0xDD>(s1, s3),
                    ];
                    for (lane, column) in columns.into_iter().enumerate() {
                        let i = i0 + 4 * lane + c;
                        _mm512_storeu_ps(panel.as_mut_ptr().add(i * 32 + r0), column);
                    }
                }
            }
            i0 += 16;
        }
    }
}
