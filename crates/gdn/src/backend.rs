//! The GDN backend contract (DESIGN §4).

use std::time::Duration;

use crate::error::{GdnError, Result};
use crate::kernel::{slot_named_earlier, BatchMember};
use crate::slots::SlotId;
use crate::spec::{LayerConstants, LayerSpec, TokenInputs};
use crate::state::SlotState;

/// How a backend runs `prefill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillStrategy {
    /// One token after another through the same arithmetic as `step`.
    Sequential,
    /// Tokens in chunks of `chunk`; see the backend's docs for the form.
    Chunked {
        /// Tokens per chunk.
        chunk: usize,
    },
}

/// What a backend is and can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Registry name (`reference`, `cpu`, ...).
    pub name: String,
    /// The device the state lives on, in words (e.g. `host CPU, 2 threads, AVX2+FMA`).
    pub device: String,
    /// True when the recurrent state lives in the host process's memory.
    pub state_on_host: bool,
    /// How `prefill` is computed.
    pub prefill: PrefillStrategy,
    /// Worker threads the backend uses on the host (1 for single-threaded).
    pub host_threads: usize,
}

/// Cumulative counters since the backend was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes copied host → device (constants, inputs, imported state). 0 for host backends.
    pub bytes_to_device: u64,
    /// Bytes copied device → host (outputs, exported state). 0 for host backends.
    pub bytes_from_device: u64,
    /// Time spent computing on the device, when the backend can tell (ns).
    pub device_time_ns: Option<u64>,
    /// `step` calls that succeeded (and one-token members of successful `run_batch` calls).
    pub steps: u64,
    /// Tokens processed by successful `prefill` calls (and by members of more than one token in
    /// `run_batch`; a one-token member counts as a step).
    pub prefill_tokens: u64,
    /// Host wall time of successful runs (`step`, `prefill`, `run_batch`), transfers and
    /// waiting for the device included (ns): the GDN share of a model's time.
    pub run_time_ns: u64,
}

impl Counters {
    /// [`run_time_ns`](Self::run_time_ns) as a duration.
    pub fn run_time(&self) -> Duration {
        Duration::from_nanos(self.run_time_ns)
    }

    /// The sum of two counter sets (e.g. a retired backend's and its successor's).
    pub fn plus(self, other: Counters) -> Counters {
        Counters {
            bytes_to_device: self.bytes_to_device + other.bytes_to_device,
            bytes_from_device: self.bytes_from_device + other.bytes_from_device,
            device_time_ns: match (self.device_time_ns, other.device_time_ns) {
                (None, None) => None,
                (x, y) => Some(x.unwrap_or(0) + y.unwrap_or(0)),
            },
            steps: self.steps + other.steps,
            prefill_tokens: self.prefill_tokens + other.prefill_tokens,
            run_time_ns: self.run_time_ns + other.run_time_ns,
        }
    }
}

/// A Gated DeltaNet backend: owns every layer's constants and every slot's state on its device.
///
/// Per (layer, slot) it computes, for each token, the conv + SiLU, L2 norm, gating and the
/// delta-rule recurrence of DESIGN §3, returning `o` (`Hv × dv`). Every method validates its input
/// before touching state: a rejected call changes nothing. No method panics on bad input.
pub trait GdnBackend: Send {
    /// Name, device and capabilities.
    fn info(&self) -> BackendInfo;

    /// Uploads a layer's constants once. Every existing slot gets a zero state for it.
    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: &LayerConstants,
    ) -> Result<()>;

    /// Allocates a sequence slot with zero state in every loaded layer.
    fn alloc_slot(&mut self) -> Result<SlotId>;

    /// Zeroes a slot's conv and recurrent state in every layer (a new sequence in an old slot).
    fn reset_slot(&mut self, slot: SlotId) -> Result<()>;

    /// Frees a slot; its id is unknown afterwards.
    fn free_slot(&mut self, slot: SlotId) -> Result<()>;

    /// One decode token for (layer, slot): `inputs` hold exactly one token, `out` gets `Hv × dv`.
    fn step(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()>;

    /// T tokens for (layer, slot): `out` gets `T × Hv × dv`. Leaves exactly the state that T
    /// `step` calls would leave (up to f32 rounding for chunked forms).
    fn prefill(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()>;

    /// Runs `layer` for several sequences at once: each member's tokens continue its own slot,
    /// as `step` (one token) or `prefill` (more) would, in one call per layer.
    ///
    /// Backends built on [`Checked`](crate::Checked) validate every member first, so a rejected
    /// batch changes no member's state. This default (for backends that are not) refuses a slot
    /// named twice, then prefills the members one after another: a member rejected there leaves
    /// the members before it advanced.
    fn run_batch(&mut self, layer: usize, members: &mut [BatchMember<'_>]) -> Result<()> {
        if let Some(i) = (0..members.len()).find(|&i| slot_named_earlier(members, i)) {
            return Err(GdnError::SlotRepeated(members[i].slot));
        }
        // Without the layer's spec the token count is unknown here; a prefill of one token
        // leaves the state a step would.
        for member in members.iter_mut() {
            self.prefill(layer, member.slot, member.inputs, member.out)?;
        }
        Ok(())
    }

    /// The slot's state of `layer` in the canonical layout.
    fn export_state(&mut self, layer: usize, slot: SlotId) -> Result<SlotState>;

    /// Replaces the slot's state of `layer` with a canonical one (validated first).
    fn import_state(&mut self, layer: usize, slot: SlotId, state: &SlotState) -> Result<()>;

    /// Cumulative counters.
    fn counters(&self) -> Counters;

    /// Whether `slot` is allocated: a host-side lookup (no device I/O, so `&self`), for
    /// callers that only need to know, e.g. that a dropped sequence's slot was freed.
    fn holds_slot(&self, slot: SlotId) -> bool;
}
