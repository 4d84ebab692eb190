//! Matrix–vector products for decode, where candle's general matmul is slow on one row (and very
//! slow in bf16). `y = W x` for a row-major `[out, in]` weight in f32, bf16 or f16 and f32
//! activations: every weight byte is streamed once, rows are split over the hot thread pool (the
//! one the GDN backend runs on, see `hybrid_pool`), and the inner loop runs at the SIMD tier
//! `hybrid_simd` chose for this CPU — AVX-512 (16 lanes), AVX2+FMA (8 lanes; bf16 is widened
//! to f32 in registers) or portable Rust.

use half::{bf16, f16};
use hybrid_simd::Tier;

use crate::parallel::by_weight_rows;
use crate::Result;

/// Output rows per piece of work: large enough to amortise the claim, small enough to balance.
const ROWS_PER_TASK: usize = 64;

/// How many rows ahead of the ones being read the kernels prefetch. Several weight rows are read
/// side by side (up to 4 here, 8 in the batched Q8_0 kernels), each a short stream of 1–4 KiB, and the
/// hardware prefetchers stop at every 4 KiB page: measured with `benches/matvec.rs` on a 2-core
/// Intel Xeon (AVX-512), prefetching two passes ahead took bf16 from ~14.5 to ~19–23 GiB/s and
/// Q8_0 from ~12 to ~16 GiB/s (one or four passes ahead: no better).
pub(crate) const PREFETCH_ROWS: usize = 8;

/// Asks for the two cache lines at `p` (a hint only: it never faults, whatever `p` is).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_two_lines<T>(p: *const T) {
    let p = p.cast::<i8>();
    prefetch_line(p);
    prefetch_line(p.wrapping_add(64));
}

/// Asks for the cache line at `p` (a hint only: it never faults, whatever `p` is).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_line<T>(p: *const T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: prefetch is a hint and never faults; SSE is part of x86-64.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
}

