//! Fault tolerance end to end: a greedy generation on the FPGA backend (`xrt-sim`) whose card
//! fails in the middle of a decode token — after some GDN layers of that token ran, before the
//! others — moves its live state (exported in the canonical layout) to the `cpu` backend and
//! carries on with exactly the tokens of an uninterrupted run.

#![cfg(feature = "xrt")]

use std::path::PathBuf;

use hybrid_decode::gdn::{BackendOptions, GdnBackend};
use hybrid_decode::gdn_xrt::kernel::abi::Op;
use hybrid_decode::gdn_xrt::kernel::csim::FaultPlan;
use hybrid_decode::gdn_xrt::{FailoverBackend, RunState, SimConfig, XrtKernel};
use hybrid_decode::model::{HybridModel, LayerKind, LoadOptions};
use hybrid_decode::runtime::{Sampler, SamplingParams};

const FIXTURE: &str = "qwen3-next-tiny";
const PROMPT: &[u32] = &[3, 141, 59, 265, 358, 979, 323, 846, 264, 338];
const NEW_TOKENS: usize = 12;

fn load(gdn: Box<dyn GdnBackend>) -> HybridModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(FIXTURE);
    HybridModel::load(&dir, &LoadOptions::default(), gdn).expect("load fixture")
}

fn registry_backend(name: &str) -> Box<dyn GdnBackend> {
    hybrid_decode::gdn_registry()
        .create(name, &BackendOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn greedy(model: &mut HybridModel) -> Vec<u32> {
    let mut sampler = Sampler::new(SamplingParams::greedy()).expect("greedy sampler");
    let mut logits = model.forward(PROMPT).expect("prefill");
    let mut ids = Vec::new();
    for _ in 0..NEW_TOKENS {
        let logits_row = logits.to_vec1::<f32>().expect("logits");
        let next = sampler.sample(&logits_row, &[]).expect("greedy choice");
        ids.push(next);
        logits = model.forward(&[next]).expect("decode");
    }
    ids
}

#[test]
fn a_card_failure_mid_generation_moves_the_state_to_cpu_without_changing_a_token() {
    let uninterrupted_cpu = greedy(&mut load(registry_backend("cpu")));
    let uninterrupted_fpga = greedy(&mut load(registry_backend("xrt-sim")));
    assert_eq!(uninterrupted_fpga, uninterrupted_cpu);

    // One STEP run per GDN layer for the prompt (prefill of 10 tokens is one run), then one per
    // GDN layer per decode token: fail the second GDN layer of the sixth decode token.
    let probe = load(registry_backend("cpu"));
    let gdn_layers = probe
        .config()
        .layer_types
        .iter()
        .filter(|k| matches!(k, LayerKind::LinearAttention))
        .count() as u64;
    assert!(
        gdn_layers >= 2,
        "the fixture needs two GDN layers to fail between them"
    );
    let failing_run = gdn_layers + 5 * gdn_layers + 1;
    let fault = FaultPlan {
        op: Op::Step,
        nth: failing_run,
        state: RunState::Abort,
    };
    let card = XrtKernel::simulated_with(SimConfig {
        fault: Some(fault),
        ..SimConfig::default()
    })
    .expect("xrt-sim");
    let failover = FailoverBackend::new(
        Box::new(card),
        Box::new(|| hybrid_decode::gdn_registry().create("cpu", &BackendOptions::default())),
    );
    let mut model = load(Box::new(failover));
    assert_eq!(model.gdn_backend().info().name, "xrt-sim");
    let recovered = greedy(&mut model);

    let info = model.gdn_backend().info();
    assert_eq!(info.name, "cpu", "the failure must have moved the sequence");
    assert!(
        info.device.contains("failed over from `xrt-sim`"),
        "{}",
        info.device
    );
    // Everything ran: the cpu backend did the rest of the failed token and the later ones.
    let counters = model.gdn_backend().counters();
    assert_eq!(
        counters.steps,
        gdn_layers * NEW_TOKENS as u64,
        "every decode step of every GDN layer succeeded exactly once"
    );
    assert_eq!(recovered, uninterrupted_cpu);
}
