//! The `cuda` backend: GPU-resident state, one fused kernel launch per decode token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use hybrid_gdn::{
    BackendInfo, BackendOptions, BatchMember, Counters, GdnBackend, GdnError, LayerConstants,
    LayerSpec, LayerTable, PrefillStrategy, Result, SlotId, SlotState, TokenInputs,
};

use crate::device::{self, device_error, no_panic, Gpu, NAME};
use crate::graphs::{self, GraphCache};
use crate::kernels::{KernelConfig, LoadedKernels, PREFILL_COMMIT_THREADS, PREFILL_CONV_THREADS};
use crate::staging::{Staging, Timer};
use crate::state::{CudaConstants, CudaSlotState};

/// Tokens per prefill pass: bounds the device scratch (activations of a chunk: `chunk × conv_dim`
/// floats, 8 MiB at the Qwen3-Next shape). The recurrent state stays in registers within a chunk.
pub const PREFILL_CHUNK: usize = 256;

/// A loaded layer as the backend keeps it: device constants and the kernels of its shape.
#[derive(Debug)]
pub struct CudaLayer {
    /// Constants on the device.
    pub constants: CudaConstants,
    /// Kernels specialised for the layer's shape.
    pub kernels: LoadedKernels,
}

/// One decode token of one layer, for [`CudaBackend::step_layers`].
#[derive(Debug)]
pub struct LayerStep<'a> {
    /// Model layer index.
    pub layer: usize,
    /// Exactly one token's inputs.
    pub inputs: TokenInputs<'a>,
    /// `Hv × dv` outputs.
    pub out: &'a mut [f32],
}

/// The CUDA Gated DeltaNet backend. See the crate docs for the design.
#[derive(Debug)]
pub struct CudaBackend {
    pub(crate) gpu: Gpu,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) table: LayerTable<CudaLayer, Option<CudaSlotState>>,
    kernels: HashMap<KernelConfig, LoadedKernels>,
    pub(crate) staging: Staging,
    prefill: Option<PrefillScratch>,
    pub(crate) timer: Timer,
    graphs: GraphCache,
    pub(crate) counters: Counters,
}

/// Device buffers for one prefill chunk.
#[derive(Debug)]
struct PrefillScratch {
    /// Largest conv_dim / Hv / value_dim the buffers fit.
    conv_dim: usize,
    hv: usize,
    value_dim: usize,
    inputs: CudaSlice<f32>,
    act: CudaSlice<f32>,
    gates: CudaSlice<f32>,
    out: CudaSlice<f32>,
    /// Host packing buffer (x | a | b of a chunk).
    host: Vec<f32>,
}

impl CudaBackend {
    /// Registry name.
    pub const NAME: &'static str = NAME;

    /// Opens GPU `HYBRID_GDN_CUDA_DEVICE` (default 0). Without a driver, NVRTC or GPU this is
    /// [`GdnError::Unavailable`] with the reason; it never panics. `options` are ignored (the
    /// backend uses one host thread).
    pub fn new(options: &BackendOptions) -> Result<Self> {
        let _ = options;
        Self::on_device(device::ordinal_from_env()?)
    }

    /// Opens GPU `ordinal`.
    pub fn on_device(ordinal: usize) -> Result<Self> {
        let gpu = device::open(ordinal)?;
        no_panic("setting up the cuda backend", || {
            // SAFETY: every buffer of this backend is used on `stream` alone, which orders all
            // uses, so cudarc's cross-stream event tracking (two event records per buffer per
            // launch) is pure overhead.
            unsafe { gpu.ctx.disable_event_tracking() };
            let stream = gpu
                .ctx
                .new_stream()
                .map_err(|e| device_error("creating a CUDA stream", e))?;
            let timer = Timer::new(&gpu.ctx)?;
            Ok(CudaBackend {
                staging: Staging::default(),
                timer,
                stream,
                gpu,
                table: LayerTable::default(),
                kernels: HashMap::new(),
                prefill: None,
                graphs: GraphCache::from_env(),
                counters: Counters::default(),
            })
        })
    }

