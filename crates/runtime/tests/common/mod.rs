//! Shared test infrastructure: paths of the real fixtures, the Python reference outputs,
//! and [`BigramTableModel`], a test double for the generation loop.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hybrid_runtime::{LanguageModel, ModelError};

/// The tiny byte-level BPE tokenizer directory (models/tools/train_tiny_tokenizer.py).
pub fn tiny_tokenizer_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tokenizers/tiny-bpe-1k");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{} is missing: run `/work/pyref/bin/python models/tools/train_tiny_tokenizer.py`",
        dir.join("tokenizer.json").display()
    );
    dir
}

/// The tiny tokenizer.json.
pub fn tiny_tokenizer() -> hybrid_runtime::Tokenizer {
    hybrid_runtime::Tokenizer::from_file(tiny_tokenizer_dir().join("tokenizer.json"))
        .expect("the tiny tokenizer loads")
}

/// tests/data/expectations.json: outputs of HF tokenizers and transformers' chat renderer.
pub fn expectations() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/expectations.json");
    let text = std::fs::read_to_string(&path).expect("tests/data/expectations.json");
    serde_json::from_str(&text).expect("expectations.json parses")
}

/// `<|im_end|>` in the tiny tokenizer.
pub const TINY_IM_END: u32 = 1023;

/// Error raised by [`BigramTableModel`] when told to fail.
#[derive(Debug, PartialEq, Eq)]
pub struct InjectedFailure(pub usize);

impl std::fmt::Display for InjectedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected failure at forward call {}", self.0)
    }
}

impl std::error::Error for InjectedFailure {}

/// **Test double for the generation loop, not a language model.** The next-token logits
/// depend only on the last token fed (a bigram table) — or, with [`BigramTableModel::with_script`], only on the
/// position — so every test can predict exactly what greedy decoding produces. It records every `forward`/`reset` call, enforces its own
/// position limit (to prove the runtime checks lengths before calling it), and reports as
/// "GDN time" the measured time of a small busy loop inside each forward, so the GDN share
/// is a real, bounded measurement. The real model tests live in the model crate.
pub struct BigramTableModel {
    pub vocab: usize,
    pub max_positions: usize,
    /// `rows[t]`: the logits after token `t`; tokens without a row get `default_row`.
    pub rows: Vec<Option<Vec<f32>>>,
    pub default_row: Vec<f32>,
    /// Every `forward` argument, in order.
    pub calls: Vec<Vec<u32>>,
    pub resets: usize,
    pub position: usize,
    pub gdn: Duration,
    /// Make forward call number N (0-based, counted over the model's life) fail.
    pub fail_at_call: Option<usize>,
    /// Return this many logits instead of `vocab` (to test the length check).
    pub logits_len_override: Option<usize>,
    /// `script[n]`: the token that gets logit 10 once `n` tokens have been fed (overrides the
    /// table while `n` is inside the script).
    pub script: Vec<u32>,
}

impl BigramTableModel {
    /// A model whose logits are all 0 (a uniform distribution) until rows are set.
    pub fn new(vocab: usize, max_positions: usize) -> Self {
        Self {
            vocab,
            max_positions,
            rows: vec![None; vocab],
            default_row: vec![0.0; vocab],
            calls: Vec::new(),
            resets: 0,
            position: 0,
            gdn: Duration::ZERO,
            fail_at_call: None,
            logits_len_override: None,
            script: Vec::new(),
        }
    }

    /// Greedy decoding after a prompt of `prompt_len` tokens reproduces `tokens`, repeats
    /// and all.
    pub fn with_script(mut self, prompt_len: usize, tokens: &[u32]) -> Self {
        self.script = vec![0; prompt_len];
        self.script.extend_from_slice(tokens);
        self
    }

    /// After token `from`, token `to` gets logit 10 and every other token 0.
    pub fn with_edge(mut self, from: u32, to: u32) -> Self {
        let mut row = vec![0.0; self.vocab];
        row[to as usize] = 10.0;
        self.rows[from as usize] = Some(row);
        self
    }

    /// Edges along `path`: greedy decoding after `path[0]` reproduces `path[1..]` as long as
    /// no token repeats with a different successor.
    pub fn with_path(mut self, path: &[u32]) -> Self {
        for pair in path.windows(2) {
            self = self.with_edge(pair[0], pair[1]);
        }
        self
    }
}

impl LanguageModel for BigramTableModel {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_positions
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let call = self.calls.len();
        self.calls.push(tokens.to_vec());
        if self.fail_at_call == Some(call) {
            return Err(Box::new(InjectedFailure(call)));
        }
        self.position += tokens.len();
        if self.position > self.max_positions {
            return Err(format!(
                "position {} past max_position_embeddings {}",
                self.position, self.max_positions
            )
            .into());
        }
        let started = Instant::now();
        // Stand-in for GDN work: a little arithmetic whose time is measured, not invented.
        let mut acc = 0u64;
        for i in 0..2_000u64 {
            acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(acc);
        self.gdn += started.elapsed();

        let last = *tokens.last().ok_or("forward called with no tokens")? as usize;
        let mut logits = match self.script.get(self.position) {
            Some(&next) => {
                let mut row = vec![0.0; self.vocab];
                row[next as usize] = 10.0;
                row
            }
            None => self
                .rows
                .get(last)
                .and_then(Option::clone)
                .unwrap_or_else(|| self.default_row.clone()),
        };
        if let Some(len) = self.logits_len_override {
            logits.resize(len, 0.0);
        }
        Ok(logits)
    }

    fn reset(&mut self) -> Result<(), ModelError> {
        self.resets += 1;
        self.position = 0;
        Ok(())
    }
}
