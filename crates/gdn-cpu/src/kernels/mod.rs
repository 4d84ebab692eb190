//! The numeric inner loops of the CPU backend, in two flavours chosen once at run time:
//! AVX2+FMA intrinsics ([`avx2`]) and portable Rust ([`portable`]) for every other CPU and for
//! head dims the SIMD path does not tile (dk not a multiple of 8).

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod portable;

/// Which implementation of the inner loops to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// x86-64 AVX2 + FMA intrinsics. Only constructed after the CPU was checked for both.
    Avx2Fma,
    /// Plain Rust, any CPU, any head dim.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::is_supported() {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Portable
    }

    /// True when this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => avx2::is_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma => false,
            Kernel::Portable => true,
        }
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx2Fma => "AVX2+FMA",
            Kernel::Portable => "portable",
        }
    }

    /// `act ← SiLU(act)` in place.
    #[inline]
    pub fn silu_in_place(self, act: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only constructed when `avx2::is_supported()` returned true.
            Kernel::Avx2Fma => unsafe { avx2::silu_in_place(act) },
            _ => portable::silu_in_place(act),
        }
    }

    /// One conv tap over a channel range: `act = w·x` when `first`, else `act += w·x`.
    #[inline]
    pub fn conv_tap(self, act: &mut [f32], w: &[f32], x: &[f32], first: bool) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only constructed when the CPU supports AVX2 and FMA.
            Kernel::Avx2Fma => unsafe { avx2::conv_tap(act, w, x, first) },
            _ => portable::conv_tap(act, w, x, first),
        }
    }

    /// `x ← x · factor` in place: the plain streaming loop used as the memory roofline.
    #[inline]
    pub fn scale_in_place(self, x: &mut [f32], factor: f32) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only constructed when the CPU supports AVX2 and FMA.
            Kernel::Avx2Fma => unsafe { avx2::scale_in_place(x, factor) },
            _ => portable::scale_in_place(x, factor),
        }
    }

    /// One token of the delta rule for one value head, in a single pass over its state.
    ///
    /// `state` is value-major `dv × dk` (row j is value column j of S). With S₀ the old state:
    /// `kv = e^g S₀ᵀk`, `δ = β(v − kv)`, `S ← e^g S₀ + kδᵀ`, `o = e^g S₀ᵀq + δ(kᵀq)`.
    #[inline]
    pub fn head_update(self, head: HeadToken<'_>, state: &mut [f32], out: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2Fma` is only constructed when the CPU supports AVX2 and FMA; the AVX2
            // path itself checks that dk is a multiple of 8 and that all lengths agree.
            Kernel::Avx2Fma if head.k.len() % 8 == 0 => unsafe {
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
