//! Runs everywhere, GPU or not: creating the backend never panics, and on a machine without a
//! driver (CI, the developers' machines) it answers `Unavailable` naming what is missing.

use hybrid_gdn::{BackendOptions, GdnBackend, GdnError, Registry};
use hybrid_gdn_cuda::{device, CudaKernel};

#[test]
fn new_never_panics_and_explains_itself() {
    match CudaKernel::backend(&BackendOptions::default()) {
        Ok(backend) => {
            let info = backend.info();
            assert_eq!(info.name, "cuda");
            assert!(!info.state_on_host);
        }
        Err(GdnError::Unavailable { name, reason }) => {
            assert_eq!(name, "cuda");
            assert!(reason.len() > 20, "reason too terse: {reason}");
        }
        Err(other) => panic!("expected Ok or Unavailable, got {other}"),
    }
}

#[test]
fn without_a_driver_the_reason_names_libcuda() {
    if device::probe_driver().is_ok() {
        eprintln!("a CUDA driver is present here; nothing to check");
        return;
    }
    let err =
        CudaKernel::backend(&BackendOptions::default()).expect_err("no driver, so no backend");
    let text = err.to_string();
    assert!(
        matches!(err, GdnError::Unavailable { .. })
            && text.contains("no CUDA driver (libcuda.so) found"),
        "{text}"
    );
}

#[test]
fn registry_serves_the_name_and_the_reason() {
    let mut registry = Registry::new();
    hybrid_gdn_cuda::register(&mut registry);
    assert!(registry.available().contains(&"cuda"));
    if let Err(err) = registry.create("cuda", &BackendOptions::default()) {
        assert!(matches!(err, GdnError::Unavailable { .. }), "{err}");
    }
}

#[test]
fn a_bad_device_index_is_unavailable_not_a_panic() {
    let err = CudaKernel::on_device(1 << 20).expect_err("no machine has a millionth GPU");
    assert!(matches!(err, GdnError::Unavailable { .. }), "{err}");
}
