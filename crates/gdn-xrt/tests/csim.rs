//! The kernel's C-simulation beyond the shared suite: its interface (every status code the host
//! maps, the INFO words), capacity and the host's placement across cards, agreement between the
//! design points, the HLS top function keeping state across invocations, and injected failures.

use hybrid_gdn::conformance::{assert_close, random_constants, random_inputs, TOLERANCE};
use hybrid_gdn::{GdnBackend, GdnError, LayerSpec, ReferenceBackend, SlotId, TokenInputs};
use hybrid_gdn_xrt::kernel::abi::{KernelArgs, KernelFault, Op, STATUS_WORDS};
use hybrid_gdn_xrt::kernel::csim::{invoke_top_function, FaultPlan, SimDevice};
use hybrid_gdn_xrt::kernel::{check_status, query_info, KernelDevice};
use hybrid_gdn_xrt::state::Footprint;
use hybrid_gdn_xrt::{DesignPoint, RunState, SimConfig, XrtError, XrtKernel};

fn load_args(layer: u32, s: &LayerSpec) -> KernelArgs {
    KernelArgs {
        hk: s.num_k_heads as u32,
        hv: s.num_v_heads as u32,
        dk: s.head_k_dim as u32,
        dv: s.head_v_dim as u32,
        conv_kernel: s.conv_kernel as u32,
        q_scale: hybrid_gdn::math::query_scale(s.head_k_dim),
        ..KernelArgs::new(Op::Load, layer, 0)
    }
}

/// LOAD of `s` as `layer` with random constants; returns the kernel's verdict.
fn load(device: &mut SimDevice, layer: u32, s: &LayerSpec) -> Result<(), XrtError> {
    let c = random_constants(s, u64::from(layer));
    let words = device.invoke(
        &load_args(layer, s),
        &[&c.conv_weight, &c.a_log, &c.dt_bias],
        &mut [],
    )?;
    check_status(Op::Load, &words)
}

fn run(
    device: &mut SimDevice,
    args: KernelArgs,
    input: &[&[f32]],
    output: &mut [f32],
) -> Result<(), XrtError> {
    let words = device.invoke(&args, input, output)?;
    check_status(args.op, &words)
}

fn fault_of(result: Result<(), XrtError>) -> (KernelFault, u32, u32) {
    match result {
        Err(XrtError::Kernel {
            fault,
            detail,
            limit,
            ..
        }) => (fault, detail, limit),
        other => panic!("expected a kernel fault, got {other:?}"),
    }
}

#[test]
fn info_reports_the_compile_time_design() {
    for design in DesignPoint::ALL {
        let mut device = SimDevice::new(design).expect("card");
        let info = query_info(&mut device).expect("info");
        let p = design.heads_per_cycle() as u32;
        assert_eq!((info.p, info.u, info.ch), (p, 2, 16));
        assert_eq!(
            (info.max_layers, info.max_slots),
            (64, 16),
            "GDN_MAX_LAYERS / GDN_MAX_SLOTS"
        );
        assert_eq!(
            (
                info.max_hk,
                info.max_hv,
                info.max_dk,
                info.max_dv,
                info.max_conv_kernel
            ),
            (32, 64, 128, 128, 4),
            "the limits csim::invoke_top_function assumes"
        );
        assert_eq!(info.state_rows, 768 / p * 4096);
        assert_eq!(info.state_bytes(), 24 << 20, "768 URAMs of 32 KiB of f32");
        assert_eq!(
            (info.weight_words, info.conv_words),
            (512 * 1024, 384 * 1024)
        );
        assert_eq!(
            (
                info.state_rows_used,
                info.weight_words_used,
                info.conv_words_used
            ),
            (0, 0, 0)
        );
    }
}

