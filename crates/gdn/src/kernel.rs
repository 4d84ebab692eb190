//! The narrow trait a GDN device implements ([`GdnKernel`]), and the batch it runs.
//!
//! A kernel only does numerics and device bookkeeping: it converts constants, makes, resets,
//! reads and writes one (layer, slot) state, and runs one layer for a batch of sequences. Every
//! rule of the contract — slots, validation before any state is touched, one token for `step`,
//! no slot twice in a batch, counters and timing — lives once in the front
//! ([`Checked`](crate::Checked)), which calls a kernel only with input it has already checked.

use crate::backend::BackendInfo;
use crate::error::Result;
use crate::slots::SlotId;
use crate::spec::{LayerConstants, LayerSpec, TokenInputs};
use crate::state::SlotState;

/// One loaded layer as a kernel sees it: its model index, geometry and the kernel's constants.
#[derive(Debug)]
pub struct Layer<'a, C> {
    /// Model layer index (GDN layers are sparse in a hybrid model).
    pub index: usize,
    /// The layer's geometry (validated).
    pub spec: &'a LayerSpec,
    /// The constants as the kernel's [`GdnKernel::load`] made them.
    pub constants: &'a C,
}

impl<C> Clone for Layer<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Layer<'_, C> {}

/// One sequence of a batched call: its slot, its tokens' inputs and where its outputs go.
#[derive(Debug)]
pub struct BatchMember<'a> {
    /// The sequence's slot.
    pub slot: SlotId,
    /// T tokens of inputs (T ≥ 1), continuing the sequence.
    pub inputs: TokenInputs<'a>,
    /// `T × Hv × dv` outputs.
    pub out: &'a mut [f32],
}

/// True when member `i` of `members` names a slot an earlier member already named: the one
/// rule that makes a batch's states disjoint, checked by the front, the trait's default
/// `run_batch` and wrappers such as fail-over alike. Batches are a few dozen sequences at most,
/// so the quadratic scan costs less than a set would, and allocates nothing.
pub fn slot_named_earlier(members: &[BatchMember<'_>], i: usize) -> bool {
    members[..i].iter().any(|m| m.slot == members[i].slot)
}

/// Disjoint states, one per member, of one layer: what [`GdnKernel::run`] gets from the front.
///
/// The front builds a batch only after checking that every member's slot is live in the layer,
/// that no slot appears twice and that every member's inputs and output fit the layer, so a
/// kernel may rely on all of that.
pub struct Batch<'b, 'a, S> {
    members: &'b mut [BatchMember<'a>],
    /// The layer's per-slot states, indexed by `SlotId.0`.
    states: &'b mut [Option<S>],
}

impl<'b, 'a, S> Batch<'b, 'a, S> {
    /// A batch over `members` whose slots index `states`, after checking that every member's
    /// slot is live in `states` and that no slot appears twice ([`Batch::iter_mut`]'s soundness
    /// rests on this check). Crate-private: only the front forms batches.
    pub(crate) fn new(
        members: &'b mut [BatchMember<'a>],
        states: &'b mut [Option<S>],
    ) -> Result<Self, Fault> {
        for (i, member) in members.iter().enumerate() {
            let index = member.slot.0 as usize;
            if !states.get(index).is_some_and(Option::is_some) {
                return Err(Fault::Unknown(member.slot));
            }
            if slot_named_earlier(members, i) {
                return Err(Fault::Repeated(member.slot));
            }
        }
        Ok(Batch { members, states })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a batch without members (the front never passes one to a kernel).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members (slots, inputs, outputs) without their states.
    pub fn members(&self) -> &[BatchMember<'a>] {
        self.members
    }

    /// Every member with its own state, in member order. The states are pairwise distinct.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = MemberMut<'_, 'a, S>> + '_ {
        let states = self.states.as_mut_ptr();
        let len = self.states.len();
        self.members.iter_mut().map(move |member| {
            let index = member.slot.0 as usize;
            assert!(index < len, "batch member outside the state table");
            // SAFETY: `Batch::new` proved every member's index in bounds with a live state and
            // no two members sharing an index, and members' slots cannot change afterwards (no
            // `&mut BatchMember` is handed out), so each element is lent at most once while
            // `self.states` stays mutably borrowed for the iterator's lifetime.
            let state = unsafe { &mut *states.add(index) };
            let state = state
                .as_mut()
                .expect("batch member without a state (checked by Batch::new)");
            MemberMut {
                slot: member.slot,
                inputs: member.inputs,
                out: &mut *member.out,
                state,
            }
        })
    }
}

