//! The `cpu` kernel: fused single-pass GDN on the host, SIMD inner loops, persistent threads.
//!
//! A batched run is one pool dispatch per round of at most `PREFILL_CHUNK` (64) tokens per
//! member, over (member, key-head group) tasks: a decode step of B sequences is one dispatch,
//! not B.

use std::panic::{catch_unwind, AssertUnwindSafe};

use hybrid_gdn::{
    BackendInfo, BackendOptions, Batch, Checked, GdnError, GdnKernel, Layer, LayerConstants,
    LayerSpec, PrefillStrategy, Result, SlotState, TokenInputs,
};

use crate::kernels::Kernel;
use crate::state::{CpuConstants, CpuSlotState};
use crate::token_batch::{SharedSlice, TokenBatch, PREFILL_CHUNK};
use hybrid_pool::{hot_pool, SharedPool};

/// Dispatches that touch less recurrent state than this run on the calling thread alone. Waking
/// a pool worker costs a few µs — far more when it has parked, as it does between layers of a
/// model (gdn_bench: 0.6 µs per step on 1 thread vs ~200 µs on 2 at Hv 4, dk 16, dv 24) — while
/// 64 KiB of state takes ~2 µs on one core. Real model layers (1–2 MiB) stay parallel.
const INLINE_BELOW_BYTES: usize = 64 << 10;

/// The `cpu` backend: the checked front over [`CpuKernel`].
pub type CpuBackend = Checked<CpuKernel>;

/// Fused SIMD CPU kernel. See the crate docs for the design.
pub struct CpuKernel {
    name: &'static str,
    threads: Threads,
    simd: Kernel,
    /// Activation scratch, at least `PREFILL_CHUNK × max conv_dim` (sized at `load`) and grown
    /// to a batch's `Σ chunk tokens × conv_dim` on the first batch that needs more, so that
    /// steps and batches of a size seen before never allocate.
    activated: Vec<f32>,
    /// The members of the current run; kept empty between runs so that its allocation is reused
    /// (see [`recycle`]).
    jobs: Vec<Job<'static>>,
}

impl std::fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernel")
            .field("name", &self.name)
            .field("threads", &self.threads)
            .field("simd", &self.simd)
            .finish_non_exhaustive()
    }
}

/// One member of a batched run: its inputs, its state and output as slices the tasks share, and
/// how far its tokens have got.
struct Job<'a> {
    inputs: TokenInputs<'a>,
    /// Tokens of the member in all.
    tokens: usize,
    /// Tokens done in earlier rounds.
    first: usize,
    /// Tokens in this round (0 once the member is done).
    count: usize,
    /// Where this round's activations start in the scratch.
    act_offset: usize,
    oldest: &'a mut usize,
    conv_ring: SharedSlice<'a>,
    recurrent: SharedSlice<'a>,
    out: SharedSlice<'a>,
}

