//! Golden checks against HF transformers' own GDN code (`torch_chunk_gated_delta_rule` for the
//! prompt, `torch_causal_conv1d_update` + `torch_recurrent_gated_delta_rule` per decode token).
//! The files come from `models/tools/gen_gdn_golden.py`; `models/goldens/gdn/README.md` lists
//! their tensors.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::checks::{prefill_all, step_all};
use super::data::{assert_close, max_abs_diff, GOLDEN_TOLERANCE};
use super::Factory;
use crate::{LayerConstants, LayerSpec};

/// Runs every `*.safetensors` golden in `dir` through a fresh backend: prefill outputs and the
/// states it leaves, then each decode token and the final states, all against HF.
pub fn hf_goldens(factory: Factory<'_>, dir: &Path) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read golden directory {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.safetensors goldens in {} (generate them with models/tools/gen_gdn_golden.py)",
        dir.display()
    );
    for file in files {
        check_golden_file(factory, &file);
    }
}

fn check_golden_file(factory: Factory<'_>, file: &Path) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let golden = Golden::parse(&bytes, file);
    let spec = golden.spec();
    let case = format!(
        "golden {}",
        file.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let constants = LayerConstants {
        conv_weight: golden.tensor("conv_weight"),
        a_log: golden.tensor("a_log"),
        dt_bias: golden.tensor("dt_bias"),
    };
    let mut backend = factory();
    let name = backend.info().name;
    backend
        .load_layer(0, spec, &constants)
        .unwrap_or_else(|e| panic!("{case}: load_layer: {e}"));
    let slot = backend.alloc_slot().expect("alloc");

    let prefill_out = prefill_all(
        backend.as_mut(),
        slot,
        &spec,
        &golden.tensor("mixed_qkv"),
        &golden.tensor("a"),
        &golden.tensor("b"),
    );
    let want = golden.tensor("prefill_out");
    eprintln!(
        "{name} {case}: prefill max |Δ| vs HF chunk {:.2e}, vs HF recurrent {:.2e}",
        max_abs_diff(&prefill_out, &want),
        max_abs_diff(&prefill_out, &golden.tensor("prefill_out_recurrent")),
    );
    assert_close(
        &format!("{name} {case}: prefill outputs vs HF chunk"),
        &prefill_out,
        &want,
        GOLDEN_TOLERANCE,
    );
    let state = backend.export_state(0, slot).expect("export");
    assert_close(
        &format!("{name} {case}: conv state after prefill"),
        &state.conv,
        &golden.tensor("prefill_conv_state"),
        GOLDEN_TOLERANCE,
    );
    assert_close(
        &format!("{name} {case}: recurrent state after prefill"),
        &state.recurrent,
        &golden.tensor("prefill_recurrent_state"),
        GOLDEN_TOLERANCE,
    );

    let decode_out = step_all(
        backend.as_mut(),
        slot,
        &spec,
        &golden.tensor("decode_mixed_qkv"),
        &golden.tensor("decode_a"),
        &golden.tensor("decode_b"),
    );
    assert_close(
        &format!("{name} {case}: decode outputs vs HF recurrent"),
        &decode_out,
        &golden.tensor("decode_out"),
        GOLDEN_TOLERANCE,
    );
    let state = backend.export_state(0, slot).expect("export");
    assert_close(
        &format!("{name} {case}: final conv state"),
        &state.conv,
        &golden.tensor("final_conv_state"),
        GOLDEN_TOLERANCE,
    );
    assert_close(
        &format!("{name} {case}: final recurrent state"),
        &state.recurrent,
        &golden.tensor("final_recurrent_state"),
        GOLDEN_TOLERANCE,
    );
}

/// One golden file: f32 tensors and string metadata.
struct Golden<'a> {
    tensors: SafeTensors<'a>,
    metadata: HashMap<String, String>,
    file: String,
}

impl<'a> Golden<'a> {
    fn parse(bytes: &'a [u8], file: &Path) -> Self {
        let file = file.display().to_string();
        let (_, header) = SafeTensors::read_metadata(bytes)
            .unwrap_or_else(|e| panic!("{file}: not a safetensors file: {e}"));
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = SafeTensors::deserialize(bytes)
            .unwrap_or_else(|e| panic!("{file}: not a safetensors file: {e}"));
        Golden {
            tensors,
            metadata,
            file,
        }
    }

    fn field(&self, key: &str) -> usize {
        self.metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}: metadata field `{key}` missing or not a number",
                    self.file
                )
            })
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec {
            num_k_heads: self.field("hk"),
            num_v_heads: self.field("hv"),
            head_k_dim: self.field("dk"),
            head_v_dim: self.field("dv"),
            conv_kernel: self.field("conv_kernel"),
        }
    }

    fn tensor(&self, name: &str) -> Vec<f32> {
        let view = self
            .tensors
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: tensor `{name}`: {e}", self.file));
        assert_eq!(
            view.dtype(),
            Dtype::F32,
            "{}: tensor `{name}` must be f32",
            self.file
        );
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}
