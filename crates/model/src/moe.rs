//! Sparse mixture of experts with a shared expert: softmax router, top-k (optionally
//! renormalised), per-expert SwiGLU, plus `sigmoid(shared_expert_gate(x)) · shared_expert(x)`.
//!
//! Expert weights load from either on-disk layout: per-expert
//! `experts.N.{gate,up,down}_proj.weight` (the released checkpoints), fused 3-D
//! `experts.gate_up_proj` `[E, 2I, H]` / `experts.down_proj` `[E, H, I]` (transformers ≥ 5 in
//! memory), or GGUF's stacked `ffn_{gate,up,down}_exps` (one `[E, out, in]` tensor each).

use candle_core::{DType, Tensor};

use crate::config::MoeConfig;
use crate::error::Result;
use crate::nn::{sigmoid, Linear, Mlp};
use crate::placement::{Place, Target};
use crate::weights::WeightStore;

/// One sparse MoE block.
#[derive(Debug, Clone)]
pub struct SparseMoe {
    router: Linear,
    experts: Vec<Mlp>,
    shared: Option<(Mlp, Linear)>,
    top_k: usize,
    norm_topk_prob: bool,
}

impl SparseMoe {
    /// Loads `<prefix>.gate`, `<prefix>.experts.*` and `<prefix>.shared_expert{,_gate}`.
    pub fn load(store: &WeightStore, prefix: &str, hidden: usize, moe: &MoeConfig) -> Result<Self> {
        let (e, i) = (moe.num_experts, moe.moe_intermediate_size);
        let router = Linear::load(store, &format!("{prefix}.gate"), hidden, e, false)?;
        let fused = format!("{prefix}.experts.gate_up_proj");
        let stacked = format!("{prefix}.experts.gate_proj.weight");
        let experts = if store.contains(&fused) {
            let gate_up = store.get_matrix(&fused, &[e, 2 * i, hidden])?;
            let down = store.get_matrix(&format!("{prefix}.experts.down_proj"), &[e, hidden, i])?;
            (0..e)
                .map(|n| {
                    let both = gate_up.get(n)?;
                    let gate: Vec<u32> = (0..i as u32).collect();
                    let up: Vec<u32> = (i as u32..2 * i as u32).collect();
                    Mlp::from_parts(
                        both.select_rows(&gate)?,
                        both.select_rows(&up)?,
                        down.get(n)?,
                    )
                })
                .collect::<Result<_>>()?
        } else if store.contains(&stacked) {
            // GGUF: `ffn_{gate,up,down}_exps`, one [E, out, in] tensor per projection.
            let part = |name: &str, shape: &[usize]| {
                store.get_matrix(&format!("{prefix}.experts.{name}.weight"), shape)
            };
            let gate = part("gate_proj", &[e, i, hidden])?;
            let up = part("up_proj", &[e, i, hidden])?;
            let down = part("down_proj", &[e, hidden, i])?;
            (0..e)
                .map(|n| Mlp::from_parts(gate.get(n)?, up.get(n)?, down.get(n)?))
                .collect::<Result<_>>()?
        } else {
            (0..e)
                .map(|n| Mlp::load(store, &format!("{prefix}.experts.{n}"), hidden, i))
                .collect::<Result<_>>()?
        };
        let shared = if moe.shared_expert_intermediate_size > 0 {
            let mlp = Mlp::load(
                store,
                &format!("{prefix}.shared_expert"),
                hidden,
                moe.shared_expert_intermediate_size,
            )?;
            let gate = Linear::load(
                store,
                &format!("{prefix}.shared_expert_gate"),
                hidden,
                1,
                false,
            )?;
            Some((mlp, gate))
        } else {
            None
        };
        Ok(SparseMoe {
            router,
            experts,
            shared,
            top_k: moe.num_experts_per_tok,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// `x` is `[T, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (tokens, _) = x.dims2()?;
        let logits = self
            .router
            .forward(x)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        // Per expert: the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (t, row) in logits.iter().enumerate() {
            for (expert, weight) in self.top_k(row) {
                routed[expert].0.push(t as u32);
                routed[expert].1.push(weight);
            }
        }
        let mut out = x.zeros_like()?;
        // Ascending expert order, as HF accumulates.
        for (expert, (token_ids, weights)) in routed.iter().enumerate() {
            if token_ids.is_empty() {
                continue;
            }
            let ids = Tensor::new(token_ids.as_slice(), x.device())?;
            let rows = x.index_select(&ids, 0)?;
            let weights = Tensor::from_slice(weights, (weights.len(), 1), x.device())?;
            let y = self.experts[expert]
                .forward(&rows)?
                .broadcast_mul(&weights)?;
            out = out.index_add(&ids, &y, 0)?;
        }
        if let Some((mlp, gate)) = &self.shared {
            let shared = mlp
                .forward(x)?
                .broadcast_mul(&sigmoid(&gate.forward(x)?)?)?;
            out = (out + shared)?;
        }
        debug_assert_eq!(out.dim(0).ok(), Some(tokens));
        Ok(out)
    }

    /// The `top_k` experts of one token's router logits with their weights.
    fn top_k(&self, logits: &[f32]) -> Vec<(usize, f32)> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut ranked: Vec<(usize, f32)> = exp.iter().map(|e| e / sum).enumerate().collect();
        // Highest probability first; ties keep the lower expert index first.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(self.top_k);
        if self.norm_topk_prob {
            let total: f32 = ranked.iter().map(|(_, p)| p).sum();
            for (_, p) in &mut ranked {
                *p /= total;
            }
        }
        ranked
    }
}

impl Place for SparseMoe {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.router.place(target)?;
        self.experts.place(target)?;
        self.shared.place(target)
    }
}
