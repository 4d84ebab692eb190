//! Decode kernels for the K-quants of llama.cpp's `_K_M` files, Q4_K and Q6_K, for one to a
//! few activation rows (more rows go through [`crate::int8_gemm`]).
//!
//! In a Q4_K_M file of the Qwen3.5-0.8B shape Q4_K holds most projections and Q6_K the tied
//! embedding / output head (40 % of the bytes read per token). candle's block dot products
//! (`vec_dot_4`) reached 10.6–11.7 GiB/s for Q4_K here (benches/matvec.rs, 2-core Xeon), where
//! our Q8_0 kernel streams 16; the difference is how many rows are in flight and whether the next
//! ones are on their way. These kernels:
//! - quantize each activation row once to int8 with one f32 scale per 256 values (llama.cpp's
//!   Q8_K granularity, so a super-block's integer sub-block scales can multiply integer sums),
//!   keeping the sums of every 16 and 32 values for the weights' minimums and offsets;
//! - compute 4 weight rows at a time, prefetching the next group's bytes as each
//!   super-block is read (rows of a GEMV are consecutive; see `gemv::PREFETCH_ROWS`); up to 4
//!   activation rows (a batched decode step) share each unpacked chunk of weights (AVX2, and
//!   AVX-512 in `x86::avx512_rows`), and on AVX2 one activation row reads Q6_K weights row
//!   after row, prefetched 8 KiB ahead;
//! - unpack nibbles / 6-bit values in registers, `maddubs` them with the activations, multiply
//!   by the integer sub-block scales with `madd`, and convert to f32 once per super-block. The
//!   scales of two sub-blocks come from one byte shuffle of the super-block's scale vector
//!   (before: two scalar broadcasts and a lane insert per 32 values, which made the Q6_K kernel
//!   compute-bound: `matvec` "Q6K, in L3" 12–20 → 24–31 GiB/s on the AMD EPYC VM).
//!
//! On AVX-512 CPUs the same kernels take two 32-byte chunks per 512-bit step with `vpdpbusd`
//! and apply the sub-block scales as f32 lanes: benches/matvec.rs on the 2-core Xeon, 2 threads,
//! Q4_K 17.0 GiB/s (AVX2 kernel 12.0, candle 10.6), Q6_K 18.7 (14.1, 11.6). AVX2 (FMA, F16C)
//! CPUs run the `maddubs`/`madd` form; the portable tier keeps candle's block dot products.

use candle_core::quantized::GgmlDType;
use hybrid_simd::Tier;

use crate::parallel::by_weight_rows;
use crate::qgemm::check_shapes;
use crate::Result;

/// Values per K-quant super-block.
const SUPER: usize = 256;
/// Weight rows computed together.
const GROUP: usize = 4;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// True when [`kquant_matmul`] has its own kernel for `dtype` on this CPU (and `HYBRID_SIMD`).
pub fn supports(dtype: GgmlDType) -> bool {
    hybrid_simd::tier() >= Tier::Avx2 && matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K)
}

/// `y[r][j] = Σ_i W[j][i] x[r][i]` for Q4_K or Q6_K weights `w` (`n` rows of `k` values, raw
/// blocks) and f32 activations `x` (`m × k`), writing `y` (`m × n`).
pub fn kquant_matmul(
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    kquant_matmul_at(hybrid_simd::quantized_gemv_tier(), dtype, w, n, k, x, y)
}

/// [`kquant_matmul`] at a given SIMD tier (lowered to what this CPU supports); below AVX2,
/// candle's block dot products ([`crate::qgemm::blocks_matmul`]).
pub fn kquant_matmul_at(
    tier: Tier,
    dtype: GgmlDType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    if !matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) {
        return Err(candle_core::Error::Msg(format!(
            "K-quant GEMV of {dtype:?} weights: only Q4_K and Q6_K have this kernel"
        ))
        .into());
    }
    let (m, row_bytes) = check_shapes("K-quant GEMV", dtype, w, n, k, x, y)?;
    if tier.min(Tier::detect()) < Tier::Avx2 || !cfg!(target_arch = "x86_64") {
        return crate::qgemm::blocks_matmul(dtype, w, (m, k, n), x, y);
    }
    let avx512 = tier.min(Tier::detect()) >= Tier::Avx512;
    let rows = SuperRows::new(x, k, avx512 && dtype == GgmlDType::Q4K);
    by_weight_rows("K-quant GEMV", y, m, n, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / m;
        let weights = &w[first * row_bytes..(first + count) * row_bytes];
        // SAFETY: the tier was checked against the CPU above; `weights` holds `count` rows of
        // `row_bytes` bytes of `dtype`, `rows` holds `m` rows (with the AVX-512 Q4_K order when
        // `avx512`), `out` is m × count.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            if avx512 {
                x86::task::<x86::Avx512Rows>(dtype, weights, row_bytes, &rows, m, out)
            } else {
                x86::task::<x86::Avx2Rows>(dtype, weights, row_bytes, &rows, m, out)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (weights, count, &rows);
    })
}

/// Activation rows quantized to int8 with one scale per 256 values: `q` (`m × k`), `d` (one
/// per super-block), and the sums of every 16 (`sums16`) and 32 (`sums32`) quantized values.
struct SuperRows {
    q: Vec<i8>,
    /// `q` in the order the AVX-512 Q4_K kernel reads it (empty unless asked for): per
    /// super-block, values 0–31, 64–95, 32–63, 96–127, then the same for 128–255, so one 512-bit
    /// load matches the low (or high) nibbles of two 32-byte chunks of weights.
    q4k_order: Vec<i8>,
    d: Vec<f32>,
    sums16: Vec<i16>,
    sums32: Vec<i16>,
    k: usize,
}

