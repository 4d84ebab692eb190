//! The `reference` backend: DESIGN §3 written out literally in scalar code. It is the oracle every
//! other backend is tested against, so clarity wins over speed everywhere in this file.

use std::time::Instant;

use crate::backend::{BackendInfo, Counters, GdnBackend, PrefillStrategy};
use crate::error::{GdnError, Result};
use crate::math::{l2_normalize, log_decay, query_scale, sigmoid, silu};
use crate::slots::{LayerTable, SlotId};
use crate::spec::{LayerConstants, LayerSpec, TokenInputs};
use crate::state::SlotState;

/// Scalar oracle backend; keeps every state in the canonical layout on the host.
#[derive(Debug, Default)]
pub struct ReferenceBackend {
    table: LayerTable<LayerConstants, SlotState>,
    counters: Counters,
}

impl ReferenceBackend {
    /// Registry name.
    pub const NAME: &'static str = "reference";

    /// An empty backend with no layers and no slots.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ReferenceBackend {
    /// Validates, then runs the tokens one after another; returns how many there were.
    fn run_tokens(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
        exactly_one: bool,
    ) -> Result<usize> {
        let started = Instant::now();
        let (spec, constants, state) = self.table.get_mut(layer, slot)?;
        let tokens = inputs.validate(spec, out)?;
        if exactly_one && tokens != 1 {
            return Err(GdnError::NotOneToken(tokens));
        }
        let (conv_dim, hv, value_dim) = (spec.conv_dim(), spec.num_v_heads, spec.value_dim());
        for t in 0..tokens {
            reference_token(
                spec,
                constants,
                state,
                &inputs.mixed_qkv[t * conv_dim..(t + 1) * conv_dim],
                &inputs.a[t * hv..(t + 1) * hv],
                &inputs.b[t * hv..(t + 1) * hv],
                &mut out[t * value_dim..(t + 1) * value_dim],
            );
        }
        self.counters.add_host_time(started);
        Ok(tokens)
    }
}

impl GdnBackend for ReferenceBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: Self::NAME.into(),
            device: "host CPU, scalar, 1 thread".into(),
            state_on_host: true,
            prefill: PrefillStrategy::Sequential,
            host_threads: 1,
        }
    }

    fn load_layer(
        &mut self,
        layer: usize,
        spec: LayerSpec,
        constants: &LayerConstants,
    ) -> Result<()> {
        spec.validate()?;
        constants.validate(&spec)?;
        self.table
            .insert_layer(layer, spec, constants.clone(), SlotState::zeros)
    }

    fn alloc_slot(&mut self) -> Result<SlotId> {
        self.table.alloc_slot(SlotState::zeros)
    }

    fn reset_slot(&mut self, slot: SlotId) -> Result<()> {
        self.table
            .for_each_state_mut(slot, |spec, state| *state = SlotState::zeros(spec))
    }

    fn free_slot(&mut self, slot: SlotId) -> Result<()> {
        self.table.free_slot(slot)
    }

    fn step(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.run_tokens(layer, slot, inputs, out, true)?;
        self.counters.steps += 1;
        Ok(())
    }

    fn prefill(
        &mut self,
        layer: usize,
        slot: SlotId,
        inputs: TokenInputs<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let tokens = self.run_tokens(layer, slot, inputs, out, false)?;
        self.counters.prefill_tokens += tokens as u64;
        Ok(())
    }

    fn export_state(&self, layer: usize, slot: SlotId) -> Result<SlotState> {
        let (_, _, state) = self.table.get(layer, slot)?;
        Ok(state.clone())
    }

    fn import_state(&mut self, layer: usize, slot: SlotId, imported: &SlotState) -> Result<()> {
        let (spec, _, state) = self.table.get_mut(layer, slot)?;
        imported.validate(spec)?;
        state.clone_from(imported);
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters
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
