//! The registry resolves names and explains every name it cannot serve.

use hybrid_decode::gdn::{BackendOptions, GdnError};

#[test]
fn unknown_name_lists_known_backends() {
    let err = hybrid_decode::gdn_registry()
        .create("tpu", &BackendOptions::default())
        .err()
        .expect("`tpu` must not resolve");
    match &err {
        GdnError::UnknownBackend { name, known } => {
            assert_eq!(name, "tpu");
            for expected in ["reference", "cpu", "cuda", "xrt", "xrt-sim"] {
                assert!(
                    known.contains(expected),
                    "`{expected}` missing from {known}"
                );
            }
        }
        other => panic!("expected UnknownBackend, got {other:?}"),
    }
}

#[test]
fn known_but_missing_backends_say_why() {
    let registry = hybrid_decode::gdn_registry();
    for name in ["cuda", "xrt", "xrt-sim"] {
        if registry.available().contains(&name) {
            continue;
        }
        let err = registry
            .create(name, &BackendOptions::default())
            .err()
            .expect("an unavailable backend must not be created");
        let message = err.to_string();
        assert!(
            matches!(err, GdnError::Unavailable { .. }) && message.contains("feature"),
            "`{name}`: {message}"
        );
    }
}

#[test]
fn cpu_backend_reports_threads_and_kernel() {
    let backend = hybrid_decode::gdn_registry()
        .create("cpu", &BackendOptions::default().with_threads(3))
        .expect("cpu");
    let info = backend.info();
    assert_eq!(info.host_threads, 3);
    assert!(info.device.contains("3 threads"), "{}", info.device);
    let zero =
        hybrid_decode::gdn_registry().create("cpu", &BackendOptions::default().with_threads(0));
    assert!(matches!(zero, Err(GdnError::Unavailable { .. })));
}
