//! The `xrt` and `xrt-sim` backends: one host path driving the `gdn_kernel` compute unit on one or
//! more cards, real (XRT) or simulated (the kernel's C++ in-process).
//!
//! The host keeps no state: per (layer, slot) it only knows which card holds the layer and which
//! device slot index the sequence has. The checked front validates every call first (the shared
//! policy); the kernel then sends one invocation per operation (or per chunk of prefill tokens):
//! load → LOAD, a new or reset state → RESET, a run → STEP per member (the HLS kernel has no slot
//! table, so a batch is its members one after another), read/write state → EXPORT/IMPORT.
//!
//! Placement: a layer goes on the first open card with room for its constants and its slots'
//! state (at least one slot); when none has room, the next card is opened (`device_index + n` for
//! XRT, a fresh simulated card for `xrt-sim`). See the crate README for the policy and its cost.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use hybrid_gdn::{
    BackendInfo, BackendOptions, Batch, Checked, DeviceCounters, GdnError, GdnKernel, Layer,
    LayerConstants, LayerSpec, PrefillStrategy, Result, SlotState,
};

use crate::design::DesignPoint;
use crate::error::XrtError;
use crate::kernel::abi::{KernelArgs, KernelFault, KernelInfo, Op, STATUS_WORDS};
use crate::kernel::csim::{FaultPlan, SimDevice};
use crate::kernel::{query_info, run_checked, KernelDevice};
use crate::state::{Footprint, Placement};
use crate::xrt::{XrtApi, XrtConfig, XrtDevice};

/// Opens card `n` (0 = the first) of a backend.
pub type CardOpener = Box<dyn FnMut(usize) -> Result<Box<dyn KernelDevice>, XrtError> + Send>;

/// Tokens per STEP invocation in `prefill`: bounds the buffer objects (256 × 32 KiB in at the
/// Qwen3-Next shape) while keeping the per-run overhead negligible.
pub const MAX_TOKENS_PER_RUN: usize = 256;

/// Environment variable naming the xclbin when [`BackendOptions::xclbin`] is not set.
pub const XCLBIN_ENV: &str = "HYBRID_GDN_XCLBIN";

/// Options of the simulated backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// The kernel design point to simulate.
    pub design: DesignPoint,
    /// How many simulated cards the backend may open.
    pub max_cards: usize,
    /// An injected failure on every card opened (each card counts its own runs).
    pub fault: Option<FaultPlan>,
}

impl Default for SimConfig {
    /// The fastest design point, up to 16 cards, no fault.
    fn default() -> Self {
        SimConfig {
            design: DesignPoint::FASTEST,
            max_cards: 16,
            fault: None,
        }
    }
}

/// One open card and its latest INFO answer.
struct Card {
    device: Box<dyn KernelDevice>,
    info: KernelInfo,
}

/// The cards and everything that changes when they are used.
struct Cards {
    name: &'static str,
    cards: Vec<Card>,
    opener: CardOpener,
    max_cards: usize,
    counters: DeviceCounters,
}

impl Cards {
    /// Runs one invocation on card `card`, counting its traffic and time.
    fn invoke(
        &mut self,
        card: usize,
        args: &KernelArgs,
        input: &[&[f32]],
        output: &mut [f32],
    ) -> Result<()> {
        let name = self.name;
        let device = self
            .cards
            .get_mut(card)
            .ok_or_else(|| GdnError::Internal {
                backend: name.into(),
                message: format!("card {card} is not open (host bookkeeping error)"),
            })?
            .device
            .as_mut();
        let started = Instant::now();
        let result = run_checked(device, args, input, output);
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = &mut self.counters;
        c.device_time_ns = Some(c.device_time_ns.unwrap_or(0).saturating_add(elapsed));
        let sent: usize = input.iter().map(|s| std::mem::size_of_val(*s)).sum();
        c.bytes_to_device += sent as u64;
        c.bytes_from_device += (std::mem::size_of_val(output) + STATUS_WORDS * 4) as u64;
        result.map_err(|e| e.into_gdn(name))
    }

    /// Refreshes card `card`'s usage from the kernel.
    fn refresh_info(&mut self, card: usize) -> Result<()> {
        let name = self.name;
        if let Some(c) = self.cards.get_mut(card) {
            c.info = query_info(c.device.as_mut()).map_err(|e| e.into_gdn(name))?;
        }
        Ok(())
    }