    /// The device context (for callers that want to share the GPU).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.gpu.ctx
    }

    /// Turns CUDA-graph replay of [`step_layers`](Self::step_layers) on or off (default on;
    /// `HYBRID_GDN_CUDA_GRAPHS=0` turns it off).
    pub fn set_graphs(&mut self, enabled: bool) {
        self.graphs.set_enabled(enabled);
    }

    fn kernels_for(&mut self, spec: LayerSpec) -> Result<LoadedKernels> {
        let config = KernelConfig::for_spec(spec);
        if let Some(k) = self.kernels.get(&config) {
            return Ok(k.clone());
        }
        let loaded = LoadedKernels::load(&self.gpu.ctx, config, self.gpu.arch)?;
        self.kernels.insert(config, loaded.clone());
        Ok(loaded)
    }

    /// Zero states for `n` slots of `spec`, all or nothing.
    fn new_states(&self, spec: &LayerSpec, n: usize) -> Result<Vec<CudaSlotState>> {
        (0..n)
            .map(|_| CudaSlotState::zeros(&self.stream, spec))
            .collect()
    }

    fn sync(&self, doing: &str) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| device_error(doing, e))
    }

    /// One token for `(layer, slot)` through the staging buffers: one upload, one launch, one
    /// download, one synchronisation.
    fn step_one(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let (spec, _, _) = self.table.get(layer, slot)?;
        let spec = *spec;
        let tokens = inputs.validate(&spec, out)?;
        if tokens != 1 {
            return Err(GdnError::NotOneToken(tokens));
        }
        let in_len = staged_input_len(&spec);
        let grew = self
            .staging
            .ensure(&self.gpu.ctx, &self.stream, in_len, spec.value_dim())?;
        if grew {
            self.graphs.clear();
        }
        self.staging.pack(0, inputs)?;
        self.staging.upload(&self.stream, in_len)?;
        self.timer.start(&self.stream)?;
        let (_, entry, state) = self.table.get_mut(layer, slot)?;
        launch_decode(
            &self.stream,
            entry,
            live(state, slot)?,
            &mut self.staging,
            0,
            0,
        )?;
        self.timer.stop(&self.stream)?;
        self.staging.download(&self.stream, spec.value_dim())?;
        self.sync("running the decode kernel")?;
        self.staging.unpack(0, out)?;
        self.counters.device_time_ns = self.timer.accumulate(self.counters.device_time_ns);
        self.counters.bytes_to_device += 4 * in_len as u64;
        self.counters.bytes_from_device += 4 * spec.value_dim() as u64;
        Ok(())
    }

    /// One decode token for several layers of one slot in one round trip: a single upload of
    /// every layer's inputs, one kernel launch per layer (replayed as one CUDA graph when graphs
    /// are on), a single download and one synchronisation. The same as calling
    /// [`GdnBackend::step`] for each entry in order; everything is validated before any state
    /// is touched.
    ///
    /// With candle on the CPU a real model cannot use this for consecutive layers (layer l + 1's
    /// inputs need layer l's output); it is the GPU-side cost of one token's GDN work, and the
    /// shape of the full-GPU placement, where candle's ops would be captured into the same graph.
    pub fn step_layers(&mut self, slot: SlotId, steps: &mut [LayerStep<'_>]) -> Result<()> {
        let started = Instant::now();
        let mut in_offsets = Vec::with_capacity(steps.len());
        let mut out_offsets = Vec::with_capacity(steps.len());
        let (mut in_len, mut out_len) = (0, 0);
        for s in steps.iter() {
            let (spec, _, _) = self.table.get(s.layer, slot)?;
            let tokens = s.inputs.validate(spec, s.out)?;
            if tokens != 1 {
                return Err(GdnError::NotOneToken(tokens));
            }
            in_offsets.push(in_len);
            out_offsets.push(out_len);
            in_len += staged_input_len(spec);
            out_len += spec.value_dim();
        }
        if steps.is_empty() {
            return Ok(());
        }
        if self
            .staging
            .ensure(&self.gpu.ctx, &self.stream, in_len, out_len)?
        {
            self.graphs.clear();
        }
        for (s, &offset) in steps.iter().zip(&in_offsets) {
            self.staging.pack(offset, s.inputs)?;
        }
        let layers: Vec<usize> = steps.iter().map(|s| s.layer).collect();
        let lens = (in_len, out_len);
        self.timer.start(&self.stream)?;
        if self.graphs.enabled() {
            let key = (slot, layers);
            if !self.graphs.contains(&key) {
                let stream = self.stream.clone();
                let graph = graphs::capture(&stream, || {
                    self.enqueue_layers(&stream, slot, &key.1, &in_offsets, &out_offsets, lens)
                })?;
                self.graphs.insert(key.clone(), graph);
            }
            self.graphs.launch(&key)?;
        } else {
            let stream = self.stream.clone();
            self.enqueue_layers(&stream, slot, &layers, &in_offsets, &out_offsets, lens)?;
        }
        self.timer.stop(&self.stream)?;
        self.sync("running the decode kernels of several layers")?;
        for (s, &offset) in steps.iter_mut().zip(&out_offsets) {
            self.staging.unpack(offset, s.out)?;
        }
        self.counters.device_time_ns = self.timer.accumulate(self.counters.device_time_ns);
        self.counters.bytes_to_device += 4 * in_len as u64;
        self.counters.bytes_from_device += 4 * out_len as u64;
        self.counters.steps += steps.len() as u64;
        self.add_run_time(started);
        Ok(())
    }

    /// Upload, the layers' launches and the download, enqueued on `stream` (not synchronised).
    fn enqueue_layers(
        &mut self,
        stream: &Arc<CudaStream>,
        slot: SlotId,
        layers: &[usize],
        in_offsets: &[usize],
        out_offsets: &[usize],
        (in_len, out_len): (usize, usize),
    ) -> Result<()> {
        self.staging.upload(stream, in_len)?;
        for ((&layer, &in_off), &out_off) in layers.iter().zip(in_offsets).zip(out_offsets) {
            let (_, entry, state) = self.table.get_mut(layer, slot)?;
            let state = live(state, slot)?;
            launch_decode(stream, entry, state, &mut self.staging, in_off, out_off)?;
        }
        self.staging.download(stream, out_len)
    }

    /// T tokens in chunks of [`PREFILL_CHUNK`]: per chunk one upload, three launches (conv +
    /// norm + gates for all tokens in parallel; the recurrence with state in registers; the
    /// conv-history commit) and one download; one synchronisation at the end.
    fn prefill_tokens(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<usize> {
        let (spec, _, _) = self.table.get(layer, slot)?;
        let spec = *spec;
        let tokens = inputs.validate(&spec, out)?;
        self.ensure_prefill_scratch(&spec)?;
        let Some(scratch) = self.prefill.as_mut() else {
            return Err(device_error_msg("prefill scratch missing after allocation"));
        };
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        let (_, entry, state) = self.table.get_mut(layer, slot)?;
        let state = live(state, slot)?;
        self.timer.start(&self.stream)?;
        let mut first = 0;
        while first < tokens {
            let count = PREFILL_CHUNK.min(tokens - first);
            let packed = count * (conv_dim + 2 * hv);
            scratch.host.clear();
            scratch
                .host
                .extend_from_slice(&inputs.mixed_qkv[first * conv_dim..(first + count) * conv_dim]);
            scratch
                .host
                .extend_from_slice(&inputs.a[first * hv..(first + count) * hv]);
            scratch
                .host
                .extend_from_slice(&inputs.b[first * hv..(first + count) * hv]);
            {
                let mut dst = scratch.inputs.slice_mut(..packed);
                self.stream
                    .memcpy_htod(&scratch.host[..], &mut dst)
                    .map_err(|e| device_error("uploading prefill inputs", e))?;
            }
            launch_prefill(&self.stream, entry, state, scratch, count)?;
            {
                let src = scratch.out.slice(..count * value_dim);
                self.stream
                    .memcpy_dtoh(
                        &src,
                        &mut out[first * value_dim..(first + count) * value_dim],
                    )
                    .map_err(|e| device_error("downloading prefill outputs", e))?;
            }
            self.counters.bytes_to_device += 4 * packed as u64;
            self.counters.bytes_from_device += 4 * (count * value_dim) as u64;
            first += count;
        }
        self.timer.stop(&self.stream)?;
        self.sync("running the prefill kernels")?;
        self.counters.device_time_ns = self.timer.accumulate(self.counters.device_time_ns);
        Ok(tokens)
    }

    /// Adds the wall time since `started` to the run-time counter.
    fn add_run_time(&mut self, started: Instant) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.run_time_ns = self.counters.run_time_ns.saturating_add(ns);
    }

    fn ensure_prefill_scratch(&mut self, spec: &LayerSpec) -> Result<()> {
        let fits = self.prefill.as_ref().is_some_and(|s| {
            s.conv_dim >= spec.conv_dim()
                && s.hv >= spec.num_v_heads
                && s.value_dim >= spec.value_dim()
        });
        if fits {
            return Ok(());
        }
        let old = self.prefill.take();
        let conv_dim = spec.conv_dim().max(old.as_ref().map_or(0, |s| s.conv_dim));
        let hv = spec.num_v_heads.max(old.as_ref().map_or(0, |s| s.hv));
        let value_dim = spec
            .value_dim()
            .max(old.as_ref().map_or(0, |s| s.value_dim));
        let alloc = |n: usize| {
            self.stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| device_error("allocating prefill scratch in GPU memory", e))
        };
        self.prefill = Some(PrefillScratch {
            conv_dim,
            hv,
            value_dim,
            inputs: alloc(PREFILL_CHUNK * (conv_dim + 2 * hv))?,
            act: alloc(PREFILL_CHUNK * conv_dim)?,
            gates: alloc(PREFILL_CHUNK * 2 * hv)?,
            out: alloc(PREFILL_CHUNK * value_dim)?,
            host: Vec::with_capacity(PREFILL_CHUNK * (conv_dim + 2 * hv)),
        });
        Ok(())
    }
}

