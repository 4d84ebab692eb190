//! Finding the CUDA driver and NVRTC at run time, opening the GPU, and turning driver errors into
//! [`GdnError`]s.
//!
//! cudarc loads `libcuda` and `libnvrtc` lazily and *panics* when a library or one of its symbols
//! is missing. A backend must never panic, so [`probe_driver`] and [`probe_nvrtc`] first open the
//! same library names cudarc will try (cudarc's candidate list for CUDA 12.8 on Linux) and look up
//! every symbol this crate's cudarc calls use, and answer [`GdnError::Unavailable`] with the fix.
//! As a last line of defence [`no_panic`] turns a panic inside cudarc into a typed error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, DriverError};
use hybrid_gdn::{GdnError, Result};

/// Registry name of the backend.
pub const NAME: &str = "cuda";

/// File names cudarc (pinned to CUDA 12.8 bindings) tries for the driver library, in order.
pub const DRIVER_LIBRARIES: &[&str] = &["libcuda.so", "libcuda.so.1"];

/// File names cudarc tries for NVRTC. Note: no `libnvrtc.so.13`; with a CUDA 13 toolkit the
/// unversioned `libnvrtc.so` (in the toolkit's `lib64`) must be on the loader path (the GPU check
/// script makes a link when only `.so.13` exists).
pub const NVRTC_LIBRARIES: &[&str] = &[
    "libnvrtc.so",
    "libnvrtc.so.12",
    "libnvrtc.so.11",
    "libnvrtc.so.10",
    "libnvrtc.so.9",
    "libnvrtc.so.1",
];

/// Every driver entry point the cudarc calls of this crate reach (bindings of CUDA 12.8; drivers
/// keep old entry points, so any driver ≥ 12.8 has them all).
pub const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuGetErrorString",
    "cuGetErrorName",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuMemAlloc_v2",
    "cuMemAllocAsync",
    "cuMemFree_v2",
    "cuMemFreeAsync",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemsetD8Async",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime",
    "cuEventDestroy_v2",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
];

/// Every NVRTC entry point cudarc's `compile_ptx_with_opts` reaches.
pub const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcDestroyProgram",
];

/// Checks that the CUDA driver library loads and has every entry point this crate uses.
pub fn probe_driver() -> Result<()> {
    probe(
        "driver",
        DRIVER_LIBRARIES,
        DRIVER_SYMBOLS,
        "no CUDA driver (libcuda.so) found: this machine has no NVIDIA GPU driver, or its \
         libcuda.so.1 is not on the loader path (LD_LIBRARY_PATH)",
    )
}

/// Checks that NVRTC loads and has every entry point this crate uses.
pub fn probe_nvrtc() -> Result<()> {
    probe(
        "NVRTC",
        NVRTC_LIBRARIES,
        NVRTC_SYMBOLS,
        "no NVRTC (libnvrtc.so) found: the kernels are compiled at run time; install the CUDA \
         toolkit or `pip install nvidia-cuda-nvrtc-cu12` and put the directory holding \
         libnvrtc.so (or libnvrtc.so.12) on LD_LIBRARY_PATH",
    )
}

fn probe(what: &str, names: &[&str], symbols: &[&str], missing: &str) -> Result<()> {
    let Some((name, library)) = names.iter().find_map(|name| {
        // SAFETY: loading a shared library runs its initialisers; libcuda and libnvrtc are the
        // vendor's libraries that cudarc would load the same way a moment later.
        unsafe { libloading::Library::new(*name) }
            .ok()
            .map(|lib| (name, lib))
    }) else {
        return Err(unavailable(missing.to_string()));
    };
    for symbol in symbols {
        // SAFETY: only the symbol's presence is checked; the pointer is never called here.
        let found = unsafe { library.get::<unsafe extern "C" fn()>(symbol.as_bytes()) };
        if found.is_err() {
            return Err(unavailable(format!(
                "the CUDA {what} library {name} has no `{symbol}`: it is older than CUDA 12.8; \
                 update the NVIDIA driver / toolkit"
            )));
        }
    }
    Ok(())
}

