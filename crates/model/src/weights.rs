//! Where the weights come from: safetensors checkpoints (one `model.safetensors` or shards
//! listed in `model.safetensors.index.json`, memory-mapped, F32/BF16/F16 on disk, converted to
//! the storage dtype or quantized on load), GGUF files ([`crate::gguf`], kept in their stored
//! formats), or seeded random tensors for benchmarks. Every error names the file and the tensor.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{ModelError, Result};
use crate::gguf::GgufCheckpoint;
use crate::matrix::Matrix;

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

/// All tensors of a checkpoint, by name — or, for benchmarks, seeded random tensors of the
/// shapes a config implies ([`WeightStore::random`]).
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<WeightFile>,
    tensors: HashMap<String, TensorEntry>,
    dtype: DType,
    /// Quantize weight matrices to this GGML type on load (safetensors and random weights).
    quantize: Option<GgmlDType>,
    device: Device,
    /// The model built from this store multiplies through candle's ops even on the CPU.
    candle_ops: bool,
    /// `Some(seed)`: every tensor is generated instead of read.
    random_seed: Option<u64>,
    /// A GGUF file answers every tensor name.
    gguf: Option<GgufCheckpoint>,
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
    /// Opens the checkpoint in `dir`; weight matrices are stored as `dtype` on `device`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut shard_index = None;
        let paths: Vec<PathBuf> = if index_path.exists() {
            let text = read_to_string(&index_path)?;
            let index: ShardIndex =
                serde_json::from_str(&text).map_err(|e| ModelError::BadWeightsFile {
                    path: index_path.clone(),
                    message: format!("not a valid shard index: {e}"),
                })?;
            let names: BTreeSet<&String> = index.weight_map.values().collect();
            shard_index = Some((index_path.clone(), index.weight_map.clone()));
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
            quantize: None,
            device: device.clone(),
            candle_ops: false,
            random_seed: None,
            gguf: None,
        };
        for path in paths {
            store.add_file(path)?;
        }
        if let Some((index_path, weight_map)) = shard_index {
            store.check_index(&index_path, &weight_map)?;
        }
        Ok(store)
    }

    /// Every tensor the index lists must be in the shard it names (a tensor found in another
    /// shard would mean the index and the files disagree about which bytes are the weights).
    fn check_index(&self, index_path: &Path, weight_map: &HashMap<String, String>) -> Result<()> {
        for (name, shard) in weight_map {
            let Some(entry) = self.tensors.get(name) else {
                return Err(ModelError::BadWeightsFile {
                    path: index_path.to_path_buf(),
                    message: format!(
                        "lists tensor `{name}` in {shard}, which does not contain it \
                         (re-download the checkpoint or fix the index)"
                    ),
                });
            };
            let holder = &self.files[entry.file].path;
            if holder.file_name().map(|n| n.to_string_lossy()) != Some(shard.as_str().into()) {
                return Err(ModelError::BadWeightsFile {
                    path: index_path.to_path_buf(),
                    message: format!(
                        "lists tensor `{name}` in {shard}, but it is in {} \
                         (re-download the checkpoint or fix the index)",
                        holder.display()
                    ),
                });
            }
        }
        Ok(())
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
            // The same name in two shards: which copy is the weight is ambiguous; refuse rather
            // than let the file order decide.
            if let Some(earlier) = self.tensors.get(&name) {
                return Err(ModelError::BadWeightsFile {
                    path: path.clone(),
                    message: format!(
                        "tensor `{name}` is also in {}; a checkpoint must hold each tensor \
                         once (re-export it, or remove the stale shard)",
                        self.files[earlier.file].path.display()
                    ),
                });
            }
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

    /// A store that invents every tensor: seeded, of the requested shape, with values in the
    /// ranges real checkpoints have (matrices ±0.035 uniform, zero-centred norms 0, the GDN output
    /// norm 1, `A_log = ln U(1, 16)`, `dt_bias` and conv weights of order 0.5). For measuring
    /// speed at real shapes without downloading weights; the outputs mean nothing.
    pub fn random(seed: u64, dtype: DType, device: &Device) -> Self {
        WeightStore {
            dir: PathBuf::from("<random weights>"),
            files: Vec::new(),
            tensors: HashMap::new(),
            dtype,
            quantize: None,
            device: device.clone(),
            candle_ops: false,
            random_seed: Some(seed),
            gguf: None,
        }
    }

    /// A store answering from the GGUF checkpoint `gguf` (weights keep their stored formats)
    /// for a model on `device`. The file's tensors are read into host memory, where loading
    /// reorders their rows; the model places them on `device` when it is complete.
    pub fn from_gguf(gguf: GgufCheckpoint, device: &Device) -> Self {
        WeightStore {
            dir: gguf.path().to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
            dtype: DType::F32,
            quantize: None,
            device: device.clone(),
            candle_ops: false,
            random_seed: None,
            gguf: Some(gguf),
        }
    }

    /// Quantizes weight matrices to `dtype` as they load (llama.cpp's types, e.g. Q8_0, Q4_K,
    /// Q6_K). A matrix whose rows are not whole blocks of that type falls back to Q8_0 when
    /// they are whole 32-value blocks, else stays in the storage dtype — as llama-quantize
    /// does. Routers and the shared-expert gate stay dense (tiny, and they pick experts).
    pub fn with_quantization(mut self, dtype: Option<GgmlDType>) -> Self {
        self.quantize = dtype;
        self
    }

    /// Builds the model's matrix products on candle's generic ops even on the CPU (the path a
    /// GPU takes; see [`crate::model::LoadOptions::candle_ops`]).
    pub fn with_candle_ops(mut self, candle_ops: bool) -> Self {
        self.candle_ops = candle_ops;
        self
    }

    /// True when the model built from this store uses candle's ops on the CPU too.
    pub fn candle_ops(&self) -> bool {
        self.candle_ops
    }

    /// The GGUF checkpoint behind this store, if it is one.
    pub fn gguf(&self) -> Option<&GgufCheckpoint> {
        self.gguf.as_ref()
    }

    /// A short identifier of the weight format (`f32`, `bf16`, `q8_0`, `gguf-q4_k_m`), recorded
    /// in snapshots: state computed with other weights must not be resumed.
    pub fn format_id(&self) -> String {
        if let Some(gguf) = &self.gguf {
            return format!("gguf-{}", gguf.file_type().to_lowercase());
        }
        match self.quantize {
            Some(q) => crate::matrix::ggml_name(q).to_lowercase(),
            None => format!("{:?}", self.dtype).to_lowercase(),
        }
    }

    /// True when the weight matrices are f32 (an f32 checkpoint, or an all-F32 GGUF): what
    /// [`crate::kv_cache::KvDtype::auto`] keeps f32 KV caches for.
    pub fn full_precision(&self) -> bool {
        matches!(self.format_id().as_str(), "f32" | "gguf-f32")
    }

    /// How the weight matrices are stored, for display: the GGUF file type, the quantization
    /// type, or the dtype.
    pub fn format_name(&self) -> String {
        if let Some(gguf) = &self.gguf {
            return format!("GGUF {}", gguf.file_type());
        }
        match self.quantize {
            Some(q) => format!("{} (quantized on load)", crate::matrix::ggml_name(q)),
            None => format!("{:?}", self.dtype).to_uppercase(),
        }
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage dtype of weight matrices.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the model's tensors are placed on. Safetensors tensors are read onto it;
    /// GGUF tensors and matrices quantized on load may come back in host memory (their loading
    /// works on raw blocks) and are moved when the model is complete.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// True when the checkpoint has a tensor called `name` (an HF name, also for GGUF files).
    pub fn contains(&self, name: &str) -> bool {
        match &self.gguf {
            Some(gguf) => gguf.contains(name),
            None => self.tensors.contains_key(name),
        }
    }

    /// Shape of tensor `name` on disk.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    /// Tensor `name`, which must have shape `expected`, as f32 (activations, norms, biases and
    /// every small tensor are f32).
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.get_as(name, expected, DType::F32)
    }

    /// A weight matrix (or stack of them) in the storage format chosen at open: these dominate
    /// the bytes streamed per token, so they may be bf16 or quantized while the arithmetic
    /// stays f32.
    pub fn get_matrix(&self, name: &str, expected: &[usize]) -> Result<Matrix> {
        if let Some(gguf) = &self.gguf {
            return gguf.matrix(name, expected);
        }
        let keep_dense =
            name.ends_with("mlp.gate.weight") || name.ends_with("shared_expert_gate.weight");
        match self.quantize {
            Some(target) if !keep_dense => {
                let values = self.get_as(name, expected, DType::F32)?;
                let row = expected.last().copied().unwrap_or(0);
                let chosen = [target, GgmlDType::Q8_0]
                    .into_iter()
                    .find(|t| row > 0 && row % t.block_size() == 0);
                match chosen {
                    Some(t) => Ok(Matrix::Quantized(std::sync::Arc::new(QTensor::quantize(
                        &values, t,
                    )?))),
                    None => Ok(Matrix::Dense(values.to_dtype(self.dtype)?)),
                }
            }
            _ => Ok(Matrix::Dense(self.get_as(name, expected, self.dtype)?)),
        }
    }

    /// The scale `1 + w` of the zero-centred RMSNorm weight `name` (length `dim`), in f32.
    pub fn norm_scale(&self, name: &str, dim: usize) -> Result<Tensor> {
        match &self.gguf {
            Some(gguf) => gguf.norm_scale(name, dim),
            None => Ok((self.get_as(name, &[dim], DType::F32)? + 1.0)?),
        }
    }

    /// Names of the checkpoint's safetensors tensors, sorted (empty for GGUF and random weights).
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Safetensors tensor `name` exactly as stored: its own dtype and shape.
    pub fn get_stored(&self, name: &str) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let shape = entry.shape.clone();
        let dtype = match entry.dtype {
            StDtype::BF16 => DType::BF16,
            StDtype::F16 => DType::F16,
            _ => DType::F32,
        };
        self.get_as(name, &shape, dtype)
    }

    /// Tensor `name`, which must have shape `expected`, converted to `dtype`.
    pub fn get_as(&self, name: &str, expected: &[usize], dtype: DType) -> Result<Tensor> {
        if let Some(gguf) = &self.gguf {
            return Ok(gguf.tensor_f32(name, expected)?.to_dtype(dtype)?);
        }
        if let Some(seed) = self.random_seed {
            let len = random_tensor_len(name, expected)?;
            let values = random_values(name, len, seed);
            return Ok(Tensor::from_vec(values, expected, &self.device)?.to_dtype(dtype)?);
        }
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

/// Elements of a random tensor of shape `shape`, refused (instead of aborting in the allocator)
/// when the count overflows or its f32 values would not fit in the memory available now.
fn random_tensor_len(name: &str, shape: &[usize]) -> Result<usize> {
    let too_big = |what: String| {
        ModelError::InvalidOption(format!(
            "random weights: tensor `{name}` of shape {shape:?} {what}; the config's sizes are \
             too large for this machine (use a smaller config)"
        ))
    };
    let len = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| too_big("has more elements than fit in memory".into()))?;
    let bytes = (len as u64).saturating_mul(4);
    if let Some(available) = available_memory_bytes() {
        if bytes > available {
            return Err(too_big(format!(
                "needs {bytes} bytes, and {available} are available"
            )));
        }
    }
    Ok(len)
}

/// `MemAvailable` from /proc/meminfo (Linux); `None` where it cannot be read.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Seeded values for tensor `name` (see [`WeightStore::random`]).
fn random_values(name: &str, len: usize, seed: u64) -> Vec<f32> {
    // FNV-1a of the name, so each tensor has its own reproducible stream.
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut uniform = move || {
        // xorshift64*: fast enough to fill a billion values in a few seconds.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32
    };
    let (low, high) = if name.ends_with("A_log") {
        return (0..len).map(|_| (1.0 + 15.0 * uniform()).ln()).collect();
    } else if name.ends_with("linear_attn.norm.weight") {
        return vec![1.0; len];
    } else if name.contains("norm") {
        return vec![0.0; len];
    } else if name.ends_with("dt_bias") || name.contains("conv1d") {
        (-0.8, 0.8)
    } else {
        (-0.035, 0.035)
    };
    (0..len).map(|_| low + (high - low) * uniform()).collect()
}
