//! The model crate's error type: every variant names the file, tensor or field and the fix.

use std::path::PathBuf;

/// Result alias for the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// config.json is not valid JSON or has a field of the wrong type.
    #[error("{path} is not a valid model config: {message}")]
    ConfigSyntax {
        /// The config file.
        path: PathBuf,
        /// What serde reported.
        message: String,
    },

    /// A config field is missing or has a value this engine does not support.
    #[error("{path}: field `{field}` {problem}")]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// The field (dotted for nested fields).
        field: String,
        /// What is wrong with it and what would be right.
        problem: String,
    },

    /// The architecture in config.json is not one this engine implements.
    #[error(
        "{path}: model_type `{model_type}` is not supported; supported: qwen3_next, qwen3_5 \
         (qwen3_5_text), qwen3_5_moe (qwen3_5_moe_text)"
    )]
    UnsupportedModelType {
        /// The config file.
        path: PathBuf,
        /// The model_type found.
        model_type: String,
    },

    /// A safetensors file is corrupt or truncated.
    #[error("{path} is not a valid safetensors file: {message} (re-download or re-export it)")]
    BadWeightsFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// A GGUF file is corrupt, truncated or not a GGUF file.
    #[error("{path} is not a usable GGUF file: {message}")]
    BadGguf {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// One tensor of a GGUF file is unusable (type, shape, byte range).
    #[error("{path}: tensor `{name}` {problem}")]
    BadGgufTensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A GGUF metadata key is missing or has a value this engine cannot use.
    #[error("{path}: GGUF metadata key `{key}` {problem}")]
    GgufMetadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },

    /// The GGUF holds a model family this engine does not implement.
    #[error(
        "{path}: general.architecture `{architecture}` is not supported; supported GGUF \
         architectures: qwen35, qwen35moe, qwen3next (as llama.cpp's convert_hf_to_gguf.py \
         writes Qwen3.5, Qwen3.5-MoE and Qwen3-Next)"
    )]
    UnsupportedGgufArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture found.
        architecture: String,
    },

    /// A `--dtype`/`LoadOptions` combination that cannot apply to this checkpoint.
    #[error("{0}")]
    InvalidOption(String),

    /// A tensor the model needs is in none of the weight files.
    #[error("tensor `{name}` is missing from the checkpoint in {dir} (looked in: {files})")]
    MissingTensor {
        /// Full tensor name.
        name: String,
        /// The model directory.
        dir: PathBuf,
        /// The weight files searched.
        files: String,
    },

    /// A tensor has a different shape than the config implies.
    #[error("tensor `{name}` in {path} has shape {found:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        /// Full tensor name.
        name: String,
        /// The file that holds it.
        path: PathBuf,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape on disk.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype this engine cannot load.
    #[error("tensor `{name}` in {path} has dtype {dtype}; supported on disk: F32, BF16, F16")]
    UnsupportedDtype {
        /// Full tensor name.
        name: String,
        /// The file that holds it.
        path: PathBuf,
        /// The dtype found.
        dtype: String,
    },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (vocab_size {vocab_size})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },

    /// The sequence would exceed the model's context.
    #[error(
        "sequence of {length} tokens exceeds max_position_embeddings = {max} of this model \
         (shorten the prompt or --max-new-tokens)"
    )]
    ContextOverflow {
        /// Tokens the sequence would hold.
        length: usize,
        /// The model's limit.
        max: usize,
    },

    /// `forward` was called with no tokens.
    #[error("forward needs at least one token")]
    NoTokens,

    /// The GDN backend failed.
    #[error("GDN backend error in layer {layer}")]
    Gdn {
        /// Model layer index.
        layer: usize,
        /// The backend's error.
        source: hybrid_gdn::GdnError,
    },

    /// A sequence state (snapshot or [`crate::snapshot::ModelState`]) that does not fit this
    /// model; nothing was changed.
    #[error("the sequence state does not fit this model: {0}")]
    IncompatibleState(String),

    /// Reading, writing or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),

    /// A worker thread panicked inside a parallel kernel: a bug in this engine, not in the input.
    #[error(
        "a worker thread panicked inside the {kernel} kernel; this is a bug in hybrid-decode \
         (please report it with the command that triggered it)"
    )]
    KernelPanicked {
        /// The kernel (e.g. "GEMV", "Q8_0 matmul").
        kernel: &'static str,
    },

    /// A candle tensor operation failed.
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
}
