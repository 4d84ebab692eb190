//! Weight matrices in whatever format they were stored or loaded in: dense candle tensors
//! (f32, bf16, f16) or GGML blocks (Q8_0, Q4_K, …) held as candle [`QTensor`]s.
//!
//! The model only needs a handful of operations on a weight besides multiplying by it: pick or
//! reorder whole rows (Qwen3-Next's interleaved projections, llama.cpp's reordered value heads),
//! stack row blocks, take one expert of a stacked `[E, out, in]` tensor, and read rows for the
//! embedding lookup. For GGML blocks all of these move whole rows of raw blocks, so a quantized
//! weight is never dequantized or re-quantized on load.

use std::sync::Arc;

use candle_core::quantized::k_quants::GgmlType;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// One weight matrix (or a stack of them along the first dimension).
#[derive(Debug, Clone)]
pub enum Matrix {
    /// A candle tensor in f32, bf16 or f16, `[out, in]` (or `[E, out, in]`).
    Dense(Tensor),
    /// GGML quantized blocks, `[out, in]` (or `[E, out, in]`), rows of whole blocks.
    Quantized(Arc<QTensor>),
}

impl Matrix {
    /// The shape, outermost dimension first (`[out, in]`).
    pub fn dims(&self) -> &[usize] {
        match self {
            Matrix::Dense(t) => t.dims(),
            Matrix::Quantized(q) => q.shape().dims(),
        }
    }

    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        match self {
            Matrix::Dense(t) => t.device().clone(),
            Matrix::Quantized(q) => q.device(),
        }
    }

    /// The storage format's name as llama.cpp prints it (`F32`, `BF16`, `Q8_0`, `Q4_K`, …).
    pub fn format_name(&self) -> &'static str {
        match self {
            Matrix::Dense(t) => match t.dtype() {
                DType::F32 => "F32",
                DType::BF16 => "BF16",
                DType::F16 => "F16",
                _ => "other",
            },
            Matrix::Quantized(q) => ggml_name(q.dtype()),
        }
    }

    /// Bytes of weight storage.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quantized(q) => q.storage_size_in_bytes(),
        }
    }

    /// True when both are stored the same way, so their rows can be stacked into one matrix.
    fn same_format(&self, other: &Matrix) -> bool {
        match (self, other) {
            (Matrix::Dense(a), Matrix::Dense(b)) => a.dtype() == b.dtype(),
            (Matrix::Quantized(a), Matrix::Quantized(b)) => a.dtype() == b.dtype(),
            _ => false,
        }
    }

    /// The rows `rows` of a 2-D matrix, in that order.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Matrix> {
        match self {
            Matrix::Dense(t) => {
                let ids = Tensor::new(rows, t.device())?;
                Ok(Matrix::Dense(t.index_select(&ids, 0)?.contiguous()?))
            }
            Matrix::Quantized(q) => {
                let (out, cols) = q.shape().dims2()?;
                let bytes = q.data()?;
                let row = bytes.len() / out.max(1);
                let mut picked = Vec::with_capacity(rows.len() * row);
                for &r in rows {
                    let r = r as usize;
                    if r >= out {
                        return Err(candle_core::Error::Msg(format!(
                            "row {r} of a matrix with {out} rows"
                        ))
                        .into());
                    }
                    picked.extend_from_slice(&bytes[r * row..(r + 1) * row]);
                }
                quantized_copy(&picked, q.dtype(), &[rows.len(), cols])
            }
        }
    }

    /// The same values with the shape `dims` (same element count, same innermost row length).
    pub fn reshape(&self, dims: &[usize]) -> Result<Matrix> {
        match self {
            Matrix::Dense(t) => Ok(Matrix::Dense(t.reshape(dims)?)),
            Matrix::Quantized(q) => quantized_copy(&q.data()?, q.dtype(), dims),
        }
    }

    /// Element `n` of the outermost dimension (one expert of a stacked `[E, out, in]` tensor).
    pub fn get(&self, n: usize) -> Result<Matrix> {
        match self {
            Matrix::Dense(t) => Ok(Matrix::Dense(t.get(n)?)),
            Matrix::Quantized(q) => {
                let dims = q.shape().dims();
                let Some((&outer, inner)) = dims.split_first() else {
                    return Err(
                        candle_core::Error::Msg("cannot index a 0-d tensor".to_string()).into(),
                    );
                };
                if n >= outer {
                    return Err(candle_core::Error::Msg(format!("index {n} out of {outer}")).into());
                }
                let bytes = q.data()?;
                let each = bytes.len() / outer;
                quantized_copy(&bytes[n * each..(n + 1) * each], q.dtype(), inner)
            }
        }
    }

    /// Stacks 2-D matrices with the same column count along the rows when they share a format;
    /// `None` when the formats differ (the caller keeps them as separate blocks).
    pub fn stack_rows(parts: &[Matrix]) -> Result<Option<Matrix>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if !parts.iter().all(|p| p.same_format(first)) {
            return Ok(None);
        }
        if parts.len() == 1 {
            return Ok(Some(first.clone()));
        }
        match first {
            Matrix::Dense(_) => {
                let tensors: Vec<&Tensor> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Matrix::Dense(t) => Some(t),
                        Matrix::Quantized(_) => None,
                    })
                    .collect();
                Ok(Some(Matrix::Dense(Tensor::cat(&tensors, 0)?)))
            }
            Matrix::Quantized(q) => {
                let cols = q.shape().dims2()?.1;
                let mut bytes = Vec::new();
                let mut rows = 0;
                for part in parts {
                    let Matrix::Quantized(p) = part else {
                        return Ok(None);
                    };
                    let (r, c) = p.shape().dims2()?;
                    if c != cols {
                        return Err(candle_core::Error::Msg(format!(
                            "stacking matrices of {c} and {cols} columns"
                        ))
                        .into());
                    }
                    rows += r;
                    bytes.extend_from_slice(&p.data()?);
                }
                Ok(Some(quantized_copy(&bytes, q.dtype(), &[rows, cols])?))
            }
        }
    }

    /// Rows `ids` as f32 `[ids.len(), in]`: the embedding lookup. A quantized table
    /// dequantizes only the rows asked for.
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Tensor> {
        match self {
            Matrix::Dense(t) => {
                let ids = Tensor::new(ids, t.device())?;
                Ok(t.index_select(&ids, 0)?.to_dtype(DType::F32)?)
            }
            Matrix::Quantized(q) => {
                let ids = Tensor::new(ids, &q.device())?;
                Ok(q.embedding(&ids)?)
            }
        }
    }

    /// The whole matrix as f32 (for tests and fingerprints of small matrices).
    pub fn to_f32(&self) -> Result<Tensor> {
        match self {
            Matrix::Dense(t) => Ok(t.to_dtype(DType::F32)?),
            Matrix::Quantized(q) => Ok(q.dequantize(&q.device())?),
        }
    }
}