    /// The card to put `layer` on (opening one if needed), given `slots` slots to bind.
    fn place(&mut self, layer: usize, spec: &LayerSpec, slots: usize) -> Result<usize> {
        let name = self.name;
        let limits = self.cards[0].info;
        let footprint = Footprint::of(spec, &limits);
        if let Some(card) = self
            .cards
            .iter()
            .position(|c| footprint.fits(&c.info, slots))
        {
            return Ok(card);
        }
        let no_room = |cards: usize, reason: String| XrtError::NoRoom {
            layer,
            needed: footprint.describe(slots),
            cards,
            reason,
        };
        let open = self.cards.len();
        if open >= self.max_cards {
            return Err(
                no_room(open, format!("the limit is {} card(s)", self.max_cards)).into_gdn(name),
            );
        }
        let mut device = (self.opener)(open).map_err(|e| {
            no_room(open, format!("opening card {open} failed: {e}")).into_gdn(name)
        })?;
        let info = query_info(device.as_mut()).map_err(|e| e.into_gdn(name))?;
        if !footprint.fits(&info, slots) {
            return Err(
                no_room(open, "it does not fit on an empty card either".into()).into_gdn(name),
            );
        }
        self.cards.push(Card { device, info });
        Ok(open)
    }
}

/// The kernel's compile-time limits, checked before anything is sent; the error is the one the
/// kernel itself would give.
fn check_limits(layer: usize, spec: &LayerSpec, info: &KernelInfo) -> Result<(), XrtError> {
    let too_big = |value: usize, limit: u32| value > limit as usize;
    let fault = |fault, detail: usize, limit: u32| XrtError::Kernel {
        op: Op::Load,
        fault,
        detail: u32::try_from(detail).unwrap_or(u32::MAX),
        limit,
    };
    if layer >= info.max_layers as usize {
        return Err(fault(KernelFault::LayerRange, layer, info.max_layers));
    }
    let dims = [
        (1, spec.num_k_heads, info.max_hk),
        (2, spec.num_v_heads, info.max_hv),
        (3, spec.head_k_dim, info.max_dk),
        (4, spec.head_v_dim, info.max_dv),
        (5, spec.conv_kernel, info.max_conv_kernel),
    ];
    for (field, value, limit) in dims {
        if too_big(value, limit) {
            return Err(fault(KernelFault::Dims, field, limit));
        }
    }
    Ok(())
}

fn to_u32(value: usize, what: &str, backend: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| GdnError::InvalidArgument {
        backend: backend.into(),
        detail: format!("{what} {value} does not fit the kernel's 32-bit argument"),
    })
}

/// The FPGA backend (real or simulated): the checked front over [`XrtKernel`].
pub type XrtBackend = Checked<XrtKernel>;

/// One (layer, slot) state: the device slot index it lives at on the layer's card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot(pub u32);

/// The FPGA kernel (real or simulated). See the module docs.
pub struct XrtKernel {
    name: &'static str,
    design: Option<DesignPoint>,
    /// Device slot indices bound to a live slot, per layer. Every slot is made and freed in all
    /// layers together, so in practice a sequence has the same index on every layer.
    in_use: BTreeMap<usize, BTreeSet<u32>>,
    /// The open cards. Every device call (a run, a state read or write) takes `&mut self`, so
    /// they need no lock.
    cards: Cards,
}

impl std::fmt::Debug for XrtKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrtKernel")
            .field("name", &self.name)
            .field("design", &self.design)
            .field("in_use", &self.in_use)
            .finish_non_exhaustive()
    }
}

impl XrtKernel {
    /// Registry name of the backend on real cards.
    pub const NAME: &'static str = "xrt";
    /// Registry name of the C-simulation backend.
    pub const SIM_NAME: &'static str = "xrt-sim";
    /// The design point `xrt-sim` simulates by default.
    pub const SIM_DESIGN: DesignPoint = DesignPoint::FASTEST;

    /// A kernel named `name` whose cards come from `opener`; opens card 0 at once (so that a
    /// missing runtime, card or xclbin is reported here) and allows up to `max_cards` cards.
    pub fn with_cards(
        name: &'static str,
        mut opener: CardOpener,
        max_cards: usize,
    ) -> Result<Self> {
        let mut device = opener(0).map_err(|e| e.into_gdn(name))?;
        let info = query_info(device.as_mut()).map_err(|e| e.into_gdn(name))?;
        let design = DesignPoint::from_heads(info.p as usize);
        Ok(XrtKernel {
            name,
            design,
            in_use: BTreeMap::new(),
            cards: Cards {
                name,
                cards: vec![Card { device, info }],
                opener,
                max_cards: max_cards.max(1),
                counters: DeviceCounters::default(),
            },
        })
    }

    /// The `xrt-sim` backend with its defaults (registry factory; the options do not apply).
    pub fn simulated(_options: &BackendOptions) -> Result<XrtBackend> {
        Self::simulated_with(SimConfig::default())
    }

