//! Scalar activation and gating functions with the exact conventions of HF transformers / PyTorch.

/// Epsilon inside the L2 norm of q and k (`x · rsqrt(Σx² + 1e-6)`, HF `l2norm`).
pub const L2_NORM_EPS: f32 = 1e-6;

/// PyTorch `F.softplus` with its default `threshold = 20`: linear above the threshold.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Logistic sigmoid, `1 / (1 + e^−x)`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SiLU as PyTorch computes it on CPU: `x / (1 + e^−x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Log-decay of a value head: `g = −exp(A_log) · softplus(a + dt_bias)` (always ≤ 0).
pub fn log_decay(a: f32, a_log: f32, dt_bias: f32) -> f32 {
    -a_log.exp() * softplus(a + dt_bias)
}

/// Scales `x` in place to unit L2 norm: `x · rsqrt(Σx² + 1e-6) · extra_scale`.
pub fn l2_normalize(x: &mut [f32], extra_scale: f32) {
    let sum_sq: f32 = x.iter().map(|v| v * v).sum();
    let scale = (sum_sq + L2_NORM_EPS).sqrt().recip() * extra_scale;
    for v in x {
        *v *= scale;
    }
}

/// The query scale applied after normalisation, `1 / √dk`.
pub fn query_scale(head_k_dim: usize) -> f32 {
    (head_k_dim as f32).sqrt().recip()
}
