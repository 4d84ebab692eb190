//! The native XRT C API (`xrt/xrt_device.h`, `xrt_kernel.h`, `xrt_bo.h` of XRT 2.13), resolved with
//! `dlopen` from `libxrt_coreutil.so.2` at run time, so that nothing XRT is needed to build, link
//! or run the rest of hybrid-decode. Only the calls the host path uses are resolved.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use crate::error::XrtError;

/// An opaque XRT handle (`xrtDeviceHandle`, `xrtKernelHandle`, `xrtRunHandle`,
/// `xrtBufferHandle` are all `void*`).
pub type Handle = *mut c_void;

/// The library holding the native C API.
pub const DEFAULT_LIBRARY: &str = "libxrt_coreutil.so.2";

/// `XCL_BO_SYNC_BO_TO_DEVICE`.
pub const SYNC_TO_DEVICE: c_int = 0;
/// `XCL_BO_SYNC_BO_FROM_DEVICE`.
pub const SYNC_FROM_DEVICE: c_int = 1;
/// `XRT_BO_FLAGS_NONE`: an ordinary buffer with host backing and device memory.
pub const BO_FLAGS_NONE: u64 = 0;

/// Function pointers into a loaded XRT library. The library stays loaded while this lives.
pub struct XrtApi {
    library: String,
    /// `xrtDeviceOpen(unsigned index) -> xrtDeviceHandle` (null on error).
    pub device_open: unsafe extern "C" fn(c_uint) -> Handle,
    /// `xrtDeviceClose(xrtDeviceHandle) -> int`.
    pub device_close: unsafe extern "C" fn(Handle) -> c_int,
    /// `xrtDeviceLoadXclbinFile(xrtDeviceHandle, const char*) -> int`.
    pub device_load_xclbin_file: unsafe extern "C" fn(Handle, *const c_char) -> c_int,
    /// `xrtDeviceGetXclbinUUID(xrtDeviceHandle, xuid_t out) -> int` (`xuid_t` = `unsigned char[16]`).
    pub device_get_xclbin_uuid: unsafe extern "C" fn(Handle, *mut u8) -> c_int,
    /// `xrtPLKernelOpen(xrtDeviceHandle, const xuid_t, const char*) -> xrtKernelHandle`.
    pub pl_kernel_open: unsafe extern "C" fn(Handle, *const u8, *const c_char) -> Handle,
    /// `xrtKernelClose(xrtKernelHandle) -> int`.
    pub kernel_close: unsafe extern "C" fn(Handle) -> c_int,
    /// `xrtKernelArgGroupId(xrtKernelHandle, int argno) -> int` (negative on error).
    pub kernel_arg_group_id: unsafe extern "C" fn(Handle, c_int) -> c_int,
    /// `xrtBOAlloc(xrtDeviceHandle, size_t, xrtBufferFlags, xrtMemoryGroup) -> xrtBufferHandle`.
    pub bo_alloc: unsafe extern "C" fn(Handle, usize, u64, u32) -> Handle,
    /// `xrtBOFree(xrtBufferHandle) -> int`.
    pub bo_free: unsafe extern "C" fn(Handle) -> c_int,
    /// `xrtBOWrite(xrtBufferHandle, const void* src, size_t size, size_t seek) -> int`.
    pub bo_write: unsafe extern "C" fn(Handle, *const c_void, usize, usize) -> c_int,
    /// `xrtBORead(xrtBufferHandle, void* dst, size_t size, size_t skip) -> int`.
    pub bo_read: unsafe extern "C" fn(Handle, *mut c_void, usize, usize) -> c_int,
    /// `xrtBOSync(xrtBufferHandle, enum xclBOSyncDirection, size_t size, size_t offset) -> int`.
    pub bo_sync: unsafe extern "C" fn(Handle, c_int, usize, usize) -> c_int,
    /// `xrtRunOpen(xrtKernelHandle) -> xrtRunHandle`.
    pub run_open: unsafe extern "C" fn(Handle) -> Handle,
    /// `xrtRunSetArg(xrtRunHandle, int index, ...) -> int`. Variadic: buffer arguments take an
    /// `xrtBufferHandle`, `uint` scalars an `unsigned int`, `float` scalars a `double` (C default
    /// argument promotion; XRT reads a double and narrows it).
    pub run_set_arg: unsafe extern "C" fn(Handle, c_int, ...) -> c_int,
    /// `xrtRunStart(xrtRunHandle) -> int`.
    pub run_start: unsafe extern "C" fn(Handle) -> c_int,
    /// `xrtRunWaitFor(xrtRunHandle, unsigned timeout_ms) -> enum ert_cmd_state`.
    pub run_wait_for: unsafe extern "C" fn(Handle, c_uint) -> c_int,
    /// `xrtRunClose(xrtRunHandle) -> int`.
    pub run_close: unsafe extern "C" fn(Handle) -> c_int,
    // Declared last: the function pointers above point into it.
    _library: libloading::Library,
}

impl std::fmt::Debug for XrtApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrtApi")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl XrtApi {
    /// Loads [`DEFAULT_LIBRARY`] from the dynamic loader's search path.
    pub fn load() -> Result<Arc<Self>, XrtError> {
        Self::load_from(DEFAULT_LIBRARY)
    }

    /// Loads the native C API from `library` (a file name or a path).
    pub fn load_from(library: &str) -> Result<Arc<Self>, XrtError> {
        // SAFETY: loading runs the library's initialisers; XRT's only set up its own singletons
        // and are safe to run at any time in a process.
        let lib =
            unsafe { libloading::Library::new(library) }.map_err(|e| XrtError::LibraryMissing {
                library: library.to_string(),
                reason: e.to_string(),
            })?;
        macro_rules! resolve {
            ($symbol:literal) => {{
                // SAFETY: the symbol is the XRT 2.13 C function of that name, and the field's
                // function-pointer type is its C prototype from the XRT headers (see each field's
                // doc); the pointer is used only while `_library` keeps the library loaded.
                let symbol =
                    unsafe { lib.get(concat!($symbol, "\0").as_bytes()) }.map_err(|e| {
                        XrtError::SymbolMissing {
                            library: library.to_string(),
                            symbol: $symbol,
                            reason: e.to_string(),
                        }
                    })?;
                *symbol
            }};
        }
        let api = XrtApi {
            library: library.to_string(),
            device_open: resolve!("xrtDeviceOpen"),
            device_close: resolve!("xrtDeviceClose"),
            device_load_xclbin_file: resolve!("xrtDeviceLoadXclbinFile"),
            device_get_xclbin_uuid: resolve!("xrtDeviceGetXclbinUUID"),
            pl_kernel_open: resolve!("xrtPLKernelOpen"),
            kernel_close: resolve!("xrtKernelClose"),
            kernel_arg_group_id: resolve!("xrtKernelArgGroupId"),
            bo_alloc: resolve!("xrtBOAlloc"),
            bo_free: resolve!("xrtBOFree"),
            bo_write: resolve!("xrtBOWrite"),
            bo_read: resolve!("xrtBORead"),
            bo_sync: resolve!("xrtBOSync"),
            run_open: resolve!("xrtRunOpen"),
            run_set_arg: resolve!("xrtRunSetArg"),
            run_start: resolve!("xrtRunStart"),
            run_wait_for: resolve!("xrtRunWaitFor"),
            run_close: resolve!("xrtRunClose"),
            _library: lib,
        };
        Ok(Arc::new(api))
    }

    /// The library these functions came from.
    pub fn library(&self) -> &str {
        &self.library
    }
}