    /// The `xrt-sim` backend at a chosen design point, card limit and injected fault.
    pub fn simulated_with(config: SimConfig) -> Result<XrtBackend> {
        let opener: CardOpener = Box::new(move |_| {
            let device = match config.fault {
                Some(fault) => SimDevice::with_fault(config.design, fault)?,
                None => SimDevice::new(config.design)?,
            };
            Ok(Box::new(device) as Box<dyn KernelDevice>)
        });
        Ok(Checked::new(Self::with_cards(
            Self::SIM_NAME,
            opener,
            config.max_cards,
        )?))
    }

    /// The `xrt` backend on the card `options.device_index` (further cards, when the model does
    /// not fit on one, are the following indices), with the xclbin from `options.xclbin` or
    /// `$HYBRID_GDN_XCLBIN`. The XRT library is loaded here, at run time.
    pub fn open(options: &BackendOptions) -> Result<XrtBackend> {
        let xclbin = options
            .xclbin
            .clone()
            .or_else(|| std::env::var_os(XCLBIN_ENV).map(Into::into))
            .ok_or_else(|| GdnError::Unavailable {
                name: Self::NAME.into(),
                reason: format!(
                    "no xclbin given: build one with `make -C crates/gdn-xrt/kernels` and pass it \
                     with BackendOptions::with_xclbin or {XCLBIN_ENV}"
                ),
            })?;
        let first = to_u32(options.device_index, "device index", Self::NAME)?;
        let api = XrtApi::load().map_err(|e| e.into_gdn(Self::NAME))?;
        let opener: CardOpener = Box::new(move |n| {
            let index = u32::try_from(n)
                .ok()
                .and_then(|n| first.checked_add(n))
                .ok_or(XrtError::DeviceOpen {
                    index: u32::MAX,
                    reason: "device index out of range".into(),
                })?;
            let device = XrtDevice::open(api.clone(), XrtConfig::new(index, xclbin.clone()))?;
            Ok(Box::new(device) as Box<dyn KernelDevice>)
        });
        Ok(Checked::new(Self::with_cards(Self::NAME, opener, 64)?))
    }

    /// The design point of the kernel on the cards (`None` if it reports an unknown P).
    pub fn design_point(&self) -> Option<DesignPoint> {
        self.design
    }

    /// The latest INFO answer of every open card (capacity and usage).
    pub fn card_info(&self) -> Vec<KernelInfo> {
        self.cards.cards.iter().map(|c| c.info).collect()
    }

    /// One invocation of `op` on (layer, device slot) with no data.
    fn invoke_on(&mut self, op: Op, layer: Layer<'_, Placement>, slot: DeviceSlot) -> Result<()> {
        let args = KernelArgs::new(op, to_u32(layer.index, "layer index", self.name)?, slot.0);
        self.cards.invoke(layer.constants.card, &args, &[], &mut [])
    }
}

impl GdnKernel for XrtKernel {
    type Constants = Placement;
    type State = DeviceSlot;

    fn info(&self) -> BackendInfo {
        let cards = &self.cards;
        let first = cards.cards[0].device.describe();
        BackendInfo {
            name: self.name.into(),
            device: format!("{first}; {} card(s) in use", cards.cards.len()),
            state_on_host: false,
            prefill: PrefillStrategy::Sequential,
            host_threads: 1,
        }
    }

    /// The kernel's compile-time limits (layers, heads, head dims, conv kernel), with the error
    /// the kernel itself would give.
    fn check_layer(&self, layer: usize, spec: &LayerSpec) -> Result<()> {
        let limits = self.cards.cards[0].info;
        check_limits(layer, spec, &limits).map_err(|e| e.into_gdn(self.name))
    }

    fn load(
        &mut self,
        layer: usize,
        spec: &LayerSpec,
        constants: &LayerConstants,
        live_slots: usize,
    ) -> Result<Placement> {
        // Place for the live slots; with none, bind device slot 0 (the next new state takes
        // it), so that the card's own usage counters always include at least one slot per layer
        // and placement never promises room that a later slot would not find.
        let q_scale = hybrid_gdn::math::query_scale(spec.head_k_dim);
        let name = self.name;
        let cards = &mut self.cards;
        let card = cards.place(layer, spec, live_slots.max(1))?;
        let layer_arg = to_u32(layer, "layer index", name)?;
        let load = KernelArgs {
            hk: to_u32(spec.num_k_heads, "num_k_heads", name)?,
            hv: to_u32(spec.num_v_heads, "num_v_heads", name)?,
            dk: to_u32(spec.head_k_dim, "head_k_dim", name)?,
            dv: to_u32(spec.head_v_dim, "head_v_dim", name)?,
            conv_kernel: to_u32(spec.conv_kernel, "conv_kernel", name)?,
            q_scale,
            ..KernelArgs::new(Op::Load, layer_arg, 0)
        };
        cards.invoke(
            card,
            &load,
            &[&constants.conv_weight, &constants.a_log, &constants.dt_bias],
            &mut [],
        )?;
        if live_slots == 0 {
            cards.invoke(
                card,
                &KernelArgs::new(Op::Reset, layer_arg, 0),
                &[],
                &mut [],
            )?;
        }
        cards.refresh_info(card)?;
        Ok(Placement { card, q_scale })
    }

