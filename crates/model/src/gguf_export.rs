//! A safetensors checkpoint written as the GGUF file llama.cpp's tools make of it:
//! `convert_hf_to_gguf.py --no-mtp` (names, metadata and every tensor transformation) followed,
//! for a quantized type, by `llama-quantize` with one type for every weight matrix.
//!
//! The name table, the config-key table and the value-head order are the ones the reader
//! ([`crate::gguf`]) undoes, so a file written here reads back through the same code as a file
//! from llama.cpp. What the converter does, and so what this module does (llama.cpp upstream
//! 0c1e57098, `conversion/qwen.py` and `src/llama-quant.cpp`):
//! - zero-centred `*norm.weight` (all but `linear_attn.norm`): `w + 1`, computed in the stored
//!   dtype as torch does; `A_log` → `ssm_a = −exp(A_log)`, also in the stored dtype;
//! - `conv1d.weight` `[C, 1, K]` → `[C, K]`; Qwen3-Next `in_proj_qkvz` de-interleaved into
//!   `attn_qkv` (q | k | v) and `attn_gate` (z); per-expert matrices stacked `[E, out, in]`;
//! - Qwen3.5 with fewer key than value heads: every value-head-indexed row (and `out_proj`'s
//!   columns) in tiled head order;
//! - llama-quantize's choice of which tensors to quantize: 2-D and 3-D tensors named `*weight`,
//!   except norms, `ffn_gate_inp` (the router) and `ssm_conv1d`; a row length the target's block
//!   does not divide falls back as llama-quantize does (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0,
//!   then F16).

use std::collections::BTreeMap;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::config::{Architecture, LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gdn_mixer::deinterleave_rows;
use crate::gguf::{
    gguf_tensor_name, tiled_channel_order, tiled_value_heads, untiled_row_order, Kind,
    CONFIG_INTEGERS, FILE_TYPES,
};
use crate::matrix::ggml_name;
use crate::weights::WeightStore;

/// The tensor types a GGUF can be written in (`--type` takes their llama.cpp names, any case).
/// `_M`/`_S` mixes are not offered: every weight matrix gets the one type.
pub const EXPORT_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// The type of [`EXPORT_TYPES`] llama.cpp names `name` (case-insensitive: `q8_0`, `Q4_K`).
pub fn export_type(name: &str) -> Option<GgmlDType> {
    EXPORT_TYPES
        .iter()
        .copied()
        .find(|&t| ggml_name(t).eq_ignore_ascii_case(name))
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) of a file whose weight matrices are
/// `target`; the K-quants are the `_S` variants, the closest uniform mix llama.cpp names.
pub fn file_type(target: GgmlDType) -> u32 {
    let name = match target {
        GgmlDType::Q4K => "Q4_K_S",
        GgmlDType::Q5K => "Q5_K_S",
        other => ggml_name(other),
    };
    FILE_TYPES
        .iter()
        .find(|(_, n)| *n == name)
        // Not one of EXPORT_TYPES: llama.cpp's "guessed" marker.
        .map_or(1024, |&(code, _)| code)
}

/// The GGUF architecture name llama.cpp uses for `arch`.
pub fn architecture_key(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Qwen3Next => "qwen3next",
        Architecture::Qwen35 => "qwen35",
        Architecture::Qwen35Moe => "qwen35moe",
    }
}

