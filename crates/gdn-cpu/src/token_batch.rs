//! One parallel dispatch of the CPU backend: up to `PREFILL_CHUNK` tokens of one (layer, slot),
//! split over threads by key-head groups.
//!
//! A task owns key heads `[kh0, kh1)` and their value heads `[kh0·r, kh1·r)`, hence three
//! disjoint channel ranges of the conv (its q, k and v channels), disjoint rows of the recurrent
//! state and disjoint parts of the output. Every task does the whole token pipeline for what it
//! owns — conv + SiLU, L2 norm, gating, recurrence — so a step is a single dispatch with no
//! barrier. Within a task each value head runs all the batch's tokens back to back, so its state
//! (64 KiB at dk = dv = 128) stays in L1/L2 across a prefill chunk.

use std::marker::PhantomData;

use hybrid_gdn::math::{l2_normalize, query_scale, sigmoid, softplus};
use hybrid_gdn::LayerSpec;

use crate::kernels::{HeadToken, Kernel};
use crate::state::{ring_row, CpuConstants};

/// Tokens per dispatch in prefill (bounds the activation scratch).
pub(crate) const PREFILL_CHUNK: usize = 64;

/// Value columns per state block: as many as fit in 16 KiB (a third of L1d), in whole groups
/// of four (the AVX2 kernel's unroll), at least four.
fn block_columns(dk: usize) -> usize {
    const BLOCK_BYTES: usize = 16 * 1024;
    (BLOCK_BYTES / (dk * std::mem::size_of::<f32>()) / 4 * 4).max(4)
}

/// A slice that several threads write at provably disjoint ranges. It borrows the slice for
/// `'a`, so it cannot outlive it; the ranges' disjointness is what [`SharedSlice::range`]'s
/// callers promise. Crate-private: outside code has no way to reach the raw pointer.
#[derive(Clone, Copy)]
pub(crate) struct SharedSlice<'a> {
    ptr: *mut f32,
    len: usize,
    borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: `SharedSlice` is only handed to pool tasks that each touch their own disjoint ranges
// (see `TokenBatch::run_task`), while the owner of the slice is blocked in `WorkerPool::run`.
unsafe impl Send for SharedSlice<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedSlice<'_> {}

impl<'a> SharedSlice<'a> {
    /// Wraps a slice for the duration of one dispatch (the borrow lasts as long as the wrapper).
    pub(crate) fn new(slice: &'a mut [f32]) -> Self {
        SharedSlice {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            borrow: PhantomData,
        }
    }

    /// The elements `[start, start + len)` as a slice of their own (same borrow).
    pub(crate) fn sub(&self, start: usize, len: usize) -> SharedSlice<'a> {
        assert!(
            start + len <= self.len,
            "SharedSlice sub-slice out of bounds"
        );
        SharedSlice {
            // SAFETY: in bounds of the wrapped slice (checked above).
            ptr: unsafe { self.ptr.add(start) },
            len,
            borrow: PhantomData,
        }
    }

    /// Read-only view of `len` elements from `start`.
    ///
    /// # Safety
    /// No live mutable reference may overlap the range while the view lives.
    unsafe fn view(&self, start: usize, len: usize) -> &[f32] {
        assert!(start + len <= self.len, "SharedSlice view out of bounds");
        // SAFETY: in bounds (checked above); no aliasing writer is the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// No other live reference may overlap the range, and the wrapped slice must outlive the use.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "SharedSlice range out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Everything one dispatch needs; tasks read the shared parts and write only what they own.
pub(crate) struct TokenBatch<'a> {
    /// Layer geometry.
    pub spec: &'a LayerSpec,
    /// Layer constants.
    pub constants: &'a CpuConstants,
    /// Inner-loop implementation.
    pub kernel: Kernel,
    /// Number of tasks the key heads are split into.
    pub tasks: usize,
    /// Tokens in this batch.
    pub tokens: usize,
    /// Ring row holding the oldest conv input before the first token.
    pub oldest: usize,
    /// `tokens × conv_dim` raw inputs.
    pub mixed_qkv: &'a [f32],
    /// `tokens × Hv` raw `a`.
    pub a: &'a [f32],
    /// `tokens × Hv` raw `b`.
    pub b: &'a [f32],
    /// The slot's conv ring, `(K − 1) × conv_dim`.
    pub conv_ring: SharedSlice<'a>,
    /// The slot's value-major recurrent state.
    pub recurrent: SharedSlice<'a>,
    /// Scratch for activated channels, at least `tokens × conv_dim`.
    pub activated: SharedSlice<'a>,
    /// `tokens × Hv × dv` output.
    pub out: SharedSlice<'a>,
}

