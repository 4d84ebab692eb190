//! Fault tolerance: a backend that moves every live sequence to a fallback backend when its device
//! fails, and carries on.
//!
//! [`FailoverBackend`] wraps a primary backend (a card) and a factory for a fallback (`cpu`). When
//! a `step` or `prefill` of the primary fails with a device error, it exports the state of every
//! loaded layer of every live slot from the primary in the canonical layout, loads the same layers
//! into a fresh fallback, imports the states, and runs the failed call again there. Callers (the
//! model) keep their slot ids and see one successful call.
//!
//! Why this is exact: a backend validates before it touches state, and a run that fails on the
//! device does not commit a partial update of the slot (the kernel writes a (layer, slot) only
//! while it runs to completion; a rejected or aborted run never started), so the exported states
//! are those after the last successful call — layers earlier in the current token already include
//! the token, the failed layer and later ones do not — which is exactly what the retried call and
//! the rest of the token expect.
//!
//! What it needs: the failed card must still answer exports (a failed or timed-out run on a live
//! card, a rejected command). If the card is gone altogether, the export fails too and the
//! original error is returned with that failure attached: the sequence has to be recomputed from
//! its tokens.

use std::collections::BTreeMap;

use crate::{
    slot_named_earlier, BackendInfo, BatchMember, Counters, GdnBackend, GdnError, LayerConstants,
    LayerSpec, Result, SlotId, SlotState, TokenInputs,
};

/// Builds the fallback backend.
pub type FallbackFactory = Box<dyn FnOnce() -> Result<Box<dyn GdnBackend>> + Send>;

/// One failover that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverEvent {
    /// The primary's name.
    pub from: String,
    /// The fallback's name.
    pub to: String,
    /// The device error that triggered it.
    pub cause: GdnError,
    /// Layer and (caller's) slot of the failed call.
    pub layer: usize,
    /// The caller's slot id.
    pub slot: SlotId,
    /// Live slots moved.
    pub slots_moved: usize,
}

/// A primary backend with a fallback for device failures. See the module docs.
pub struct FailoverBackend {
    active: Box<dyn GdnBackend>,
    fallback: Option<FallbackFactory>,
    layers: Vec<(usize, LayerSpec, LayerConstants)>,
    /// Caller's slot id → the active backend's slot id.
    slots: BTreeMap<SlotId, SlotId>,
    next_slot: u32,
    /// Counters of backends that were retired by a failover.
    retired: Counters,
    events: Vec<FailoverEvent>,
}

impl std::fmt::Debug for FailoverBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverBackend")
            .field("active", &self.active.info().name)
            .field("fallback_armed", &self.fallback.is_some())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl FailoverBackend {
    /// `primary` until its device fails, then whatever `fallback` builds.
    pub fn new(primary: Box<dyn GdnBackend>, fallback: FallbackFactory) -> Self {
        FailoverBackend {
            active: primary,
            fallback: Some(fallback),
            layers: Vec::new(),
            slots: BTreeMap::new(),
            next_slot: 0,
            retired: Counters::default(),
            events: Vec::new(),
        }
    }

    /// The failovers so far (at most one: the fallback is used once).
    pub fn events(&self) -> &[FailoverEvent] {
        &self.events
    }

    /// The backend in use now.
    pub fn active(&self) -> &dyn GdnBackend {
        self.active.as_ref()
    }

    fn inner_slot(&self, slot: SlotId) -> Result<SlotId> {
        self.slots
            .get(&slot)
            .copied()
            .ok_or(GdnError::UnknownSlot(slot))
    }

    /// Moves every live slot to a fresh fallback; on success the fallback is active.
    fn fail_over(&mut self, cause: GdnError, layer: usize, slot: SlotId) -> Result<()> {
        let Some(factory) = self.fallback.take() else {
            return Err(cause);
        };
        let from = self.active.info().name;
        let attach = |cause: &GdnError, what: &str, e: GdnError| GdnError::Device {
            backend: from.clone(),
            message: format!("{cause}; moving the sequences to the fallback failed ({what}): {e}"),
        };
        let mut target = factory().map_err(|e| attach(&cause, "creating it", e))?;
        for (index, spec, constants) in &self.layers {
            target
                .load_layer(*index, *spec, constants)
                .map_err(|e| attach(&cause, "loading a layer", e))?;
        }
        let mut moved = BTreeMap::new();
        for (&outer, &inner) in &self.slots {
            let new_slot = target
                .alloc_slot()
                .map_err(|e| attach(&cause, "allocating a slot", e))?;
            for (index, _, _) in &self.layers {
                let state: SlotState = self
                    .active
                    .export_state(*index, inner)
                    .map_err(|e| attach(&cause, "exporting the state", e))?;
                target
                    .import_state(*index, new_slot, &state)
                    .map_err(|e| attach(&cause, "importing the state", e))?;
            }
            moved.insert(outer, new_slot);
        }
        let old = std::mem::replace(&mut self.active, target);
        self.retired = self.retired.plus(old.counters());
        self.events.push(FailoverEvent {
            from: old.info().name,
            to: self.active.info().name,
            cause,
            layer,
            slot,
            slots_moved: moved.len(),
        });
        self.slots = moved;
        Ok(())
    }

    /// Runs `call` on the active backend; on a device error fails over once and runs it again.
    fn with_failover(
        &mut self,
        layer: usize,
        slot: SlotId,
        mut call: impl FnMut(&mut dyn GdnBackend, SlotId) -> Result<()>,
    ) -> Result<()> {
        let inner = self.inner_slot(slot)?;
        match call(self.active.as_mut(), inner) {
            Err(cause) if cause.is_device_fault() && self.fallback.is_some() => {
                self.fail_over(cause, layer, slot)?;
                let inner = self.inner_slot(slot)?;
                call(self.active.as_mut(), inner)
            }
            other => other,
        }
    }
}