/// An empty vector of another lifetime in the same allocation: in-place collection of an
/// iterator over a vector into elements of the same size and alignment reuses the buffer, so the
/// job list is allocated once per kernel, not once per call (tests/zero_alloc.rs checks this).
fn recycle<'b, 'c>(mut jobs: Vec<Job<'b>>) -> Vec<Job<'c>> {
    jobs.clear();
    jobs.into_iter().map(|_| unreachable!("cleared")).collect()
}

/// The threads a backend runs on.
#[derive(Debug)]
enum Threads {
    /// The process's hot pool, shared with the model's GEMVs.
    Hot(&'static SharedPool),
    /// A pool of the size the options asked for.
    Own(SharedPool),
}

impl Threads {
    fn pool(&self) -> &SharedPool {
        match self {
            Threads::Hot(pool) => pool,
            Threads::Own(pool) => pool,
        }
    }
}

impl CpuKernel {
    /// Registry name of the backend with the best kernel for this CPU.
    pub const NAME: &'static str = "cpu";
    /// Registry name of the backend forced onto the portable kernels.
    pub const PORTABLE_NAME: &'static str = "cpu-portable";

    /// The kernel with the fastest SIMD tier this CPU supports. Without `options.threads` it
    /// runs on the process's hot pool ([`hot_pool`]) shared with the model's GEMVs; with a
    /// count, on a pool of that many threads of its own.
    pub fn new(options: &BackendOptions) -> Result<Self> {
        Self::with_kernel(Self::NAME, options, Kernel::detect())
    }

    /// The kernel forced onto the portable (non-SIMD-intrinsics) inner loops.
    pub fn portable(options: &BackendOptions) -> Result<Self> {
        Self::with_kernel(Self::PORTABLE_NAME, options, Kernel::portable())
    }

    /// The `cpu` backend (front and kernel) with the fastest tier.
    pub fn backend(options: &BackendOptions) -> Result<CpuBackend> {
        Ok(Checked::new(Self::new(options)?))
    }

    /// The `cpu-portable` backend (front and kernel).
    pub fn portable_backend(options: &BackendOptions) -> Result<CpuBackend> {
        Ok(Checked::new(Self::portable(options)?))
    }

    fn with_kernel(name: &'static str, options: &BackendOptions, simd: Kernel) -> Result<Self> {
        let threads = match options.threads {
            Some(0) => {
                return Err(GdnError::Unavailable {
                    name: name.into(),
                    reason: "threads must be at least 1".into(),
                })
            }
            Some(n) => Threads::Own(SharedPool::new(n).map_err(|e| GdnError::Unavailable {
                name: name.into(),
                reason: format!("cannot start {n} worker threads: {e}"),
            })?),
            None => Threads::Hot(hot_pool()),
        };
        Ok(CpuKernel {
            name,
            threads,
            simd,
            activated: Vec::new(),
            jobs: Vec::new(),
        })
    }

    /// The inner-loop implementation in use.
    pub fn simd(&self) -> Kernel {
        self.simd
    }
}

/// Runs `tasks` tasks on `pool`, or (small work) inline on the calling thread; false when one
/// panicked.
fn dispatch(pool: &SharedPool, tasks: usize, inline: bool, task: &(dyn Fn(usize) + Sync)) -> bool {
    if inline {
        catch_unwind(AssertUnwindSafe(|| (0..tasks).for_each(task))).is_ok()
    } else {
        pool.run(tasks, task).is_ok()
    }
}

impl GdnKernel for CpuKernel {
    type Constants = CpuConstants;
    type State = CpuSlotState;

    fn info(&self) -> BackendInfo {
        let threads = self.threads.pool().threads();
        BackendInfo {
            name: self.name.into(),
            device: format!("host CPU, {threads} threads, {} kernel", self.simd.name()),
            state_on_host: true,
            prefill: PrefillStrategy::Chunked {
                chunk: PREFILL_CHUNK,
            },
            host_threads: threads,
        }
    }

    fn load(
        &mut self,
        _layer: usize,
        spec: &LayerSpec,
        constants: &LayerConstants,
        _live_slots: usize,
    ) -> Result<CpuConstants> {
        let scratch = PREFILL_CHUNK * spec.conv_dim();
        if self.activated.len() < scratch {
            self.activated.resize(scratch, 0.0);
        }
        Ok(CpuConstants::new(spec, constants))
    }

    fn new_state(&mut self, layer: Layer<'_, CpuConstants>) -> Result<CpuSlotState> {
        Ok(CpuSlotState::zeros(layer.spec))
    }

    fn reset(&mut self, _layer: Layer<'_, CpuConstants>, state: &mut CpuSlotState) -> Result<()> {
        state.reset();
        Ok(())
    }

    /// Rounds of at most `PREFILL_CHUNK` tokens per member; each round is one dispatch of
    /// (member, key-head group) tasks, or runs inline when it touches little state.
    fn run(
        &mut self,
        layer: Layer<'_, CpuConstants>,
        batch: &mut Batch<'_, '_, CpuSlotState>,
    ) -> Result<()> {
        let spec = layer.spec;
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        let history = spec.conv_kernel - 1;
        let state_bytes = spec.recurrent_state_bytes();

        let mut jobs: Vec<Job<'_>> = recycle(std::mem::take(&mut self.jobs));
        for member in batch.iter_mut() {
            let state = member.state;
            jobs.push(Job {
                inputs: member.inputs,
                tokens: member.inputs.a.len() / hv,
                first: 0,
                count: 0,
                act_offset: 0,
                oldest: &mut state.oldest,
                conv_ring: SharedSlice::new(&mut state.conv_ring),
                recurrent: SharedSlice::new(state.recurrent.as_mut_slice()),
                out: SharedSlice::new(member.out),
            });
        }

        let mut result = Ok(());
        loop {
            // This round's tokens per member and their places in the activation scratch.
            let mut rows = 0;
            for job in jobs.iter_mut() {
                job.count = PREFILL_CHUNK.min(job.tokens - job.first);
                job.act_offset = rows * conv_dim;
                rows += job.count;
            }
            if rows == 0 {
                break;
            }
            if self.activated.len() < rows * conv_dim {
                self.activated.resize(rows * conv_dim, 0.0);
            }
            let inline = rows * state_bytes < INLINE_BELOW_BYTES;
            let groups = if inline {
                1
            } else {
                self.threads.pool().threads().min(spec.num_k_heads)
            };
            let activated = SharedSlice::new(&mut self.activated[..rows * conv_dim]);
            let (simd, jobs_ref) = (self.simd, &jobs);
            let task = |task: usize| {
                let job = &jobs_ref[task / groups];
                if job.count == 0 {
                    return;
                }
                let (first, count) = (job.first, job.count);
                let part = TokenBatch {
                    spec,
                    constants: layer.constants,
                    kernel: simd,
                    tasks: groups,
                    tokens: count,
                    oldest: *job.oldest,
                    mixed_qkv: &job.inputs.mixed_qkv[first * conv_dim..(first + count) * conv_dim],
                    a: &job.inputs.a[first * hv..(first + count) * hv],
                    b: &job.inputs.b[first * hv..(first + count) * hv],
                    conv_ring: job.conv_ring,
                    recurrent: job.recurrent,
                    activated: activated.sub(job.act_offset, count * conv_dim),
                    out: job.out.sub(first * value_dim, count * value_dim),
                };
                // SAFETY: task `task` is run exactly once per dispatch, and `task % groups` is
                // below `part.tasks`. Tasks of different members write disjoint memory: their
                // states are distinct (`Batch` hands out each member's state once), their
                // outputs are distinct caller slices and their activation ranges do not overlap
                // (consecutive `act_offset`s); tasks of one member own disjoint key-head groups.
                unsafe { part.run_task(task % groups) }
            };
            if !dispatch(self.threads.pool(), jobs.len() * groups, inline, &task) {
                result = Err(GdnError::Internal {
                    backend: self.name.into(),
                    message: format!(
                        "a worker task panicked in layer {}; reset the batch's slots before \
                         using them again",
                        layer.index
                    ),
                });
                break;
            }
            for job in jobs.iter_mut() {
                if history > 0 {
                    *job.oldest = (*job.oldest + job.count) % history;
                }
                job.first += job.count;
            }
        }
        self.jobs = recycle(jobs);
        result
    }

    fn read_state(
        &mut self,
        layer: Layer<'_, CpuConstants>,
        state: &CpuSlotState,
    ) -> Result<SlotState> {
        Ok(state.to_canonical(layer.spec))
    }

    fn write_state(
        &mut self,
        layer: Layer<'_, CpuConstants>,
        state: &mut CpuSlotState,
        canonical: &SlotState,
    ) -> Result<()> {
        state.load_canonical(layer.spec, canonical);
        Ok(())
    }
}