/// [`GdnError::Unavailable`] for this backend.
pub fn unavailable(reason: String) -> GdnError {
    GdnError::Unavailable {
        name: NAME.into(),
        reason,
    }
}

/// [`GdnError::Device`] for a failed driver call, saying what was being done.
pub fn device_error(doing: &str, error: DriverError) -> GdnError {
    GdnError::Device {
        backend: NAME.into(),
        message: format!("{doing}: {error}"),
    }
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol that vanished after the probe,
/// an internal assertion) into [`GdnError::Device`] instead of unwinding into the caller.
pub fn no_panic<T>(doing: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Err(GdnError::Device {
            backend: NAME.into(),
            message: format!("{doing}: the CUDA library panicked: {detail}"),
        })
    })
}

/// The opened GPU: context, compute capability and a description for `BackendInfo::device`.
#[derive(Debug)]
pub struct Gpu {
    /// The device's primary context.
    pub ctx: Arc<CudaContext>,
    /// Compute capability (major, minor), e.g. (9, 0) for H100.
    pub arch: (i32, i32),
    /// e.g. `NVIDIA H100 80GB HBM3 (sm_90, 132 SMs), GPU 0`.
    pub description: String,
}

/// Opens GPU `ordinal` after checking the driver and NVRTC libraries.
pub fn open(ordinal: usize) -> Result<Gpu> {
    probe_driver()?;
    probe_nvrtc()?;
    no_panic("opening the GPU", || {
        let count = CudaContext::device_count().map_err(|e| match e.0 {
            // The toolkit's link stub was found before a real driver: nothing is wrong with a
            // device, there is none to use (seen with a wheel-installed toolkit's lib/stubs).
            sys::cudaError_enum::CUDA_ERROR_STUB_LIBRARY => unavailable(
                "the libcuda found on the loader path is the CUDA toolkit's link stub, not a \
                 driver: remove its directory (…/lib/stubs) from LD_LIBRARY_PATH, or put the \
                 NVIDIA driver's directory before it"
                    .into(),
            ),
            // No GPU, or a driver that cannot drive it.
            sys::cudaError_enum::CUDA_ERROR_NO_DEVICE
            | sys::cudaError_enum::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            | sys::cudaError_enum::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
            | sys::cudaError_enum::CUDA_ERROR_NOT_INITIALIZED => unavailable(format!(
                "the CUDA driver loads but reports no usable GPU ({e}); check `nvidia-smi`"
            )),
            _ => device_error("initialising CUDA (cuInit)", e),
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!(
                "GPU {ordinal} requested (HYBRID_GDN_CUDA_DEVICE, or --device cuda:N) but the driver sees {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| device_error("opening the GPU", e))?;
        let arch = ctx
            .compute_capability()
            .map_err(|e| device_error("reading the compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(0);
        Ok(Gpu {
            ctx,
            arch,
            description: format!("{name} (sm_{}{}, {sms} SMs), GPU {ordinal}", arch.0, arch.1),
        })
    })
}

/// The GPU ordinal from `HYBRID_GDN_CUDA_DEVICE` (`None` when it is not set).
pub fn ordinal_from_env() -> Result<Option<usize>> {
    match std::env::var("HYBRID_GDN_CUDA_DEVICE") {
        Err(_) => Ok(None),
        Ok(value) => value.trim().parse().map(Some).map_err(|_| {
            unavailable(format!(
                "HYBRID_GDN_CUDA_DEVICE must be a GPU index (0, 1, ...), got `{value}`"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_device_errors() {
        let err = no_panic::<()>("testing", || panic!("boom")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains("testing"), "{text}");
    }

    #[test]
    fn missing_library_is_unavailable() {
        let err = probe("driver", &["libdefinitely-not-here.so"], &[], "gone").unwrap_err();
        assert_eq!(err, unavailable("gone".into()));
    }
}
