//! The crate's error type: every variant names the problem and what fixes it (which file,
//! which field, which flag).

use std::path::PathBuf;

use crate::model::ModelError;

/// Errors of the generation runtime.
///
/// Messages are written for the person running the program: each says what was wrong and
/// where to fix it. Flags are named by the command-line convention this crate sets for the
/// program that drives it (`--model`, `--chat`, `--temperature`, `--top-k`, `--top-p`,
/// `--repeat-penalty`, `--repeat-last-n`, `--max-new-tokens`).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file could not be read (or a directory not listed).
    #[error("cannot read {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file does not parse, or a field has the wrong type or value.
    #[error("{path}: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field where there is one.
        message: String,
    },

    /// `tokenizer.json` could not be loaded by the `tokenizers` library.
    #[error(
        "cannot load the tokenizer {path}: {message} (expected a Hugging Face tokenizer.json as \
         saved by `tokenizer.save_pretrained`)"
    )]
    TokenizerLoad {
        /// The tokenizer file.
        path: PathBuf,
        /// The library's reason.
        message: String,
    },

    /// Encoding or decoding failed inside the `tokenizers` library.
    #[error("tokenizer {path}: {operation} failed: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// `encode` or `decode`.
        operation: &'static str,
        /// The library's reason.
        message: String,
    },

    /// The tokenizer can produce ids the model has no embedding row for.
    #[error(
        "tokenizer {path} has {tokenizer_vocab} token ids but the model's vocab_size is \
         {model_vocab}: ids >= {model_vocab} would index past the embedding table; use the \
         tokenizer.json that belongs to this model (or fix vocab_size in config.json)"
    )]
    TokenizerVocabTooLarge {
        /// The tokenizer file.
        path: PathBuf,
        /// One more than the tokenizer's largest id.
        tokenizer_vocab: usize,
        /// The model's `vocab_size`.
        model_vocab: usize,
    },

    /// A file could not be read as GGUF at all: wrong magic, unsupported version, truncated,
    /// or header counts that do not fit the file (candle's reader checks them).
    #[error(
        "{path} is not a readable GGUF file: {message} (expected a .gguf file as written by \
         llama.cpp's convert_hf_to_gguf.py)"
    )]
    GgufRead {
        /// The file.
        path: PathBuf,
        /// The reader's reason.
        message: String,
    },

    /// A GGUF metadata key the runtime needs is absent.
    #[error("{path}: GGUF metadata key `{key}` is missing ({hint})")]
    GgufKeyMissing {
        /// The GGUF file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What the key is for and how to do without it.
        hint: &'static str,
    },

    /// A GGUF metadata value has the wrong type.
    #[error("{path}: GGUF metadata key `{key}` must be {expected}, found {found}")]
    GgufKeyType {
        /// The GGUF file.
        path: PathBuf,
        /// The metadata key (with `[index]` for an array element).
        key: String,
        /// The type the runtime reads.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },

    /// A GGUF metadata value has the right type but an unusable value (lengths that disagree,
    /// a merge naming an unknown token, an id past the vocabulary, ...).
    #[error("{path}: GGUF metadata key `{key}`: {message}")]
    GgufInvalid {
        /// The GGUF file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// The GGUF file's tokenizer is of a kind this runtime cannot rebuild.
    #[error(
        "{path}: GGUF metadata key `{key}` is {value:?}, a tokenizer this runtime cannot build \
         from GGUF metadata (supported: {supported}); pass the model's Hugging Face \
         tokenizer.json with --tokenizer FILE"
    )]
    GgufUnsupportedTokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// `tokenizer.ggml.model` or `tokenizer.ggml.pre`.
        key: &'static str,
        /// The value found.
        value: String,
        /// The values that are supported.
        supported: &'static str,
    },

    /// A model directory whose tokenizer cannot be written into a GGUF file.
    #[error("cannot write {path} into a GGUF file: {problem}")]
    GgufExport {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it, and the way out where there is one.
        problem: String,
    },

    /// `--model` names a directory without config.json that holds several GGUF files.
    #[error(
        "--model {dir} holds {count} GGUF files and no config.json ({list}); pass the file to \
         load to --model",
        count = files.len(),
        list = display_list(files)
    )]
    AmbiguousGguf {
        /// The directory.
        dir: PathBuf,
        /// The `*.gguf` files in it, sorted.
        files: Vec<PathBuf>,
    },

    /// A sampling parameter is out of range.
    #[error("invalid {flag} {value}: {expected}")]
    InvalidSamplingParam {
        /// The command-line flag that sets it.
        flag: &'static str,
        /// The rejected value, as given.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },

    /// The model returned a NaN or +Inf logit, so no probability distribution exists.
    #[error(
        "the model returned a non-finite logit ({value}) for token id {token_id}: the forward \
         pass overflowed or the weights are corrupt (check the weights and the dtype)"
    )]
    NonFiniteLogit {
        /// The token id whose logit is bad.
        token_id: usize,
        /// The bad value (NaN or inf).
        value: f32,
    },

    /// Every logit is -inf (or the logit vector is empty): there is nothing to sample.
    #[error(
        "no token can be sampled: all {vocab} logits are -inf (the model masked the whole \
         vocabulary)"
    )]
    NoCandidates {
        /// Length of the logit vector.
        vocab: usize,
    },

    /// The model returned a logit vector of the wrong length.
    #[error(
        "the model returned {got} logits but its vocab_size is {expected}: the LanguageModel \
         implementation must return the last position's logits only"
    )]
    LogitsLength {
        /// Length received.
        got: usize,
        /// `vocab_size()`.
        expected: usize,
    },

    /// The GGUF file has no chat template but `--chat` asked for one.
    #[error(
        "--chat needs a chat template, but the GGUF file {path} has none (no \
         `tokenizer.chat_template` metadata key); run without --chat to feed the prompt as raw \
         text"
    )]
    ChatTemplateMissingGguf {
        /// The GGUF file.
        path: PathBuf,
    },

    /// `tokenizer_config.json` has no chat template but `--chat` asked for one.
    #[error(
        "--chat needs a chat template, but {dir} has none (neither a `chat_template` field in \
         tokenizer_config.json nor a chat_template.jinja file); run without --chat to feed the \
         prompt as raw text"
    )]
    ChatTemplateMissing {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// The chat template does not compile or fails while rendering.
    #[error("chat template from {origin}: {message}")]
    ChatTemplate {
        /// The file the template came from.
        origin: PathBuf,
        /// The template engine's reason (with line information where it has one).
        message: String,
    },

    /// `--model` is neither an existing path nor a hub repo id.
    #[error(
        "--model {spec}: no such file or directory, and not a Hugging Face repo id of the form \
         owner/name"
    )]
    ModelNotFound {
        /// What was passed.
        spec: String,
    },

    /// `--model` looks like a path inside an existing local directory, but nothing is there.
    #[error(
        "--model {path}: no such file or directory ({parent} exists, so this is taken as a local \
         path, not a Hugging Face repo id)"
    )]
    LocalModelNotFound {
        /// What was passed.
        path: PathBuf,
        /// Its existing parent directory.
        parent: PathBuf,
    },

    /// `--model` names a path that exists but is not a directory.
    #[error("--model {path} is not a directory: pass the directory that holds config.json and the weights")]
    ModelNotADirectory {
        /// The path given.
        path: PathBuf,
    },

    /// No HF cache location can be derived from the environment.
    #[error(
        "cannot locate the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME or \
         HOME is set; set HF_HUB_CACHE to the cache directory"
    )]
    HubCacheUnknown,

    /// An environment variable has a value this program does not understand.
    #[error("environment variable {name}={value:?} is not understood; expected {expected}")]
    InvalidEnvVar {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// The values it accepts.
        expected: &'static str,
    },

    /// A model directory lacks a required file.
    #[error("{dir} is not a usable model directory: {file} is missing ({hint})")]
    ModelFileMissing {
        /// The model directory.
        dir: PathBuf,
        /// The missing file.
        file: String,
        /// What the file is needed for / how to get it.
        hint: &'static str,
    },

    /// The safetensors index lists a shard name that is not a plain relative file name.
    #[error(
        "{index}: weight_map names the shard {shard:?}, which is not a file inside the model \
         directory"
    )]
    UnsafeShardName {
        /// The index file.
        index: PathBuf,
        /// The offending name.
        shard: String,
    },

    /// A hub download failed for a reason other than the network being unreachable.
    #[error("downloading {file} from the Hugging Face repo {repo} failed: {message}")]
    HubDownload {
        /// `owner/name`.
        repo: String,
        /// The file in the repo.
        file: String,
        /// The reason, with a hint where one is known (e.g. HF_TOKEN for gated repos).
        message: String,
    },

    /// The repo (or a file of it) is not in the local HF cache and the hub cannot be used.
    #[error(
        "the Hugging Face repo {repo} is not available ({reason}) and not in the local cache: \
         {missing} (HF cache: {cache_dir}); download it once with network access (e.g. `hf \
         download {repo}`), point HF_HUB_CACHE or HF_HOME at a cache that has it, or pass a \
         local model directory to --model"
    )]
    NotInCache {
        /// `owner/name`.
        repo: String,
        /// The hub cache root that was searched.
        cache_dir: PathBuf,
        /// What was not found there.
        missing: String,
        /// Why the cache was used: `HF_HUB_OFFLINE is set` or the network error.
        reason: String,
    },

    /// The prompt holds no tokens.
    #[error("the prompt is empty: a causal model needs at least one token to predict from")]
    EmptyPrompt,

    /// A prompt token id is outside the model's vocabulary.
    #[error(
        "prompt token {index} has id {id}, outside the model's vocabulary (vocab_size {vocab} in \
         config.json): the prompt was tokenized with a different tokenizer"
    )]
    PromptTokenOutOfVocab {
        /// Position in the prompt.
        index: usize,
        /// The id.
        id: u32,
        /// The model's vocab size.
        vocab: usize,
    },

    /// Prompt plus generation would run past the model's position limit.
    #[error(
        "prompt too long: {prompt_tokens} prompt tokens + --max-new-tokens {max_new_tokens} = \
         {total} positions, but the model supports {max_positions} (max_position_embeddings in \
         config.json); shorten the prompt or lower --max-new-tokens"
    )]
    PromptTooLong {
        /// Prompt length in tokens.
        prompt_tokens: usize,
        /// Requested generation length.
        max_new_tokens: usize,
        /// Their sum.
        total: usize,
        /// The model's limit.
        max_positions: usize,
    },

    /// [`crate::Generator::resume`] was given a history with no token left to feed.
    #[error(
        "cannot resume: all {history} tokens of the history are already in the model's state,          so there is no pending token whose logits choose the next one (save state only after          generating at least one token)"
    )]
    NothingToResume {
        /// Length of the history.
        history: usize,
    },

    /// [`crate::Generator::resume`] was told the model holds a state it does not hold.
    #[error(
        "cannot resume: the history says the model has consumed {expected} tokens, but the model          is at position {actual} (restore the matching state first)"
    )]
    ResumePositionMismatch {
        /// Tokens the caller says were fed.
        expected: usize,
        /// The model's position.
        actual: usize,
    },

    /// The model's own forward pass or reset failed.
    #[error("model {stage} failed")]
    Model {
        /// `reset`, `prefill` or `decode step N`.
        stage: String,
        /// The model's error, unchanged.
        #[source]
        source: ModelError,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    /// Wraps a read failure of `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A JSON problem in `path`.
    pub(crate) fn json(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidJson {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `a, b, c` of the file names of `paths`, for messages.
fn display_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
