//! The tokenizer, chat template and stop tokens of a GGUF file ([`GgufVocab`]): what a Hugging
//! Face model directory's `tokenizer.json`, `tokenizer_config.json` and
//! `generation_config.json` give, rebuilt from the metadata llama.cpp's `convert_hf_to_gguf.py`
//! writes for `qwen35`, `qwen35moe` and `qwen3next`.
//!
//! The metadata is read with candle's GGUF reader (it bounds-checks every header count and
//! length against the file size, so a hostile file cannot make it allocate wildly). From it:
//!
//! * `tokenizer.ggml.model` must be `gpt2` (byte-level BPE); `tokenizer.ggml.tokens`,
//!   `.token_type` and `.merges` become a BPE model with the byte-level decoder, and
//!   `tokenizer.ggml.pre` picks the pre-tokenizer regex (`qwen2` or `qwen35`, the two the Qwen
//!   hybrids use; anything else is an error that points at `--tokenizer FILE`). Control tokens
//!   (type 3) become special added tokens and user-defined ones (type 4) plain added tokens,
//!   so `<|im_end|>` encodes to one id and `skip_special_tokens` drops control tokens, as with
//!   the original `tokenizer.json`.
//! * `tokenizer.chat_template` is the chat template; the BOS/EOS ids name the `bos_token` and
//!   `eos_token` the template sees.
//! * The stop set is EOS, EOT and EOM, plus Qwen's turn and text terminators (`<|im_end|>`,
//!   `<|endoftext|>`) where the vocabulary has them: the converter stores only the
//!   tokenizer_config's single EOS, while `generation_config.json` lists both, and llama.cpp
//!   restores the rest by the same names when it loads the file.
//! * `general.sampling.*`, which the converter copies from `generation_config.json`, gives the
//!   sampling defaults.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat::TokenizerConfig;
use crate::error::{Result, RuntimeError};
use crate::generation_config::GenerationConfig;
use crate::tokenizer::Tokenizer;

/// `tokenizer.ggml.model`: the tokenizer kind (`gpt2` = byte-level BPE).
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`: the pre-tokenizer (which split regex runs before BPE).
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`: every token's text, indexed by id.
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.token_type`: every token's type, indexed by id (see [`TokenType`]).
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.merges`: the BPE merges in rank order, each `"left right"`.
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
/// `tokenizer.ggml.bos_token_id`.
pub const KEY_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// `tokenizer.ggml.eos_token_id`.
pub const KEY_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.ggml.eot_token_id` (end of turn).
pub const KEY_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
/// `tokenizer.ggml.eom_token_id` (end of message).
pub const KEY_EOM_ID: &str = "tokenizer.ggml.eom_token_id";
/// `tokenizer.ggml.padding_token_id`.
pub const KEY_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
/// `tokenizer.ggml.add_bos_token`: prepend BOS when encoding with special tokens.
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// `tokenizer.ggml.add_eos_token`: append EOS when encoding with special tokens.
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
/// `tokenizer.chat_template`: the Jinja chat template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
/// `general.sampling.temp` (from `generation_config.json`'s `temperature`).
pub const KEY_SAMPLING_TEMP: &str = "general.sampling.temp";
/// `general.sampling.top_k`.
pub const KEY_SAMPLING_TOP_K: &str = "general.sampling.top_k";
/// `general.sampling.top_p`.
pub const KEY_SAMPLING_TOP_P: &str = "general.sampling.top_p";
/// `general.sampling.penalty_repeat` (from `repetition_penalty`).
pub const KEY_SAMPLING_PENALTY_REPEAT: &str = "general.sampling.penalty_repeat";

/// The `tokenizer.ggml.pre` values this module can build, for error messages.
pub const SUPPORTED_PRE: &str = "qwen2, qwen35";

/// Qwen2/Qwen3's split regex, as in their `tokenizer.json` (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`
/// keeps this form in a comment and runs an equivalent without the `(?i:...)` group).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5's split regex: Qwen2's with combining marks (`\p{M}`) kept inside words
/// (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN35`).
const QWEN35_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` names and the split regex each stands for (read here, written by
/// [`crate::gguf_vocab_export`]).
pub const PRE_TOKENIZER_REGEXES: [(&str, &str); 2] =
    [("qwen2", QWEN2_REGEX), ("qwen35", QWEN35_REGEX)];

/// Token texts that end generation in Qwen vocabularies. llama.cpp adds these to its stop
/// set by name when it loads a GGUF, because the converter stores only one EOS id.
const QWEN_END_TOKENS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// A token's type in `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// 1: an ordinary BPE token.
    Normal,
    /// 2: the unknown token (SentencePiece vocabularies only).
    Unknown,
    /// 3: a control token such as `<|im_end|>`: an added token, special (hidden by
    /// `skip_special_tokens`).
    Control,
    /// 4: a user-defined added token such as `<think>`: matched whole, but not special.
    UserDefined,
    /// 5: a placeholder the converter writes for ids the HF tokenizer does not have (`[PADn]`
    /// up to the model's `vocab_size`).
    Unused,
    /// 6: a raw byte token (SentencePiece byte fallback).
    Byte,
}

