//! How the CUDA backend keeps constants and per-slot state in GPU memory, and the host-side
//! conversions between that layout and the canonical one.
//!
//! - Recurrent state: value-major `Hv × dv × dk` f32 (column j of head h is one contiguous row of
//!   dk floats, one warp's coalesced load), updated in place by the kernels.
//! - Conv state: a ring of K rows × `conv_dim` plus `meta = [pos, blocks_done]` (see `gdn.cu`):
//!   history value i (0 = oldest) of channel c is `ring[(pos + 1 + i) % K][c]`.
//!
//! The conversions are plain functions of host slices so they are unit-tested without a GPU.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use hybrid_gdn::{LayerConstants, LayerSpec, Result, SlotState};

use crate::device::device_error;

/// Layer constants on the device, in the form the kernels read.
#[derive(Debug)]
pub struct CudaConstants {
    /// Conv weight transposed to `K × conv_dim` (tap-major: a warp reads consecutive channels).
    pub conv_weight_t: CudaSlice<f32>,
    /// `−exp(A_log)` per value head.
    pub neg_a: CudaSlice<f32>,
    /// `dt_bias` per value head.
    pub dt_bias: CudaSlice<f32>,
}

impl CudaConstants {
    /// Uploads validated canonical constants; returns them and the bytes copied.
    pub fn upload(
        stream: &Arc<CudaStream>,
        spec: &LayerSpec,
        constants: &LayerConstants,
    ) -> Result<(Self, u64)> {
        let weight_t = transpose(&constants.conv_weight, spec.conv_dim(), spec.conv_kernel);
        let neg_a: Vec<f32> = constants.a_log.iter().map(|a| -a.exp()).collect();
        let copy = |data: &[f32]| {
            stream
                .clone_htod(data)
                .map_err(|e| device_error("uploading layer constants", e))
        };
        let bytes = 4 * (weight_t.len() + neg_a.len() + constants.dt_bias.len()) as u64;
        Ok((
            CudaConstants {
                conv_weight_t: copy(&weight_t)?,
                neg_a: copy(&neg_a)?,
                dt_bias: copy(&constants.dt_bias)?,
            },
            bytes,
        ))
    }
}

/// One slot's state for one layer, in GPU memory.
#[derive(Debug)]
pub struct CudaSlotState {
    /// Value-major recurrent state, `Hv × dv × dk`.
    pub recurrent: CudaSlice<f32>,
    /// Conv ring, `K × conv_dim`.
    pub ring: CudaSlice<f32>,
    /// `[pos, blocks_done]`.
    pub meta: CudaSlice<u32>,
}

impl CudaSlotState {
    /// A zero state (cudarc's `alloc_zeros` memsets on the stream).
    pub fn zeros(stream: &Arc<CudaStream>, spec: &LayerSpec) -> Result<Self> {
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| device_error("allocating slot state in GPU memory", e))
        };
        Ok(CudaSlotState {
            recurrent: alloc(spec.recurrent_state_len())?,
            ring: alloc(spec.conv_kernel * spec.conv_dim())?,
            meta: stream
                .alloc_zeros::<u32>(2)
                .map_err(|e| device_error("allocating slot state in GPU memory", e))?,
        })
    }

    /// Zeroes the state in place (no reallocation).
    pub fn reset(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let err = |e| device_error("zeroing slot state", e);
        stream.memset_zeros(&mut self.recurrent).map_err(err)?;
        stream.memset_zeros(&mut self.ring).map_err(err)?;
        stream.memset_zeros(&mut self.meta).map_err(err)
    }

    /// Downloads the state and converts it to the canonical layout; returns it and the bytes
    /// copied.
    pub fn export(&self, stream: &Arc<CudaStream>, spec: &LayerSpec) -> Result<(SlotState, u64)> {
        let err = |e| device_error("downloading slot state", e);
        let recurrent = stream.clone_dtoh(&self.recurrent).map_err(err)?;
        let ring = stream.clone_dtoh(&self.ring).map_err(err)?;
        let meta = stream.clone_dtoh(&self.meta).map_err(err)?;
        stream.synchronize().map_err(err)?;
        let bytes = 4 * (recurrent.len() + ring.len() + meta.len()) as u64;
        Ok((
            SlotState {
                conv: ring_to_canonical(&ring, meta[0] as usize, spec),
                recurrent: value_major_to_key_major(&recurrent, spec),
            },
            bytes,
        ))
    }

    /// Overwrites the state with a validated canonical one; returns the bytes copied.
    pub fn import(
        &mut self,
        stream: &Arc<CudaStream>,
        spec: &LayerSpec,
        state: &SlotState,
    ) -> Result<u64> {
        let err = |e| device_error("uploading slot state", e);
        let recurrent = key_major_to_value_major(&state.recurrent, spec);
        let ring = canonical_to_ring(&state.conv, spec);
        stream
            .memcpy_htod(&recurrent, &mut self.recurrent)
            .map_err(err)?;
        stream.memcpy_htod(&ring, &mut self.ring).map_err(err)?;
        stream
            .memcpy_htod(&[0u32, 0], &mut self.meta)
            .map_err(err)?;
        // The host vectors die at the end of this call: wait until the copies have read them.
        stream.synchronize().map_err(err)?;
        Ok(4 * (recurrent.len() + ring.len() + 2) as u64)
    }
}

