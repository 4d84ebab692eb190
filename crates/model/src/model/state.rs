//! The sequence state as data: export and import of the whole hybrid state (for snapshots),
//! the model fingerprint that snapshots carry, and live migration of the GDN state to another
//! backend. A child module of `model` so it can reach the model's private fields.

use hybrid_gdn::GdnBackend;
use serde_json::Value;

use super::{DecoderLayer, HybridModel, Mixer, Network, Sequence};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::matrix::Matrix;
use crate::nn::Linear;
use crate::snapshot::checksum::Fnv64;
use crate::snapshot::{Fingerprint, KvState, LayerState, ModelState, Snapshot, SnapshotError};

/// The fingerprint of a model: config, state geometry and a sample of the weights.
pub(super) fn fingerprint(
    config: &ModelConfig,
    layers: &[DecoderLayer],
    embed: &Matrix,
    lm_head: &Linear,
) -> Result<Fingerprint> {
    // The normalised config's Debug form lists every field in a fixed order, so the hash is the
    // same for equivalent config.json files (key order, whitespace, legacy rope spellings).
    let mut config_hash = Fnv64::default();
    config_hash.write(format!("{config:?}").as_bytes());
    let mut shapes = Fnv64::default();
    let mut weights = Fnv64::default();
    for (i, layer) in layers.iter().enumerate() {
        match &layer.mixer {
            Mixer::Gdn { constants, .. } => {
                shapes.write(format!("{i}:gdn:{:?};", config.gdn_spec()).as_bytes());
                weights.write_f32s(&constants.conv_weight);
                weights.write_f32s(&constants.a_log);
                weights.write_f32s(&constants.dt_bias);
            }
            Mixer::Attention(attention) => {
                shapes.write(format!("{i}:attention:{:?};", attention.kv_geometry()).as_bytes());
            }
        }
    }
    let first_row =
        |m: &Matrix| -> Result<Vec<f32>> { Ok(m.rows_f32(&[0])?.flatten_all()?.to_vec1::<f32>()?) };
    weights.write_f32s(&first_row(embed)?);
    for block in lm_head.blocks() {
        weights.write_f32s(&first_row(block)?);
    }
    Ok(Fingerprint {
        config: config_hash.finish(),
        shapes: shapes.finish(),
        weights: weights.finish(),
    })
}