impl TokenType {
    /// The type with GGUF code `code`, if it is one of 1..=6.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// The type's GGUF code (1..=6).
    pub fn code(self) -> i32 {
        match self {
            Self::Normal => 1,
            Self::Unknown => 2,
            Self::Control => 3,
            Self::UserDefined => 4,
            Self::Unused => 5,
            Self::Byte => 6,
        }
    }
}

/// Everything a GGUF file says about turning text into tokens and back, and when to stop.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// The byte-level BPE tokenizer rebuilt from the vocabulary ([`Tokenizer::path`] is the
    /// GGUF file).
    pub tokenizer: Tokenizer,
    /// The chat template (`tokenizer.chat_template`) and the BOS/EOS token texts, as
    /// `tokenizer_config.json` would give them; its [`gguf`](TokenizerConfig::gguf) is the file.
    pub tokenizer_config: TokenizerConfig,
    /// Stop ids and sampling defaults, as `generation_config.json` would give them.
    pub generation_config: GenerationConfig,
    /// The ids that end generation: EOS first, then EOT, EOM and the Qwen terminators the
    /// vocabulary has (see the module docs), without repeats.
    pub eos_token_ids: Vec<u32>,
    /// `tokenizer.ggml.bos_token_id`, if set.
    pub bos_token_id: Option<u32>,
}

impl GgufVocab {
    /// Reads the metadata of the GGUF file `path` (not its tensors) and builds the vocabulary.
    ///
    /// Every problem is an error naming the file and, where there is one, the metadata key:
    /// not a GGUF file ([`RuntimeError::GgufRead`]), a missing key, a wrong value type, a
    /// tokenizer kind other than byte-level BPE with a Qwen pre-tokenizer
    /// ([`RuntimeError::GgufUnsupportedTokenizer`]), or values that contradict each other.
    pub fn read(path: &Path) -> Result<Self> {
        let content = read_gguf(path)?;
        Self::from_metadata(&content.metadata, path)
    }

    /// Builds the vocabulary from metadata already read (e.g. by a model loader that also
    /// reads the tensors); `path` is named in errors.
    pub fn from_metadata(metadata: &HashMap<String, Value>, path: &Path) -> Result<Self> {
        let meta = Meta {
            map: metadata,
            path,
        };

        let model = meta.required_string(
            KEY_MODEL,
            "it names the tokenizer kind; pass the model's tokenizer.json with --tokenizer FILE",
        )?;
        if model != "gpt2" {
            return Err(RuntimeError::GgufUnsupportedTokenizer {
                path: path.to_path_buf(),
                key: KEY_MODEL,
                value: model.to_owned(),
                supported: "gpt2 (byte-level BPE)",
            });
        }
        let pre = meta.required_string(
            KEY_PRE,
            "it names the pre-tokenizer; pass the model's tokenizer.json with --tokenizer FILE",
        )?;
        let regex = PRE_TOKENIZER_REGEXES
            .iter()
            .find(|(name, _)| *name == pre)
            .map(|&(_, regex)| regex)
            .ok_or_else(|| RuntimeError::GgufUnsupportedTokenizer {
                path: path.to_path_buf(),
                key: KEY_PRE,
                value: pre.to_owned(),
                supported: SUPPORTED_PRE,
            })?;

        let tokens = meta.string_array(
            KEY_TOKENS,
            "the vocabulary; a GGUF without it cannot tokenize",
        )?;
        let types = meta.token_types(tokens.len())?;
        let merges = meta.merges()?;

        let bos = meta.token_id(KEY_BOS_ID, tokens.len())?;
        let eos = meta.token_id(KEY_EOS_ID, tokens.len())?;
        let eot = meta.token_id(KEY_EOT_ID, tokens.len())?;
        let eom = meta.token_id(KEY_EOM_ID, tokens.len())?;
        let pad = meta.token_id(KEY_PAD_ID, tokens.len())?;
        let add_bos = meta.boolean(KEY_ADD_BOS)?.unwrap_or(false);
        let add_eos = meta.boolean(KEY_ADD_EOS)?.unwrap_or(false);

        let text_of = |id: u32| tokens[id as usize].to_owned();
        let post_processor = post_processor(&meta, (add_bos, bos), (add_eos, eos), &text_of)?;
        let inner = build_tokenizer(&meta, &tokens, &types, merges, regex, post_processor)?;
        let tokenizer = Tokenizer::from_tokenizer(inner, path);

        let mut eos_token_ids = Vec::new();
        let named_ends = QWEN_END_TOKENS
            .iter()
            .filter_map(|name| tokens.iter().position(|t| t == name))
            .filter_map(|id| u32::try_from(id).ok());
        for id in [eos, eot, eom].into_iter().flatten().chain(named_ends) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }

