//! The canonical exchange form of one (layer, slot) state: what export returns and import takes.

use crate::error::{GdnError, Result};
use crate::spec::{check_finite, check_len, LayerSpec};

/// One slot's state for one layer in the canonical layout, whatever a backend keeps internally.
///
/// - `conv`: `conv_dim × (K − 1)` row-major, per channel the last K − 1 raw inputs, oldest first
///   (HF keeps K columns; the oldest one never influences an output, so it is not part of the state).
/// - `recurrent`: key-major `Hv × dk × dv` row-major (HF's `last_recurrent_state` layout).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotState {
    /// Conv state, `conv_dim × (K − 1)`.
    pub conv: Vec<f32>,
    /// Recurrent state, `Hv × dk × dv`.
    pub recurrent: Vec<f32>,
}

impl SlotState {
    /// An all-zero state: what a freshly allocated or reset slot holds.
    pub fn zeros(spec: &LayerSpec) -> Self {
        SlotState {
            conv: vec![0.0; spec.conv_state_len()],
            recurrent: vec![0.0; spec.recurrent_state_len()],
        }
    }

    /// Checks the lengths against `spec` and that every value is finite (the import policy).
    pub fn validate(&self, spec: &LayerSpec) -> Result<()> {
        let conv_dim = spec.conv_dim();
        let history = spec.conv_kernel - 1;
        if !self.conv.is_empty() && self.conv.len().is_multiple_of(conv_dim) {
            let found_history = self.conv.len() / conv_dim;
            if found_history != history {
                return Err(GdnError::ConvKernelMismatch {
                    what: "conv state",
                    expected: spec.conv_kernel,
                    found: found_history + 1,
                });
            }
        }
        check_len("conv state", self.conv.len(), spec.conv_state_len(), || {
            format!("conv_dim × (K − 1) = {conv_dim} × {history}")
        })?;
        check_len(
            "recurrent state",
            self.recurrent.len(),
            spec.recurrent_state_len(),
            || {
                format!(
                    "Hv × dk × dv = {} × {} × {}",
                    spec.num_v_heads, spec.head_k_dim, spec.head_v_dim
                )
            },
        )?;
        check_finite("conv state", &self.conv)?;
        check_finite("recurrent state", &self.recurrent)
    }
}
