//! GGUF files as llama.cpp's converter writes these models (architectures `qwen35`,
//! `qwen35moe`, `qwen3next`), read with candle's `gguf_file` reader.
//!
//! The model is built from HF tensor names everywhere; this module answers those names from the
//! GGUF tensors and undoes every transformation `convert_hf_to_gguf.py` applies (llama.cpp
//! upstream 0c1e57098, `conversion/qwen.py`), so the numbers reaching the model are HF's:
//!
//! | HF | GGUF | converter's transformation, undone here |
//! |---|---|---|
//! | zero-centred `*norm.weight` | `attn_norm`, `post_attention_norm`, `output_norm`, `attn_{q,k}_norm` | stores `1 + w`; used as the scale directly |
//! | `linear_attn.A_log` | `ssm_a` | stores `−exp(A_log)`; we take `ln(−ssm_a)` |
//! | `linear_attn.dt_bias` | `ssm_dt.bias` | renamed |
//! | `linear_attn.conv1d.weight` `[C, 1, K]` | `ssm_conv1d` `[C, K]` | squeezed |
//! | Qwen3-Next `in_proj_qkvz` | `attn_qkv` + `attn_gate` | de-interleaved into `q|k|v` and `z` (the Qwen3.5 layout) |
//! | Qwen3-Next `in_proj_ba` | `ssm_ba` | none (still interleaved per key head) |
//! | Qwen3.5 `in_proj_{qkv,z,b,a}` | `attn_qkv`, `attn_gate`, `ssm_beta`, `ssm_alpha` | value heads reordered (below) |
//! | MoE `experts.N.{gate,up,down}_proj` | `ffn_{gate,up,down}_exps` `[E, out, in]` | stacked |
//!
//! Qwen3.5 with fewer key than value heads: the converter reorders value heads from grouped
//! (`g·r + j`, HF's `repeat_interleave`) to tiled (`j·Hk + g`) order in every value-head-indexed
//! tensor. Rows are put back in HF order on load (whole rows of blocks, so quantized weights
//! stay as they are); `out_proj` is indexed by value head along its *columns*, which cannot be
//! permuted inside quantized blocks, so its input is permuted instead
//! ([`GgufCheckpoint::value_head_order`]).
//!
//! Nothing is sized from an unchecked header value: candle bounds every count and string by the
//! file size, and [`GgufCheckpoint::open`] checks each tensor's shape, type, alignment and byte
//! range (inside the file, no overlaps) before any tensor is read.
//!
//! Quantized tensors are used in place from a read-only memory map of the file (one copy of the
//! weights, shared with the page cache, as llama.cpp does); `--no-mmap`
//! ([`GgufCheckpoint::memory_map`]) reads them into memory instead. Tensors whose rows are put
//! back in HF order, and dense F32/F16/BF16 tensors, are read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Tensor;

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::mapped_blocks::map_tensor;
use crate::matrix::{ggml_name, read_matrix, Matrix};

/// Tensor types a GGUF weight may have (candle can multiply by all of them).
const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, \
                               Q5_K, Q6_K";

/// `(HF config.json field, GGUF key without the `<arch>.` prefix)` of every plain integer of
/// the config: read by [`GgufCheckpoint::config`], written by [`crate::gguf_export`].
pub(crate) const CONFIG_INTEGERS: &[(&str, &str)] = &[
    ("num_hidden_layers", "block_count"),
    ("hidden_size", "embedding_length"),
    ("intermediate_size", "feed_forward_length"),
    ("max_position_embeddings", "context_length"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("head_dim", "attention.key_length"),
    ("linear_conv_kernel_dim", "ssm.conv_kernel"),
    ("linear_key_head_dim", "ssm.state_size"),
    ("linear_num_key_heads", "ssm.group_count"),
    ("linear_num_value_heads", "ssm.time_step_rank"),
    ("num_experts", "expert_count"),
    ("num_experts_per_tok", "expert_used_count"),
    ("moe_intermediate_size", "expert_feed_forward_length"),
    (
        "shared_expert_intermediate_size",
        "expert_shared_feed_forward_length",
    ),
    ("full_attention_interval", "full_attention_interval"),
];

/// llama.cpp's `general.file_type` codes (`enum llama_ftype`) and the names it prints.
pub(crate) const FILE_TYPES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (32, "BF16"),
];

