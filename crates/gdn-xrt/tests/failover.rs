//! FailoverBackend at the GDN level: several layers and slots move from a failing simulated card
//! to the fallback mid-token, the failed call is retried there, and every output and state
//! matches an uninterrupted run; errors that are not device failures never trigger it.

use hybrid_gdn::conformance::{assert_close, random_constants, random_inputs, TOLERANCE};
use hybrid_gdn::{BatchMember, GdnBackend, GdnError, LayerSpec, ReferenceBackend, TokenInputs};
use hybrid_gdn_xrt::kernel::abi::Op;
use hybrid_gdn_xrt::kernel::csim::FaultPlan;
use hybrid_gdn_xrt::{FailoverBackend, RunState, SimConfig, XrtKernel};

const SPEC: LayerSpec = LayerSpec {
    num_k_heads: 2,
    num_v_heads: 4,
    head_k_dim: 32,
    head_v_dim: 16,
    conv_kernel: 4,
};
const LAYERS: [usize; 3] = [0, 2, 5];

fn failing_card(nth: u64) -> Box<dyn GdnBackend> {
    let fault = FaultPlan {
        op: Op::Step,
        nth,
        state: RunState::Timeout,
    };
    Box::new(
        XrtKernel::simulated_with(SimConfig {
            fault: Some(fault),
            ..SimConfig::default()
        })
        .expect("xrt-sim"),
    )
}

/// One token (seeded inputs, the same every call) through `backend.step` for (layer, slot).
fn step_one_token(
    backend: &mut dyn GdnBackend,
    layer: usize,
    slot: hybrid_gdn::SlotId,
) -> hybrid_gdn::Result<()> {
    let (x, a, b) = random_inputs(&SPEC, 1, 1);
    let inputs = TokenInputs {
        mixed_qkv: &x,
        a: &a,
        b: &b,
    };
    let mut out = vec![0.0; SPEC.value_dim()];
    backend.step(layer, slot, inputs, &mut out)
}

fn setup(backend: &mut dyn GdnBackend) {
    for layer in LAYERS {
        backend
            .load_layer(layer, SPEC, &random_constants(&SPEC, layer as u64))
            .expect("load");
    }
}

#[test]
fn live_sequences_move_mid_token_and_continue_exactly() {
    let mut failover = FailoverBackend::new(
        failing_card(7),
        Box::new(|| Ok(Box::new(ReferenceBackend::default()))),
    );
    let mut oracle = ReferenceBackend::default();
    setup(&mut failover);
    setup(&mut oracle);
    let slots: Vec<_> = (0..2)
        .map(|_| {
            (
                failover.alloc_slot().expect("slot"),
                oracle.alloc_slot().expect("slot"),
            )
        })
        .collect();
    // Token t: every layer of slot 0, then of slot 1. The 8th run (token 1, slot 0, layer 2)
    // fails on the card.
    for t in 0..4u64 {
        for (s, &(slot, oracle_slot)) in slots.iter().enumerate() {
            for layer in LAYERS {
                let (x, a, b) = random_inputs(&SPEC, 1, 1000 * t + 10 * s as u64 + layer as u64);
                let inputs = TokenInputs {
                    mixed_qkv: &x,
                    a: &a,
                    b: &b,
                };
                let mut got = vec![0.0; SPEC.value_dim()];
                let mut want = got.clone();
                failover.step(layer, slot, inputs, &mut got).expect("step");
                oracle
                    .step(layer, oracle_slot, inputs, &mut want)
                    .expect("oracle");
                assert_close(
                    &format!("token {t} slot {s} layer {layer}"),
                    &got,
                    &want,
                    TOLERANCE,
                );
            }
        }
    }
    let events = failover.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].from.as_str(), events[0].to.as_str()),
        ("xrt-sim", "reference")
    );
    assert_eq!((events[0].layer, events[0].slots_moved), (2, 2));
    assert!(
        matches!(&events[0].cause, GdnError::Device { message, .. } if message.contains("ERT_CMD_STATE_TIMEOUT")),
        "{:?}",
        events[0].cause
    );
    for &(slot, oracle_slot) in &slots {
        for layer in LAYERS {
            let got = failover.export_state(layer, slot).expect("export");
            let want = oracle.export_state(layer, oracle_slot).expect("export");
            assert_close(
                "recurrent state",
                &got.recurrent,
                &want.recurrent,
                TOLERANCE,
            );
            assert_close("conv state", &got.conv, &want.conv, TOLERANCE);
        }
    }
    let c = failover.counters();
    assert_eq!(
        c.steps,
        4 * 2 * LAYERS.len() as u64,
        "each step counted once"
    );
}

