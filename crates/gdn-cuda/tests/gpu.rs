//! What the shared conformance suite cannot reach: `step_layers` (with and without CUDA
//! graphs), the device-side timing path, prefill across the backend's own chunk boundary, and
//! graph invalidation when a slot is freed. All against the `reference` oracle.
//!
//! Needs a GPU. Without one each test says why and passes, unless `HYBRID_GDN_REQUIRE_GPU=1`
//! (set by gpu_check/run.sh) makes it fail.

use hybrid_gdn::conformance::{assert_close, random_constants, random_inputs, TOLERANCE};
use hybrid_gdn::{
    BackendOptions, GdnBackend, LayerSpec, ReferenceBackend, SlotId, SlotState, TokenInputs,
};
use hybrid_gdn_cuda::backend::PREFILL_CHUNK;
use hybrid_gdn_cuda::{CudaBackend, CudaExt, CudaKernel, Issue, LayerStep};

fn gpu() -> Option<CudaBackend> {
    match CudaKernel::backend(&BackendOptions::default()) {
        Ok(backend) => Some(backend),
        Err(err) => {
            if std::env::var("HYBRID_GDN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("HYBRID_GDN_REQUIRE_GPU=1 but {err}");
            }
            eprintln!("skipped (no GPU): {err}");
            None
        }
    }
}

/// Layers 0 and 2 share the Qwen3-Next shape, layer 5 is small and non-square: one
/// `step_layers` call mixes kernel specialisations.
const LAYERS: [(usize, fn() -> LayerSpec); 3] = [
    (0, || LayerSpec::QWEN3_NEXT),
    (2, || LayerSpec::QWEN3_NEXT),
    (5, || LayerSpec::new(2, 6, 48, 80, 4)),
];

/// The backend and the oracle with the same layers and one slot each.
fn pair(backend: &mut CudaBackend) -> (ReferenceBackend, SlotId, SlotId) {
    let mut oracle = ReferenceBackend::default();
    for (layer, shape) in LAYERS {
        let c = random_constants(&shape(), layer as u64 + 7);
        backend.load_layer(layer, shape(), &c).expect("load");
        oracle.load_layer(layer, shape(), &c).expect("oracle load");
    }
    let slot = backend.alloc_slot().expect("slot");
    let oracle_slot = oracle.alloc_slot().expect("oracle slot");
    (oracle, slot, oracle_slot)
}

fn compare_states(
    what: &str,
    backend: &mut CudaBackend,
    oracle: &mut ReferenceBackend,
    slots: (SlotId, SlotId),
) {
    for (layer, _) in LAYERS {
        let got: SlotState = backend.export_state(layer, slots.0).expect("export");
        let want = oracle.export_state(layer, slots.1).expect("oracle export");
        assert_close(
            &format!("{what}: layer {layer} conv"),
            &got.conv,
            &want.conv,
            TOLERANCE,
        );
        assert_close(
            &format!("{what}: layer {layer} recurrent"),
            &got.recurrent,
            &want.recurrent,
            TOLERANCE,
        );
    }
}

/// Runs `tokens` tokens through every layer with `step_layers`, checking outputs each token.
fn run_step_layers(
    backend: &mut CudaBackend,
    oracle: &mut ReferenceBackend,
    slots: (SlotId, SlotId),
    tokens: usize,
    seed: u64,
) {
    for t in 0..tokens {
        let data: Vec<_> = LAYERS
            .iter()
            .map(|(layer, shape)| random_inputs(&shape(), 1, seed + 31 * t as u64 + *layer as u64))
            .collect();
        let mut outs: Vec<Vec<f32>> = LAYERS
            .iter()
            .map(|(_, s)| vec![0.0; s().value_dim()])
            .collect();
        let mut steps: Vec<LayerStep<'_>> = LAYERS
            .iter()
            .zip(&data)
            .zip(outs.iter_mut())
            .map(|(((layer, _), (x, a, b)), out)| LayerStep {
                layer: *layer,
                inputs: TokenInputs { mixed_qkv: x, a, b },
                out,
            })
            .collect();
        backend
            .step_layers(slots.0, &mut steps)
            .expect("step_layers");
        for (((layer, shape), (x, a, b)), got) in LAYERS.iter().zip(&data).zip(&outs) {
            let mut want = vec![0.0; shape().value_dim()];
            oracle
                .step(
                    *layer,
                    slots.1,
                    TokenInputs { mixed_qkv: x, a, b },
                    &mut want,
                )
                .expect("oracle step");
            assert_close(&format!("token {t} layer {layer}"), got, &want, TOLERANCE);
        }
    }
}

#[test]
fn step_layers_matches_reference_with_and_without_graphs() {
    let Some(mut backend) = gpu() else { return };
    let (mut oracle, slot, oracle_slot) = pair(&mut backend);
    let slots = (slot, oracle_slot);
    backend.set_graphs(false);
    run_step_layers(&mut backend, &mut oracle, slots, 3, 100);
    compare_states("launches", &mut backend, &mut oracle, slots);
    backend.set_graphs(true);
    // Several replays of one graph: the conv ring position must advance on the device.
    run_step_layers(&mut backend, &mut oracle, slots, 6, 200);
    compare_states("graph replays", &mut backend, &mut oracle, slots);
    // Plain steps in between and after keep using the same state.
    let (x, a, b) = random_inputs(&LayerSpec::QWEN3_NEXT, 1, 300);
    let mut got = vec![0.0; LayerSpec::QWEN3_NEXT.value_dim()];
    let mut want = got.clone();
    let inputs = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    backend.step(2, slot, inputs, &mut got).expect("step");
    oracle
        .step(2, oracle_slot, inputs, &mut want)
        .expect("oracle step");
    assert_close("step after graphs", &got, &want, TOLERANCE);
    run_step_layers(&mut backend, &mut oracle, slots, 2, 400);
    compare_states("after mixing", &mut backend, &mut oracle, slots);
}