/// Weight storage a GEMV can stream.
#[derive(Debug, Clone, Copy)]
pub enum WeightRows<'a> {
    /// f32 weights, `[out, in]` row-major.
    F32(&'a [f32]),
    /// bf16 weights, `[out, in]` row-major.
    Bf16(&'a [bf16]),
    /// f16 weights, `[out, in]` row-major (GGUF files store some tensors so).
    F16(&'a [f16]),
}

/// `y[r][j] = Σ_i W[j][i] · x[r][i]` for each of the `rows` activation rows in `x` (`rows × in`),
/// writing `y` (`rows × out`). Fails only if a worker thread panicked.
pub fn gemv(weight: WeightRows<'_>, in_dim: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    gemv_at(hybrid_simd::tier(), weight, in_dim, x, y)
}

/// [`gemv`] at a given SIMD tier (lowered to what this CPU supports), for tests and benchmarks
/// that compare the paths.
pub fn gemv_at(
    tier: Tier,
    weight: WeightRows<'_>,
    in_dim: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let rows = x.len() / in_dim.max(1);
    let out_dim = y.len() / rows.max(1);
    let tier = tier.min(Tier::detect());
    let (avx2, avx512) = (tier >= Tier::Avx2, tier >= Tier::Avx512);
    // bf16 on AVX2 widens the even and the odd elements of 16 weights apart
    // (`WeightElement::load_half`); x is split to match, once here.
    let split = match weight {
        WeightRows::Bf16(_) if avx2 && !avx512 => {
            let mut split = x.to_vec();
            split_even_odd(&mut split, in_dim);
            split
        }
        _ => Vec::new(),
    };
    // Each piece of weight rows serves every activation row, so the weights are read once per
    // call however many rows there are.
    by_weight_rows("GEMV", y, rows, out_dim, ROWS_PER_TASK, &|first, out| {
        let count = out.len() / rows;
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            match weight {
                WeightRows::F32(w) => dot_rows_batch(w, in_dim, first, count, x, out),
                WeightRows::Bf16(w) => dot_rows_batch(w, in_dim, first, count, x, out),
                WeightRows::F16(w) => dot_rows_batch(w, in_dim, first, count, x, out),
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is true only when the CPU supports the AVX2 tier (AVX2, FMA, F16C).
            unsafe {
                match weight {
                    WeightRows::F32(w) => avx2_rows_batch(w, in_dim, first, count, x, out),
                    WeightRows::Bf16(w) => avx2_rows_batch(w, in_dim, first, count, &split, out),
                    WeightRows::F16(w) => avx2_rows_batch(w, in_dim, first, count, x, out),
                }
            }
            return;
        }
        for r in 0..rows {
            let xr = &x[r * in_dim..(r + 1) * in_dim];
            let mut put = |local: usize, v: f32| out[r * count + local] = v;
            match weight {
                WeightRows::F32(w) => dot_rows(w, in_dim, first, count, xr, &mut put),
                WeightRows::F16(w) => dot_rows(w, in_dim, first, count, xr, &mut put),
                WeightRows::Bf16(w) => dot_rows(w, in_dim, first, count, xr, &mut put),
            }
        }
    })
}

/// Each `in_dim` row of `x` rearranged per 16 values into the 8 even then the 8 odd ones (a
/// shorter tail stays as it is), the order [`WeightElement::load_half`] widens bf16 weights in.
pub(crate) fn split_even_odd(x: &mut [f32], in_dim: usize) {
    for row in x.chunks_exact_mut(in_dim.max(1)) {
        for block in row.chunks_exact_mut(16) {
            let original: [f32; 16] = block.try_into().expect("16 values");
            for i in 0..8 {
                block[i] = original[2 * i];
                block[8 + i] = original[2 * i + 1];
            }
        }
    }
}

/// Weight rows `first..first + count` of `w` (`in_dim` values each) dotted with `x`, each result
/// handed to `put(local, value)`: the portable tier (AVX2 takes [`avx2_rows_batch`], AVX-512
/// [`dot_rows_batch`]).
fn dot_rows<W: WeightElement>(
    w: &[W],
    in_dim: usize,
    first: usize,
    count: usize,
    x: &[f32],
    put: &mut dyn FnMut(usize, f32),
) {
    for local in 0..count {
        put(
            local,
            dot(&w[(first + local) * in_dim..][..in_dim], x, false),
        );
    }
}

/// Weight rows `first..first + count` of `w` against every row of `x` (`[rows][in]`) on the
/// AVX2 tier, into `out` laid out `[rows][count]`: weight rows in register tiles — four of them
/// for one or two activation rows, two for more — each against the activation rows four at a
/// time while the tile's weights are in L1, so a widened weight vector serves every activation
/// row of the tile and up to eight accumulators keep both FMA pipes busy ([`x86::dot_tile`]).
/// (A batch of eight as two passes over a task's 64 weight rows, the second from L2, left the
/// memory idle during that pass: `benches/matvec.rs` `bf16 x8 rows` took 68–73 ms against
/// 59–65 ms this way, three alternating runs on the 2-core AMD EPYC, AVX2.)
///
/// `x` is as the kernel reads it: for bf16 weights rearranged by [`split_even_odd`]
/// ([`WeightElement::load_half`]). A pair's arithmetic does not depend on the tile, so a row of
/// a batch gets bit for bit what it gets alone. Measured on the 2-core AMD EPYC
/// (AVX2): the 0.8B shape's batch of eight ran 2.5× one sequence when each activation row made
/// its own pass over the weights.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn avx2_rows_batch<W: WeightElement>(
    w: &[W],
    in_dim: usize,
    first: usize,
    count: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let rows = x.len() / in_dim.max(1);
    // Four weight rows for one or two activation rows (eight rows were no faster for bf16 and
    // 20 % slower for f32, whose rows are a page each), two for three or more.
    let tile_rows = if rows <= 2 { 4 } else { 2 };
    let mut local = 0;
    while local < count {
        let g = if local + tile_rows <= count {
            tile_rows
        } else {
            1
        };
        // Every group of four activation rows against these weight rows while they are in L1:
        // the weights stream from memory once, without a pass that leaves the memory idle.
        let mut r = 0;
        while r < rows {
            let take = (rows - r).min(4);
            let tile = Tile {
                w,
                x,
                in_dim,
                weight_row: first + local,
                x_row: r,
            };
            let mut put = |gi: usize, k: usize, v: f32| out[(r + k) * count + local + gi] = v;
            // SAFETY: the caller guarantees the AVX2 tier.
            unsafe {
                match (g, take) {
                    (4, 1) => tile.run_avx2::<4, 1>(&mut put),
                    (4, 2) => tile.run_avx2::<4, 2>(&mut put),
                    (2, 3) => tile.run_avx2::<2, 3>(&mut put),
                    (2, 4) => tile.run_avx2::<2, 4>(&mut put),
                    (2, 1) => tile.run_avx2::<2, 1>(&mut put),
                    (2, 2) => tile.run_avx2::<2, 2>(&mut put),
                    (_, 1) => tile.run_avx2::<1, 1>(&mut put),
                    (_, 2) => tile.run_avx2::<1, 2>(&mut put),
                    (_, 3) => tile.run_avx2::<1, 3>(&mut put),
                    _ => tile.run_avx2::<1, 4>(&mut put),
                }
            }
            r += take;
        }
        local += g;
    }
}

/// Weight rows `first..first + count` of `w` against every row of `x` (`[rows][in]`) on the
/// AVX-512 tier, into `out` laid out `[rows][count]`, in one pass over the weights: up to four
/// activation rows against four weight rows at a time, five to eight against two
/// ([`crate::avx512::dot_tile`], 16 accumulators either way), each weight vector widened once
/// for all of them; the weight rows past the last four by `dot`. A pair's arithmetic does not
/// depend on the tile, so a row of a batch gets bit for bit what it gets alone.
#[cfg(target_arch = "x86_64")]
fn dot_rows_batch<W: WeightElement>(
    w: &[W],
    in_dim: usize,
    first: usize,
    count: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let rows = x.len() / in_dim.max(1);
    let grouped = count / 4 * 4;
    let mut r = 0;
    while r < rows {
        let take = (rows - r).min(8);
        let g = if take <= 4 { 4 } else { 2 };
        for local in (0..grouped).step_by(g) {
            let tile = Tile {
                w,
                x,
                in_dim,
                weight_row: first + local,
                x_row: r,
            };
            let mut put = |gi: usize, k: usize, v: f32| out[(r + k) * count + local + gi] = v;
            match take {
                1 => tile.run::<4, 1>(&mut put),
                2 => tile.run::<4, 2>(&mut put),
                3 => tile.run::<4, 3>(&mut put),
                4 => tile.run::<4, 4>(&mut put),
                5 => tile.run::<2, 5>(&mut put),
                6 => tile.run::<2, 6>(&mut put),
                7 => tile.run::<2, 7>(&mut put),
                _ => tile.run::<2, 8>(&mut put),
            }
        }
        r += take;
    }
    for local in grouped..count {
        let row = &w[(first + local) * in_dim..(first + local + 1) * in_dim];
        for r in 0..rows {
            out[r * count + local] = dot(row, &x[r * in_dim..(r + 1) * in_dim], true);
        }
    }
}

/// One register-tile call of [`dot_rows_batch`] ([`crate::avx512::dot_tile`]) or
/// [`avx2_rows_batch`] ([`x86::dot_tile`]): the weight and activation rows it starts at.
#[cfg(target_arch = "x86_64")]
struct Tile<'a, W> {
    w: &'a [W],
    x: &'a [f32],
    in_dim: usize,
    weight_row: usize,
    x_row: usize,
}