/// Batched decode through the failover: the card fails in the middle of a batch (the 5th STEP:
/// token 0, layer 2, second member), the sequences move with the first member of that batch
/// already advanced, only the failed member and the rest are retried, and after the failover the
/// fallback takes whole batches; every output matches an uninterrupted oracle.
#[test]
fn a_failure_inside_a_batch_moves_the_sequences_exactly() {
    let mut failover = FailoverBackend::new(
        failing_card(4),
        Box::new(|| Ok(Box::new(ReferenceBackend::default()))),
    );
    let mut oracle = ReferenceBackend::default();
    setup(&mut failover);
    setup(&mut oracle);
    let slots: Vec<_> = (0..3)
        .map(|_| failover.alloc_slot().expect("slot"))
        .collect();
    let oracle_slots: Vec<_> = (0..3).map(|_| oracle.alloc_slot().expect("slot")).collect();
    for t in 0..3u64 {
        for layer in LAYERS {
            let inputs: Vec<_> = (0..3u64)
                .map(|s| random_inputs(&SPEC, 1, 5000 + 100 * t + 10 * s + layer as u64))
                .collect();
            let mut got = vec![vec![0.0; SPEC.value_dim()]; 3];
            let mut want = got.clone();
            for (backend, slots, outs) in [
                (&mut failover as &mut dyn GdnBackend, &slots, &mut got),
                (&mut oracle as &mut dyn GdnBackend, &oracle_slots, &mut want),
            ] {
                let mut members: Vec<BatchMember<'_>> = inputs
                    .iter()
                    .zip(slots.iter())
                    .zip(outs.iter_mut())
                    .map(|(((x, a, b), &slot), out)| BatchMember {
                        slot,
                        inputs: TokenInputs { mixed_qkv: x, a, b },
                        out,
                    })
                    .collect();
                backend.run_batch(layer, &mut members).expect("batch");
            }
            for s in 0..3 {
                assert_close(
                    &format!("token {t} layer {layer} member {s}"),
                    &got[s],
                    &want[s],
                    TOLERANCE,
                );
            }
        }
    }
    assert_eq!(failover.events().len(), 1);
    assert_eq!(failover.counters().steps, 3 * 3 * LAYERS.len() as u64);
}

#[test]
fn input_errors_are_not_device_failures() {
    let mut failover = FailoverBackend::new(
        failing_card(0),
        Box::new(|| Ok(Box::new(ReferenceBackend::default()))),
    );
    setup(&mut failover);
    let slot = failover.alloc_slot().expect("slot");
    assert_eq!(
        step_one_token(&mut failover, 1, slot),
        Err(GdnError::UnknownLayer(1))
    );
    assert!(failover.events().is_empty());
    assert_eq!(failover.active().info().name, "xrt-sim");
    // The first run on the card is the failing one: now it moves.
    step_one_token(&mut failover, 0, slot).expect("step after failover");
    assert_eq!(failover.active().info().name, "reference");
}

#[test]
fn a_broken_fallback_returns_the_original_error_with_the_reason() {
    let mut failover = FailoverBackend::new(
        failing_card(0),
        Box::new(|| {
            Err(GdnError::Unavailable {
                name: "cpu".into(),
                reason: "test fallback refuses".into(),
            })
        }),
    );
    setup(&mut failover);
    let slot = failover.alloc_slot().expect("slot");
    let err = step_one_token(&mut failover, 0, slot).expect_err("no fallback");
    let message = err.to_string();
    assert!(
        message.contains("ERT_CMD_STATE_TIMEOUT") && message.contains("test fallback refuses"),
        "{message}"
    );
}

