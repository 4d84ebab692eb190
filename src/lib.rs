//! # hybrid-decode
//!
//! Inference engine for hybrid linear-attention LLMs (Qwen3-Next, Qwen3.5) on candle, with every
//! Gated DeltaNet layer dispatched to a pluggable backend that keeps the layer's recurrent state
//! resident on its own device.
//!
//! This facade crate re-exports the GDN contract ([`gdn`]) and builds the backend registry from
//! whatever backends are compiled in ([`gdn_registry`]).

#![warn(missing_docs)]

pub mod cli;
mod engine;

pub use engine::Engine;
pub use hybrid_gdn as gdn;
pub use hybrid_gdn_cpu as gdn_cpu;
#[cfg(feature = "cuda")]
pub use hybrid_gdn_cuda as gdn_cuda;
#[cfg(feature = "xrt")]
pub use hybrid_gdn_xrt as gdn_xrt;
pub use hybrid_model as model;
pub use hybrid_pool as pool;
pub use hybrid_runtime as runtime;
pub use hybrid_simd as simd;

/// The registry of every GDN backend name; those compiled into this build can be created.
///
/// ```
/// let registry = hybrid_decode::gdn_registry();
/// let backend = registry.create("cpu", &Default::default()).unwrap();
/// assert_eq!(backend.info().name, "cpu");
/// ```
pub fn gdn_registry() -> gdn::Registry {
    let mut registry = gdn::Registry::new();
    hybrid_gdn_cpu::register(&mut registry);
    #[cfg(feature = "cuda")]
    hybrid_gdn_cuda::register(&mut registry);
    #[cfg(feature = "xrt")]
    hybrid_gdn_xrt::register(&mut registry);
    registry
}
