//! The `cpu` backend: fused single-pass GDN on the host, SIMD inner loops, persistent threads.

use std::time::Instant;

use hybrid_gdn::{
    BackendInfo, BackendOptions, Counters, GdnBackend, GdnError, LayerConstants, LayerSpec,
    LayerTable, PrefillStrategy, Result, SlotId, SlotState, TokenInputs,
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

/// Fused SIMD CPU backend. See the crate docs for the design.
#[derive(Debug)]
pub struct CpuBackend {
    name: &'static str,
    table: LayerTable<CpuConstants, CpuSlotState>,
    threads: Threads,
    kernel: Kernel,
    /// Activation scratch, `PREFILL_CHUNK × max conv_dim`; sized at `load_layer` so that steps
    /// never allocate.
    activated: Vec<f32>,
    counters: Counters,
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

impl CpuBackend {
    /// Registry name of the backend with the best kernel for this CPU.
    pub const NAME: &'static str = "cpu";
    /// Registry name of the backend forced onto the portable kernels.
    pub const PORTABLE_NAME: &'static str = "cpu-portable";

    /// The backend with the fastest kernel this CPU supports. Without `options.threads` it runs
    /// on the process's hot pool ([`hot_pool`]) shared with the model's GEMVs; with a count, on a
    /// pool of that many threads of its own.
    pub fn new(options: &BackendOptions) -> Result<Self> {
        Self::with_kernel(Self::NAME, options, Kernel::detect())
    }

    /// The backend forced onto the portable (non-SIMD-intrinsics) kernels.
    pub fn portable(options: &BackendOptions) -> Result<Self> {
        Self::with_kernel(Self::PORTABLE_NAME, options, Kernel::portable())
    }

    fn with_kernel(name: &'static str, options: &BackendOptions, kernel: Kernel) -> Result<Self> {
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
        Ok(CpuBackend {
            name,
            table: LayerTable::default(),
            threads,
            kernel,
            activated: Vec::new(),
            counters: Counters::default(),
        })
    }

    /// The inner-loop implementation in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Validates, then runs the tokens in dispatches of at most `PREFILL_CHUNK`; returns T.
    fn run_tokens(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
        exactly_one: bool,
    ) -> Result<usize> {
        let started = Instant::now();
        let (spec, constants, state) = self.table.get_mut(layer, slot)?;
        let tokens = inputs.validate(spec, out)?;
        if exactly_one && tokens != 1 {
            return Err(GdnError::NotOneToken(tokens));
        }
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        let history = spec.conv_kernel - 1;
        let state_bytes = spec.recurrent_state_bytes();
        let mut first = 0;
        while first < tokens {
            let count = PREFILL_CHUNK.min(tokens - first);
            let tasks = if count * state_bytes < INLINE_BELOW_BYTES {
                1
            } else {
                self.threads.pool().threads().min(spec.num_k_heads)
            };
            let batch = TokenBatch {
                spec,
                constants,
                kernel: self.kernel,
                tasks,
                tokens: count,
                oldest: state.oldest,
                mixed_qkv: &inputs.mixed_qkv[first * conv_dim..(first + count) * conv_dim],
                a: &inputs.a[first * hv..(first + count) * hv],
                b: &inputs.b[first * hv..(first + count) * hv],
                conv_ring: SharedSlice::new(&mut state.conv_ring),
                recurrent: SharedSlice::new(state.recurrent.as_mut_slice()),
                activated: SharedSlice::new(&mut self.activated[..count * conv_dim]),
                out: SharedSlice::new(&mut out[first * value_dim..(first + count) * value_dim]),
            };
            self.threads
                .pool()
                // SAFETY: the pool runs each task index below `tasks` exactly once per call.
                .run(tasks, &|task| unsafe { batch.run_task(task) })
                .map_err(|_| GdnError::Internal {
                    backend: self.name.into(),
                    message: format!(
                        "a worker task panicked in layer {layer}, slot {slot}; \
                         reset the slot before using it again"
                    ),
                })?;
            if history > 0 {
                state.oldest = (state.oldest + count) % history;
            }
            first += count;
        }
        self.counters.add_host_time(started);
        Ok(tokens)
    }
}

impl GdnBackend for CpuBackend {
    fn info(&self) -> BackendInfo {
        let threads = self.threads.pool().threads();
        BackendInfo {
            name: self.name.into(),
            device: format!("host CPU, {threads} threads, {} kernel", self.kernel.name()),
            state_on_host: true,
            prefill: PrefillStrategy::Chunked {
                chunk: PREFILL_CHUNK,
            },
            host_threads: threads,
        }
    }

    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: &LayerConstants,
    ) -> Result<()> {
        spec.validate()?;
        constants.validate(&spec)?;
        let converted = CpuConstants::new(&spec, constants);
        self.table
            .insert_layer(layer, spec, converted, CpuSlotState::zeros)?;
        let scratch = PREFILL_CHUNK * spec.conv_dim();
        if self.activated.len() < scratch {
            self.activated.resize(scratch, 0.0);
        }
        Ok(())
    }

    fn alloc_slot(&mut self) -> Result<SlotId> {
        self.table.alloc_slot(CpuSlotState::zeros)
    }

    fn reset_slot(&mut self, slot: SlotId) -> Result<()> {
        self.table
            .for_each_state_mut(slot, |_, state| state.reset())
    }

    fn free_slot(&mut self, slot: SlotId) -> Result<()> {
        self.table.free_slot(slot)
    }

    fn step(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.run_tokens(layer, slot, inputs, out, true)?;
        self.counters.steps += 1;
        Ok(())
    }

    fn prefill(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let tokens = self.run_tokens(layer, slot, inputs, out, false)?;
        self.counters.prefill_tokens += tokens as u64;
        Ok(())
    }

    fn export_state(&self, layer: usize, slot: SlotId) -> Result<SlotState> {
        let (spec, _, state) = self.table.get(layer, slot)?;
        Ok(state.to_canonical(spec))
    }

    fn import_state(&mut self, layer: usize, slot: SlotId, imported: &SlotState) -> Result<()> {
        let (spec, _, state) = self.table.get_mut(layer, slot)?;
        imported.validate(spec)?;
        state.load_canonical(spec, imported);
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}
