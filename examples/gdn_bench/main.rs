//! gdn_bench — times one GDN decode step per backend at a layer shape, in two regimes, plus
//! prefill throughput and the machine's memory roofline for the same bytes.
//!
//! ```text
//! cargo run --release --example gdn_bench -- [--backends cpu,reference,candle-ops]
//!     [--hk 16 --hv 32 --dk 128 --dv 128] [--layers 36] [--prefill-tokens 512]
//!     [--threads N] [--repeats 15] [--budget-s 4] [--json]
//! ```
//! Regimes: `hot` — one layer, its state stays in cache; `cold` — `--layers` layers stepped in
//! turn, the real model's working set (36 × 2 MiB for Qwen3-Next) streaming from DRAM;
//! `prefill` — one `--prefill-tokens` prompt on one layer. `stream-roofline` is a plain loop
//! that reads and writes the same bytes once on the same threads: the floor for `hot`/`cold`.
//! Each backend's first outputs are checked against `reference` before anything is timed.

mod candle_ops;

use std::time::Instant;

use anyhow::{bail, Context, Result};
use hybrid_decode::gdn::conformance::{random_constants, random_inputs};
use hybrid_decode::gdn::{
    BackendOptions, GdnBackend, LayerConstants, LayerSpec, ReferenceBackend, SlotId, TokenInputs,
};
use hybrid_decode::gdn_cpu::bandwidth::stream_scale;
use hybrid_decode::gdn_cpu::pool::WorkerPool;
use hybrid_decode::gdn_cpu::Kernel;

use candle_ops::CandleOps;

const CANDLE_OPS: &str = "candle-ops";
const ROOFLINE: &str = "stream-roofline";

struct Options {
    backends: Vec<String>,
    spec: LayerSpec,
    layers: usize,
    prefill_tokens: usize,
    threads: Option<usize>,
    /// Backend options besides threads (`--xclbin`, `--device-index`).
    gdn_options: BackendOptions,
    repeats: usize,
    budget_s: f64,
    json: bool,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        backends: Vec::new(),
        spec: LayerSpec::QWEN3_NEXT,
        layers: 36,
        prefill_tokens: 512,
        threads: None,
        gdn_options: BackendOptions::default(),
        repeats: 15,
        budget_s: 4.0,
        json: false,
    };
    let mut args = hybrid_decode::cli::utf8_args()?.into_iter();
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<String> {
            args.next().with_context(|| format!("{name} needs a value"))
        };
        let mut number = |name: &str| -> Result<usize> {
            let v = value(name)?;
            v.parse()
                .with_context(|| format!("{name} takes a whole number, got `{v}`"))
        };
        match flag.as_str() {
            "--backends" => {
                o.backends = value("--backends")?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--hk" => o.spec.num_k_heads = number("--hk")?,
            "--hv" => o.spec.num_v_heads = number("--hv")?,
            "--dk" => o.spec.head_k_dim = number("--dk")?,
            "--dv" => o.spec.head_v_dim = number("--dv")?,
            "--layers" => o.layers = number("--layers")?,
            "--prefill-tokens" => o.prefill_tokens = number("--prefill-tokens")?,
            "--threads" => o.threads = Some(number("--threads")?),
            "--xclbin" => o.gdn_options = o.gdn_options.clone().with_xclbin(value("--xclbin")?),
            "--device-index" => {
                o.gdn_options = o
                    .gdn_options
                    .clone()
                    .with_device_index(number("--device-index")?)
            }
            "--repeats" => o.repeats = number("--repeats")?.max(1),
            "--budget-s" => {
                let v = value("--budget-s")?;
                o.budget_s = v
                    .parse()
                    .with_context(|| format!("--budget-s takes seconds, got `{v}`"))?;
            }
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!("{}", include_str!("usage.txt"));
                std::process::exit(0);
            }
            other => bail!("unknown flag `{other}` (see --help)"),
        }
    }
    o.spec
        .validate()
        .context("the shape given by --hk/--hv/--dk/--dv")?;
    if o.layers == 0 || o.prefill_tokens == 0 {
        bail!("--layers and --prefill-tokens must be at least 1");
    }
    if let Some(threads) = o.threads {
        hybrid_decode::cli::check_threads(threads)?;
    }
    if o.backends.is_empty() {
        o.backends = hybrid_decode::gdn_registry()
            .available()
            .into_iter()
            .map(String::from)
            .collect();
        o.backends.push(CANDLE_OPS.into());
    }
    Ok(o)
}

/// Something the bench can time: a registry backend with one slot, or the candle-ops baseline.
enum Subject {
    Backend(Box<dyn GdnBackend>, SlotId),
    Candle(CandleOps),
}