/// A GGUF checkpoint: the header, the tensor directory and the open file.
///
/// Tensors are read with plain reads into the buffers the model keeps, not through a memory
/// map: a map's pages would count in the process's resident set next to those buffers and
/// double the peak while loading.
pub struct GgufCheckpoint {
    path: PathBuf,
    file: Mutex<File>,
    len: u64,
    arch: Architecture,
    arch_key: String,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
    data_offset: u64,
    /// `(Hk, r, dk)` when value heads are stored tiled (Qwen3.5 with Hk < Hv), from the config.
    tiled: Option<(usize, usize, usize)>,
    /// Quantized tensors are mapped from the file rather than read (see [`Self::memory_map`]).
    memory_map: bool,
}

impl std::fmt::Debug for GgufCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufCheckpoint")
            .field("path", &self.path)
            .field("arch", &self.arch_key)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufCheckpoint {
    /// Opens `path` and checks its header and tensor directory.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| ModelError::BadGguf {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if meta.len() < 4 || reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(bad(
                "wrong magic bytes (a GGUF file starts with `GGUF`); is this a safetensors \
                 file or a model directory?"
                    .into(),
            ));
        }
        // candle also takes GGUF v1, whose lengths are 32-bit: a v3 file with a bad version
        // field would be misread as one.
        let mut version = [0u8; 4];
        if reader.read_exact(&mut version).is_err() {
            return Err(bad("the file ends inside the header (truncated?)".into()));
        }
        let version = u32::from_le_bytes(version);
        if !matches!(version, 2 | 3) {
            return Err(bad(format!(
                "GGUF version {version} is not supported (this engine reads versions 2 and 3, \
                 which llama.cpp writes)"
            )));
        }
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        // candle's reader divides by `general.alignment` unchecked: 0 there panics.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)))
                .map_err(|_| {
                bad("malformed header (`general.alignment` must be a non-zero power of two)".into())
            })?;
        let content = read.map_err(|mut e| {
            // candle attaches a backtrace when RUST_BACKTRACE is set; keep the message one line.
            while let candle_core::Error::WithBacktrace { inner, .. } = e {
                e = *inner;
            }
            let text = e.to_string();
            if let Some(id) = text
                .strip_prefix("unknown dtype for tensor ")
                .and_then(|id| id.parse::<u32>().ok())
            {
                bad(format!(
                    "a tensor has GGML type {id} ({}), which this engine does not read \
                     (supported: {SUPPORTED_TYPES}); re-quantize it with llama-quantize to one \
                     of those",
                    ggml_type_name(id)
                ))
            } else {
                bad(format!(
                    "{text} (the file is truncated or not a GGUF v2/v3 file)"
                ))
            }
        })?;
        match content.metadata.get("general.alignment") {
            None => {}
            Some(Value::U32(a)) if a.is_power_of_two() => {}
            Some(v) => {
                return Err(meta_error(
                    path,
                    "general.alignment",
                    &format!("must be a u32 power of two, found {v:?}"),
                ))
            }
        }
        let arch_key = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(meta_error(path, "general.architecture", "is not a string")),
            None => return Err(meta_error(path, "general.architecture", "is missing")),
        };
        let arch = match arch_key.as_str() {
            "qwen35" => Architecture::Qwen35,
            "qwen35moe" => Architecture::Qwen35Moe,
            "qwen3next" => Architecture::Qwen3Next,
            other => {
                return Err(ModelError::UnsupportedGgufArchitecture {
                    path: path.to_path_buf(),
                    architecture: other.to_string(),
                })
            }
        };
        let checkpoint = GgufCheckpoint {
            path: path.to_path_buf(),
            arch,
            arch_key,
            metadata: content.metadata,
            tensors: content.tensor_infos,
            data_offset: content.tensor_data_offset,
            file: Mutex::new(reader.into_inner()),
            len: meta.len(),
            tiled: None,
            memory_map: true,
        };
        checkpoint.check_tensor_directory()?;
        Ok(checkpoint)
    }

    /// Whether quantized tensors are used in place from a read-only memory map of the file
    /// (the default, as llama.cpp does: one copy of the weights, shared with the page cache) or
    /// read into memory of the process (`--no-mmap`: for a file that may change while it is in
    /// use, or a file system that cannot map). Dense F32/F16/BF16 tensors are always read.
    pub fn memory_map(mut self, enabled: bool) -> Self {
        self.memory_map = enabled;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor inside the file, in bounds, aligned, of a readable type, and not
    /// overlapping another.
    fn check_tensor_directory(&self) -> Result<()> {
        let mut extents = Vec::with_capacity(self.tensors.len());
        for (name, info) in &self.tensors {
            let bad = |problem: String| ModelError::BadGgufTensor {
                path: self.path.clone(),
                name: name.clone(),
                problem,
            };
            let dtype = info.ggml_dtype;
            if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
                return Err(bad(format!(
                    "has type {}, an activation-only type no weight is stored in (supported: \
                     {SUPPORTED_TYPES})",
                    ggml_name(dtype)
                )));
            }
            let dims = info.shape.dims();
            let elements = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("has shape {dims:?}, too large to address")))?;
            let block = dtype.block_size();
            let row = dims.last().copied().unwrap_or(1);
            if row % block != 0 {
                return Err(bad(format!(
                    "has rows of {row} values, not a multiple of the {}-value blocks of {}",
                    block,
                    ggml_name(dtype)
                )));
            }
            let bytes = ((elements / block) as u64)
                .checked_mul(dtype.type_size() as u64)
                .ok_or_else(|| bad(format!("has shape {dims:?}, too large to address")))?;
            let start = self
                .data_offset
                .checked_add(info.offset)
                .ok_or_else(|| bad("has an offset beyond any file".into()))?;
            let end = start
                .checked_add(bytes)
                .filter(|&end| end <= self.len)
                .ok_or_else(|| {
                    bad(format!(
                        "needs bytes {start}..{} but the file has {} (truncated download?)",
                        start.saturating_add(bytes),
                        self.len
                    ))
                })?;
            // Every block type's alignment divides 4; the format aligns data to 32.
            if start % 4 != 0 {
                return Err(bad(format!(
                    "starts at byte {start}, which is not 4-aligned"
                )));
            }
            extents.push((start, end, name));
        }
        extents.sort();
        for pair in extents.windows(2) {
            let ((_, end_a, a), (start_b, _, b)) = (&pair[0], &pair[1]);
            if start_b < end_a {
                return Err(ModelError::BadGgufTensor {
                    path: self.path.clone(),
                    name: (*b).clone(),
                    problem: format!("overlaps tensor `{a}` in the file"),
                });
            }
        }
        Ok(())
    }

    /// The model family.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// The weight format llama.cpp names in `general.file_type` (`Q4_K_M`, …), or the type of
    /// the token embedding when that key is absent.
    pub fn file_type(&self) -> String {
        let named = self
            .metadata
            .get("general.file_type")
            .and_then(as_u64)
            .and_then(|code| FILE_TYPES.iter().find(|(c, _)| u64::from(*c) == code))
            .map(|&(_, name)| name);
        match named {
            Some(name) => name.to_string(),
            None => self
                .tensors
                .get("token_embd.weight")
                .map_or("unknown", |t| ggml_name(t.ggml_dtype))
                .to_string(),
        }
    }

    /// The normalised config, from the GGUF metadata and tensor shapes, validated by the same
    /// rules as a config.json (the HF field names are mapped to the GGUF keys in errors).
    pub fn config(&mut self) -> Result<ModelConfig> {
        let arch = self.arch_key.clone();
        let key = |k: &str| format!("{arch}.{k}");
        let mut fields = serde_json::Map::new();
        let model_type = match self.arch {
            Architecture::Qwen3Next => "qwen3_next",
            Architecture::Qwen35 => "qwen3_5_text",
            Architecture::Qwen35Moe => "qwen3_5_moe_text",
        };
        fields.insert("model_type".into(), model_type.into());
        for &(field, gguf) in CONFIG_INTEGERS {
            if let Some(v) = self.meta_usize(&key(gguf))? {
                // llama.cpp writes 0 for an absent dense FFN in MoE models.
                if !(field == "intermediate_size" && v == 0) {
                    fields.insert(field.into(), v.into());
                }
            }
        }
        if let Some(eps) = self.meta_f64(&key("attention.layer_norm_rms_epsilon"))? {
            fields.insert("rms_norm_eps".into(), eps.into());
        }
        if let Some(theta) = self.meta_f64(&key("rope.freq_base"))? {
            fields.insert("rope_theta".into(), theta.into());
        }
        let head_dim = self.meta_usize(&key("attention.key_length"))?;
        if let (Some(value_len), Some(key_len)) =
            (self.meta_usize(&key("attention.value_length"))?, head_dim)
        {
            if value_len != key_len {
                return Err(meta_error(
                    &self.path,
                    &key("attention.value_length"),
                    &format!("is {value_len} but attention.key_length is {key_len}; these models use one head dim"),
                ));
            }
        }
        if let (Some(rotary), Some(head_dim)) =
            (self.meta_usize(&key("rope.dimension_count"))?, head_dim)
        {
            if head_dim > 0 {
                fields.insert(
                    "partial_rotary_factor".into(),
                    (rotary as f64 / head_dim as f64).into(),
                );
            }
        }
        // The value head dim is ssm.inner_size / ssm.time_step_rank.
        if let (Some(inner), Some(heads)) = (
            self.meta_usize(&key("ssm.inner_size"))?,
            self.meta_usize(&key("ssm.time_step_rank"))?,
        ) {
            if heads == 0 || inner % heads != 0 {
                return Err(meta_error(
                    &self.path,
                    &key("ssm.inner_size"),
                    &format!("({inner}) is not a multiple of ssm.time_step_rank ({heads})"),
                ));
            }
            fields.insert("linear_value_head_dim".into(), (inner / heads).into());
        }
        let recurrent = self.metadata.get(&key("attention.recurrent_layers"));
        if let Some(v) = recurrent.filter(|v| !matches!(v, Value::Array(_))) {
            return Err(meta_error(
                &self.path,
                &key("attention.recurrent_layers"),
                &format!("must be an array of booleans, found {v:?}"),
            ));
        }
        if let Some(Value::Array(flags)) = recurrent {
            let types: Vec<serde_json::Value> = flags
                .iter()
                .map(|f| match f {
                    Value::Bool(true) => Ok("linear_attention".into()),
                    Value::Bool(false) => Ok("full_attention".into()),
                    _ => Err(meta_error(
                        &self.path,
                        &key("attention.recurrent_layers"),
                        "must be an array of booleans",
                    )),
                })
                .collect::<Result<_>>()?;
            fields.insert("layer_types".into(), types.into());
        }
        if let Some(norm) = self.metadata.get(&key("expert_weights_norm")) {
            fields.insert(
                "norm_topk_prob".into(),
                matches!(norm, Value::Bool(true)).into(),
            );
        }
        let embed = self
            .tensors
            .get("token_embd.weight")
            .ok_or_else(|| self.missing("token_embd.weight"))?;
        let vocab = match embed.shape.dims() {
            [vocab, _] => *vocab,
            dims => {
                return Err(ModelError::BadGgufTensor {
                    path: self.path.clone(),
                    name: "token_embd.weight".into(),
                    problem: format!(
                        "has shape {dims:?}; the token embedding must be 2-D [vocab, hidden]"
                    ),
                })
            }
        };
        fields.insert("vocab_size".into(), vocab.into());
        fields.insert(
            "tie_word_embeddings".into(),
            (!self.tensors.contains_key("output.weight")).into(),
        );
        let bias = self.tensors.keys().any(|n| n.ends_with("attn_q.bias"));
        fields.insert("attention_bias".into(), bias.into());
        let json = serde_json::Value::Object(fields).to_string();
        let config = ModelConfig::from_json(&json, &self.path).map_err(|e| match e {
            ModelError::ConfigField {
                path,
                field,
                problem,
            } => {
                let gguf = CONFIG_INTEGERS
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map(|(_, g)| key(g))
                    .unwrap_or_else(|| format!("{field} (from the GGUF metadata)"));
                ModelError::ConfigField {
                    path,
                    field: gguf,
                    problem,
                }
            }
            other => other,
        })?;
        self.tiled = tiled_value_heads(&config);
        Ok(config)
    }

    /// The order of `out_proj`'s input columns when value heads are stored tiled: entry `t`
    /// is the HF-order value channel that belongs at position `t`. `None` in HF order.
    pub fn value_head_order(&self, head_v_dim: usize) -> Option<Vec<u32>> {
        let (hk, r, _) = self.tiled?;
        Some(tiled_channel_order(hk, r, head_v_dim))
    }

    /// True when the HF tensor `name` has a GGUF counterpart in this file.
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(name)
            .is_some_and(|(gguf, _)| self.tensors.contains_key(&gguf))
    }

    /// The HF tensor `name` as a weight matrix in its stored format, shape-checked.
    pub fn matrix(&self, name: &str, expected: &[usize]) -> Result<Matrix> {
        let (gguf, kind) = self.resolve(name)?;
        let matrix = self.read(&gguf)?;
        let matrix = match self.untile_rows(kind, matrix.dims().first().copied().unwrap_or(0)) {
            Some(rows) => matrix.select_rows(&rows)?,
            None => matrix,
        };
        if matrix.dims() == expected {
            return Ok(matrix);
        }
        // llama-quantize writes some `[1, n]` tensors as `[n]`; the row length must not change.
        if squeezed(matrix.dims()) == squeezed(expected) && matrix.dims().last() == expected.last()
        {
            return matrix.reshape(expected);
        }
        Err(self.shape_error(name, &gguf, expected, matrix.dims()))
    }

    /// The HF tensor `name` as f32 in HF's values and shape (norm scales come from
    /// [`GgufCheckpoint::norm_scale`] instead).
    pub fn tensor_f32(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let (gguf, kind) = self.resolve(name)?;
        let values = self.read(&gguf)?.to_f32()?;
        let found = values.dims().to_vec();
        let rows = found.first().copied().unwrap_or(1);
        let values = match self.untile_rows(kind, rows) {
            Some(order) => {
                let ids = Tensor::new(order.as_slice(), values.device())?;
                values.index_select(&ids, 0)?
            }
            None => values,
        };
        let values = match kind {
            // ssm_a = −exp(A_log).
            Kind::DecayRate => values.neg()?.log()?,
            _ => values,
        };
        // The converter squeezes size-1 dimensions (conv1d [C, 1, K] → [C, K]).
        if squeezed(&found) != squeezed(expected) {
            return Err(self.shape_error(name, &gguf, expected, &found));
        }
        Ok(values.reshape(expected)?)
    }

    /// The scale `1 + w` of a zero-centred RMSNorm: the converter stores exactly that.
    pub fn norm_scale(&self, name: &str, dim: usize) -> Result<Tensor> {
        let (gguf, _) = self.resolve(name)?;
        let values = self.read(&gguf)?.to_f32()?;
        if values.dims() != [dim] {
            return Err(self.shape_error(name, &gguf, &[dim], values.dims()));
        }
        Ok(values)
    }

    fn shape_error(
        &self,
        name: &str,
        gguf: &str,
        expected: &[usize],
        found: &[usize],
    ) -> ModelError {
        ModelError::ShapeMismatch {
            name: format!("{gguf} (HF {name})"),
            path: self.path.clone(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }

    fn missing(&self, gguf: &str) -> ModelError {
        ModelError::MissingTensor {
            name: gguf.to_string(),
            dir: self.path.clone(),
            files: format!("a {} GGUF", self.arch_key),
        }
    }

    fn resolve(&self, name: &str) -> Result<(String, Kind)> {
        let (gguf, kind) = self.lookup(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            dir: self.path.clone(),
            files: "no GGUF tensor corresponds to this HF name".into(),
        })?;
        if !self.tensors.contains_key(&gguf) {
            return Err(ModelError::MissingTensor {
                name: format!("{gguf} (HF {name})"),
                dir: self.path.clone(),
                files: format!("the {} GGUF's tensor directory", self.arch_key),
            });
        }
        Ok((gguf, kind))
    }

    /// A GGUF tensor: quantized types as blocks, F32/F16/BF16 as dense candle tensors.
    fn read(&self, gguf: &str) -> Result<Matrix> {
        let info = self.tensors.get(gguf).ok_or_else(|| self.missing(gguf))?;
        let dims = info.shape.dims();
        let elements: usize = dims.iter().product();
        let dtype = info.ggml_dtype;
        let bytes = elements / dtype.block_size() * dtype.type_size();
        // Range checked against the file at open.
        let start = self.data_offset + info.offset;
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.memory_map {
            if let Some(mapped) = map_tensor(&self.path, &file, start, bytes, dtype, dims)? {
                return Ok(mapped);
            }
        }
        let mut fill = |buffer: &mut [u8]| -> Result<()> {
            file.seek(SeekFrom::Start(start))
                .and_then(|_| file.read_exact(buffer))
                .map_err(|source| ModelError::Io {
                    path: self.path.clone(),
                    source,
                })
        };
        read_matrix(dtype, dims, bytes, &mut fill)
    }

    /// HF name → GGUF name and what the converter did to it.
    fn lookup(&self, name: &str) -> Option<(String, Kind)> {
        gguf_tensor_name(name)
    }

    /// The HF-order row permutation for a tensor of `rows` rows of kind `kind`, when value
    /// heads are stored tiled.
    fn untile_rows(&self, kind: Kind, rows: usize) -> Option<Vec<u32>> {
        untiled_row_order(self.tiled?, kind, rows)
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    meta_error(
                        &self.path,
                        key,
                        &format!("must be a non-negative integer, found {v:?}"),
                    )
                }),
        }
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(f64::from(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(v) => Err(meta_error(
                &self.path,
                key,
                &format!("must be a float, found {v:?}"),
            )),
        }
    }
}