impl SuperRows {
    fn new(x: &[f32], k: usize, q4k_order: bool) -> Self {
        let supers = x.len() / SUPER;
        let mut q = vec![0i8; x.len()];
        let mut d = Vec::with_capacity(supers);
        let mut sums16 = Vec::with_capacity(supers * 16);
        for (values, out) in x.chunks_exact(SUPER).zip(q.chunks_exact_mut(SUPER)) {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (o, v) in out.iter_mut().zip(values) {
                // `as` saturates, so a value rounding past ±127 stays in range.
                *o = (v * inverse).round().clamp(-127.0, 127.0) as i8;
            }
            d.push(scale);
            for sixteen in out.chunks_exact(16) {
                sums16.push(sixteen.iter().map(|&v| i16::from(v)).sum());
            }
        }
        let sums32 = sums16.chunks_exact(2).map(|p| p[0] + p[1]).collect();
        let mut reordered = Vec::new();
        if q4k_order {
            reordered.reserve(q.len());
            for block in q.chunks_exact(SUPER) {
                for half in block.chunks_exact(128) {
                    for start in [0, 64, 32, 96] {
                        reordered.extend_from_slice(&half[start..start + 32]);
                    }
                }
            }
        }
        SuperRows {
            q,
            q4k_order: reordered,
            d,
            sums16,
            sums32,
            k,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use candle_core::quantized::GgmlDType;

    use super::{SuperRows, GROUP, SUPER};
    use crate::gemv::prefetch_two_lines;
    use crate::gemv::x86::hsum;
    use crate::qgemm::x86::widen_f16;

    mod avx512_rows;

    /// One tier's multi-row K-quant kernels: `G` weight rows of `dtype` (Q4_K or Q6_K) against
    /// activation rows `r0..r0 + R`, `[weight row][activation row]`, with a pair's arithmetic
    /// independent of `G` and `R`.
    pub(super) trait RowKernels {
        /// # Safety
        /// The CPU must support the tier; `at` must hold `G` rows of `row_bytes` bytes of
        /// `dtype`, which are `rows.k / 256` super-blocks; rows `r0..r0 + R` must exist in
        /// `rows` (with `q4k_order` for the AVX-512 Q4_K kernel).
        unsafe fn rows<const G: usize, const R: usize>(
            dtype: GgmlDType,
            at: &[u8],
            row_bytes: usize,
            rows: &SuperRows,
            r0: usize,
        ) -> [[f32; R]; G];

        /// Activation row `r` against every weight row of `weights` (whole rows of
        /// `row_bytes` bytes of `dtype`) with the tier's one-row kernels, into `out[..count]`:
        /// the same arithmetic as [`RowKernels::rows`], written for one row because it streams
        /// faster so.
        ///
        /// # Safety
        /// The CPU must support the tier; row `r` must exist in `rows` (with `q4k_order` for the
        /// AVX-512 Q4_K kernel); `out` must hold `count` values.
        unsafe fn single_row(
            dtype: GgmlDType,
            weights: &[u8],
            row_bytes: usize,
            rows: &SuperRows,
            r: usize,
            out: &mut [f32],
        );
    }

    /// The AVX2 kernels, [`q4_k_rows`] and [`q6_k_rows`].
    pub(super) struct Avx2Rows;

    impl RowKernels for Avx2Rows {
        unsafe fn rows<const G: usize, const R: usize>(
            dtype: GgmlDType,
            at: &[u8],
            row_bytes: usize,
            rows: &SuperRows,
            r0: usize,
        ) -> [[f32; R]; G] {
            // SAFETY: forwarded contract.
            unsafe {
                match dtype {
                    GgmlDType::Q4K => q4_k_rows::<G, R>(at, row_bytes, rows, r0),
                    _ => q6_k_rows::<G, R>(at, row_bytes, rows, r0),
                }
            }
        }

        unsafe fn single_row(
            dtype: GgmlDType,
            weights: &[u8],
            row_bytes: usize,
            rows: &SuperRows,
            r: usize,
            out: &mut [f32],
        ) {
            // SAFETY: forwarded contract.
            unsafe { single_row(dtype, weights, row_bytes, rows, r, out) }
        }
    }

    /// The AVX-512 kernels of [`avx512_rows`].
    pub(super) struct Avx512Rows;

    impl RowKernels for Avx512Rows {
        unsafe fn rows<const G: usize, const R: usize>(
            dtype: GgmlDType,
            at: &[u8],
            row_bytes: usize,
            rows: &SuperRows,
            r0: usize,
        ) -> [[f32; R]; G] {
            use avx512_rows::{q4_k_rows_avx512, q6_k_rows_avx512};
            // SAFETY: forwarded contract.
            unsafe {
                match dtype {
                    GgmlDType::Q4K => q4_k_rows_avx512::<G, R>(at, row_bytes, rows, r0),
                    _ => q6_k_rows_avx512::<G, R>(at, row_bytes, rows, r0),
                }
            }
        }

        /// Four weight rows side by side ([`q4_k_group_avx512`], [`q6_k_group_avx512`]), the
        /// rows of a partial group one at a time.
        unsafe fn single_row(
            dtype: GgmlDType,
            weights: &[u8],
            row_bytes: usize,
            rows: &SuperRows,
            r: usize,
            out: &mut [f32],
        ) {
            let count = weights.len() / row_bytes;
            let mut start = 0;
            while start < count {
                let group = GROUP.min(count - start);
                let at = &weights[start * row_bytes..(start + group) * row_bytes];
                // SAFETY: forwarded contract; `at` holds `group` whole rows.
                unsafe {
                    if group == GROUP {
                        out[start..start + GROUP].copy_from_slice(&match dtype {
                            GgmlDType::Q4K => q4_k_group_avx512::<GROUP>(at, row_bytes, rows, r),
                            _ => q6_k_group_avx512::<GROUP>(at, row_bytes, rows, r),
                        });
                    } else {
                        for (g, one) in at.chunks_exact(row_bytes).enumerate() {
                            out[start + g] = match dtype {
                                GgmlDType::Q4K => q4_k_group_avx512::<1>(one, row_bytes, rows, r),
                                _ => q6_k_group_avx512::<1>(one, row_bytes, rows, r),
                            }[0];
                        }
                    }
                }
                start += group;
            }
        }
    }

    /// Activation rows `r0..r0 + take` (2 to 4) against every weight row of `weights` on `K`'s
    /// multi-row kernels, into `out` (`[m][count]`): each group of [`GROUP`] weight rows in one
    /// call, the rows of a partial group one at a time (the same arithmetic either way).
    ///
    /// # Safety
    /// As [`RowKernels::rows`] for every row of `weights` (whole rows of `row_bytes` bytes of
    /// `dtype`) and activation rows `r0..r0 + take`; `out` must hold `(r0 + take) × count`
    /// values.
    pub(super) unsafe fn rows_pass<K: RowKernels>(
        dtype: GgmlDType,
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r0: usize,
        take: usize,
        out: &mut [f32],
    ) {
        let count = weights.len() / row_bytes;
        let mut start = 0;
        while start < count {
            let group = GROUP.min(count - start);
            let at = &weights[start * row_bytes..(start + group) * row_bytes];
            let mut put = |g: usize, i: usize, v: f32| out[(r0 + i) * count + start + g] = v;
            // SAFETY: forwarded contract; `at` holds `group` whole rows.
            unsafe {
                match take {
                    2 => rows_of::<K, 2>(dtype, at, row_bytes, rows, r0, &mut put),
                    3 => rows_of::<K, 3>(dtype, at, row_bytes, rows, r0, &mut put),
                    _ => rows_of::<K, 4>(dtype, at, row_bytes, rows, r0, &mut put),
                }
            }
            start += group;
        }
    }

    /// Weight rows `at` (a full group or fewer) against activation rows `r0..r0 + R` on `K`'s
    /// kernels, each sum handed to `put(weight row, activation row offset, value)`.
    ///
    /// # Safety
    /// As [`RowKernels::rows`] for every row of `at`.
    unsafe fn rows_of<K: RowKernels, const R: usize>(
        dtype: GgmlDType,
        at: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r0: usize,
        put: &mut dyn FnMut(usize, usize, f32),
    ) {
        let count = at.len() / row_bytes;
        // SAFETY: forwarded contract; each call's rows are inside `at`.
        unsafe {
            if count == GROUP {
                emit_sums(0, &K::rows::<GROUP, R>(dtype, at, row_bytes, rows, r0), put);
                return;
            }
            for g in 0..count {
                let one = &at[g * row_bytes..(g + 1) * row_bytes];
                emit_sums(g, &K::rows::<1, R>(dtype, one, row_bytes, rows, r0), put);
            }
        }
    }

    /// Hands each sum of a `[weight row][activation row]` block, the weight rows counted from
    /// `first`, to `put(weight row, activation row offset, value)`.
    fn emit_sums<const R: usize>(
        first: usize,
        sums: &[[f32; R]],
        put: &mut dyn FnMut(usize, usize, f32),
    ) {
        for (g, row) in sums.iter().enumerate() {
            for (i, &v) in row.iter().enumerate() {
                put(first + g, i, v);
            }
        }
    }

    /// Bytes of a Q4_K super-block: f16 d, f16 dmin, 12 bytes of scales/mins, 128 of nibbles.
    const Q4K_BYTES: usize = 144;
    /// Bytes of a Q6_K super-block: 128 of low nibbles, 64 of high bits, 16 scales, f16 d.
    const Q6K_BYTES: usize = 210;

    /// Asks for the four cache lines from `p`: a whole super-block (144 or 210 bytes) of the
    /// row the next group reads at this position (a hint only: it never faults).
    #[inline(always)]
    fn prefetch_super_block(p: *const u8) {
        prefetch_two_lines(p);
        prefetch_two_lines(p.wrapping_add(128));
    }

    /// The little-endian f16 at `p` as f32.
    ///
    /// # Safety
    /// `p` must be readable for two bytes; the CPU must support F16C.
    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: see # Safety.
        widen_f16(u16::from_le(unsafe { p.cast::<u16>().read_unaligned() }))
    }

    /// Control bytes for `_mm256_shuffle_epi8` that fill the low 128-bit lane with 16-bit word
    /// `low` of the source's low lane and the high lane with word `high` of its high lane: one
    /// shuffle then gives two sub-blocks' integer scales (one per 16 values of a 32-value chunk),
    /// instead of two scalar broadcasts and a lane insert.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn word_pick(low: usize, high: usize) -> __m256i {
        let mut control = [0u8; 32];
        for (i, c) in control.iter_mut().enumerate() {
            let word = if i < 16 { low } else { high };
            *c = (2 * word + i % 2) as u8;
        }
        // SAFETY: `control` is 32 readable bytes; unaligned loads are allowed.
        unsafe { _mm256_loadu_si256(control.as_ptr().cast()) }
    }

