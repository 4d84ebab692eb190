//! Shapes and constants of one Gated DeltaNet layer, and the per-token inputs a backend receives.

use crate::error::{GdnError, Result};

/// Geometry of one GDN layer (DESIGN §3): key/value heads, head dims and conv kernel size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    /// Key heads (Hk); q and k have this many heads.
    pub num_k_heads: usize,
    /// Value heads (Hv = r·Hk); the recurrent state has this many heads.
    pub num_v_heads: usize,
    /// Key head dim (dk).
    pub head_k_dim: usize,
    /// Value head dim (dv).
    pub head_v_dim: usize,
    /// Depthwise causal conv kernel size (K, 4 in every released checkpoint).
    pub conv_kernel: usize,
}

/// The most recurrent (or conv) state values one layer may hold per sequence (16 GiB of f32):
/// far above real layers (Qwen3-Next: 32 × 128 × 128 = 524 288), and a bound checked before
/// any state is allocated.
pub const MAX_STATE_VALUES: usize = u32::MAX as usize;

impl LayerSpec {
    /// The spec with these heads, head dims and conv kernel size (checked by [`Self::validate`]).
    pub const fn new(
        num_k_heads: usize,
        num_v_heads: usize,
        head_k_dim: usize,
        head_v_dim: usize,
        conv_kernel: usize,
    ) -> Self {
        LayerSpec {
            num_k_heads,
            num_v_heads,
            head_k_dim,
            head_v_dim,
            conv_kernel,
        }
    }

    /// The Qwen3-Next-80B-A3B GDN layer: Hk 16, Hv 32, dk = dv = 128, K = 4.
    pub const QWEN3_NEXT: LayerSpec = LayerSpec {
        num_k_heads: 16,
        num_v_heads: 32,
        head_k_dim: 128,
        head_v_dim: 128,
        conv_kernel: 4,
    };

    /// Checks that the spec describes a real layer whose state sizes fit (at most
    /// [`MAX_STATE_VALUES`] recurrent or conv values per sequence).
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("num_k_heads", self.num_k_heads),
            ("num_v_heads", self.num_v_heads),
            ("head_k_dim", self.head_k_dim),
            ("head_v_dim", self.head_v_dim),
            ("conv_kernel", self.conv_kernel),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(GdnError::InvalidSpec(format!("{name} must be at least 1")));
            }
        }
        if !self.num_v_heads.is_multiple_of(self.num_k_heads) {
            return Err(GdnError::InvalidSpec(format!(
                "num_v_heads ({}) must be a multiple of num_k_heads ({})",
                self.num_v_heads, self.num_k_heads
            )));
        }
        // Every length derived below (conv_dim, the conv and recurrent states) must fit in a
        // usize, and one sequence's state must be a size a machine can hold.
        let recurrent = self
            .num_v_heads
            .checked_mul(self.head_k_dim)
            .and_then(|n| n.checked_mul(self.head_v_dim));
        let conv = self
            .num_k_heads
            .checked_mul(self.head_k_dim)
            .and_then(|k| k.checked_mul(2))
            .and_then(|k2| {
                self.num_v_heads
                    .checked_mul(self.head_v_dim)
                    .and_then(|v| k2.checked_add(v))
            })
            .and_then(|c| c.checked_mul(self.conv_kernel));
        match (recurrent, conv) {
            (Some(r), Some(c)) if r <= MAX_STATE_VALUES && c <= MAX_STATE_VALUES => Ok(()),
            _ => Err(GdnError::InvalidSpec(format!(
                "{} value heads of {}×{} and a {}-tap conv need more than {MAX_STATE_VALUES} \
                 state values per sequence",
                self.num_v_heads, self.head_k_dim, self.head_v_dim, self.conv_kernel
            ))),
        }
    }

    /// GVA ratio r = Hv / Hk: value head h reads key head ⌊h / r⌋.
    pub fn gva_ratio(&self) -> usize {
        self.num_v_heads / self.num_k_heads
    }

    /// Channels entering the conv: `2·Hk·dk + Hv·dv`, ordered [all q | all k | all v].
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    /// `Hk·dk`: width of all q (or all k) channels.
    pub fn key_dim(&self) -> usize {
        self.num_k_heads * self.head_k_dim
    }

    /// `Hv·dv`: width of all v channels, and of one token's output.
    pub fn value_dim(&self) -> usize {
        self.num_v_heads * self.head_v_dim
    }

    /// Elements of one slot's conv state: `conv_dim × (K − 1)`.
    pub fn conv_state_len(&self) -> usize {
        self.conv_dim() * (self.conv_kernel - 1)
    }

    /// Elements of one slot's recurrent state: `Hv × dk × dv`.
    pub fn recurrent_state_len(&self) -> usize {
        self.num_v_heads * self.head_k_dim * self.head_v_dim
    }

    /// Bytes of one slot's f32 recurrent state (2 MiB for Qwen3-Next).
    pub fn recurrent_state_bytes(&self) -> usize {
        self.recurrent_state_len() * std::mem::size_of::<f32>()
    }
}

