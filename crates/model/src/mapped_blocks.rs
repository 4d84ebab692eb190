//! GGML blocks read in place from a memory-mapped GGUF file.
//!
//! A quantized GGUF tensor is used exactly as the file stores it, so copying it into a buffer of
//! our own only doubles what the machine holds: the kernel's page cache keeps the file's pages,
//! and the process keeps a second, private copy. Mapping the tensor's byte range read-only (as
//! llama.cpp does) leaves one copy, shared with the page cache and with every other process that
//! runs the same file, and lets the kernel drop and re-read pages under memory pressure instead
//! of swapping them.
//!
//! The mapped bytes sit behind candle's [`QuantizedType`], so a mapped weight is an ordinary
//! [`QTensor`] to the rest of the engine: our GEMV kernels read it through `QTensor::data`,
//! candle's ops through the same block slice. Dense F32/F16/BF16 tensors are still copied: a
//! candle CPU tensor owns its `Vec`, so there is no tensor over borrowed memory to hand out.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::CpuStorage;
use half::f16;
use memmap2::{Mmap, MmapOptions};

use crate::error::ModelError;
use crate::matrix::{visit_block_type, BlockTypeVisitor, Matrix};

/// One tensor's GGML blocks of type `T`, read in place from a read-only file mapping, or owned
/// once something overwrote them.
pub(crate) enum MappedBlocks<T> {
    /// `count` blocks of `T` at the start of `map` (memmap2 maps from the page boundary below
    /// the tensor and points past the slack, so the map starts exactly at the tensor).
    Mapped { map: Mmap, count: usize },
    /// Written by [`QuantizedType::from_float`]: the file is never written.
    Owned(Vec<T>),
}

impl<T: GgmlType> MappedBlocks<T> {
    fn slice(&self) -> &[T] {
        match self {
            // SAFETY: `map_tensor` only builds `Mapped` after checking that the map holds
            // `count * size_of::<T>()` bytes and starts at a multiple of `align_of::<T>()`, and
            // `T` is one of candle's `#[repr(C)]` GGML blocks of integers and f16 (or f32/f16/
            // bf16 themselves), for which every byte pattern is a valid value. The map is
            // read-only and lives as long as `self`, which the returned slice borrows.
            MappedBlocks::Mapped { map, count } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<T>(), *count)
            },
            MappedBlocks::Owned(values) => values,
        }
    }

    fn owned_mut(&mut self) -> &mut [T] {
        let count = self.slice().len();
        if let MappedBlocks::Mapped { .. } = self {
            *self = MappedBlocks::Owned(vec![T::zeros(); count]);
        }
        match self {
            MappedBlocks::Owned(values) => values,
            MappedBlocks::Mapped { .. } => unreachable!("replaced just above"),
        }
    }
}

impl<T: GgmlType + 'static> QuantizedType for MappedBlocks<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn matmul_t(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f32],
        dst: &mut [f32],
    ) -> candle_core::Result<()> {
        k_quants::matmul(mkn, lhs, self.slice(), dst)
    }

    fn matmul_t_f16(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f16],
        dst: &mut [f16],
    ) -> candle_core::Result<()> {
        k_quants::matmul_f16(mkn, lhs, self.slice(), dst)
    }

    fn embedding(
        &self,
        ids: &[u32],
        rows: usize,
        hidden: usize,
    ) -> candle_core::Result<CpuStorage> {
        let blocks = self.slice();
        if !hidden.is_multiple_of(T::BLCK_SIZE) || blocks.len() != rows * (hidden / T::BLCK_SIZE) {
            candle_core::bail!(
                "a {rows}×{hidden} lookup does not fit {} blocks of {} values",
                blocks.len(),
                T::BLCK_SIZE
            )
        }
        let per_row = hidden / T::BLCK_SIZE;
        let mut out = vec![0f32; ids.len() * hidden];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
            let id = id as usize;
            if id >= rows {
                candle_core::bail!("embedding id {id} is past the {rows} rows")
            }
            T::to_float(&blocks[id * per_row..(id + 1) * per_row], row);
        }
        Ok(CpuStorage::F32(out))
    }

    fn dequantize(&self, elem_count: usize) -> candle_core::Result<CpuStorage> {
        let mut values = vec![0f32; elem_count];
        T::to_float(self.slice(), &mut values);
        Ok(CpuStorage::F32(values))
    }

    fn storage_size_in_bytes(&self) -> usize {
        std::mem::size_of_val(self.slice())
    }

    fn as_ptr(&self) -> *const u8 {
        self.slice().as_ptr().cast()
    }

    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }

    fn from_float(&mut self, xs: &[f32]) {
        T::from_float(xs, self.owned_mut())
    }

    fn from_float_imatrix(&mut self, xs: &[f32], imatrix_weights: &[f32], n_per_row: usize) {
        T::from_float_imatrix(xs, self.owned_mut(), imatrix_weights, n_per_row)
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

/// Maps `bytes` bytes of `file` at `start` as a quantized matrix of `dtype` and shape `dims`.
///
/// `Ok(None)` when `dtype` is not a block type (F32/F16/BF16: candle tensors own their
/// memory), the tensor is empty, or its bytes are not aligned for the block type: the caller
/// reads those into memory instead. The range must lie inside the file (checked when the GGUF
/// was opened).
pub(crate) fn map_tensor(
    path: &Path,
    file: &File,
    start: u64,
    bytes: usize,
    dtype: GgmlDType,
    dims: &[usize],
) -> crate::Result<Option<Matrix>> {
    let visitor = MapAs {
        path,
        file,
        start,
        bytes,
        dims,
    };
    Ok(visit_block_type(dtype, visitor).transpose()?.flatten())
}

/// [`BlockTypeVisitor`] that maps a tensor's bytes as [`MappedBlocks`] of the visited type.
struct MapAs<'a> {
    path: &'a Path,
    file: &'a File,
    start: u64,
    bytes: usize,
    dims: &'a [usize],
}

