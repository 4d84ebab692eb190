//! Sequence slots and the per-layer bookkeeping every backend shares.
//!
//! A slot is one sequence's state across all loaded layers. [`LayerTable`] keeps, per loaded
//! layer, its spec, the backend's own form of the constants, and one backend-specific state per
//! live slot, so that each backend only writes the numerics and never the slot plumbing.

use std::fmt;

use crate::error::{GdnError, Result};
use crate::kernel::Layer;
use crate::spec::LayerSpec;

/// Handle to a sequence slot. Ids are never reused, so a stale handle is an error, not a mix-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u32);

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One loaded layer: spec, constants in the backend's form `C`, and a state `S` per slot index.
#[derive(Debug)]
pub struct LayerEntry<C, S> {
    /// The layer's geometry.
    pub spec: LayerSpec,
    /// Constants as the backend keeps them (e.g. transposed, pre-exponentiated).
    pub constants: C,
    states: Vec<Option<S>>,
}

/// Layers indexed by model layer number (GDN layers are sparse in a hybrid model) × live slots.
#[derive(Debug)]
pub struct LayerTable<C, S> {
    layers: Vec<Option<LayerEntry<C, S>>>,
    live: Vec<bool>,
}

impl<C, S> Default for LayerTable<C, S> {
    fn default() -> Self {
        LayerTable {
            layers: Vec::new(),
            live: Vec::new(),
        }
    }
}

impl<C, S> LayerEntry<C, S> {
    /// The layer as a kernel sees it, at model index `index`.
    fn view(&self, index: usize) -> Layer<'_, C> {
        Layer {
            index,
            spec: &self.spec,
            constants: &self.constants,
        }
    }

    /// The layer as a kernel sees it, and every slot's state, borrowed apart.
    fn view_mut(&mut self, index: usize) -> (Layer<'_, C>, &mut [Option<S>]) {
        let view = Layer {
            index,
            spec: &self.spec,
            constants: &self.constants,
        };
        (view, &mut self.states)
    }
}

