//! `config.json` in HF's field names, normalised into one [`ModelConfig`] for all three
//! architectures (Qwen3-Next, Qwen3.5 dense, Qwen3.5 MoE), including the nested `text_config` of
//! multimodal Qwen3.5 checkpoints and both rope spellings (`rope_parameters` and legacy
//! `rope_theta` / `partial_rotary_factor`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Which model family the checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `Qwen3NextForCausalLM`: interleaved `in_proj_qkvz` / `in_proj_ba`, sparse MoE.
    Qwen3Next,
    /// `Qwen3_5ForCausalLM` (or the text tower of the multimodal model): split projections, dense MLP.
    Qwen35,
    /// `Qwen3_5MoeForCausalLM`: split projections, sparse MoE in every layer.
    Qwen35Moe,
}

/// Token mixer of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet (`linear_attention`).
    LinearAttention,
    /// Gated softmax attention (`full_attention`).
    FullAttention,
}

/// Mixture-of-experts settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub num_experts_per_tok: usize,
    /// Width of each routed expert.
    pub moe_intermediate_size: usize,
    /// Width of the shared expert (0: none).
    pub shared_expert_intermediate_size: usize,
    /// Renormalise the top-k probabilities to sum to one.
    pub norm_topk_prob: bool,
    /// Every `decoder_sparse_step`-th layer is MoE (1: all).
    pub decoder_sparse_step: usize,
    /// Layers that use a dense MLP even so.
    pub mlp_only_layers: Vec<usize>,
}

/// The normalised configuration the model is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Model family.
    pub architecture: Architecture,
    /// Vocabulary size (embedding and lm_head rows).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Dense MLP width.
    pub intermediate_size: usize,
    /// Mixer of each layer.
    pub layer_types: Vec<LayerKind>,
    /// Attention query heads.
    pub num_attention_heads: usize,
    /// Attention key/value heads.
    pub num_key_value_heads: usize,
    /// Attention head dim.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rope base.
    pub rope_theta: f64,
    /// Fraction of each attention head that is rotated.
    pub partial_rotary_factor: f64,
    /// Longest sequence the model supports.
    pub max_position_embeddings: usize,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Attention projections have biases.
    pub attention_bias: bool,
    /// GDN conv kernel size.
    pub linear_conv_kernel_dim: usize,
    /// GDN key head dim.
    pub linear_key_head_dim: usize,
    /// GDN value head dim.
    pub linear_value_head_dim: usize,
    /// GDN key heads.
    pub linear_num_key_heads: usize,
    /// GDN value heads.
    pub linear_num_value_heads: usize,
    /// MoE settings, `None` for dense models.
    pub moe: Option<MoeConfig>,
    /// True when the weights live under `model.language_model.` (multimodal checkpoints).
    pub nested_text_config: bool,
}

/// config.json fields in HF names; all optional so that defaults and errors are ours.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    text_config: Option<Value>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    rope_parameters: Option<RawRope>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rope_scaling: Option<Value>,
    attention_bias: Option<bool>,
    linear_conv_kernel_dim: Option<usize>,
    linear_key_head_dim: Option<usize>,
    linear_value_head_dim: Option<usize>,
    linear_num_key_heads: Option<usize>,
    linear_num_value_heads: Option<usize>,
    decoder_sparse_step: Option<usize>,
    moe_intermediate_size: Option<usize>,
    shared_expert_intermediate_size: Option<usize>,
    num_experts_per_tok: Option<usize>,
    num_experts: Option<usize>,
    norm_topk_prob: Option<bool>,
    mlp_only_layers: Option<Vec<usize>>,
    layer_types: Option<Vec<String>>,
    full_attention_interval: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
}

