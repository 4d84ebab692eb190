//! The checked front: the whole [`GdnBackend`] contract written once over any [`GdnKernel`].
//!
//! [`Checked`] owns the slot table and enforces every rule before a kernel sees a call: the layer
//! is loaded, every slot is live, no slot appears twice in a batch, every member's inputs and
//! output fit the layer and are finite, `step` has exactly one token. A rejected call therefore
//! changes nothing, on every backend, without each backend having to remember it. The front also
//! keeps the counters (steps, prefill tokens, wall time of runs) and adds the kernel's device
//! counters.

use std::time::Instant;

use crate::backend::{BackendInfo, Counters, GdnBackend};
use crate::error::{GdnError, Result};
use crate::kernel::{Batch, BatchMember, Fault, GdnKernel, Layer};
use crate::slots::{LayerTable, SlotId};
use crate::spec::{LayerConstants, LayerSpec, TokenInputs};
use crate::state::SlotState;

/// A [`GdnBackend`] made of the checked front and the kernel `K`. See the module docs.
pub struct Checked<K: GdnKernel> {
    kernel: K,
    table: LayerTable<K::Constants, K::State>,
    steps: u64,
    prefill_tokens: u64,
    run_time_ns: u64,
}

impl<K: GdnKernel> std::fmt::Debug for Checked<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("kernel", &self.kernel.info().name)
            .field("live_slots", &self.table.live_slots())
            .finish_non_exhaustive()
    }
}

impl<K: GdnKernel + Default> Default for Checked<K> {
    fn default() -> Self {
        Self::new(K::default())
    }
}

/// How a run is counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `step`: exactly one token, counted in `steps`.
    Step,
    /// `prefill`: counted in `prefill_tokens`.
    Prefill,
    /// `run_batch`: a one-token member counts as a step, a longer one as prefill tokens.
    Batch,
}

impl<K: GdnKernel> Checked<K> {
    /// The front over `kernel`, with no layers and no slots.
    pub fn new(kernel: K) -> Self {
        Checked {
            kernel,
            table: LayerTable::default(),
            steps: 0,
            prefill_tokens: 0,
            run_time_ns: 0,
        }
    }

