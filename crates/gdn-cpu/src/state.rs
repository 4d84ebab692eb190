//! How the CPU backend keeps constants and per-slot state, and the conversions to and from the
//! canonical layout.
//!
//! - Recurrent state: value-major `Hv × dv × dk`, so that value column j of head h (everything
//!   one δ_j touches) is one contiguous, 64-byte-aligned run of dk floats.
//! - Conv state: a ring of K − 1 rows of `conv_dim` channels. A token reads the rows oldest →
//!   newest and overwrites the oldest with its own input, so nothing is shifted, and each row is
//!   contiguous over channels for SIMD.

use hybrid_gdn::{LayerConstants, LayerSpec, SlotState};

/// A zeroed f32 buffer aligned to a cache line.
#[derive(Clone)]
pub struct AlignedBuf {
    lines: Vec<CacheLine>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

impl AlignedBuf {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        AlignedBuf {
            lines: vec![CacheLine([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// The buffer as a slice.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `CacheLine` is `repr(C)` over `[f32; 16]` (size 64, no padding), so the Vec's
        // storage is `16 · lines.len() ≥ len` contiguous, initialised f32s.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    /// The buffer as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} f32)", self.len)
    }
}

/// Layer constants in the form the kernels want.
#[derive(Debug, Clone)]
pub struct CpuConstants {
    /// Conv weight transposed to `K × conv_dim` (tap-major, contiguous over channels).
    pub conv_weight_t: Vec<f32>,
    /// `−exp(A_log)` per value head.
    pub neg_a: Vec<f32>,
    /// `dt_bias` per value head.
    pub dt_bias: Vec<f32>,
}

impl CpuConstants {
    /// Converts validated canonical constants.
    pub fn new(spec: &LayerSpec, constants: &LayerConstants) -> Self {
        let (conv_dim, kernel) = (spec.conv_dim(), spec.conv_kernel);
        let mut conv_weight_t = vec![0.0; conv_dim * kernel];
        for c in 0..conv_dim {
            for tap in 0..kernel {
                conv_weight_t[tap * conv_dim + c] = constants.conv_weight[c * kernel + tap];
            }
        }
        CpuConstants {
            conv_weight_t,
            neg_a: constants.a_log.iter().map(|a| -a.exp()).collect(),
            dt_bias: constants.dt_bias.clone(),
        }
    }
}

/// One slot's state for one layer.
#[derive(Debug, Clone)]
pub struct CpuSlotState {
    /// Conv ring, `(K − 1) × conv_dim`.
    pub conv_ring: Vec<f32>,
    /// Ring row holding the oldest input.
    pub oldest: usize,
    /// Value-major recurrent state, `Hv × dv × dk`.
    pub recurrent: AlignedBuf,
}

impl CpuSlotState {
    /// A zero state.
    pub fn zeros(spec: &LayerSpec) -> Self {
        CpuSlotState {
            conv_ring: vec![0.0; spec.conv_state_len()],
            oldest: 0,
            recurrent: AlignedBuf::zeros(spec.recurrent_state_len()),
        }
    }

    /// Zeroes the state in place (no reallocation).
    pub fn reset(&mut self) {
        self.conv_ring.fill(0.0);
        self.oldest = 0;
        self.recurrent.as_mut_slice().fill(0.0);
    }

    /// The canonical form: conv `conv_dim × (K − 1)` oldest first, recurrent key-major.
    pub fn to_canonical(&self, spec: &LayerSpec) -> SlotState {
        let (conv_dim, history) = (spec.conv_dim(), spec.conv_kernel - 1);
        let mut conv = vec![0.0; conv_dim * history];
        for age in 0..history {
            let row = &self.conv_ring[ring_row(self.oldest, age, history) * conv_dim..][..conv_dim];
            for (c, &x) in row.iter().enumerate() {
                conv[c * history + age] = x;
            }
        }
        let mut recurrent = vec![0.0; spec.recurrent_state_len()];
        transpose_heads(
            self.recurrent.as_slice(),
            &mut recurrent,
            spec.head_v_dim,
            spec.head_k_dim,
        );
        SlotState { conv, recurrent }
    }

    /// Overwrites this state with a validated canonical one.
    pub fn load_canonical(&mut self, spec: &LayerSpec, state: &SlotState) {
        let (conv_dim, history) = (spec.conv_dim(), spec.conv_kernel - 1);
        self.oldest = 0;
        for age in 0..history {
            let row = &mut self.conv_ring[age * conv_dim..][..conv_dim];
            for (c, x) in row.iter_mut().enumerate() {
                *x = state.conv[c * history + age];
            }
        }
        transpose_heads(
            &state.recurrent,
            self.recurrent.as_mut_slice(),
            spec.head_k_dim,
            spec.head_v_dim,
        );
    }
}

/// Ring row of the input `age` steps after the oldest (age 0 = oldest).
#[inline]
pub fn ring_row(oldest: usize, age: usize, history: usize) -> usize {
    (oldest + age) % history
}

/// Transposes every `rows × cols` head matrix of `src` into `cols × rows` in `dst`.
fn transpose_heads(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    let head = rows * cols;
    for (s, d) in src.chunks_exact(head).zip(dst.chunks_exact_mut(head)) {
        for r in 0..rows {
            for c in 0..cols {
                d[c * rows + r] = s[r * cols + c];
            }
        }
    }
}
