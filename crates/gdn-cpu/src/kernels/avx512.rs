//! AVX-512 inner loops: the AVX2 kernels' algorithms on 16 lanes. Every function here is
//! `unsafe` only because of its `#[target_feature]`: the caller must hold a [`super::Kernel`]
//! of the AVX-512 tier, which is only constructed on a CPU that has it.

use std::arch::x86_64::*;

use hybrid_simd::exp::exp_avx512 as exp;

use super::HeadToken;

/// Value columns processed together, as in the AVX2 kernel: 4 rows × (kv, q) accumulators.
const COLUMNS: usize = 4;

/// Prefetch distance in floats (see the AVX2 kernel).
const PREFETCH_AHEAD_FLOATS: usize = 2048;

/// `act ← act / (1 + e^−act)` in place.
///
/// # Safety
/// The CPU must support AVX-512 F (and AVX2 and FMA).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn silu_in_place(act: &mut [f32]) {
    let mut chunks = act.chunks_exact_mut(16);
    for chunk in &mut chunks {
        // SAFETY: `chunk` has exactly 16 f32s; unaligned loads/stores are allowed.
        unsafe {
            let x = _mm512_loadu_ps(chunk.as_ptr());
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
            let y = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            _mm512_storeu_ps(chunk.as_mut_ptr(), y);
        }
    }
    super::portable::silu_in_place(chunks.into_remainder());
}

/// [`super::portable::conv_tap`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F (and AVX2 and FMA).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn conv_tap(act: &mut [f32], w: &[f32], x: &[f32], first: bool) {
    super::portable::conv_tap(act, w, x, first);
}

/// [`super::portable::scale_in_place`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F (and AVX2 and FMA).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn scale_in_place(x: &mut [f32], factor: f32) {
    super::portable::scale_in_place(x, factor);
}

/// Dot product of two slices whose length is a multiple of 16.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        // SAFETY: both chunks have exactly 16 f32s.
        unsafe {
            acc = _mm512_fmadd_ps(
                _mm512_loadu_ps(ca.as_ptr()),
                _mm512_loadu_ps(cb.as_ptr()),
                acc,
            );
        }
    }
    _mm512_reduce_add_ps(acc)
}

/// Single-pass delta-rule update of one value head (see [`super::Kernel::head_update`]), the
/// AVX2 kernel's schedule on 16 lanes: each group of 4 value columns is read once to form `Sᵀk`
/// and `Sᵀq`, then updated from L1 and written once.
///
/// # Safety
/// The CPU must support AVX-512 F (and AVX2 and FMA). Lengths are checked here (dk must be a
/// multiple of 16).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn head_update(head: HeadToken<'_>, state: &mut [f32], out: &mut [f32]) {
    let dk = head.k.len();
    if !head.lengths_agree(state, out) || !dk.is_multiple_of(16) {
        debug_assert!(false, "avx512 head_update called with inconsistent lengths");
        return;
    }
    let kq = dot(head.k, head.q);
    let decay = _mm512_set1_ps(head.decay);
    let (k, q) = (head.k.as_ptr(), head.q.as_ptr());

    let mut groups = state.chunks_exact_mut(dk * COLUMNS);
    let mut column = 0;
    for group in &mut groups {
        let base = group.as_mut_ptr();
        let mut acc_k = [_mm512_setzero_ps(); COLUMNS];
        let mut acc_q = [_mm512_setzero_ps(); COLUMNS];
        for c in (0..dk).step_by(16) {
            // SAFETY: c + 16 ≤ dk, and row m of the group spans [m·dk, (m+1)·dk) inside `group`.
            unsafe {
                let kc = _mm512_loadu_ps(k.add(c));
                let qc = _mm512_loadu_ps(q.add(c));
                for m in 0..COLUMNS {
                    let p = base.add(m * dk + c);
                    // A hint only: it never faults, even past the end of the state.
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD_FLOATS).cast::<i8>());
                    let s = _mm512_loadu_ps(p);
                    acc_k[m] = _mm512_fmadd_ps(s, kc, acc_k[m]);
                    acc_q[m] = _mm512_fmadd_ps(s, qc, acc_q[m]);
                }
            }
        }
        let mut delta = [_mm512_setzero_ps(); COLUMNS];
        for m in 0..COLUMNS {
            let kv = head.decay * _mm512_reduce_add_ps(acc_k[m]);
            let qs = head.decay * _mm512_reduce_add_ps(acc_q[m]);
            let d = head.beta * (head.v[column + m] - kv);
            out[column + m] = qs + d * kq;
            delta[m] = _mm512_set1_ps(d);
        }
        for c in (0..dk).step_by(16) {
            // SAFETY: same bounds as the read loop above.
            unsafe {
                let kc = _mm512_loadu_ps(k.add(c));
                for (m, &d) in delta.iter().enumerate() {
                    let p = base.add(m * dk + c);
                    let s = _mm512_mul_ps(_mm512_loadu_ps(p), decay);
                    _mm512_storeu_ps(p, _mm512_fmadd_ps(kc, d, s));
                }
            }
        }
        column += COLUMNS;
    }
    // dv not a multiple of COLUMNS: the last columns one at a time.
    for (row, (o, &v)) in groups
        .into_remainder()
        .chunks_exact_mut(dk)
        .zip(out[column..].iter_mut().zip(&head.v[column..]))
    {
        let kv = head.decay * dot(row, head.k);
        let qs = head.decay * dot(row, head.q);
        let d = head.beta * (v - kv);
        *o = qs + d * kq;
        let delta = _mm512_set1_ps(d);
        for (chunk, kc) in row.chunks_exact_mut(16).zip(head.k.chunks_exact(16)) {
            // SAFETY: both chunks have exactly 16 f32s.
            unsafe {
                let s = _mm512_mul_ps(_mm512_loadu_ps(chunk.as_ptr()), decay);
                let updated = _mm512_fmadd_ps(_mm512_loadu_ps(kc.as_ptr()), delta, s);
                _mm512_storeu_ps(chunk.as_mut_ptr(), updated);
            }
        }
    }
}