/// One member of a [`Batch`] with its state, as [`Batch::iter_mut`] lends it.
#[derive(Debug)]
pub struct MemberMut<'m, 'a, S> {
    /// The sequence's slot.
    pub slot: SlotId,
    /// Its T tokens' inputs (validated against the layer).
    pub inputs: TokenInputs<'a>,
    /// Its `T × Hv × dv` outputs.
    pub out: &'m mut [f32],
    /// Its state in this layer.
    pub state: &'m mut S,
}

/// Why a batch cannot be formed.
pub(crate) enum Fault {
    /// The slot is not live (or has no state in the layer).
    Unknown(SlotId),
    /// The slot appears more than once.
    Repeated(SlotId),
}

/// Device-side counters a kernel keeps; `None` from [`GdnKernel::device_counters`] means the
/// host is the device (no transfers, device time = the front's wall time of runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Bytes copied host → device.
    pub bytes_to_device: u64,
    /// Bytes copied device → host.
    pub bytes_from_device: u64,
    /// Time spent computing on the device, when the kernel can tell (ns).
    pub device_time_ns: Option<u64>,
}

/// What one GDN device does, with every contract rule left to the front
/// ([`Checked`](crate::Checked)). See the module docs.
///
/// The front calls a kernel only with a validated spec and constants, live states, inputs whose
/// lengths fit and whose values are finite, and no slot twice in a batch. A kernel still never
/// panics: a device failure is an error ([`GdnError::Device`](crate::GdnError::Device)), and a
/// run that fails must leave each state either as it was or as the run completed it.
pub trait GdnKernel: Send {
    /// Layer constants in the kernel's form (transposed, on the device, a placement, ...).
    type Constants: Send;
    /// One (layer, slot) state in the kernel's form.
    type State: Send;

    /// Name, device and capabilities.
    fn info(&self) -> BackendInfo;

    /// Whether this device can hold a layer of `spec` at model index `layer`: an
    /// [`Unavailable`](crate::GdnError::Unavailable) or
    /// [`InvalidSpec`](crate::GdnError::InvalidSpec) error says why not. Called with a valid
    /// spec before [`load`](Self::load); the default accepts every layer.
    fn check_layer(&self, layer: usize, spec: &LayerSpec) -> Result<()> {
        let _ = (layer, spec);
        Ok(())
    }

    /// Converts (uploads) a layer's validated constants; `live_slots` states will be made for it
    /// right after, with [`new_state`](Self::new_state).
    fn load(
        &mut self,
        layer: usize,
        spec: &LayerSpec,
        constants: &LayerConstants,
        live_slots: usize,
    ) -> Result<Self::Constants>;

    /// A zero state for one slot of `layer`.
    fn new_state(&mut self, layer: Layer<'_, Self::Constants>) -> Result<Self::State>;

    /// Gives back a state whose slot was freed (the default drops it).
    fn release(&mut self, layer: Layer<'_, Self::Constants>, state: Self::State) {
        let _ = (layer, state);
    }

    /// Zeroes a state in place (a new sequence in an old slot).
    fn reset(&mut self, layer: Layer<'_, Self::Constants>, state: &mut Self::State) -> Result<()>;

    /// Runs every member's tokens through `layer`, each from its own state: one call per layer
    /// for all sequences of a batch step (or a prefill). A member with T tokens leaves exactly
    /// the state T single-token runs would leave (up to f32 rounding for chunked forms).
    fn run(
        &mut self,
        layer: Layer<'_, Self::Constants>,
        batch: &mut Batch<'_, '_, Self::State>,
    ) -> Result<()>;

    /// The state in the canonical layout. `&mut` because reading it may be device I/O (a
    /// transfer from the card), which needs the device as much as a run does.
    fn read_state(
        &mut self,
        layer: Layer<'_, Self::Constants>,
        state: &Self::State,
    ) -> Result<SlotState>;

    /// Overwrites the state with a validated canonical one.
    fn write_state(
        &mut self,
        layer: Layer<'_, Self::Constants>,
        state: &mut Self::State,
        canonical: &SlotState,
    ) -> Result<()>;

    /// Transfer and device-time counters; `None` for a kernel whose device is the host.
    fn device_counters(&self) -> Option<DeviceCounters> {
        None
    }
}