impl Network {
    fn export(&mut self, sequence: &Sequence) -> Result<ModelState> {
        self.check_owner(sequence)?;
        let spec = self.config.gdn_spec();
        let gdn = &mut self.gdn;
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| match &layer.mixer {
                Mixer::Gdn { .. } => Ok(LayerState::Gdn {
                    spec,
                    state: gdn
                        .export_state(i, sequence.slot)
                        .map_err(|source| ModelError::Gdn { layer: i, source })?,
                }),
                Mixer::Attention(attention) => {
                    let (kv_heads, head_dim) = attention.kv_geometry();
                    let cache = sequence.kv[i].as_ref().ok_or_else(|| {
                        ModelError::IncompatibleState(format!("layer {i} has no KV cache"))
                    })?;
                    let (keys, values) = cache.export()?;
                    Ok(LayerState::Attention(KvState {
                        kv_heads,
                        head_dim,
                        cached: cache.len(),
                        keys,
                        values,
                    }))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelState {
            position: sequence.position,
            layers,
        })
    }

    fn import(&mut self, sequence: &mut Sequence, state: &ModelState) -> Result<()> {
        self.check_owner(sequence)?;
        self.check_state(state)?;
        let result = self.apply_state(sequence, state);
        if result.is_err() {
            let _ = self.reset_sequence(sequence);
        }
        result
    }

    fn check_state(&self, state: &ModelState) -> Result<()> {
        let mismatch = |detail: String| Err(ModelError::IncompatibleState(detail));
        if state.layers.len() != self.layers.len() {
            return mismatch(format!(
                "it has {} layers, the model {}",
                state.layers.len(),
                self.layers.len()
            ));
        }
        let max = self.config.max_position_embeddings;
        if state.position > max {
            return mismatch(format!(
                "position {} exceeds max_position_embeddings = {max}",
                state.position
            ));
        }
        let spec = self.config.gdn_spec();
        for (i, (layer, saved)) in self.layers.iter().zip(&state.layers).enumerate() {
            match (&layer.mixer, saved) {
                (
                    Mixer::Gdn { .. },
                    LayerState::Gdn {
                        spec: saved_spec,
                        state,
                    },
                ) => {
                    if *saved_spec != spec {
                        return mismatch(format!(
                            "layer {i} GDN geometry {saved_spec:?}, the model's {spec:?}"
                        ));
                    }
                    state
                        .validate(&spec)
                        .map_err(|source| ModelError::Gdn { layer: i, source })?;
                }
                (Mixer::Attention(attention), LayerState::Attention(kv)) => {
                    let (kv_heads, head_dim) = attention.kv_geometry();
                    if (kv.kv_heads, kv.head_dim) != (kv_heads, head_dim) {
                        return mismatch(format!(
                            "layer {i} KV cache has {} heads × {} dims, the model {kv_heads} × \
                             {head_dim}",
                            kv.kv_heads, kv.head_dim
                        ));
                    }
                    if kv.cached != state.position {
                        return mismatch(format!(
                            "layer {i} caches {} positions but the state is at position {}",
                            kv.cached, state.position
                        ));
                    }
                    let len = kv_heads * kv.cached * head_dim;
                    if kv.keys.len() != len || kv.values.len() != len {
                        return mismatch(format!(
                            "layer {i} keys/values have {}/{} values, expected {len}",
                            kv.keys.len(),
                            kv.values.len()
                        ));
                    }
                }
                (Mixer::Gdn { .. }, LayerState::Attention(_)) => {
                    return mismatch(format!(
                        "layer {i} is a GDN layer, the state has a KV cache"
                    ))
                }
                (Mixer::Attention(_), LayerState::Gdn { .. }) => {
                    return mismatch(format!(
                        "layer {i} is an attention layer, the state has GDN state"
                    ))
                }
            }
        }
        Ok(())
    }

    fn apply_state(&mut self, sequence: &mut Sequence, state: &ModelState) -> Result<()> {
        for (i, (layer, saved)) in self.layers.iter_mut().zip(&state.layers).enumerate() {
            match (&mut layer.mixer, saved) {
                (Mixer::Gdn { .. }, LayerState::Gdn { state, .. }) => self
                    .gdn
                    .import_state(i, sequence.slot, state)
                    .map_err(|source| ModelError::Gdn { layer: i, source })?,
                (Mixer::Attention(_), LayerState::Attention(kv)) => sequence.kv[i]
                    .as_mut()
                    .ok_or_else(|| {
                        ModelError::IncompatibleState(format!("layer {i} has no KV cache"))
                    })?
                    .import(kv.cached, &kv.keys, &kv.values)?,
                _ => {
                    return Err(ModelError::IncompatibleState(format!(
                        "layer {i} changed kind while importing"
                    )))
                }
            }
        }
        sequence.position = state.position;
        Ok(())
    }

    fn snapshot(&mut self, sequence: &Sequence, tokens: &[u32], app: Value) -> Result<Snapshot> {
        if tokens.len() < sequence.position {
            return Err(ModelError::IncompatibleState(format!(
                "a snapshot at position {} needs at least that many tokens, got {}",
                sequence.position,
                tokens.len()
            )));
        }
        Ok(Snapshot {
            architecture: format!("{:?}", self.config.architecture),
            weights_dtype: self.format_id.clone(),
            fingerprint: self.fingerprint,
            gdn_backend: self.gdn.info().name,
            tokens: tokens.to_vec(),
            state: self.export(sequence)?,
            app,
            origin: None,
        })
    }

    fn restore(&mut self, sequence: &mut Sequence, snapshot: &Snapshot) -> Result<()> {
        let path = snapshot.origin_path();
        let architecture = format!("{:?}", self.config.architecture);
        if snapshot.architecture != architecture {
            return Err(SnapshotError::ForeignModel {
                path,
                detail: format!(
                    "it is a {} snapshot and this is a {architecture} model",
                    snapshot.architecture
                ),
            }
            .into());
        }
        let (saved, ours) = (snapshot.fingerprint, self.fingerprint);
        let differing = |parts: &[(&str, u64, u64)]| {
            parts
                .iter()
                .filter(|(_, a, b)| a != b)
                .map(|(what, a, b)| format!("{what} (snapshot {a:016x}, this model {b:016x})"))
                .collect::<Vec<_>>()
        };
        let foreign = |differs: Vec<String>| {
            let architecture = format!("{:?}", self.config.architecture);
            let which = if snapshot.architecture != architecture {
                format!(
                    "it is a {} snapshot and this is a {architecture} model; ",
                    snapshot.architecture
                )
            } else {
                String::new()
            };
            SnapshotError::ForeignModel {
                path: path.clone(),
                detail: format!("{which}differs in {}", differs.join(", ")),
            }
        };
        // Order matters for the message: another config first; then the weight dtype, because
        // the weight sample is hashed as stored, so another dtype also changes that hash.
        let differs = differing(&[
            ("config", saved.config, ours.config),
            ("state shapes", saved.shapes, ours.shapes),
        ]);
        if !differs.is_empty() {
            return Err(foreign(differs).into());
        }
        let dtype = self.format_id.clone();
        if snapshot.weights_dtype != dtype {
            return Err(SnapshotError::Incompatible {
                path,
                detail: format!(
                    "it was computed with {} weights and this model stores {dtype}; load the \
                     model with --dtype {}",
                    snapshot.weights_dtype, snapshot.weights_dtype
                ),
            }
            .into());
        }
        let differs = differing(&[("weights", saved.weights, ours.weights)]);
        if !differs.is_empty() {
            return Err(foreign(differs).into());
        }
        self.import(sequence, &snapshot.state).map_err(|e| match e {
            ModelError::IncompatibleState(detail) => {
                SnapshotError::Incompatible { path, detail }.into()
            }
            other => other,
        })
    }
}

impl HybridModel {
    /// What identifies this model in snapshots.
    pub fn fingerprint(&self) -> Fingerprint {
        self.net.fingerprint
    }

