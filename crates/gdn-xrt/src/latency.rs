//! Latency model of the kernel: device cycles per layer-token from its loop structure, and the
//! host-side cost of a step (transfers, launch).
//!
//! # Device
//! One STEP invocation runs, per token, the loops of `gdn_kernel.cpp` one after another (they
//! are the stages of one dataflow region, but each consumes the whole output of the previous one
//! for the same token):
//!
//! | loop (gdn_kernel.cpp) | trip count | II |
//! |---|---|---|
//! | `conv_rows` (conv + SiLU, reads `in`) | ⌈C/16⌉, after the AXI read latency | 1 |
//! | `norm_sums` (L2 factors of q and k heads) | 2·Hk·⌈dk/16⌉ | 1 |
//! | `normalize` (scale q, k; kᵀq) | Hk·⌈dk/16⌉ | 1 |
//! | `gate_heads` (g, β; reads a, b) | Hv, after the AXI read latency | 1 |
//! | `sweep_words` (retrieve, delta, update) | (⌈Hv/P⌉·dv + LAG)·T | 1 |
//! | `write_out` (o, 16 floats per beat) | ⌈Hv·dv/16⌉, then the write response | 1 |
//!
//! with C = conv_dim, W = ⌈dk/2⌉ state words per column, and the column time
//! T = max(W, ⌈(W + δ latency)/LAG⌉): a column's write-back starts LAG columns after its read,
//! so short columns wait for the delta pipeline. Each loop adds its pipeline depth, derived
//! from f32 operator latencies at 300 MHz ([`OperatorLatency`]). What the loops do not explain
//! (control handshakes, argument registers, the dataflow region's start and drain, AXI latency
//! beyond the model's) is one constant per invocation, calibrated so that the fastest design point
//! at the Qwen3-Next shape gives the published 63 µs. The structural part alone predicts
//! 60.6 µs there (18 191 cycles): the calibration adds 709 cycles (2.4 µs, 3.9 %).
//!
//! # Host
//! Per STEP: write + sync the inputs, set 13 arguments and start, wait, sync + read status and
//! outputs. Modelled as a fixed launch cost plus three DMA syncs plus bytes over PCIe. These
//! constants are assumptions (no card was available to measure them), stated in [`HostLink`].

use hybrid_gdn::LayerSpec;

use crate::design::{DesignPoint, LANES};

/// The published figure the model is calibrated against: µs per layer-token.
pub const PUBLISHED_US: f64 = 63.0;
/// The shape of the published figure.
pub const PUBLISHED_SPEC: LayerSpec = LayerSpec::QWEN3_NEXT;
/// The design point of the published figure (the fastest).
pub const PUBLISHED_DESIGN: DesignPoint = DesignPoint::P16;

/// Floats per 512-bit AXI beat and channels per conv cycle (`GDN_CH`).
const CHANNELS: u64 = 16;
/// Rotating accumulators per lane (`GDN_ACC`).
const ACCUMULATORS: u64 = 8;
/// Columns between read and write-back (`GDN_LAG`).
const LAG: u64 = 2;
/// Conv taps the conv pipeline is built for (`GDN_MAX_CONV_KERNEL`).
const MAX_CONV_KERNEL: u64 = 4;

/// f32 operator latencies in cycles at 300 MHz on UltraScale+ (Vitis HLS floating-point cores
/// with DSPs; typical values, not from a synthesis report of this kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorLatency {
    /// fadd / fsub.
    pub fadd: u64,
    /// fmul.
    pub fmul: u64,
    /// fdiv.
    pub fdiv: u64,
    /// fsqrt.
    pub fsqrt: u64,
    /// expf.
    pub fexp: u64,
    /// log1pf.
    pub flog: u64,
    /// URAM read (with output registers).
    pub uram_read: u64,
    /// BRAM read.
    pub bram_read: u64,
}

impl OperatorLatency {
    /// The values the model uses.
    pub const TYPICAL_300MHZ: OperatorLatency = OperatorLatency {
        fadd: 5,
        fmul: 4,
        fdiv: 16,
        fsqrt: 16,
        fexp: 20,
        flog: 25,
        uram_read: 3,
        bram_read: 2,
    };

    /// Levels × adder latency of a pairwise tree over `n` inputs.
    fn tree(&self, n: u64) -> u64 {
        u64::from(n.max(1).next_power_of_two().trailing_zeros()) * self.fadd
    }
}