/// A `--dtype` choice: weight matrices stored densely in `dtype`, or quantized on load to a
/// GGML type (dense fallback in `dtype` for rows that are not whole blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightFormat {
    /// Dense storage dtype (f32, bf16, f16).
    pub dtype: DType,
    /// GGML type to quantize to on load, if any.
    pub quantize: Option<GgmlDType>,
}

/// The values [`WeightFormat`] parses, for help texts and errors.
pub const WEIGHT_FORMATS: &str =
    "f32, bf16, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k";

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        let dense = |dtype| WeightFormat {
            dtype,
            quantize: None,
        };
        let quantized = |q| WeightFormat {
            dtype: DType::F32,
            quantize: Some(q),
        };
        Ok(match name.to_ascii_lowercase().as_str() {
            "f32" => dense(DType::F32),
            "bf16" => dense(DType::BF16),
            "f16" => dense(DType::F16),
            "q8_0" => quantized(GgmlDType::Q8_0),
            "q4_0" => quantized(GgmlDType::Q4_0),
            "q4_1" => quantized(GgmlDType::Q4_1),
            "q5_0" => quantized(GgmlDType::Q5_0),
            "q5_1" => quantized(GgmlDType::Q5_1),
            "q2_k" => quantized(GgmlDType::Q2K),
            "q3_k" => quantized(GgmlDType::Q3K),
            "q4_k" => quantized(GgmlDType::Q4K),
            "q5_k" => quantized(GgmlDType::Q5K),
            "q6_k" => quantized(GgmlDType::Q6K),
            other => {
                return Err(format!(
                    "unknown weight format `{other}`; one of {WEIGHT_FORMATS}"
                ))
            }
        })
    }
}

/// A CPU quantized matrix of `dtype` holding a copy of the raw GGML block bytes `bytes`.
pub(crate) fn quantized_copy(bytes: &[u8], dtype: GgmlDType, dims: &[usize]) -> Result<Matrix> {
    read_matrix(dtype, dims, bytes.len(), &mut |buffer| {
        buffer.copy_from_slice(bytes);
        Ok(())
    })
}

