//! Live migration: moving every GDN layer's state to another backend mid-generation (export
//! canonical → load the same constants → import) gives the tokens of an unmigrated run, for
//! every ordered pair of available backends on every fixture; a failed migration leaves the
//! model running on its old backend; and the generate example's `--migrate-after N --to B`.

mod common;

use common::*;
use hybrid_decode::gdn::{
    BackendInfo, Counters, GdnBackend, GdnError, LayerConstants, LayerSpec, ReferenceBackend,
    SlotId, SlotState, TokenInputs,
};

#[test]
fn migrated_runs_equal_unmigrated_runs_for_every_backend_pair() {
    let backends = backends();
    assert!(
        backends.len() >= 2,
        "at least reference and cpu: {backends:?}"
    );
    for fixture in FIXTURES {
        for &from in &backends {
            let mut whole = load(fixture, from);
            let (uninterrupted, _) = generate(&mut whole, greedy(), PROMPT, 12);
            for &to in &backends {
                if to == from {
                    continue;
                }
                let mut engine = load(fixture, from);
                let (first, sampler) = generate(&mut engine, greedy(), PROMPT, 5);
                let before = engine.model_mut().export_state().unwrap();
                let target = hybrid_decode::gdn_registry()
                    .create(to, &Default::default())
                    .unwrap();
                let old = engine.model_mut().migrate_gdn_backend(target).unwrap();
                assert_eq!(old.info().name, from);
                assert_eq!(engine.model().gdn_backend().info().name, to);
                // The canonical export is exact: the state crossed bit for bit.
                assert_eq!(engine.model_mut().export_state().unwrap(), before);
                drop(old);
                let history = [PROMPT, &first].concat();
                let rest = resume(&mut engine, sampler, &history, 7);
                assert_eq!(
                    [first, rest].concat(),
                    uninterrupted,
                    "{fixture}: {from} → {to} after 5 tokens"
                );
            }
        }
    }
}

#[test]
fn seeded_sampling_survives_migration() {
    let mut whole = load("qwen3-next-tiny", "reference");
    let sampler = hybrid_decode::runtime::Sampler::new(seeded()).unwrap();
    let (uninterrupted, _) = generate(&mut whole, sampler.clone(), PROMPT, 12);
    let mut engine = load("qwen3-next-tiny", "reference");
    let (first, sampler) = generate(&mut engine, sampler, PROMPT, 4);
    let cpu = hybrid_decode::gdn_registry()
        .create("cpu", &Default::default())
        .unwrap();
    engine.model_mut().migrate_gdn_backend(cpu).unwrap();
    let history = [PROMPT, &first].concat();
    let rest = resume(&mut engine, sampler, &history, 8);
    assert_eq!([first, rest].concat(), uninterrupted);
}

/// A reference backend whose `import_state` fails after `good_imports` successes, like a device
/// that runs out of memory half-way through a migration.
struct FailingImport {
    inner: ReferenceBackend,
    good_imports: usize,
}

impl GdnBackend for FailingImport {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "failing-import".into(),
            ..self.inner.info()
        }
    }
    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        c: &LayerConstants,
    ) -> Result<(), GdnError> {
        self.inner.load_layer(layer, spec, c)
    }
    fn alloc_slot(&mut self) -> Result<SlotId, GdnError> {
        self.inner.alloc_slot()
    }
    fn reset_slot(&mut self, slot: SlotId) -> Result<(), GdnError> {
        self.inner.reset_slot(slot)
    }
    fn free_slot(&mut self, slot: SlotId) -> Result<(), GdnError> {
        self.inner.free_slot(slot)
    }
    fn step(
        &mut self,
        l: usize,
        s: SlotId,
        i: TokenInputs<'_>,
        o: &mut [f32],
    ) -> Result<(), GdnError> {
        self.inner.step(l, s, i, o)
    }
    fn prefill(
        &mut self,
        l: usize,
        s: SlotId,
        i: TokenInputs<'_>,
        o: &mut [f32],
    ) -> Result<(), GdnError> {
        self.inner.prefill(l, s, i, o)
    }
    fn export_state(&mut self, layer: usize, slot: SlotId) -> Result<SlotState, GdnError> {
        self.inner.export_state(layer, slot)
    }
    fn import_state(
        &mut self,
        layer: usize,
        slot: SlotId,
        state: &SlotState,
    ) -> Result<(), GdnError> {
        if self.good_imports == 0 {
            return Err(GdnError::Device {
                backend: "failing-import".into(),
                message: "out of device memory (injected)".into(),
            });
        }
        self.good_imports -= 1;
        self.inner.import_state(layer, slot, state)
    }
    fn counters(&self) -> Counters {
        self.inner.counters()
    }
    fn holds_slot(&self, slot: SlotId) -> bool {
        self.inner.holds_slot(slot)
    }
}

