//! The numeric inner loops of the CPU backend, at the SIMD tier `hybrid_simd` chose for this CPU:
//! AVX-512 ([`avx512`], 16 lanes), AVX2+FMA ([`avx2`], 8 lanes) and portable Rust
//! ([`portable`]) for every other CPU and for head dims the SIMD paths do not tile (dk not a
//! multiple of 16 or 8: the next narrower path that fits runs).

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod portable;

use hybrid_simd::Tier;

/// Which implementation of the inner loops to run: a SIMD tier this CPU supports. The tier is
/// private and every constructor checks it, so holding a `Kernel` proves that its intrinsics
/// can run here (the dispatch below relies on that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Tier);

impl Kernel {
    /// The kernel at the process's SIMD tier ([`hybrid_simd::tier`]: the CPU's widest, or
    /// lower when `HYBRID_SIMD` asks).
    pub fn detect() -> Self {
        Kernel(hybrid_simd::tier())
    }

    /// The portable kernel (plain Rust), on any CPU.
    pub fn portable() -> Self {
        Kernel(Tier::Portable)
    }

    /// The kernel of `tier`, or `None` when this CPU cannot run it.
    pub fn at(tier: Tier) -> Option<Self> {
        tier.is_supported().then_some(Kernel(tier))
    }

    /// The SIMD tier this kernel runs at.
    pub fn tier(self) -> Tier {
        self.0
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// `act ← SiLU(act)` in place.
    #[inline]
    pub fn silu_in_place(self, act: &mut [f32]) {
        match self.0 {
            // SAFETY (both arms): a Kernel of a tier exists only when the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => unsafe { avx512::silu_in_place(act) },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => unsafe { avx2::silu_in_place(act) },
            _ => portable::silu_in_place(act),
        }
    }

    /// One conv tap over a channel range: `act = w·x` when `first`, else `act += w·x`.
    #[inline]
    pub fn conv_tap(self, act: &mut [f32], w: &[f32], x: &[f32], first: bool) {
        match self.0 {
            // SAFETY (both arms): a Kernel of a tier exists only when the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => unsafe { avx512::conv_tap(act, w, x, first) },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => unsafe { avx2::conv_tap(act, w, x, first) },
            _ => portable::conv_tap(act, w, x, first),
        }
    }

    /// `x ← x · factor` in place: the plain streaming loop used as the memory roofline.
    #[inline]
    pub fn scale_in_place(self, x: &mut [f32], factor: f32) {
        match self.0 {
            // SAFETY (both arms): a Kernel of a tier exists only when the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => unsafe { avx512::scale_in_place(x, factor) },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => unsafe { avx2::scale_in_place(x, factor) },
            _ => portable::scale_in_place(x, factor),
        }
    }

    /// One token of the delta rule for one value head, in a single pass over its state.
    ///
    /// `state` is value-major `dv × dk` (row j is value column j of S). With S₀ the old state:
    /// `kv = e^g S₀ᵀk`, `δ = β(v − kv)`, `S ← e^g S₀ + kδᵀ`, `o = e^g S₀ᵀq + δ(kᵀq)`.
    #[inline]
    pub fn head_update(self, head: HeadToken<'_>, state: &mut [f32], out: &mut [f32]) {
        let dk = head.k.len();
        match self.0 {
            // SAFETY (both arms): a Kernel of a tier exists only when the CPU supports it (the
            // AVX-512 tier implies AVX2); each path checks that dk tiles and lengths agree.
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 if dk.is_multiple_of(16) => unsafe {
                avx512::head_update(head, state, out)
            },
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 | Tier::Avx2 if dk.is_multiple_of(8) => unsafe {
                avx2::head_update(head, state, out)
            },
            _ => portable::head_update(head, state, out),
        }
    }
}

/// One token's per-head inputs to the recurrence, after conv, normalisation and gating.
#[derive(Debug, Clone, Copy)]
pub struct HeadToken<'a> {
    /// L2-normalised key of the head's key head (dk).
    pub k: &'a [f32],
    /// L2-normalised query scaled by 1/√dk (dk).
    pub q: &'a [f32],
    /// Value (dv).
    pub v: &'a [f32],
    /// `e^g`, the state decay.
    pub decay: f32,
    /// `β = sigmoid(b)`.
    pub beta: f32,
}

impl HeadToken<'_> {
    /// Checks the lengths the kernels rely on; a mismatch is a bug in the caller.
    #[inline]
    fn lengths_agree(&self, state: &[f32], out: &[f32]) -> bool {
        let (dk, dv) = (self.k.len(), self.v.len());
        self.q.len() == dk && out.len() == dv && state.len() == dk * dv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tier this CPU has gives the portable kernel's outputs and new state, at head dims
    /// the 16-lane path tiles (128), only the 8-lane one tiles (24) and neither does (12), with
    /// value columns left over after the 4-column groups (7).
    #[test]
    fn every_tier_matches_the_portable_kernel() {
        for (dk, dv) in [(128, 8), (128, 7), (24, 9), (12, 5)] {
            let wave = |n: usize, f: f32| -> Vec<f32> {
                (0..n).map(|i| ((i as f32 * f).sin()) * 0.5).collect()
            };
            let (k, q, v) = (wave(dk, 0.37), wave(dk, 0.71), wave(dv, 1.3));
            let head = HeadToken {
                k: &k,
                q: &q,
                v: &v,
                decay: 0.93,
                beta: 0.61,
            };
            let start = wave(dk * dv, 0.05);
            let (mut want_state, mut want_out) = (start.clone(), vec![0f32; dv]);
            Kernel::portable().head_update(head, &mut want_state, &mut want_out);
            let act = wave(37, 0.9);
            let mut want_act = act.clone();
            Kernel::portable().silu_in_place(&mut want_act);
            for tier in Tier::ALL {
                let Some(kernel) = Kernel::at(tier) else {
                    continue;
                };
                let (mut state, mut out) = (start.clone(), vec![0f32; dv]);
                kernel.head_update(head, &mut state, &mut out);
                for (a, b) in out
                    .iter()
                    .zip(&want_out)
                    .chain(state.iter().zip(&want_state))
                {
                    assert!((a - b).abs() <= 1e-5, "{tier} dk {dk} dv {dv}: {a} vs {b}");
                }
                let mut got = act.clone();
                kernel.silu_in_place(&mut got);
                for (a, b) in got.iter().zip(&want_act) {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                        "{tier} silu: {a} vs {b}"
                    );
                }
            }
        }
    }
}
