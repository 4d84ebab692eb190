//! Kernel syntax check without a GPU: NVRTC compiles `gdn.cu` exactly as the backend does (same
//! options, same `-D` shape constants) for sm_90 (H100) and sm_80, for the real model shapes
//! and the awkward ones of the conformance suite.
//!
//! Needs only `libnvrtc` on the loader path (e.g. `pip install nvidia-cuda-nvrtc-cu12` and
//! `LD_LIBRARY_PATH=.../site-packages/nvidia/cuda_nvrtc/lib`). Without it the test says so and
//! passes, unless `HYBRID_GDN_REQUIRE_NVRTC=1` (set by the GPU check script) makes it fail.
//!
//! With `HYBRID_GDN_PTXAS=/path/to/ptxas` (e.g. from the `nvidia-cuda-nvcc-cu12` wheel) every
//! PTX is also assembled to machine code and must not spill registers.

use std::process::Command;

use hybrid_gdn::LayerSpec;
use hybrid_gdn_cuda::device;
use hybrid_gdn_cuda::kernels::{compile, KernelConfig, KERNEL_NAMES};

#[test]
fn kernels_compile_with_nvrtc() {
    if let Err(err) = device::probe_nvrtc() {
        if std::env::var("HYBRID_GDN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("HYBRID_GDN_REQUIRE_NVRTC=1 but {err}");
        }
        eprintln!("skipped: {err}");
        return;
    }
    let shapes = [
        LayerSpec::QWEN3_NEXT,
        LayerSpec::new(16, 16, 128, 128, 4), // Qwen3.5-0.8B
        LayerSpec::new(2, 6, 64, 32, 4),
        LayerSpec::new(2, 4, 48, 80, 4),
        LayerSpec::new(3, 3, 33, 7, 4),
        LayerSpec::new(2, 6, 1, 1, 4),
        LayerSpec::new(1, 1, 8, 5, 1),
        LayerSpec::new(4, 8, 256, 256, 3),
    ];
    for arch in [(9, 0), (8, 0)] {
        for shape in shapes {
            let config = KernelConfig::for_spec(shape);
            let ptx = compile(&config, arch)
                .unwrap_or_else(|e| panic!("sm_{}{} {shape:?}: {e}", arch.0, arch.1));
            for name in KERNEL_NAMES {
                assert!(
                    ptx.contains(&format!(".entry {name}")),
                    "sm_{}{} {shape:?}: no `{name}` in the PTX",
                    arch.0,
                    arch.1
                );
            }
            if let Ok(ptxas) = std::env::var("HYBRID_GDN_PTXAS") {
                assemble(&ptxas, &ptx, arch, &format!("{shape:?}"));
            }
            // Register arrays must stay in registers: a local-memory frame means spilling.
            for name in ["gdn_decode", "gdn_decode_batch"] {
                let body = ptx
                    .split(&format!(".entry {name}("))
                    .nth(1)
                    .and_then(|rest| rest.split(".entry").next())
                    .unwrap_or("");
                assert!(
                    !body.is_empty() && !body.contains(".local"),
                    "sm_{}{} {shape:?}: {name} missing or using local memory",
                    arch.0,
                    arch.1
                );
            }
        }
    }
    if let Ok(dir) = std::env::var("HYBRID_GDN_PTX_OUT") {
        let config = KernelConfig::for_spec(LayerSpec::QWEN3_NEXT);
        let ptx = compile(&config, (9, 0)).expect("compiled above");
        std::fs::write(format!("{dir}/gdn_qwen3_next_sm90.ptx"), ptx.as_bytes())
            .expect("writing the PTX");
    }
}

/// Runs ptxas on `ptx` for `arch` and fails on an error or any register spill.
fn assemble(ptxas: &str, ptx: &str, arch: (i32, i32), what: &str) {
    let dir = std::env::temp_dir().join(format!("gdn-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("gdn_sm{}{}.ptx", arch.0, arch.1));
    std::fs::write(&file, ptx).expect("writing PTX");
    let output = Command::new(ptxas)
        .arg(format!("-arch=sm_{}{}", arch.0, arch.1))
        .arg("-v")
        .arg(&file)
        .arg("-o")
        .arg(file.with_extension("cubin"))
        .output()
        .unwrap_or_else(|e| panic!("running {ptxas}: {e}"));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ptxas sm_{}{} {what}:\n{log}",
        arch.0,
        arch.1
    );
    for line in log.lines().filter(|l| l.contains("spill stores")) {
        assert!(
            line.trim_start()
                .starts_with("0 bytes stack frame, 0 bytes spill stores"),
            "ptxas sm_{}{} {what}: {line}\n{log}",
            arch.0,
            arch.1
        );
    }
}