/// Pipeline depths of the loops, in cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineDepths {
    /// `conv_rows`: read, K products summed in a chain, SiLU.
    pub conv: u64,
    /// `norm_sums`: square, accumulate, tree over 16 × 8 partials, rsqrt, scale.
    pub norm: u64,
    /// `normalize`: scale, product, accumulate, tree.
    pub normalize: u64,
    /// `gate_heads`: softplus (exp, log1p), product, exp.
    pub gate: u64,
    /// `sweep_words`: from a word's read to its write-back.
    pub sweep: u64,
    /// From the last word of a column read to its delta (the LAG constraint).
    pub delta: u64,
    /// `write_out`: buffer read.
    pub output: u64,
}

impl PipelineDepths {
    /// Depths from operator latencies, following each loop body of gdn_kernel.cpp.
    pub fn from_operators(op: &OperatorLatency) -> Self {
        let delta = op.uram_read
            + op.fmul
            + op.fadd
            + op.tree(LANES as u64 * ACCUMULATORS)
            + op.fmul // × e^g
            + op.fadd // v − kv
            + op.fmul; // × β
        PipelineDepths {
            conv: op.bram_read + op.fmul + MAX_CONV_KERNEL * op.fadd + op.fexp + op.fadd + op.fdiv,
            norm: op.bram_read
                + op.fmul
                + op.fadd
                + op.tree(CHANNELS * ACCUMULATORS)
                + op.fadd
                + op.fsqrt
                + op.fdiv
                + op.fmul,
            normalize: op.bram_read + 2 * op.fmul + op.fadd + op.tree(CHANNELS * ACCUMULATORS),
            gate: op.fadd + op.fexp + op.flog + op.fmul + op.fexp,
            sweep: delta + op.fmul + op.fadd + 1,
            delta,
            output: op.bram_read,
        }
    }
}

/// Everything the device model needs besides the shape and the design point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelTiming {
    /// Kernel clock (MHz).
    pub clock_mhz: f64,
    /// Cycles from an m_axi read request to the first beat (HBM through the AXI crossbar).
    pub axi_read_latency: u64,
    /// Cycles from the last write beat to the write response.
    pub axi_write_latency: u64,
    /// Loop pipeline depths.
    pub depths: PipelineDepths,
    /// Cycles per invocation the loops do not explain (calibrated).
    pub invocation_overhead: u64,
}

impl KernelTiming {
    /// 300 MHz, typical operator and AXI latencies, no invocation overhead.
    pub fn structural() -> Self {
        KernelTiming {
            clock_mhz: 300.0,
            axi_read_latency: 64,
            axi_write_latency: 32,
            depths: PipelineDepths::from_operators(&OperatorLatency::TYPICAL_300MHZ),
            invocation_overhead: 0,
        }
    }

    /// [`Self::structural`] with the invocation overhead that makes [`PUBLISHED_DESIGN`] at
    /// [`PUBLISHED_SPEC`] take [`PUBLISHED_US`].
    pub fn calibrated() -> Self {
        let structural = Self::structural();
        let target = (PUBLISHED_US * structural.clock_mhz).round() as u64;
        let cycles = step_cycles(&PUBLISHED_SPEC, PUBLISHED_DESIGN, &structural).total();
        KernelTiming {
            invocation_overhead: target.saturating_sub(cycles),
            ..structural
        }
    }

    /// Cycles to µs at this clock.
    pub fn us(&self, cycles: u64) -> f64 {
        cycles as f64 / self.clock_mhz
    }
}

/// Cycles of one token of one layer, by phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCycles {
    /// Phase 1a: input read, conv, SiLU.
    pub conv: u64,
    /// Phase 1b: L2 factors.
    pub norm: u64,
    /// Phase 1c: normalisation and kᵀq.
    pub normalize: u64,
    /// Phase 1d: gating.
    pub gate: u64,
    /// Phases 2–4: the state sweep.
    pub sweep: u64,
    /// Phase 5: outputs.
    pub output: u64,
    /// Per-invocation overhead.
    pub overhead: u64,
}

impl StepCycles {
    /// All phases.
    pub fn total(&self) -> u64 {
        self.conv
            + self.norm
            + self.normalize
            + self.gate
            + self.sweep
            + self.output
            + self.overhead
    }

    /// Everything but the per-invocation overhead (what each further token of a prefill run
    /// costs).
    pub fn per_token(&self) -> u64 {
        self.total() - self.overhead
    }
}

