//! The whole hybrid model: embeddings, decoder layers (GDN or gated attention, then MoE or dense
//! MLP, each behind a zero-centred RMSNorm and a residual), final norm and lm_head, with one
//! sequence's hybrid cache (KV caches in the attention layers, a slot in the GDN backend).
//!
//! The weights and the GDN backend are shared by every [`Sequence`]; a sequence holds only its
//! state (GDN slot, position, KV caches). [`HybridModel`] keeps one built-in sequence for the
//! single-sequence API ([`HybridModel::forward`], snapshots), and runs any number of others:
//! [`HybridModel::prefill`] for one and [`HybridModel::step`] for a batch, one token each, whose
//! projections read every weight once for the whole batch.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use hybrid_gdn::{Counters, GdnBackend, LayerConstants, SlotId};

use crate::attention::{Attention, Rope};
use crate::config::{LayerKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gdn_mixer::GdnMixer;
use crate::gguf::GgufCheckpoint;
use crate::kv_cache::{KvCache, KvDtype};
use crate::matrix::Matrix;
use crate::moe::SparseMoe;
use crate::nn::{Linear, Mlp, RmsNorm};
use crate::placement::{Place, Target};
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
    /// Where the model's tensors live (`--device`; [`crate::parse_device`] opens one by name).
    /// On the CPU the matrix products run through this crate's kernels, elsewhere through
    /// candle's ops (cuBLAS and candle's quantized matmul on CUDA).
    pub device: Device,
    /// Run the matrix products through candle's generic ops even on the CPU — the code path a
    /// GPU runs, so that it can be tested without one. Slower; off by default.
    pub candle_ops: bool,
    /// What the host attention's KV caches store (`--kv-cache`); `None` picks
    /// [`KvDtype::auto`]: f32 for f32 weights, f16 for every smaller format. Attention on
    /// candle's ops (another device, or `candle_ops`) keeps f32 caches and refuses 16 bits.
    pub kv_cache: Option<KvDtype>,
    /// Use a GGUF file's quantized tensors in place from a read-only memory map (default) rather
    /// than reading them into memory (`--no-mmap`); see [`GgufCheckpoint::memory_map`].
    pub mmap: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            quantize: None,
            device: Device::Cpu,
            candle_ops: false,
            kv_cache: None,
            mmap: true,
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

impl Place for DecoderLayer {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.input_norm.place(target)?;
        match &mut self.mixer {
            Mixer::Gdn { mixer, .. } => mixer.place(target)?,
            Mixer::Attention(attention) => attention.place(target)?,
        }
        self.post_norm.place(target)?;
        match &mut self.feed_forward {
            FeedForward::Dense(mlp) => mlp.place(target),
            FeedForward::Moe(moe) => moe.place(target),
        }
    }
}

/// Distinguishes models (and GDN backends after a migration) so that a [`Sequence`] is only ever
/// run by the model, on the backend, that allocated its slot.
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

/// Which model and which of its GDN backends a sequence belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    model: u64,
    backend_generation: u64,
}

/// GDN slots of sequences dropped without [`HybridModel::free_sequence`] (a panic, an early
/// return): every [`Sequence`] holds a handle and leaves its slot here when dropped, and the
/// model frees the slots that are still its own at its next [`HybridModel::new_sequence`], so a
/// lost sequence does not keep its recurrent state for the model's lifetime.
#[derive(Clone, Default)]
struct DroppedSlots(Arc<Mutex<Vec<(Owner, SlotId)>>>);

impl std::fmt::Debug for DroppedSlots {
    /// Only the count: every sequence holds the same list.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.0.lock().map_or(0, |slots| slots.len());
        write!(f, "DroppedSlots({pending} pending)")
    }
}

impl DroppedSlots {
    fn push(&self, owner: Owner, slot: SlotId) {
        // A poisoned lock only means another thread panicked while pushing; the list is intact.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((owner, slot));
    }