#[cfg(target_arch = "x86_64")]
impl<W: WeightElement> Tile<'_, W> {
    /// Weight rows `weight_row..+G` against activation rows `x_row..+R`, each sum handed to
    /// `put(weight row offset, activation row offset, value)`. Must run on the AVX-512 tier.
    fn run<const G: usize, const R: usize>(&self, put: &mut dyn FnMut(usize, usize, f32)) {
        let (w, x) = self.rows::<G, R>();
        // SAFETY: `dot_rows_batch` runs on the AVX-512 tier only, which the CPU supports.
        Self::emit(unsafe { crate::avx512::dot_tile(w, x) }, put);
    }

    /// [`Tile::run`] on the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn run_avx2<const G: usize, const R: usize>(
        &self,
        put: &mut dyn FnMut(usize, usize, f32),
    ) {
        let (w, x) = self.rows::<G, R>();
        // SAFETY: the caller guarantees the AVX2 tier.
        Self::emit(unsafe { x86::dot_tile(w, x) }, put);
    }

    /// The tile's `G` weight rows and `R` activation rows.
    fn rows<const G: usize, const R: usize>(&self) -> ([&[W]; G], [&[f32]; R]) {
        let d = self.in_dim;
        let w = std::array::from_fn(|g| {
            &self.w[(self.weight_row + g) * d..(self.weight_row + g + 1) * d]
        });
        let x = std::array::from_fn(|k| &self.x[(self.x_row + k) * d..(self.x_row + k + 1) * d]);
        (w, x)
    }

    /// Hands every sum of a tile to `put(weight row offset, activation row offset, value)`.
    fn emit<const G: usize, const R: usize>(
        sums: [[f32; R]; G],
        put: &mut dyn FnMut(usize, usize, f32),
    ) {
        for (g, row) in sums.iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                put(g, k, v);
            }
        }
    }
}

