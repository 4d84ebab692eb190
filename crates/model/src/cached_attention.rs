//! Causal grouped-query attention straight over a paged [`KvCache`]: softmax(q·kᵀ·scale)·v for
//! every query head of every new token, reading each cached key and value row once per token
//! and KV head (the query heads that share a KV head are served together).
//!
//! Replaces gathering the cache into one tensor for candle's matmul, which at long context
//! copied the whole cache per token and ran a GEMM with a handful of rows.

use std::cell::RefCell;

use hybrid_simd::Tier;

use half::{bf16, f16};

use crate::error::Result;
use crate::gemv::{dot, WeightElement};
use crate::kv_cache::{KvCache, KvDtype, KvElement};
use crate::parallel::in_parallel;

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
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
}

/// `out[t][h] = Σ_s softmax_s(q[t][h]·k[s]·scale)·v[s]` over positions `s ≤ start + t`, for the
/// `T` tokens at positions `start..start + T` whose keys and values `cache` already holds.
/// `queries` and `out` are `[T][heads][head_dim]`. Runs on the hot pool, one task per (token,
/// KV head).
pub(crate) fn attend(
    queries: &[f32],
    cache: &KvCache,
    start: usize,
    shape: AttentionShape,
    out: &mut [f32],
) -> Result<()> {
    attend_at(hybrid_simd::tier(), queries, cache, start, shape, out)
}

/// [`attend`] at a given SIMD tier (lowered to what this CPU supports).
pub(crate) fn attend_at(
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
            scratch.resize(ratio * visible + ratio, 0.0);
            let (scores, totals) = scratch.split_at_mut(ratio * visible);
            // Scores, [ratio][visible]: each key row meets every query head of the group.
            let mut s0 = 0;
            for (keys, _) in cache.head_pages::<T>(g, visible) {
                for (s, key) in keys.chunks_exact(hd).enumerate() {
                    for r in 0..ratio {
                        scores[r * visible + s0 + s] =
                            dot(key, &q[r * hd..(r + 1) * hd], avx2) * scale;
                    }
                }
                s0 += keys.len() / hd;
            }
            // Softmax per query head, kept unnormalised until the end.
            for (r, row) in scores.chunks_exact_mut(visible).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                totals[r] = sum;
            }
            // Weighted values: each value row is added into every query head of the group.
            out.fill(0.0);
            let mut s0 = 0;
            for (_, values) in cache.head_pages::<T>(g, visible) {
                for (s, value) in values.chunks_exact(hd).enumerate() {
                    for r in 0..ratio {
                        let p = scores[r * visible + s0 + s];
                        axpy(&mut out[r * hd..(r + 1) * hd], p, value, avx2);
                    }
                }
                s0 += values.len() / hd;
            }
            for (r, o) in out.chunks_exact_mut(hd).enumerate() {
                let inv = 1.0 / totals[r];
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
    })
}

/// `y += a·x`, `x` widened to f32.
#[inline]
fn axpy<T: WeightElement>(y: &mut [f32], a: f32, x: &[T], avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU supports AVX2, FMA and F16C.
        return unsafe { x86::axpy(y, a, x) };
    }
    let _ = avx2;
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x.widen());
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::gemv::WeightElement;

    /// `y += a·x`, eight lanes at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy<T: WeightElement>(y: &mut [f32], a: f32, x: &[T]) {
        let n = y.len().min(x.len());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n ≤ both lengths.
            unsafe {
                let yp = y.as_mut_ptr().add(i);
                let v = _mm256_fmadd_ps(av, T::load8(x.as_ptr().add(i)), _mm256_loadu_ps(yp));
                _mm256_storeu_ps(yp, v);
            }
            i += 8;
        }
        for k in i..n {
            y[k] += a * x[k].widen();
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
