//! Device-side timing of the decode kernels, without the host round trip of `step`.
//!
//! `step` pays one upload, one launch, one download and one synchronisation per layer-token:
//! tens of µs of PCIe and driver latency around ~2 µs of kernel. These helpers measure what the
//! GPU itself needs for the GDN work of a token: the kernels of `layers` enqueued back to back
//! with their inputs already on the device, timed by CUDA events, so launch gaps count (when
//! the host enqueues slower than the GPU runs, the GPU idles between kernels and the events see
//! it) but transfers do not. That is the cost a GPU-resident model (candle on the GPU) would pay.

use hybrid_gdn::{GdnError, Result, SlotId, TokenInputs};

use crate::backend::{launch_decode, staged_input_len, CudaBackend};
use crate::device::{device_error, no_panic, NAME};
use crate::graphs;

/// How the kernels of one repetition are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    /// One `cuLaunchKernel` per layer.
    Launches,
    /// One `cuGraphLaunch` replaying the captured launches of all layers.
    Graph,
}

impl CudaBackend {
    /// Runs `iters` repetitions of one decode token through every layer in `layers` of `slot`
    /// (each layer gets the same one-token `inputs`, staged once) and returns the mean µs per
    /// repetition, from CUDA events around all repetitions. The slot's state advances
    /// `iters` tokens; outputs are not downloaded.
    pub fn time_device_decode(
        &mut self,
        slot: SlotId,
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
        let mut in_offsets = Vec::with_capacity(layers.len());
        let mut out_offsets = Vec::with_capacity(layers.len());
        let (mut in_len, mut out_len) = (0, 0);
        for &layer in layers {
            let (spec, _, _) = self.table.get(layer, slot)?;
            let scratch_out = vec![0.0; spec.value_dim()];
            let tokens = inputs.validate(spec, &scratch_out)?;
            if tokens != 1 {
                return Err(GdnError::NotOneToken(tokens));
            }
            in_offsets.push(in_len);
            out_offsets.push(out_len);
            in_len += staged_input_len(spec);
            out_len += spec.value_dim();
        }
        no_panic("timing the decode kernels", || {
            self.staging
                .ensure(&self.gpu.ctx, &self.stream, in_len, out_len)?;
            for &offset in &in_offsets {
                self.staging.pack(offset, inputs)?;
            }
            let stream = self.stream.clone();
            self.staging.upload(&stream, in_len)?;
            let enqueue = |backend: &mut CudaBackend| -> Result<()> {
                for ((&layer, &i), &o) in layers.iter().zip(&in_offsets).zip(&out_offsets) {
                    let (_, entry, state) = backend.table.get_mut(layer, slot)?;
                    let state = state.as_mut().ok_or(GdnError::UnknownSlot(slot))?;
                    launch_decode(&stream, entry, state, &mut backend.staging, i, o)?;
                }
                Ok(())
            };
            let graph = match issue {
                Issue::Launches => None,
                Issue::Graph => Some(graphs::capture(&stream, || enqueue(self))?),
            };
            // One untimed repetition: first-launch costs (module load, graph upload) excluded.
            match &graph {
                None => enqueue(self)?,
                Some(g) => g.launch()?,
            }
            self.timer.start(&stream)?;
            for _ in 0..iters {
                match &graph {
                    None => enqueue(self)?,
                    Some(g) => g.launch()?,
                }
            }
            self.timer.stop(&stream)?;
            stream
                .synchronize()
                .map_err(|e| device_error("timing the decode kernels", e))?;
            let ms = self.timer.elapsed_ms()?;
            self.counters.steps += ((iters + 1) * layers.len()) as u64;
            Ok(f64::from(ms) * 1e3 / iters as f64)
        })
    }
}