    /// A copy of the built-in sequence's whole state: KV caches and canonical GDN state.
    pub fn export_state(&mut self) -> Result<ModelState> {
        self.net.export(&self.primary)
    }

    /// Replaces the built-in sequence's state with `state`. Everything is checked against the
    /// model first, so a state that does not fit changes nothing; should the backend still fail
    /// half-way (a device error), the sequence is reset rather than left half-imported.
    pub fn import_state(&mut self, state: &ModelState) -> Result<()> {
        self.net.import(&mut self.primary, state)
    }

    /// The built-in sequence's state as a [`Snapshot`] of the sequence `tokens` (the tokens fed
    /// so far plus any chosen but not yet fed); `app` is free-form data for the caller (e.g.
    /// sampler state).
    pub fn snapshot(&mut self, tokens: &[u32], app: Value) -> Result<Snapshot> {
        self.net.snapshot(&self.primary, tokens, app)
    }

    /// Continues the sequence of `snapshot` in the built-in sequence: checks that this is the
    /// model (and weight dtype) that made it, then imports its state. The GDN backend may
    /// differ from the one that saved it (the state is canonical).
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.net.restore(&mut self.primary, snapshot)
    }

    /// [`export_state`](Self::export_state) of another sequence of this model.
    pub fn export_sequence(&mut self, sequence: &Sequence) -> Result<ModelState> {
        self.net.export(sequence)
    }

    /// [`import_state`](Self::import_state) into another sequence of this model.
    pub fn import_sequence(&mut self, sequence: &mut Sequence, state: &ModelState) -> Result<()> {
        self.net.import(sequence, state)
    }

    /// [`snapshot`](Self::snapshot) of another sequence of this model.
    pub fn snapshot_sequence(
        &mut self,
        sequence: &Sequence,
        tokens: &[u32],
        app: Value,
    ) -> Result<Snapshot> {
        self.net.snapshot(sequence, tokens, app)
    }

    /// [`restore`](Self::restore) into another sequence of this model.
    pub fn restore_sequence(&mut self, sequence: &mut Sequence, snapshot: &Snapshot) -> Result<()> {
        self.net.restore(sequence, snapshot)
    }

    /// Moves the live GDN state of the built-in sequence to backend `to` (live migration): loads
    /// every GDN layer's constants into it, allocates a slot, and copies every layer's state
    /// across in the canonical layout. On success `to` runs the model from the next token on and
    /// the old backend is returned (drop it to free its memory); on failure nothing changed and
    /// the old backend keeps running the model. Sequences made with
    /// [`new_sequence`](Self::new_sequence) before a migration are refused afterwards (their
    /// slots were in the old backend): export their states first and import them after.
    pub fn migrate_gdn_backend(
        &mut self,
        mut to: Box<dyn GdnBackend>,
    ) -> Result<Box<dyn GdnBackend>> {
        let net = &mut self.net;
        let spec = net.config.gdn_spec();
        for (i, layer) in net.layers.iter().enumerate() {
            if let Mixer::Gdn { constants, .. } = &layer.mixer {
                to.load_layer(i, spec, constants)
                    .map_err(|source| ModelError::Gdn { layer: i, source })?;
            }
        }
        let slot = to
            .alloc_slot()
            .map_err(|source| ModelError::Gdn { layer: 0, source })?;
        for (i, layer) in net.layers.iter().enumerate() {
            if let Mixer::Gdn { .. } = layer.mixer {
                let state = net
                    .gdn
                    .export_state(i, self.primary.slot)
                    .map_err(|source| ModelError::Gdn { layer: i, source })?;
                to.import_state(i, slot, &state)
                    .map_err(|source| ModelError::Gdn { layer: i, source })?;
            }
        }
        self.primary.slot = slot;
        net.owner.backend_generation += 1;
        self.primary.owner = net.owner;
        let old = std::mem::replace(&mut net.gdn, to);
        // The model's GDN counters go on counting from where the old backend stopped.
        net.retired_gdn = net.retired_gdn.plus(old.counters());
        Ok(old)
    }

    /// Number of GDN (linear-attention) layers.
    pub fn gdn_layers(&self) -> usize {
        self.net
            .layers
            .iter()
            .filter(|l| matches!(l.mixer, Mixer::Gdn { .. }))
            .count()
    }
}
