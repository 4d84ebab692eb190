//! cuda_bench — GPU timings of the `cuda` GDN backend at a layer shape, one JSON object per line.
//!
//! ```text
//! cargo run --release -p hybrid-gdn-cuda --example cuda_bench -- \
//!     [--hk 16 --hv 32 --dk 128 --dv 128] [--layers 36] [--iters 2000] [--prefill-tokens 512] [--quick]
//! ```
//! Rows (`regime`):
//! - `kernel-hot` / `kernel-hot-graph`: one layer's decode kernel back to back (state stays in
//!   L2), inputs already on the GPU; CUDA events; µs per layer-step, launch gaps included.
//! - `kernel-cold` / `kernel-cold-graph`: one token through `--layers` layers (72 MiB of state at
//!   the Qwen3-Next shape, more than the H100's 50 MB L2); µs per token and per layer-step.
//!   The 36-layer target (≤ 100 µs per token including launches) is read off these rows.
//! - `step-hot` / `step-cold`: the `GdnBackend::step` round trip (upload, launch, download,
//!   synchronise) per layer-step, wall clock: what candle-on-CPU placement pays.
//! - `step-layers`: `step_layers` over all layers (one round trip, graph replay), wall clock.
//! - `prefill`: one prompt on one layer, wall clock per token.
//! - `dtod-roofline`: a device-to-device copy of 512 MiB; `us_per_layer_step` is the time to read
//!   and write one layer's state at that bandwidth — the floor for the decode kernel.

use std::time::Instant;

use hybrid_gdn::conformance::{random_constants, random_inputs};
use hybrid_gdn::{BackendOptions, GdnBackend, LayerSpec, Result, SlotId, TokenInputs};
use hybrid_gdn_cuda::device::device_error;
use hybrid_gdn_cuda::{CudaBackend, CudaExt, CudaKernel, Issue, LayerStep};

struct Options {
    spec: LayerSpec,
    layers: usize,
    iters: usize,
    prefill_tokens: usize,
}

