//! The `cuda` kernel: GPU-resident state, one fused kernel launch per decode token (for one
//! slot, or for every one-token member of a batch together).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use hybrid_gdn::{
    BackendInfo, BackendOptions, Batch, Checked, DeviceCounters, GdnError, GdnKernel, Layer,
    LayerConstants, LayerSpec, MemberMut, PrefillStrategy, Result, SlotId, SlotState, SlotStates,
    TokenInputs,
};

use crate::bench::Issue;
use crate::device::{self, device_error, no_panic, Gpu, NAME};
use crate::graphs::{self, GraphCache};
use crate::kernels::{
    KernelConfig, LoadedKernels, MAX_BATCH_MEMBERS, PREFILL_COMMIT_THREADS, PREFILL_CONV_THREADS,
};
use crate::slot_table::SlotTable;
use crate::staging::{Staging, Timer};
use crate::state::{CudaConstants, CudaSlotState};

/// Tokens per prefill pass: bounds the device scratch (activations of a chunk: `chunk × conv_dim`
/// floats, 8 MiB at the Qwen3-Next shape). The recurrent state stays in registers within a chunk.
pub const PREFILL_CHUNK: usize = 256;

/// The CUDA backend: the checked front over [`CudaKernel`].
pub type CudaBackend = Checked<CudaKernel>;

/// A loaded layer as the kernel keeps it: device constants and the kernels of its shape.
#[derive(Debug)]
pub struct CudaLayer {
    /// Constants on the device.
    pub constants: CudaConstants,
    /// Kernels specialised for the layer's shape.
    pub kernels: LoadedKernels,
}

/// A slot's state in one layer, with an id that names it in the CUDA-graph cache (a graph holds
/// the state's device addresses, so it must go when the state does).
#[derive(Debug)]
pub struct CudaState {
    /// Process-unique id of this state.
    pub id: u64,
    /// The state in GPU memory.
    pub memory: CudaSlotState,
}

/// Ids for [`CudaState`].
static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(0);

/// One decode token of one layer, for [`CudaExt::step_layers`].
#[derive(Debug)]
pub struct LayerStep<'a> {
    /// Model layer index.
    pub layer: usize,
    /// Exactly one token's inputs.
    pub inputs: TokenInputs<'a>,
    /// `Hv × dv` outputs.
    pub out: &'a mut [f32],
}

/// The CUDA Gated DeltaNet kernel. See the crate docs for the design.
#[derive(Debug)]
pub struct CudaKernel {
    pub(crate) gpu: Gpu,
    pub(crate) stream: Arc<CudaStream>,
    kernels: HashMap<KernelConfig, LoadedKernels>,
    pub(crate) staging: Staging,
    slot_table: SlotTable,
    prefill: Option<PrefillScratch>,
    pub(crate) timer: Timer,
    pub(crate) graphs: GraphCache,
    pub(crate) counters: DeviceCounters,
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

impl CudaKernel {
    /// Registry name.
    pub const NAME: &'static str = NAME;

    /// Opens GPU `HYBRID_GDN_CUDA_DEVICE` if that is set, else GPU `options.device_index` (the
    /// model's GPU under `--device cuda:N`). Without a driver, NVRTC or GPU this is
    /// [`GdnError::Unavailable`] with the reason; it never panics. The other options are
    /// ignored (the kernel uses one host thread).
    pub fn new(options: &BackendOptions) -> Result<Self> {
        Self::on_device(device::ordinal_from_env()?.unwrap_or(options.device_index))
    }

    /// The `cuda` backend (front and kernel) on the GPU [`CudaKernel::new`] picks.
    pub fn backend(options: &BackendOptions) -> Result<CudaBackend> {
        Ok(Checked::new(Self::new(options)?))
    }

