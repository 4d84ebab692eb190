//! Per-token transfer buffers and the kernel timer.
//!
//! A decode token moves `conv_dim + 2·Hv` floats in and `Hv·dv` out (32 KiB / 16 KiB at the
//! Qwen3-Next shape). Staging them in page-locked host memory lets the copies go straight to DMA
//! (no driver bounce buffer) and lets a CUDA graph capture them. The buffers only grow, and they
//! are allocated once per size, never per token.

use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, CudaViewMut, PinnedHostSlice,
};
use hybrid_gdn::{GdnError, Result, TokenInputs};

use crate::device::{device_error, NAME};

/// Page-locked host buffer with its pointer taken once.
///
/// cudarc's accessors synchronise on an event each time, which is not allowed while a stream is
/// being captured into a graph; this keeps the raw pointer and builds slices from it.
struct Pinned {
    owner: PinnedHostSlice<f32>,
    ptr: *mut f32,
}

// SAFETY: the pointer is owned by `owner` (page-locked memory, valid until `owner` drops) and is
// only dereferenced through `&self` / `&mut self` of the `Pinned`, so moving it to another thread
// moves the only access path with it.
unsafe impl Send for Pinned {}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pinned({} f32)", self.owner.len())
    }
}

impl Pinned {
    fn new(ctx: &Arc<CudaContext>, len: usize, flags: u32) -> Result<Self> {
        // SAFETY: the memory is uninitialised after allocation; it is zeroed right below before
        // anything reads it.
        let mut owner = unsafe { ctx.alloc_pinned_with_flags::<f32>(len.max(1), flags) }
            .map_err(|e| device_error("allocating page-locked host memory", e))?;
        let ptr = owner
            .as_mut_ptr()
            .map_err(|e| device_error("mapping page-locked host memory", e))?;
        let mut pinned = Pinned { owner, ptr };
        pinned.as_mut_slice().fill(0.0);
        Ok(pinned)
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `ptr` points at `owner.len()` f32s of page-locked memory that `owner` keeps
        // alive; f32 has no invalid bit patterns, and the memory was zeroed at creation.
        unsafe { std::slice::from_raw_parts(self.ptr, self.owner.len()) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.owner.len()) }
    }
}

/// Host and device transfer buffers for decode tokens (several layers' worth for
/// `step_layers`).
#[derive(Debug, Default)]
pub struct Staging {
    host_in: Option<Pinned>,
    host_out: Option<Pinned>,
    dev_in: Option<CudaSlice<f32>>,
    dev_out: Option<CudaSlice<f32>>,
}

fn missing() -> GdnError {
    GdnError::Device {
        backend: NAME.into(),
        message: "staging buffers used before allocation".into(),
    }
}

fn out_of_range(what: &str, end: usize, len: usize) -> GdnError {
    GdnError::Device {
        backend: NAME.into(),
        message: format!("{what}: range end {end} beyond staging buffer of {len} floats"),
    }
}

impl Staging {
    /// Makes the buffers hold at least `in_len` / `out_len` floats. Returns true when a buffer
    /// was reallocated (its address changed, so captured graphs are stale).
    pub fn ensure(
        &mut self,
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        in_len: usize,
        out_len: usize,
    ) -> Result<bool> {
        let mut grew = false;
        if self.dev_in.as_ref().is_none_or(|b| b.len() < in_len) {
            // Write-combined: the host only writes it, the GPU reads it over PCIe.
            self.host_in = Some(Pinned::new(
                ctx,
                in_len,
                sys::CU_MEMHOSTALLOC_WRITECOMBINED,
            )?);
            self.dev_in = Some(alloc(stream, in_len)?);
            grew = true;
        }
        if self.dev_out.as_ref().is_none_or(|b| b.len() < out_len) {
            // Cached (no write-combining): the host reads it.
            self.host_out = Some(Pinned::new(ctx, out_len, 0)?);
            self.dev_out = Some(alloc(stream, out_len)?);
            grew = true;
        }
        Ok(grew)
    }

    /// Copies one token's `mixed_qkv | a | b` into the host input buffer at `offset`.
    pub fn pack(&mut self, offset: usize, inputs: TokenInputs<'_>) -> Result<()> {
        let host = self.host_in.as_mut().ok_or_else(missing)?.as_mut_slice();
        let (len, host_len) = (
            inputs.mixed_qkv.len() + inputs.a.len() + inputs.b.len(),
            host.len(),
        );
        let dst = host
            .get_mut(offset..offset + len)
            .ok_or_else(|| out_of_range("pack", offset + len, host_len))?;
        let (x, rest) = dst.split_at_mut(inputs.mixed_qkv.len());
        let (a, b) = rest.split_at_mut(inputs.a.len());
        x.copy_from_slice(inputs.mixed_qkv);
        a.copy_from_slice(inputs.a);
        b.copy_from_slice(inputs.b);
        Ok(())
    }