    /// The lowest device slot index free in the layer, bound and zeroed by a RESET.
    fn new_state(&mut self, layer: Layer<'_, Placement>) -> Result<DeviceSlot> {
        let max_slots = self.cards.cards[0].info.max_slots;
        let used = self.in_use.entry(layer.index).or_default();
        let index =
            (0..max_slots)
                .find(|d| !used.contains(d))
                .ok_or_else(|| GdnError::OutOfSlots {
                    backend: self.name.into(),
                    detail: format!(
                    "all {max_slots} device slots (GDN_MAX_SLOTS) are in use: free a slot first"
                ),
                })?;
        self.invoke_on(Op::Reset, layer, DeviceSlot(index))?;
        self.cards.refresh_info(layer.constants.card)?;
        self.in_use.entry(layer.index).or_default().insert(index);
        Ok(DeviceSlot(index))
    }

    /// The device slot's memory stays bound to it and is zeroed again when the index is handed
    /// out next.
    fn release(&mut self, layer: Layer<'_, Placement>, state: DeviceSlot) {
        if let Some(used) = self.in_use.get_mut(&layer.index) {
            used.remove(&state.0);
        }
    }

    fn reset(&mut self, layer: Layer<'_, Placement>, state: &mut DeviceSlot) -> Result<()> {
        self.invoke_on(Op::Reset, layer, *state)
    }

    /// Each member in STEP invocations of at most [`MAX_TOKENS_PER_RUN`] tokens, one member
    /// after another (the kernel runs one (layer, slot) per invocation). A device failure at a
    /// member leaves the members before it advanced and the rest untouched.
    fn run(
        &mut self,
        layer: Layer<'_, Placement>,
        batch: &mut Batch<'_, '_, DeviceSlot>,
    ) -> Result<()> {
        let spec = layer.spec;
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        let layer_arg = to_u32(layer.index, "layer index", self.name)?;
        let cards = &mut self.cards;
        for member in batch.iter_mut() {
            let inputs = member.inputs;
            let tokens = inputs.a.len() / hv;
            let mut first = 0;
            while first < tokens {
                let count = MAX_TOKENS_PER_RUN.min(tokens - first);
                let range = first..first + count;
                let args = KernelArgs {
                    tokens: count as u32,
                    ..KernelArgs::new(Op::Step, layer_arg, member.state.0)
                };
                cards.invoke(
                    layer.constants.card,
                    &args,
                    &[
                        &inputs.mixed_qkv[range.start * conv_dim..range.end * conv_dim],
                        &inputs.a[range.start * hv..range.end * hv],
                        &inputs.b[range.start * hv..range.end * hv],
                    ],
                    &mut member.out[range.start * value_dim..range.end * value_dim],
                )?;
                first += count;
            }
        }
        Ok(())
    }

    fn read_state(&mut self, layer: Layer<'_, Placement>, state: &DeviceSlot) -> Result<SlotState> {
        let spec = layer.spec;
        let conv_len = spec.conv_state_len();
        let mut canonical = vec![0.0f32; conv_len + spec.recurrent_state_len()];
        let args = KernelArgs::new(
            Op::Export,
            to_u32(layer.index, "layer index", self.name)?,
            state.0,
        );
        self.cards
            .invoke(layer.constants.card, &args, &[], &mut canonical)?;
        let recurrent = canonical.split_off(conv_len);
        Ok(SlotState {
            conv: canonical,
            recurrent,
        })
    }

    fn write_state(
        &mut self,
        layer: Layer<'_, Placement>,
        state: &mut DeviceSlot,
        canonical: &SlotState,
    ) -> Result<()> {
        let args = KernelArgs::new(
            Op::Import,
            to_u32(layer.index, "layer index", self.name)?,
            state.0,
        );
        self.cards.invoke(
            layer.constants.card,
            &args,
            &[&canonical.conv, &canonical.recurrent],
            &mut [],
        )
    }

    fn device_counters(&self) -> Option<DeviceCounters> {
        Some(self.cards.counters)
    }
}