/// The type tensor `name` (GGUF name, `dims` outermost first) is stored in when the weight
/// matrices are `target`: llama-quantize's rules (module docs).
pub fn stored_type(name: &str, dims: &[usize], target: GgmlDType) -> GgmlDType {
    let quantizable = dims.len() >= 2
        && name.ends_with("weight")
        && !name.ends_with("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("ssm_conv1d");
    if !quantizable {
        return GgmlDType::F32;
    }
    let row = dims.last().copied().unwrap_or(0);
    let fits = |t: GgmlDType| row % t.block_size() == 0;
    if fits(target) {
        return target;
    }
    let fallback = match target {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    };
    if fits(fallback) {
        fallback
    } else {
        GgmlDType::F16
    }
}

/// The model's GGUF metadata (everything but the tokenizer), as the converter writes it for
/// this config: `general.*` and the `<arch>.*` hyper-parameters. `name` is `general.name`.
pub fn model_metadata(
    config: &ModelConfig,
    hf_config: &serde_json::Value,
    name: &str,
    target: GgmlDType,
) -> Vec<(String, Value)> {
    let arch = architecture_key(config.architecture);
    let key = |k: &str| format!("{arch}.{k}");
    let u32_of = |v: usize| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
    ];
    // Plain integers: the converter writes a field when the config has it; ours are the
    // validated values, with the absent ones (0 or no MoE) left out as it leaves them out.
    let spec = config.gdn_spec();
    let moe = config.moe.as_ref();
    let integer = |field: &str| -> Option<usize> {
        let value = match field {
            "num_hidden_layers" => config.layer_types.len(),
            "hidden_size" => config.hidden_size,
            "intermediate_size" => config.intermediate_size,
            "max_position_embeddings" => config.max_position_embeddings,
            "num_attention_heads" => config.num_attention_heads,
            "num_key_value_heads" => config.num_key_value_heads,
            "head_dim" => config.head_dim,
            "linear_conv_kernel_dim" => spec.conv_kernel,
            "linear_key_head_dim" => spec.head_k_dim,
            "linear_num_key_heads" => spec.num_k_heads,
            "linear_num_value_heads" => spec.num_v_heads,
            "num_experts" => moe?.num_experts,
            "num_experts_per_tok" => moe?.num_experts_per_tok,
            "moe_intermediate_size" => moe?.moe_intermediate_size,
            "shared_expert_intermediate_size" => moe?.shared_expert_intermediate_size,
            // Written whatever the config says (the converter's default is 4).
            "full_attention_interval" => text_config(hf_config)
                .get("full_attention_interval")
                .and_then(serde_json::Value::as_u64)
                .map_or(4, |v| v as usize),
            _ => return None,
        };
        (value > 0).then_some(value)
    };
    for &(field, gguf) in CONFIG_INTEGERS {
        if let Some(v) = integer(field) {
            meta.push((key(gguf), u32_of(v)));
        }
    }
    meta.extend([
        (key("attention.value_length"), u32_of(config.head_dim)),
        (key("rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(config.rms_norm_eps as f32),
        ),
        (
            key("rope.dimension_count"),
            u32_of((config.head_dim as f64 * config.partial_rotary_factor) as usize),
        ),
        (
            key("ssm.inner_size"),
            u32_of(spec.head_v_dim * spec.num_v_heads),
        ),
        (
            key("attention.recurrent_layers"),
            Value::Array(
                config
                    .layer_types
                    .iter()
                    .map(|k| Value::Bool(*k == LayerKind::LinearAttention))
                    .collect(),
            ),
        ),
        ("general.file_type".into(), Value::U32(file_type(target))),
        ("general.quantization_version".into(), Value::U32(2)),
    ]);
    if config.architecture != Architecture::Qwen3Next {
        // Qwen3.5 always runs interleaved M-RoPE; llama.cpp requires the sections.
        let sections = mrope_sections(hf_config).unwrap_or([11, 11, 10, 0]);
        meta.push((
            key("rope.dimension_sections"),
            Value::Array(sections.iter().map(|&s| Value::I32(s)).collect()),
        ));
    }
    meta
}

/// The text model's fields: the top level, or `text_config` of a multimodal config.
fn text_config(hf_config: &serde_json::Value) -> &serde_json::Value {
    hf_config.get("text_config").unwrap_or(hf_config)
}

/// `mrope_section` from `rope_parameters` (or the older `rope_scaling`), padded to 4.
fn mrope_sections(hf_config: &serde_json::Value) -> Option<[i32; 4]> {
    let text = text_config(hf_config);
    let sections = ["rope_parameters", "rope_scaling"]
        .iter()
        .find_map(|k| text.get(k)?.get("mrope_section")?.as_array())?;
    let mut out = [0i32; 4];
    for (slot, value) in out.iter_mut().zip(sections) {
        *slot = i32::try_from(value.as_i64()?).ok()?;
    }
    Some(out)
}

/// Every tensor of the safetensors checkpoint in `store`, renamed, transformed and converted
/// as llama.cpp's converter and llama-quantize would (module docs), in GGUF order: the
/// embedding, each layer's tensors, the final norm and the output matrix.
pub fn export_tensors(
    store: &WeightStore,
    config: &ModelConfig,
    target: GgmlDType,
) -> Result<Vec<(String, QTensor)>> {
    let tiled = tiled_value_heads(config);
    let spec = config.gdn_spec();
    // BTreeMap by (layer, name): a stable order, the non-layer tensors around the layers.
    let mut out: BTreeMap<(usize, String), QTensor> = BTreeMap::new();
    let mut experts: BTreeMap<String, Vec<(usize, Tensor)>> = BTreeMap::new();
    let mut emit = |gguf: String, values: Tensor| -> Result<()> {
        let order = match gguf.strip_prefix("blk.") {
            Some(rest) => {
                1 + rest
                    .split('.')
                    .next()
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(0)
            }
            None if gguf == "token_embd.weight" => 0,
            None => usize::MAX,
        };
        // candle 0.11 quantizes a tensor's whole storage, not its view (and `copy` keeps the
        // whole storage too): a narrowed tensor gets storage of exactly its own values first.
        let mut dims = values.dims().to_vec();
        if target != GgmlDType::F32 {
            // llama-quantize writes each tensor with `ggml_n_dims` dimensions: outer (HF
            // leading) size-1 dimensions go, e.g. the shared-expert gate [1, H] becomes [H].
            while dims.len() > 1 && dims[0] == 1 {
                dims.remove(0);
            }
        }
        let flat = values
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let values = Tensor::from_vec(flat, dims.as_slice(), &candle_core::Device::Cpu)?;
        let ty = stored_type(&gguf, &dims, target);
        let tensor = QTensor::quantize(&values, ty).map_err(|e| {
            ModelError::InvalidOption(format!(
                "cannot store `{gguf}` {:?} as {ty:?}: {e}",
                values.dims()
            ))
        })?;
        out.insert((order, gguf), tensor);
        Ok(())
    };
    for name in store.tensor_names() {
        let Some(rest) = name
            .strip_prefix("model.language_model.")
            .or_else(|| name.strip_prefix("model."))
            .or_else(|| (name == "lm_head.weight").then_some(name))
        else {
            // Multi-token-prediction (`mtp.*`, dropped as with `--no-mtp`) and vision tensors.
            continue;
        };
        if rest == "lm_head.weight" && config.tie_word_embeddings {
            continue;
        }
        let stored = store.get_stored(name)?;
        // Qwen3-Next's fused q|k|v|z, interleaved per key head: two GGUF tensors.
        if rest.ends_with("linear_attn.in_proj_qkvz.weight") {
            let (rows, _) = deinterleave_rows(&spec);
            let ids = Tensor::new(rows.as_slice(), stored.device())?;
            let all = stored.index_select(&ids, 0)?;
            let prefix = name.trim_end_matches("in_proj_qkvz.weight");
            let (qkv, z) = (spec.conv_dim(), spec.value_dim());
            let parts = [("in_proj_qkv", 0, qkv), ("in_proj_z", qkv, z)];
            emit_parts(&mut emit, &all, 0, prefix, &parts)?;
            continue;
        }
        // Per-expert matrices: stacked once every expert of a layer is read.
        if let Some((layer_prefix, index, matrix)) = split_expert_name(name) {
            experts
                .entry(format!("{layer_prefix}.experts.{matrix}"))
                .or_default()
                .push((index, stored));
            continue;
        }
        // transformers ≥ 5 fuses gate and up: [E, 2I, H].
        if rest.ends_with("mlp.experts.gate_up_proj") {
            let half = stored.dim(1)? / 2;
            let prefix = name.trim_end_matches("gate_up_proj");
            let parts = [("gate_proj", 0, half), ("up_proj", half, half)];
            emit_parts(&mut emit, &stored, 1, prefix, &parts)?;
            continue;
        }
        let hf = if rest.ends_with("mlp.experts.down_proj") {
            format!("{name}.weight")
        } else {
            name.to_string()
        };
        let (gguf, kind) = gguf_tensor_name(&hf).ok_or_else(|| unmapped(name, config))?;
        let values = transform(&hf, kind, stored, tiled, spec.head_v_dim)?;
        emit(gguf, values)?;
    }
    for (stack, mut members) in experts {
        members.sort_by_key(|(index, _)| *index);
        let count = config.moe.as_ref().map_or(0, |m| m.num_experts);
        if members.len() != count || members.iter().enumerate().any(|(i, (e, _))| i != *e) {
            return Err(ModelError::InvalidOption(format!(
                "`{stack}.*`: found experts {:?}, the config has {count}",
                members.iter().map(|(e, _)| e).collect::<Vec<_>>()
            )));
        }
        let tensors: Vec<Tensor> = members.into_iter().map(|(_, t)| t).collect();
        emit(
            gguf_name(&format!("{stack}.weight"))?,
            Tensor::stack(&tensors, 0)?,
        )?;
    }
    Ok(out.into_iter().map(|((_, name), t)| (name, t)).collect())
}

/// The converter's transformation of one HF tensor (module docs), in the stored dtype where
/// torch computes in it.
fn transform(
    hf: &str,
    kind: Kind,
    stored: Tensor,
    tiled: Option<(usize, usize, usize)>,
    head_v_dim: usize,
) -> Result<Tensor> {
    // The converter widens to f32 before its arithmetic (+1, −exp): so does this.
    let mut values = stored.to_dtype(DType::F32)?;
    if hf.ends_with("norm.weight") && !hf.ends_with("linear_attn.norm.weight") {
        values = (values + 1.0)?;
    }
    if kind == Kind::DecayRate {
        values = values.exp()?.neg()?;
    }
    if kind == Kind::ConvChannels {
        // [C, 1, K] → [C, K]
        let dims: Vec<usize> = values.dims().iter().copied().filter(|&d| d != 1).collect();
        values = values.reshape(dims)?;
    }
    let Some(layout) = tiled else {
        return Ok(values);
    };
    let device = values.device().clone();
    if hf.ends_with("linear_attn.out_proj.weight") {
        let (hk, r, _) = layout;
        let order = tiled_channel_order(hk, r, head_v_dim);
        return Ok(values.index_select(&Tensor::new(order.as_slice(), &device)?, 1)?);
    }
    let rows = values.dims().first().copied().unwrap_or(0);
    match untiled_row_order(layout, kind, rows) {
        Some(untiled) => {
            // HF row i is stored at untiled[i]: invert to read stored row t from HF.
            let mut order = vec![0u32; untiled.len()];
            for (hf_row, &stored_row) in untiled.iter().enumerate() {
                order[stored_row as usize] = hf_row as u32;
            }
            Ok(values.index_select(&Tensor::new(order.as_slice(), &device)?, 0)?)
        }
        None => Ok(values),
    }
}

/// Hands `(start, len)` slices of `tensor` along `dim` to `emit` as the GGUF tensors of the HF
/// names `<prefix><matrix>.weight` (one fused HF tensor that the converter splits in two).
fn emit_parts(
    emit: &mut dyn FnMut(String, Tensor) -> Result<()>,
    tensor: &Tensor,
    dim: usize,
    prefix: &str,
    parts: &[(&str, usize, usize)],
) -> Result<()> {
    for &(matrix, start, len) in parts {
        emit(
            gguf_name(&format!("{prefix}{matrix}.weight"))?,
            tensor.narrow(dim, start, len)?,
        )?;
    }
    Ok(())
}

/// `<prefix>.mlp.experts.<N>.<matrix>.weight` → (`<prefix>.mlp`, N, `<matrix>`).
fn split_expert_name(name: &str) -> Option<(&str, usize, &str)> {
    let (layer_prefix, rest) = name.split_once(".experts.")?;
    let (index, rest) = rest.split_once('.')?;
    let index = index.parse().ok()?;
    let matrix = rest.strip_suffix(".weight")?;
    Some((layer_prefix, index, matrix))
}

fn gguf_name(hf: &str) -> Result<String> {
    gguf_tensor_name(hf)
        .map(|(name, _)| name)
        .ok_or_else(|| ModelError::InvalidOption(format!("no GGUF name for `{hf}`")))
}

fn unmapped(name: &str, config: &ModelConfig) -> ModelError {
    ModelError::InvalidOption(format!(
        "tensor `{name}` has no counterpart in llama.cpp's `{}` GGUF layout; \
         the file would not load there",
        architecture_key(config.architecture)
    ))
}
