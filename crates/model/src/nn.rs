//! Small building blocks shared by both architectures: linear layers, the two RMSNorm flavours
//! and the SwiGLU MLP.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Storage, Tensor, D};

use crate::error::Result;
use crate::gemv::{gemv, WeightRows};
use crate::matrix::Matrix;
use crate::placement::{Place, Target};
use crate::weights::WeightStore;

/// Rows up to which [`Linear`] uses the streaming GEMV instead of a GEMM: decode is one row; a
/// few more still read the weights once.
const GEMV_MAX_ROWS: usize = 8;

/// `y = x Wᵀ (+ b)` with W stored `[out, in]` as in HF checkpoints, in any [`Matrix`] format.
///
/// The weight may be kept as several row blocks (`[W₁; W₂; …]`, outputs concatenated) when
/// projections that are fused for speed are stored in different formats, as in llama.cpp's
/// mixed quantizations (`Q4_K_M` keeps some projections at a higher precision).
#[derive(Debug, Clone)]
pub struct Linear {
    blocks: Vec<Matrix>,
    bias: Option<Tensor>,
    /// Multiply through this crate's CPU kernels (when the input is on the CPU); `false` after
    /// placement for candle's generic ops (see [`crate::model::LoadOptions::candle_ops`]).
    native: bool,
}

impl Linear {
    /// Wraps an `[out, in]` weight.
    pub fn new(weight: Matrix, bias: Option<Tensor>) -> Self {
        Linear {
            blocks: vec![weight],
            bias,
            native: true,
        }
    }

    /// The projection whose output is the concatenation of the outputs of `parts` (each
    /// `[out_i, in]`), stacked into one matrix when they share a storage format.
    pub fn stacked(parts: Vec<Matrix>) -> Result<Self> {
        let blocks = match Matrix::stack_rows(&parts)? {
            Some(one) => vec![one],
            None => parts,
        };
        Ok(Linear {
            blocks,
            bias: None,
            native: true,
        })
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
        Ok(Linear::new(weight, bias))
    }

    /// The weight's row blocks (one unless formats differ; see [`Linear::stacked`]).
    pub fn blocks(&self) -> &[Matrix] {
        &self.blocks
    }

