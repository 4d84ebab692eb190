//! The whole hybrid model: embeddings, decoder layers (GDN or gated attention, then MoE or dense
//! MLP, each behind a zero-centred RMSNorm and a residual), final norm and lm_head, with one
//! sequence's hybrid cache (KV caches in the attention layers, a slot in the GDN backend).

use std::path::Path;
use std::time::Duration;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use hybrid_gdn::{GdnBackend, LayerConstants, SlotId};

use crate::attention::{Attention, Rope};
use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gdn_mixer::GdnMixer;
use crate::gguf::GgufCheckpoint;
use crate::matrix::Matrix;
use crate::moe::SparseMoe;
use crate::nn::{Linear, Mlp, RmsNorm};
use crate::snapshot::Fingerprint;
use crate::weights::WeightStore;

mod state;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Storage dtype of the weight matrices (f32, bf16 or f16). Activations, norms and all
    /// accumulation are f32 whatever this is; bf16 halves the bytes streamed per token.
    pub dtype: DType,
    /// Quantize the weight matrices of a safetensors checkpoint (or random weights) to this
    /// GGML type on load (see [`WeightStore::with_quantization`]). GGUF files keep their
    /// stored formats, so this must be `None` for them.
    pub quantize: Option<GgmlDType>,
    /// Device for the candle side.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            quantize: None,
            device: Device::Cpu,
        }
    }
}

#[derive(Debug)]
enum Mixer {
    /// The constants stay here after upload so that the layer can be loaded into another
    /// backend for live migration (a few hundred KiB per layer at real shapes).
    Gdn {
        mixer: GdnMixer,
        constants: LayerConstants,
    },
    Attention(Attention),
}

#[derive(Debug)]
enum FeedForward {
    Dense(Mlp),
    Moe(SparseMoe),
}

#[derive(Debug)]
struct DecoderLayer {
    input_norm: RmsNorm,
    mixer: Mixer,
    post_norm: RmsNorm,
    feed_forward: FeedForward,
}

/// A loaded Qwen3-Next / Qwen3.5 model and the state of one sequence.
pub struct HybridModel {
    config: ModelConfig,
    embed: Matrix,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    gdn: Box<dyn GdnBackend>,
    slot: SlotId,
    position: usize,
    gdn_time: Duration,
    /// The weight format's identifier (recorded in snapshots) and display name.
    format_id: String,
    format_name: String,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for HybridModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridModel")
            .field("architecture", &self.config.architecture)
            .field("layers", &self.layers.len())
            .field("gdn_backend", &self.gdn.info().name)
            .field("position", &self.position)
            .finish()
    }
}

impl HybridModel {
    /// Loads the checkpoint at `path` with its GDN layers on `gdn`: a directory with
    /// config.json and safetensors, or a GGUF file (see [`HybridModel::load_gguf`]).
    pub fn load(path: &Path, options: &LoadOptions, gdn: Box<dyn GdnBackend>) -> Result<Self> {
        if path.is_file() {
            return Self::load_gguf(path, options, gdn);
        }
        let config = ModelConfig::from_dir(path)?;
        let store = WeightStore::open(path, options.dtype, &options.device)?
            .with_quantization(options.quantize);
        Self::from_store(config, &store, gdn)
    }

    /// Loads a GGUF file as llama.cpp's converter writes these models: config from its
    /// metadata, weights in their stored formats (see [`crate::gguf`]).
    pub fn load_gguf(path: &Path, options: &LoadOptions, gdn: Box<dyn GdnBackend>) -> Result<Self> {
        if options.quantize.is_some() || options.dtype != DType::F32 {
            return Err(ModelError::InvalidOption(format!(
                "{}: a GGUF file keeps the weight formats it was written with; --dtype applies \
                 to safetensors checkpoints (re-quantize a GGUF with llama-quantize)",
                path.display()
            )));
        }
        if !options.device.is_cpu() {
            return Err(ModelError::InvalidOption(format!(
                "{}: GGUF weights load on the CPU only",
                path.display()
            )));
        }
        let mut gguf = GgufCheckpoint::open(path)?;
        let config = gguf.config()?;
        let store = WeightStore::from_gguf(gguf);
        Self::from_store(config, &store, gdn)
    }

    /// A model of `config`'s shapes with seeded random weights (see [`WeightStore::random`]):
    /// for speed measurements at real shapes.
    pub fn random(
        config: ModelConfig,
        options: &LoadOptions,
        gdn: Box<dyn GdnBackend>,
        seed: u64,
    ) -> Result<Self> {
        let store = WeightStore::random(seed, options.dtype, &options.device)
            .with_quantization(options.quantize);
        Self::from_store(config, &store, gdn)
    }

