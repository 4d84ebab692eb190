//! Text ↔ token ids with a Hugging Face `tokenizer.json` or a GGUF vocabulary ([`Tokenizer`]),
//! and incremental decoding for streaming output ([`TokenStreamer`]).

use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// A loaded `tokenizer.json` (or a tokenizer rebuilt from a GGUF file's vocabulary).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    id_space: usize,
}

impl Tokenizer {
    /// Loads `path`, a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| RuntimeError::TokenizerLoad {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self::from_tokenizer(inner, path))
    }

    /// Wraps a `tokenizers` object built elsewhere (e.g. from a GGUF file's vocabulary by
    /// [`GgufVocab`](crate::GgufVocab)); `origin` is the file it came from, named in errors.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, origin: impl Into<PathBuf>) -> Self {
        // One past the largest id, not the number of tokens: ids need not be contiguous, and
        // what must fit the embedding table is the largest one.
        let id_space = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&max| max as usize + 1);
        Self {
            inner,
            path: origin.into(),
            id_space,
        }
    }

    /// The file this tokenizer was loaded from (`tokenizer.json` or a GGUF file; named in
    /// errors).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One more than the largest token id (added/special tokens included): the smallest model
    /// `vocab_size` this tokenizer fits.
    pub fn vocab_size(&self) -> usize {
        self.id_space
    }

    /// Fails with [`RuntimeError::TokenizerVocabTooLarge`] when this tokenizer can produce ids
    /// a model with `model_vocab_size` logits has no row for. A smaller tokenizer is fine: real
    /// checkpoints pad `vocab_size` (Qwen: 151,669 tokens, 151,936 rows).
    pub fn check_fits_model(&self, model_vocab_size: usize) -> Result<()> {
        if self.id_space > model_vocab_size {
            return Err(RuntimeError::TokenizerVocabTooLarge {
                path: self.path.clone(),
                tokenizer_vocab: self.id_space,
                model_vocab: model_vocab_size,
            });
        }
        Ok(())
    }

    /// Token ids of `text`. `add_special_tokens` runs the tokenizer's post-processor (BOS/EOS
    /// insertion where the tokenizer defines it); pass `false` for text rendered by a chat
    /// template, which already contains its special tokens (as HF `apply_chat_template` does).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| self.failed("encode", e))
    }

    /// Text of `ids`; `skip_special_tokens` drops tokens marked special (e.g. `<|im_end|>`).
    /// Ids the tokenizer does not know are skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.failed("decode", e))
    }

    /// The id of the token spelled exactly `token` (e.g. `"<|im_end|>"`), if there is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` object, for anything this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn failed(&self, operation: &'static str, e: tokenizers::Error) -> RuntimeError {
        RuntimeError::Tokenizer {
            path: self.path.clone(),
            operation,
            message: e.to_string(),
        }
    }
}

/// Turns a stream of token ids into a stream of text pieces that are always complete UTF-8.
///
/// Byte-level BPE splits multi-byte characters across tokens, so decoding token by token
/// would print U+FFFD halves; and tokenizers with a leading-space convention (SentencePiece's
/// `▁`) decode a token differently at the start of a string than after other text. So the
/// streamer decodes a short window of ids — the tokens already shown since the last emission
/// point, plus the new ones — and emits what the new ones added, but only once that addition
/// does not end in U+FFFD (the mark of an incomplete character). Each push decodes only that
/// window, so streaming costs O(1) per token instead of re-decoding the whole text.
#[derive(Debug)]
pub struct TokenStreamer<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the decoding window: context for the tokens after `emitted`.
    window_start: usize,
    /// Ids before this index have had their text emitted.
    emitted: usize,
}

impl<'t> TokenStreamer<'t> {
    /// A streamer over `tokenizer`; `skip_special_tokens` hides tokens such as `<|im_end|>`.
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            window_start: 0,
            emitted: 0,
        }
    }

    /// Adds one token; returns the text it completes, or `None` while a character is still
    /// incomplete (the text then arrives with a later token or from [`finish`](Self::finish)).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let shown = self.decode(self.window_start, self.emitted)?;
        let full = self.decode(self.window_start, self.ids.len())?;
        if full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new_text) = new_suffix(&shown, &full) else {
            return Ok(None);
        };
        let new_text = new_text.to_owned();
        self.window_start = self.emitted;
        self.emitted = self.ids.len();
        Ok(Some(new_text))
    }

    /// Emits whatever is still held back (an incomplete character decodes as U+FFFD, as a
    /// plain decode would show it) and starts over with an empty sequence.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let shown = self.decode(self.window_start, self.emitted)?;
        let full = self.decode(self.window_start, self.ids.len())?;
        let rest = new_suffix(&shown, &full).map(str::to_owned);
        self.ids.clear();
        self.window_start = 0;
        self.emitted = 0;
        Ok(rest)
    }

    /// Every id pushed since creation or the last [`finish`](Self::finish).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn decode(&self, from: usize, to: usize) -> Result<String> {
        self.tokenizer
            .decode(&self.ids[from..to], self.skip_special_tokens)
    }
}

/// What `full` adds after `shown`, if `full` extends it with something. When the decoder
/// rewrites earlier text (some decoders clean up spaces around punctuation), nothing is safe
/// to print yet, and the window keeps growing until the text settles.
fn new_suffix<'a>(shown: &str, full: &'a str) -> Option<&'a str> {
    full.strip_prefix(shown).filter(|rest| !rest.is_empty())
}