    fn take(&self) -> Vec<(Owner, SlotId)> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// One sequence's state: its slot in the GDN backend, its position, and a paged KV cache per
/// attention layer. Made by [`HybridModel::new_sequence`]; hand it back with
/// [`HybridModel::free_sequence`] to free its GDN slot at once (one that is dropped instead
/// has its slot freed by the model's next `new_sequence`).
#[derive(Debug)]
pub struct Sequence {
    owner: Owner,
    slot: SlotId,
    position: usize,
    /// Per layer: `Some` for attention layers, `None` for GDN layers.
    kv: Vec<Option<KvCache>>,
    /// Where the slot goes when the sequence is dropped; `None` once it was freed.
    on_drop: Option<DroppedSlots>,
}

impl Drop for Sequence {
    fn drop(&mut self) {
        if let Some(dropped) = self.on_drop.take() {
            dropped.push(self.owner, self.slot);
        }
    }
}

impl Sequence {
    /// Tokens of this sequence processed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The GDN backend slot that holds this sequence's recurrent state (readable through
    /// [`HybridModel::gdn_backend`]).
    pub fn gdn_slot(&self) -> SlotId {
        self.slot
    }

    /// Bytes the KV caches hold (whole pages).
    pub fn kv_bytes(&self) -> usize {
        self.kv.iter().flatten().map(KvCache::allocated_bytes).sum()
    }
}

/// Everything the sequences share: weights, the GDN backend and the model's identity.
struct Network {
    config: ModelConfig,
    embed: Matrix,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    gdn: Box<dyn GdnBackend>,
    owner: Owner,
    dropped: DroppedSlots,
    /// Counters of GDN backends the model migrated away from, so that its GDN counters keep
    /// counting across a migration.
    retired_gdn: Counters,
    /// The weight format's identifier (recorded in snapshots) and display name.
    format_id: String,
    format_name: String,
    fingerprint: Fingerprint,
    /// Where every weight and activation tensor lives, and what multiplies there.
    target: Target,
    /// What the host attention's KV caches store.
    kv_dtype: KvDtype,
}

/// A loaded Qwen3-Next / Qwen3.5 model and its built-in sequence.
pub struct HybridModel {
    net: Network,
    primary: Sequence,
}

impl std::fmt::Debug for HybridModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridModel")
            .field("architecture", &self.net.config.architecture)
            .field("layers", &self.net.layers.len())
            .field("gdn_backend", &self.net.gdn.info().name)
            .field("position", &self.primary.position)
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
        Self::with_options(config, store, options, gdn)
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
        let mut gguf = GgufCheckpoint::open(path)?.memory_map(options.mmap);
        let config = gguf.config()?;
        let store = WeightStore::from_gguf(gguf, &options.device);
        Self::with_options(config, store, options, gdn)
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
        Self::with_options(config, store, options, gdn)
    }

    /// Builds the model from `store` with the rest of `options` (candle ops, KV cache type).
    fn with_options(
        config: ModelConfig,
        store: WeightStore,
        options: &LoadOptions,
        gdn: Box<dyn GdnBackend>,
    ) -> Result<Self> {
        let store = store.with_candle_ops(options.candle_ops);
        Self::build(config, &store, gdn, options.kv_cache)
    }

    /// Builds the model from an opened checkpoint (KV caches of [`KvDtype::auto`]'s type).
    pub fn from_store(
        config: ModelConfig,
        store: &WeightStore,
        gdn: Box<dyn GdnBackend>,
    ) -> Result<Self> {
        Self::build(config, store, gdn, None)
    }

    /// [`HybridModel::from_store`] with the KV cache type `LoadOptions::kv_cache` asks for.
    fn build(
        config: ModelConfig,
        store: &WeightStore,
        mut gdn: Box<dyn GdnBackend>,
        kv_cache: Option<KvDtype>,
    ) -> Result<Self> {
        let target = Target {
            device: store.device().clone(),
            native_kernels: !store.candle_ops(),
        };
        let kv_dtype = kv_cache_dtype(kv_cache, store, &target)?;
        let root = if config.nested_text_config {
            "model.language_model"
        } else {
            "model"
        };
        let (hidden, vocab, eps) = (config.hidden_size, config.vocab_size, config.rms_norm_eps);
        let mut embed =
            store.get_matrix(&format!("{root}.embed_tokens.weight"), &[vocab, hidden])?;
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
        let mut norm = RmsNorm::load(store, &format!("{root}.norm"), hidden, eps)?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed.clone(), None)
        } else {
            Linear::load(store, "lm_head", hidden, vocab, false)?
        };
        let fingerprint = state::fingerprint(&config, &layers, &embed, &lm_head)?;
        // Assembled where the readers produced each tensor; now all onto the model's device.
        embed.place(&target)?;
        layers.place(&target)?;
        norm.place(&target)?;
        let mut lm_head = if config.tie_word_embeddings {
            // One copy of a tied table on the device, not two.
            Linear::new(embed.clone(), None)
        } else {
            lm_head
        };
        lm_head.place(&target)?;
        let mut net = Network {
            rope: Rope::new(&config),
            config,
            embed,
            layers,
            norm,
            lm_head,
            gdn,
            owner: Owner {
                model: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
                backend_generation: 0,
            },
            dropped: DroppedSlots::default(),
            retired_gdn: Counters::default(),
            format_id: store.format_id(),
            format_name: store.format_name(),
            fingerprint,
            target,
            kv_dtype,
        };
        let primary = net.new_sequence()?;
        Ok(HybridModel { net, primary })
    }

    /// The normalised config.
    pub fn config(&self) -> &ModelConfig {
        &self.net.config
    }

    /// How the weight matrices are stored (`BF16`, `Q8_0 (quantized on load)`, `GGUF Q4_K_M`).
    pub fn weight_format(&self) -> &str {
        &self.net.format_name
    }

    /// What the KV caches of the attention layers store (`LoadOptions::kv_cache`, resolved).
    pub fn kv_cache_dtype(&self) -> KvDtype {
        self.net.kv_dtype
    }

    /// The device the model's tensors live on (`LoadOptions::device`).
    pub fn device(&self) -> &Device {
        &self.net.target.device
    }

    /// What runs the model's matrix products, for run summaries (e.g. `avx2 (other quants:
    /// candle AVX2)`, or `candle on CUDA GPU 0 ...`).
    pub fn kernel_description(&self) -> String {
        crate::device::kernel_description(&self.net.target.device, self.net.target.native_kernels)
    }

    /// The GDN backend the linear-attention layers run on.
    pub fn gdn_backend(&self) -> &dyn GdnBackend {
        self.net.gdn.as_ref()
    }

    /// Tokens of the built-in sequence processed so far.
    pub fn position(&self) -> usize {
        self.primary.position
    }

    /// Cumulative GDN counters of the model (every sequence, every backend it ran on): steps,
    /// prefill tokens, transfers and [`Counters::run_time`], the wall time of the backend's
    /// runs — the GDN share of the model's time. Only differences of two readings mean
    /// something to a profiler.
    pub fn gdn_counters(&self) -> Counters {
        self.net.retired_gdn.plus(self.net.gdn.counters())
    }

    /// Starts the built-in sequence again: empties its KV caches and zeroes its GDN slot.
    pub fn reset(&mut self) -> Result<()> {
        self.net.reset_sequence(&mut self.primary)
    }

    /// Feeds `tokens` after the built-in sequence so far and returns the last position's logits
    /// (f32).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        self.net.prefill(&mut self.primary, tokens)
    }

    /// Feeds `tokens` to the built-in sequence and returns the logits of every position,
    /// `[T, vocab]` f32.
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let hidden = self
            .net
            .forward_rows(&mut [&mut self.primary], &[tokens.len()], tokens)?;
        Ok(self.net.lm_head.forward(&hidden)?.to_dtype(DType::F32)?)
    }

    /// A new, empty sequence (a fresh GDN slot) that this model can run beside its built-in one.
    pub fn new_sequence(&mut self) -> Result<Sequence> {
        self.net.new_sequence()
    }

    /// Frees `sequence`'s GDN slot.
    pub fn free_sequence(&mut self, mut sequence: Sequence) -> Result<()> {
        self.net.check_owner(&sequence)?;
        self.net
            .gdn
            .free_slot(sequence.slot)
            .map_err(|source| ModelError::Gdn { layer: 0, source })?;
        sequence.on_drop = None;
        Ok(())
    }

    /// Starts `sequence` again from position 0.
    pub fn reset_sequence(&mut self, sequence: &mut Sequence) -> Result<()> {
        self.net.reset_sequence(sequence)
    }

    /// Feeds `tokens` after what `sequence` has seen and returns the last position's logits
    /// (f32, `[vocab]`).
    pub fn prefill(&mut self, sequence: &mut Sequence, tokens: &[u32]) -> Result<Tensor> {
        self.net.prefill(sequence, tokens)
    }

    /// One decode step for a batch: `tokens[i]` continues `sequences[i]`. Returns the next-token
    /// logits `[B, vocab]` (f32), row i for sequence i. The projections, MLPs and lm_head run
    /// once over the B rows (each weight read once for the batch); attention and the GDN
    /// recurrence run per sequence. Row i equals what `prefill(sequences[i], &[tokens[i]])`
    /// returns alone, up to the summation order of the batched kernels.
    pub fn step(&mut self, sequences: &mut [&mut Sequence], tokens: &[u32]) -> Result<Tensor> {
        if sequences.len() != tokens.len() {
            return Err(ModelError::InvalidOption(format!(
                "a batch step takes one token per sequence: {} sequences, {} tokens",
                sequences.len(),
                tokens.len()
            )));
        }
        let counts = vec![1; tokens.len()];
        let hidden = self.net.forward_rows(sequences, &counts, tokens)?;
        Ok(self.net.lm_head.forward(&hidden)?.to_dtype(DType::F32)?)
    }
}