/// The kernel path of this process, e.g. `AVX-512 VNNI (other quants: candle AVX2)` — for
/// printing next to the weight format.
///
/// Our kernels run at [`hybrid_simd::tier`] (`HYBRID_SIMD=avx2` forces the AVX2 path on an
/// AVX-512 machine): dense GEMV/GEMM, Q8_0, Q4_K and Q6_K, and Q4_0 prefill. The other quantized
/// types (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, and Q4_0 decode) run candle's block dot products,
/// which pick AVX2 or portable code by themselves.
pub fn kernel_paths() -> String {
    let blocks = if cfg!(target_arch = "x86_64") && hybrid_simd::Tier::Avx2.is_supported() {
        "AVX2"
    } else if cfg!(target_arch = "aarch64") {
        "NEON"
    } else {
        "portable"
    };
    let (tier, quantized) = (hybrid_simd::tier(), hybrid_simd::quantized_gemv_tier());
    if quantized == tier {
        format!("{tier} (other quants: candle {blocks})")
    } else {
        format!("{tier}, quantized decode {quantized} (other quants: candle {blocks})")
    }
}

/// A weight element the GEMV can widen to f32.
pub(crate) trait WeightElement: Copy {
    /// True when [`WeightElement::load_half`] widens even and odd elements apart (bf16), so
    /// that activations must be rearranged by [`split_even_odd`] first.
    const INTERLEAVED_HALVES: bool = false;

    /// The value as f32.
    fn widen(self) -> f32;