/// HF tensor name → GGUF tensor name and what llama.cpp's converter did to it (the one
/// name table: the reader answers HF names with it, [`crate::gguf_export`] writes with it).
pub(crate) fn gguf_tensor_name(name: &str) -> Option<(String, Kind)> {
    let rest = name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("model."))
        .unwrap_or(name);
    let plain = |s: &str| Some((s.to_string(), Kind::Plain));
    match rest {
        "embed_tokens.weight" => return plain("token_embd.weight"),
        "norm.weight" => return plain("output_norm.weight"),
        "lm_head.weight" => return plain("output.weight"),
        _ => {}
    }
    let rest = rest.strip_prefix("layers.")?;
    let (layer, field) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (gguf, kind) = match field {
        "input_layernorm.weight" => ("attn_norm.weight", Kind::Plain),
        "post_attention_layernorm.weight" => ("post_attention_norm.weight", Kind::Plain),
        "linear_attn.in_proj_qkv.weight" => ("attn_qkv.weight", Kind::QkvRows),
        "linear_attn.in_proj_z.weight" => ("attn_gate.weight", Kind::ValueRows),
        "linear_attn.in_proj_b.weight" => ("ssm_beta.weight", Kind::HeadRows),
        "linear_attn.in_proj_a.weight" => ("ssm_alpha.weight", Kind::HeadRows),
        "linear_attn.in_proj_ba.weight" => ("ssm_ba.weight", Kind::Plain),
        "linear_attn.conv1d.weight" => ("ssm_conv1d.weight", Kind::ConvChannels),
        "linear_attn.A_log" => ("ssm_a", Kind::DecayRate),
        "linear_attn.dt_bias" => ("ssm_dt.bias", Kind::HeadRows),
        "linear_attn.norm.weight" => ("ssm_norm.weight", Kind::Plain),
        "linear_attn.out_proj.weight" => ("ssm_out.weight", Kind::Plain),
        "self_attn.q_proj.weight" => ("attn_q.weight", Kind::Plain),
        "self_attn.k_proj.weight" => ("attn_k.weight", Kind::Plain),
        "self_attn.v_proj.weight" => ("attn_v.weight", Kind::Plain),
        "self_attn.o_proj.weight" => ("attn_output.weight", Kind::Plain),
        "self_attn.q_proj.bias" => ("attn_q.bias", Kind::Plain),
        "self_attn.k_proj.bias" => ("attn_k.bias", Kind::Plain),
        "self_attn.v_proj.bias" => ("attn_v.bias", Kind::Plain),
        "self_attn.o_proj.bias" => ("attn_output.bias", Kind::Plain),
        "self_attn.q_norm.weight" => ("attn_q_norm.weight", Kind::Plain),
        "self_attn.k_norm.weight" => ("attn_k_norm.weight", Kind::Plain),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", Kind::Plain),
        "mlp.up_proj.weight" => ("ffn_up.weight", Kind::Plain),
        "mlp.down_proj.weight" => ("ffn_down.weight", Kind::Plain),
        "mlp.gate.weight" => ("ffn_gate_inp.weight", Kind::Plain),
        "mlp.experts.gate_proj.weight" => ("ffn_gate_exps.weight", Kind::Plain),
        "mlp.experts.up_proj.weight" => ("ffn_up_exps.weight", Kind::Plain),
        "mlp.experts.down_proj.weight" => ("ffn_down_exps.weight", Kind::Plain),
        "mlp.shared_expert.gate_proj.weight" => ("ffn_gate_shexp.weight", Kind::Plain),
        "mlp.shared_expert.up_proj.weight" => ("ffn_up_shexp.weight", Kind::Plain),
        "mlp.shared_expert.down_proj.weight" => ("ffn_down_shexp.weight", Kind::Plain),
        "mlp.shared_expert_gate.weight" => ("ffn_gate_inp_shexp.weight", Kind::Plain),
        _ => return None,
    };
    Some((format!("blk.{layer}.{gguf}"), kind))
}

