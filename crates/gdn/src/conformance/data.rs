//! Deterministic test data and the comparison used by every check.

use crate::spec::{LayerConstants, LayerSpec};

/// A small deterministic generator (SplitMix64), so the suite needs no dependencies and every
/// run sees the same numbers.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// `n` normals times `scale`.
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// Realistic random constants: conv weights ~ N(0, 0.5²), `A_log = ln U(1, 16)` (HF's init),
/// `dt_bias` ~ N(0, 1); decays e^g then spread over (0, 1) instead of sitting at 0 or 1.
pub fn random_constants(spec: &LayerSpec, seed: u64) -> LayerConstants {
    let mut rng = Rng::new(seed);
    let conv_weight = rng.normals(spec.conv_dim() * spec.conv_kernel, 0.5);
    let a_log = (0..spec.num_v_heads)
        .map(|_| (1.0 + 15.0 * rng.uniform()).ln())
        .collect();
    let dt_bias = rng.normals(spec.num_v_heads, 1.0);
    LayerConstants {
        conv_weight,
        a_log,
        dt_bias,
    }
}

/// Random inputs for `tokens` tokens: `(mixed_qkv, a, b)`, all ~ N(0, 1).
pub fn random_inputs(spec: &LayerSpec, tokens: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    (
        rng.normals(tokens * spec.conv_dim(), 1.0),
        rng.normals(tokens * spec.num_v_heads, 1.0),
        rng.normals(tokens * spec.num_v_heads, 1.0),
    )
}

/// `|x − y| ≤ abs + rel·|y|` element-wise.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f32,
    /// Relative part (relative to the expected value).
    pub rel: f32,
}

/// Backend vs `reference` (see the module docs for the justification).
pub const TOLERANCE: Tolerance = Tolerance {
    abs: 2e-6,
    rel: 2e-6,
};

/// Any backend vs HF's chunked (WY) prefill or recurrent decode, which order the algebra
/// differently again (worst seen: 4e-7 for the cpu backend vs HF's chunked path).
pub const GOLDEN_TOLERANCE: Tolerance = Tolerance {
    abs: 5e-6,
    rel: 5e-6,
};

/// Panics with the worst element when `actual` and `expected` differ beyond `tol`.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], tol: Tolerance) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} vs expected {}",
        actual.len(),
        expected.len()
    );
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&x, &y)) in actual.iter().zip(expected).enumerate() {
        let excess = (x - y).abs() - (tol.abs + tol.rel * y.abs());
        let fails = excess > 0.0 || excess.is_nan();
        if fails && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        let max_abs = actual
            .iter()
            .zip(expected)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        panic!(
            "{what}: element {i} is {} but expected {} (tolerance {:?}; max abs diff {max_abs:e})",
            actual[i], expected[i], tol
        );
    }
}

/// Largest absolute difference, for reports.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}
