//! Portable inner loops: plain Rust shaped so that the compiler can vectorise the dot products
//! (eight independent partial sums), used on non-AVX2 CPUs and for untileable head dims.

use hybrid_gdn::math::silu;

use super::HeadToken;

const LANES: usize = 8;

/// `act ← SiLU(act)` with the same formula as PyTorch on CPU.
pub fn silu_in_place(act: &mut [f32]) {
    for x in act {
        *x = silu(*x);
    }
}

/// One conv tap: `act = w·x` when `first`, else `act += w·x` (element-wise).
///
/// `inline(always)` so the AVX2 wrapper gets this loop vectorised with 256-bit registers.
#[inline(always)]
pub fn conv_tap(act: &mut [f32], w: &[f32], x: &[f32], first: bool) {
    if first {
        for ((a, &w), &x) in act.iter_mut().zip(w).zip(x) {
            *a = w * x;
        }
    } else {
        for ((a, &w), &x) in act.iter_mut().zip(w).zip(x) {
            *a += w * x;
        }
    }
}

/// `x ← x · factor`; `inline(always)` so the AVX2 wrapper vectorises it with 256-bit registers.
#[inline(always)]
pub fn scale_in_place(x: &mut [f32], factor: f32) {
    for v in x {
        *v *= factor;
    }
}

/// Dot product with eight partial sums, so the loop vectorises and rounding stays stable.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0.0f32; LANES];
    let chunks = a.len() / LANES * LANES;
    for (ca, cb) in a[..chunks]
        .chunks_exact(LANES)
        .zip(b[..chunks].chunks_exact(LANES))
    {
        for lane in 0..LANES {
            partial[lane] += ca[lane] * cb[lane];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    partial.iter().sum::<f32>() + tail
}

/// Single-pass delta-rule update of one value head (see [`super::Kernel::head_update`]).
pub fn head_update(head: HeadToken<'_>, state: &mut [f32], out: &mut [f32]) {
    if !head.lengths_agree(state, out) {
        debug_assert!(false, "head_update called with inconsistent lengths");
        return;
    }
    let dk = head.k.len();
    let kq = dot(head.k, head.q);
    for ((row, o), &v) in state.chunks_exact_mut(dk).zip(out.iter_mut()).zip(head.v) {
        let kv = head.decay * dot(row, head.k);
        let qs = head.decay * dot(row, head.q);
        let delta = head.beta * (v - kv);
        *o = qs + delta * kq;
        for (s, &k) in row.iter_mut().zip(head.k) {
            *s = *s * head.decay + k * delta;
        }
    }
}
