//! Small building blocks shared by both architectures: linear layers, the two RMSNorm flavours
//! and the SwiGLU MLP.

use candle_core::{DType, Storage, Tensor, D};

use crate::error::Result;
use crate::gemv::{gemv, WeightRows};
use crate::weights::WeightStore;

/// Rows up to which [`Linear`] uses the streaming GEMV instead of candle's matmul: decode is one
/// row; a few more still read the weights once.
const GEMV_MAX_ROWS: usize = 8;

/// `y = x Wᵀ (+ b)` with W stored `[out, in]` as in HF checkpoints.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Wraps an `[out, in]` weight.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// Loads `<prefix>.weight` (and `<prefix>.bias` when `bias`) with shape `[out, in]`.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = store.get_matrix(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(store.get(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `x` is `[T, in]` f32; returns `[T, out]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.forward_gemv(x)? {
            Some(y) => y,
            None => x.matmul(&self.weight.to_dtype(DType::F32)?.t()?)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The decode path: a few rows against f32 or bf16 weights on the CPU go through
    /// [`crate::gemv`], which streams the weights once; `None` when it does not apply.
    fn forward_gemv(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (rows, in_dim) = x.dims2()?;
        if rows > GEMV_MAX_ROWS || !x.device().is_cpu() {
            return Ok(None);
        }
        let out_dim = self.weight.dim(0)?;
        let x = x
            .to_dtype(DType::F32)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut y = vec![0.0f32; rows * out_dim];
        let (storage, layout) = self.weight.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        match self.weight.dtype() {
            DType::F32 => gemv(
                WeightRows::F32(&cpu.as_slice::<f32>()?[start..end]),
                in_dim,
                &x,
                &mut y,
            ),
            DType::BF16 => gemv(
                WeightRows::Bf16(&cpu.as_slice::<half::bf16>()?[start..end]),
                in_dim,
                &x,
                &mut y,
            ),
            _ => return Ok(None),
        }
        drop(storage);
        Ok(Some(Tensor::from_vec(
            y,
            (rows, out_dim),
            self.weight.device(),
        )?))
    }
}

/// Zero-centred RMSNorm (every norm of these models except the GDN output norm):
/// `x̂ · (1 + w)`, computed in f32 and cast back.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// `1 + w` in f32, precomputed.
    scale: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `<prefix>.weight` of length `dim`.
    pub fn load(store: &WeightStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let w = store.get_as(&format!("{prefix}.weight"), &[dim], DType::F32)?;
        Ok(RmsNorm {
            scale: (w + 1.0)?,
            eps,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let normed = rms_normalize(&x, self.eps)?;
        Ok(normed.broadcast_mul(&self.scale)?.to_dtype(dtype)?)
    }
}

/// `x · rsqrt(mean(x²) + eps)` over the last dimension (f32 in, f32 out).
fn rms_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?)
}

/// The GDN output norm: `norm(o) · w · silu(z)` per value head with a **plain** weight `w`.
#[derive(Debug, Clone)]
pub struct GatedRmsNorm {
    weight: Tensor,
    eps: f64,
}

impl GatedRmsNorm {
    /// Loads `<prefix>.weight` of length `dim` (the value head dim).
    pub fn load(store: &WeightStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(GatedRmsNorm {
            weight: store.get(&format!("{prefix}.weight"), &[dim])?,
            eps,
        })
    }

    /// `o` is the backend output (f32, `[..., dv]`), `z` the gate in the compute dtype.
    pub fn forward(&self, o: &Tensor, z: &Tensor) -> Result<Tensor> {
        let dtype = z.dtype();
        let normed = rms_normalize(&o.to_dtype(DType::F32)?, self.eps)?;
        // HF multiplies the weight in the compute dtype, then the gate in f32.
        let weighted = normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?;
        let gated = weighted
            .to_dtype(DType::F32)?
            .mul(&z.to_dtype(DType::F32)?.silu()?)?;
        Ok(gated.to_dtype(dtype)?)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))`, with gate and up fused into one matmul.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
}

impl Mlp {
    /// Loads `<prefix>.{gate,up,down}_proj`.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
    ) -> Result<Self> {
        let gate = store.get(
            &format!("{prefix}.gate_proj.weight"),
            &[intermediate, hidden],
        )?;
        let up = store.get(&format!("{prefix}.up_proj.weight"), &[intermediate, hidden])?;
        let down = Linear::load(
            store,
            &format!("{prefix}.down_proj"),
            intermediate,
            hidden,
            false,
        )?;
        Ok(Self::from_parts(
            Tensor::cat(&[gate, up], 0)?,
            down.weight().clone(),
        ))
    }

    /// From a fused `[2I, H]` gate-up weight (gate rows first) and a `[H, I]` down weight.
    pub fn from_parts(gate_up: Tensor, down: Tensor) -> Self {
        let intermediate = gate_up.dim(0).unwrap_or(0) / 2;
        Mlp {
            gate_up: Linear::new(gate_up, None),
            down: Linear::new(down, None),
            intermediate,
        }
    }

    /// `x` is `[T, H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        let gate = gate_up.narrow(1, 0, self.intermediate)?;
        let up = gate_up.narrow(1, self.intermediate, self.intermediate)?;
        self.down.forward(&(gate.silu()? * up)?)
    }
}

/// Logistic sigmoid, `1 / (1 + e^−x)` (PyTorch's formula).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}
