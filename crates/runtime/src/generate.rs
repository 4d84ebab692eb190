//! The generation loop: [`Generator`] drives a [`LanguageModel`] through prefill and decode,
//! choosing tokens with a [`Sampler`] and streaming text through a [`TokenStreamer`].
//!
//! ## Timing semantics (as llama.cpp reports them)
//!
//! * **prefill** — wall time of the single `forward` call over the whole prompt;
//!   `prefill_tok_s = prompt tokens / prefill`. The first generated token is sampled from the
//!   prefill's logits, so it costs no decode step (llama.cpp's "prompt eval time").
//! * **decode** — summed wall time of the one-token `forward` calls, one per generated token
//!   that was fed back (`decode_steps`: every generated token except the last, which is never
//!   fed); `decode_tok_s = decode_steps / decode` (llama.cpp's "eval time ... runs").
//!   Sampling, detokenisation and the streaming callback are *not* in it; sampling is
//!   reported separately in `sampling`.
//! * **gdn** — time in the model's GDN layers over prefill and decode, which the runtime does
//!   not measure: the caller reads it from the model's own profiling counters (e.g.
//!   `HybridModel::gdn_counters`) around the run and records it with
//!   [`GenerationOutput::record_gdn`]; `gdn_share = gdn / (prefill + decode)`. Zero until
//!   recorded.
//!
//! Rates and shares are `0.0` when their denominator is zero (e.g. no decode step).
//!
//! ## Continuing a sequence
//!
//! [`Generator::generate`] always starts a fresh sequence. [`Generator::resume`] continues the
//! state the model already holds — left by an earlier call, restored from a snapshot, or moved
//! to another GDN backend meanwhile. After `generate` the model has consumed every token but the
//! last generated one (that one was chosen but never fed), so
//! `resume(&[prompt, generated].concat(), prompt.len() + generated.len() - 1, ..)` continues
//! exactly where it stopped: the pending token is fed as one decode step, as the uninterrupted
//! loop would have fed it, and greedy (or seeded, with the same [`Sampler`] state) generation
//! yields the same tokens. For `resume`, "prefill" is that catch-up forward over the pending
//! tokens.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::error::{Result, RuntimeError};
use crate::model::LanguageModel;
use crate::sampling::Sampler;
use crate::tokenizer::{TokenStreamer, Tokenizer};

/// How long to generate and when to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// The most tokens to generate (`--max-new-tokens`); an EOS token counts as generated.
    pub max_new_tokens: usize,
    /// Generation stops right after any of these is sampled (e.g. `<|im_end|>`,
    /// `<|endoftext|>`). Empty: stop only at `max_new_tokens`.
    pub eos_token_ids: Vec<u32>,
}

impl GenerateOptions {
    /// Up to `max_new_tokens` tokens, stopping early at any of `eos_token_ids`.
    pub fn new(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            eos_token_ids,
        }
    }
}

/// One generated token, as passed to the streaming callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedToken<'a> {
    /// 0 for the first generated token.
    pub index: usize,
    /// The token id.
    pub id: u32,
    /// The text this token completes: empty while a multi-byte character is still partial,
    /// for special tokens, for the EOS token, and when no tokenizer was given. The final
    /// token's text includes anything still held back, so the pieces concatenate to
    /// [`GenerationOutput::text`].
    pub text: &'a str,
    /// Whether `id` is one of the EOS ids (generation stops after it).
    pub is_eos: bool,
    /// Whether generation ends with this token (EOS or `max_new_tokens` reached).
    pub is_last: bool,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An EOS token was sampled.
    Eos,
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// The callback returned [`ControlFlow::Break`].
    Callback,
}

/// The result of one [`Generator::generate`] call; see the module docs for the timings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// The prompt as fed; for [`Generator::resume`], the whole history it continued.
    pub prompt_ids: Vec<u32>,
    /// Tokens fed by the prefill forward pass: the prompt for `generate`, the pending tokens
    /// for `resume`.
    pub prefill_tokens: usize,
    /// Generated ids, including the EOS token when one stopped generation.
    pub generated_ids: Vec<u32>,
    /// The generated text (EOS and special tokens excluded), when a tokenizer was given.
    pub text: Option<String>,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Wall time of the prefill forward pass.
    pub prefill: Duration,
    /// Summed wall time of the decode forward passes.
    pub decode: Duration,
    /// Number of decode forward passes (generated tokens fed back).
    pub decode_steps: usize,
    /// Time spent choosing tokens (all stages of the sampler).
    pub sampling: Duration,
    /// Time in the model's GDN backend during prefill and decode, as the caller recorded it
    /// with [`record_gdn`](Self::record_gdn) (zero until then).
    pub gdn: Duration,
    /// Prompt tokens per second of prefill.
    pub prefill_tok_s: f64,
    /// Decode steps per second of decode time.
    pub decode_tok_s: f64,
    /// `gdn / (prefill + decode)`, in [0, 1] for a model that measures honestly.
    pub gdn_share: f64,
}