impl TokenBatch<'_> {
    /// Runs task `task` of `self.tasks`.
    ///
    /// # Safety
    /// No other call with the same `task` may run at the same time (tasks own disjoint parts
    /// of the shared slices; two runs of one task would write the same ones), and `task` must be
    /// below `self.tasks`.
    pub(crate) unsafe fn run_task(&self, task: usize) {
        let spec = self.spec;
        let (dk, dv, ratio) = (spec.head_k_dim, spec.head_v_dim, spec.gva_ratio());
        let (conv_dim, key_dim, hv) = (spec.conv_dim(), spec.key_dim(), spec.num_v_heads);
        let key_heads = spec.num_k_heads;
        let kh0 = task * key_heads / self.tasks;
        let kh1 = (task + 1) * key_heads / self.tasks;
        let (h0, h1) = (kh0 * ratio, kh1 * ratio);
        let q_range = (kh0 * dk, kh1 * dk);
        let k_range = (key_dim + kh0 * dk, key_dim + kh1 * dk);
        let v_range = (2 * key_dim + h0 * dv, 2 * key_dim + h1 * dv);

        // 1–2. Conv + SiLU of the owned channels, then L2 norm of the owned q and k heads.
        let q_scale = query_scale(dk);
        for t in 0..self.tokens {
            for range in [q_range, k_range, v_range] {
                self.conv_channels(t, range);
            }
            for (range, scale) in [(q_range, q_scale), (k_range, 1.0)] {
                // SAFETY: this task owns channels `range` of every token's activation row.
                let heads = unsafe {
                    self.activated
                        .range(t * conv_dim + range.0, range.1 - range.0)
                };
                for head in heads.chunks_exact_mut(dk) {
                    l2_normalize(head, scale);
                }
            }
        }

        // 3–5. Gating and the recurrence. Value column j of S only ever needs δ_j, so a head's
        // state splits into blocks of columns that evolve independently: each block (≤ 16 KiB)
        // runs every token of the batch while it sits in L1, and the state crosses the memory
        // hierarchy once per batch instead of once per token. Per column the arithmetic is the
        // decode step's, so prefill leaves exactly the state that T steps leave.
        let value_dim = spec.value_dim();
        let block_rows = block_columns(dk).min(dv);
        let mut decay = [0.0f32; PREFILL_CHUNK];
        let mut beta = [0.0f32; PREFILL_CHUNK];
        for h in h0..h1 {
            let key_head = h / ratio;
            for t in 0..self.tokens {
                let i = t * hv + h;
                let g = self.constants.neg_a[h] * softplus(self.a[i] + self.constants.dt_bias[h]);
                decay[t] = g.exp();
                beta[t] = sigmoid(self.b[i]);
            }
            for j0 in (0..dv).step_by(block_rows) {
                let rows = block_rows.min(dv - j0);
                // SAFETY: value head h, hence every block of it, belongs to this task only.
                let block = unsafe { self.recurrent.range((h * dv + j0) * dk, rows * dk) };
                for t in 0..self.tokens {
                    let row = t * conv_dim;
                    // SAFETY: q/k of `key_head` and v of `h` are in this task's channel ranges,
                    // and nothing writes them during the recurrence.
                    let (q, k, v) = unsafe {
                        (
                            self.activated.view(row + key_head * dk, dk),
                            self.activated.view(row + key_dim + key_head * dk, dk),
                            self.activated.view(row + 2 * key_dim + h * dv + j0, rows),
                        )
                    };
                    let head = HeadToken {
                        k,
                        q,
                        v,
                        decay: decay[t],
                        beta: beta[t],
                    };
                    // SAFETY: output of (t, h) belongs to this task only.
                    let out = unsafe { self.out.range(t * value_dim + h * dv + j0, rows) };
                    self.kernel.head_update(head, block, out);
                }
            }
        }
    }

    /// Conv + SiLU of token `t` over channels `[c0, c1)`, and the ring update for them.
    fn conv_channels(&self, t: usize, (c0, c1): (usize, usize)) {
        let spec = self.spec;
        let (conv_dim, history) = (spec.conv_dim(), spec.conv_kernel - 1);
        let width = c1 - c0;
        let taps = &self.constants.conv_weight_t;
        let x = &self.mixed_qkv[t * conv_dim + c0..][..width];
        // SAFETY: this task owns channels [c0, c1) of every activation row and ring row.
        let act = unsafe { self.activated.range(t * conv_dim + c0, width) };
        if history == 0 {
            self.kernel.conv_tap(act, &taps[c0..c1], x, true);
        } else {
            let oldest = (self.oldest + t) % history;
            for age in 0..history {
                let row = ring_row(oldest, age, history);
                // SAFETY: as above.
                let past = unsafe { self.conv_ring.range(row * conv_dim + c0, width) };
                let w = &taps[age * conv_dim + c0..][..width];
                self.kernel.conv_tap(act, w, past, age == 0);
            }
            let w = &taps[history * conv_dim + c0..][..width];
            self.kernel.conv_tap(act, w, x, false);
            // The newest input takes the oldest input's row.
            // SAFETY: as above; `past` borrows have ended.
            unsafe { self.conv_ring.range(oldest * conv_dim + c0, width) }.copy_from_slice(x);
        }
        self.kernel.silu_in_place(act);
    }
}