#[test]
fn a_failed_migration_leaves_the_model_on_its_old_backend() {
    let mut whole = load("qwen3.5-moe-tiny", "cpu");
    let (uninterrupted, _) = generate(&mut whole, greedy(), PROMPT, 10);
    let mut engine = load("qwen3.5-moe-tiny", "cpu");
    let (first, sampler) = generate(&mut engine, greedy(), PROMPT, 4);
    let before = engine.model_mut().export_state().unwrap();
    let failing = Box::new(FailingImport {
        inner: ReferenceBackend::default(),
        good_imports: 1,
    });
    let Err(err) = engine.model_mut().migrate_gdn_backend(failing) else {
        panic!("the injected import failure must fail the migration");
    };
    assert!(chain(&err).contains("injected"), "{}", chain(&err));
    assert_eq!(engine.model().gdn_backend().info().name, "cpu");
    assert_eq!(engine.model_mut().export_state().unwrap(), before);
    let history = [PROMPT, &first].concat();
    let rest = resume(&mut engine, sampler, &history, 6);
    assert_eq!([first, rest].concat(), uninterrupted);
}

// ---- The generate example's flags ----

#[test]
fn generate_migrate_after_gives_the_unmigrated_tokens() {
    let backends = backends();
    let plain = run("generate", &["--max-new-tokens", "12", "--json"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let expected = ids(&last_json(&plain)["generated_ids"]);
    for &from in &backends {
        for &to in &backends {
            let out = run(
                "generate",
                &[
                    "--max-new-tokens",
                    "12",
                    "--gdn-backend",
                    from,
                    "--migrate-after",
                    "5",
                    "--to",
                    to,
                    "--json",
                ],
            );
            assert!(out.status.success(), "{from} → {to}: {}", stderr(&out));
            let v = last_json(&out);
            assert_eq!(ids(&v["generated_ids"]), expected, "{from} → {to}");
            assert_eq!(v["gdn_backend"], to);
            assert_eq!(v["migration"]["after"], 5);
            assert_eq!(v["migration"]["from"], from);
            assert!(stderr(&out).contains("migrated the GDN state"));
        }
    }
}

/// `--gdn-fallback` guards the backend a run migrates to as well as the one it starts on (the
/// fail-over itself, with a failing simulated card, is tests/xrt_failover.rs): the combination
/// runs, changes no token, and a fallback name this build cannot create is refused up front.
#[test]
fn generate_migrate_after_keeps_the_gdn_fallback() {
    let plain = run("generate", &["--max-new-tokens", "12", "--json"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let expected = ids(&last_json(&plain)["generated_ids"]);
    let out = run(
        "generate",
        &[
            "--max-new-tokens",
            "12",
            "--gdn-backend",
            "reference",
            "--gdn-fallback",
            "cpu",
            "--migrate-after",
            "5",
            "--to",
            "cpu-portable",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    assert_eq!(ids(&v["generated_ids"]), expected);
    assert_eq!(v["gdn_backend"], "cpu-portable");
    assert_fails(
        "generate",
        &[
            "--gdn-fallback",
            "tpu",
            "--migrate-after",
            "2",
            "--to",
            "cpu",
        ],
        "--gdn-fallback tpu: not a backend",
    );
}

#[test]
fn generate_migration_flags_are_checked_up_front() {
    assert_fails("generate", &["--migrate-after", "3"], "--to");
    assert_fails("generate", &["--to", "cpu"], "--migrate-after");
    assert_fails(
        "generate",
        &[
            "--migrate-after",
            "8",
            "--to",
            "cpu",
            "--max-new-tokens",
            "8",
        ],
        "between 1 and",
    );
    assert_fails(
        "generate",
        &["--migrate-after", "2", "--to", "tpu"],
        "unknown GDN backend `tpu`",
    );
}
