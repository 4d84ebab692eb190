//! Device-side timing of the decode kernels, without the host round trip of `step`.
//!
//! `step` pays one upload, one launch, one download and one synchronisation per layer-token:
//! tens of µs of PCIe and driver latency around ~2 µs of kernel. These helpers measure what the
//! GPU itself needs for the GDN work of a token: the kernels of `layers` enqueued back to back
//! with their inputs already on the device, timed by CUDA events, so launch gaps count (when
//! the host enqueues slower than the GPU runs, the GPU idles between kernels and the events see
//! it) but transfers do not. That is the cost a GPU-resident model (candle on the GPU) would pay.

use hybrid_gdn::{GdnError, Result, SlotStates, TokenInputs};

use crate::backend::{launch_decode, staged_input_len, CudaKernel, CudaLayer, CudaState};
use crate::device::{device_error, NAME};
use crate::graphs;

/// How the kernels of one repetition are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    /// One `cuLaunchKernel` per layer.
    Launches,
    /// One `cuGraphLaunch` replaying the captured launches of all layers.
    Graph,
}

impl CudaKernel {
    /// [`CudaExt::time_device_decode`](crate::CudaExt::time_device_decode) inside the front.
    pub(crate) fn time_device_decode_in(
        &mut self,
        states: &mut SlotStates<'_, CudaLayer, CudaState>,
        layers: &[usize],
        inputs: TokenInputs<'_>,
        iters: usize,
        issue: Issue,
    ) -> Result<f64> {
        if layers.is_empty() || iters == 0 {
            return Err(GdnError::InvalidArgument {
                backend: NAME.into(),
                detail: "time_device_decode needs at least one layer and one iteration".into(),
            });
        }
        let mut offsets = Vec::with_capacity(layers.len());
        let (mut in_len, mut out_len) = (0, 0);
        for &layer in layers {
            let spec = states.spec(layer)?;
            states.get_mut(layer)?;
            let scratch_out = vec![0.0; spec.value_dim()];
            let tokens = inputs.validate(&spec, &scratch_out)?;
            if tokens != 1 {
                return Err(GdnError::NotOneToken(tokens));
            }
            offsets.push((in_len, out_len));
            in_len += staged_input_len(&spec);
            out_len += spec.value_dim();
        }
        self.staging
            .ensure(&self.gpu.ctx, &self.stream, in_len, out_len)?;
        for &(offset, _) in &offsets {
            self.staging.pack(offset, inputs)?;
        }
        let stream = self.stream.clone();
        self.staging.upload(&stream, in_len)?;
        let enqueue = |kernel: &mut CudaKernel,
                       states: &mut SlotStates<'_, CudaLayer, CudaState>|
         -> Result<()> {
            for (&layer, &(i, o)) in layers.iter().zip(&offsets) {
                let (layer, state) = states.get_mut(layer)?;
                launch_decode(
                    &stream,
                    layer.constants,
                    &mut state.memory,
                    &mut kernel.staging,
                    i,
                    o,
                )?;
            }
            Ok(())
        };
        let graph = match issue {
            Issue::Launches => None,
            Issue::Graph => Some(graphs::capture(&stream, || enqueue(self, states))?),
        };
        // One untimed repetition: first-launch costs (module load, graph upload) excluded.
        match &graph {
            None => enqueue(self, states)?,
            Some(g) => g.launch()?,
        }
        self.timer.start(&stream)?;
        for _ in 0..iters {
            match &graph {
                None => enqueue(self, states)?,
                Some(g) => g.launch()?,
            }
        }
        self.timer.stop(&stream)?;
        stream
            .synchronize()
            .map_err(|e| device_error("timing the decode kernels", e))?;
        let ms = self.timer.elapsed_ms()?;
        Ok(f64::from(ms) * 1e3 / iters as f64)
    }
}