    /// `x` is `[T, in]` f32; returns `[T, out]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let native = self.native && x.device().is_cpu();
        let mut outputs = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            outputs.push(matmul_t(&x, block, native)?);
        }
        let y = if outputs.len() == 1 {
            outputs.pop().expect("one output")
        } else {
            Tensor::cat(&outputs, 1)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Rows from which a quantized weight the int8 GEMM does not take (or any, on the portable
/// tier) is widened to f32 chunk by chunk and multiplied with candle's f32 GEMM: a prefill chunk
/// has enough rows that the GEMM's register tiling beats block dot products, and the widening
/// costs one pass over the weights per call. Measured on the 2-core AMD EPYC (AVX2) host,
/// Qwen3.5-0.8B shape, 512-token prefill: Q4_K_M 45 → 64 tok/s (candle's block dots → this),
/// Q8_0 56 → 58 (our Q8_0 GEMM → this), before the int8 GEMM took those types.
const DEQUANTIZED_GEMM_ROWS: usize = 32;

/// Weight rows widened per chunk: 4 MiB of f32 at k = 1024, so the chunk stays in cache.
const DEQUANTIZED_CHUNK_ELEMENTS: usize = 1 << 20;

/// Rows from which quantized weights of the types [`crate::int8_gemm`] takes go through its
/// tiled int8 GEMM on AVX2 and AVX-512 CPUs (below, each row is one more pass of the decode
/// kernels). Unpacking a weight panel costs several decode passes, so batched decode steps (up
/// to 8 sequences) stay on the decode kernels: 0.8B Q8_0 at 4 rows ran 9.7 tok/s aggregate
/// through the GEMM and 36.7 through the decode kernel (Intel Xeon, 2 threads).
const INT8_GEMM_ROWS: usize = GEMV_MAX_ROWS + 1;

/// Runs `f` on the values of the f32 tensor `t` in row-major order, borrowed from its storage
/// when it is a contiguous CPU tensor (every activation the layers hand each other is), else
/// copied once. Decode reads each activation row this way instead of copying it per matmul.
pub(crate) fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if t.dtype() == DType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return f(&cpu.as_slice::<f32>()?[start..end]);
        }
    }
    f(&t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// `x Wᵀ` for contiguous f32 `x` `[T, in]`, through this crate's CPU kernels when `native` (and
/// `x` is on the CPU), else candle's ops.
fn matmul_t(x: &Tensor, weight: &Matrix, native: bool) -> Result<Tensor> {
    match weight {
        Matrix::Quantized(q)
            if native && x.dim(0)? >= INT8_GEMM_ROWS && crate::int8_gemm::supports(q.dtype()) =>
        {
            let (rows, k) = x.dims2()?;
            let (n, _) = q.shape().dims2()?;
            let mut y = vec![0f32; rows * n];
            with_f32_values(x, |xs| {
                crate::int8_gemm::int8_matmul(q.dtype(), &q.data()?, n, k, xs, &mut y)
            })?;
            Ok(Tensor::from_vec(y, (rows, n), x.device())?)
        }
        Matrix::Quantized(q) if native && x.dim(0)? >= DEQUANTIZED_GEMM_ROWS => {
            dequantized_gemm(x, q)
        }
        Matrix::Quantized(q) if native => {
            let (rows, k) = x.dims2()?;
            let (n, _) = q.shape().dims2()?;
            let mut y = vec![0f32; rows * n];
            let weights = q.data()?;
            with_f32_values(x, |xs| match q.dtype() {
                GgmlDType::Q8_0 => crate::qgemm::q8_0_matmul(&weights, n, k, xs, &mut y),
                dtype if crate::kquant_gemv::supports(dtype) => {
                    crate::kquant_gemv::kquant_matmul(dtype, &weights, n, k, xs, &mut y)
                }
                // candle's block dot products for the other types: the activation rows are
                // quantized to the weight type's dot-product partner (Q8_0 / Q8_K).
                dtype => crate::qgemm::blocks_matmul(dtype, &weights, (rows, k, n), xs, &mut y),
            })?;
            Ok(Tensor::from_vec(y, (rows, n), x.device())?)
        }
        Matrix::Quantized(q) => Ok(x.apply_op1_no_bwd(q.as_ref())?),
        Matrix::Dense(w) => match gemv_dense(x, w, native)? {
            Some(y) => Ok(y),
            None if w.dtype() == DType::F32 => Ok(x.matmul(&w.t()?)?),
            // A CPU without our GEMM (the portable tier's prefill): f32 products, as exact as
            // the kernels it stands in for.
            None if native => Ok(x.matmul(&w.to_dtype(DType::F32)?.t()?)?),
            // Elsewhere (a GPU, or `LoadOptions::candle_ops`): activations meet a bf16/f16 weight
            // in its dtype (what cuBLAS multiplies, accumulating in f32), as HF transformers and
            // llama.cpp do on a GPU: widening the weight instead would write an f32 copy of it on
            // every call.
            None => Ok(x
                .to_dtype(w.dtype())?
                .matmul(&w.t()?)?
                .to_dtype(DType::F32)?),
        },
    }
}

/// `x Wᵀ` for many rows of `x` against quantized `W`: chunks of weight rows are widened to f32
/// and multiplied with candle's f32 matmul; the chunk buffer is reused.
fn dequantized_gemm(x: &Tensor, q: &candle_core::quantized::QTensor) -> Result<Tensor> {
    let (n, k) = q.shape().dims2()?;
    let bytes = q.data()?;
    let chunk_rows = (DEQUANTIZED_CHUNK_ELEMENTS / k.max(1)).clamp(1, n.max(1));
    let mut buffer = vec![0f32; chunk_rows * k];
    let mut outputs = Vec::with_capacity(n.div_ceil(chunk_rows));
    let mut first = 0;
    while first < n {
        let rows = chunk_rows.min(n - first);
        let chunk = &mut buffer[..rows * k];
        crate::qgemm::dequantize_rows(q.dtype(), &bytes, k, first, chunk)?;
        let w = Tensor::from_slice(chunk, (rows, k), x.device())?;
        outputs.push(x.matmul(&w.t()?)?);
        first += rows;
    }
    Ok(Tensor::cat(&outputs, 1)?)
}

/// Dense weights on the CPU: a few rows (decode) go through [`crate::gemv`], which streams the
/// weights once, more through [`crate::dense_gemm`] on AVX2 and AVX-512 CPUs; `None` when neither
/// applies or `native` is off (candle's matmul runs).
fn gemv_dense(x: &Tensor, weight: &Tensor, native: bool) -> Result<Option<Tensor>> {
    let (rows, in_dim) = x.dims2()?;
    let gemm = rows > GEMV_MAX_ROWS;
    if (gemm && !crate::dense_gemm::supported()) || !native {
        return Ok(None);
    }
    let out_dim = weight.dim(0)?;
    let mut y = vec![0.0f32; rows * out_dim];
    let (storage, layout) = weight.storage_and_layout();
    let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    let rows_of = match weight.dtype() {
        DType::F32 => WeightRows::F32(&cpu.as_slice::<f32>()?[start..end]),
        DType::BF16 => WeightRows::Bf16(&cpu.as_slice::<half::bf16>()?[start..end]),
        DType::F16 => WeightRows::F16(&cpu.as_slice::<half::f16>()?[start..end]),
        _ => return Ok(None),
    };
    with_f32_values(x, |x| {
        if gemm {
            crate::dense_gemm::dense_matmul(rows_of, in_dim, x, &mut y)
        } else {
            gemv(rows_of, in_dim, x, &mut y)
        }
    })?;
    drop(storage);
    Ok(Some(Tensor::from_vec(y, (rows, out_dim), weight.device())?))
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
        Ok(RmsNorm {
            scale: store.norm_scale(&format!("{prefix}.weight"), dim)?,
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
        let part = |name: &str, shape: &[usize]| {
            store.get_matrix(&format!("{prefix}.{name}.weight"), shape)
        };
        Self::from_parts(
            part("gate_proj", &[intermediate, hidden])?,
            part("up_proj", &[intermediate, hidden])?,
            part("down_proj", &[hidden, intermediate])?,
        )
    }

    /// From `[I, H]` gate and up weights and a `[H, I]` down weight.
    pub fn from_parts(gate: Matrix, up: Matrix, down: Matrix) -> Result<Self> {
        let intermediate = gate.dims().first().copied().unwrap_or(0);
        Ok(Mlp {
            gate_up: Linear::stacked(vec![gate, up])?,
            down: Linear::new(down, None),
            intermediate,
        })
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

impl Place for Linear {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.native = target.native_kernels;
        self.blocks.place(target)?;
        self.bias.place(target)
    }
}

impl Place for RmsNorm {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.scale.place(target)
    }
}

impl Place for GatedRmsNorm {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.weight.place(target)
    }
}

impl Place for Mlp {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.gate_up.place(target)?;
        self.down.place(target)
    }
}