#[test]
fn every_status_code_the_host_maps_comes_from_the_kernel() {
    let mut device = SimDevice::new(DesignPoint::P4).expect("card");
    let small = LayerSpec::new(2, 4, 32, 32, 4);
    let x = vec![0.1f32; small.conv_dim()];
    let ab = vec![0.0f32; 4];
    let mut out = vec![0.0f32; small.value_dim()];
    let step = |layer, slot, tokens| KernelArgs {
        tokens,
        ..KernelArgs::new(Op::Step, layer, slot)
    };

    assert_eq!(
        fault_of(load(&mut device, 64, &small)),
        (KernelFault::LayerRange, 64, 64)
    );
    let too_wide = LayerSpec::new(2, 4, 129, 32, 4);
    assert_eq!(
        fault_of(load(&mut device, 0, &too_wide)),
        (KernelFault::Dims, 3, 128)
    );
    let mut bad_gva = load_args(0, &small);
    bad_gva.hv = 5;
    assert_eq!(
        fault_of(run(&mut device, bad_gva, &[], &mut [])),
        (KernelFault::Dims, 6, 2)
    );
    assert_eq!(
        fault_of(run(&mut device, step(0, 0, 1), &[&x, &ab, &ab], &mut out)),
        (KernelFault::LayerNotLoaded, 0, 0)
    );
    load(&mut device, 0, &small).expect("load");
    assert_eq!(
        fault_of(load(&mut device, 0, &small)),
        (KernelFault::LayerLoaded, 0, 0)
    );
    assert_eq!(
        fault_of(run(&mut device, step(0, 0, 1), &[&x, &ab, &ab], &mut out)),
        (KernelFault::SlotNotBound, 0, 0)
    );
    assert_eq!(
        fault_of(run(
            &mut device,
            KernelArgs::new(Op::Reset, 0, 16),
            &[],
            &mut []
        )),
        (KernelFault::SlotRange, 16, 16)
    );
    run(&mut device, KernelArgs::new(Op::Reset, 0, 0), &[], &mut []).expect("reset");
    assert_eq!(
        fault_of(run(&mut device, step(0, 0, 0), &[], &mut [])),
        (KernelFault::Tokens, 0, 1)
    );
    run(&mut device, step(0, 0, 1), &[&x, &ab, &ab], &mut out).expect("a step after all that");
    assert!(out.iter().all(|v| v.is_finite()));
}

#[test]
fn capacity_faults_and_the_hosts_footprint_agree_with_the_kernel() {
    let mut device = SimDevice::new(DesignPoint::P16).expect("card");
    let info = query_info(&mut device).expect("info");
    // Uneven shapes exercise the padding: Hv = 6 in groups of 16, dk = 33 in words of 2, a conv
    // width that is not a multiple of 16.
    let shapes = [
        LayerSpec::new(3, 6, 33, 7, 4),
        LayerSpec::new(2, 4, 32, 32, 4),
        LayerSpec::QWEN3_NEXT,
    ];
    let mut layer = 0u32;
    for s in shapes {
        let before = query_info(&mut device).expect("info");
        load(&mut device, layer, &s).expect("load");
        for slot in 0..2 {
            run(
                &mut device,
                KernelArgs::new(Op::Reset, layer, slot),
                &[],
                &mut [],
            )
            .expect("bind");
        }
        let after = query_info(&mut device).expect("info");
        let f = Footprint::of(&s, &info);
        assert_eq!(
            u64::from(after.weight_words_used - before.weight_words_used),
            f.weight_words,
            "{s:?}"
        );
        assert_eq!(
            u64::from(after.state_rows_used - before.state_rows_used),
            2 * f.state_rows_per_slot,
            "{s:?}"
        );
        assert_eq!(
            u64::from(after.conv_words_used - before.conv_words_used),
            2 * f.conv_words_per_slot,
            "{s:?}"
        );
        layer += 1;
    }
    // Qwen3-Next layers until the state memory is full: the host predicts the exact layer.
    let big = LayerSpec::QWEN3_NEXT;
    let f = Footprint::of(&big, &info);
    loop {
        let now = query_info(&mut device).expect("info");
        let predicted_fit = f.fits(&now, 1);
        let loaded = load(&mut device, layer, &big);
        let bound = loaded.clone().and_then(|()| {
            run(
                &mut device,
                KernelArgs::new(Op::Reset, layer, 0),
                &[],
                &mut [],
            )
        });
        assert_eq!(bound.is_ok(), predicted_fit, "layer {layer}: {bound:?}");
        if let Err(e) = bound {
            let (fault, needed, free) = fault_of(Err(e));
            assert!(fault.is_capacity(), "{fault:?}");
            assert!(needed > free);
            break;
        }
        layer += 1;
    }
}

