//! Safetensors checkpoints: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, memory-mapped, F32/BF16/F16 on disk, converted to the compute
//! dtype on load. Every error names the file and the tensor.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{ModelError, Result};

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Byte range inside the file's mapping.
    start: usize,
    end: usize,
}

struct WeightFile {
    path: PathBuf,
    map: Mmap,
}

/// All tensors of a checkpoint, by name.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<WeightFile>,
    tensors: HashMap<String, TensorEntry>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// `model.safetensors.index.json`: only the weight map matters.
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl WeightStore {
    /// Opens the checkpoint in `dir`; tensors are converted to `dtype` on `device` when read.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text = read_to_string(&index_path)?;
            let index: ShardIndex =
                serde_json::from_str(&text).map_err(|e| ModelError::BadWeightsFile {
                    path: index_path.clone(),
                    message: format!("not a valid shard index: {e}"),
                })?;
            let names: BTreeSet<&String> = index.weight_map.values().collect();
            names.into_iter().map(|name| dir.join(name)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(ModelError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model directory",
                ),
            });
        };
        let mut store = WeightStore {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
            dtype,
            device: device.clone(),
        };
        for path in paths {
            store.add_file(path)?;
        }
        Ok(store)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the mapping is read-only and private to this process; like every
        // memory-mapping loader we rely on the checkpoint not being modified while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| ModelError::BadWeightsFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let data_start = 8 + header_len;
        let index = self.files.len();
        for (name, info) in metadata.tensors() {
            self.tensors.insert(
                name,
                TensorEntry {
                    file: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                },
            );
        }
        self.files.push(WeightFile { path, map });
        Ok(())
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compute dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// True when the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Shape of tensor `name` on disk.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    /// Tensor `name`, which must have shape `expected`, in the compute dtype.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, self.dtype)
    }

    /// Tensor `name`, which must have shape `expected`, converted to `dtype`.
    pub fn get_as(&self, name: &str, expected: &[usize], dtype: DType) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let file = &self.files[entry.file];
        if entry.shape != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.into(),
                path: file.path.clone(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let disk_dtype = match entry.dtype {
            StDtype::F32 => DType::F32,
            StDtype::BF16 => DType::BF16,
            StDtype::F16 => DType::F16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.into(),
                    path: file.path.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let bytes = &file.map[entry.start..entry.end];
        let tensor = Tensor::from_raw_buffer(bytes, disk_dtype, &entry.shape, &self.device)?;
        Ok(tensor.to_dtype(dtype)?)
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.into(),
                dir: self.dir.clone(),
                files: self
                    .files
                    .iter()
                    .filter_map(|f| f.path.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}
