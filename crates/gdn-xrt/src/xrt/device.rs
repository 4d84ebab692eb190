//! One card running the `gdn_kernel` xclbin through the XRT native C API: device open, xclbin
//! load, kernel open, three buffer objects (`in`, `out`, `status`), and per invocation: write and
//! sync the input, set the arguments, start, wait with a timeout, sync and read status and output.

use std::ffi::{c_double, c_uint, c_void, CString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::ffi::{self, Handle, XrtApi};
use crate::error::{RunState, XrtError};
use crate::kernel::abi::{self, arg, KernelArgs, StatusWords, STATUS_WORDS};
use crate::kernel::KernelDevice;

/// Where and what to open.
#[derive(Debug, Clone, PartialEq)]
pub struct XrtConfig {
    /// Device index for `xrtDeviceOpen`.
    pub device_index: u32,
    /// The xclbin to load.
    pub xclbin: PathBuf,
    /// The kernel inside it ([`abi::KERNEL_NAME`] for ours).
    pub kernel_name: String,
    /// How long one run may take before the card is considered hung.
    pub run_timeout: Duration,
}

impl XrtConfig {
    /// Our kernel on device `device_index` from `xclbin`, with a 10 s run timeout (a decode step
    /// takes microseconds; loading or exporting a layer milliseconds).
    pub fn new(device_index: u32, xclbin: impl Into<PathBuf>) -> Self {
        XrtConfig {
            device_index,
            xclbin: xclbin.into(),
            kernel_name: abi::KERNEL_NAME.to_string(),
            run_timeout: Duration::from_secs(10),
        }
    }
}

/// The three buffer arguments.
const BUFFERS: [(i32, &str); 3] = [(arg::IN, "in"), (arg::OUT, "out"), (arg::STATUS, "status")];

/// One buffer object, grown on demand.
#[derive(Debug)]
struct DeviceBuffer {
    what: &'static str,
    handle: Handle,
    bytes: usize,
    group: u32,
}

/// An open card with the kernel loaded. Closes everything it opened when dropped.
pub struct XrtDevice {
    api: Arc<XrtApi>,
    config: XrtConfig,
    device: Handle,
    kernel: Handle,
    run: Handle,
    buffers: Vec<DeviceBuffer>,
    poisoned: Option<String>,
}

// SAFETY: the handles are XRT objects that XRT documents as usable from any thread ("A kernel
// handle is thread safe and can be shared between threads"); this value owns them exclusively and
// uses them only through `&mut self`, one call at a time.
unsafe impl Send for XrtDevice {}

impl std::fmt::Debug for XrtDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrtDevice")
            .field("config", &self.config)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// The driver library XRT 2.13 loads in `xrtDeviceOpen`, by `XCL_EMULATION_MODE`.
fn driver_library(emulation_mode: Option<&str>) -> Result<&'static str, XrtError> {
    match emulation_mode {
        None | Some("") => Ok("libxrt_core.so.2"),
        Some("noop") => Ok("libxrt_noop.so.2"),
        Some("sw_emu") => Ok("libxrt_swemu.so.2"),
        Some("hw_emu") => Ok("libxrt_hwemu.so.2"),
        Some(other) => Err(XrtError::UnknownEmulationMode {
            mode: other.to_string(),
        }),
    }
}

