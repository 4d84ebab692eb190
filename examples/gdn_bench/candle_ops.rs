//! The in-process baseline: the same GDN decode step written as plain candle tensor ops, the way
//! a candle user would write it (as candle-transformers models do), with the state kept as
//! candle tensors on the CPU device.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use hybrid_decode::gdn::{LayerConstants, LayerSpec, TokenInputs};

/// One layer's constants and state as tensors.
struct CandleLayer {
    conv_weight: Tensor, // [conv_dim, K]
    neg_a: Tensor,       // [Hv]  −exp(A_log)
    dt_bias: Tensor,     // [Hv]
    conv_state: Tensor,  // [conv_dim, K−1]
    state: Tensor,       // [Hv, dk, dv]
}

/// Every layer of the candle-ops baseline.
pub struct CandleOps {
    spec: LayerSpec,
    device: Device,
    layers: Vec<CandleLayer>,
}

impl CandleOps {
    /// Loads `constants[i]` as layer i.
    pub fn new(spec: LayerSpec, constants: &[LayerConstants]) -> Result<Self> {
        let device = Device::Cpu;
        let (conv_dim, kernel, hv) = (spec.conv_dim(), spec.conv_kernel, spec.num_v_heads);
        let layers = constants
            .iter()
            .map(|c| {
                Ok(CandleLayer {
                    conv_weight: Tensor::from_slice(&c.conv_weight, (conv_dim, kernel), &device)?,
                    neg_a: Tensor::from_slice(&c.a_log, hv, &device)?.exp()?.neg()?,
                    dt_bias: Tensor::from_slice(&c.dt_bias, hv, &device)?,
                    conv_state: Tensor::zeros((conv_dim, kernel - 1), DType::F32, &device)?,
                    state: Tensor::zeros(
                        (hv, spec.head_k_dim, spec.head_v_dim),
                        DType::F32,
                        &device,
                    )?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CandleOps {
            spec,
            device,
            layers,
        })
    }

    /// Zeroes every layer's state.
    pub fn reset(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            layer.conv_state = layer.conv_state.zeros_like()?;
            layer.state = layer.state.zeros_like()?;
        }
        Ok(())
    }

    /// One decode token of `layer`.
    pub fn step(&mut self, layer: usize, inputs: TokenInputs<'_>, out: &mut [f32]) -> Result<()> {
        let spec = self.spec;
        let (hk, hv, dk, dv) = (
            spec.num_k_heads,
            spec.num_v_heads,
            spec.head_k_dim,
            spec.head_v_dim,
        );
        let (conv_dim, key_dim, kernel) = (spec.conv_dim(), spec.key_dim(), spec.conv_kernel);
        let l = &mut self.layers[layer];

        // 1. Causal depthwise conv over [state, x], SiLU, shift the conv state.
        let x = Tensor::from_slice(inputs.mixed_qkv, (conv_dim, 1), &self.device)?;
        let window = Tensor::cat(&[&l.conv_state, &x], 1)?;
        let mixed = (&window * &l.conv_weight)?.sum(1)?.silu()?;
        l.conv_state = window.narrow(1, 1, kernel - 1)?;

        // 2. Split, L2-normalise q and k, scale q, repeat key heads for GVA.
        let l2 = |t: Tensor| -> Result<Tensor> {
            let norm = (t.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
            Ok(t.broadcast_div(&norm)?)
        };
        let ratio = hv / hk;
        let repeat = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((hk, 1, dk))?
                .broadcast_as((hk, ratio, dk))?
                .reshape((hv, dk))?)
        };
        let q =
            repeat((l2(mixed.narrow(0, 0, key_dim)?.reshape((hk, dk))?)? / (dk as f64).sqrt())?)?;
        let k = repeat(l2(mixed.narrow(0, key_dim, key_dim)?.reshape((hk, dk))?)?)?;
        let v = mixed.narrow(0, 2 * key_dim, hv * dv)?.reshape((hv, dv))?;

        // 3. Gating: g = −exp(A_log)·softplus(a + dt_bias), β = sigmoid(b).
        let a = Tensor::from_slice(inputs.a, hv, &self.device)?;
        let b = Tensor::from_slice(inputs.b, hv, &self.device)?;
        let softplus = ((a + &l.dt_bias)?.exp()? + 1.0)?.log()?;
        let decay = (&l.neg_a * softplus)?.exp()?;
        let beta = (b.neg()?.exp()? + 1.0)?.recip()?;

        // 4. Delta rule: S ← e^g S; kv = Sᵀk; δ = β(v − kv); S ← S + kδᵀ; o = Sᵀq.
        let s = l.state.broadcast_mul(&decay.reshape((hv, 1, 1))?)?;
        let kv = k.unsqueeze(1)?.matmul(&s)?.squeeze(1)?;
        let delta = (v - kv)?.broadcast_mul(&beta.unsqueeze(1)?)?;
        let s = (s + k.unsqueeze(2)?.matmul(&delta.unsqueeze(1)?)?)?;
        let o = q.unsqueeze(1)?.matmul(&s)?.flatten_all()?;
        l.state = s;

        out.copy_from_slice(&o.to_vec1::<f32>()?);
        Ok(())
    }
}