    /// Half `half` (0 or 1) of the 16 consecutive elements at `p`, widened to 8 f32 lanes:
    /// elements `8·half..8·half + 8`, except bf16: its even (0) or odd (1) elements, so
    /// activations multiplied with bf16 are rearranged by [`split_even_odd`] to match.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and 16 elements must be readable at `p`.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_half(p: *const Self, half: usize) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees 16 readable elements at `p`.
        unsafe { Self::load8(p.add(8 * half)) }
    }

    /// Eight consecutive elements at `p`, widened to f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and 8 elements must be readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen consecutive elements at `p`, widened to f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, and 16 elements must be readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl WeightElement for f32 {
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees 8 readable f32 at `p`.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees 16 readable f32 at `p`.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl WeightElement for bf16 {
    const INTERLEAVED_HALVES: bool = true;

    fn widen(self) -> f32 {
        self.to_f32()
    }

    /// 16 bf16 read as 8 u32 lanes: the low halves (even elements) become f32 by a shift, the
    /// high halves (odd elements) by a mask — one instruction each instead of two shuffles and
    /// two shifts.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_half(p: *const Self, half: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable bf16 (32 bytes) at `p`.
        let v = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
        _mm256_castsi256_ps(if half == 0 {
            _mm256_slli_epi32::<16>(v)
        } else {
            _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32))
        })
    }

    /// bf16 is the top half of an f32: zero-extend to 32 bits and shift into place.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 8 readable bf16 (16 bytes) at `p`.
        let raw = unsafe { _mm_loadu_si128(p.cast::<__m128i>()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable bf16 (32 bytes) at `p`.
        let raw = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    }
}

impl WeightElement for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 8 readable f16 (16 bytes) at `p`.
        let raw = unsafe { _mm_loadu_si128(p.cast::<__m128i>()) };
        _mm256_cvtph_ps(raw)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable f16 (32 bytes) at `p`.
        let raw = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
        _mm512_cvtph_ps(raw)
    }
}