/// XRT 2.13's `xrtDeviceOpen` lets C++ exceptions escape through the C API when `XILINX_XRT` is
/// unset or when `$XILINX_XRT/lib/<driver>` does not exist, and an exception crossing into Rust
/// aborts the process. Both are checked here, so that they come back as typed errors instead.
/// (With the driver present, a missing card makes `xrtDeviceOpen` return null, which is fine.)
pub fn check_driver_present() -> Result<(), XrtError> {
    let root = std::env::var_os("XILINX_XRT")
        .filter(|v| !v.is_empty())
        .ok_or(XrtError::XilinxXrtUnset)?;
    let mode = std::env::var("XCL_EMULATION_MODE").ok();
    let path = std::path::Path::new(&root)
        .join("lib")
        .join(driver_library(mode.as_deref())?);
    if path.is_file() {
        Ok(())
    } else {
        Err(XrtError::DriverMissing { path })
    }
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

impl XrtDevice {
    /// Opens device `config.device_index`, loads the xclbin and opens the kernel. Checks first
    /// what XRT 2.13's `xrtDeviceOpen` would otherwise abort the process over (see
    /// [`check_driver_present`]).
    pub fn open(api: Arc<XrtApi>, config: XrtConfig) -> Result<Self, XrtError> {
        check_driver_present()?;
        std::fs::File::open(&config.xclbin).map_err(|e| XrtError::XclbinUnreadable {
            path: config.xclbin.clone(),
            reason: e.to_string(),
        })?;
        let path = CString::new(config.xclbin.as_os_str().as_encoded_bytes()).map_err(|_| {
            XrtError::XclbinUnreadable {
                path: config.xclbin.clone(),
                reason: "the path contains a NUL byte".into(),
            }
        })?;
        let kernel_name =
            CString::new(config.kernel_name.as_str()).map_err(|_| XrtError::KernelOpen {
                name: config.kernel_name.clone(),
                reason: "the name contains a NUL byte".into(),
            })?;

        // SAFETY: plain call with an index; XILINX_XRT and the driver library are in place
        // (checked above), so XRT 2.13 returns null on failure instead of throwing.
        let device = unsafe { (api.device_open)(config.device_index) };
        if device.is_null() {
            return Err(XrtError::DeviceOpen {
                index: config.device_index,
                reason: errno_text(),
            });
        }
        // From here on, `Drop` closes whatever has been opened if a later step fails.
        let mut this = XrtDevice {
            api,
            config,
            device,
            kernel: std::ptr::null_mut(),
            run: std::ptr::null_mut(),
            buffers: Vec::new(),
            poisoned: None,
        };

        // SAFETY: `device` is open; `path` is a NUL-terminated string that outlives the call.
        let code = unsafe { (this.api.device_load_xclbin_file)(this.device, path.as_ptr()) };
        if code != 0 {
            return Err(XrtError::XclbinLoad {
                path: this.config.xclbin.clone(),
                code,
                reason: errno_text(),
            });
        }
        let mut uuid = [0u8; 16];
        // SAFETY: `uuid` is the 16-byte xuid_t the call writes.
        let code = unsafe { (this.api.device_get_xclbin_uuid)(this.device, uuid.as_mut_ptr()) };
        if code != 0 {
            return Err(XrtError::XclbinUuid { code });
        }
        // SAFETY: `device` is open with the xclbin loaded; `uuid` is 16 bytes; `kernel_name` is
        // NUL-terminated and outlives the call.
        this.kernel =
            unsafe { (this.api.pl_kernel_open)(this.device, uuid.as_ptr(), kernel_name.as_ptr()) };
        if this.kernel.is_null() {
            return Err(XrtError::KernelOpen {
                name: this.config.kernel_name.clone(),
                reason: errno_text(),
            });
        }
        for (index, what) in BUFFERS {
            // SAFETY: `kernel` is open; `index` is one of its arguments.
            let group = unsafe { (this.api.kernel_arg_group_id)(this.kernel, index) };
            let group = u32::try_from(group).map_err(|_| XrtError::ArgGroup {
                index,
                name: what,
                code: group,
            })?;
            let initial = if index == arg::STATUS {
                STATUS_WORDS * 4
            } else {
                64 * 1024
            };
            let handle = this.alloc(what, initial, group)?;
            this.buffers.push(DeviceBuffer {
                what,
                handle,
                bytes: initial,
                group,
            });
        }
        // SAFETY: `kernel` is open.
        this.run = unsafe { (this.api.run_open)(this.kernel) };
        if this.run.is_null() {
            return Err(XrtError::RunOpen {
                reason: errno_text(),
            });
        }
        Ok(this)
    }

    /// The configuration this device was opened with.
    pub fn config(&self) -> &XrtConfig {
        &self.config
    }

    fn alloc(&self, what: &'static str, bytes: usize, group: u32) -> Result<Handle, XrtError> {
        // SAFETY: `device` is open; size, flags and group are plain values.
        let handle = unsafe { (self.api.bo_alloc)(self.device, bytes, ffi::BO_FLAGS_NONE, group) };
        if handle.is_null() {
            return Err(XrtError::BufferAlloc {
                what,
                bytes,
                reason: errno_text(),
            });
        }
        Ok(handle)
    }

    /// Makes buffer `which` at least `bytes` long (contents are not kept).
    fn ensure_capacity(&mut self, which: usize, bytes: usize) -> Result<(), XrtError> {
        if self.buffers[which].bytes >= bytes {
            return Ok(());
        }
        let size = bytes.next_power_of_two();
        let (what, group) = (self.buffers[which].what, self.buffers[which].group);
        let handle = self.alloc(what, size, group)?;
        let old = std::mem::replace(&mut self.buffers[which].handle, handle);
        self.buffers[which].bytes = size;
        // SAFETY: `old` was allocated by xrtBOAlloc and is no longer referenced (every run sets
        // its buffer arguments afresh).
        unsafe { (self.api.bo_free)(old) };
        Ok(())
    }

    fn check(&self, call: &'static str, what: &'static str, code: i32) -> Result<(), XrtError> {
        if code == 0 {
            Ok(())
        } else {
            Err(XrtError::BufferIo { call, what, code })
        }
    }

    /// Writes `segments` back to back into the `in` buffer and syncs them to the card.
    fn upload(&mut self, segments: &[&[f32]]) -> Result<usize, XrtError> {
        let bytes: usize = segments.iter().map(|s| std::mem::size_of_val(*s)).sum();
        self.ensure_capacity(0, bytes.max(4))?;
        let buffer = self.buffers[0].handle;
        let mut seek = 0;
        for segment in segments {
            let size = std::mem::size_of_val(*segment);
            // SAFETY: `segment` is `size` readable bytes; `seek + size` ≤ the buffer's size
            // (ensured above).
            let code = unsafe {
                (self.api.bo_write)(buffer, segment.as_ptr().cast::<c_void>(), size, seek)
            };
            self.check("xrtBOWrite", "in", code)?;
            seek += size;
        }
        if bytes > 0 {
            // SAFETY: syncs the first `bytes` bytes of a live buffer.
            let code = unsafe { (self.api.bo_sync)(buffer, ffi::SYNC_TO_DEVICE, bytes, 0) };
            self.check("xrtBOSync(to device)", "in", code)?;
        }
        Ok(bytes)
    }

    /// Syncs the first `bytes` of buffer `which` from the card and reads them into `dst`.
    fn download(&self, which: usize, dst: *mut c_void, bytes: usize) -> Result<(), XrtError> {
        if bytes == 0 {
            return Ok(());
        }
        let buffer = &self.buffers[which];
        // SAFETY: `bytes` ≤ the buffer's size (ensured by the caller).
        let code = unsafe { (self.api.bo_sync)(buffer.handle, ffi::SYNC_FROM_DEVICE, bytes, 0) };
        self.check("xrtBOSync(from device)", buffer.what, code)?;
        // SAFETY: `dst` has room for `bytes` bytes (the caller's slice), the buffer holds at
        // least that many.
        let code = unsafe { (self.api.bo_read)(buffer.handle, dst, bytes, 0) };
        self.check("xrtBORead", buffer.what, code)
    }

    /// Sets every kernel argument of the next run.
    fn set_args(&self, args: &KernelArgs) -> Result<(), XrtError> {
        for (slot, (index, name)) in BUFFERS.iter().enumerate() {
            // SAFETY: `run` is open; a global-memory argument is read as an `xrtBufferHandle`.
            let code =
                unsafe { (self.api.run_set_arg)(self.run, *index, self.buffers[slot].handle) };
            if code != 0 {
                return Err(XrtError::SetArg {
                    index: *index,
                    name,
                    code,
                });
            }
        }
        for (offset, value) in args.scalars().into_iter().enumerate() {
            let index = arg::FIRST_SCALAR + offset as i32;
            // SAFETY: `run` is open; a `uint` scalar is read as an `unsigned int`.
            let code = unsafe { (self.api.run_set_arg)(self.run, index, value as c_uint) };
            if code != 0 {
                return Err(XrtError::SetArg {
                    index,
                    name: abi::SCALAR_NAMES[offset],
                    code,
                });
            }
        }
        // SAFETY: `run` is open; a `float` scalar travels through `...` promoted to double, which
        // is what XRT reads before narrowing it to the kernel's float.
        let code =
            unsafe { (self.api.run_set_arg)(self.run, arg::Q_SCALE, c_double::from(args.q_scale)) };
        if code != 0 {
            return Err(XrtError::SetArg {
                index: arg::Q_SCALE,
                name: "q_scale",
                code,
            });
        }
        Ok(())
    }

    /// Starts the run and waits for it; anything but completion is an error.
    fn start_and_wait(&mut self, args: &KernelArgs) -> Result<(), XrtError> {
        // SAFETY: `run` is open and every argument has been set.
        let code = unsafe { (self.api.run_start)(self.run) };
        if code != 0 {
            return Err(XrtError::RunStart { code });
        }
        let timeout_ms = u32::try_from(self.config.run_timeout.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: `run` was started above.
        let state = RunState::from_raw(unsafe { (self.api.run_wait_for)(self.run, timeout_ms) });
        match state {
            RunState::Completed => Ok(()),
            pending if pending.is_pending() => {
                let error = XrtError::RunTimeout {
                    op: args.op,
                    timeout_ms,
                    state: pending,
                };
                // The run may still be using the buffers: never touch them again.
                self.poisoned = Some(error.to_string());
                Err(error)
            }
            failed => Err(XrtError::RunFailed {
                op: args.op,
                state: failed,
            }),
        }
    }
}

impl KernelDevice for XrtDevice {
    fn describe(&self) -> String {
        format!(
            "AMD Alveo through XRT: device {}, {}",
            self.config.device_index,
            self.config.xclbin.display()
        )
    }

    fn invoke(
        &mut self,
        args: &KernelArgs,
        input: &[&[f32]],
        output: &mut [f32],
    ) -> Result<StatusWords, XrtError> {
        if let Some(reason) = &self.poisoned {
            return Err(XrtError::Poisoned(reason.clone()));
        }
        self.upload(input)?;
        let out_bytes = std::mem::size_of_val(output);
        self.ensure_capacity(1, out_bytes.max(4))?;
        self.set_args(args)?;
        self.start_and_wait(args)?;
        let mut status: StatusWords = [0; STATUS_WORDS];
        self.download(
            2,
            status.as_mut_ptr().cast::<c_void>(),
            std::mem::size_of_val(&status),
        )?;
        self.download(1, output.as_mut_ptr().cast::<c_void>(), out_bytes)?;
        Ok(status)
    }
}

impl Drop for XrtDevice {
    fn drop(&mut self) {
        // SAFETY: each handle is either null (never opened) or was opened by this value and is
        // closed exactly once, run before buffers before kernel before device. After a timeout
        // the run may still be in flight; closing it is XRT's documented way to abandon it.
        unsafe {
            if !self.run.is_null() {
                (self.api.run_close)(self.run);
            }
            for buffer in &self.buffers {
                (self.api.bo_free)(buffer.handle);
            }
            if !self.kernel.is_null() {
                (self.api.kernel_close)(self.kernel);
            }
            (self.api.device_close)(self.device);
        }
    }
}