/// The HF-order row permutation of a tensor of `rows` rows of kind `kind` stored with value
/// heads tiled (`tiled` = `(Hk, r, dk)`): HF row `i` is stored row `order[i]`. `None` when the
/// kind has no value-head rows or the row count does not fit the layout.
pub(crate) fn untiled_row_order(
    tiled: (usize, usize, usize),
    kind: Kind,
    rows: usize,
) -> Option<Vec<u32>> {
    let (hk, r, dk) = tiled;
    let hv = hk * r;
    // Rows before `offset` are not value-head indexed (q and k of the qkv projection).
    let (offset, width) = match kind {
        Kind::HeadRows | Kind::DecayRate => (0, 1),
        Kind::ValueRows => (0, rows / hv),
        Kind::QkvRows | Kind::ConvChannels => {
            // conv_dim = 2·Hk·dk + Hv·dv; the v part is the last Hv·dv rows.
            let offset = 2 * hk * dk;
            (offset, rows.checked_sub(offset)? / hv)
        }
        Kind::Plain => return None,
    };
    if width == 0 || offset + hv * width != rows {
        return None;
    }
    let mut order: Vec<u32> = (0..offset as u32).collect();
    for g in 0..hk {
        for j in 0..r {
            let tiled_head = j * hk + g;
            order.extend((0..width).map(|e| (offset + tiled_head * width + e) as u32));
        }
    }
    Some(order)
}