    /// Bits 4–5 of the four value sets of a Q6_K half super-block, from its 32 bytes of high
    /// bits `h` (set i in bits 2i..2i + 2 of each byte), already in place: shifting 16-bit lanes
    /// and masking each byte with `bits45` (0x30) drops what crosses from the neighbour byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6_k_high_bits(h: __m256i, bits45: __m256i) -> [__m256i; 4] {
        [
            _mm256_and_si256(_mm256_slli_epi16(h, 4), bits45),
            _mm256_and_si256(_mm256_slli_epi16(h, 2), bits45),
            _mm256_and_si256(h, bits45),
            _mm256_and_si256(_mm256_srli_epi16(h, 2), bits45),
        ]
    }

    /// The sixteen signed 8-bit sub-block scales of the Q6_K super-block at `block`, widened to
    /// i16, and its f16 super-block scale `d`.
    ///
    /// # Safety
    /// `block` must be readable for [`Q6K_BYTES`] bytes; the CPU must support AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q6_k_scales(block: *const u8) -> (__m256i, f32) {
        // SAFETY: bytes 192..210 of the block are readable (see # Safety).
        unsafe {
            let scales = _mm_loadu_si128(block.add(192).cast());
            (_mm256_cvtepi8_epi16(scales), f16_at(block.add(208)))
        }
    }

    /// `−32 · Σ_j sc_j · Σ x` over the sixteen sub-blocks: the −32 of every Q6_K value, taken
    /// out of the per-value products, from the widened scales and the activation's sums of 16.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6_k_offset(scales16: __m256i, sums16: __m256i) -> __m256i {
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales16, sums16), 5);
        _mm256_sub_epi32(_mm256_setzero_si256(), offset)
    }

    /// The eight scales of each half super-block, repeated in both 128-bit lanes, so that one
    /// [`word_pick`] shuffle serves either lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6_k_half_scales(scales16: __m256i) -> [__m256i; 2] {
        [
            _mm256_permute4x64_epi64::<0x44>(scales16),
            _mm256_permute4x64_epi64::<0xEE>(scales16),
        ]
    }

    /// The 128 unsigned 6-bit values (0..64) of half `half` of the Q6_K super-block at `block`,
    /// as four 32-value vectors in activation order: low nibbles of the first and second 32
    /// bytes, then their high nibbles, each with its two high bits from [`q6_k_high_bits`].
    ///
    /// # Safety
    /// `block` must be readable for [`Q6K_BYTES`] bytes and `half` < 2; the CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q6_k_half_values(block: *const u8, half: usize) -> [__m256i; 4] {
        let low = _mm256_set1_epi8(0x0F);
        // SAFETY: bytes 64·half..64·half + 64 and 128 + 32·half..+32 lie inside the block.
        let (l0, l1, h) = unsafe {
            let ql = block.add(64 * half);
            (
                _mm256_loadu_si256(ql.cast()),
                _mm256_loadu_si256(ql.add(32).cast()),
                _mm256_loadu_si256(block.add(128 + 32 * half).cast()),
            )
        };
        let high = q6_k_high_bits(h, _mm256_set1_epi8(0x30));
        [
            _mm256_or_si256(_mm256_and_si256(l0, low), high[0]),
            _mm256_or_si256(_mm256_and_si256(l1, low), high[1]),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low), high[2]),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low), high[3]),
        ]
    }

    /// What a Q4_K super-block says before its nibbles: `d`, `dmin`, the eight sub-block scales
    /// as 16-bit words in both 128-bit lanes (for [`word_pick`]), and the eight mins.
    struct Q4kHeader {
        d: f32,
        dmin: f32,
        scales16: __m256i,
        mins: [u8; 8],
    }

    /// The header of the Q4_K super-block at `block`.
    ///
    /// # Safety
    /// `block` must be readable for [`Q4K_BYTES`] bytes; the CPU must support AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q4_k_header(block: *const u8) -> Q4kHeader {
        // SAFETY: bytes 0..16 of the block are readable (see # Safety).
        unsafe {
            let (scales, mins) = q4_k_scales_mins(block.add(4).cast::<[u8; 12]>().read_unaligned());
            let scales16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                scales.as_ptr().cast(),
            )));
            Q4kHeader {
                d: f16_at(block),
                dmin: f16_at(block.add(2)),
                scales16,
                mins,
            }
        }
    }

    /// Chunk `j` (0..4) of the Q4_K super-block at `block` as unsigned 4-bit values: the low
    /// nibbles are values 64j..64j + 32 (sub-block 2j), the high nibbles the next 32 (2j + 1).
    ///
    /// # Safety
    /// `block` must be readable for [`Q4K_BYTES`] bytes and `j` < 4; the CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_k_nibbles(block: *const u8, j: usize) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        // SAFETY: bytes 16 + 32j..48 + 32j lie inside the block (see # Safety).
        let q = unsafe { _mm256_loadu_si256(block.add(16 + 32 * j).cast()) };
        (
            _mm256_and_si256(q, low),
            _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
        )
    }

    /// The eight 6-bit scales and eight 6-bit mins of a Q4_K super-block from its 12 packed
    /// bytes: the first four of each keep their 6 bits in bytes 0–3 (scales) and 4–7 (mins);
    /// the last four take their low 4 bits from bytes 8–11 (scales low nibbles, mins high) and
    /// their top 2 bits from the top bits of bytes 0–3 (scales) or 4–7 (mins). Four at a time
    /// in 32-bit words.
    #[inline]
    fn q4_k_scales_mins(packed: [u8; 12]) -> ([u8; 8], [u8; 8]) {
        let word =
            |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
        let (w0, w1, w2) = (word(0), word(4), word(8));
        let six = 0x3f3f_3f3f;
        let nibble = 0x0f0f_0f0f;
        let two = 0x0303_0303;
        let scales_low = w0 & six;
        let mins_low = w1 & six;
        let scales_high = (w2 & nibble) | (((w0 >> 6) & two) << 4);
        let mins_high = ((w2 >> 4) & nibble) | (((w1 >> 6) & two) << 4);
        let join = |a: u32, b: u32| {
            let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
            [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
        };
        (join(scales_low, scales_high), join(mins_low, mins_high))
    }

    /// The dot products of `G` rows of Q4_K weights (`weights`, `row_bytes` each) with
    /// activation rows `r0..r0 + R` of `rows`, `[weight row][activation row]`. Each 32-byte
    /// chunk of nibbles is unpacked once for all `R` activation rows; a pair's arithmetic is the
    /// same whatever `G` and `R` are (integer sums per super-block in chunk order, one f32 FMA
    /// per super-block, the minimums apart), so a row of a batch gets what it gets alone.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `weights` must hold `G` rows of `row_bytes`
    /// bytes, which are `rows.k / 256` super-blocks, and rows `r0..r0 + R` must exist in `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_k_rows<const G: usize, const R: usize>(
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r0: usize,
    ) -> [[f32; R]; G] {
        let supers = rows.k / SUPER;
        debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q4K_BYTES);
        debug_assert!(rows.q.len() >= (r0 + R) * rows.k);
        let pick_low: [__m256i; 4] = std::array::from_fn(|j| word_pick(2 * j, 2 * j));
        let pick_high: [__m256i; 4] = std::array::from_fn(|j| word_pick(2 * j + 1, 2 * j + 1));
        let mut acc = [[_mm256_setzero_ps(); R]; G];
        let mut mins = [[0f32; R]; G];
        let w = weights.as_ptr();
        for s in 0..supers {
            // SAFETY: s < supers and rows r0..r0 + R exist: each row's 256 values, scale and
            // eight sums of 32 of this super-block are inside `rows`; each weight row's block
            // at g · row_bytes + s · 144 is inside `weights` (see # Safety).
            unsafe {
                let at: [usize; R] = std::array::from_fn(|i| (r0 + i) * supers + s);
                let mut x = [std::ptr::null::<i8>(); R];
                let mut dx = [0f32; R];
                let mut sums32 = [_mm_setzero_si128(); R];
                for i in 0..R {
                    x[i] = rows.q.as_ptr().add(at[i] * SUPER);
                    dx[i] = *rows.d.get_unchecked(at[i]);
                    sums32[i] = _mm_loadu_si128(rows.sums32.as_ptr().add(at[i] * 8).cast());
                }
                for g in 0..G {
                    let block = w.add(g * row_bytes + s * Q4K_BYTES);
                    prefetch_super_block(block.wrapping_add(G * row_bytes));
                    let header = q4_k_header(block);
                    let mut isum = [_mm256_setzero_si256(); R];
                    for j in 0..4 {
                        let (lo, hi) = q4_k_nibbles(block, j);
                        let slo = _mm256_shuffle_epi8(header.scales16, pick_low[j]);
                        let shi = _mm256_shuffle_epi8(header.scales16, pick_high[j]);
                        for i in 0..R {
                            let xlo = _mm256_loadu_si256(x[i].add(64 * j).cast());
                            let xhi = _mm256_loadu_si256(x[i].add(64 * j + 32).cast());
                            let plo = _mm256_maddubs_epi16(lo, xlo);
                            let phi = _mm256_maddubs_epi16(hi, xhi);
                            isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(plo, slo));
                            isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(phi, shi));
                        }
                    }
                    for i in 0..R {
                        acc[g][i] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum[i]),
                            _mm256_set1_ps(header.d * dx[i]),
                            acc[g][i],
                        );
                        let min_dot = q4_k_min_dot(header.mins, sums32[i]) as f32;
                        mins[g][i] += header.dmin * dx[i] * min_dot;
                    }
                }
            }
        }
        let mut sums = [[0f32; R]; G];
        for g in 0..G {
            for i in 0..R {
                sums[g][i] = hsum(acc[g][i]) - mins[g][i];
            }
        }
        sums
    }

    /// The dot products of `G` rows of Q6_K weights (`weights`, `row_bytes` each) with
    /// activation rows `r0..r0 + R` of `rows`: `Σ_j sc_j·(Σ q·x − 32·Σ x)` over the 16
    /// sub-blocks of 16. The 6-bit values are assembled once for all `R` rows, as in
    /// [`q4_k_rows`], with the same per-pair arithmetic whatever `G` and `R` are.
    ///
    /// # Safety
    /// As [`q4_k_rows`], with 210-byte Q6_K super-blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6_k_rows<const G: usize, const R: usize>(
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r0: usize,
    ) -> [[f32; R]; G] {
        let supers = rows.k / SUPER;
        debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q6K_BYTES);
        debug_assert!(rows.q.len() >= (r0 + R) * rows.k);
        let pick: [__m256i; 4] = std::array::from_fn(|i| word_pick(2 * i, 2 * i + 1));
        let mut acc = [[_mm256_setzero_ps(); R]; G];
        let w = weights.as_ptr();
        for s in 0..supers {
            // SAFETY: as in q4_k_rows, for 210-byte blocks and the 16 sums of 16.
            unsafe {
                let at: [usize; R] = std::array::from_fn(|i| (r0 + i) * supers + s);
                let mut x = [std::ptr::null::<i8>(); R];
                let mut dx = [0f32; R];
                let mut sums16 = [_mm256_setzero_si256(); R];
                for i in 0..R {
                    x[i] = rows.q.as_ptr().add(at[i] * SUPER);
                    dx[i] = *rows.d.get_unchecked(at[i]);
                    sums16[i] = _mm256_loadu_si256(rows.sums16.as_ptr().add(at[i] * 16).cast());
                }
                for (g, acc) in acc.iter_mut().enumerate() {
                    let block = w.add(g * row_bytes + s * Q6K_BYTES);
                    prefetch_super_block(block.wrapping_add(G * row_bytes));
                    let (scales16, d) = q6_k_scales(block);
                    let mut isum: [__m256i; R] =
                        std::array::from_fn(|i| q6_k_offset(scales16, sums16[i]));
                    for (half, half_scales) in q6_k_half_scales(scales16).into_iter().enumerate() {
                        let values = q6_k_half_values(block, half);
                        for (v_index, v) in values.into_iter().enumerate() {
                            let sc = _mm256_shuffle_epi8(half_scales, pick[v_index]);
                            for i in 0..R {
                                let xs =
                                    _mm256_loadu_si256(x[i].add(128 * half + 32 * v_index).cast());
                                let pairs = _mm256_maddubs_epi16(v, xs);
                                isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(pairs, sc));
                            }
                        }
                    }
                    for i in 0..R {
                        acc[i] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum[i]),
                            _mm256_set1_ps(d * dx[i]),
                            acc[i],
                        );
                    }
                }
            }
        }
        let mut sums = [[0f32; R]; G];
        for g in 0..G {
            for i in 0..R {
                sums[g][i] = hsum(acc[g][i]);
            }
        }
        sums
    }

    /// Activation row `r` of `rows` against every weight row of `weights` with the single-row
    /// kernels, into `out[..count]`: Q4_K four rows side by side, Q6_K one row after another
    /// ([`q6_k_row`]).
    ///
    /// # Safety
    /// As [`task`], for row `r`, on the AVX2 tier.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn single_row(
        dtype: GgmlDType,
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r: usize,
        out: &mut [f32],
    ) {
        let count = weights.len() / row_bytes;
        if dtype != GgmlDType::Q4K {
            for (one, out) in weights.chunks_exact(row_bytes).zip(&mut out[..count]) {
                // SAFETY: forwarded contract; `one` is one whole row.
                *out = unsafe { q6_k_row(one, rows, r) };
            }
            return;
        }
        let mut start = 0;
        while start < count {
            let group = GROUP.min(count - start);
            let at = &weights[start * row_bytes..(start + group) * row_bytes];
            // SAFETY: forwarded contract; `at` holds `group` whole rows.
            unsafe {
                if group == GROUP {
                    let sums = q4_k_group::<GROUP>(at, row_bytes, rows, r);
                    out[start..start + GROUP].copy_from_slice(&sums);
                } else {
                    for g in 0..group {
                        let one = &at[g * row_bytes..(g + 1) * row_bytes];
                        out[start + g] = q4_k_group::<1>(one, row_bytes, rows, r)[0];
                    }
                }
            }
            start += group;
        }
    }

    /// The driver of one task on `K`'s kernels: `count` weight rows (`weights`) against every
    /// activation row of `rows` (`m` of them), into `out` (`[m][count]`), four activation rows
    /// per pass over the task's weights, a lone row on the one-row kernels.
    ///
    /// # Safety
    /// The CPU must support `K`'s tier; `weights` must hold `count` rows of `row_bytes` bytes of
    /// `dtype` (Q4_K or Q6_K) and `rows` `m` rows (with `q4k_order` for the AVX-512 Q4_K
    /// kernels); `out` `m × count` values.
    pub(super) unsafe fn task<K: RowKernels>(
        dtype: GgmlDType,
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        m: usize,
        out: &mut [f32],
    ) {
        let count = weights.len() / row_bytes;
        let mut r = 0;
        while r < m {
            let take = (m - r).min(4);
            if take == 1 {
                // SAFETY: forwarded contract; row r exists.
                unsafe { K::single_row(dtype, weights, row_bytes, rows, r, &mut out[r * count..]) };
                r += 1;
                continue;
            }
            // SAFETY: forwarded contract; rows r..r + take exist. `take` ≥ 2: a lone
            // activation row took `single_row` above.
            unsafe { rows_pass::<K>(dtype, weights, row_bytes, rows, r, take, out) };
            r += take;
        }
    }

    /// [`q4_k_rows`] for one activation row (single-sequence decode): the same arithmetic,
    /// written for one row because the compiler's code for `R = 1` of the general kernel
    /// streamed a third slower (`matvec` Q4K/avx2 10.3–10.7 against 15.8–16.4 GiB/s, Q6K
    /// 8.7–8.8 against 12.9–14.2; AMD EPYC).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `weights` must hold `G` rows of `row_bytes`
    /// bytes, which are `rows.k / 256` super-blocks, and row `r` must exist in `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_k_group<const G: usize>(
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r: usize,
    ) -> [f32; G] {
        let supers = rows.k / SUPER;
        debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q4K_BYTES);
        debug_assert!(rows.q.len() >= (r + 1) * rows.k);
        // Sub-block 2j's scale in every lane (low nibbles of chunk j), and 2j + 1's (high).
        let pick_low: [__m256i; 4] = std::array::from_fn(|j| word_pick(2 * j, 2 * j));
        let pick_high: [__m256i; 4] = std::array::from_fn(|j| word_pick(2 * j + 1, 2 * j + 1));
        let mut acc = [_mm256_setzero_ps(); G];
        let mut mins = [0f32; G];
        let w = weights.as_ptr();
        for s in 0..supers {
            let at = r * supers + s;
            // SAFETY: s < supers and row r exists: the 256 values, the scale and the eight
            // sums of 32 of this super-block are inside `rows`; each row's block at
            // g · row_bytes + s · 144 is inside `weights` (see # Safety).
            unsafe {
                let x = rows.q.as_ptr().add(at * SUPER);
                let dx = *rows.d.get_unchecked(at);
                let sums32 = _mm_loadu_si128(rows.sums32.as_ptr().add(at * 8).cast());
                for g in 0..G {
                    let block = w.add(g * row_bytes + s * Q4K_BYTES);
                    prefetch_super_block(block.wrapping_add(G * row_bytes));
                    let header = q4_k_header(block);
                    let mut isum = _mm256_setzero_si256();
                    for j in 0..4 {
                        let (lo, hi) = q4_k_nibbles(block, j);
                        let xlo = _mm256_loadu_si256(x.add(64 * j).cast());
                        let xhi = _mm256_loadu_si256(x.add(64 * j + 32).cast());
                        let plo = _mm256_maddubs_epi16(lo, xlo);
                        let phi = _mm256_maddubs_epi16(hi, xhi);
                        let slo = _mm256_shuffle_epi8(header.scales16, pick_low[j]);
                        let shi = _mm256_shuffle_epi8(header.scales16, pick_high[j]);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, slo));
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, shi));
                    }
                    let scale = _mm256_set1_ps(header.d * dx);
                    acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[g]);
                    mins[g] += header.dmin * dx * q4_k_min_dot(header.mins, sums32) as f32;
                }
            }
        }
        std::array::from_fn(|g| hsum(acc[g]) - mins[g])
    }

    /// How far ahead of the super-block being read [`q6_k_row`] prefetches, in bytes (about
    /// ten rows of 1,024 values).
    const Q6K_PREFETCH_BYTES: usize = 8192;

    /// The dot product of one row of Q6_K weights (`weights`, one row) with activation row `r`
    /// of `rows`: `Σ_j sc_j·(Σ q·x − 32·Σ x)` over the 16 sub-blocks of 16, the same per-pair
    /// arithmetic as [`q6_k_rows`] (written apart for one activation row, as [`q4_k_group`]).
    ///
    /// The rows of a task are read one after another, a single sequential stream prefetched
    /// [`Q6K_PREFETCH_BYTES`] ahead: four rows side by side, each prefetched four rows ahead,
    /// streamed 8.0 / 8.7 / 8.0 GiB/s against 9.4 / 14.8 / 13.3 this way (`matvec` Q6K/avx2,
    /// three alternating rounds, AMD EPYC, 2 cores, in a slow hour of that VM). Q4_K showed no
    /// such difference and keeps its four rows side by side.
    ///
    /// # Safety
    /// As [`q4_k_group`] for one row of 210-byte Q6_K super-blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6_k_row(weights: &[u8], rows: &SuperRows, r: usize) -> f32 {
        let supers = rows.k / SUPER;
        debug_assert!(weights.len() == supers * Q6K_BYTES);
        debug_assert!(rows.q.len() >= (r + 1) * rows.k);
        let pick: [__m256i; 4] = std::array::from_fn(|i| word_pick(2 * i, 2 * i + 1));
        let mut acc = _mm256_setzero_ps();
        let w = weights.as_ptr();
        for s in 0..supers {
            let at = r * supers + s;
            // SAFETY: as in q4_k_group, for 210-byte blocks and the 16 sums of 16.
            unsafe {
                let x = rows.q.as_ptr().add(at * SUPER);
                let dx = *rows.d.get_unchecked(at);
                let sums16 = _mm256_loadu_si256(rows.sums16.as_ptr().add(at * 16).cast());
                let block = w.add(s * Q6K_BYTES);
                prefetch_super_block(block.wrapping_add(Q6K_PREFETCH_BYTES));
                let (scales16, d) = q6_k_scales(block);
                let mut isum = q6_k_offset(scales16, sums16);
                for (half, half_scales) in q6_k_half_scales(scales16).into_iter().enumerate() {
                    let values = q6_k_half_values(block, half);
                    for (i, v) in values.into_iter().enumerate() {
                        let xs = _mm256_loadu_si256(x.add(128 * half + 32 * i).cast());
                        let pairs = _mm256_maddubs_epi16(v, xs);
                        // Scales 8·half + 2i (first 16 values) and + 1 (last 16).
                        let sc = _mm256_shuffle_epi8(half_scales, pick[i]);
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, sc));
                    }
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dx), acc);
            }
        }
        hsum(acc)
    }

    /// The sum of the eight i32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let quad = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let two = _mm_add_epi32(quad, _mm_unpackhi_epi64(quad, quad));
        _mm_cvtsi128_si32(_mm_add_epi32(two, _mm_shuffle_epi32::<0b01>(two)))
    }

    /// Σ_j `mins[j]` · `sums32[j]` over a Q4_K super-block's eight sub-blocks (the minimums
    /// times the activation sums), eight products in one `madd`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_k_min_dot(mins: [u8; 8], sums32: __m128i) -> i32 {
        let m = _mm_cvtepu8_epi16(_mm_set_epi64x(0, i64::from_le_bytes(mins)));
        let four = _mm_madd_epi16(m, sums32);
        let two = _mm_add_epi32(four, _mm_unpackhi_epi64(four, four));
        _mm_cvtsi128_si32(_mm_add_epi32(two, _mm_shuffle_epi32::<0b01>(two)))
    }

    /// The lane orders of the AVX-512 Q4_K kernels: lanes 0–7 take sub-block a's scale, 8–15
    /// sub-block b's, for the (a, b) pairs of the low and high nibbles of chunks (0, 1) and
    /// (2, 3).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn q4_k_scale_orders() -> [__m512i; 4] {
        let pick =
            |a: i32, b: i32| _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
        [pick(0, 2), pick(1, 3), pick(4, 6), pick(5, 7)]
    }

    /// Chunks `2·pair` and `2·pair + 1` of a Q4_K super-block's nibbles as bytes: the low
    /// nibbles, then the high ones (the order `q4k_order` lays the activations in).
    ///
    /// # Safety
    /// `block` must be readable for [`Q4K_BYTES`] bytes and `pair` < 2; the CPU must support
    /// AVX-512 F and BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn q4_k_nibbles_avx512(block: *const u8, pair: usize) -> [__m512i; 2] {
        let low = _mm512_set1_epi8(0x0F);
        // SAFETY: bytes 16 + 64·pair .. + 64 lie inside the block.
        let q = unsafe { _mm512_loadu_si512(block.add(16 + 64 * pair).cast()) };
        [
            _mm512_and_si512(q, low),
            _mm512_and_si512(_mm512_srli_epi16(q, 4), low),
        ]
    }

    /// The constant lanes of the AVX-512 Q6_K kernels.
    struct Q6kLanes {
        /// Per 16-bit lane: the shift of the high-bit pair of values 0–31 | 32–63 (0 | 2).
        shift_a: __m512i,
        /// The same for values 64–95 | 96–127 (4 | 6).
        shift_b: __m512i,
        /// Four lanes per sub-block of 16: sub-blocks 4i..4i + 4 of the super-block.
        order: [__m512i; 4],
    }

    impl Q6kLanes {
        #[inline]
        #[target_feature(enable = "avx512f,avx2")]
        fn new() -> Self {
            let split = |a: i16, b: i16| {
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_set1_epi16(a)),
                    _mm256_set1_epi16(b),
                )
            };
            let quad = |i: i32| {
                let b = 4 * i;
                let (c, d, e) = (b + 1, b + 2, b + 3);
                _mm512_setr_epi32(b, b, b, b, c, c, c, c, d, d, d, d, e, e, e, e)
            };
            Q6kLanes {
                shift_a: split(0, 2),
                shift_b: split(4, 6),
                order: [quad(0), quad(1), quad(2), quad(3)],
            }
        }
    }

    /// Half `half` of a Q6_K super-block as 6-bit values: values 0–63 and 64–127 of the half,
    /// each from its low (or high) nibble and its two high bits.
    ///
    /// # Safety
    /// `block` must be readable for [`Q6K_BYTES`] bytes and `half` < 2; the CPU must support
    /// AVX-512 F and BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx2")]
    unsafe fn q6_k_values_avx512(block: *const u8, half: usize, lanes: &Q6kLanes) -> [__m512i; 2] {
        let low = _mm512_set1_epi8(0x0F);
        let two_bits = _mm512_set1_epi8(3);
        // SAFETY: bytes 64·half .. + 64 and 128 + 32·half .. + 32 lie inside the block.
        let (l, h) = unsafe {
            (
                _mm512_loadu_si512(block.add(64 * half).cast()),
                _mm256_loadu_si256(block.add(128 + 32 * half).cast()),
            )
        };
        let hh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), h);
        let high = |shift: __m512i| {
            let bits = _mm512_and_si512(_mm512_srlv_epi16(hh, shift), two_bits);
            _mm512_slli_epi16(bits, 4)
        };
        [
            _mm512_or_si512(_mm512_and_si512(l, low), high(lanes.shift_a)),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(l, 4), low),
                high(lanes.shift_b),
            ),
        ]
    }

    /// [`q4_k_rows`] for one activation row on AVX-512 VNNI: two 32-byte chunks of nibbles per 512-bit step, against
    /// the activations in `q4k_order`, `vpdpbusd` into per-sub-block lanes, and the sub-block
    /// scales applied as f32 lanes (`d·sc·dx`), so no 16-bit stage and no `madd`.
    ///
    /// # Safety
    /// The CPU must support the AVX-512 tier; otherwise as [`q4_k_rows`], and `rows` must hold
    /// `q4k_order`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q4_k_group_avx512<const G: usize>(
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r: usize,
    ) -> [f32; G] {
        let supers = rows.k / SUPER;
        debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q4K_BYTES);
        debug_assert!(rows.q4k_order.len() >= (r + 1) * rows.k);
        let zero = _mm512_setzero_si512();
        let order = q4_k_scale_orders();
        let mut acc = [_mm512_setzero_ps(); G];
        let mut mins = [0f32; G];
        let w = weights.as_ptr();
        for s in 0..supers {
            let at = r * supers + s;
            // SAFETY: as in q4_k_rows; `q4k_order` has the same layout size as `q`.
            unsafe {
                let x = rows.q4k_order.as_ptr().add(at * SUPER);
                let dx = *rows.d.get_unchecked(at);
                let sums32 = _mm_loadu_si128(rows.sums32.as_ptr().add(at * 8).cast());
                for (g, acc) in acc.iter_mut().enumerate() {
                    let block = w.add(g * row_bytes + s * Q4K_BYTES);
                    prefetch_super_block(block.wrapping_add(G * row_bytes));
                    let d = f16_at(block);
                    let dmin = f16_at(block.add(2));
                    let (scales, mins_of) =
                        q4_k_scales_mins(block.add(4).cast::<[u8; 12]>().read_unaligned());
                    let eight = _mm256_cvtepu8_epi32(_mm_set_epi64x(0, i64::from_le_bytes(scales)));
                    let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(eight), _mm256_set1_ps(d * dx));
                    let wide = _mm512_castps256_ps512(scaled);
                    for pair in 0..2 {
                        let [lo, hi] = q4_k_nibbles_avx512(block, pair);
                        let xlo = _mm512_loadu_si512(x.add(128 * pair).cast());
                        let xhi = _mm512_loadu_si512(x.add(128 * pair + 64).cast());
                        let dlo = _mm512_dpbusd_epi32(zero, lo, xlo);
                        let dhi = _mm512_dpbusd_epi32(zero, hi, xhi);
                        let slo = _mm512_permutexvar_ps(order[2 * pair], wide);
                        let shi = _mm512_permutexvar_ps(order[2 * pair + 1], wide);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dlo), slo, *acc);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dhi), shi, *acc);
                    }
                    mins[g] += dmin * dx * q4_k_min_dot(mins_of, sums32) as f32;
                }
            }
        }
        std::array::from_fn(|g| _mm512_reduce_add_ps(acc[g]) - mins[g])
    }

    /// [`q6_k_rows`] for one activation row on AVX-512 VNNI: each half super-block's 64 bytes of low nibbles are one
    /// load whose low and high nibbles, with the high bits shifted per 256-bit half, give values
    /// 0–63 and 64–127 in order; `vpdpbusd` puts each sub-block of 16 into four lanes, scaled as
    /// f32 (`d·sc·dx`).
    ///
    /// # Safety
    /// The CPU must support the AVX-512 tier; otherwise as [`q6_k_rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q6_k_group_avx512<const G: usize>(
        weights: &[u8],
        row_bytes: usize,
        rows: &SuperRows,
        r: usize,
    ) -> [f32; G] {
        let supers = rows.k / SUPER;
        debug_assert!(weights.len() >= G * row_bytes && row_bytes == supers * Q6K_BYTES);
        debug_assert!(rows.q.len() >= (r + 1) * rows.k);
        let zero = _mm512_setzero_si512();
        let lanes = Q6kLanes::new();
        let mut acc = [_mm512_setzero_ps(); G];
        let mut offsets = [0f32; G];
        let w = weights.as_ptr();
        for s in 0..supers {
            let at = r * supers + s;
            // SAFETY: as in q6_k_rows.
            unsafe {
                let x = rows.q.as_ptr().add(at * SUPER);
                let dx = *rows.d.get_unchecked(at);
                let sums16 = _mm256_loadu_si256(rows.sums16.as_ptr().add(at * 16).cast());
                for (g, acc) in acc.iter_mut().enumerate() {
                    let block = w.add(g * row_bytes + s * Q6K_BYTES);
                    prefetch_super_block(block.wrapping_add(G * row_bytes));
                    let scale_bytes = _mm_loadu_si128(block.add(192).cast());
                    let d = f16_at(block.add(208));
                    let dd = d * dx;
                    // The −32 of every value: 32 · Σ_j sc_j · Σ x over sub-block j.
                    let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scale_bytes), sums16);
                    let offset = hsum_i32(offset);
                    offsets[g] += dd * (32 * offset) as f32;
                    let scales = _mm512_mul_ps(
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scale_bytes)),
                        _mm512_set1_ps(dd),
                    );
                    for half in 0..2 {
                        let [first, second] = q6_k_values_avx512(block, half, &lanes);
                        let x0 = _mm512_loadu_si512(x.add(128 * half).cast());
                        let x1 = _mm512_loadu_si512(x.add(128 * half + 64).cast());
                        let d0 = _mm512_dpbusd_epi32(zero, first, x0);
                        let d1 = _mm512_dpbusd_epi32(zero, second, x1);
                        let s0 = _mm512_permutexvar_ps(lanes.order[2 * half], scales);
                        let s1 = _mm512_permutexvar_ps(lanes.order[2 * half + 1], scales);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), s0, *acc);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), s1, *acc);
                    }
                }
            }
        }
        std::array::from_fn(|g| _mm512_reduce_add_ps(acc[g]) - offsets[g])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// At every tier, against the exact dot products of candle's dequantized weights with the
    /// kernel's own quantized activations (f64), and within the activation quantization's error
    /// of the f32 product; odd row counts leave partial groups and tasks.
    #[test]
    fn k_quant_gemv_matches_dequantized_weights() {
        let (n, k) = (70, 768);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for m in [1, 3] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let rows = SuperRows::new(&xs, k, false);
            for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let bytes = q.data().unwrap();
                let dense = q.dequantize(&Device::Cpu).unwrap();
                let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let mut exact = vec![0f64; m * n];
                for r in 0..m {
                    for j in 0..n {
                        exact[r * n + j] = (0..k)
                            .map(|i| {
                                let xq = f64::from(rows.q[r * k + i])
                                    * f64::from(rows.d[(r * k + i) / SUPER]);
                                f64::from(dense[j * k + i]) * xq
                            })
                            .sum();
                    }
                }
                let want = x
                    .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                    .unwrap();
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for tier in Tier::ALL
                    .into_iter()
                    .filter(|t| t.is_supported() && *t >= Tier::Avx2)
                {
                    let mut got = vec![0f32; m * n];
                    kquant_matmul_at(tier, dtype, &bytes, n, k, &xs, &mut got).unwrap();
                    for i in 0..m * n {
                        assert!(
                            (f64::from(got[i]) - exact[i]).abs() <= 1e-5 * f64::from(scale),
                            "{dtype:?} at {tier}, m={m} [{i}]: {} vs exact {}",
                            got[i],
                            exact[i]
                        );
                        assert!(
                            (got[i] - want[i]).abs() <= 0.02 * scale,
                            "{dtype:?} at {tier}, m={m} [{i}]: {} vs f32 {}",
                            got[i],
                            want[i]
                        );
                    }
                }
                // The portable tier is candle's own block product.
                let mut got = vec![0f32; m * n];
                kquant_matmul_at(Tier::Portable, dtype, &bytes, n, k, &xs, &mut got).unwrap();
                for i in 0..m * n {
                    assert!(
                        (got[i] - want[i]).abs() <= 0.02 * scale,
                        "{dtype:?} portable [{i}]"
                    );
                }
            }
        }
    }

    /// A row of a multi-row call gets bit for bit what it gets alone, at every tier and for
    /// batches that fill one and two passes of four activation rows (a batched decode step must
    /// give each sequence its own tokens); 70 weight rows leave a partial group.
    #[test]
    fn each_row_of_a_batch_equals_that_row_alone() {
        let (n, k) = (70, 512);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (6, k), &Device::Cpu).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let bytes = QTensor::quantize(&w, dtype)
                .unwrap()
                .data()
                .unwrap()
                .into_owned();
            for tier in Tier::ALL
                .into_iter()
                .filter(|t| t.is_supported() && *t >= Tier::Avx2)
            {
                for m in 1..=6 {
                    let mut batch = vec![0f32; m * n];
                    kquant_matmul_at(tier, dtype, &bytes, n, k, &xs[..m * k], &mut batch).unwrap();
                    for r in 0..m {
                        let mut alone = vec![0f32; n];
                        let row = &xs[r * k..(r + 1) * k];
                        kquant_matmul_at(tier, dtype, &bytes, n, k, row, &mut alone).unwrap();
                        assert_eq!(
                            &batch[r * n..(r + 1) * n],
                            &alone[..],
                            "{dtype:?} at {tier}, rows {m}, row {r}"
                        );
                    }
                }
            }
        }
    }

    /// Types and shapes the kernel refuses are errors naming the problem.
    #[test]
    fn bad_input_is_an_error() {
        let mut y = vec![0f32; 1];
        let err = kquant_matmul(GgmlDType::Q8_0, &[0; 34], 1, 32, &[0.0; 32], &mut y).unwrap_err();
        assert!(format!("{err:?}").contains("only Q4_K and Q6_K"), "{err:?}");
        let err =
            kquant_matmul(GgmlDType::Q4K, &[0; 144], 1, 128, &[0.0; 128], &mut y).unwrap_err();
        assert!(format!("{err:?}").contains("128 columns"), "{err:?}");
        let err =
            kquant_matmul(GgmlDType::Q4K, &[0; 100], 1, 256, &[0.0; 256], &mut y).unwrap_err();
        assert!(format!("{err:?}").contains("does not fit"), "{err:?}");
    }
}
