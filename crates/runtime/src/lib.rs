//! # hybrid-runtime
//!
//! The model-agnostic generation runtime of hybrid-decode: everything between a command line
//! and a [`LanguageModel`].
//!
//! * [`source`] — resolve `--model` (local directory or Hugging Face repo id, online or from
//!   the HF cache) to [`ModelFiles`].
//! * [`tokenizer`] — `tokenizer.json` encode/decode and the UTF-8-safe [`TokenStreamer`].
//! * [`gguf_vocab`] — the same tokenizer, chat template and stop tokens from a GGUF file's
//!   metadata ([`GgufVocab`]), for `--model` given as a `.gguf` file ([`gguf_file`]).
//! * [`generation_config`] — `generation_config.json`: EOS ids and sampling defaults.
//! * [`chat`] — the model's Jinja chat template, rendered like transformers does.
//! * [`sampling`] — repeat penalty → temperature → top-k → top-p, seeded.
//! * [`generate`] — the prefill/decode loop with streaming and llama.cpp-style timings, and
//!   [`Generator::resume`] to continue a sequence the model already holds (restored snapshot,
//!   migrated backend).
//!
//! A typical run:
//!
//! ```no_run
//! # fn run(model: &mut dyn hybrid_runtime::LanguageModel) -> Result<(), hybrid_runtime::RuntimeError> {
//! use hybrid_runtime::*;
//! let files = resolve_model("Qwen/Qwen3.5-0.8B", &HubOptions::from_env()?)?;
//! let tokenizer = Tokenizer::from_file(files.tokenizer.as_ref().unwrap())?;
//! let gen_config = GenerationConfig::from_file_or_default(files.dir.join("generation_config.json"))?;
//! let chat = ChatTemplate::from_config(&TokenizerConfig::load(&files.dir)?)?;
//! let prompt = chat.render(&[ChatMessage::user("Hello")], true)?;
//! let ids = tokenizer.encode(&prompt, false)?;
//! let sampler = Sampler::new(gen_config.sampling_params(DEFAULT_SEED))?;
//! let mut generator = Generator::new(model, sampler, Some(&tokenizer))?;
//! let options = GenerateOptions::new(128, gen_config.eos_token_ids.clone());
//! let out = generator.generate(&ids, &options, &mut |t| {
//!     print!("{}", t.text);
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! eprintln!("{}", out.summary());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod chat;
pub mod error;
pub mod generate;
pub mod generation_config;
pub mod gguf_vocab;
pub mod gguf_vocab_export;
pub mod model;
pub mod perplexity;
pub mod sampling;
pub mod source;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, TokenizerConfig};
pub use error::{Result, RuntimeError};
pub use generate::{GenerateOptions, GeneratedToken, GenerationOutput, Generator, StopReason};
pub use generation_config::GenerationConfig;
pub use gguf_vocab::{read_gguf, GgufVocab, TokenType};
pub use model::{LanguageModel, ModelError};
pub use sampling::{Sampler, SamplingParams, DEFAULT_REPEAT_LAST_N, DEFAULT_SEED};
pub use source::{gguf_file, resolve_model, HubOptions, ModelFiles, ModelOrigin};
pub use tokenizer::{TokenStreamer, Tokenizer};