impl Subject {
    fn create(name: &str, options: &Options, constants: &[LayerConstants]) -> Result<Self> {
        if name == CANDLE_OPS {
            return Ok(Subject::Candle(CandleOps::new(options.spec, constants)?));
        }
        let mut backend_options = options.gdn_options.clone();
        if let Some(threads) = options.threads {
            backend_options = backend_options.with_threads(threads);
        }
        let mut backend = hybrid_decode::gdn_registry().create(name, &backend_options)?;
        for (layer, c) in constants.iter().enumerate() {
            backend.load_layer(layer, options.spec, c)?;
        }
        let slot = backend.alloc_slot()?;
        Ok(Subject::Backend(backend, slot))
    }

    fn device(&self) -> String {
        match self {
            Subject::Backend(b, _) => b.info().device,
            Subject::Candle(_) => "host CPU, candle tensor ops".into(),
        }
    }

    fn step(&mut self, layer: usize, inputs: TokenInputs<'_>, out: &mut [f32]) -> Result<()> {
        match self {
            Subject::Backend(b, slot) => Ok(b.step(layer, *slot, inputs, out)?),
            Subject::Candle(c) => c.step(layer, inputs, out),
        }
    }

    fn prefill(
        &mut self,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
        spec: &LayerSpec,
    ) -> Result<()> {
        match self {
            Subject::Backend(b, slot) => Ok(b.prefill(0, *slot, inputs, out)?),
            // A candle user without a chunked kernel runs the prompt token by token.
            Subject::Candle(c) => {
                let (conv_dim, hv, value_dim) =
                    (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
                for t in 0..inputs.a.len() / hv {
                    let one = TokenInputs {
                        mixed_qkv: &inputs.mixed_qkv[t * conv_dim..(t + 1) * conv_dim],
                        a: &inputs.a[t * hv..(t + 1) * hv],
                        b: &inputs.b[t * hv..(t + 1) * hv],
                    };
                    c.step(0, one, &mut out[t * value_dim..(t + 1) * value_dim])?;
                }
                Ok(())
            }
        }
    }

    fn reset(&mut self) -> Result<()> {
        match self {
            Subject::Backend(b, slot) => Ok(b.reset_slot(*slot)?),
            Subject::Candle(c) => c.reset(),
        }
    }
}

/// One measured (backend, regime).
struct Row {
    backend: String,
    device: String,
    regime: &'static str,
    layers: usize,
    tokens: usize,
    median_us: f64,
    min_us: f64,
    max_us: f64,
    repeats: usize,
    max_abs_diff_vs_reference: Option<f32>,
}

/// Median, min and max of per-unit times in µs.
fn summarize(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    (median, samples[0], samples[samples.len() - 1])
}

/// Times `run(iters)` (which performs `iters` units of work) over repeats; returns µs per unit.
/// The first call calibrates `iters` so that one repeat takes ≥ 5 ms, and the repeat count is
/// cut so that the whole case fits in `budget_s`.
fn measure(
    repeats: usize,
    budget_s: f64,
    mut run: impl FnMut(usize) -> Result<()>,
) -> Result<(Vec<f64>, usize)> {
    let started = Instant::now();
    run(1)?; // warm-up
    let one = started.elapsed().as_secs_f64().max(1e-7);
    let iters = ((5e-3 / one).ceil() as usize).clamp(1, 10_000);
    let per_repeat = one * iters as f64;
    let repeats = repeats.min(((budget_s / per_repeat) as usize).max(3));
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        run(iters)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
    Ok((samples, repeats))
}

fn main() -> Result<()> {
    // A misspelt or unsupported HYBRID_SIMD is an error before anything runs.
    hybrid_decode::simd::requested()?;
    let options = parse_args()?;
    let spec = options.spec;
    let constants: Vec<LayerConstants> = (0..options.layers)
        .map(|layer| random_constants(&spec, layer as u64))
        .collect();
    let (x, a, b) = random_inputs(&spec, 1, 1);
    let one = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let (px, pa, pb) = random_inputs(&spec, options.prefill_tokens, 2);
    let prompt = TokenInputs {
        mixed_qkv: &px,
        a: &pa,
        b: &pb,
    };
    let mut out = vec![0.0f32; spec.value_dim()];
    let mut prefill_out = vec![0.0f32; options.prefill_tokens * spec.value_dim()];

    // The oracle's first outputs, to check each backend before timing it.
    let check_steps = 3;
    let mut oracle = ReferenceBackend::default();
    oracle.load_layer(0, spec, &constants[0])?;
    let oracle_slot = oracle.alloc_slot()?;
    let mut expected = Vec::new();
    for _ in 0..check_steps {
        oracle.step(0, oracle_slot, one, &mut out)?;
        expected.extend_from_slice(&out);
    }

    let mut rows = Vec::new();
    for name in &options.backends {
        let mut subject = Subject::create(name, &options, &constants)
            .with_context(|| format!("setting up backend `{name}`"))?;
        let device = subject.device();
        let mut got = Vec::new();
        for _ in 0..check_steps {
            subject.step(0, one, &mut out)?;
            got.extend_from_slice(&out);
        }
        let diff = got
            .iter()
            .zip(&expected)
            .map(|(g, e)| (g - e).abs())
            .fold(0.0f32, f32::max);
        if diff > 1e-4 || diff.is_nan() {
            eprintln!(
                "WARNING: `{name}` differs from reference by {diff:e} after {check_steps} steps"
            );
        }
        subject.reset()?;

        let row = |regime, layers, tokens, (samples, repeats): (Vec<f64>, usize)| {
            let (median_us, min_us, max_us) = summarize(samples);
            Row {
                backend: name.clone(),
                device: device.clone(),
                regime,
                layers,
                tokens,
                median_us,
                min_us,
                max_us,
                repeats,
                max_abs_diff_vs_reference: Some(diff),
            }
        };
        let hot = measure(options.repeats, options.budget_s, |iters| {
            (0..iters).try_for_each(|_| subject.step(0, one, &mut out))
        })?;
        rows.push(row("hot", 1, 1, hot));
        let layers = options.layers;
        let cold = measure(options.repeats, options.budget_s, |iters| {
            for _ in 0..iters {
                for layer in 0..layers {
                    subject.step(layer, one, &mut out)?;
                }
            }
            Ok(())
        })?;
        let (samples, repeats) = cold;
        let per_layer = samples.into_iter().map(|s| s / layers as f64).collect();
        rows.push(row("cold", layers, 1, (per_layer, repeats)));
        let prefill = measure(options.repeats.min(7), options.budget_s, |iters| {
            for _ in 0..iters {
                subject.reset()?;
                subject.prefill(prompt, &mut prefill_out, &spec)?;
            }
            Ok(())
        })?;
        rows.push(row("prefill", 1, options.prefill_tokens, prefill));
        if !options.json {
            eprintln!("measured {name}");
        }
    }

    rows.extend(roofline_rows(&options)?);
    if options.json {
        for r in &rows {
            println!("{}", json_line(r, &spec));
        }
    } else {
        print_table(&rows, &spec, &options);
    }
    Ok(())
}

/// The streaming loop over one layer's (hot) and all layers' (cold) state bytes.
fn roofline_rows(options: &Options) -> Result<Vec<Row>> {
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut pool = WorkerPool::new(threads)?;
    let kernel = Kernel::detect();
    let per_layer = options.spec.recurrent_state_len();
    let mut rows = Vec::new();
    for (regime, layers) in [("hot", 1), ("cold", options.layers)] {
        let mut buf = vec![1.0f32; per_layer * layers];
        let (samples, repeats) = measure(options.repeats, options.budget_s, |iters| {
            for _ in 0..iters {
                stream_scale(&mut pool, kernel, &mut buf, 0.999_999)
                    .map_err(|_| anyhow::anyhow!("stream task panicked"))?;
            }
            Ok(())
        })?;
        let per_layer_us = samples.into_iter().map(|s| s / layers as f64).collect();
        let (median_us, min_us, max_us) = summarize(per_layer_us);
        rows.push(Row {
            backend: ROOFLINE.into(),
            device: format!("host memory, {threads} threads, {} loop", kernel.name()),
            regime,
            layers,
            tokens: 1,
            median_us,
            min_us,
            max_us,
            repeats,
            max_abs_diff_vs_reference: None,
        });
    }
    Ok(rows)
}

fn state_bytes(spec: &LayerSpec) -> f64 {
    spec.recurrent_state_bytes() as f64
}

/// µs per layer-token and effective GB/s (2 × state bytes per layer-token).
fn per_token(r: &Row, spec: &LayerSpec) -> (f64, f64) {
    let us = r.median_us / r.tokens as f64;
    (us, 2.0 * state_bytes(spec) / (us * 1e3))
}

fn json_line(r: &Row, spec: &LayerSpec) -> String {
    let (us, gb_s) = per_token(r, spec);
    let mut v = serde_json::json!({
        "backend": r.backend,
        "device": r.device,
        "regime": r.regime,
        "layers": r.layers,
        "hk": spec.num_k_heads,
        "hv": spec.num_v_heads,
        "dk": spec.head_k_dim,
        "dv": spec.head_v_dim,
        "us_per_layer_step": us,
        "us_min": r.min_us / r.tokens as f64,
        "us_max": r.max_us / r.tokens as f64,
        "repeats": r.repeats,
        "state_bytes_per_layer": spec.recurrent_state_bytes(),
        "effective_gb_s": gb_s,
        "max_abs_diff_vs_reference": r.max_abs_diff_vs_reference,
    });
    if r.regime == "prefill" {
        v["prefill_tokens"] = r.tokens.into();
        v["tokens_per_s"] = (r.tokens as f64 / (r.median_us * 1e-6)).into();
    }
    #[cfg(feature = "xrt")]
    if let Some(model) = FpgaModel::for_row(r, spec) {
        v["measured_us_is"] = "C-simulation wall time on the host CPU".into();
        v["modelled_design_point_p"] = model.design_point_p.into();
        v["modelled_device_us_per_layer_step"] = model.device_us.into();
        v["modelled_host_us_per_layer_step"] = model.host_us.into();
    }
    v.to_string()
}

/// For `xrt-sim`, whose measured time is the C-simulation on this CPU, the latency model's U55C
/// figures for the simulated design point.
#[cfg(feature = "xrt")]
struct FpgaModel {
    design_point_p: usize,
    /// Modelled device µs per layer-token (per token of the prefill run for `prefill` rows).
    device_us: f64,
    /// Modelled host-side µs per layer-step (transfers, launch).
    host_us: f64,
}

#[cfg(feature = "xrt")]
impl FpgaModel {
    /// The model for `r`, if `r` is an `xrt-sim` row.
    fn for_row(r: &Row, spec: &LayerSpec) -> Option<Self> {
        use hybrid_decode::gdn_xrt::{latency, XrtKernel};
        if r.backend != XrtKernel::SIM_NAME {
            return None;
        }
        let design = XrtKernel::SIM_DESIGN;
        let device_us = if r.regime == "prefill" {
            latency::device_us_per_prefill_token(spec, design, r.tokens)
        } else {
            latency::device_us_per_step(spec, design)
        };
        Some(FpgaModel {
            design_point_p: design.heads_per_cycle(),
            device_us,
            host_us: latency::host_us_per_step(spec),
        })
    }
}

fn print_table(rows: &[Row], spec: &LayerSpec, options: &Options) {
    println!(
        "GDN decode step, Hk {} Hv {} dk {} dv {} ({:.1} MiB state per layer); hot = 1 layer, \
         cold = {} layers, prefill = {} tokens",
        spec.num_k_heads,
        spec.num_v_heads,
        spec.head_k_dim,
        spec.head_v_dim,
        state_bytes(spec) / (1 << 20) as f64,
        options.layers,
        options.prefill_tokens
    );
    println!(
        "| backend | regime | µs/layer-token (median) | min–max | GB/s eff. | vs roofline | tok/s | device |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    let roofline = |regime: &str| {
        rows.iter()
            .find(|r| r.backend == ROOFLINE && r.regime == regime)
            .map(|r| r.median_us)
    };
    for r in rows {
        let (us, gb_s) = per_token(r, spec);
        let vs = match (r.regime, roofline(r.regime)) {
            ("prefill", _) | (_, None) => "".to_string(),
            (_, Some(floor)) => format!("{:.2}×", us / floor),
        };
        let tok_s = if r.regime == "prefill" {
            format!("{:.0}", r.tokens as f64 / (r.median_us * 1e-6))
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {:.1} | {:.1}–{:.1} | {:.1} | {} | {} | {} |",
            r.backend,
            r.regime,
            us,
            r.min_us / r.tokens as f64,
            r.max_us / r.tokens as f64,
            gb_s,
            vs,
            tok_s,
            r.device
        );
    }
    #[cfg(feature = "xrt")]
    if let Some(model) = rows.iter().find_map(|r| FpgaModel::for_row(r, spec)) {
        println!(
            "xrt-sim rows measure the C-simulation on this CPU; the latency model gives {:.1} µs \
             device + {:.1} µs host per layer-token on a U55C (P = {})",
            model.device_us, model.host_us, model.design_point_p,
        );
    }
    if let Some(cpu) = rows
        .iter()
        .find(|r| r.backend == "cpu" && r.regime == "hot")
    {
        for other in ["reference", CANDLE_OPS] {
            if let Some(o) = rows
                .iter()
                .find(|r| r.backend == other && r.regime == "hot")
            {
                println!(
                    "cpu is {:.1}× faster than {other} (hot)",
                    o.median_us / cpu.median_us
                );
            }
        }
    }
}