    /// The kernel (for device-specific queries).
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The kernel, mutably, for device-specific settings (not for state: that goes through the
    /// front).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// A device-specific operation on one slot across layers that the [`GdnBackend`] contract
    /// has no call for (e.g. several layers' decode in one round trip): runs `f` with the kernel
    /// and the slot's states, adds its wall time to the run time and, when it succeeds, counts
    /// `steps` steps. Like every call, `f` must validate its inputs before touching a state.
    pub fn with_slot<R>(
        &mut self,
        slot: SlotId,
        steps: u64,
        f: impl FnOnce(&mut K, &mut SlotStates<'_, K::Constants, K::State>) -> Result<R>,
    ) -> Result<R> {
        let started = Instant::now();
        self.table.live_slot(slot)?;
        let mut states = SlotStates {
            table: &mut self.table,
            slot,
        };
        let result = f(&mut self.kernel, &mut states)?;
        self.steps += steps;
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.run_time_ns = self.run_time_ns.saturating_add(ns);
        Ok(result)
    }

    /// The kernel's constants of a loaded layer (for device-specific queries such as placement).
    pub fn layer_constants(&self, layer: usize) -> Result<&K::Constants> {
        Ok(&self.table.layer(layer)?.constants)
    }

    /// Validates every member against `layer`, then runs them all in one kernel call.
    fn run(&mut self, layer: usize, members: &mut [BatchMember<'_>], call: Call) -> Result<()> {
        let started = Instant::now();
        let (layer, states) = self.table.layer_states_mut(layer)?;
        let spec = layer.spec;
        let mut steps = 0u64;
        let mut prefill_tokens = 0u64;
        for member in members.iter() {
            let tokens = member.inputs.validate(spec, member.out)?;
            if call == Call::Step && tokens != 1 {
                return Err(GdnError::NotOneToken(tokens));
            }
            if call == Call::Prefill || (call == Call::Batch && tokens > 1) {
                prefill_tokens += tokens as u64;
            } else {
                steps += 1;
            }
        }
        let mut batch = Batch::new(members, states).map_err(|fault| match fault {
            Fault::Unknown(slot) => GdnError::UnknownSlot(slot),
            Fault::Repeated(slot) => GdnError::SlotRepeated(slot),
        })?;
        if batch.is_empty() {
            return Ok(());
        }
        self.kernel.run(layer, &mut batch)?;
        self.steps += steps;
        self.prefill_tokens += prefill_tokens;
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.run_time_ns = self.run_time_ns.saturating_add(ns);
        Ok(())
    }

    /// One member for `step` and `prefill`.
    fn run_one(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
        call: Call,
    ) -> Result<()> {
        // The slot is checked before the inputs, as a single-sequence call always did.
        self.table.get(layer, slot)?;
        self.run(layer, &mut [BatchMember { slot, inputs, out }], call)
    }
}

/// One live slot's states in every loaded layer, for [`Checked::with_slot`].
pub struct SlotStates<'t, C, S> {
    table: &'t mut LayerTable<C, S>,
    slot: SlotId,
}

impl<C, S> SlotStates<'_, C, S> {
    /// The slot.
    pub fn slot(&self) -> SlotId {
        self.slot
    }

    /// The geometry of a loaded layer.
    pub fn spec(&self, layer: usize) -> Result<LayerSpec> {
        Ok(self.table.layer(layer)?.spec)
    }

    /// A loaded layer and the slot's state in it.
    pub fn get_mut(&mut self, layer: usize) -> Result<(Layer<'_, C>, &mut S)> {
        self.table.get_mut(layer, self.slot)
    }
}

impl<K: GdnKernel> GdnBackend for Checked<K> {
    fn info(&self) -> BackendInfo {
        self.kernel.info()
    }

    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: &LayerConstants,
    ) -> Result<()> {
        spec.validate()?;
        constants.validate(&spec)?;
        if self.table.layer(layer).is_ok() {
            return Err(GdnError::LayerAlreadyLoaded(layer));
        }
        self.kernel.check_layer(layer, &spec)?;
        let converted = self
            .kernel
            .load(layer, &spec, constants, self.table.live_slots())?;
        // Both closures need the kernel mutably, one after the other: share it through a cell.
        let kernel = std::cell::RefCell::new(&mut self.kernel);
        self.table.insert_layer(
            layer,
            spec,
            converted,
            |layer| kernel.borrow_mut().new_state(layer),
            |layer, state| kernel.borrow_mut().release(layer, state),
        )
    }

    fn alloc_slot(&mut self) -> Result<SlotId> {
        // Both closures need the kernel mutably, one after the other: share it through a cell.
        let kernel = std::cell::RefCell::new(&mut self.kernel);
        self.table.alloc_slot(
            |layer| kernel.borrow_mut().new_state(layer),
            |layer, state| kernel.borrow_mut().release(layer, state),
        )
    }

    fn reset_slot(&mut self, slot: SlotId) -> Result<()> {
        let kernel = &mut self.kernel;
        self.table
            .for_each_state_mut(slot, |layer, state| kernel.reset(layer, state))
    }

    fn free_slot(&mut self, slot: SlotId) -> Result<()> {
        let kernel = &mut self.kernel;
        self.table
            .free_slot(slot, |layer, state| kernel.release(layer, state))
    }

    fn step(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.run_one(layer, slot, inputs, out, Call::Step)
    }

    fn prefill(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.run_one(layer, slot, inputs, out, Call::Prefill)
    }