/// The KV cache type of a model built from `store` on `target`: `asked` (`--kv-cache`), or
/// [`KvDtype::auto`] for the store's weight format. 16 bits are the host attention's; candle's
/// attention ops keep f32 caches, so asking for 16 bits there is refused rather than ignored.
fn kv_cache_dtype(asked: Option<KvDtype>, store: &WeightStore, target: &Target) -> Result<KvDtype> {
    let host_attention = target.host_kernels();
    match asked {
        None if host_attention => Ok(KvDtype::auto(store.full_precision())),
        None | Some(KvDtype::F32) => Ok(KvDtype::F32),
        Some(dtype) if host_attention => Ok(dtype),
        Some(dtype) => Err(ModelError::InvalidOption(format!(
            "--kv-cache {dtype}: 16-bit KV caches are kept by the CPU attention kernels; \
             attention on candle's ops (--device other than cpu, or candle_ops) keeps f32 \
             caches (use --kv-cache auto or f32)"
        ))),
    }
}

impl Network {
    fn new_sequence(&mut self) -> Result<Sequence> {
        self.free_dropped_slots();
        let slot = self
            .gdn
            .alloc_slot()
            .map_err(|source| ModelError::Gdn { layer: 0, source })?;
        let kv = self
            .layers
            .iter()
            .map(|layer| match &layer.mixer {
                Mixer::Attention(attention) => Some(attention.new_cache(self.kv_dtype)),
                Mixer::Gdn { .. } => None,
            })
            .collect();
        Ok(Sequence {
            owner: self.owner,
            slot,
            position: 0,
            kv,
            on_drop: Some(self.dropped.clone()),
        })
    }