/// `rows × cols` row-major → `cols × rows`.
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut dst = vec![0.0; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
    dst
}

/// Device `Hv × dv × dk` → canonical `Hv × dk × dv`.
pub fn value_major_to_key_major(src: &[f32], spec: &LayerSpec) -> Vec<f32> {
    per_head_transpose(src, spec.head_v_dim, spec.head_k_dim)
}

/// Canonical `Hv × dk × dv` → device `Hv × dv × dk`.
pub fn key_major_to_value_major(src: &[f32], spec: &LayerSpec) -> Vec<f32> {
    per_head_transpose(src, spec.head_k_dim, spec.head_v_dim)
}

fn per_head_transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    src.chunks_exact(rows * cols)
        .flat_map(|head| transpose(head, rows, cols))
        .collect()
}

/// Ring `K × conv_dim` at position `pos` → canonical `conv_dim × (K − 1)`, oldest first.
pub fn ring_to_canonical(ring: &[f32], pos: usize, spec: &LayerSpec) -> Vec<f32> {
    let (conv_dim, kernel) = (spec.conv_dim(), spec.conv_kernel);
    let history = kernel - 1;
    let mut conv = vec![0.0; conv_dim * history];
    for i in 0..history {
        let row = (pos + 1 + i) % kernel;
        for c in 0..conv_dim {
            conv[c * history + i] = ring[row * conv_dim + c];
        }
    }
    conv
}

/// Canonical `conv_dim × (K − 1)` → ring `K × conv_dim` at position 0 (history i in row i + 1).
pub fn canonical_to_ring(conv: &[f32], spec: &LayerSpec) -> Vec<f32> {
    let (conv_dim, kernel) = (spec.conv_dim(), spec.conv_kernel);
    let history = kernel - 1;
    let mut ring = vec![0.0; conv_dim * kernel];
    for i in 0..history {
        for c in 0..conv_dim {
            ring[(i + 1) * conv_dim + c] = conv[c * history + i];
        }
    }
    ring
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LayerSpec {
        LayerSpec {
            num_k_heads: 1,
            num_v_heads: 2,
            head_k_dim: 3,
            head_v_dim: 2,
            conv_kernel: 4,
        }
    }

    #[test]
    fn recurrent_layouts_round_trip() {
        let s = spec();
        let canonical: Vec<f32> = (0..s.recurrent_state_len()).map(|i| i as f32).collect();
        let device = key_major_to_value_major(&canonical, &s);
        // Head 0, column j = 1, key i = 2: canonical [0][2][1] = 5; device [0][1][2] = 5.
        assert_eq!(device[s.head_k_dim + 2], canonical[2 * s.head_v_dim + 1]);
        assert_eq!(value_major_to_key_major(&device, &s), canonical);
    }

    #[test]
    fn ring_round_trips_at_every_position() {
        let s = spec();
        let conv: Vec<f32> = (0..s.conv_state_len()).map(|i| i as f32 + 1.0).collect();
        let ring = canonical_to_ring(&conv, &s);
        assert_eq!(ring_to_canonical(&ring, 0, &s), conv);
        // Rotating the ring by one row and advancing pos describes the same history.
        let conv_dim = s.conv_dim();
        for pos in 1..s.conv_kernel {
            let mut rotated = vec![0.0; ring.len()];
            for row in 0..s.conv_kernel {
                let to = (row + pos) % s.conv_kernel;
                rotated[to * conv_dim..(to + 1) * conv_dim]
                    .copy_from_slice(&ring[row * conv_dim..(row + 1) * conv_dim]);
            }
            assert_eq!(ring_to_canonical(&rotated, pos, &s), conv, "pos {pos}");
        }
    }

    /// The ring protocol of the decode kernel, simulated on the host: each token reads the
    /// K − 1 rows after pos and writes row pos; history must match a shifted window.
    #[test]
    fn ring_protocol_matches_shifting_window() {
        let s = LayerSpec {
            num_k_heads: 1,
            num_v_heads: 1,
            head_k_dim: 1,
            head_v_dim: 1,
            conv_kernel: 4,
        };
        let conv_dim = s.conv_dim();
        let mut ring = vec![0.0f32; 4 * conv_dim];
        let mut pos = 0usize;
        let mut window = vec![0.0f32; 3];
        for t in 1..=9 {
            let x = t as f32;
            for c in 0..conv_dim {
                ring[pos * conv_dim + c] = x;
            }
            pos = (pos + 1) % 4;
            window.remove(0);
            window.push(x);
            let canonical = ring_to_canonical(&ring, pos, &s);
            assert_eq!(&canonical[..3], &window[..], "token {t}");
        }
    }
}