    /// Builds the model from an opened checkpoint.
    pub fn from_store(
        config: ModelConfig,
        store: &WeightStore,
        mut gdn: Box<dyn GdnBackend>,
    ) -> Result<Self> {
        let root = if config.nested_text_config {
            "model.language_model"
        } else {
            "model"
        };
        let (hidden, vocab, eps) = (config.hidden_size, config.vocab_size, config.rms_norm_eps);
        let embed = store.get_matrix(&format!("{root}.embed_tokens.weight"), &[vocab, hidden])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers());
        for (i, kind) in config.layer_types.iter().enumerate() {
            let prefix = format!("{root}.layers.{i}");
            let mixer = match kind {
                LayerKind::LinearAttention => {
                    let (mixer, constants) =
                        GdnMixer::load(store, &format!("{prefix}.linear_attn"), &config)?;
                    gdn.load_layer(i, config.gdn_spec(), &constants)
                        .map_err(|source| ModelError::Gdn { layer: i, source })?;
                    Mixer::Gdn { mixer, constants }
                }
                LayerKind::FullAttention => Mixer::Attention(Attention::load(
                    store,
                    &format!("{prefix}.self_attn"),
                    &config,
                )?),
            };
            let feed_forward = match (&config.moe, config.is_moe_layer(i)) {
                (Some(moe), true) => FeedForward::Moe(SparseMoe::load(
                    store,
                    &format!("{prefix}.mlp"),
                    hidden,
                    moe,
                )?),
                _ => FeedForward::Dense(Mlp::load(
                    store,
                    &format!("{prefix}.mlp"),
                    hidden,
                    config.intermediate_size,
                )?),
            };
            layers.push(DecoderLayer {
                input_norm: RmsNorm::load(
                    store,
                    &format!("{prefix}.input_layernorm"),
                    hidden,
                    eps,
                )?,
                mixer,
                post_norm: RmsNorm::load(
                    store,
                    &format!("{prefix}.post_attention_layernorm"),
                    hidden,
                    eps,
                )?,
                feed_forward,
            });
        }
        let norm = RmsNorm::load(store, &format!("{root}.norm"), hidden, eps)?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed.clone(), None)
        } else {
            Linear::load(store, "lm_head", hidden, vocab, false)?
        };
        let slot = gdn
            .alloc_slot()
            .map_err(|source| ModelError::Gdn { layer: 0, source })?;
        let fingerprint = state::fingerprint(&config, &layers, &embed, &lm_head)?;
        Ok(HybridModel {
            rope: Rope::new(&config),
            config,
            embed,
            layers,
            norm,
            lm_head,
            gdn,
            slot,
            position: 0,
            gdn_time: Duration::ZERO,
            format_id: store.format_id(),
            format_name: store.format_name(),
            fingerprint,
        })
    }

    /// The normalised config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// How the weight matrices are stored (`BF16`, `Q8_0 (quantized on load)`, `GGUF Q4_K_M`).
    pub fn weight_format(&self) -> &str {
        &self.format_name
    }

    /// The GDN backend the linear-attention layers run on.
    pub fn gdn_backend(&self) -> &dyn GdnBackend {
        self.gdn.as_ref()
    }

    /// Tokens of the current sequence processed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Cumulative wall time inside the GDN backend.
    pub fn gdn_time(&self) -> Duration {
        self.gdn_time
    }

    /// Starts a new sequence: empties the KV caches and zeroes the GDN slot.
    pub fn reset(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if let Mixer::Attention(attention) = &mut layer.mixer {
                attention.reset();
            }
        }
        self.gdn
            .reset_slot(self.slot)
            .map_err(|source| ModelError::Gdn { layer: 0, source })?;
        self.position = 0;
        Ok(())
    }

    /// Feeds `tokens` after the sequence so far and returns the last position's logits (f32).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let hidden = self.forward_hidden(tokens)?;
        let last = hidden.narrow(0, tokens.len() - 1, 1)?;
        Ok(self
            .lm_head
            .forward(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }

    /// Feeds `tokens` and returns the logits of every position, `[T, vocab]` f32.
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let hidden = self.forward_hidden(tokens)?;
        Ok(self.lm_head.forward(&hidden)?.to_dtype(DType::F32)?)
    }

    /// Embeds and runs every layer; returns the final-normed hidden states `[T, hidden]`.
    fn forward_hidden(&mut self, tokens: &[u32]) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(ModelError::NoTokens);
        }
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        let end = self.position + tokens.len();
        if end > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                length: end,
                max: self.config.max_position_embeddings,
            });
        }
        let mut x = self.embed.rows_f32(tokens)?;
        let start = self.position;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            // 1. Token mixer with residual.
            let normed = layer.input_norm.forward(&x)?;
            let mixed = match &mut layer.mixer {
                Mixer::Gdn { mixer, .. } => {
                    let (y, spent) = mixer.forward(&normed, i, self.gdn.as_mut(), self.slot)?;
                    self.gdn_time += spent;
                    y
                }
                Mixer::Attention(attention) => attention.forward(&normed, start, &self.rope)?,
            };
            x = (x + mixed)?;
            // 2. Feed-forward with residual.
            let normed = layer.post_norm.forward(&x)?;
            let ff = match &layer.feed_forward {
                FeedForward::Dense(mlp) => mlp.forward(&normed)?,
                FeedForward::Moe(moe) => moe.forward(&normed)?,
            };
            x = (x + ff)?;
        }
        self.position = end;
        self.norm.forward(&x)
    }
}
