//! The model as the runtime sees it: [`HybridModel`] behind [`LanguageModel`].

use hybrid_model::HybridModel;
use hybrid_runtime::{LanguageModel, ModelError};

/// Adapts a [`HybridModel`] (one sequence) to the runtime's [`LanguageModel`].
#[derive(Debug)]
pub struct Engine {
    model: HybridModel,
}

impl Engine {
    /// Wraps a loaded model.
    pub fn new(model: HybridModel) -> Self {
        Engine { model }
    }

    /// The model.
    pub fn model(&self) -> &HybridModel {
        &self.model
    }

    /// Unwraps the model (e.g. to run several sequences on it).
    pub fn into_model(self) -> HybridModel {
        self.model
    }

    /// The model, mutably (e.g. to export GDN state).
    pub fn model_mut(&mut self) -> &mut HybridModel {
        &mut self.model
    }
}

impl LanguageModel for Engine {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn max_position_embeddings(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        Ok(self.model.forward(tokens)?.to_vec1::<f32>()?)
    }

    fn reset(&mut self) -> Result<(), ModelError> {
        Ok(self.model.reset()?)
    }

    fn position(&self) -> Option<usize> {
        Some(self.model.position())
    }
}