/// The modelled cycles of one decode step of `spec` on design point `design`.
pub fn step_cycles(spec: &LayerSpec, design: DesignPoint, timing: &KernelTiming) -> StepCycles {
    let wide = |x: usize| x as u64;
    let (hk, hv, dk, dv) = (
        wide(spec.num_k_heads),
        wide(spec.num_v_heads),
        wide(spec.head_k_dim),
        wide(spec.head_v_dim),
    );
    let d = &timing.depths;
    let key_words = dk.div_ceil(CHANNELS);
    let state_words = dk.div_ceil(LANES as u64);
    let column_time = state_words.max((state_words + d.delta).div_ceil(LAG));
    let columns = hv.div_ceil(wide(design.heads_per_cycle())) * dv;
    StepCycles {
        conv: timing.axi_read_latency + wide(spec.conv_dim()).div_ceil(CHANNELS) + d.conv,
        norm: 2 * hk * key_words + d.norm,
        normalize: hk * key_words + d.normalize,
        gate: timing.axi_read_latency + hv + d.gate,
        sweep: (columns + LAG) * column_time + d.sweep,
        output: (hv * dv).div_ceil(CHANNELS) + d.output + timing.axi_write_latency,
        overhead: timing.invocation_overhead,
    }
}

/// The calibrated model's device µs per layer-token (one decode step).
pub fn device_us_per_step(spec: &LayerSpec, design: DesignPoint) -> f64 {
    let timing = KernelTiming::calibrated();
    timing.us(step_cycles(spec, design, &timing).total())
}

/// The calibrated model's device µs per token of a `tokens`-token prefill run (one invocation:
/// the overhead is paid once).
pub fn device_us_per_prefill_token(spec: &LayerSpec, design: DesignPoint, tokens: usize) -> f64 {
    let timing = KernelTiming::calibrated();
    let c = step_cycles(spec, design, &timing);
    let tokens = tokens.max(1) as u64;
    timing.us(c.per_token() * tokens + c.overhead) / tokens as f64
}

/// Peak bandwidth (GB/s, read + write counted) of the on-chip state banks of `design` at
/// `clock_mhz`: each of the P value heads' banks reads and writes [`LANES`] f32 per cycle. This is
/// the FPGA's memory roofline for the state sweep, the counterpart of a CPU's DRAM bandwidth.
pub fn state_bank_gb_s(design: DesignPoint, clock_mhz: f64) -> f64 {
    2.0 * (design.heads_per_cycle() * LANES * 4) as f64 * clock_mhz * 1e6 / 1e9
}

/// The host side of one STEP invocation (assumptions, see the fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostLink {
    /// Effective host↔card DMA bandwidth (GB/s). PCIe Gen3 x16 is 15.75 GB/s raw; 12 is a
    /// typical achieved figure for the XDMA platform.
    pub pcie_gb_s: f64,
    /// Fixed cost of one `xrtBOSync` (µs): DMA descriptor setup and completion. Assumed.
    pub sync_us: f64,
    /// Setting the arguments, `xrtRunStart` and the completion notification (µs). Assumed.
    pub launch_us: f64,
}

impl HostLink {
    /// The assumed values (to be replaced by measurements on a card).
    pub const ASSUMED: HostLink = HostLink {
        pcie_gb_s: 12.0,
        sync_us: 4.0,
        launch_us: 10.0,
    };

    /// Host-side µs of one STEP of `tokens` tokens: launch, three syncs (in, status, out), and
    /// the bytes (inputs, outputs, 128 status bytes) over PCIe.
    pub fn us_per_run(&self, spec: &LayerSpec, tokens: usize) -> f64 {
        let floats_in = tokens * (spec.conv_dim() + 2 * spec.num_v_heads);
        let floats_out = tokens * spec.value_dim();
        let bytes = (4 * (floats_in + floats_out) + 128) as f64;
        self.launch_us + 3.0 * self.sync_us + bytes / (self.pcie_gb_s * 1e3)
    }
}

/// Host-side µs per layer-token of a decode step under [`HostLink::ASSUMED`].
pub fn host_us_per_step(spec: &LayerSpec) -> f64 {
    HostLink::ASSUMED.us_per_run(spec, 1)
}

/// A markdown table of the calibrated model for every design point at each of `shapes`.
pub fn markdown_table(shapes: &[(&str, LayerSpec)]) -> String {
    let timing = KernelTiming::calibrated();
    let mut table = String::from(
        "| shape (Hk/Hv/dk/dv) | P | sweep cycles | other cycles | device µs/layer-token | \
         host µs/layer-token (assumed link) | device µs/token, 64-token prefill |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, spec) in shapes {
        for design in DesignPoint::ALL {
            let c = step_cycles(spec, design, &timing);
            table.push_str(&format!(
                "| {name} ({}/{}/{}/{}) | {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
                spec.num_k_heads,
                spec.num_v_heads,
                spec.head_k_dim,
                spec.head_v_dim,
                design.heads_per_cycle(),
                c.sweep,
                c.total() - c.sweep,
                timing.us(c.total()),
                host_us_per_step(spec),
                device_us_per_prefill_token(spec, design, 64),
            ));
        }
    }
    table
}

