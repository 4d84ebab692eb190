//! The typed error every GDN backend returns. A backend never panics on bad input:
//! each failure names what was wrong and, where there is one, the fix.

use crate::slots::SlotId;

/// Result alias used throughout the GDN crates.
pub type Result<T, E = GdnError> = std::result::Result<T, E>;

/// Everything that can go wrong when driving a GDN backend.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GdnError {
    /// A layer spec that cannot describe a GDN layer (zero sizes, Hv not a multiple of Hk, ...).
    #[error("invalid GDN layer spec: {0}")]
    InvalidSpec(String),

    /// A buffer whose length does not match the layer spec.
    #[error("`{what}` has {found} elements, expected {expected} ({detail})")]
    ShapeMismatch {
        /// The argument or tensor that was wrong.
        what: &'static str,
        /// Length the layer spec requires.
        expected: usize,
        /// Length that was passed.
        found: usize,
        /// How the expected length is made up, e.g. `tokens × conv_dim = 3 × 256`.
        detail: String,
    },

    /// The conv weight or conv state was built for a different conv kernel size.
    #[error("conv kernel mismatch in `{what}`: layer spec says K = {expected}, data implies K = {found}")]
    ConvKernelMismatch {
        /// The argument that carried the wrong kernel size.
        what: &'static str,
        /// Kernel size from the layer spec.
        expected: usize,
        /// Kernel size implied by the data.
        found: usize,
    },

    /// A layer index that was never loaded into this backend.
    #[error("layer {0} is not loaded in this backend (call load_layer first)")]
    UnknownLayer(usize),

    /// A layer index loaded twice.
    #[error("layer {0} is already loaded in this backend")]
    LayerAlreadyLoaded(usize),

    /// A slot id that was never allocated, or was freed.
    #[error("sequence slot {0} is not allocated in this backend (freed, or from another backend)")]
    UnknownSlot(SlotId),

    /// NaN or ±Inf in an input. Policy: the call is rejected before any state is touched.
    #[error("non-finite value {value} in `{what}` at element {index}: inputs must be finite (state left unchanged)")]
    NonFinite {
        /// The argument that held the value.
        what: &'static str,
        /// Flat element index of the first offending value.
        index: usize,
        /// The value itself (NaN, inf or -inf).
        value: f32,
    },

    /// `step` called with other than exactly one token.
    #[error("step takes exactly one token, got {0} (use prefill for several)")]
    NotOneToken(usize),

    /// The requested backend name is not known at all.
    #[error("unknown GDN backend `{name}`; known backends: {known}")]
    UnknownBackend {
        /// The name that was asked for.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },

    /// The backend is known but cannot be used in this build or on this machine.
    #[error("GDN backend `{name}` is not available: {reason}")]
    Unavailable {
        /// Backend name.
        name: String,
        /// Why, and what to do about it (cargo feature, runtime library, device).
        reason: String,
    },

    /// A failure inside the device or its runtime.
    #[error("GDN backend `{backend}` device error: {message}")]
    Device {
        /// Backend name.
        backend: String,
        /// What the device or runtime reported.
        message: String,
    },
}