/// The reference backend, except that its first `step` fails with `error`: a stand-in for the
/// primary of a fail-over (the fail-over logic is what is tested, the numbers come from the real
/// reference backend).
struct FailsOnce {
    inner: ReferenceBackend,
    error: Option<GdnError>,
}

impl GdnBackend for FailsOnce {
    fn info(&self) -> hybrid_gdn::BackendInfo {
        self.inner.info()
    }
    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: &hybrid_gdn::LayerConstants,
    ) -> hybrid_gdn::Result<()> {
        self.inner.load_layer(layer, spec, constants)
    }
    fn alloc_slot(&mut self) -> hybrid_gdn::Result<hybrid_gdn::SlotId> {
        self.inner.alloc_slot()
    }
    fn reset_slot(&mut self, slot: hybrid_gdn::SlotId) -> hybrid_gdn::Result<()> {
        self.inner.reset_slot(slot)
    }
    fn free_slot(&mut self, slot: hybrid_gdn::SlotId) -> hybrid_gdn::Result<()> {
        self.inner.free_slot(slot)
    }
    fn step(
        &mut self,
        layer: usize,
        slot: hybrid_gdn::SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> hybrid_gdn::Result<()> {
        match self.error.take() {
            Some(error) => Err(error),
            None => self.inner.step(layer, slot, inputs, out),
        }
    }
    fn prefill(
        &mut self,
        layer: usize,
        slot: hybrid_gdn::SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> hybrid_gdn::Result<()> {
        self.inner.prefill(layer, slot, inputs, out)
    }
    fn export_state(
        &mut self,
        layer: usize,
        slot: hybrid_gdn::SlotId,
    ) -> hybrid_gdn::Result<hybrid_gdn::SlotState> {
        self.inner.export_state(layer, slot)
    }
    fn import_state(
        &mut self,
        layer: usize,
        slot: hybrid_gdn::SlotId,
        state: &hybrid_gdn::SlotState,
    ) -> hybrid_gdn::Result<()> {
        self.inner.import_state(layer, slot, state)
    }
    fn counters(&self) -> hybrid_gdn::Counters {
        self.inner.counters()
    }
    fn holds_slot(&self, slot: hybrid_gdn::SlotId) -> bool {
        self.inner.holds_slot(slot)
    }
}

/// Only device faults move the sequences: an internal bug, an argument the backend cannot take
/// or running out of slots reaches the caller with the primary still active.
#[test]
fn only_device_faults_fail_over() {
    let not_device = [
        GdnError::Internal {
            backend: "primary".into(),
            message: "a worker task panicked".into(),
        },
        GdnError::InvalidArgument {
            backend: "primary".into(),
            detail: "too large".into(),
        },
        GdnError::OutOfSlots {
            backend: "primary".into(),
            detail: "all in use".into(),
        },
    ];
    let device = GdnError::Device {
        backend: "primary".into(),
        message: "the card stopped answering".into(),
    };
    for (error, moves) in not_device
        .into_iter()
        .map(|e| (e, false))
        .chain([(device, true)])
    {
        let mut failover = FailoverBackend::new(
            Box::new(FailsOnce {
                inner: ReferenceBackend::default(),
                error: Some(error.clone()),
            }),
            Box::new(|| Ok(Box::new(ReferenceBackend::default()))),
        );
        setup(&mut failover);
        let slot = failover.alloc_slot().expect("slot");
        let result = step_one_token(&mut failover, 0, slot);
        assert_eq!(result.is_ok(), moves, "{error}");
        assert_eq!(failover.events().len(), usize::from(moves), "{error}");
        if !moves {
            assert_eq!(result, Err(error));
        }
    }
}