/// The shapes the crate README tabulates.
pub fn readme_shapes() -> Vec<(&'static str, LayerSpec)> {
    let shape = |hk, hv, dk, dv| LayerSpec {
        num_k_heads: hk,
        num_v_heads: hv,
        head_k_dim: dk,
        head_v_dim: dv,
        conv_kernel: 4,
    };
    vec![
        ("Qwen3-Next-80B-A3B, Qwen3.5-4B", LayerSpec::QWEN3_NEXT),
        ("Qwen3.5-0.8B", shape(16, 16, 128, 128)),
        ("dk = dv = 64", shape(16, 32, 64, 64)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_reproduces_the_published_figure() {
        let us = device_us_per_step(&PUBLISHED_SPEC, PUBLISHED_DESIGN);
        assert!((us - PUBLISHED_US).abs() < 0.01, "{us} µs");
    }

    #[test]
    fn calibration_is_a_small_correction_to_the_loop_structure() {
        let structural = KernelTiming::structural();
        let cycles = step_cycles(&PUBLISHED_SPEC, PUBLISHED_DESIGN, &structural).total();
        let us = structural.us(cycles);
        // The loops alone must explain the figure to within 5 %; a model that needed a large
        // fudge term would say nothing about the other design points.
        assert!(us < PUBLISHED_US && us > 0.95 * PUBLISHED_US, "{us} µs");
        let overhead = KernelTiming::calibrated().invocation_overhead;
        assert!(overhead > 0 && overhead < 1000, "{overhead} cycles");
        // The figures the module docs and the README quote.
        assert_eq!((cycles, overhead), (18_191, 709));
    }

    #[test]
    fn the_sweep_dominates_and_scales_with_one_over_p() {
        let timing = KernelTiming::calibrated();
        let spec = LayerSpec::QWEN3_NEXT;
        let sweeps: Vec<u64> = DesignPoint::ALL
            .iter()
            .map(|&d| step_cycles(&spec, d, &timing).sweep)
            .collect();
        // Hv = 32 columns groups: 16, 8, 4, 2 groups of 128 columns of 64 words.
        assert_eq!(sweeps[0] - timing.depths.sweep, (16 * 128 + 2) * 64);
        assert_eq!(sweeps[3] - timing.depths.sweep, (2 * 128 + 2) * 64);
        for pair in sweeps.windows(2) {
            assert!(pair[0] > pair[1]);
        }
        let fastest = step_cycles(&spec, DesignPoint::P16, &timing);
        assert!(fastest.sweep * 10 > fastest.total() * 8, "{fastest:?}");
    }

    #[test]
    fn short_columns_wait_for_the_delta_pipeline() {
        let timing = KernelTiming::structural();
        let small = LayerSpec {
            head_k_dim: 32,
            ..LayerSpec::QWEN3_NEXT
        };
        let c = step_cycles(&small, DesignPoint::P16, &timing);
        let words = 16;
        let column_time = (words + timing.depths.delta).div_ceil(2);
        assert!(column_time > words);
        assert_eq!(c.sweep, (2 * 128 + 2) * column_time + timing.depths.sweep);
    }

    #[test]
    fn the_modelled_step_stays_under_the_state_bank_roofline() {
        let spec = LayerSpec::QWEN3_NEXT;
        let clock = KernelTiming::calibrated().clock_mhz;
        // P = 16 at 300 MHz: 16 banks × 2 floats × 4 bytes, read and written, per cycle.
        assert!((state_bank_gb_s(DesignPoint::P16, clock) - 76.8).abs() < 1e-9);
        for design in DesignPoint::ALL {
            let bytes = 2.0 * spec.recurrent_state_bytes() as f64;
            let achieved = bytes / (device_us_per_step(&spec, design) * 1e3);
            let fraction = achieved / state_bank_gb_s(design, clock);
            // The sweep is most of a step, so the model sits just under its bank roofline.
            assert!(fraction > 0.8 && fraction < 1.0, "{design}: {fraction}");
        }
    }

    #[test]
    fn prefill_amortises_the_invocation_overhead() {
        let spec = LayerSpec::QWEN3_NEXT;
        let step = device_us_per_step(&spec, DesignPoint::P16);
        let prefill = device_us_per_prefill_token(&spec, DesignPoint::P16, 64);
        assert!(
            prefill < step && prefill > 0.95 * step,
            "{prefill} vs {step}"
        );
    }

    #[test]
    fn host_cost_counts_bytes_and_fixed_costs() {
        let link = HostLink::ASSUMED;
        let spec = LayerSpec::QWEN3_NEXT;
        // 8192 + 64 floats in, 4096 out, 128 status bytes.
        let bytes = (4 * (8192 + 64 + 4096) + 128) as f64;
        let expected = 10.0 + 12.0 + bytes / 12e3;
        assert!((link.us_per_run(&spec, 1) - expected).abs() < 1e-9);
    }
}