impl BlockTypeVisitor for MapAs<'_> {
    type Output = crate::Result<Option<Matrix>>;

    fn visit<T: GgmlType + Send + Sync + 'static>(self) -> Self::Output {
        let size = std::mem::size_of::<T>();
        // The map starts `start % page` bytes into its first page, so its alignment for `T`
        // is the start's; an empty range cannot be mapped.
        let aligned = (self.start as usize).is_multiple_of(std::mem::align_of::<T>());
        if self.bytes == 0 || !aligned || !self.bytes.is_multiple_of(size) {
            return Ok(None);
        }
        // SAFETY: the map is read-only and private to this process's view; its contents change
        // only if another program rewrites the GGUF while it is in use, which would corrupt the
        // weights (as it would for llama.cpp, which maps the same way) but not memory safety of
        // the block types, which accept every byte pattern. `--no-mmap` reads the file instead.
        // MAP_POPULATE reads the pages now, so the first token does not pay for the page faults.
        let map = unsafe {
            MmapOptions::new()
                .offset(self.start)
                .len(self.bytes)
                .populate()
                .map(self.file)
        }
        .map_err(|source| ModelError::Io {
            path: self.path.to_path_buf(),
            source,
        })?;
        // What `slice` relies on, checked on the map itself rather than trusted from `start`.
        if !(map.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Ok(None);
        }
        let blocks = MappedBlocks::<T>::Mapped {
            map,
            count: self.bytes / size,
        };
        let tensor = QTensor::new(QStorage::Cpu(Box::new(blocks)), self.dims)?;
        Ok(Some(Matrix::Quantized(Arc::new(tensor))))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use candle_core::{Device, Tensor};

    use super::*;

    /// A mapped tensor holds the same blocks as the bytes written, and multiplies, looks up
    /// and dequantizes exactly like the same blocks held in memory by candle.
    #[test]
    fn mapped_blocks_behave_like_owned_blocks() {
        let values: Vec<f32> = (0..4 * 256)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let dense = Tensor::from_vec(values.clone(), (4, 256), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q5_1,
        ] {
            let owned = QTensor::quantize(&dense, dtype).unwrap();
            let bytes = owned.data().unwrap().into_owned();
            // An odd header before the tensor: the map must start mid-page.
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&[0u8; 96]).unwrap();
            file.write_all(&bytes).unwrap();
            let Some(Matrix::Quantized(mapped)) =
                map_tensor(Path::new("test"), &file, 96, bytes.len(), dtype, &[4, 256]).unwrap()
            else {
                panic!("{dtype:?}: not mapped");
            };
            assert_eq!(
                mapped.data().unwrap().as_ref(),
                bytes.as_slice(),
                "{dtype:?}"
            );
            let expect = owned
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let got = mapped
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got, expect, "{dtype:?}");
            let x = Tensor::from_vec(values[..512].to_vec(), (2, 256), &Device::Cpu).unwrap();
            let want = x
                .apply_op1_no_bwd(&owned)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let have = x
                .apply_op1_no_bwd(mapped.as_ref())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(have, want, "{dtype:?}");
        }
    }

    /// Dense types and misaligned ranges are left to the caller to read.
    #[test]
    fn dense_and_misaligned_tensors_are_not_mapped() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        assert!(
            map_tensor(Path::new("test"), &file, 0, 1024, GgmlDType::F32, &[256])
                .unwrap()
                .is_none()
        );
        // Q6_K blocks hold f16 (2-byte alignment): an odd start cannot be used in place.
        assert!(
            map_tensor(Path::new("test"), &file, 1, 210, GgmlDType::Q6K, &[256])
                .unwrap()
                .is_none()
        );
    }

    /// Writing through candle (re-quantizing in place) never reaches the file.
    #[test]
    fn from_float_writes_a_private_copy() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0u8; 34]).unwrap();
        // SAFETY: the temporary file is private to this test and not written while mapped.
        let map = unsafe { MmapOptions::new().len(34).map(&file) }.unwrap();
        let mut blocks = MappedBlocks::<k_quants::BlockQ8_0>::Mapped { map, count: 1 };
        blocks.from_float(&[1.0; 32]);
        assert!(matches!(blocks, MappedBlocks::Owned(_)));
        let mut back = vec![0f32; 32];
        k_quants::BlockQ8_0::to_float(blocks.slice(), &mut back);
        assert!(back.iter().all(|&v| (v - 1.0).abs() < 1e-2));
        let mut on_disk = Vec::new();
        use std::io::{Read, Seek};
        file.rewind().unwrap();
        file.read_to_end(&mut on_disk).unwrap();
        assert_eq!(on_disk, vec![0u8; 34]);
    }
}