/// Floats staged per decode token: `mixed_qkv | a | b`.
pub fn staged_input_len(spec: &LayerSpec) -> usize {
    spec.conv_dim() + 2 * spec.num_v_heads
}

fn device_error_msg(message: &str) -> GdnError {
    GdnError::Device {
        backend: NAME.into(),
        message: message.into(),
    }
}

/// Enqueues `gdn_decode` for one (layer, slot) reading staged inputs at `in_off` and writing
/// staged outputs at `out_off`.
pub(crate) fn launch_decode(
    stream: &Arc<CudaStream>,
    layer: &CudaLayer,
    state: &mut CudaSlotState,
    staging: &mut Staging,
    in_off: usize,
    out_off: usize,
) -> Result<()> {
    let spec = &layer.kernels.config.spec;
    let (input, mut output) = staging.views(
        (in_off, staged_input_len(spec)),
        (out_off, spec.value_dim()),
    )?;
    let c = &layer.constants;
    let mut builder = stream.launch_builder(&layer.kernels.decode);
    builder
        .arg(&input)
        .arg(&c.conv_weight_t)
        .arg(&c.neg_a)
        .arg(&c.dt_bias)
        .arg(&mut state.ring)
        .arg(&mut state.recurrent)
        .arg(&mut state.meta)
        .arg(&mut output);
    let config = layer.kernels.config.recurrence_launch();
    // SAFETY: the argument list matches `gdn_decode`'s signature in gdn.cu (8 pointers, in
    // order); every buffer was sized for this layer's spec, which the kernel was compiled for
    // (`input` ≥ conv_dim + 2·Hv floats, `output` ≥ Hv·dv, state and ring as allocated by
    // `CudaSlotState::zeros`), and all of them are used on this stream only.
    unsafe { builder.launch(config) }
        .map(drop)
        .map_err(|e| device_error("launching gdn_decode", e))
}