        let chat_template = meta.string(KEY_CHAT_TEMPLATE)?.map(str::to_owned);
        let tokenizer_config = TokenizerConfig {
            chat_template_origin: chat_template.as_ref().map(|_| path.to_path_buf()),
            chat_template,
            bos_token: bos.map(text_of),
            eos_token: eos.map(text_of),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            gguf: Some(path.to_path_buf()),
        };

        let temperature = meta.float(KEY_SAMPLING_TEMP)?;
        let top_k = meta.count(KEY_SAMPLING_TOP_K)?;
        let top_p = meta.float(KEY_SAMPLING_TOP_P)?;
        let generation_config = GenerationConfig {
            eos_token_ids: eos_token_ids.clone(),
            bos_token_id: bos,
            pad_token_id: pad,
            // The converter drops `do_sample`; llama.cpp samples with whatever values it
            // copied, so their presence means "sample" (HF would be greedy without it).
            do_sample: (temperature.is_some() || top_k.is_some() || top_p.is_some())
                .then_some(true),
            temperature,
            top_k: top_k.filter(|&k| k > 0),
            top_p,
            repetition_penalty: meta.float(KEY_SAMPLING_PENALTY_REPEAT)?,
            max_new_tokens: None,
        };

        Ok(Self {
            tokenizer,
            tokenizer_config,
            generation_config,
            eos_token_ids,
            bos_token_id: bos,
        })
    }
}

/// Reads the header and metadata of the GGUF file `path` with candle's reader;
/// [`RuntimeError::GgufRead`] when it is not a (complete, sane) GGUF file.
pub fn read_gguf(path: &Path) -> Result<Content> {
    let mut file = File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    Content::read(&mut file).map_err(|e| RuntimeError::GgufRead {
        path: path.to_path_buf(),
        message: without_backtrace(e).to_string(),
    })
}

/// candle attaches a backtrace to its errors when `RUST_BACKTRACE` is set, and prints it as
/// part of the message; the person running the program needs only the reason.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

