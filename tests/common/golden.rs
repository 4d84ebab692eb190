//! The HF goldens of the tiny fixtures (`models/goldens/models/*.safetensors`, written by
//! `models/tools/gen_model_fixtures.py` with HF transformers 5.24 in float32) and the checks a
//! loaded model must pass against them: logits of every prompt position, last-position logits of
//! a 200-token prompt, greedy ids and every cached decode step, token-by-token == prefill.

use std::path::PathBuf;

use hybrid_decode::model::HybridModel;
use safetensors::{Dtype, SafeTensors};

/// Max-abs tolerance on logits. The fixtures' logits span about ±25 (std ≈ 4); HF's own paths
/// differ from each other by up to 5.3e-5 on them (cached decode vs full forward, eager vs sdpa),
/// and a different f32 summation order (our GEMV, our attention) moves them by ~1e-4 at most.
/// 2e-4 is 8e-6 of the logit range, far below what any wrong convention produces (≥ 1e-2).
pub const LOGIT_TOLERANCE: f32 = 2e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One fixture's golden file.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn load(name: &str) -> Self {
        let path = root()
            .join("models/goldens/models")
            .join(format!("{name}.safetensors"));
        Golden {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.bytes).expect("golden");
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.bytes).expect("golden");
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), Dtype::I64, "{name}");
        view.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as u32)
            .collect()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `‖a − b‖ / ‖b‖` over two logit vectors.
pub fn relative_rms(a: &[f32], b: &[f32]) -> f64 {
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        err += f64::from(x - y).powi(2);
        norm += f64::from(*y).powi(2);
    }
    (err / norm).sqrt()
}

/// bf16 logits through another path (candle's ops: bf16 activations times bf16 weights, as
/// cuBLAS runs them) against this crate's kernels (f32 activations): within 5 % relative RMS
/// (2–4 % measured on the tiny fixtures, which amplify rounding) and the same top token.
pub fn check_bf16_near(label: &str, got: &[f32], ours: &[f32]) {
    let rel = relative_rms(got, ours);
    eprintln!("{label} bf16: relative RMS vs this crate's kernels {rel:.5}");
    assert!(rel < 0.05, "{label} bf16: relative RMS {rel}");
    assert_eq!(argmax(got), argmax(ours), "{label} bf16: top token");
}

/// Quantized logits through another path are as close to the f32 `reference` as this crate's
/// kernels get (`ours`), with a little room: candle rounds activation rows to 8-bit blocks
/// first, which adds error of its own; a wrong row order or block layout is off by the size of
/// the logits themselves.
pub fn check_as_accurate(label: &str, got: &[f32], ours: &[f32], reference: &[f32]) {
    let (ours_err, got_err) = (relative_rms(ours, reference), relative_rms(got, reference));
    eprintln!(
        "{label}: relative RMS vs f32: this crate's kernels {ours_err:.5}, this path \
         {got_err:.5}; between them {:.5}",
        relative_rms(got, ours)
    );
    assert!(
        got_err <= 1.5 * ours_err + 0.01,
        "{label}: {got_err} vs this crate's kernels {ours_err}"
    );
}

/// The last position's logits after feeding `prompt` to the model's built-in sequence.
pub fn last_logits(model: &mut HybridModel, prompt: &[u32]) -> Vec<f32> {
    model
        .forward(prompt)
        .and_then(|t| Ok(t.to_vec1::<f32>()?))
        .expect("logits")
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn check_close(what: &str, got: &[f32], want: &[f32]) {
    let diff = max_abs_diff(got, want);
    eprintln!("{what}: max |Δ| = {diff:.2e}");
    assert!(
        diff <= LOGIT_TOLERANCE,
        "{what}: max |Δ| {diff:e} > {LOGIT_TOLERANCE:e}"
    );
}

/// Greedy decoding after `prompt`; returns the ids and each step's logits (as HF's scores).
pub fn greedy(model: &mut HybridModel, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    model.reset().expect("reset");
    let mut logits = model
        .forward(prompt)
        .expect("prefill")
        .to_vec1::<f32>()
        .expect("vec");
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let next = argmax(&logits);
        ids.push(next);
        all.push(logits);
        logits = model
            .forward(&[next])
            .expect("decode")
            .to_vec1::<f32>()
            .expect("vec");
    }
    (ids, all)
}

/// Every golden of `fixture` (as written by `models/tools/gen_model_fixtures.py`) against
/// `model`, which must hold that fixture's weights in some form; `label` names the run.
pub fn check_against_golden(model: &mut HybridModel, fixture: &str, label: &str) {
    let golden = Golden::load(fixture);
    let vocab = model.config().vocab_size;

    let short = golden.ids("short_ids");
    let all = model.forward_all(&short).expect("forward_all");
    check_close(
        &format!("{label}: short prompt, all positions"),
        &all.flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec"),
        &golden.f32s("short_logits"),
    );

    let long = golden.ids("long_ids");
    model.reset().expect("reset");
    let last = model
        .forward(&long)
        .expect("long")
        .to_vec1::<f32>()
        .expect("vec");
    check_close(
        &format!(
            "{label}: long prompt ({} tokens), last position",
            long.len()
        ),
        &last,
        &golden.f32s("long_last_logits"),
    );

    for prompt in ["short", "long"] {
        let ids = golden.ids(&format!("{prompt}_ids"));
        let want_ids = golden.ids(&format!("{prompt}_greedy_ids"));
        let (got_ids, steps) = greedy(model, &ids, want_ids.len());
        assert_eq!(
            got_ids, want_ids,
            "{label}: greedy ids after the {prompt} prompt"
        );
        let want_steps = golden.f32s(&format!("{prompt}_stepwise_logits"));
        for (i, step) in steps.iter().enumerate() {
            check_close(
                &format!("{label}: {prompt} prompt, decode step {i}"),
                step,
                &want_steps[i * vocab..(i + 1) * vocab],
            );
        }
    }

    // Prefill + decode == token by token: feed the short prompt one token at a time.
    model.reset().expect("reset");
    let mut stepped = Vec::new();
    for &id in &short {
        stepped = model
            .forward(&[id])
            .expect("step")
            .to_vec1::<f32>()
            .expect("vec");
    }
    let prefilled = &golden.f32s("short_logits")[(short.len() - 1) * vocab..];
    check_close(
        &format!("{label}: token-by-token prompt"),
        &stepped,
        prefilled,
    );
}