impl GenerationOutput {
    /// Records the time the model spent in GDN layers during this run (read by the caller from
    /// the model's profiling counters) and the `gdn_share` it makes of model time.
    pub fn record_gdn(&mut self, gdn: Duration) {
        self.gdn = gdn;
        self.gdn_share = ratio(gdn, self.prefill + self.decode);
    }

    /// A one-paragraph timing summary in llama.cpp's spirit, for printing after a run.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        // After a resume the prefill fed only the pending tokens; say where the rest came from.
        let restored = self.prompt_ids.len().saturating_sub(self.prefill_tokens);
        let prompt = if restored > 0 {
            format!(
                "prompt: {} tokens, {restored} of them restored from the snapshot; prefill of the \
                 other {}",
                self.prompt_ids.len(),
                self.prefill_tokens
            )
        } else {
            format!(
                "prompt: {} token{}",
                self.prefill_tokens,
                plural(self.prefill_tokens)
            )
        };
        format!(
            "{prompt} in {:.2} ms ({:.2} tok/s)\n\
             decode: {} step{} in {:.2} ms ({:.2} tok/s), {} token{} generated ({:?})\n\
             sampling: {:.2} ms; GDN: {:.2} ms ({:.1}% of model time)",
            ms(self.prefill),
            self.prefill_tok_s,
            self.decode_steps,
            plural(self.decode_steps),
            ms(self.decode),
            self.decode_tok_s,
            self.generated_ids.len(),
            plural(self.generated_ids.len()),
            self.stop_reason,
            ms(self.sampling),
            ms(self.gdn),
            self.gdn_share * 100.0,
        )
    }
}

/// Drives one model through prompt prefill and token-by-token decode.
pub struct Generator<'a> {
    model: &'a mut dyn LanguageModel,
    sampler: Sampler,
    tokenizer: Option<&'a Tokenizer>,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("vocab_size", &self.model.vocab_size())
            .field("sampler", &self.sampler)
            .field("tokenizer", &self.tokenizer.map(Tokenizer::path))
            .finish()
    }
}

impl<'a> Generator<'a> {
    /// A generator over `model`. With a tokenizer, generated text is decoded and streamed;
    /// the tokenizer must fit the model's vocabulary
    /// ([`RuntimeError::TokenizerVocabTooLarge`] otherwise).
    pub fn new(
        model: &'a mut dyn LanguageModel,
        sampler: Sampler,
        tokenizer: Option<&'a Tokenizer>,
    ) -> Result<Self> {
        if let Some(t) = tokenizer {
            t.check_fits_model(model.vocab_size())?;
        }
        Ok(Self {
            model,
            sampler,
            tokenizer,
        })
    }