/// A matrix of `dtype` and shape `dims` whose `bytes` raw GGML bytes `fill` writes straight into
/// the buffer the matrix keeps: no second copy of the largest tensors (a 330 MB embedding) exists
/// while loading.
pub(crate) fn read_matrix(
    dtype: GgmlDType,
    dims: &[usize],
    bytes: usize,
    fill: &mut dyn FnMut(&mut [u8]) -> Result<()>,
) -> Result<Matrix> {
    /// A zeroed buffer of `bytes / size_of::<T>()` elements, filled through its bytes.
    fn buffer<T: Clone>(
        zero: T,
        bytes: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<Vec<T>> {
        let size = std::mem::size_of::<T>();
        if !bytes.is_multiple_of(size) {
            return Err(candle_core::Error::Msg(format!(
                "{bytes} bytes are not whole elements of {size} bytes"
            ))
            .into());
        }
        let mut values = vec![zero; bytes / size];
        // SAFETY: only instantiated below with f32, f16, bf16 and candle's GGML blocks, which
        // are `#[repr(C)]` integers and f16 without padding (candle asserts their sizes), so
        // every byte pattern is a valid value and the byte view covers exactly the buffer.
        let view =
            unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), bytes) };
        fill(view)?;
        Ok(values)
    }
    /// Reads the bytes into an owned buffer of the visited block type.
    struct ReadBlocks<'a, 'f> {
        dims: &'a [usize],
        bytes: usize,
        fill: &'f mut dyn FnMut(&mut [u8]) -> Result<()>,
    }
    impl BlockTypeVisitor for ReadBlocks<'_, '_> {
        type Output = Result<Matrix>;
        fn visit<T: GgmlType + Send + Sync + 'static>(self) -> Result<Matrix> {
            let values = buffer(T::zeros(), self.bytes, self.fill)?;
            Ok(Matrix::Quantized(Arc::new(QTensor::new(
                QStorage::Cpu(Box::new(values)),
                self.dims,
            )?)))
        }
    }
    let dense = |t: Tensor| Ok(Matrix::Dense(t));
    match dtype {
        GgmlDType::F32 => dense(Tensor::from_vec(
            buffer(0f32, bytes, fill)?,
            dims,
            &Device::Cpu,
        )?),
        GgmlDType::F16 => dense(Tensor::from_vec(
            buffer(half::f16::ZERO, bytes, fill)?,
            dims,
            &Device::Cpu,
        )?),
        GgmlDType::BF16 => dense(Tensor::from_vec(
            buffer(half::bf16::ZERO, bytes, fill)?,
            dims,
            &Device::Cpu,
        )?),
        other => visit_block_type(other, ReadBlocks { dims, bytes, fill }).unwrap_or_else(|| {
            Err(candle_core::Error::Msg(format!("no weight storage for {other:?}")).into())
        }),
    }
}

/// Code generic over candle's GGML block types, run for the one a [`GgmlDType`] names (see
/// [`visit_block_type`]): the single place that maps a run-time type to a compile-time one.
pub(crate) trait BlockTypeVisitor {
    /// What the visit produces.
    type Output;
    /// Runs with `T` the block type of the visited [`GgmlDType`].
    fn visit<T: GgmlType + Send + Sync + 'static>(self) -> Self::Output;
}

/// Runs `visitor` with the block type `dtype` names: every quantized weight type (Q4_0 … Q8_0,
/// Q2_K … Q6_K). `None` for the dense and activation-only types.
pub(crate) fn visit_block_type<V: BlockTypeVisitor>(
    dtype: GgmlDType,
    visitor: V,
) -> Option<V::Output> {
    use candle_core::quantized::k_quants::*;
    Some(match dtype {
        GgmlDType::Q4_0 => visitor.visit::<BlockQ4_0>(),
        GgmlDType::Q4_1 => visitor.visit::<BlockQ4_1>(),
        GgmlDType::Q5_0 => visitor.visit::<BlockQ5_0>(),
        GgmlDType::Q5_1 => visitor.visit::<BlockQ5_1>(),
        GgmlDType::Q8_0 => visitor.visit::<BlockQ8_0>(),
        GgmlDType::Q2K => visitor.visit::<BlockQ2K>(),
        GgmlDType::Q3K => visitor.visit::<BlockQ3K>(),
        GgmlDType::Q4K => visitor.visit::<BlockQ4K>(),
        GgmlDType::Q5K => visitor.visit::<BlockQ5K>(),
        GgmlDType::Q6K => visitor.visit::<BlockQ6K>(),
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_1 | GgmlDType::Q8K => {
            return None
        }
    })
}

/// llama.cpp's name of a GGML type.
pub fn ggml_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}