#[test]
fn a_layer_bigger_than_one_card_or_too_many_cards_is_a_clear_error() {
    let mut backend = XrtKernel::simulated_with(SimConfig {
        max_cards: 1,
        ..SimConfig::default()
    })
    .expect("xrt-sim");
    let big = LayerSpec::QWEN3_NEXT;
    let mut loaded = 0;
    let err = loop {
        match backend.load_layer(loaded, big, &random_constants(&big, 5)) {
            Ok(()) => loaded += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(
        loaded, 12,
        "24 MiB of state holds 12 layers of 2 MiB (one slot each)"
    );
    let message = err.to_string();
    assert!(
        matches!(err, GdnError::Device { .. })
            && message.contains("does not fit")
            && message.contains("limit is 1"),
        "{message}"
    );
    let too_wide = LayerSpec::new(2, 4, 256, 32, 4);
    let err = backend
        .load_layer(40, too_wide, &random_constants(&too_wide, 6))
        .expect_err("dk 256");
    assert!(err.to_string().contains("GDN_MAX_DK"), "{err}");
    let err = backend
        .load_layer(
            64,
            LayerSpec::new(2, 4, 32, 32, 4),
            &random_constants(&LayerSpec::new(2, 4, 32, 32, 4), 7),
        )
        .expect_err("layer 64");
    assert!(err.to_string().contains("GDN_MAX_LAYERS"), "{err}");
}

/// 14 Qwen3-Next layers: the first 12 fill card 0, the rest go on card 1, and every layer computes
/// what the reference computes.
#[test]
fn layers_spread_over_cards_when_one_is_full() {
    let big = LayerSpec::QWEN3_NEXT;
    let mut backend = XrtKernel::simulated_with(SimConfig::default()).expect("xrt-sim");
    let mut oracle = ReferenceBackend::default();
    let layers = 14;
    for layer in 0..layers {
        let c = random_constants(&big, 100 + layer as u64);
        backend.load_layer(layer, big, &c).expect("load");
        oracle.load_layer(layer, big, &c).expect("oracle");
    }
    let cards: Vec<usize> = (0..layers)
        .map(|l| backend.layer_constants(l).map(|p| p.card).expect("placed"))
        .collect();
    assert_eq!(&cards[..12], &[0; 12]);
    assert_eq!(&cards[12..], &[1, 1]);
    assert_eq!(backend.kernel().card_info().len(), 2);
    assert!(
        backend.info().device.contains("2 card(s)"),
        "{}",
        backend.info().device
    );
    let slot = backend.alloc_slot().expect("slot");
    let oracle_slot = oracle.alloc_slot().expect("slot");
    for layer in [0, 11, 12, 13] {
        let (x, a, b) = random_inputs(&big, 2, 200 + layer as u64);
        let mut got = vec![0.0; 2 * big.value_dim()];
        let mut want = got.clone();
        let inputs = TokenInputs {
            mixed_qkv: &x,
            a: &a,
            b: &b,
        };
        backend
            .prefill(layer, slot, inputs, &mut got)
            .expect("prefill");
        oracle
            .prefill(layer, oracle_slot, inputs, &mut want)
            .expect("oracle");
        assert_close(&format!("layer {layer}"), &got, &want, TOLERANCE);
    }
    // A second slot needs another 2 MiB per layer: card 0 is full, so binding it fails cleanly
    // and the first slot is untouched.
    let before = backend.export_state(0, slot).expect("export");
    let err = backend
        .alloc_slot()
        .expect_err("no room for a second slot on card 0");
    assert!(
        err.to_string().contains("recurrent-state memory is full"),
        "{err}"
    );
    assert_eq!(backend.export_state(0, slot).expect("export"), before);
}

/// The arithmetic of a head does not depend on which lane or bank it runs in, so every design
/// point gives the same bits.
#[test]
fn all_design_points_compute_the_same_bits() {
    let shapes = [
        LayerSpec::new(3, 6, 33, 7, 4),
        LayerSpec::new(2, 4, 64, 32, 4),
        LayerSpec::new(1, 3, 16, 48, 4),
    ];
    for s in shapes {
        let mut results = Vec::new();
        for design in DesignPoint::ALL {
            let mut backend = XrtKernel::simulated_with(SimConfig {
                design,
                ..SimConfig::default()
            })
            .expect("xrt-sim");
            assert_eq!(backend.kernel().design_point(), Some(design));
            backend
                .load_layer(2, s, &random_constants(&s, 9))
                .expect("load");
            let slot = backend.alloc_slot().expect("slot");
            let (x, a, b) = random_inputs(&s, 5, 10);
            let mut out = vec![0.0; 5 * s.value_dim()];
            let inputs = TokenInputs {
                mixed_qkv: &x,
                a: &a,
                b: &b,
            };
            backend.prefill(2, slot, inputs, &mut out).expect("prefill");
            results.push((out, backend.export_state(2, slot).expect("export")));
        }
        for (design, r) in DesignPoint::ALL.iter().zip(&results).skip(1) {
            assert_eq!(r, &results[0], "{s:?}: {design} differs from P = 2");
        }
    }
}

/// The HLS top function itself, with its static memories: state written by one invocation is
/// there for the next (2 steps, then the exported state matches the reference's after 2 steps).
#[test]
fn the_top_function_keeps_state_across_invocations() {
    let design = DesignPoint::P2;
    let s = LayerSpec::new(2, 4, 32, 32, 4);
    let c = random_constants(&s, 31);
    let layer = 63; // a layer index no other use of this design point's top function takes
    let ok = |words: [u32; STATUS_WORDS], what: &str| assert_eq!(words[0], 0, "{what}: {words:?}");
    let mut input = c.conv_weight.clone();
    input.extend_from_slice(&c.a_log);
    input.extend_from_slice(&c.dt_bias);
    ok(
        invoke_top_function(design, &load_args(layer, &s), &input, &mut []),
        "load",
    );
    ok(
        invoke_top_function(design, &KernelArgs::new(Op::Reset, layer, 0), &[], &mut []),
        "reset",
    );
    let mut oracle = ReferenceBackend::default();
    oracle.load_layer(0, s, &c).expect("oracle");
    let oracle_slot = oracle.alloc_slot().expect("slot");
    for t in 0..2 {
        let (x, a, b) = random_inputs(&s, 1, 40 + t);
        let mut tokens = x.clone();
        tokens.extend_from_slice(&a);
        tokens.extend_from_slice(&b);
        let mut got = vec![0.0; s.value_dim()];
        let args = KernelArgs {
            tokens: 1,
            ..KernelArgs::new(Op::Step, layer, 0)
        };
        ok(
            invoke_top_function(design, &args, &tokens, &mut got),
            "step",
        );
        let mut want = vec![0.0; s.value_dim()];
        let inputs = TokenInputs {
            mixed_qkv: &x,
            a: &a,
            b: &b,
        };
        oracle
            .step(0, oracle_slot, inputs, &mut want)
            .expect("oracle");
        assert_close(&format!("top function, token {t}"), &got, &want, TOLERANCE);
    }
    let mut state = vec![0.0; s.conv_state_len() + s.recurrent_state_len()];
    ok(
        invoke_top_function(
            design,
            &KernelArgs::new(Op::Export, layer, 0),
            &[],
            &mut state,
        ),
        "export",
    );
    let want = oracle.export_state(0, oracle_slot).expect("export");
    assert_close(
        "conv state",
        &state[..s.conv_state_len()],
        &want.conv,
        TOLERANCE,
    );
    assert_close(
        "recurrent state",
        &state[s.conv_state_len()..],
        &want.recurrent,
        TOLERANCE,
    );
}

#[test]
fn an_injected_run_failure_is_a_typed_error_and_changes_nothing() {
    let fault = FaultPlan {
        op: Op::Step,
        nth: 2,
        state: RunState::Error,
    };
    let mut backend = XrtKernel::simulated_with(SimConfig {
        fault: Some(fault),
        ..SimConfig::default()
    })
    .expect("xrt-sim");
    let s = LayerSpec::new(2, 4, 32, 32, 4);
    backend
        .load_layer(0, s, &random_constants(&s, 1))
        .expect("load");
    let slot: SlotId = backend.alloc_slot().expect("slot");
    let (x, a, b) = random_inputs(&s, 1, 2);
    let inputs = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let mut out = vec![0.0; s.value_dim()];
    backend.step(0, slot, inputs, &mut out).expect("run 0");
    backend.step(0, slot, inputs, &mut out).expect("run 1");
    let before = backend.export_state(0, slot).expect("export");
    let steps = backend.counters().steps;
    let err = backend
        .step(0, slot, inputs, &mut out)
        .expect_err("run 2 fails");
    let message = err.to_string();
    assert!(
        matches!(err, GdnError::Device { .. }) && message.contains("ERT_CMD_STATE_ERROR"),
        "{message}"
    );
    assert_eq!(backend.export_state(0, slot).expect("export"), before);
    assert_eq!(
        backend.counters().steps,
        steps,
        "a failed step is not counted"
    );
    backend
        .step(0, slot, inputs, &mut out)
        .expect("run 3 works again");
}

#[test]
fn counters_count_the_bytes_a_card_would_move() {
    let mut backend = XrtKernel::simulated_with(SimConfig::default()).expect("xrt-sim");
    let s = LayerSpec::QWEN3_NEXT;
    backend
        .load_layer(0, s, &random_constants(&s, 1))
        .expect("load");
    let slot = backend.alloc_slot().expect("slot");
    let (x, a, b) = random_inputs(&s, 1, 2);
    let mut out = vec![0.0; s.value_dim()];
    let before = backend.counters();
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
    // DESIGN §1: 32 KiB in (plus a and b), 16 KiB out (plus the status words) per layer-token.
    assert_eq!(
        after.bytes_to_device - before.bytes_to_device,
        4 * (8192 + 64)
    );
    assert_eq!(
        after.bytes_from_device - before.bytes_from_device,
        4 * 4096 + 128
    );
    assert!(after.device_time_ns > before.device_time_ns);
}