    /// The sampler (its random generator advances across calls).
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Generates a continuation of `prompt_ids` in a fresh sequence (the model is
    /// [`reset`](LanguageModel::reset) first). `on_token` sees every generated token as it
    /// is chosen and may stop generation by returning [`ControlFlow::Break`].
    ///
    /// Checked first, before the model runs: the prompt is not empty, its ids are in the
    /// vocabulary, and `prompt + max_new_tokens` fits `max_position_embeddings`.
    pub fn generate(
        &mut self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(&GeneratedToken<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        self.check_prompt(prompt_ids, options.max_new_tokens)?;
        self.model.reset().map_err(|source| RuntimeError::Model {
            stage: "reset".into(),
            source,
        })?;

        self.run(prompt_ids, prompt_ids, options, on_token)
    }

    /// Continues the sequence the model already holds (see the module docs). `history` is the
    /// whole sequence so far, of which the model has consumed the first `fed` tokens; the rest
    /// (at least one) are pending and are fed first, in one forward call whose logits choose
    /// the first new token. The repeat penalty sees all of `history`. `max_new_tokens` counts
    /// new tokens only.
    ///
    /// Checked first, before the model runs: at least one pending token, ids in the vocabulary,
    /// `history + max_new_tokens` within `max_position_embeddings`, and — when the model
    /// reports [`LanguageModel::position`] — that it really is at `fed`.
    pub fn resume(
        &mut self,
        history: &[u32],
        fed: usize,
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(&GeneratedToken<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        if fed >= history.len() {
            return Err(RuntimeError::NothingToResume {
                history: history.len(),
            });
        }
        self.check_prompt(history, options.max_new_tokens)?;
        if let Some(actual) = self.model.position() {
            if actual != fed {
                return Err(RuntimeError::ResumePositionMismatch {
                    expected: fed,
                    actual,
                });
            }
        }
        self.run(history, &history[fed..], options, on_token)
    }

    /// Feeds `feed` (the prompt, or the pending tail of `history`), then samples and feeds one
    /// token at a time.
    fn run(
        &mut self,
        history: &[u32],
        feed: &[u32],
        options: &GenerateOptions,
        on_token: &mut dyn FnMut(&GeneratedToken<'_>) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        let vocab = self.model.vocab_size();
        let started = Instant::now();
        let mut logits = self
            .model
            .forward(feed)
            .map_err(|source| RuntimeError::Model {
                stage: if feed.len() == history.len() {
                    format!("prefill of {} prompt tokens", feed.len())
                } else {
                    format!("catch-up of {} pending tokens", feed.len())
                },
                source,
            })?;
        let prefill = started.elapsed();
        check_logits(&logits, vocab)?;

        let mut streamer = self.tokenizer.map(|t| TokenStreamer::new(t, true));
        let mut history = history.to_vec();
        // Reserve for a typical run only: max_new_tokens may be as large as the model's context
        // (up to 2^30), and the vector grows as tokens really arrive.
        let mut generated = Vec::with_capacity(options.max_new_tokens.min(4096));
        let mut decode = Duration::ZERO;
        let mut decode_steps = 0;
        let mut sampling = Duration::ZERO;
        let mut stop_reason = StopReason::MaxNewTokens;

        while generated.len() < options.max_new_tokens {
            let started = Instant::now();
            let id = self.sampler.sample(&logits, &history)?;
            sampling += started.elapsed();
            generated.push(id);
            history.push(id);

            let is_eos = options.eos_token_ids.contains(&id);
            let is_last = is_eos || generated.len() == options.max_new_tokens;
            let text = match streamer.as_mut() {
                Some(s) => stream_piece(s, id, is_eos, is_last)?,
                None => String::new(),
            };
            let event = GeneratedToken {
                index: generated.len() - 1,
                id,
                text: &text,
                is_eos,
                is_last,
            };
            let flow = on_token(&event);
            if is_eos {
                stop_reason = StopReason::Eos;
                break;
            }
            if flow.is_break() {
                stop_reason = StopReason::Callback;
                break;
            }
            if is_last {
                break;
            }

            let started = Instant::now();
            logits = self
                .model
                .forward(&[id])
                .map_err(|source| RuntimeError::Model {
                    stage: format!("decode step {} (token {id})", generated.len()),
                    source,
                })?;
            decode += started.elapsed();
            decode_steps += 1;
            check_logits(&logits, vocab)?;
        }

        let text = match self.tokenizer {
            Some(t) => {
                let shown = if stop_reason == StopReason::Eos {
                    &generated[..generated.len() - 1]
                } else {
                    &generated[..]
                };
                Some(t.decode(shown, true)?)
            }
            None => None,
        };
        Ok(GenerationOutput {
            prompt_ids: history[..history.len() - generated.len()].to_vec(),
            prefill_tokens: feed.len(),
            generated_ids: generated,
            text,
            stop_reason,
            prefill,
            decode,
            decode_steps,
            sampling,
            gdn: Duration::ZERO,
            prefill_tok_s: rate(feed.len(), prefill),
            decode_tok_s: rate(decode_steps, decode),
            gdn_share: 0.0,
        })
    }

    fn check_prompt(&self, prompt_ids: &[u32], max_new_tokens: usize) -> Result<()> {
        if prompt_ids.is_empty() {
            return Err(RuntimeError::EmptyPrompt);
        }
        let vocab = self.model.vocab_size();
        if let Some((index, &id)) = prompt_ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab)
        {
            return Err(RuntimeError::PromptTokenOutOfVocab { index, id, vocab });
        }
        let max_positions = self.model.max_position_embeddings();
        let total = prompt_ids.len().saturating_add(max_new_tokens);
        if total > max_positions {
            return Err(RuntimeError::PromptTooLong {
                prompt_tokens: prompt_ids.len(),
                max_new_tokens,
                total,
                max_positions,
            });
        }
        Ok(())
    }
}

/// The streamed text for token `id`: nothing for EOS, and on the last token whatever the
/// streamer still holds, so the pieces add up to the decoded output.
fn stream_piece(
    streamer: &mut TokenStreamer<'_>,
    id: u32,
    is_eos: bool,
    is_last: bool,
) -> Result<String> {
    let mut text = if is_eos {
        String::new()
    } else {
        streamer.push(id)?.unwrap_or_default()
    };
    if is_last {
        text.push_str(&streamer.finish()?.unwrap_or_default());
    }
    Ok(text)
}

fn check_logits(logits: &[f32], vocab: usize) -> Result<()> {
    if logits.len() != vocab {
        return Err(RuntimeError::LogitsLength {
            got: logits.len(),
            expected: vocab,
        });
    }
    Ok(())
}

fn rate(count: usize, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if count == 0 || secs == 0.0 {
        0.0
    } else {
        count as f64 / secs
    }
}

fn ratio(part: Duration, whole: Duration) -> f64 {
    let whole = whole.as_secs_f64();
    if whole == 0.0 {
        0.0
    } else {
        part.as_secs_f64() / whole
    }
}