/// The tokenizer: BPE over every token (so each keeps its GGUF id), the Qwen normalizer and
/// pre-tokenizer, the byte-level decoder, and the added tokens registered on top.
fn build_tokenizer(
    meta: &Meta<'_>,
    tokens: &[&str],
    types: &[TokenType],
    merges: Vec<(String, String)>,
    regex: &str,
    post_processor: PostProcessorWrapper,
) -> Result<tokenizers::Tokenizer> {
    // Added tokens go into the BPE vocabulary too: the `tokenizers` library gives an added
    // token the model's id for its text when there is one, and otherwise the next free id,
    // which would renumber them whenever the vocabulary has gaps or `[PADn]` fillers.
    let mut vocab = Vocab::default();
    for (id, &token) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| {
            meta.invalid(
                KEY_TOKENS,
                format!("{} tokens exceed u32 ids", tokens.len()),
            )
        })?;
        // A repeated text keeps its first id, as a text can only map to one id.
        vocab.entry(token.to_owned()).or_insert(id);
    }
    for (rank, (left, right)) in merges.iter().enumerate() {
        for part in [left.as_str(), right.as_str(), &format!("{left}{right}")] {
            if !vocab.contains_key(part) {
                return Err(meta.invalid(
                    KEY_MERGES,
                    format!(
                        "merge {rank} ({left:?} + {right:?}) needs the token {part:?}, which is \
                         not in `{KEY_TOKENS}`"
                    ),
                ));
            }
        }
    }
    let library = |key: &str, e: tokenizers::Error| {
        meta.invalid(key, format!("the tokenizers library rejected it: {e}"))
    };
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(false)
        .build()
        .map_err(|e| library(KEY_MERGES, e))?;

    let split = Split::new(
        SplitPattern::Regex(regex.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| library(KEY_PRE, e))?;
    // No prefix space and no regex of its own: the Split above already did the splitting.
    let byte_level = ByteLevel::new(false, false, false);

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NFC))
        .map_err(|e| library(KEY_PRE, e))?;
    tokenizer
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
        .with_post_processor(Some(post_processor))
        .with_decoder(Some(byte_level));

    // The converter stores added tokens already normalized (llama.cpp matches them on raw
    // text), hence `normalized(false)`.
    let added = |kind: TokenType, special: bool| {
        tokens
            .iter()
            .zip(types)
            .filter(move |&(_, &t)| t == kind)
            .map(move |(&text, _)| AddedToken::from(text, special).normalized(false))
            .collect::<Vec<_>>()
    };
    tokenizer
        .add_special_tokens(added(TokenType::Control, true))
        .map_err(|e| library(KEY_TOKEN_TYPE, e))?;
    tokenizer
        .add_tokens(added(TokenType::UserDefined, false))
        .map_err(|e| library(KEY_TOKEN_TYPE, e))?;
    Ok(tokenizer)
}