#[test]
fn device_timing_path_advances_state_like_steps() {
    let Some(mut backend) = gpu() else { return };
    let (mut oracle, slot, oracle_slot) = pair(&mut backend);
    let shape = LayerSpec::QWEN3_NEXT;
    let (x, a, b) = random_inputs(&shape, 1, 500);
    let inputs = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let layers = [0, 2];
    for (issue, iters) in [(Issue::Launches, 3), (Issue::Graph, 4)] {
        let us = backend
            .time_device_decode(slot, &layers, inputs, iters, issue)
            .expect("timing");
        assert!(us.is_finite() && us > 0.0, "{issue:?}: {us} µs");
        // The timing path runs one untimed warm-up repetition plus `iters`.
        let mut out = vec![0.0; shape.value_dim()];
        for _ in 0..=iters {
            for layer in layers {
                oracle
                    .step(layer, oracle_slot, inputs, &mut out)
                    .expect("oracle");
            }
        }
        for layer in layers {
            let got = backend.export_state(layer, slot).expect("export");
            let want = oracle
                .export_state(layer, oracle_slot)
                .expect("oracle export");
            assert_close(
                &format!("{issue:?} layer {layer}"),
                &got.recurrent,
                &want.recurrent,
                TOLERANCE,
            );
            assert_close(
                &format!("{issue:?} layer {layer} conv"),
                &got.conv,
                &want.conv,
                TOLERANCE,
            );
        }
    }
}

#[test]
fn prefill_across_the_backend_chunk_boundary() {
    let Some(mut backend) = gpu() else { return };
    let shape = LayerSpec::new(2, 4, 64, 128, 4);
    let c = random_constants(&shape, 9);
    backend.load_layer(0, shape, &c).expect("load");
    let mut oracle = ReferenceBackend::default();
    oracle.load_layer(0, shape, &c).expect("oracle load");
    let slot = backend.alloc_slot().expect("slot");
    let oracle_slot = oracle.alloc_slot().expect("oracle slot");
    for (round, tokens) in [PREFILL_CHUNK + 44, 2 * PREFILL_CHUNK + 1, 3]
        .into_iter()
        .enumerate()
    {
        let (x, a, b) = random_inputs(&shape, tokens, 600 + round as u64);
        let inputs = TokenInputs {
            mixed_qkv: &x,
            a: &a,
            b: &b,
        };
        let mut got = vec![0.0; tokens * shape.value_dim()];
        backend.prefill(0, slot, inputs, &mut got).expect("prefill");
        let mut want = vec![0.0; shape.value_dim()];
        let hv = shape.num_v_heads;
        let conv_dim = shape.conv_dim();
        for t in 0..tokens {
            let one = TokenInputs {
                mixed_qkv: &x[t * conv_dim..(t + 1) * conv_dim],
                a: &a[t * hv..(t + 1) * hv],
                b: &b[t * hv..(t + 1) * hv],
            };
            oracle.step(0, oracle_slot, one, &mut want).expect("oracle");
            let v = shape.value_dim();
            assert_close(
                &format!("prefill of {tokens}, token {t}"),
                &got[t * v..(t + 1) * v],
                &want,
                TOLERANCE,
            );
        }
        let got = backend.export_state(0, slot).expect("export");
        let want = oracle.export_state(0, oracle_slot).expect("oracle export");
        assert_close(
            "state after prefill",
            &got.recurrent,
            &want.recurrent,
            TOLERANCE,
        );
        assert_close("conv after prefill", &got.conv, &want.conv, TOLERANCE);
    }
}

#[test]
fn graphs_of_a_freed_slot_are_not_replayed() {
    let Some(mut backend) = gpu() else { return };
    let (mut oracle, slot, oracle_slot) = pair(&mut backend);
    run_step_layers(&mut backend, &mut oracle, (slot, oracle_slot), 2, 700);
    backend.free_slot(slot).expect("free");
    let fresh = backend.alloc_slot().expect("slot");
    let fresh_oracle = oracle.alloc_slot().expect("oracle slot");
    run_step_layers(&mut backend, &mut oracle, (fresh, fresh_oracle), 3, 800);
    compare_states(
        "fresh slot",
        &mut backend,
        &mut oracle,
        (fresh, fresh_oracle),
    );
}

#[test]
fn counters_see_transfers_and_device_time() {
    let Some(mut backend) = gpu() else { return };
    let (_oracle, slot, _) = pair(&mut backend);
    let shape = LayerSpec::QWEN3_NEXT;
    let (x, a, b) = random_inputs(&shape, 1, 900);
    let before = backend.counters();
    let mut out = vec![0.0; shape.value_dim()];
    backend
        .step(
            0,
            slot,
            TokenInputs {
                mixed_qkv: &x,
                a: &a,
                b: &b,
            },
            &mut out,
        )
        .expect("step");
    let after = backend.counters();
    assert_eq!(
        after.bytes_to_device - before.bytes_to_device,
        4 * (shape.conv_dim() + 64) as u64
    );
    assert_eq!(
        after.bytes_from_device - before.bytes_from_device,
        4 * shape.value_dim() as u64
    );
    assert!(after.device_time_ns > before.device_time_ns, "{after:?}");
}
