//! Putting a loaded model's weights on the device it runs on (`LoadOptions::device`).
//!
//! Weights are assembled where the checkpoint reader produces them — host memory for GGUF files
//! and for matrices quantized on load, whose row reorders, stacking and expert splits move raw
//! GGML blocks — and placed once, when the model is complete. So the loading code never has to
//! think about devices, and on the CPU placing moves nothing.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::matrix::Matrix;

/// Where a model's weights go and what multiplies by them there.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The device every tensor moves to.
    pub device: Device,
    /// Matrix products through this crate's CPU kernels (only meaningful on the CPU); `false`:
    /// candle's generic ops, as on a GPU.
    pub native_kernels: bool,
}

impl Target {
    /// True when this crate's CPU kernels run here — the host attention over paged KV caches
    /// among them; false when candle's ops do (another device, or `candle_ops`).
    pub fn host_kernels(&self) -> bool {
        self.native_kernels && self.device.is_cpu()
    }
}

/// Something holding weights that can be moved to a device in place.
pub(crate) trait Place {
    /// Moves every tensor held to `target.device` (nothing moves when it is already there).
    fn place(&mut self, target: &Target) -> Result<()>;
}

impl Place for Tensor {
    fn place(&mut self, target: &Target) -> Result<()> {
        if !self.device().same_device(&target.device) {
            *self = self.to_device(&target.device)?;
        }
        Ok(())
    }
}

impl Place for Matrix {
    fn place(&mut self, target: &Target) -> Result<()> {
        match self {
            Matrix::Dense(t) => t.place(target),
            Matrix::Quantized(q) if !q.device().same_device(&target.device) => {
                // The raw blocks, uploaded as they are: the device runs the same format.
                let moved = qtensor_from_ggml(
                    q.dtype(),
                    &q.data()?,
                    q.shape().dims().to_vec(),
                    &target.device,
                )?;
                *q = std::sync::Arc::new(moved);
                Ok(())
            }
            Matrix::Quantized(_) => Ok(()),
        }
    }
}

impl<T: Place> Place for Option<T> {
    fn place(&mut self, target: &Target) -> Result<()> {
        match self {
            Some(inner) => inner.place(target),
            None => Ok(()),
        }
    }
}

impl<T: Place> Place for Vec<T> {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.iter_mut().try_for_each(|item| item.place(target))
    }
}

impl<A: Place, B: Place> Place for (A, B) {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.0.place(target)?;
        self.1.place(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use std::sync::Arc;

    /// On the CPU placing keeps the very same storage (no copy of a 1 GB embedding).
    #[test]
    fn placing_on_the_same_device_moves_nothing() {
        let dense = Tensor::arange(0f32, 64.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 32))
            .unwrap();
        let quantized = Arc::new(QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap());
        let mut matrices = vec![
            Matrix::Dense(dense.clone()),
            Matrix::Quantized(quantized.clone()),
        ];
        let cpu = Target {
            device: Device::Cpu,
            native_kernels: true,
        };
        matrices.place(&cpu).unwrap();
        match &matrices[0] {
            Matrix::Dense(t) => assert_eq!(t.id(), dense.id()),
            other => panic!("dense became {other:?}"),
        }
        match &matrices[1] {
            Matrix::Quantized(q) => assert!(Arc::ptr_eq(q, &quantized)),
            other => panic!("quantized became {other:?}"),
        }
    }
}