/// BOS/EOS insertion for `encode(text, true)` where the file asks for it, else the byte-level
/// post-processor Qwen's `tokenizer.json` has (it only adjusts offsets).
fn post_processor(
    meta: &Meta<'_>,
    (add_bos, bos): (bool, Option<u32>),
    (add_eos, eos): (bool, Option<u32>),
    text_of: &dyn Fn(u32) -> String,
) -> Result<PostProcessorWrapper> {
    let wanted = |add: bool, id: Option<u32>, add_key: &str, id_key: &str| match (add, id) {
        (false, _) => Ok(None),
        (true, Some(id)) => Ok(Some(id)),
        (true, None) => Err(meta.invalid(
            add_key,
            format!("it is true but `{id_key}` is not set, so there is no token to add"),
        )),
    };
    let bos = wanted(add_bos, bos, KEY_ADD_BOS, KEY_BOS_ID)?;
    let eos = wanted(add_eos, eos, KEY_ADD_EOS, KEY_EOS_ID)?;
    if bos.is_none() && eos.is_none() {
        return Ok(ByteLevel::new(false, false, false).into());
    }
    // Template pieces are named by keys of our choosing ("BOS", "EOS"), so token texts with
    // spaces or colons cannot confuse the template syntax.
    let (bos_piece, eos_piece) = (bos.map(|_| "BOS"), eos.map(|_| "EOS"));
    let single: Vec<String> = [bos_piece, Some("$A"), eos_piece]
        .into_iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    let pair: Vec<String> = [
        bos_piece.map(str::to_owned),
        Some("$A".to_owned()),
        eos_piece.map(str::to_owned),
        bos_piece.map(|p| format!("{p}:1")),
        Some("$B:1".to_owned()),
        eos_piece.map(|p| format!("{p}:1")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let specials: Vec<SpecialToken> = [("BOS", bos), ("EOS", eos)]
        .into_iter()
        .filter_map(|(key, id)| {
            id.map(|id| SpecialToken::new(key.to_owned(), vec![id], vec![text_of(id)]))
        })
        .collect::<tokenizers::Result<_>>()
        .map_err(|e| {
            meta.invalid(
                KEY_ADD_BOS,
                format!("cannot build the BOS/EOS template: {e}"),
            )
        })?;
    let template_error = |e: String| {
        meta.invalid(
            KEY_ADD_BOS,
            format!("cannot build the BOS/EOS template: {e}"),
        )
    };
    let processor = TemplateProcessing::builder()
        .try_single(single)
        .map_err(template_error)?
        .try_pair(pair)
        .map_err(template_error)?
        .special_tokens(specials)
        .build()
        .map_err(|e| template_error(e.to_string()))?;
    Ok(processor.into())
}

/// Typed access to the metadata, with errors naming the file and the key.
struct Meta<'a> {
    map: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn missing(&self, key: &str, hint: &'static str) -> RuntimeError {
        RuntimeError::GgufKeyMissing {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            hint,
        }
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Value) -> RuntimeError {
        RuntimeError::GgufKeyType {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            expected,
            found: describe(found),
        }
    }

    fn invalid(&self, key: &str, message: String) -> RuntimeError {
        RuntimeError::GgufInvalid {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            message,
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    fn required_string(&self, key: &str, hint: &'static str) -> Result<&'a str> {
        self.string(key)?.ok_or_else(|| self.missing(key, hint))
    }

    fn array(&self, key: &str, expected: &'static str, hint: &'static str) -> Result<&'a [Value]> {
        match self.map.get(key) {
            None => Err(self.missing(key, hint)),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.wrong(key, expected, other)),
        }
    }

    fn string_array(&self, key: &str, hint: &'static str) -> Result<Vec<&'a str>> {
        self.array(key, "an array of strings", hint)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.wrong(&format!("{key}[{i}]"), "a string", other)),
            })
            .collect()
    }

    /// `tokenizer.ggml.token_type`, one per token.
    fn token_types(&self, n_tokens: usize) -> Result<Vec<TokenType>> {
        const EXPECTED: &str = "an array of integers (token types 1..=6)";
        let items = self.array(
            KEY_TOKEN_TYPE,
            EXPECTED,
            "it marks control tokens such as <|im_end|>; without it they would be split into \
             pieces",
        )?;
        if items.len() != n_tokens {
            return Err(self.invalid(
                KEY_TOKEN_TYPE,
                format!(
                    "has {} entries but `{KEY_TOKENS}` has {n_tokens}: there must be one type \
                     per token",
                    items.len()
                ),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let code = integer(v).ok_or_else(|| {
                    self.wrong(
                        &format!("{KEY_TOKEN_TYPE}[{i}]"),
                        "an integer token type",
                        v,
                    )
                })?;
                TokenType::from_code(code).ok_or_else(|| {
                    self.invalid(
                        KEY_TOKEN_TYPE,
                        format!("token {i} has type {code}, not one of llama.cpp's types 1..=6"),
                    )
                })
            })
            .collect()
    }

    /// `tokenizer.ggml.merges` split into pairs.
    fn merges(&self) -> Result<Vec<(String, String)>> {
        let merges = self.string_array(
            KEY_MERGES,
            "byte-level BPE cannot tokenize without its merges",
        )?;
        merges
            .iter()
            .enumerate()
            .map(|(rank, merge)| {
                // Split at the first space after the first character, as llama.cpp does, so
                // a left part that is itself a space still parses.
                let split = merge
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(at, _)| (&merge[..at], &merge[at + 1..]));
                match split {
                    Some((left, right)) if !right.is_empty() => {
                        Ok((left.to_owned(), right.to_owned()))
                    }
                    _ => Err(self.invalid(
                        KEY_MERGES,
                        format!("merge {rank} is {merge:?}, not two tokens separated by a space"),
                    )),
                }
            })
            .collect()
    }

    /// An optional token id, which must index `tokens`.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let id = integer(v).ok_or_else(|| self.wrong(key, "a token id (an integer)", v))?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
            _ => Err(self.invalid(
                key,
                format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
            )),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "a bool", other)),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.wrong(key, "a float", other)),
        }
    }

    fn count(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        integer(v)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }
}

/// Any GGUF integer value, widened.
fn integer(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::I8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

/// A short description of a metadata value for error messages (arrays by length and
/// element type, long strings cut).
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("the string {head:?}...")
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(items) => match items.first() {
            Some(first) => format!(
                "an array of {} {:?} values",
                items.len(),
                first.value_type()
            ),
            None => "an empty array".to_owned(),
        },
        Value::Bool(b) => format!("the bool {b}"),
        Value::F32(x) => format!("the f32 {x}"),
        Value::F64(x) => format!("the f64 {x}"),
        other => match integer(other) {
            Some(n) => format!("the {:?} {n}", other.value_type()),
            None => format!("{other:?}"),
        },
    }
}