fn parse() -> std::result::Result<Options, String> {
    let mut o = Options {
        spec: LayerSpec::QWEN3_NEXT,
        layers: 36,
        iters: 2000,
        prefill_tokens: 512,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--quick" {
            o.iters = 200;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let n: usize = value
            .parse()
            .map_err(|_| format!("{flag} takes a whole number, got `{value}`"))?;
        match flag.as_str() {
            "--hk" => o.spec.num_k_heads = n,
            "--hv" => o.spec.num_v_heads = n,
            "--dk" => o.spec.head_k_dim = n,
            "--dv" => o.spec.head_v_dim = n,
            "--layers" => o.layers = n.max(1),
            "--iters" => o.iters = n.max(1),
            "--prefill-tokens" => o.prefill_tokens = n.max(1),
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    o.spec.validate().map_err(|e| e.to_string())?;
    Ok(o)
}

fn row(regime: &str, o: &Options, layers: usize, us_per_layer_step: f64, extra: &str) {
    let state_bytes = o.spec.recurrent_state_bytes() as f64;
    let gb_s = 2.0 * state_bytes / (us_per_layer_step * 1e3);
    let tiling = format!(
        "cols={} warps={}",
        std::env::var("HYBRID_GDN_CUDA_COLS").unwrap_or_else(|_| "default".into()),
        std::env::var("HYBRID_GDN_CUDA_WARPS").unwrap_or_else(|_| "default".into())
    );
    println!(
        "{{\"bench\":\"cuda_bench\",\"regime\":\"{regime}\",\"hk\":{},\"hv\":{},\"dk\":{},\"dv\":{},\
         \"layers\":{layers},\"us_per_layer_step\":{us_per_layer_step:.3},\
         \"us_per_token_all_layers\":{:.3},\"effective_gb_s\":{gb_s:.1},\"tiling\":\"{tiling}\"{extra}}}",
        o.spec.num_k_heads,
        o.spec.num_v_heads,
        o.spec.head_k_dim,
        o.spec.head_v_dim,
        us_per_layer_step * layers as f64,
    );
}

fn main() -> std::result::Result<(), String> {
    let o = parse()?;
    run(&o).map_err(|e| e.to_string())
}

fn run(o: &Options) -> Result<()> {
    let mut backend = CudaKernel::backend(&BackendOptions::default())?;
    eprintln!("device: {}", backend.info().device);
    for layer in 0..o.layers {
        backend.load_layer(layer, o.spec, &random_constants(&o.spec, layer as u64))?;
    }
    let slot = backend.alloc_slot()?;
    let (x, a, b) = random_inputs(&o.spec, 1, 1);
    let one = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let all: Vec<usize> = (0..o.layers).collect();
    let cold_iters = (o.iters / o.layers).max(20);

    for (regime, layers, iters, issue) in [
        ("kernel-hot", &all[..1], o.iters, Issue::Launches),
        ("kernel-hot-graph", &all[..1], o.iters, Issue::Graph),
        ("kernel-cold", &all[..], cold_iters, Issue::Launches),
        ("kernel-cold-graph", &all[..], cold_iters, Issue::Graph),
    ] {
        backend.reset_slot(slot)?;
        let us_per_rep = backend.time_device_decode(slot, layers, one, iters, issue)?;
        row(
            regime,
            o,
            layers.len(),
            us_per_rep / layers.len() as f64,
            "",
        );
    }

    let mut out = vec![0.0f32; o.spec.value_dim()];
    for (regime, layers) in [("step-hot", &all[..1]), ("step-cold", &all[..])] {
        backend.reset_slot(slot)?;
        let reps = (o.iters / 4 / layers.len()).max(10);
        let us = wall_us(reps, || {
            layers
                .iter()
                .try_for_each(|&l| backend.step(l, slot, one, &mut out))
        })?;
        row(regime, o, layers.len(), us / layers.len() as f64, "");
    }

    backend.reset_slot(slot)?;
    let us = step_layers_us(
        &mut backend,
        slot,
        &all,
        one,
        o.spec.value_dim(),
        (o.iters / 20).max(10),
    )?;
    row("step-layers", o, o.layers, us / o.layers as f64, "");

    let (px, pa, pb) = random_inputs(&o.spec, o.prefill_tokens, 2);
    let prompt = TokenInputs {
        mixed_qkv: &px,
        a: &pa,
        b: &pb,
    };
    let mut pout = vec![0.0f32; o.prefill_tokens * o.spec.value_dim()];
    let us = wall_us(5, || {
        backend.reset_slot(slot)?;
        backend.prefill(0, slot, prompt, &mut pout)
    })?;
    let per_token = us / o.prefill_tokens as f64;
    row(
        "prefill",
        o,
        1,
        per_token,
        &format!(
            ",\"prefill_tokens\":{},\"tokens_per_s\":{:.0}",
            o.prefill_tokens,
            1e6 / per_token
        ),
    );

    let gb_s = dtod_bandwidth(&backend)?;
    let floor_us = 2.0 * o.spec.recurrent_state_bytes() as f64 / (gb_s * 1e3);
    row(
        "dtod-roofline",
        o,
        1,
        floor_us,
        &format!(",\"copy_gb_s\":{gb_s:.1}"),
    );
    let c = backend.counters();
    eprintln!(
        "counters: {} steps, {} prefill tokens, {} B to device, {} B from device, device time {:?} ns",
        c.steps, c.prefill_tokens, c.bytes_to_device, c.bytes_from_device, c.device_time_ns
    );
    Ok(())
}

/// Median wall µs of `f` over `reps` calls, after one warm-up call.
fn wall_us(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn step_layers_us(
    backend: &mut CudaBackend,
    slot: SlotId,
    layers: &[usize],
    one: TokenInputs<'_>,
    value_dim: usize,
    reps: usize,
) -> Result<f64> {
    let mut outs: Vec<Vec<f32>> = layers.iter().map(|_| vec![0.0; value_dim]).collect();
    wall_us(reps, || {
        let mut steps: Vec<LayerStep<'_>> = layers
            .iter()
            .zip(outs.iter_mut())
            .map(|(&layer, out)| LayerStep {
                layer,
                inputs: one,
                out,
            })
            .collect();
        backend.step_layers(slot, &mut steps)
    })
}

/// Device-to-device copy bandwidth (bytes read + written per second, in GB/s).
fn dtod_bandwidth(backend: &CudaBackend) -> Result<f64> {
    let ctx = backend.context();
    let stream = ctx
        .new_stream()
        .map_err(|e| device_error("bench stream", e))?;
    let n = 128 << 20; // f32s: 512 MiB
    let src = stream
        .alloc_zeros::<f32>(n)
        .map_err(|e| device_error("bench buffer", e))?;
    let mut dst = stream
        .alloc_zeros::<f32>(n)
        .map_err(|e| device_error("bench buffer", e))?;
    let copy = |dst: &mut cudarc::driver::CudaSlice<f32>| {
        stream
            .memcpy_dtod(&src, dst)
            .map_err(|e| device_error("bench copy", e))
    };
    copy(&mut dst)?;
    stream.synchronize().map_err(|e| device_error("bench", e))?;
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        copy(&mut dst)?;
    }
    stream.synchronize().map_err(|e| device_error("bench", e))?;
    let s = t.elapsed().as_secs_f64();
    Ok(2.0 * (n * 4) as f64 * reps as f64 / s / 1e9)
}