    /// Opens GPU `ordinal`.
    pub fn on_device(ordinal: usize) -> Result<Self> {
        let gpu = device::open(ordinal)?;
        no_panic("setting up the cuda backend", || {
            // SAFETY: every buffer of this kernel is used on `stream` alone, which orders all
            // uses, so cudarc's cross-stream event tracking (two event records per buffer per
            // launch) is pure overhead.
            unsafe { gpu.ctx.disable_event_tracking() };
            let stream = gpu
                .ctx
                .new_stream()
                .map_err(|e| device_error("creating a CUDA stream", e))?;
            let timer = Timer::new(&gpu.ctx)?;
            Ok(CudaKernel {
                staging: Staging::default(),
                slot_table: SlotTable::default(),
                timer,
                stream,
                gpu,
                kernels: HashMap::new(),
                prefill: None,
                graphs: GraphCache::from_env(),
                counters: DeviceCounters::default(),
            })
        })
    }

    /// The device context (for callers that want to share the GPU).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.gpu.ctx
    }

    /// Turns CUDA-graph replay of [`step_layers`](CudaExt::step_layers) on or off (default on;
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

    fn sync(&self, doing: &str) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| device_error(doing, e))
    }

    fn add_device_time(&mut self) {
        self.counters.device_time_ns = self.timer.accumulate(self.counters.device_time_ns);
    }

    /// One (validated) token through the staging buffers: one upload, one launch, one
    /// download, one synchronisation.
    fn step_one(
        &mut self,
        layer: Layer<'_, CudaLayer>,
        state: &mut CudaState,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let spec = *layer.spec;
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
        launch_decode(
            &self.stream,
            layer.constants,
            &mut state.memory,
            &mut self.staging,
            0,
            0,
        )?;
        self.timer.stop(&self.stream)?;
        self.staging.download(&self.stream, spec.value_dim())?;
        self.sync("running the decode kernel")?;
        self.staging.unpack(0, out)?;
        self.add_device_time();
        self.counters.bytes_to_device += 4 * in_len as u64;
        self.counters.bytes_from_device += 4 * spec.value_dim() as u64;
        Ok(())
    }

    /// One (validated) decode token for each of `members` (distinct slots, at most
    /// [`MAX_BATCH_MEMBERS`]) in one `gdn_decode_batch` launch: one upload of every member's
    /// inputs and of the slot table, one launch, one download, one synchronisation.
    fn step_batch(
        &mut self,
        layer: Layer<'_, CudaLayer>,
        members: &mut [MemberMut<'_, '_, CudaState>],
    ) -> Result<()> {
        let spec = *layer.spec;
        let (in_len, out_len) = (staged_input_len(&spec), spec.value_dim());
        let count = members.len();
        let (total_in, total_out) = (count * in_len, count * out_len);
        if self
            .staging
            .ensure(&self.gpu.ctx, &self.stream, total_in, total_out)?
        {
            self.graphs.clear();
        }
        for (m, member) in members.iter().enumerate() {
            self.staging.pack(m * in_len, member.inputs)?;
        }
        self.staging.upload(&self.stream, total_in)?;
        let states: Vec<&CudaSlotState> = members.iter().map(|m| &m.state.memory).collect();
        self.slot_table.upload(&self.stream, &states)?;
        self.timer.start(&self.stream)?;
        launch_decode_batch(
            &self.stream,
            layer.constants,
            &mut self.staging,
            &self.slot_table,
            count,
        )?;
        self.timer.stop(&self.stream)?;
        self.staging.download(&self.stream, total_out)?;
        self.sync("running the batched decode kernel")?;
        for (m, member) in members.iter_mut().enumerate() {
            self.staging.unpack(m * out_len, member.out)?;
        }
        self.add_device_time();
        self.counters.bytes_to_device += 4 * total_in as u64 + 24 * count as u64;
        self.counters.bytes_from_device += 4 * total_out as u64;
        Ok(())
    }

    /// T (validated) tokens in chunks of [`PREFILL_CHUNK`]: per chunk one upload, three
    /// launches (conv + norm + gates for all tokens in parallel; the recurrence with state in
    /// registers; the conv-history commit) and one download; one synchronisation at the end.
    fn prefill_tokens(
        &mut self,
        layer: Layer<'_, CudaLayer>,
        state: &mut CudaState,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let spec = *layer.spec;
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        let tokens = inputs.a.len() / hv;
        self.ensure_prefill_scratch(&spec)?;
        let Some(scratch) = self.prefill.as_mut() else {
            return Err(device_error_msg("prefill scratch missing after allocation"));
        };
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
            launch_prefill(
                &self.stream,
                layer.constants,
                &mut state.memory,
                scratch,
                count,
            )?;
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
        self.add_device_time();
        Ok(())
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

    /// Upload, the layers' launches and the download for one slot, enqueued on `stream` (not
    /// synchronised).
    fn enqueue_layers(
        &mut self,
        stream: &Arc<CudaStream>,
        states: &mut SlotStates<'_, CudaLayer, CudaState>,
        layers: &[usize],
        offsets: &[(usize, usize)],
        (in_len, out_len): (usize, usize),
    ) -> Result<()> {
        self.staging.upload(stream, in_len)?;
        for (&layer, &(in_off, out_off)) in layers.iter().zip(offsets) {
            let (layer, state) = states.get_mut(layer)?;
            launch_decode(
                stream,
                layer.constants,
                &mut state.memory,
                &mut self.staging,
                in_off,
                out_off,
            )?;
        }
        self.staging.download(stream, out_len)
    }

    /// [`CudaExt::step_layers`] inside the front.
    fn step_layers_in(
        &mut self,
        states: &mut SlotStates<'_, CudaLayer, CudaState>,
        steps: &mut [LayerStep<'_>],
    ) -> Result<()> {
        let mut offsets = Vec::with_capacity(steps.len());
        let mut ids = Vec::with_capacity(steps.len());
        let (mut in_len, mut out_len) = (0, 0);
        for s in steps.iter() {
            let (layer, state) = states.get_mut(s.layer)?;
            let tokens = s.inputs.validate(layer.spec, s.out)?;
            if tokens != 1 {
                return Err(GdnError::NotOneToken(tokens));
            }
            offsets.push((in_len, out_len));
            ids.push((s.layer, state.id));
            in_len += staged_input_len(layer.spec);
            out_len += layer.spec.value_dim();
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
        for (s, &(offset, _)) in steps.iter().zip(&offsets) {
            self.staging.pack(offset, s.inputs)?;
        }
        let layers: Vec<usize> = steps.iter().map(|s| s.layer).collect();
        let lens = (in_len, out_len);
        self.timer.start(&self.stream)?;
        let stream = self.stream.clone();
        if self.graphs.enabled() {
            if !self.graphs.contains(&ids) {
                let graph = graphs::capture(&stream, || {
                    self.enqueue_layers(&stream, states, &layers, &offsets, lens)
                })?;
                self.graphs.insert(ids.clone(), graph);
            }
            self.graphs.launch(&ids)?;
        } else {
            self.enqueue_layers(&stream, states, &layers, &offsets, lens)?;
        }
        self.timer.stop(&self.stream)?;
        self.sync("running the decode kernels of several layers")?;
        for (s, &(_, offset)) in steps.iter_mut().zip(&offsets) {
            self.staging.unpack(offset, s.out)?;
        }
        self.add_device_time();
        self.counters.bytes_to_device += 4 * in_len as u64;
        self.counters.bytes_from_device += 4 * out_len as u64;
        Ok(())
    }
}

/// The CUDA-only calls of the `cuda` backend, on the checked front (each validates before it
/// touches a state, and counts its steps and time in the front's counters).
pub trait CudaExt {
    /// One decode token for several layers of one slot in one round trip: a single upload of
    /// every layer's inputs, one kernel launch per layer (replayed as one CUDA graph when graphs
    /// are on), a single download and one synchronisation. The same as calling
    /// [`GdnBackend::step`](hybrid_gdn::GdnBackend::step) for each entry in order; everything is
    /// validated before any state is touched.
    ///
    /// With candle on the CPU a real model cannot use this for consecutive layers (layer l + 1's
    /// inputs need layer l's output); it is the GPU-side cost of one token's GDN work, and the
    /// shape of the full-GPU placement, where candle's ops would be captured into the same graph.
    fn step_layers(&mut self, slot: SlotId, steps: &mut [LayerStep<'_>]) -> Result<()>;

    /// Runs `iters` repetitions of one decode token through every layer in `layers` of `slot`
    /// (each layer gets the same one-token `inputs`, staged once) and returns the mean µs per
    /// repetition, from CUDA events around all repetitions ([`mod@crate::bench`]). The slot's
    /// state advances `iters + 1` tokens (one untimed warm-up); outputs are not downloaded.
    fn time_device_decode(
        &mut self,
        slot: SlotId,
        layers: &[usize],
        inputs: TokenInputs<'_>,
        iters: usize,
        issue: Issue,
    ) -> Result<f64>;

    /// Turns CUDA-graph replay of `step_layers` on or off.
    fn set_graphs(&mut self, enabled: bool);

    /// The device context (for callers that want to share the GPU).
    fn context(&self) -> &Arc<CudaContext>;
}

impl CudaExt for CudaBackend {
    fn step_layers(&mut self, slot: SlotId, steps: &mut [LayerStep<'_>]) -> Result<()> {
        let count = steps.len() as u64;
        self.with_slot(slot, count, |kernel, states| {
            no_panic("decode steps of several layers", || {
                kernel.step_layers_in(states, steps)
            })
        })
    }

    fn time_device_decode(
        &mut self,
        slot: SlotId,
        layers: &[usize],
        inputs: TokenInputs<'_>,
        iters: usize,
        issue: Issue,
    ) -> Result<f64> {
        let steps = (iters.saturating_add(1)).saturating_mul(layers.len()) as u64;
        self.with_slot(slot, steps, |kernel, states| {
            no_panic("timing the decode kernels", || {
                kernel.time_device_decode_in(states, layers, inputs, iters, issue)
            })
        })
    }

    fn set_graphs(&mut self, enabled: bool) {
        self.kernel_mut().set_graphs(enabled);
    }

    fn context(&self) -> &Arc<CudaContext> {
        self.kernel().context()
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

/// Enqueues `gdn_decode_batch` for `members` slots of one layer: staged inputs and outputs
/// member after member from offset 0, the slots' buffers from `table` (uploaded on `stream`).
fn launch_decode_batch(
    stream: &Arc<CudaStream>,
    layer: &CudaLayer,
    staging: &mut Staging,
    table: &SlotTable,
    members: usize,
) -> Result<()> {
    let config = &layer.kernels.config;
    let spec = &config.spec;
    if members == 0 || members > MAX_BATCH_MEMBERS {
        return Err(device_error_msg(&format!(
            "a batched decode launch takes 1 to {MAX_BATCH_MEMBERS} members, not {members}"
        )));
    }
    let (input, mut output) = staging.views(
        (0, members * staged_input_len(spec)),
        (0, members * spec.value_dim()),
    )?;
    let slots = table.device()?;
    let c = &layer.constants;
    let mut builder = stream.launch_builder(&layer.kernels.decode_batch);
    builder
        .arg(&input)
        .arg(&c.conv_weight_t)
        .arg(&c.neg_a)
        .arg(&c.dt_bias)
        .arg(slots)
        .arg(&mut output);
    // SAFETY: the argument list matches `gdn_decode_batch` in gdn.cu (in, w_t, neg_a, dt_bias,
    // slots, out); `input` and `output` hold `members` rows of this layer's staged widths, the
    // table holds 3 × `members` addresses of live slot buffers allocated for this layer's spec
    // (`CudaSlotState::zeros`), all distinct (the front forms batches of distinct slots), and
    // every buffer is used on this stream only.
    unsafe { builder.launch(config.batch_launch(members)) }
        .map(drop)
        .map_err(|e| device_error("launching gdn_decode_batch", e))
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

impl GdnKernel for CudaKernel {
    type Constants = CudaLayer;
    type State = CudaState;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            device: self.gpu.description.clone(),
            state_on_host: false,
            prefill: PrefillStrategy::Sequential,
            host_threads: 1,
        }
    }

    fn load(
        &mut self,
        _layer: usize,
        spec: &LayerSpec,
        constants: &LayerConstants,
        _live_slots: usize,
    ) -> Result<CudaLayer> {
        no_panic("loading a layer", || {
            let kernels = self.kernels_for(*spec)?;
            let (device_constants, bytes) = CudaConstants::upload(&self.stream, spec, constants)?;
            self.sync("uploading layer constants")?;
            self.counters.bytes_to_device += bytes;
            Ok(CudaLayer {
                constants: device_constants,
                kernels,
            })
        })
    }

    fn new_state(&mut self, layer: Layer<'_, CudaLayer>) -> Result<CudaState> {
        no_panic("allocating a slot", || {
            let memory = CudaSlotState::zeros(&self.stream, layer.spec)?;
            self.sync("zeroing a new slot")?;
            Ok(CudaState {
                id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed),
                memory,
            })
        })
    }

    /// Graphs captured with this state point at its memory: they go first.
    fn release(&mut self, _layer: Layer<'_, CudaLayer>, state: CudaState) {
        self.graphs.forget_state(state.id);
    }

    fn reset(&mut self, _layer: Layer<'_, CudaLayer>, state: &mut CudaState) -> Result<()> {
        no_panic("resetting a slot", || {
            state.memory.reset(&self.stream)?;
            self.sync("zeroing a slot")
        })
    }

    /// Longer members (prefills) one after another through the prefill passes; the one-token
    /// members together, in one `gdn_decode_batch` launch (a lone one through `gdn_decode`).
    /// Members are distinct slots, so their order does not matter.
    fn run(
        &mut self,
        layer: Layer<'_, CudaLayer>,
        batch: &mut Batch<'_, '_, CudaState>,
    ) -> Result<()> {
        let hv = layer.spec.num_v_heads;
        let mut decoding = Vec::with_capacity(batch.len());
        for member in batch.iter_mut() {
            if member.inputs.a.len() == hv {
                decoding.push(member);
            } else {
                no_panic("a prefill", || {
                    self.prefill_tokens(layer, member.state, member.inputs, member.out)
                })?;
            }
        }
        if let [one] = decoding.as_mut_slice() {
            return no_panic("a decode step", || {
                self.step_one(layer, one.state, one.inputs, one.out)
            });
        }
        for group in decoding.chunks_mut(MAX_BATCH_MEMBERS) {
            no_panic("a batched decode step", || self.step_batch(layer, group))?;
        }
        Ok(())
    }

    fn read_state(&mut self, layer: Layer<'_, CudaLayer>, state: &CudaState) -> Result<SlotState> {
        let (exported, bytes) = no_panic("exporting state", || {
            state.memory.export(&self.stream, layer.spec)
        })?;
        self.counters.bytes_from_device += bytes;
        Ok(exported)
    }

    fn write_state(
        &mut self,
        layer: Layer<'_, CudaLayer>,
        state: &mut CudaState,
        canonical: &SlotState,
    ) -> Result<()> {
        let stream = self.stream.clone();
        let bytes = no_panic("importing state", || {
            state.memory.import(&stream, layer.spec, canonical)
        })?;
        self.counters.bytes_to_device += bytes;
        Ok(())
    }

    fn device_counters(&self) -> Option<DeviceCounters> {
        Some(self.counters)
    }
}