/// `(Hk, r, dk)` when llama.cpp's converter stores this model's value heads tiled (`j·Hk + g`
/// instead of HF's grouped `g·r + j`): Qwen3.5 and Qwen3.5-MoE with fewer key than value heads.
pub(crate) fn tiled_value_heads(config: &ModelConfig) -> Option<(usize, usize, usize)> {
    let spec = config.gdn_spec();
    (matches!(
        config.architecture,
        Architecture::Qwen35 | Architecture::Qwen35Moe
    ) && spec.num_k_heads != spec.num_v_heads)
        .then(|| (spec.num_k_heads, spec.gva_ratio(), spec.head_k_dim))
}

/// For value channels stored tiled (`Hk` key heads, `r` value heads each, `width` channels per
/// head): entry `t` is the HF-order channel stored at position `t`.
pub(crate) fn tiled_channel_order(hk: usize, r: usize, width: usize) -> Vec<u32> {
    let mut order = Vec::with_capacity(hk * r * width);
    for j in 0..r {
        for g in 0..hk {
            let hf_head = g * r + j;
            order.extend((0..width).map(|e| (hf_head * width + e) as u32));
        }
    }
    order
}

/// What the converter did to a tensor (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Stored as HF has it (up to squeezed size-1 dims).
    Plain,
    /// `attn_qkv`: the value rows (after q and k) are in tiled head order.
    QkvRows,
    /// One row block of `dv` per value head, tiled.
    ValueRows,
    /// One row per value head, tiled.
    HeadRows,
    /// `ssm_a = −exp(A_log)`, one per value head, tiled.
    DecayRate,
    /// Conv channels: q and k channels, then value channels in tiled head order.
    ConvChannels,
}

/// `dims` without its size-1 dimensions.
fn squeezed(dims: &[usize]) -> Vec<usize> {
    dims.iter().copied().filter(|&d| d != 1).collect()
}

/// A non-negative integer metadata value of any integer type.
fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(u64::from(x)),
        Value::U16(x) => Some(u64::from(x)),
        Value::U32(x) => Some(u64::from(x)),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn meta_error(path: &Path, key: &str, problem: &str) -> ModelError {
    ModelError::GgufMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        problem: problem.to_string(),
    }
}

/// ggml's name for a `ggml_type` id candle cannot read (ggml.h of llama.cpp 0c1e57098).
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        42 => "Q2_0",
        _ => "not a ggml type",
    }
}
