//! # hybrid-gdn
//!
//! The Gated DeltaNet (GDN) backend contract of hybrid-decode: the [`GdnBackend`] trait, layer
//! specs and constants, sequence slots, the canonical state layout, typed errors, the
//! [`Registry`] that resolves a backend by name, and the scalar [`ReferenceBackend`] that every
//! other backend is tested against. With the `conformance` feature it also carries the shared
//! conformance suite (module `conformance`, behind the cargo feature `conformance`).
//!
//! The math (DESIGN §3), per token and value head h reading key head ⌊h/r⌋:
//! conv + SiLU over `mixed_qkv`, L2-normalised q (scaled by 1/√dk) and k,
//! `g = −exp(A_log)·softplus(a + dt_bias)`, `β = sigmoid(b)`, and
//! `S ← e^g S; δ = β(v − Sᵀk); S ← S + kδᵀ; o = Sᵀq`.
//!
//! ## Two layers
//! A device implements the narrow [`GdnKernel`] (constants, new/reset/read/write state, one
//! batched run per layer); the checked front [`Checked`] wraps it into a [`GdnBackend`] and keeps
//! every rule of the contract — slots, validation, one token for `step`, no slot twice in a
//! batch, counters and timing — in one place. [`FailoverBackend`] wraps any backend and moves
//! its live sequences to a fallback when the device fails (`generate --gdn-fallback cpu`).
//!
//! ## Input policy
//! Every call validates lengths and rejects NaN/±Inf in its inputs with a typed error *before*
//! touching any state, so a rejected call leaves the slot exactly as it was.

#![warn(missing_docs)]

pub mod backend;
pub mod checked;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod failover;
pub mod kernel;
pub mod math;
pub mod reference;
pub mod registry;
pub mod slots;
pub mod spec;
pub mod state;

pub use backend::{BackendInfo, Counters, GdnBackend, PrefillStrategy};
pub use checked::{Checked, SlotStates};
pub use error::{ErrorKind, GdnError, Result};
pub use failover::{FailoverBackend, FailoverEvent, FallbackFactory};
pub use kernel::{
    slot_named_earlier, Batch, BatchMember, DeviceCounters, GdnKernel, Layer, MemberMut,
};
pub use reference::{ReferenceBackend, ReferenceKernel};
pub use registry::{BackendFactory, BackendOptions, Registry, RegistryEntry};
pub use slots::{LayerTable, SlotId};
pub use spec::{LayerConstants, LayerSpec, TokenInputs, MAX_STATE_VALUES};
pub use state::SlotState;