/// HF's `default_theta`.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl ModelConfig {
    /// Reads and normalises `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads and normalises a config.json file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Normalises config.json text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let syntax = |e: serde_json::Error| ModelError::ConfigSyntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let outer: RawConfig = serde_json::from_str(text).map_err(syntax)?;
        let outer_type = outer
            .model_type
            .clone()
            .ok_or_else(|| ModelError::ConfigField {
                path: path.to_path_buf(),
                field: "model_type".into(),
                problem: "is missing (expected qwen3_next, qwen3_5 or qwen3_5_moe)".into(),
            })?;
        // Multimodal Qwen3.5 checkpoints nest the language model's fields in `text_config`.
        let (raw, nested) = match &outer.text_config {
            Some(inner) => {
                let mut inner: RawConfig = serde_json::from_value(inner.clone()).map_err(syntax)?;
                inner.tie_word_embeddings = inner.tie_word_embeddings.or(outer.tie_word_embeddings);
                inner.model_type = inner.model_type.or(Some(outer_type.clone()));
                (inner, true)
            }
            None => (outer, false),
        };
        Normaliser {
            path: path.to_path_buf(),
            raw,
        }
        .build(nested)
    }

    /// Number of decoder layers.
    pub fn num_hidden_layers(&self) -> usize {
        self.layer_types.len()
    }

    /// True when layer `layer` uses the sparse MoE block.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|moe| {
            !moe.mlp_only_layers.contains(&layer)
                && moe.num_experts > 0
                && (layer + 1).is_multiple_of(moe.decoder_sparse_step.max(1))
        })
    }

    /// Dimensions rotated by rope in each attention head.
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }

    /// The GDN layer spec every linear-attention layer shares.
    pub fn gdn_spec(&self) -> hybrid_gdn::LayerSpec {
        hybrid_gdn::LayerSpec {
            num_k_heads: self.linear_num_key_heads,
            num_v_heads: self.linear_num_value_heads,
            head_k_dim: self.linear_key_head_dim,
            head_v_dim: self.linear_value_head_dim,
            conv_kernel: self.linear_conv_kernel_dim,
        }
    }
}

/// The largest value accepted for a size field: far above any released model (Qwen3-Next-80B
/// has 48 layers, hidden 2048, 512 experts, a 151 936-token vocabulary), small enough that every
/// product of sizes this engine forms fits in 64 bits and no allocation is sized by a typo.
fn size_limit(field: &str) -> usize {
    match field {
        "num_hidden_layers" | "full_attention_interval" | "decoder_sparse_step" => 4096,
        "vocab_size" => 1 << 24,
        "max_position_embeddings" => 1 << 30,
        "num_experts" | "num_experts_per_tok" => 1 << 14,
        "linear_conv_kernel_dim" => 1 << 10,
        f if f.contains("heads") || f.contains("head_dim") => 1 << 14,
        // hidden_size and the intermediate widths
        _ => 1 << 20,
    }
}

struct Normaliser {
    path: PathBuf,
    raw: RawConfig,
}

