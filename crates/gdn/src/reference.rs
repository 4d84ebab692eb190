//! The `reference` backend: DESIGN §3 written out literally in scalar code. It is the oracle every
//! other backend is tested against, so clarity wins over speed everywhere in this file.

use crate::backend::{BackendInfo, PrefillStrategy};
use crate::checked::Checked;
use crate::error::Result;
use crate::kernel::{Batch, GdnKernel, Layer};
use crate::math::{l2_normalize, log_decay, query_scale, sigmoid, silu};
use crate::spec::{LayerConstants, LayerSpec};
use crate::state::SlotState;

/// The scalar oracle backend: the checked front over [`ReferenceKernel`].
pub type ReferenceBackend = Checked<ReferenceKernel>;

/// Scalar oracle kernel; keeps every state in the canonical layout on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReferenceKernel;

impl ReferenceKernel {
    /// Registry name.
    pub const NAME: &'static str = "reference";
}

impl GdnKernel for ReferenceKernel {
    type Constants = LayerConstants;
    type State = SlotState;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: Self::NAME.into(),
            device: "host CPU, scalar, 1 thread".into(),
            state_on_host: true,
            prefill: PrefillStrategy::Sequential,
            host_threads: 1,
        }
    }

    fn load(
        &mut self,
        _layer: usize,
        _spec: &LayerSpec,
        constants: &LayerConstants,
        _live_slots: usize,
    ) -> Result<LayerConstants> {
        Ok(constants.clone())
    }

    fn new_state(&mut self, layer: Layer<'_, LayerConstants>) -> Result<SlotState> {
        Ok(SlotState::zeros(layer.spec))
    }

    fn reset(&mut self, layer: Layer<'_, LayerConstants>, state: &mut SlotState) -> Result<()> {
        *state = SlotState::zeros(layer.spec);
        Ok(())
    }

    /// Members one after another, tokens one after another: the oracle has no batched form.
    fn run(
        &mut self,
        layer: Layer<'_, LayerConstants>,
        batch: &mut Batch<'_, '_, SlotState>,
    ) -> Result<()> {
        let spec = layer.spec;
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        for member in batch.iter_mut() {
            let inputs = member.inputs;
            for t in 0..inputs.a.len() / hv {
                reference_token(
                    spec,
                    layer.constants,
                    member.state,
                    &inputs.mixed_qkv[t * conv_dim..(t + 1) * conv_dim],
                    &inputs.a[t * hv..(t + 1) * hv],
                    &inputs.b[t * hv..(t + 1) * hv],
                    &mut member.out[t * value_dim..(t + 1) * value_dim],
                );
            }
        }
        Ok(())
    }

    fn read_state(
        &mut self,
        _layer: Layer<'_, LayerConstants>,
        state: &SlotState,
    ) -> Result<SlotState> {
        Ok(state.clone())
    }

    fn write_state(
        &mut self,
        _layer: Layer<'_, LayerConstants>,
        state: &mut SlotState,
        canonical: &SlotState,
    ) -> Result<()> {
        state.clone_from(canonical);
        Ok(())
    }
}

/// One token of DESIGN §3, step by step, on the canonical state.
fn reference_token(
    spec: &LayerSpec,
    constants: &LayerConstants,
    state: &mut SlotState,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
) {
    let kernel = spec.conv_kernel;
    let history = kernel - 1;
    let (dk, dv) = (spec.head_k_dim, spec.head_v_dim);

    // 1. Depthwise causal conv over [conv state, x], SiLU, then shift the conv state.
    let mut activated = vec![0.0f32; spec.conv_dim()];
    for (c, value) in activated.iter_mut().enumerate() {
        let weights = &constants.conv_weight[c * kernel..(c + 1) * kernel];
        let past = &mut state.conv[c * history..(c + 1) * history];
        let mut sum = 0.0f32;
        for (w, p) in weights[..history].iter().zip(past.iter()) {
            sum += w * p;
        }
        sum += weights[history] * x[c];
        *value = silu(sum);
        if history > 0 {
            past.rotate_left(1);
            past[history - 1] = x[c];
        }
    }

    // 2. Split q, k, v; L2-normalise q and k per key head; scale q by 1/√dk.
    let key_dim = spec.key_dim();
    let (q_all, rest) = activated.split_at_mut(key_dim);
    let (k_all, v_all) = rest.split_at_mut(key_dim);
    for head in 0..spec.num_k_heads {
        l2_normalize(&mut q_all[head * dk..(head + 1) * dk], query_scale(dk));
        l2_normalize(&mut k_all[head * dk..(head + 1) * dk], 1.0);
    }

    let ratio = spec.gva_ratio();
    for h in 0..spec.num_v_heads {
        // 3. Gating.
        let g = log_decay(a[h], constants.a_log[h], constants.dt_bias[h]);
        let beta = sigmoid(b[h]);

        // 4. Value head h reads key head ⌊h / r⌋.
        let key_head = h / ratio;
        let q = &q_all[key_head * dk..(key_head + 1) * dk];
        let k = &k_all[key_head * dk..(key_head + 1) * dk];
        let v = &v_all[h * dv..(h + 1) * dv];
        let s = &mut state.recurrent[h * dk * dv..(h + 1) * dk * dv];

        // S ← e^g · S
        let decay = g.exp();
        for value in s.iter_mut() {
            *value *= decay;
        }
        // kv = Sᵀk ; δ = β (v − kv) ; S ← S + k δᵀ
        for j in 0..dv {
            let kv: f32 = (0..dk).map(|i| s[i * dv + j] * k[i]).sum();
            let delta = beta * (v[j] - kv);
            for i in 0..dk {
                s[i * dv + j] += k[i] * delta;
            }
        }
        // 5. o = Sᵀq
        for j in 0..dv {
            out[h * dv + j] = (0..dk).map(|i| s[i * dv + j] * q[i]).sum();
        }
    }
}