impl GdnBackend for FailoverBackend {
    fn info(&self) -> BackendInfo {
        let mut info = self.active.info();
        if let Some(event) = self.events.last() {
            info.device = format!("{} (failed over from `{}`)", info.device, event.from);
        }
        info
    }

    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: &LayerConstants,
    ) -> Result<()> {
        self.active.load_layer(layer, spec, constants)?;
        self.layers.push((layer, spec, constants.clone()));
        Ok(())
    }

    fn alloc_slot(&mut self) -> Result<SlotId> {
        let inner = self.active.alloc_slot()?;
        let outer = SlotId(self.next_slot);
        self.next_slot = self.next_slot.checked_add(1).ok_or(GdnError::OutOfSlots {
            backend: "failover".into(),
            detail: "more than 2^32 slots allocated over the backend's lifetime".into(),
        })?;
        self.slots.insert(outer, inner);
        Ok(outer)
    }

    fn reset_slot(&mut self, slot: SlotId) -> Result<()> {
        let inner = self.inner_slot(slot)?;
        self.active.reset_slot(inner)
    }

    fn free_slot(&mut self, slot: SlotId) -> Result<()> {
        let inner = self.inner_slot(slot)?;
        self.active.free_slot(inner)?;
        self.slots.remove(&slot);
        Ok(())
    }

    fn step(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.with_failover(layer, slot, |backend, inner| {
            backend.step(layer, inner, inputs, out)
        })
    }

    fn prefill(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.with_failover(layer, slot, |backend, inner| {
            backend.prefill(layer, inner, inputs, out)
        })
    }

    /// Validates the whole batch first (so a rejected batch changes nothing), then runs it. While
    /// the fallback is armed the members run one at a time, so that a device failure moves the
    /// sequences with exactly the members before it advanced and retries only the failed one;
    /// afterwards the active backend gets the whole batch at once.
    fn run_batch(&mut self, layer: usize, members: &mut [BatchMember<'_>]) -> Result<()> {
        let spec = self
            .layers
            .iter()
            .find(|(index, _, _)| *index == layer)
            .map(|(_, spec, _)| *spec)
            .ok_or(GdnError::UnknownLayer(layer))?;
        for (i, member) in members.iter().enumerate() {
            self.inner_slot(member.slot)?;
            if slot_named_earlier(members, i) {
                return Err(GdnError::SlotRepeated(member.slot));
            }
            member.inputs.validate(&spec, member.out)?;
        }
        if self.fallback.is_none() {
            // Nothing to fail over to: the members' slots become the active backend's for the
            // call (in place, so nothing is allocated) and are given back afterwards.
            for member in members.iter_mut() {
                member.slot = self.inner_slot(member.slot)?;
            }
            let result = self.active.run_batch(layer, members);
            for member in members.iter_mut() {
                if let Some((&outer, _)) = self.slots.iter().find(|(_, &i)| i == member.slot) {
                    member.slot = outer;
                }
            }
            return result;
        }
        for member in members.iter_mut() {
            let (slot, inputs) = (member.slot, member.inputs);
            let out = &mut *member.out;
            self.with_failover(layer, slot, |backend, inner| {
                let mut one = [BatchMember {
                    slot: inner,
                    inputs,
                    out: &mut *out,
                }];
                backend.run_batch(layer, &mut one)
            })?;
        }
        Ok(())
    }

    fn export_state(&mut self, layer: usize, slot: SlotId) -> Result<SlotState> {
        self.active.export_state(layer, self.inner_slot(slot)?)
    }

    fn import_state(&mut self, layer: usize, slot: SlotId, state: &SlotState) -> Result<()> {
        let inner = self.inner_slot(slot)?;
        self.active.import_state(layer, inner, state)
    }

    fn counters(&self) -> Counters {
        self.retired.plus(self.active.counters())
    }

    fn holds_slot(&self, slot: SlotId) -> bool {
        self.slots.contains_key(&slot)
    }
}