/// `Σ w[i]·x[i]` with f32 accumulation.
#[inline]
pub(crate) fn dot<W: WeightElement>(w: &[W], x: &[f32], avx2: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU supports AVX2, FMA and F16C.
        return unsafe { x86::dot(w, x) };
    }
    let _ = avx2;
    // Eight partial sums so the loop vectorises.
    let mut partial = [0.0f32; 8];
    let chunks = w.len() / 8 * 8;
    for (cw, cx) in w[..chunks].chunks_exact(8).zip(x[..chunks].chunks_exact(8)) {
        for lane in 0..8 {
            partial[lane] += cw[lane].widen() * cx[lane];
        }
    }
    let tail: f32 = w[chunks..]
        .iter()
        .zip(&x[chunks..])
        .map(|(a, b)| a.widen() * b)
        .sum();
    partial.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::WeightElement;

    /// The sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }

    /// Two independent accumulators of eight lanes hide the FMA latency.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<W: WeightElement>(w: &[W], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 ≤ n ≤ both lengths.
            unsafe {
                let (wp, xp) = (w.as_ptr().add(i), x.as_ptr().add(i));
                a0 = _mm256_fmadd_ps(W::load8(wp), _mm256_loadu_ps(xp), a0);
                a1 = _mm256_fmadd_ps(W::load8(wp.add(8)), _mm256_loadu_ps(xp.add(8)), a1);
            }
            i += 16;
        }
        let mut sum = hsum(_mm256_add_ps(a0, a1));
        for k in i..n {
            sum += w[k].widen() * x[k];
        }
        sum
    }

    /// Weight rows `w` against activation rows `x` (each as [`super::avx2_rows_batch`]
    /// describes): `G × R` dot products, one 8-lane accumulator each. Per 16 columns every
    /// weight row is widened once into two vectors ([`WeightElement::load_half`]) and each
    /// activation half is loaded once for all `G` rows. A pair's sum is the same whatever `G` and
    /// `R` are: accumulate both halves of every 16 columns in order, add the lanes, then the
    /// scalar tail. The rows [`super::PREFETCH_ROWS`] on are prefetched as these are read.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
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
        let mut acc = [[_mm256_setzero_ps(); R]; G];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 ≤ n ≤ every length.
            unsafe {
                for half in 0..2 {
                    let mut wv = [_mm256_setzero_ps(); G];
                    for g in 0..G {
                        let wp = w[g].as_ptr().add(i);
                        if half == 0 && i % 32 == 0 {
                            super::prefetch_two_lines(wp.wrapping_add(super::PREFETCH_ROWS * n));
                        }
                        wv[g] = W::load_half(wp, half);
                    }
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(x[r].as_ptr().add(i + 8 * half));
                        for g in 0..G {
                            acc[g][r] = _mm256_fmadd_ps(wv[g], xv, acc[g][r]);
                        }
                    }
                }
            }
            i += 16;
        }
        let mut sums = [[0f32; R]; G];
        for g in 0..G {
            for r in 0..R {
                sums[g][r] = hsum(acc[g][r]);
                for k in i..n {
                    sums[g][r] += w[g][k].widen() * x[r][k];
                }
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], x: &[f32], in_dim: usize) -> Vec<f32> {
        let rows = x.len() / in_dim;
        let out = w.len() / in_dim;
        let mut y = vec![0.0; rows * out];
        for r in 0..rows {
            for j in 0..out {
                y[r * out + j] = (0..in_dim)
                    .map(|i| w[j * in_dim + i] as f64 * x[r * in_dim + i] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn f32_bf16_and_f16_match_a_f64_reference_at_odd_sizes() {
        // in_dim 48 and 1040 reach the bf16 kernel's single-16 step, 100 and 33 its scalar tail;
        // out 7, 130, 257 leave 1–3 rows after the four-row steps.
        for (out, in_dim, rows) in [
            (1, 1, 1),
            (7, 33, 1),
            (9, 48, 1),
            (130, 100, 3),
            (257, 1024, 2),
            (66, 1040, 1),
        ] {
            let w: Vec<f32> = (0..out * in_dim)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                .collect();
            let x: Vec<f32> = (0..rows * in_dim)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 16.0)
                .collect();
            for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
                check_every_format(tier, &w, &x, in_dim, rows, out);
            }
        }
    }

    /// f32, bf16 and f16 weights (exact in each) at one tier against the f64 reference.
    fn check_every_format(
        tier: Tier,
        w: &[f32],
        x: &[f32],
        in_dim: usize,
        rows: usize,
        out: usize,
    ) {
        // These weights are exact in bf16 and f16 (multiples of 1/64 with ≤ 7 significant bits).
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let want = reference(w, x, in_dim);
        let mut y = vec![0.0; rows * out];
        for (name, weights) in [
            ("f32", WeightRows::F32(w)),
            ("bf16", WeightRows::Bf16(&wb)),
            ("f16", WeightRows::F16(&wh)),
        ] {
            gemv_at(tier, weights, in_dim, x, &mut y).unwrap();
            for (a, b) in y.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{tier} {name} {out}x{in_dim}: {a} vs {b}"
                );
            }
        }
    }

    /// A row of a multi-row call gets bit for bit what it gets alone at every tier (a batched
    /// decode step must give each sequence its own tokens), for every batch size up to the
    /// GEMV's limit and output counts that leave rows after the four-row steps.
    #[test]
    fn each_row_of_a_batch_equals_that_row_alone() {
        let (out, in_dim) = (70, 1040);
        let w: Vec<f32> = (0..out * in_dim)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 997.0)
            .collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        for rows in 1..=8 {
            let x: Vec<f32> = (0..rows * in_dim)
                .map(|i| ((i * 104_729 % 4001) as f32 - 2000.0) / 1999.0)
                .collect();
            for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
                for weights in [
                    WeightRows::F32(&w),
                    WeightRows::Bf16(&wb),
                    WeightRows::F16(&wh),
                ] {
                    let mut batch = vec![0f32; rows * out];
                    gemv_at(tier, weights, in_dim, &x, &mut batch).unwrap();
                    for r in 0..rows {
                        let mut alone = vec![0f32; out];
                        gemv_at(
                            tier,
                            weights,
                            in_dim,
                            &x[r * in_dim..(r + 1) * in_dim],
                            &mut alone,
                        )
                        .unwrap();
                        assert_eq!(
                            &batch[r * out..(r + 1) * out],
                            &alone[..],
                            "{tier} rows {rows} row {r}"
                        );
                    }
                }
            }
        }
    }
}