impl Normaliser {
    fn field_error(&self, field: &str, problem: impl Into<String>) -> ModelError {
        ModelError::ConfigField {
            path: self.path.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn required(&self, field: &str, value: Option<usize>) -> Result<usize> {
        match value {
            Some(0) => Err(self.field_error(field, "must be at least 1")),
            Some(v) => self.bounded(field, v),
            None => Err(self.field_error(field, "is missing")),
        }
    }

    /// `value` if it is within [`size_limit`] for `field`.
    fn bounded(&self, field: &str, value: usize) -> Result<usize> {
        let limit = size_limit(field);
        if value > limit {
            return Err(self.field_error(
                field,
                format!("is {value}; at most {limit} is supported (is the config corrupt?)"),
            ));
        }
        Ok(value)
    }

    fn build(self, nested: bool) -> Result<ModelConfig> {
        let r = &self.raw;
        let model_type = r.model_type.clone().unwrap_or_default();
        let architecture = match model_type.as_str() {
            "qwen3_next" => Architecture::Qwen3Next,
            "qwen3_5" | "qwen3_5_text" => Architecture::Qwen35,
            "qwen3_5_moe" | "qwen3_5_moe_text" => Architecture::Qwen35Moe,
            _ => {
                return Err(ModelError::UnsupportedModelType {
                    path: self.path.clone(),
                    model_type,
                })
            }
        };
        if let Some(act) = &r.hidden_act {
            if act != "silu" {
                return Err(self.field_error(
                    "hidden_act",
                    format!("is `{act}`; only `silu` is implemented"),
                ));
            }
        }
        let num_hidden_layers = self.required("num_hidden_layers", r.num_hidden_layers)?;
        if let Some(interval) = r.full_attention_interval {
            self.bounded("full_attention_interval", interval)?;
        }
        let layer_types = self.layer_types(num_hidden_layers)?;
        let (rope_theta, partial_rotary_factor) = self.rope()?;
        let hidden_size = self.required("hidden_size", r.hidden_size)?;
        let num_attention_heads = self.required("num_attention_heads", r.num_attention_heads)?;
        let num_key_value_heads = r.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.field_error(
                "num_key_value_heads",
                format!("({num_key_value_heads}) must divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let moe = match architecture {
            Architecture::Qwen35 => None,
            Architecture::Qwen3Next | Architecture::Qwen35Moe => Some(MoeConfig {
                num_experts: self.required("num_experts", r.num_experts)?,
                num_experts_per_tok: self.required("num_experts_per_tok", r.num_experts_per_tok)?,
                moe_intermediate_size: self
                    .required("moe_intermediate_size", r.moe_intermediate_size)?,
                shared_expert_intermediate_size: self.bounded(
                    "shared_expert_intermediate_size",
                    r.shared_expert_intermediate_size.unwrap_or(0),
                )?,
                // Qwen3.5-MoE always renormalises; Qwen3-Next reads the flag (default true).
                norm_topk_prob: architecture == Architecture::Qwen35Moe
                    || r.norm_topk_prob.unwrap_or(true),
                decoder_sparse_step: self
                    .bounded("decoder_sparse_step", r.decoder_sparse_step.unwrap_or(1))?
                    .max(1),
                mlp_only_layers: r.mlp_only_layers.clone().unwrap_or_default(),
            }),
        };
        if let Some(moe) = &moe {
            if moe.num_experts_per_tok > moe.num_experts {
                return Err(self.field_error(
                    "num_experts_per_tok",
                    format!(
                        "({}) exceeds num_experts ({})",
                        moe.num_experts_per_tok, moe.num_experts
                    ),
                ));
            }
        }
        let intermediate_size = match (&moe, r.intermediate_size) {
            (_, Some(v)) => self.bounded("intermediate_size", v)?,
            (Some(_), None) => 0,
            (None, None) => self.required("intermediate_size", None)?,
        };
        let config = ModelConfig {
            architecture,
            vocab_size: self.required("vocab_size", r.vocab_size)?,
            hidden_size,
            intermediate_size,
            layer_types,
            num_attention_heads,
            num_key_value_heads,
            // HF's config classes default head_dim to 256 (not hidden / heads).
            head_dim: self.required("head_dim", Some(r.head_dim.unwrap_or(256)))?,
            rms_norm_eps: self.rms_norm_eps()?,
            rope_theta,
            partial_rotary_factor,
            max_position_embeddings: self
                .required("max_position_embeddings", r.max_position_embeddings)?,
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(false),
            attention_bias: r.attention_bias.unwrap_or(false),
            linear_conv_kernel_dim: self.required(
                "linear_conv_kernel_dim",
                Some(r.linear_conv_kernel_dim.unwrap_or(4)),
            )?,
            linear_key_head_dim: self.required("linear_key_head_dim", r.linear_key_head_dim)?,
            linear_value_head_dim: self
                .required("linear_value_head_dim", r.linear_value_head_dim)?,
            linear_num_key_heads: self.required("linear_num_key_heads", r.linear_num_key_heads)?,
            linear_num_value_heads: self
                .required("linear_num_value_heads", r.linear_num_value_heads)?,
            moe,
            nested_text_config: nested,
        };
        // Every field is bounded above, so these products cannot overflow 64 bits; the GDN
        // spec's own check covers head divisibility and its state sizes.
        config
            .gdn_spec()
            .validate()
            .map_err(|e| self.field_error("linear_num_value_heads", e.to_string()))?;
        Ok(config)
    }

    /// `rms_norm_eps` (default 1e-6): finite and not negative, or every norm would be NaN.
    fn rms_norm_eps(&self) -> Result<f64> {
        let eps = self.raw.rms_norm_eps.unwrap_or(1e-6);
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(self.field_error(
                "rms_norm_eps",
                format!("is {eps}; it must be a finite number ≥ 0 (typically 1e-6)"),
            ));
        }
        Ok(eps)
    }

    /// `layer_types` when present, else every `full_attention_interval`-th layer (default 4) is
    /// full attention, as HF's config classes derive it.
    fn layer_types(&self, layers: usize) -> Result<Vec<LayerKind>> {
        match &self.raw.layer_types {
            Some(types) => {
                if types.len() != layers {
                    return Err(self.field_error(
                        "layer_types",
                        format!(
                            "has {} entries but num_hidden_layers is {layers}",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "linear_attention" => Ok(LayerKind::LinearAttention),
                        "full_attention" => Ok(LayerKind::FullAttention),
                        other => Err(self.field_error(
                            "layer_types",
                            format!(
                                "contains `{other}`; expected linear_attention or full_attention"
                            ),
                        )),
                    })
                    .collect()
            }
            None => {
                let interval = self.raw.full_attention_interval.unwrap_or(4);
                if interval == 0 {
                    return Err(self.field_error("full_attention_interval", "must be at least 1"));
                }
                Ok((0..layers)
                    .map(|i| {
                        if (i + 1) % interval == 0 {
                            LayerKind::FullAttention
                        } else {
                            LayerKind::LinearAttention
                        }
                    })
                    .collect())
            }
        }
    }

    /// `(rope_theta, partial_rotary_factor)` from `rope_parameters` or the legacy fields.
    fn rope(&self) -> Result<(f64, f64)> {
        let r = &self.raw;
        let params = r.rope_parameters.as_ref();
        if let Some(kind) = params.and_then(|p| p.rope_type.as_deref()) {
            if kind != "default" {
                return Err(self.field_error(
                    "rope_parameters.rope_type",
                    format!("is `{kind}`; only `default` rope is implemented"),
                ));
            }
        }
        if let Some(scaling) = &r.rope_scaling {
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type"));
            if !scaling.is_null() && kind.and_then(Value::as_str) != Some("default") {
                return Err(self.field_error(
                    "rope_scaling",
                    "is set; rope scaling is not implemented (only `default` rope)",
                ));
            }
        }
        let (theta_field, theta) = match (params.and_then(|p| p.rope_theta), r.rope_theta) {
            (Some(t), _) => ("rope_parameters.rope_theta", t),
            (None, Some(t)) => ("rope_theta", t),
            (None, None) => ("rope_theta", DEFAULT_ROPE_THETA),
        };
        if !(theta.is_finite() && theta > 0.0) {
            return Err(self.field_error(
                theta_field,
                format!("is {theta}; it must be a finite number > 0 (e.g. 10000000)"),
            ));
        }
        // HF's Qwen3-Next / Qwen3.5 configs default the factor to 0.25 for old checkpoints.
        let factor = params
            .and_then(|p| p.partial_rotary_factor)
            .or(r.partial_rotary_factor)
            .unwrap_or(0.25);
        if !(factor > 0.0 && factor <= 1.0) {
            return Err(self.field_error(
                "partial_rotary_factor",
                format!("is {factor}; it must be in (0, 1]"),
            ));
        }
        Ok((theta, factor))
    }
}
