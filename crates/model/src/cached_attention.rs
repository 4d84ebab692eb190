//! Causal grouped-query attention straight over a paged [`KvCache`]: softmax(q·kᵀ·scale)·v for
//! every query head of every new token, reading each cached key and value row once per token
//! and KV head (the query heads that share a KV head are served together).
//!
//! Replaces gathering the cache into one tensor for candle's matmul, which at long context
//! copied the whole cache per token and ran a GEMM with a handful of rows.

use std::cell::RefCell;

use half::{bf16, f16};
use hybrid_simd::Tier;

use crate::error::Result;
use crate::gemv::{dot, split_even_odd};
use crate::kv_cache::{KvCache, KvDtype, KvElement};
use crate::parallel::in_parallel;

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

thread_local! {
    /// Scores of one task (query heads of a group × visible positions) and each head's softmax
    /// denominator after them, reused across calls so decode does not allocate per token.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The portable path's page of 16-bit keys or values widened to f32 (once per page, not
    /// once per value and query head).
    static WIDENED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t][h] = Σ_s softmax_s(q[t][h]·k[s]·scale)·v[s]` over positions `s ≤ start + t`, for the
/// `T` tokens at positions `start..start + T` whose keys and values `cache` already holds.
/// `queries` and `out` are `[T][heads][head_dim]`. Runs on the hot pool, one task per (token,
/// KV head).
pub fn attend(
    queries: &[f32],
    cache: &KvCache,
    start: usize,
    shape: AttentionShape,
    out: &mut [f32],
) -> Result<()> {
    attend_at(hybrid_simd::tier(), queries, cache, start, shape, out)
}

/// [`attend`] at a given SIMD tier (lowered to what this CPU supports).
pub fn attend_at(
    tier: Tier,
    queries: &[f32],
    cache: &KvCache,
    start: usize,
    shape: AttentionShape,
    out: &mut [f32],
) -> Result<()> {
    match cache.dtype() {
        KvDtype::F32 => attend_in::<f32>(tier, queries, cache, start, shape, out),
        KvDtype::Bf16 => attend_in::<bf16>(tier, queries, cache, start, shape, out),
        KvDtype::F16 => attend_in::<f16>(tier, queries, cache, start, shape, out),
    }
}

/// [`attend_at`] over a cache storing `T`: every key and value row is widened to f32 as it is
/// read, so the arithmetic is the f32 one whatever the storage.
fn attend_in<T: KvElement>(
    tier: Tier,
    queries: &[f32],
    cache: &KvCache,
    start: usize,
    shape: AttentionShape,
    out: &mut [f32],
) -> Result<()> {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim: hd,
    } = shape;
    let ratio = heads / kv_heads;
    let group = ratio * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let avx2 = tier.min(Tier::detect()) >= Tier::Avx2;
    in_parallel("attention", out, group, &|piece, out| {
        let (t, g) = (piece / kv_heads, piece % kv_heads);
        let visible = start + t + 1;
        let q = &queries[piece * group..(piece + 1) * group];
        SCORES.with_borrow_mut(|scratch| {
            scratch.clear();
            scratch.resize(ratio * visible + ratio + group, 0.0);
            let (scores, rest) = scratch.split_at_mut(ratio * visible);
            let (totals, q_split) = rest.split_at_mut(ratio);
            // The AVX2 kernel widens bf16 keys 16 at a time, even and odd elements apart; the
            // queries are rearranged once to match.
            let q = if avx2 && T::INTERLEAVED_HALVES {
                q_split.copy_from_slice(q);
                split_even_odd(q_split, hd);
                &*q_split
            } else {
                q
            };
            // Scores, [ratio][visible]: each key row meets every query head of the group.
            let mut s0 = 0;
            for (keys, _) in cache.head_pages::<T>(g, visible) {
                page_scores(keys, q, shape, scale, &mut scores[s0..], visible, avx2);
                s0 += keys.len() / hd;
            }
            // Softmax per query head, kept unnormalised until the end.
            for (row, total) in scores.chunks_exact_mut(visible).zip(totals.iter_mut()) {
                *total = softmax_numerators(row, avx2);
            }
            // Weighted values: each value row is added into every query head of the group.
            out.fill(0.0);
            let mut s0 = 0;
            for (_, values) in cache.head_pages::<T>(g, visible) {
                page_values(values, &scores[s0..], visible, shape, out, avx2);
                s0 += values.len() / hd;
            }
            for (r, o) in out.chunks_exact_mut(hd).enumerate() {
                let inv = 1.0 / totals[r];
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
    })
}

/// `$kernel::<$element, R>(args…)` with `R` = `$count` (1 to 4): the kernels' head-block size is
/// a const generic, so that their accumulators are register arrays.
#[cfg(target_arch = "x86_64")]
macro_rules! with_head_count {
    ($count:expr, $($kernel:ident)::+, $element:ty, ($($arg:expr),*)) => {
        match $count {
            1 => $($kernel)::+::<$element, 1>($($arg),*),
            2 => $($kernel)::+::<$element, 2>($($arg),*),
            3 => $($kernel)::+::<$element, 3>($($arg),*),
            _ => $($kernel)::+::<$element, 4>($($arg),*),
        }
    };
}

/// `scores[r·stride + s] = q[r]·keys[s]·scale` for every row `s` of one page's `keys`
/// (`[rows][head_dim]`) and every query head `r` of the group (`q` is `[ratio][head_dim]`, as
/// the AVX2 kernel reads it when `avx2`).
fn page_scores<T: KvElement>(
    keys: &[T],
    q: &[f32],
    shape: AttentionShape,
    scale: f32,
    scores: &mut [f32],
    stride: usize,
    avx2: bool,
) {
    let hd = shape.head_dim;
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        for (first, count) in head_blocks(shape) {
            let q = &q[first * hd..(first + count) * hd];
            let scores = &mut scores[first * stride..];
            // SAFETY: `avx2` is true only when the CPU supports AVX2, FMA and F16C.
            unsafe { with_head_count!(count, x86::scores, T, (keys, hd, q, scale, scores, stride)) }
        }
        return;
    }
    WIDENED.with_borrow_mut(|scratch| {
        for (s, key) in T::as_f32(keys, scratch).chunks_exact(hd).enumerate() {
            for (r, q) in q.chunks_exact(hd).enumerate() {
                scores[r * stride + s] = dot(key, q, avx2) * scale;
            }
        }
    });
}

/// `out[r] += Σ_s weights[r·stride + s]·values[s]` over the rows of one page's `values`
/// (`[rows][head_dim]`), in row order, for every query head `r` of the group (`out` is
/// `[ratio][head_dim]`).
fn page_values<T: KvElement>(
    values: &[T],
    weights: &[f32],
    stride: usize,
    shape: AttentionShape,
    out: &mut [f32],
    avx2: bool,
) {
    let hd = shape.head_dim;
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        for (first, count) in head_blocks(shape) {
            let out = &mut out[first * hd..(first + count) * hd];
            let weights = &weights[first * stride..];
            // SAFETY: `avx2` is true only when the CPU supports AVX2, FMA and F16C.
            unsafe {
                with_head_count!(
                    count,
                    x86::weighted_sum,
                    T,
                    (values, hd, weights, stride, out)
                )
            }
        }
        return;
    }
    let _ = avx2;
    WIDENED.with_borrow_mut(|scratch| {
        for (s, value) in T::as_f32(values, scratch).chunks_exact(hd).enumerate() {
            for (r, out) in out.chunks_exact_mut(hd).enumerate() {
                let p = weights[r * stride + s];
                out.iter_mut().zip(value).for_each(|(y, x)| *y += p * x);
            }
        }
    });
}

/// `row[s] ← e^(row[s] − max(row))`, returning their sum: a softmax's numerators and
/// denominator.
fn softmax_numerators(row: &mut [f32], avx2: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU supports AVX2, FMA and F16C.
        return unsafe { x86::softmax_numerators(row) };
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

/// The group's query heads in blocks of up to four, `(first, count)`: four heads' sums fill
/// eight of AVX2's sixteen registers in both kernels.
#[cfg(target_arch = "x86_64")]
fn head_blocks(shape: AttentionShape) -> impl Iterator<Item = (usize, usize)> {
    let ratio = shape.heads / shape.kv_heads;
    (0..ratio)
        .step_by(4)
        .map(move |first| (first, (ratio - first).min(4)))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use hybrid_simd::exp::exp_avx2;

    use crate::gemv::x86::{dot_tile, hsum};
    use crate::gemv::{prefetch_line, WeightElement};

    /// [`super::softmax_numerators`], eight lanes at a time (the exponential is the vector
    /// one every kernel shares, [`exp_avx2`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn softmax_numerators(row: &mut [f32]) -> f32 {
        let (lanes, tail) = row.as_chunks_mut::<8>();
        let mut most = _mm256_set1_ps(f32::NEG_INFINITY);
        for chunk in lanes.iter() {
            // SAFETY: a chunk is 8 f32.
            most = _mm256_max_ps(most, unsafe { _mm256_loadu_ps(chunk.as_ptr()) });
        }
        let mut spread = [0f32; 8];
        // SAFETY: `spread` holds 8 f32.
        unsafe { _mm256_storeu_ps(spread.as_mut_ptr(), most) };
        let max = spread
            .iter()
            .chain(tail.iter())
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let (max_lanes, mut total) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        for chunk in lanes.iter_mut() {
            // SAFETY: a chunk is 8 f32.
            unsafe {
                let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), max_lanes));
                _mm256_storeu_ps(chunk.as_mut_ptr(), e);
                total = _mm256_add_ps(total, e);
            }
        }
        let mut sum = hsum(total);
        for v in tail.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        sum
    }

    /// Value rows per block of [`weighted_sum`]: 16 KiB of f32 rows of 256 values, half of L1.
    const BLOCK_ROWS: usize = 16;

    /// `scores[r·stride + s] = q[r]·keys[s]·scale` for the rows of `keys` (`[rows][hd]`) and the
    /// `R` query heads of `q` (`[R][hd]`): two key rows against the heads per [`dot_tile`], each
    /// key widened once for all of them.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<T: WeightElement, const R: usize>(
        keys: &[T],
        hd: usize,
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
        stride: usize,
    ) {
        let rows = keys.len() / hd;
        let q: [&[f32]; R] = std::array::from_fn(|r| &q[r * hd..(r + 1) * hd]);
        let mut put = |s: usize, sums: &[f32; R]| {
            for (r, sum) in sums.iter().enumerate() {
                scores[r * stride + s] = sum * scale;
            }
        };
        let mut s = 0;
        while s + 2 <= rows {
            let pair = [
                &keys[s * hd..(s + 1) * hd],
                &keys[(s + 1) * hd..(s + 2) * hd],
            ];
            // SAFETY: the caller guarantees the CPU features.
            let sums = unsafe { dot_tile::<T, 2, R>(pair, q) };
            put(s, &sums[0]);
            put(s + 1, &sums[1]);
            s += 2;
        }
        if s < rows {
            // SAFETY: as above.
            let sums = unsafe { dot_tile::<T, 1, R>([&keys[s * hd..(s + 1) * hd]], q) };
            put(s, &sums[0]);
        }
    }

    /// `out[r] += Σ_s weights[r·stride + s]·values[s]` for the rows of `values` (`[rows][hd]`)
    /// and the `R` heads of `out` (`[R][hd]`). Rows go in blocks of [`BLOCK_ROWS`] (at most 16
    /// KiB, read from memory once and then from L1) and each block 16 columns at a time: the
    /// `R × 16` sums stay in registers over the block's rows, so a value is widened once per head
    /// block and a sum goes through memory once per block, not per row.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum<T: WeightElement, const R: usize>(
        values: &[T],
        hd: usize,
        weights: &[f32],
        stride: usize,
        out: &mut [f32],
    ) {
        let rows = values.len() / hd;
        assert!(out.len() >= R * hd && weights.len() >= (R - 1) * stride + rows);
        let columns = hd / 16 * 16;
        for first in (0..rows).step_by(BLOCK_ROWS) {
            let block = first..(first + BLOCK_ROWS).min(rows);
            for c in (0..columns).step_by(16) {
                // SAFETY: c + 16 ≤ hd, so every load and store below is inside `values` (row
                // s < rows) or `out` (R·hd values); weight (r, s) is inside `weights`
                // (asserted above).
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); 2]; R];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let o = out.as_ptr().add(r * hd + c);
                        *acc = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))];
                    }
                    for s in block.clone() {
                        let v = values.as_ptr().add(s * hd + c);
                        // The next block's row, at these columns: a pass touches a new line of
                        // each row, so the lines arrive a block ahead instead of as misses.
                        prefetch_line(v.wrapping_add(BLOCK_ROWS * hd));
                        let (v0, v1) = (T::load8(v), T::load8(v.add(8)));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let p = _mm256_broadcast_ss(&*weights.as_ptr().add(r * stride + s));
                            acc[0] = _mm256_fmadd_ps(p, v0, acc[0]);
                            acc[1] = _mm256_fmadd_ps(p, v1, acc[1]);
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        let o = out.as_mut_ptr().add(r * hd + c);
                        _mm256_storeu_ps(o, acc[0]);
                        _mm256_storeu_ps(o.add(8), acc[1]);
                    }
                }
            }
        }
        for c in columns..hd {
            for r in 0..R {
                for s in 0..rows {
                    out[r * hd + c] = weights[r * stride + s]
                        .mul_add(values[s * hd + c].widen(), out[r * hd + c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::PAGE;

    /// Every tier and every cache type against softmax attention computed in f64 straight from
    /// the definition (over the keys and values as the cache type rounds them), for a chunk of
    /// tokens after a cache spanning several pages (so pages, the causal limit and the grouping
    /// of query heads are all exercised).
    #[test]
    fn matches_definition_at_every_tier() {
        for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::F16] {
            match dtype {
                KvDtype::F32 => check_against_definition::<f32>(dtype),
                KvDtype::Bf16 => check_against_definition::<bf16>(dtype),
                KvDtype::F16 => check_against_definition::<f16>(dtype),
            }
        }
    }

    fn check_against_definition<T: KvElement>(dtype: KvDtype) {
        let shape = AttentionShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 20,
        };
        let (heads, kv_heads, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
        let (start, tokens) = (PAGE + 9, 5);
        let total = start + tokens;
        let value = |i: usize, salt: usize| {
            (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5 - 1.0) * 0.9
        };
        let keys: Vec<f32> = (0..total * kv_heads * hd).map(|i| value(i, 1)).collect();
        let values: Vec<f32> = (0..total * kv_heads * hd).map(|i| value(i, 2)).collect();
        let queries: Vec<f32> = (0..tokens * heads * hd).map(|i| value(i, 3)).collect();
        let mut cache = KvCache::in_dtype(kv_heads, hd, dtype);
        let row = kv_heads * hd;
        cache
            .append(&keys[..start * row], &values[..start * row])
            .unwrap();
        cache
            .append(&keys[start * row..], &values[start * row..])
            .unwrap();
        // What the cache holds: each value rounded to its type.
        let stored = |v: &f32| f64::from(T::narrow(*v).widen());
        let keys: Vec<f64> = keys.iter().map(stored).collect();
        let values: Vec<f64> = values.iter().map(stored).collect();

        let mut want = vec![0f64; tokens * heads * hd];
        for t in 0..tokens {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let q = &queries[(t * heads + h) * hd..][..hd];
                let visible = start + t + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|s| {
                        let k = &keys[(s * kv_heads + g) * hd..][..hd];
                        let d: f64 = q.iter().zip(k).map(|(a, b)| f64::from(*a) * b).sum();
                        d / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for (s, w) in weights.iter().enumerate() {
                    let v = &values[(s * kv_heads + g) * hd..][..hd];
                    for d in 0..hd {
                        want[(t * heads + h) * hd + d] += w / sum * v[d];
                    }
                }
            }
        }
        for tier in Tier::ALL.into_iter().filter(|t| t.is_supported()) {
            let mut got = vec![0f32; tokens * heads * hd];
            attend_at(tier, &queries, &cache, start, shape, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5,
                    "{dtype} {tier:?} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}
