//! # hybrid-model
//!
//! Qwen3-Next (`Qwen3NextForCausalLM`) and the Qwen3.5 family (`Qwen3_5ForCausalLM`,
//! `Qwen3_5MoeForCausalLM`, and the text tower of the multimodal checkpoints) in candle, with
//! every Gated DeltaNet layer's core running on a pluggable [`hybrid_gdn::GdnBackend`].
//!
//! Conventions that must match HF transformers exactly: every RMSNorm is zero-centred
//! (`x̂·(1 + w)`) except the GDN output norm (`norm(o)·w·silu(z)`, plain `w`); the attention
//! q projection carries a per-head sigmoid output gate; rope rotates only the first
//! `partial_rotary_factor · head_dim` dims (rotate-half layout); the MoE router is a softmax
//! with top-k (renormalised when `norm_topk_prob`) plus a sigmoid-gated shared expert.
//!
//! The weights and the GDN backend are shared by every [`Sequence`] (GDN slot, position, paged KV
//! caches, see [`kv_cache`]): [`HybridModel::prefill`] runs one, [`HybridModel::step`] a batch
//! with one token each; the model's built-in sequence serves the single-sequence API
//! ([`HybridModel::forward`]). A sequence's whole state (KV caches + canonical GDN state) can be
//! exported, imported, written to disk as a versioned, checksummed [`Snapshot`] and restored
//! (see [`snapshot`]), or moved live to another GDN backend with
//! [`HybridModel::migrate_gdn_backend`].

#![warn(missing_docs)]

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod cached_attention;
pub mod config;
pub mod dense_gemm;
#[cfg(target_arch = "x86_64")]
mod dense_gemm_avx2;
pub mod device;
pub mod error;
pub mod gdn_mixer;
pub mod gemv;
pub mod gguf;
pub mod gguf_export;
pub mod int8_gemm;
mod int8_unpack;
pub mod kquant_gemv;
pub mod kv_cache;
mod mapped_blocks;
pub mod matrix;
pub mod model;
pub mod moe;
pub mod nn;
mod parallel;
mod placement;
pub mod qgemm;
pub mod snapshot;
pub mod weights;

pub use config::{Architecture, LayerKind, ModelConfig};
pub use device::{cuda_ordinal, parse_device};
pub use error::{ModelError, Result};
pub use gemv::kernel_paths;
pub use gguf::GgufCheckpoint;
pub use kv_cache::KvDtype;
pub use matrix::{Matrix, WeightFormat, WEIGHT_FORMATS};
pub use model::{HybridModel, LoadOptions, Sequence};
pub use snapshot::{Fingerprint, ModelState, Snapshot, SnapshotError, WriteMode};
pub use weights::WeightStore;
