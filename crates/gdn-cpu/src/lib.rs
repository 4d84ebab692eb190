//! # hybrid-gdn-cpu
//!
//! The `cpu` Gated DeltaNet backend: the whole per-token pipeline (causal conv + SiLU, L2 norm,
//! gating, delta-rule recurrence) fused so that each recurrent-state element is read once and
//! written once per token.
//!
//! Design:
//! - **Layout** ([`state`]): value-major `Hv × dv × dk` recurrent state in 64-byte-aligned
//!   memory, so value column j — everything δ_j touches — is one contiguous row; the conv state is
//!   a ring of K − 1 channel rows, so no shifting.
//! - **Single pass** ([`kernels`]): with S₀ the old state, `kv = e^g S₀ᵀk`,
//!   `o = e^g S₀ᵀq + δ(kᵀq)`, so a group of value columns is read once (for both dot products),
//!   then updated from L1 and written once.
//! - **Kernels**: AVX2+FMA intrinsics chosen at run time, portable Rust otherwise and for head dims
//!   that are not a multiple of 8 (a correct fallback, not an error).
//! - **Threads** ([`pool`]): by default the process's hot pool ([`hybrid_pool::hot_pool`]), the
//!   same spinning threads that run the model's weight GEMVs, so a decode step never waits for
//!   another pool's sleeping workers; an explicit thread count gets a pool of its own. A dispatch
//!   splits (sequence, key-head group) pairs over threads, so conv channels, state rows and
//!   outputs of different tasks are disjoint, and one token of every sequence of a batch is one
//!   dispatch without barriers. Nothing is allocated per token.
//! - **Prefill** (`token_batch.rs`): chunks of 64 tokens; within a chunk each value head runs its
//!   tokens back to back with its 64 KiB state resident in L1/L2 ("state-stationary"), and the
//!   arithmetic per token is exactly the decode step's, so prefill leaves bit-for-bit the state
//!   that T steps leave. The WY/chunkwise form that GPUs use is not used here: at dk = dv = 128
//!   it does about as many FLOPs per token as the recurrence (≈ 75 k vs 64 k per head); its win is
//!   fewer state sweeps, which state-stationary order already gets from the cache.
//!
//! Input policy (shared with every backend): lengths and finiteness are checked before any state
//! is touched; a rejected call leaves the slot unchanged.

#![warn(missing_docs)]

pub mod backend;
pub mod bandwidth;
pub mod kernels;
pub mod state;
mod token_batch;

/// The worker pools (re-exported: benchmarks build their own for roofline loops).
pub use hybrid_pool as pool;

pub use backend::{CpuBackend, CpuKernel};
pub use kernels::Kernel;

use hybrid_gdn::Registry;

/// Registers `cpu` (best kernel for this CPU) and `cpu-portable` (portable kernels) in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(
        CpuKernel::NAME,
        "fused single-pass kernel, AVX2+FMA when available, multi-threaded",
        |options| Ok(Box::new(CpuKernel::backend(options)?)),
    );
    registry.register(
        CpuKernel::PORTABLE_NAME,
        "the cpu backend forced onto its portable (non-intrinsics) kernels",
        |options| Ok(Box::new(CpuKernel::portable_backend(options)?)),
    );
}