    /// Copies `out.len()` floats at `offset` of the host output buffer into `out`.
    pub fn unpack(&self, offset: usize, out: &mut [f32]) -> Result<()> {
        let host = self.host_out.as_ref().ok_or_else(missing)?.as_slice();
        let src = host
            .get(offset..offset + out.len())
            .ok_or_else(|| out_of_range("unpack", offset + out.len(), host.len()))?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Enqueues the copy of the first `len` staged input floats to the device.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<()> {
        let host = self.host_in.as_ref().ok_or_else(missing)?.as_slice();
        let dev = self.dev_in.as_mut().ok_or_else(missing)?;
        if len > host.len() || len > dev.len() {
            return Err(out_of_range("upload", len, host.len().min(dev.len())));
        }
        let mut dst = dev.slice_mut(..len);
        stream
            .memcpy_htod(&host[..len], &mut dst)
            .map_err(|e| device_error("uploading token inputs", e))
    }

    /// Enqueues the copy of the first `len` output floats from the device.
    pub fn download(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<()> {
        let host = self.host_out.as_mut().ok_or_else(missing)?.as_mut_slice();
        let dev = self.dev_out.as_ref().ok_or_else(missing)?;
        if len > host.len() || len > dev.len() {
            return Err(out_of_range("download", len, host.len().min(dev.len())));
        }
        let src = dev.slice(..len);
        stream
            .memcpy_dtoh(&src, &mut host[..len])
            .map_err(|e| device_error("downloading token outputs", e))
    }

    /// Device views of the staged inputs `[in_off, in_off + in_len)` and outputs
    /// `[out_off, out_off + out_len)`, for a kernel launch.
    pub fn views(
        &mut self,
        (in_off, in_len): (usize, usize),
        (out_off, out_len): (usize, usize),
    ) -> Result<(CudaView<'_, f32>, CudaViewMut<'_, f32>)> {
        let dev_in = self.dev_in.as_ref().ok_or_else(missing)?;
        let dev_out = self.dev_out.as_mut().ok_or_else(missing)?;
        let input = dev_in
            .try_slice(in_off..in_off + in_len)
            .ok_or_else(|| out_of_range("input view", in_off + in_len, dev_in.len()))?;
        let out_total = dev_out.len();
        let output = dev_out
            .try_slice_mut(out_off..out_off + out_len)
            .ok_or_else(|| out_of_range("output view", out_off + out_len, out_total))?;
        Ok((input, output))
    }
}

fn alloc(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<f32>> {
    stream
        .alloc_zeros::<f32>(len.max(1))
        .map_err(|e| device_error("allocating staging buffers in GPU memory", e))
}

/// Two timing events around the kernels of a call: device time without host overhead.
#[derive(Debug)]
pub struct Timer {
    start: CudaEvent,
    stop: CudaEvent,
}

impl Timer {
    /// Creates the two events (timing enabled).
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        let event = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| device_error("creating a timing event", e))
        };
        Ok(Timer {
            start: event()?,
            stop: event()?,
        })
    }

    /// Records the start on `stream`.
    pub fn start(&self, stream: &Arc<CudaStream>) -> Result<()> {
        self.start
            .record(stream)
            .map_err(|e| device_error("recording a timing event", e))
    }

    /// Records the stop on `stream`.
    pub fn stop(&self, stream: &Arc<CudaStream>) -> Result<()> {
        self.stop
            .record(stream)
            .map_err(|e| device_error("recording a timing event", e))
    }

    /// After the stream was synchronised: `total` plus the time between start and stop. A
    /// failed query leaves `total` as it was (the counter is informative only).
    pub fn accumulate(&self, total: Option<u64>) -> Option<u64> {
        match self.start.elapsed_ms(&self.stop) {
            Ok(ms) => {
                let ns = (f64::from(ms) * 1e6).max(0.0) as u64;
                Some(total.unwrap_or(0).saturating_add(ns))
            }
            Err(_) => total,
        }
    }

    /// Milliseconds between the last start and stop (synchronises on the stop event).
    pub fn elapsed_ms(&self) -> Result<f32> {
        self.start
            .elapsed_ms(&self.stop)
            .map_err(|e| device_error("reading timing events", e))
    }
}
