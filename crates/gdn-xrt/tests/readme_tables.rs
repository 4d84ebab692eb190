//! The crate README's resource and latency tables are generated from the kernel itself (INFO of
//! the compiled C-simulation, the host's footprint formulas) and from the latency model; this
//! test fails when the README no longer says what the code does, and prints the tables to paste.

use hybrid_gdn::LayerSpec;
use hybrid_gdn_xrt::kernel::abi::KernelInfo;
use hybrid_gdn_xrt::kernel::csim::SimDevice;
use hybrid_gdn_xrt::kernel::query_info;
use hybrid_gdn_xrt::latency;
use hybrid_gdn_xrt::state::Footprint;
use hybrid_gdn_xrt::DesignPoint;

const MIB: f64 = 1024.0 * 1024.0;

/// The Qwen3.5-0.8B GDN layer (DESIGN §7).
const QWEN3_5_0_8B: LayerSpec = LayerSpec {
    num_k_heads: 16,
    num_v_heads: 16,
    head_k_dim: 128,
    head_v_dim: 128,
    conv_kernel: 4,
};

/// Layers of `spec` with one slot each that fit on an empty card.
fn layers_per_card(spec: &LayerSpec, info: &KernelInfo) -> u64 {
    let f = Footprint::of(spec, info);
    let by = |total: u32, need: u64| u64::from(total) / need.max(1);
    by(info.weight_words, f.weight_words)
        .min(by(info.state_rows, f.state_rows_per_slot))
        .min(by(info.conv_words, f.conv_words_per_slot))
}

fn resource_table() -> String {
    let mut t = String::from(
        "| P | state banks × URAMs per bank | on-chip state | conv weights + histories (BRAM) | \
         Qwen3-Next layer (state) | Qwen3-Next layers per card | cards for 36 | \
         Qwen3.5-0.8B layer (state) | Qwen3.5-0.8B layers per card | cards for 18 | \
         sweep DSPs (estimate) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for design in DesignPoint::ALL {
        let mut card = SimDevice::new(design).expect("simulated card");
        let info = query_info(&mut card).expect("info");
        let p = u64::from(info.p);
        let urams_per_bank = u64::from(info.state_rows) / 4096;
        let bram_mib = f64::from(info.weight_words + info.conv_words) * 4.0 / MIB;
        let next = layers_per_card(&LayerSpec::QWEN3_NEXT, &info);
        let small = layers_per_card(&QWEN3_5_0_8B, &info);
        // Per state element per cycle: retrieve 2 fmul + 2 fadd, update 2 fmul + 1 fadd; per head
        // lane: two 16-input adder trees (15 fadd each), 4 fmul and 2 fadd for δ and o. Vitis
        // floating-point cores on UltraScale+: 3 DSPs per fmul, 2 per fadd.
        let dsps = 2 * p * (4 * 3 + 3 * 2) + p * (30 * 2 + 4 * 3 + 2 * 2);
        t.push_str(&format!(
            "| {p} | {p} × {urams_per_bank} = {} URAM | {:.0} MiB | {bram_mib:.1} MiB | {:.0} MiB | {next} | {} | {:.0} MiB | {small} | {} | {dsps} |\n",
            p * urams_per_bank,
            info.state_bytes() as f64 / MIB,
            Footprint::of(&LayerSpec::QWEN3_NEXT, &info).state_bytes_per_slot(&info) as f64 / MIB,
            36u64.div_ceil(next),
            Footprint::of(&QWEN3_5_0_8B, &info).state_bytes_per_slot(&info) as f64 / MIB,
            18u64.div_ceil(small),
        ));
    }
    t
}

fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn readme_resource_table_is_current() {
    let table = resource_table();
    assert!(
        readme().contains(&table),
        "crates/gdn-xrt/README.md must contain the resource table:\n\n{table}"
    );
}

#[test]
fn readme_latency_table_is_current() {
    let table = latency::markdown_table(&latency::readme_shapes());
    assert!(
        readme().contains(&table),
        "crates/gdn-xrt/README.md must contain the latency table:\n\n{table}"
    );
}