/// Per-layer constants uploaded once: conv weight, `A_log` and `dt_bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConstants {
    /// Depthwise conv weight, `conv_dim × K` row-major (HF's `[conv_dim, 1, K]` squeezed).
    pub conv_weight: Vec<f32>,
    /// `A_log`, one per value head.
    pub a_log: Vec<f32>,
    /// `dt_bias`, one per value head.
    pub dt_bias: Vec<f32>,
}

impl LayerConstants {
    /// Checks lengths against `spec` and that every value is finite.
    pub fn validate(&self, spec: &LayerSpec) -> Result<()> {
        let conv_dim = spec.conv_dim();
        let len = self.conv_weight.len();
        if len.is_multiple_of(conv_dim) && len / conv_dim != spec.conv_kernel && len > 0 {
            return Err(GdnError::ConvKernelMismatch {
                what: "conv_weight",
                expected: spec.conv_kernel,
                found: len / conv_dim,
            });
        }
        check_len("conv_weight", len, conv_dim * spec.conv_kernel, || {
            format!("conv_dim × K = {conv_dim} × {}", spec.conv_kernel)
        })?;
        let hv = spec.num_v_heads;
        check_len("a_log", self.a_log.len(), hv, || format!("Hv = {hv}"))?;
        check_len("dt_bias", self.dt_bias.len(), hv, || format!("Hv = {hv}"))?;
        check_finite("conv_weight", &self.conv_weight)?;
        check_finite("a_log", &self.a_log)?;
        check_finite("dt_bias", &self.dt_bias)
    }
}

/// The inputs for T consecutive tokens of one sequence, straight from the model's projections.
#[derive(Debug, Clone, Copy)]
pub struct TokenInputs<'a> {
    /// Pre-conv `mixed_qkv`, `T × conv_dim`, channels [all q | all k | all v].
    pub mixed_qkv: &'a [f32],
    /// Raw `a` projection (before softplus), `T × Hv`.
    pub a: &'a [f32],
    /// Raw `b` projection (before sigmoid), `T × Hv`.
    pub b: &'a [f32],
}

impl TokenInputs<'_> {
    /// Validates every length against `spec` and `out`, rejects non-finite inputs, and returns T.
    ///
    /// Backends call this before touching any state, so a rejected call leaves the slot as it was.
    pub fn validate(&self, spec: &LayerSpec, out: &[f32]) -> Result<usize> {
        let hv = spec.num_v_heads;
        if !self.a.len().is_multiple_of(hv) || self.a.is_empty() {
            return Err(GdnError::ShapeMismatch {
                what: "a",
                expected: hv * (self.a.len() / hv).max(1),
                found: self.a.len(),
                detail: format!("tokens × Hv with Hv = {hv} and at least one token"),
            });
        }
        let tokens = self.a.len() / hv;
        let conv_dim = spec.conv_dim();
        check_len("mixed_qkv", self.mixed_qkv.len(), tokens * conv_dim, || {
            format!("tokens × conv_dim = {tokens} × {conv_dim}")
        })?;
        check_len("b", self.b.len(), tokens * hv, || {
            format!("tokens × Hv = {tokens} × {hv}")
        })?;
        let value_dim = spec.value_dim();
        check_len("out", out.len(), tokens * value_dim, || {
            format!("tokens × Hv × dv = {tokens} × {hv} × {}", spec.head_v_dim)
        })?;
        check_finite("mixed_qkv", self.mixed_qkv)?;
        check_finite("a", self.a)?;
        check_finite("b", self.b)?;
        Ok(tokens)
    }
}

/// Errors with [`GdnError::ShapeMismatch`] unless `found == expected`.
pub fn check_len(
    what: &'static str,
    found: usize,
    expected: usize,
    detail: impl FnOnce() -> String,
) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(GdnError::ShapeMismatch {
            what,
            expected,
            found,
            detail: detail(),
        })
    }
}

/// Errors with [`GdnError::NonFinite`] at the first NaN or infinity in `data`.
pub fn check_finite(what: &'static str, data: &[f32]) -> Result<()> {
    // A branch-free reduction first: the common all-finite case costs one pass with no early exits.
    let all_finite = data.iter().fold(true, |ok, x| ok & x.is_finite());
    if all_finite {
        return Ok(());
    }
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(GdnError::NonFinite {
            what,
            index,
            value: data[index],
        }),
        None => Ok(()),
    }
}