    /// Frees the slots of dropped sequences that live on this model's current GDN backend
    /// (those of a backend migrated away went with it). A slot that fails to free is not
    /// reported: the backend no longer knows it (a `free_sequence` that failed half way) or the
    /// device failed, which the next call that uses the device reports; neither is a reason to
    /// refuse the new sequence being made.
    fn free_dropped_slots(&mut self) {
        for (owner, slot) in self.dropped.take() {
            if owner == self.owner {
                let _ = self.gdn.free_slot(slot);
            }
        }
    }

    /// A sequence made by another model, or before this model's GDN backend was replaced,
    /// holds a slot id that means nothing (or another sequence's state) here.
    fn check_owner(&self, sequence: &Sequence) -> Result<()> {
        if sequence.owner.model != self.owner.model {
            return Err(ModelError::InvalidOption(
                "this sequence was made by another model; sequences run only on the model \
                 whose new_sequence made them"
                    .into(),
            ));
        }
        if sequence.owner != self.owner {
            return Err(ModelError::InvalidOption(
                "this sequence's GDN slot belongs to the backend this model ran before \
                 migrate_gdn_backend; export its state before migrating and import it into a \
                 new sequence after"
                    .into(),
            ));
        }
        Ok(())
    }

    fn reset_sequence(&mut self, sequence: &mut Sequence) -> Result<()> {
        self.check_owner(sequence)?;
        self.gdn
            .reset_slot(sequence.slot)
            .map_err(|source| ModelError::Gdn { layer: 0, source })?;
        sequence.kv.iter_mut().flatten().for_each(KvCache::clear);
        sequence.position = 0;
        Ok(())
    }