    fn run_batch(&mut self, layer: usize, members: &mut [BatchMember<'_>]) -> Result<()> {
        self.run(layer, members, Call::Batch)
    }

    fn export_state(&mut self, layer: usize, slot: SlotId) -> Result<SlotState> {
        let (layer, state) = self.table.get(layer, slot)?;
        self.kernel.read_state(layer, state)
    }

    fn import_state(&mut self, layer: usize, slot: SlotId, imported: &SlotState) -> Result<()> {
        let (layer, state) = self.table.get_mut(layer, slot)?;
        imported.validate(layer.spec)?;
        self.kernel.write_state(layer, state, imported)
    }

    fn holds_slot(&self, slot: SlotId) -> bool {
        self.table.live_slot(slot).is_ok()
    }

    fn counters(&self) -> Counters {
        let device = self.kernel.device_counters();
        Counters {
            bytes_to_device: device.map_or(0, |d| d.bytes_to_device),
            bytes_from_device: device.map_or(0, |d| d.bytes_from_device),
            // For a host kernel the host is the device: its run time is the device time.
            device_time_ns: match device {
                Some(d) => d.device_time_ns,
                None => (self.run_time_ns > 0 || self.steps + self.prefill_tokens > 0)
                    .then_some(self.run_time_ns),
            },
            steps: self.steps,
            prefill_tokens: self.prefill_tokens,
            run_time_ns: self.run_time_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, ReferenceBackend, ReferenceKernel, SlotState};

    fn spec() -> LayerSpec {
        LayerSpec::new(1, 2, 4, 4, 2)
    }

    /// Deterministic finite values.
    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect()
    }

    fn backend_with(slots: usize) -> (ReferenceBackend, Vec<SlotId>) {
        let spec = spec();
        let mut backend = ReferenceBackend::default();
        let constants = LayerConstants {
            conv_weight: values(spec.conv_dim() * spec.conv_kernel, 1.0),
            a_log: values(spec.num_v_heads, 2.0),
            dt_bias: values(spec.num_v_heads, 3.0),
        };
        backend.load_layer(0, spec, &constants).unwrap();
        let slots = (0..slots).map(|_| backend.alloc_slot().unwrap()).collect();
        (backend, slots)
    }

    fn states(backend: &mut ReferenceBackend, slots: &[SlotId]) -> Vec<SlotState> {
        slots
            .iter()
            .map(|&s| backend.export_state(0, s).unwrap())
            .collect()
    }

    #[test]
    fn a_rejected_batch_touches_no_member() {
        let spec = spec();
        let (mut backend, slots) = backend_with(2);
        let x = values(spec.conv_dim(), 4.0);
        let a = values(spec.num_v_heads, 5.0);
        let mut bad_b = values(spec.num_v_heads, 6.0);
        bad_b[1] = f32::INFINITY;
        let (mut out0, mut out1) = (vec![0.0; 8], vec![0.0; 8]);
        let before = states(&mut backend, &slots);
        let mut members = [
            BatchMember {
                slot: slots[0],
                inputs: TokenInputs {
                    mixed_qkv: &x,
                    a: &a,
                    b: &a,
                },
                out: &mut out0,
            },
            BatchMember {
                slot: slots[1],
                inputs: TokenInputs {
                    mixed_qkv: &x,
                    a: &a,
                    b: &bad_b,
                },
                out: &mut out1,
            },
        ];
        assert!(matches!(
            backend.run_batch(0, &mut members),
            Err(GdnError::NonFinite { what: "b", .. })
        ));
        assert_eq!(states(&mut backend, &slots), before);
        assert_eq!(backend.counters().steps, 0);
        // The same batch without the bad value runs and moves both states.
        members[1].inputs.b = &a;
        backend.run_batch(0, &mut members).unwrap();
        assert_ne!(states(&mut backend, &slots), before);
        assert_eq!(backend.counters().steps, 2);
    }

    #[test]
    fn a_slot_twice_in_one_batch_is_refused() {
        let spec = spec();
        let (mut backend, slots) = backend_with(1);
        let x = values(spec.conv_dim(), 4.0);
        let a = values(spec.num_v_heads, 5.0);
        let inputs = TokenInputs {
            mixed_qkv: &x,
            a: &a,
            b: &a,
        };
        let (mut out0, mut out1) = (vec![0.0; 8], vec![0.0; 8]);
        let before = states(&mut backend, &slots);
        let mut members = [
            BatchMember {
                slot: slots[0],
                inputs,
                out: &mut out0,
            },
            BatchMember {
                slot: slots[0],
                inputs,
                out: &mut out1,
            },
        ];
        assert_eq!(
            backend.run_batch(0, &mut members),
            Err(GdnError::SlotRepeated(slots[0]))
        );
        assert_eq!(states(&mut backend, &slots), before);
    }

    /// A kernel whose states are numbered and whose `new_state` fails from the `fail_at`-th call
    /// on: the front must hand every state it made back (`release`) when a call fails midway.
    #[derive(Default)]
    struct Flaky {
        made: u32,
        fail_at: u32,
        released: Vec<u32>,
    }

    impl GdnKernel for Flaky {
        type Constants = ();
        type State = u32;

        fn info(&self) -> BackendInfo {
            ReferenceKernel.info()
        }

        fn load(&mut self, _: usize, _: &LayerSpec, _: &LayerConstants, _: usize) -> Result<()> {
            Ok(())
        }

        fn new_state(&mut self, _: Layer<'_, ()>) -> Result<u32> {
            if self.made >= self.fail_at {
                return Err(GdnError::OutOfSlots {
                    backend: "flaky".into(),
                    detail: "full".into(),
                });
            }
            self.made += 1;
            Ok(self.made)
        }

        fn release(&mut self, _: Layer<'_, ()>, state: u32) {
            self.released.push(state);
        }

        fn reset(&mut self, _: Layer<'_, ()>, _: &mut u32) -> Result<()> {
            Ok(())
        }

        fn run(&mut self, _: Layer<'_, ()>, _: &mut Batch<'_, '_, u32>) -> Result<()> {
            Ok(())
        }

        fn read_state(&mut self, layer: Layer<'_, ()>, _: &u32) -> Result<SlotState> {
            Ok(SlotState::zeros(layer.spec))
        }

        fn write_state(&mut self, _: Layer<'_, ()>, _: &mut u32, _: &SlotState) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn states_made_by_a_failed_call_go_back_to_the_kernel() {
        let spec = spec();
        let constants = LayerConstants {
            conv_weight: values(spec.conv_dim() * spec.conv_kernel, 1.0),
            a_log: values(spec.num_v_heads, 2.0),
            dt_bias: values(spec.num_v_heads, 3.0),
        };
        let mut backend = Checked::new(Flaky {
            fail_at: 3,
            ..Flaky::default()
        });
        let released = |backend: &Checked<Flaky>| {
            let mut r = backend.kernel().released.clone();
            r.sort_unstable();
            r
        };
        backend.load_layer(0, spec, &constants).unwrap();
        backend.load_layer(1, spec, &constants).unwrap();
        let slot = backend.alloc_slot().unwrap(); // states 1 and 2
                                                  // A second slot gets state 3 in layer 0, then none in layer 1: 3 goes back.
        assert!(matches!(
            backend.alloc_slot(),
            Err(GdnError::OutOfSlots { .. })
        ));
        assert_eq!(released(&backend), [3]);
        // A layer whose state cannot be made for the live slot does not load.
        assert!(backend.load_layer(2, spec, &constants).is_err());
        assert_eq!(
            backend.layer_constants(2).err(),
            Some(GdnError::UnknownLayer(2))
        );
        backend.kernel_mut().fail_at = 4;
        backend.load_layer(2, spec, &constants).unwrap(); // state 4
        backend.free_slot(slot).unwrap();
        assert_eq!(
            released(&backend),
            [1, 2, 3, 4],
            "freeing hands back every state"
        );
        // With two live slots, a layer that gets a state for the first only gives it back.
        backend.kernel_mut().fail_at = 100;
        backend.alloc_slot().unwrap(); // 5, 6, 7
        backend.alloc_slot().unwrap(); // 8, 9, 10
        backend.kernel_mut().fail_at = 11;
        assert!(backend.load_layer(3, spec, &constants).is_err());
        assert_eq!(released(&backend), [1, 2, 3, 4, 11]);
    }
}
