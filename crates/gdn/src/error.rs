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

    /// A batched call that names the same slot twice (a sequence advances once per call).
    #[error("sequence slot {0} appears more than once in one batch")]
    SlotRepeated(SlotId),

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

    /// An argument the backend cannot take (a count of zero, a value too large for the
    /// device's argument width); nothing was changed.
    #[error("GDN backend `{backend}`: invalid argument: {detail}")]
    InvalidArgument {
        /// Backend name.
        backend: String,
        /// What was wrong and what to pass instead.
        detail: String,
    },

    /// Every sequence slot the backend can hold is in use (or its slot ids ran out).
    #[error("GDN backend `{backend}` has no free sequence slot: {detail}")]
    OutOfSlots {
        /// Backend name.
        backend: String,
        /// How many there are and what to do (free a slot first).
        detail: String,
    },

    /// A bug inside the backend (a worker task panicked, host bookkeeping lost track); the
    /// device itself is fine, so this is not a reason to fail over.
    #[error("GDN backend `{backend}` internal error: {message}")]
    Internal {
        /// Backend name.
        backend: String,
        /// What went wrong and how to recover.
        message: String,
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

/// The three ways a GDN call can fail, for callers that act on the kind rather than the detail
/// (a server answering 400 or 500, a fail-over deciding whether to move the sequences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller passed something wrong; the call changed nothing and retrying it as is fails
    /// again.
    InvalidArgument,
    /// The device or its runtime failed: another device may run the call.
    DeviceFault,
    /// The backend cannot serve this now (not built in, no device, no free slot) or has a bug;
    /// another device would not help the call itself.
    Unavailable,
}

impl GdnError {
    /// Which of the [`ErrorKind`]s this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GdnError::InvalidSpec(_)
            | GdnError::ShapeMismatch { .. }
            | GdnError::ConvKernelMismatch { .. }
            | GdnError::UnknownLayer(_)
            | GdnError::LayerAlreadyLoaded(_)
            | GdnError::UnknownSlot(_)
            | GdnError::NonFinite { .. }
            | GdnError::NotOneToken(_)
            | GdnError::SlotRepeated(_)
            | GdnError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            GdnError::Device { .. } => ErrorKind::DeviceFault,
            GdnError::UnknownBackend { .. }
            | GdnError::Unavailable { .. }
            | GdnError::OutOfSlots { .. }
            | GdnError::Internal { .. } => ErrorKind::Unavailable,
        }
    }

    /// True for a failure of the device or its runtime: the only kind worth failing over on.
    pub fn is_device_fault(&self) -> bool {
        self.kind() == ErrorKind::DeviceFault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_kind_its_caller_acts_on() {
        let backend = || "b".to_string();
        let cases = [
            (GdnError::UnknownLayer(3), ErrorKind::InvalidArgument),
            (GdnError::NotOneToken(2), ErrorKind::InvalidArgument),
            (
                GdnError::InvalidArgument {
                    backend: backend(),
                    detail: String::new(),
                },
                ErrorKind::InvalidArgument,
            ),
            (
                GdnError::Device {
                    backend: backend(),
                    message: String::new(),
                },
                ErrorKind::DeviceFault,
            ),
            (
                GdnError::Internal {
                    backend: backend(),
                    message: String::new(),
                },
                ErrorKind::Unavailable,
            ),
            (
                GdnError::OutOfSlots {
                    backend: backend(),
                    detail: String::new(),
                },
                ErrorKind::Unavailable,
            ),
            (
                GdnError::Unavailable {
                    name: backend(),
                    reason: String::new(),
                },
                ErrorKind::Unavailable,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.is_device_fault(), kind == ErrorKind::DeviceFault);
        }
    }
}