fn launch_prefill(
    stream: &Arc<CudaStream>,
    layer: &CudaLayer,
    state: &mut CudaSlotState,
    scratch: &mut PrefillScratch,
    count: usize,
) -> Result<()> {
    let k = &layer.kernels;
    let c = &layer.constants;
    let tokens = i32::try_from(count).map_err(|_| device_error_msg("prefill chunk too large"))?;
    let err = |name: &str| {
        let name = name.to_string();
        move |e| device_error(&format!("launching {name}"), e)
    };
    let conv_cfg = LaunchConfig {
        grid_dim: (tokens as u32, 1, 1),
        block_dim: (PREFILL_CONV_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&k.prefill_conv);
    b.arg(&scratch.inputs)
        .arg(&tokens)
        .arg(&c.conv_weight_t)
        .arg(&c.neg_a)
        .arg(&c.dt_bias)
        .arg(&state.ring)
        .arg(&state.meta)
        .arg(&mut scratch.act)
        .arg(&mut scratch.gates);
    // SAFETY: arguments match `gdn_prefill_conv` (x, tokens, w_t, neg_a, dt_bias, ring, meta,
    // act, gates); the scratch holds ≥ PREFILL_CHUNK ≥ tokens rows of this layer's widths
    // (`ensure_prefill_scratch`), one block per token.
    unsafe { b.launch(conv_cfg) }
        .map(drop)
        .map_err(err("gdn_prefill_conv"))?;

    let mut b = stream.launch_builder(&k.prefill_scan);
    b.arg(&scratch.act)
        .arg(&scratch.gates)
        .arg(&tokens)
        .arg(&mut state.recurrent)
        .arg(&mut scratch.out);
    // SAFETY: arguments match `gdn_prefill_scan` (act, gates, tokens, state, out); `act` and
    // `gates` were written by the launch above on the same stream; `out` holds tokens × Hv·dv.
    unsafe { b.launch(k.config.recurrence_launch()) }
        .map(drop)
        .map_err(err("gdn_prefill_scan"))?;

    let commit_cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (PREFILL_COMMIT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&k.prefill_commit);
    b.arg(&scratch.inputs)
        .arg(&tokens)
        .arg(&mut state.ring)
        .arg(&mut state.meta);
    // SAFETY: arguments match `gdn_prefill_commit` (x, tokens, ring, meta); it runs after the
    // conv launch read the old ring (stream order), as one block as the kernel requires.
    unsafe { b.launch(commit_cfg) }
        .map(drop)
        .map_err(err("gdn_prefill_commit"))
}

impl GdnBackend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            device: self.gpu.description.clone(),
            state_on_host: false,
            prefill: PrefillStrategy::Sequential,
            host_threads: 1,
        }
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
        no_panic("loading a layer", || {
            let kernels = self.kernels_for(spec)?;
            let (device_constants, bytes) = CudaConstants::upload(&self.stream, &spec, constants)?;
            // Allocate every live slot's state first, so a full GPU leaves nothing half-loaded.
            let mut states = self.new_states(&spec, self.table.live_slots())?.into_iter();
            let entry = CudaLayer {
                constants: device_constants,
                kernels,
            };
            self.table
                .insert_layer(layer, spec, entry, |_| states.next())?;
            self.sync("uploading layer constants")?;
            self.counters.bytes_to_device += bytes;
            Ok(())
        })
    }

    fn alloc_slot(&mut self) -> Result<SlotId> {
        no_panic("allocating a slot", || {
            // Allocate in every loaded layer first (the order `LayerTable::alloc_slot` visits
            // them), so a full GPU leaves no half-allocated slot.
            let specs: Vec<LayerSpec> = self.table.specs().map(|(_, s)| *s).collect();
            let mut states = Vec::with_capacity(specs.len());
            for spec in &specs {
                states.push(CudaSlotState::zeros(&self.stream, spec)?);
            }
            let mut states = states.into_iter();
            let slot = self.table.alloc_slot(|_| states.next())?;
            self.sync("zeroing a new slot")?;
            Ok(slot)
        })
    }

    fn reset_slot(&mut self, slot: SlotId) -> Result<()> {
        no_panic("resetting a slot", || {
            let stream = self.stream.clone();
            let mut result = Ok(());
            self.table.for_each_state_mut(slot, |_, state| {
                if result.is_ok() {
                    result = live(state, slot).and_then(|s| s.reset(&stream));
                }
            })?;
            result?;
            self.sync("zeroing a slot")
        })
    }

    fn free_slot(&mut self, slot: SlotId) -> Result<()> {
        // Graphs captured for this slot point at its memory: drop them first.
        self.graphs.forget_slot(slot);
        self.table.free_slot(slot)
    }

    fn step(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let started = Instant::now();
        no_panic("a decode step", || self.step_one(layer, slot, inputs, out))?;
        self.counters.steps += 1;
        self.add_run_time(started);
        Ok(())
    }

    fn prefill(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let started = Instant::now();
        let tokens = no_panic("a prefill", || {
            self.prefill_tokens(layer, slot, inputs, out)
        })?;
        self.counters.prefill_tokens += tokens as u64;
        self.add_run_time(started);
        Ok(())
    }

    /// Validates every member first (a rejected batch changes nothing), then runs the members
    /// one after another: a decode launch per one-token member, the prefill passes for longer
    /// ones. Not yet one launch for the whole batch: that needs a batched decode kernel that
    /// takes per-member state pointers (a follow-up of the GDN-kernel split, see hybrid_gdn's
    /// `GdnKernel`).
    fn run_batch(&mut self, layer: usize, members: &mut [BatchMember<'_>]) -> Result<()> {
        let spec = self.table.layer(layer)?.spec;
        for (i, member) in members.iter().enumerate() {
            self.table.get(layer, member.slot)?;
            if members[..i].iter().any(|m| m.slot == member.slot) {
                return Err(GdnError::SlotRepeated(member.slot));
            }
            member.inputs.validate(&spec, member.out)?;
        }
        for member in members.iter_mut() {
            let (slot, inputs) = (member.slot, member.inputs);
            if inputs.a.len() == spec.num_v_heads {
                self.step(layer, slot, inputs, member.out)?;
            } else {
                self.prefill(layer, slot, inputs, member.out)?;
            }
        }
        Ok(())
    }

    fn export_state(&self, layer: usize, slot: SlotId) -> Result<SlotState> {
        let (spec, _, state) = self.table.get(layer, slot)?;
        let state = state.as_ref().ok_or(GdnError::UnknownSlot(slot))?;
        let (exported, _bytes) = no_panic("exporting state", || state.export(&self.stream, spec))?;
        // `export_state` takes `&self`, so the download cannot be added to the counters here.
        Ok(exported)
    }

    fn import_state(&mut self, layer: usize, slot: SlotId, imported: &SlotState) -> Result<()> {
        let (spec, _, state) = self.table.get_mut(layer, slot)?;
        imported.validate(spec)?;
        let spec = *spec;
        let state = live(state, slot)?;
        let stream = self.stream.clone();
        let bytes = no_panic("importing state", || state.import(&stream, &spec, imported))?;
        self.counters.bytes_to_device += bytes;
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

/// The slot's state, which is always present: `load_layer` and `alloc_slot` allocate exactly
/// the states `LayerTable` asks for before handing them over. `None` would mean that bookkeeping
/// broke; it is reported, never unwrapped.
fn live(state: &mut Option<CudaSlotState>, slot: SlotId) -> Result<&mut CudaSlotState> {
    state.as_mut().ok_or(GdnError::UnknownSlot(slot))
}
