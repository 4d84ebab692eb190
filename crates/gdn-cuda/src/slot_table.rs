//! The slot table of a batched decode launch: where each member's state lives on the device.
//!
//! `gdn_decode_batch` runs one decode token for several slots of one layer in one launch; grid
//! row `m` works on member `m`, whose ring, recurrent state and meta words it finds in this
//! table as device addresses: `[rings (one per member) | states | metas]`. The table is
//! rebuilt and uploaded for every batched call (24 bytes per member, on the same stream as the
//! launch), because which slots form a batch changes from step to step.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use hybrid_gdn::{GdnError, Result};

use crate::device::{device_error, NAME};
use crate::state::CudaSlotState;

/// Host and device copies of one batch's slot table.
#[derive(Debug, Default)]
pub struct SlotTable {
    host: Vec<u64>,
    device: Option<CudaSlice<u64>>,
}

impl SlotTable {
    /// Writes the table for `states` (member order) and enqueues its upload on `stream`.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, states: &[&CudaSlotState]) -> Result<()> {
        let members = states.len();
        self.host.clear();
        self.host.resize(3 * members, 0);
        for (m, state) in states.iter().enumerate() {
            // The addresses only: the launch that reads them runs on `stream` too, after every
            // earlier use of these buffers (the backend keeps all of them on its one stream).
            self.host[m] = state.ring.device_ptr(stream).0;
            self.host[members + m] = state.recurrent.device_ptr(stream).0;
            self.host[2 * members + m] = state.meta.device_ptr(stream).0;
        }
        if self
            .device
            .as_ref()
            .is_none_or(|d| d.len() < self.host.len())
        {
            self.device = Some(
                stream
                    .alloc_zeros::<u64>(self.host.len().max(1))
                    .map_err(|e| device_error("allocating a batch's slot table", e))?,
            );
        }
        let device = self.device.as_mut().ok_or_else(missing)?;
        let mut dst = device.slice_mut(..self.host.len());
        stream
            .memcpy_htod(&self.host[..], &mut dst)
            .map_err(|e| device_error("uploading a batch's slot table", e))
    }

    /// The uploaded table, as `gdn_decode_batch`'s `slots` argument.
    pub fn device(&self) -> Result<&CudaSlice<u64>> {
        self.device.as_ref().ok_or_else(missing)
    }
}

fn missing() -> GdnError {
    GdnError::Device {
        backend: NAME.into(),
        message: "batch slot table used before upload".into(),
    }
}