    fn prefill(&mut self, sequence: &mut Sequence, tokens: &[u32]) -> Result<Tensor> {
        let hidden = self.forward_rows(&mut [sequence], &[tokens.len()], tokens)?;
        let last = hidden.narrow(0, tokens.len() - 1, 1)?;
        Ok(self
            .lm_head
            .forward(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }

    /// Embeds `tokens` and runs every layer; `counts[i]` consecutive tokens continue
    /// `sequences[i]`. Everything is checked before any state changes. Returns the final-normed
    /// hidden states `[T, hidden]`.
    fn forward_rows(
        &mut self,
        sequences: &mut [&mut Sequence],
        counts: &[usize],
        tokens: &[u32],
    ) -> Result<Tensor> {
        if tokens.is_empty() || counts.contains(&0) {
            return Err(ModelError::NoTokens);
        }
        debug_assert_eq!(counts.iter().sum::<usize>(), tokens.len());
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        for (sequence, &count) in sequences.iter().zip(counts) {
            self.check_owner(sequence)?;
            let end = sequence.position + count;
            if end > self.config.max_position_embeddings {
                return Err(ModelError::ContextOverflow {
                    length: end,
                    max: self.config.max_position_embeddings,
                });
            }
        }
        let spans: Vec<(SlotId, usize)> = sequences
            .iter()
            .zip(counts)
            .map(|(sequence, &count)| (sequence.slot, count))
            .collect();
        let mut x = self.embed.rows_f32(tokens)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            // 1. Token mixer with residual.
            let normed = layer.input_norm.forward(&x)?;
            let mixed = match &mut layer.mixer {
                Mixer::Gdn { mixer, .. } => mixer.forward(&normed, i, self.gdn.as_mut(), &spans)?,
                Mixer::Attention(attention) => {
                    let mut caches = sequences
                        .iter_mut()
                        .map(|sequence| {
                            sequence.kv[i].as_mut().ok_or_else(|| {
                                ModelError::IncompatibleState(format!(
                                    "layer {i} is an attention layer but the sequence has no \
                                     KV cache for it"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    attention.forward(&normed, &mut caches, counts, &self.rope)?
                }
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
        for (sequence, &count) in sequences.iter_mut().zip(counts) {
            sequence.position += count;
        }
        self.norm.forward(&x)
    }
}
