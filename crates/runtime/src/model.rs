//! The contract between the runtime and a model: [`LanguageModel`].
//!
//! The runtime is model-agnostic: anything that can turn token ids into next-token logits while
//! keeping one sequence's state can be driven by [`crate::Generator`].

/// The error a model implementation returns; the runtime wraps it, unchanged, in
/// [`crate::RuntimeError::Model`] (reachable through `std::error::Error::source`).
pub type ModelError = Box<dyn std::error::Error + Send + Sync>;

/// A causal LM holding one sequence's state (KV cache + GDN slots).
///
/// The runtime calls, per generation: [`reset`](Self::reset) once, [`forward`](Self::forward)
/// once with the whole prompt (prefill), then `forward` with one token at a time (decode).
pub trait LanguageModel {
    /// Number of logits [`forward`](Self::forward) returns (`vocab_size` in config.json).
    fn vocab_size(&self) -> usize;

    /// The longest sequence (prompt + generated tokens) the model supports
    /// (`max_position_embeddings` in config.json).
    fn max_position_embeddings(&self) -> usize;

    /// Feeds `tokens` (the prompt, or one decode token) after what was fed before; returns the
    /// last position's logits (f32, `vocab_size` of them).
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError>;

    /// Drops the sequence state (a new sequence starts at position 0).
    fn reset(&mut self) -> Result<(), ModelError>;

    /// Tokens of the current sequence the model has consumed, when it keeps count. The runtime
    /// uses it to check that [`crate::Generator::resume`] continues the state the model really
    /// holds; `None` (the default) skips that check.
    fn position(&self) -> Option<usize> {
        None
    }
}