impl<C, S> LayerTable<C, S> {
    /// Registers `layer` with a state from `new_state` for every live slot, all or nothing: when
    /// `new_state` fails, nothing is registered and the states made so far are handed to `undo`.
    pub fn insert_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: C,
        mut new_state: impl FnMut(Layer<'_, C>) -> Result<S>,
        mut undo: impl FnMut(Layer<'_, C>, S),
    ) -> Result<()> {
        if self.layers.get(layer).is_some_and(Option::is_some) {
            return Err(GdnError::LayerAlreadyLoaded(layer));
        }
        let view = Layer {
            index: layer,
            spec: &spec,
            constants: &constants,
        };
        let mut states = Vec::with_capacity(self.live.len());
        for &live in &self.live {
            match live.then(|| new_state(view)).transpose() {
                Ok(state) => states.push(state),
                Err(e) => {
                    states
                        .into_iter()
                        .flatten()
                        .for_each(|state| undo(view, state));
                    return Err(e);
                }
            }
        }
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        self.layers[layer] = Some(LayerEntry {
            spec,
            constants,
            states,
        });
        Ok(())
    }

    /// Allocates a slot with a state from `new_state` in every loaded layer, all or nothing:
    /// when `new_state` fails, no slot is allocated and the states made so far are handed to
    /// `undo`.
    pub fn alloc_slot(
        &mut self,
        mut new_state: impl FnMut(Layer<'_, C>) -> Result<S>,
        mut undo: impl FnMut(Layer<'_, C>, S),
    ) -> Result<SlotId> {
        let index = self.live.len();
        let id = u32::try_from(index).map_err(|_| GdnError::OutOfSlots {
            backend: "slot table".into(),
            detail: "more than 2^32 slots allocated over the backend's lifetime".into(),
        })?;
        let mut made: Vec<(usize, S)> = Vec::new();
        for (layer, entry) in self.layers.iter().enumerate() {
            let Some(entry) = entry else { continue };
            match new_state(entry.view(layer)) {
                Ok(state) => made.push((layer, state)),
                Err(e) => {
                    for (layer, state) in made {
                        if let Some(entry) = &self.layers[layer] {
                            undo(entry.view(layer), state);
                        }
                    }
                    return Err(e);
                }
            }
        }
        self.live.push(true);
        for (layer, state) in made {
            if let Some(entry) = self.layers[layer].as_mut() {
                entry.states.push(Some(state));
            }
        }
        Ok(SlotId(id))
    }

    /// Frees a slot in every layer, handing each of its states to `release`; its id becomes
    /// unknown for good.
    pub fn free_slot(
        &mut self,
        slot: SlotId,
        mut release: impl FnMut(Layer<'_, C>, S),
    ) -> Result<()> {
        let index = self.live_index(slot)?;
        self.live[index] = false;
        for (layer, entry) in self.layers.iter_mut().enumerate() {
            if let Some(entry) = entry {
                if let Some(state) = entry.states[index].take() {
                    release(entry.view(layer), state);
                }
            }
        }
        Ok(())
    }

    /// Calls `f` on the slot's state in every loaded layer, stopping at the first error.
    pub fn for_each_state_mut(
        &mut self,
        slot: SlotId,
        mut f: impl FnMut(Layer<'_, C>, &mut S) -> Result<()>,
    ) -> Result<()> {
        let index = self.live_index(slot)?;
        for (layer, entry) in self.layers.iter_mut().enumerate() {
            let Some(entry) = entry else { continue };
            let (view, states) = entry.view_mut(layer);
            if let Some(state) = states[index].as_mut() {
                f(view, state)?;
            }
        }
        Ok(())
    }

    /// The loaded layer `layer` with every slot's state (indexed by `SlotId.0`, `None` for freed
    /// slots), for a batched run.
    pub fn layer_states_mut(&mut self, layer: usize) -> Result<(Layer<'_, C>, &mut [Option<S>])> {
        self.layers
            .get_mut(layer)
            .and_then(Option::as_mut)
            .map(|entry| entry.view_mut(layer))
            .ok_or(GdnError::UnknownLayer(layer))
    }

    /// The loaded layer `layer`.
    pub fn layer(&self, layer: usize) -> Result<&LayerEntry<C, S>> {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or(GdnError::UnknownLayer(layer))
    }

    /// The layer and the slot's state in it, for a read-only use such as export.
    pub fn get(&self, layer: usize, slot: SlotId) -> Result<(Layer<'_, C>, &S)> {
        let index = self.live_index(slot)?;
        let entry = self.layer(layer)?;
        let state = entry.states[index]
            .as_ref()
            .ok_or(GdnError::UnknownSlot(slot))?;
        Ok((entry.view(layer), state))
    }

    /// The layer and the slot's mutable state in it, for import and device-specific calls.
    pub fn get_mut(&mut self, layer: usize, slot: SlotId) -> Result<(Layer<'_, C>, &mut S)> {
        let index = self.live_index(slot)?;
        let (view, states) = self.layer_states_mut(layer)?;
        let state = states[index].as_mut().ok_or(GdnError::UnknownSlot(slot))?;
        Ok((view, state))
    }

    /// Specs of every loaded layer, by layer index.
    pub fn specs(&self) -> impl Iterator<Item = (usize, &LayerSpec)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, &e.spec)))
    }

    /// Number of live slots.
    pub fn live_slots(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    /// Checks that `slot` is live.
    pub fn live_slot(&self, slot: SlotId) -> Result<()> {
        self.live_index(slot).map(drop)
    }

    fn live_index(&self, slot: SlotId) -> Result<usize> {
        let index = slot.0 as usize;
        match self.live.get(index) {
            Some(true) => Ok(index),
            _ => Err(GdnError::UnknownSlot(slot)),
        }
    }
}
