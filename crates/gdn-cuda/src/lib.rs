//! # hybrid-gdn-cuda
//!
//! The `cuda` Gated DeltaNet backend: every (layer, slot) recurrent state lives in GPU memory for
//! the whole generation and is updated in place; per token only `mixed_qkv | a | b` go up and
//! `o` comes back (32 KiB / 16 KiB at the Qwen3-Next shape).
//!
//! Design:
//! - **Fused decode kernel** ([`kernels`], `src/kernels/gdn.cu`): one launch per token does the
//!   causal conv + SiLU, the L2 norm of q and k, the gates and the delta-rule update. A warp owns
//!   a few value columns of one head; its lanes hold the head's q̂ and k̂ in registers (no shared
//!   memory, no block barrier), read each state row once with 16-byte loads, and use the
//!   single-pass identity `kv = e^g S₀ᵀk`, `o = e^g S₀ᵀq + δ(kᵀq)` (DESIGN §3) to write it once.
//! - **Layout** ([`state`]): value-major `Hv × dv × dk` state (a column = one contiguous row);
//!   a conv ring of K rows whose position lives on the device and is advanced by the last block
//!   of each launch, so a launch's arguments never change between tokens.
//! - **Prefill**: per chunk of [`backend::PREFILL_CHUNK`] tokens, (1) conv + norm + gates of all
//!   tokens in parallel, (2) the recurrence token by token with each warp's state columns in
//!   registers — the state is read and written once per chunk, not per token — (3) the conv
//!   history commit. Sequential in the recurrence, so exactly the math of T decode steps.
//! - **Batches in one launch**: a batched step (one token for each of several slots of a layer,
//!   `run_batch`) is one `gdn_decode_batch` launch whose grid row `m` works on member `m`,
//!   finding its slot's buffers in a table of device addresses ([`slot_table`]): one upload, one
//!   launch, one download and one synchronisation per layer for the whole batch.
//! - **Many layers per round trip**: [`CudaExt::step_layers`] uploads several layers'
//!   inputs at once and replays all their launches as one CUDA graph ([`graphs`]), and
//!   [`CudaExt::time_device_decode`] times the kernels GPU-side ([`mod@bench`]).
//! - **Two layers**: [`CudaBackend`] is the checked front of `hybrid_gdn` over [`CudaKernel`];
//!   the CUDA-only calls above are the [`CudaExt`] trait on it.
//!
//! ## Run-time compilation (NVRTC) rather than build time
//! The kernels are compiled when a layer shape is first loaded, by NVRTC, for the GPU's own
//! architecture, with the shape as compile-time constants. Why:
//! - the crate (and the whole workspace with `--features cuda`) builds on machines with no CUDA
//!   toolkit — CI and the developers' machines here — because no `nvcc` runs at build time;
//! - every head-dim combination gets a kernel whose register arrays have constant sizes and fully
//!   unrolled loops, without a build-time matrix of template instantiations;
//! - code is generated for the actual device (`compute_90` on H100) instead of a fat binary.
//!
//! The cost: `libnvrtc` must be present at run time (CUDA toolkit, or the `nvidia-cuda-nvrtc-cu12`
//! wheel), and the first load of a shape takes ~0.1–0.5 s (cached per process per shape).
//!
//! ## Loading CUDA without linking it
//! cudarc (the version candle 0.11 uses) with `fallback-dynamic-loading`: `libcuda` and
//! `libnvrtc` are opened with `dlopen` at run time, so nothing CUDA is needed to build or link,
//! and on a machine without a driver [`CudaKernel::new`] answers [`GdnError::Unavailable`]
//! ("no CUDA driver (libcuda.so) found ..."). cudarc panics when a library is missing, so the
//! libraries and every symbol used are probed first ([`device`]). The bindings are pinned to
//! CUDA 12.8 (`cuda-12080`): drivers keep old entry points, so any driver ≥ 12.8 (the GPU
//! machines' 580 / CUDA 13 included) works.
//!
//! ## Why candle stays on the CPU here
//! candle's own `cuda` feature turns on cudarc's `dynamic-linking` plus
//! `cuda-version-from-build-system`: the build then needs `nvcc` and a CUDA toolkit (candle's
//! kernels, ~11 min), links `libcuda`/`libcublas`/`libcurand` at build time (a binary that does
//! not even start without them), and cudarc's build script panics if `dynamic-loading` is also
//! on. This crate asks for `fallback-dynamic-loading`, which yields to `dynamic-linking` when
//! candle is present, so the two *can* be built together — but our `cuda-12080` pin would then
//! override the toolkit version candle's cudarc is built for. The full-GPU placement is
//! therefore a separate follow-up feature (see the README), not part of `cuda`.

#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod device;
pub mod graphs;
pub mod kernels;
pub mod slot_table;
pub mod staging;
pub mod state;

pub use backend::{CudaBackend, CudaExt, CudaKernel, CudaState, LayerStep};
pub use bench::Issue;

use hybrid_gdn::Registry;

/// One line for registry listings.
pub const SUMMARY: &str =
    "GPU-resident state, fused single-pass CUDA decode kernel (NVRTC), CUDA graphs";

/// Registers `cuda` in `registry`. Creating it on a machine without a GPU, driver or NVRTC
/// answers [`hybrid_gdn::GdnError::Unavailable`] with the reason.
pub fn register(registry: &mut Registry) {
    registry.register(CudaKernel::NAME, SUMMARY, |options| {
        Ok(Box::new(CudaKernel::backend(options)?))
    });
}

/// Re-export for docs and tests.
pub use hybrid_gdn::GdnError;
