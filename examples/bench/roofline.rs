//! The memory roofline of GDN decode: how many state bytes a token moves, how many FLOPs the
//! recurrence does on them, and what the device the state lives on can stream.

use std::time::Instant;

use anyhow::{Context, Result};
use hybrid_decode::gdn::{BackendInfo, LayerSpec};
use hybrid_decode::gdn_cpu::bandwidth::stream_scale;
use hybrid_decode::gdn_cpu::pool::WorkerPool;
use hybrid_decode::gdn_cpu::Kernel;

/// FLOPs of the delta-rule recurrence for one token of one layer, counted as DESIGN §3 step 4
/// writes it, per value head: `S ← e^g·S` (dk·dv multiplies), `kv = Sᵀk` (2·dk·dv),
/// `δ = β(v − kv)` (2·dv), `S ← S + kδᵀ` (2·dk·dv), `o = Sᵀq` (2·dk·dv). The conv, norms and
/// gates are O(channels), not O(state), and are left out: this is the part the state bound.
pub fn recurrence_flops(spec: &LayerSpec) -> f64 {
    let (dk, dv) = (spec.head_k_dim as f64, spec.head_v_dim as f64);
    spec.num_v_heads as f64 * (7.0 * dk * dv + 2.0 * dv)
}

/// State bytes one token moves in one layer: the f32 recurrent state read once and written once.
pub fn state_bytes(spec: &LayerSpec) -> f64 {
    2.0 * spec.recurrent_state_bytes() as f64
}

/// Smallest buffer the host bandwidth test streams, so that it measures DRAM.
const STREAM_MIN_BYTES: usize = 256 << 20;

/// A device's streaming bandwidth and where the number came from.
#[derive(Debug, Clone)]
pub struct DeviceBandwidth {
    /// GB/s (10⁹ bytes per second), read + write counted.
    pub gb_s: f64,
    /// How it was obtained, for the report.
    pub source: String,
    /// For a simulated device (`xrt-sim`), the modelled device µs per layer-token: the achieved
    /// GB/s is then the modelled device's, not the simulation's wall time on this CPU.
    pub modelled_us_per_layer_token: Option<f64>,
}

/// The bandwidth the GDN state of `gdn_layers` layers of `spec` can be streamed at on the
/// backend's device: measured in this process for host backends, modelled for the others.
pub fn device_bandwidth(
    info: &BackendInfo,
    spec: &LayerSpec,
    gdn_layers: usize,
) -> Result<Option<DeviceBandwidth>> {
    if info.state_on_host {
        // The ceiling is host DRAM, not cache: in end-to-end decode every token streams all the
        // weights through the caches, which evicts the GDN state between one token and the next.
        // So the test buffer is the state's size or STREAM_MIN_BYTES (8 × a 32 MiB L3),
        // whichever is larger.
        let floats = (spec.recurrent_state_len() * gdn_layers.max(1)).max(STREAM_MIN_BYTES / 4);
        return host_stream_bandwidth(info.host_threads.max(1), floats).map(Some);
    }
    Ok(modelled_device_bandwidth(info, spec))
}

/// The modelled bandwidth of the memory a device backend's state lives in.
///
/// `xrt` and `xrt-sim`: the FPGA kernel's on-chip state banks (P heads × 2 floats, read and
/// written, per cycle at 300 MHz) from crates/gdn-xrt's latency model, for the design point
/// `xrt-sim` simulates (a card's xclbin is assumed to be the same point: the backend trait does
/// not expose it). For `xrt-sim` the achieved figure then uses the modelled device time too,
/// since its wall time is a C-simulation on this CPU. Other device backends (`cuda`) have no
/// model here: their bandwidth is measured on the GPU by crates/gdn-cuda/gpu_check.
#[cfg(feature = "xrt")]
pub fn modelled_device_bandwidth(info: &BackendInfo, spec: &LayerSpec) -> Option<DeviceBandwidth> {
    use hybrid_decode::gdn_xrt::{latency, XrtKernel};
    let design = XrtKernel::SIM_DESIGN;
    let clock_mhz = latency::KernelTiming::calibrated().clock_mhz;
    let simulated = info.name == XrtKernel::SIM_NAME;
    if !simulated && info.name != XrtKernel::NAME {
        return None;
    }
    Some(DeviceBandwidth {
        gb_s: latency::state_bank_gb_s(design, clock_mhz),
        source: format!(
            "modelled: U55C kernel {design}, on-chip state banks at {clock_mhz:.0} MHz{}",
            if simulated {
                "; achieved from the modelled device time"
            } else {
                ""
            }
        ),
        modelled_us_per_layer_token: simulated.then(|| latency::device_us_per_step(spec, design)),
    })
}

/// Without the `xrt` feature no backend has a device model.
#[cfg(not(feature = "xrt"))]
pub fn modelled_device_bandwidth(
    _info: &BackendInfo,
    _spec: &LayerSpec,
) -> Option<DeviceBandwidth> {
    None
}

/// Streams `floats` f32 values (read + write, `x ← x·c`) on `threads` threads — the backend's
/// thread count — with the best kernel of this CPU, and returns the median of 9 samples of at
/// least 2 ms each.
fn host_stream_bandwidth(threads: usize, floats: usize) -> Result<DeviceBandwidth> {
    let mut pool = WorkerPool::new(threads).context("starting the bandwidth-test threads")?;
    let kernel = Kernel::detect();
    let mut buf = vec![1.0f32; floats];
    let pass = |pool: &mut WorkerPool, buf: &mut [f32]| {
        stream_scale(pool, kernel, buf, 0.999_999)
            .map_err(|_| anyhow::anyhow!("a bandwidth-test thread panicked"))
    };
    // Warm-up, then size a sample so that timer resolution and dispatch jitter do not dominate.
    pass(&mut pool, &mut buf)?;
    let started = Instant::now();
    pass(&mut pool, &mut buf)?;
    let one = started.elapsed().as_secs_f64().max(1e-8);
    let iters = ((2e-3 / one).ceil() as usize).clamp(1, 100_000);
    let mut samples = Vec::with_capacity(9);
    for _ in 0..9 {
        let started = Instant::now();
        for _ in 0..iters {
            pass(&mut pool, &mut buf)?;
        }
        let secs = started.elapsed().as_secs_f64();
        samples.push(2.0 * 4.0 * floats as f64 * iters as f64 / secs / 1e9);
    }
    samples.sort_by(f64::total_cmp);
    Ok(DeviceBandwidth {
        gb_s: samples[samples.len() / 2],
        source: format!(
            "measured: stream_scale over {} MiB, {threads} thread(s), {} loop",
            (floats * 4) >> 20,
            kernel.name()
        ),
        modelled_us_per_layer_token: None,
    })
}
