//! The CUDA C kernels ([`SOURCE`], `gdn.cu`) and how they are specialised, compiled and launched.
//!
//! Every layer shape gets its own NVRTC compilation with the shape as `-D` constants
//! ([`KernelConfig::defines`]): register arrays then have constant sizes, loops unroll fully, and
//! divisions by head counts are by constants. Compiled PTX is cached process-wide per
//! (config, architecture), so many backends or layers of one shape compile once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use hybrid_gdn::{GdnError, LayerSpec, Result};

use crate::device::{device_error, NAME};

/// The kernel source: decode (fused, single pass; one slot, or a batch of slots in one launch),
/// prefill in three phases (conv + norm + gates, register-resident recurrence, conv-history
/// commit).
pub const SOURCE: &str = include_str!("gdn.cu");

/// Names of the kernels in [`SOURCE`].
pub const KERNEL_NAMES: [&str; 5] = [
    "gdn_decode",
    "gdn_decode_batch",
    "gdn_prefill_conv",
    "gdn_prefill_scan",
    "gdn_prefill_commit",
];

/// Members of one `gdn_decode_batch` launch at most: a member is a row of the grid
/// (`gridDim.y`, at most 65,535 on every CUDA GPU); bigger batches take several launches.
pub const MAX_BATCH_MEMBERS: usize = 65_535;

/// Threads per block of `gdn_prefill_conv` (one block per token).
pub const PREFILL_CONV_THREADS: u32 = 256;
/// Threads of the single `gdn_prefill_commit` block.
pub const PREFILL_COMMIT_THREADS: u32 = 1024;

/// A layer shape plus the tiling of the kernels: what one compilation is specialised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    /// The layer shape.
    pub spec: LayerSpec,
    /// Value columns one warp owns.
    pub cols: usize,
    /// Columns a warp loads before it reduces (divides `cols`).
    pub unroll: usize,
    /// Warps per block.
    pub warps: usize,
}

impl KernelConfig {
    /// The default tiling for `spec`, overridable for tuning with the environment variables
    /// `HYBRID_GDN_CUDA_COLS` (1, 2, 4, 8 or 16) and `HYBRID_GDN_CUDA_WARPS` (1 to 8).
    ///
    /// Default: 4 columns per warp and 4 warps per block. At the Qwen3-Next shape (32 heads ×
    /// 128 columns) that is 1024 warps in 256 blocks, about two blocks per H100 SM, each lane
    /// holding 4 rows × 4 floats of state in flight. Wide keys (dk > 128) load fewer rows at once
    /// to bound registers.
    pub fn for_spec(spec: LayerSpec) -> Self {
        let cols = env_choice("HYBRID_GDN_CUDA_COLS", &[1, 2, 4, 8, 16]).unwrap_or(4);
        let warps = env_choice("HYBRID_GDN_CUDA_WARPS", &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap_or(4);
        let per_lane = spec.head_k_dim.div_ceil(32);
        let max_unroll = (16 / per_lane.max(1)).max(1);
        let unroll = [4, 2, 1]
            .into_iter()
            .find(|&u| u <= max_unroll && cols.is_multiple_of(u))
            .unwrap_or(1);
        KernelConfig {
            spec,
            cols,
            unroll,
            warps,
        }
    }

    /// Warps in a decode or scan launch: one per (value head, column group).
    pub fn total_warps(&self) -> usize {
        self.spec.num_v_heads * self.spec.head_v_dim.div_ceil(self.cols)
    }

    /// Launch shape of `gdn_decode` and `gdn_prefill_scan`.
    pub fn recurrence_launch(&self) -> LaunchConfig {
        let blocks = self.total_warps().div_ceil(self.warps);
        LaunchConfig {
            grid_dim: (to_u32(blocks), 1, 1),
            block_dim: (to_u32(self.warps * 32), 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Launch shape of `gdn_decode_batch` for `members` slots (at most [`MAX_BATCH_MEMBERS`]):
    /// the grid of `gdn_decode` once per member.
    pub fn batch_launch(&self, members: usize) -> LaunchConfig {
        let one = self.recurrence_launch();
        LaunchConfig {
            grid_dim: (one.grid_dim.0, to_u32(members.min(MAX_BATCH_MEMBERS)), 1),
            ..one
        }
    }

    /// The `-D` defines that specialise [`SOURCE`].
    pub fn defines(&self) -> Vec<String> {
        let s = &self.spec;
        [
            ("GDN_HK", s.num_k_heads),
            ("GDN_HV", s.num_v_heads),
            ("GDN_DK", s.head_k_dim),
            ("GDN_DV", s.head_v_dim),
            ("GDN_K", s.conv_kernel),
            ("GDN_COLS", self.cols),
            ("GDN_UNROLL", self.unroll),
            ("GDN_WARPS", self.warps),
        ]
        .iter()
        .map(|(name, value)| format!("-D{name}={value}"))
        .collect()
    }

    /// Rejects shapes the kernels' 32-bit index arithmetic cannot address.
    pub fn check_limits(&self) -> Result<()> {
        let s = &self.spec;
        let biggest = [
            s.conv_dim() * s.conv_kernel,
            s.recurrent_state_len(),
            s.value_dim() * crate::backend::PREFILL_CHUNK,
            s.conv_dim() * crate::backend::PREFILL_CHUNK,
        ];
        if biggest.iter().any(|&n| n >= i32::MAX as usize) || s.head_k_dim > 1024 {
            return Err(GdnError::InvalidSpec(format!(
                "the cuda backend supports up to 2^31 elements per buffer and dk ≤ 1024, got {s:?}"
            )));
        }
        Ok(())
    }
}

fn env_choice(var: &str, allowed: &[usize]) -> Option<usize> {
    let value: usize = std::env::var(var).ok()?.trim().parse().ok()?;
    allowed.contains(&value).then_some(value)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// NVRTC options for `config` on a GPU of compute capability `arch` (e.g. `(9, 0)`).
pub fn compile_options(config: &KernelConfig, arch: (i32, i32)) -> CompileOptions {
    let mut options = vec![
        format!("--gpu-architecture=compute_{}{}", arch.0, arch.1),
        "--std=c++17".to_string(),
        // Line info costs nothing at run time and lets ncu / compute-sanitizer name source lines.
        "--generate-line-info".to_string(),
    ];
    options.extend(config.defines());
    CompileOptions {
        // Precise division and square root (the defaults, stated so that a changed default cannot
        // silently break the conformance tolerance); no fast math. FMA contraction stays on
        // (`HYBRID_GDN_CUDA_FMAD=0` turns it off, to tell rounding from bugs when diagnosing).
        fmad: Some(std::env::var("HYBRID_GDN_CUDA_FMAD").map_or(true, |v| v.trim() != "0")),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        options,
        name: Some("gdn.cu".into()),
        ..Default::default()
    }
}

type PtxCache = Mutex<HashMap<(KernelConfig, (i32, i32)), Arc<String>>>;

fn ptx_cache() -> &'static PtxCache {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Compiles [`SOURCE`] for `config` with NVRTC (cached per process) and returns the PTX text.
///
/// NVRTC needs no GPU, so this also runs on a build machine with only `libnvrtc` (the kernel
/// syntax check in `tests/nvrtc_compile.rs`). Call [`crate::device::probe_nvrtc`] first: cudarc
/// aborts the thread if the library cannot be loaded.
pub fn compile(config: &KernelConfig, arch: (i32, i32)) -> Result<Arc<String>> {
    config.check_limits()?;
    let key = (*config, arch);
    if let Some(ptx) = ptx_cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(ptx);
    }
    let ptx = compile_ptx_with_opts(SOURCE, compile_options(config, arch))
        .map_err(|e| compile_error(e, config))?;
    let ptx = Arc::new(ptx.to_src());
    if let Ok(mut cache) = ptx_cache().lock() {
        cache.insert(key, ptx.clone());
    }
    Ok(ptx)
}

fn compile_error(error: CompileError, config: &KernelConfig) -> GdnError {
    let message = match error {
        CompileError::CompileError { nvrtc, log, .. } => format!(
            "NVRTC could not compile the GDN kernels for {:?} ({nvrtc:?}):\n{}",
            config,
            log.to_string_lossy()
        ),
        other => format!("NVRTC failed for {config:?}: {other}"),
    };
    GdnError::Device {
        backend: NAME.into(),
        message,
    }
}

/// The kernels of one [`KernelConfig`], loaded into a context.
#[derive(Debug, Clone)]
pub struct LoadedKernels {
    /// What they were compiled for.
    pub config: KernelConfig,
    /// `gdn_decode`.
    pub decode: CudaFunction,
    /// `gdn_decode_batch`.
    pub decode_batch: CudaFunction,
    /// `gdn_prefill_conv`.
    pub prefill_conv: CudaFunction,
    /// `gdn_prefill_scan`.
    pub prefill_scan: CudaFunction,
    /// `gdn_prefill_commit`.
    pub prefill_commit: CudaFunction,
}

impl LoadedKernels {
    /// Compiles (or takes from the cache) and loads the kernels for `config` into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, config: KernelConfig, arch: (i32, i32)) -> Result<Self> {
        let ptx = compile(&config, arch)?;
        let module = ctx
            .load_module(Ptx::from_src(ptx.as_str()))
            .map_err(|e| device_error("loading the compiled GDN kernels (cuModuleLoadData)", e))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| device_error(&format!("finding kernel `{name}`"), e))
        };
        Ok(LoadedKernels {
            config,
            decode: function(KERNEL_NAMES[0])?,
            decode_batch: function(KERNEL_NAMES[1])?,
            prefill_conv: function(KERNEL_NAMES[2])?,
            prefill_scan: function(KERNEL_NAMES[3])?,
            prefill_commit: function(KERNEL_NAMES[4])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_next_tiling() {
        let config = KernelConfig::for_spec(LayerSpec::QWEN3_NEXT);
        if std::env::var_os("HYBRID_GDN_CUDA_COLS").is_none()
            && std::env::var_os("HYBRID_GDN_CUDA_WARPS").is_none()
        {
            assert_eq!((config.cols, config.unroll, config.warps), (4, 4, 4));
            assert_eq!(config.total_warps(), 32 * 32);
            assert_eq!(config.recurrence_launch().grid_dim.0, 256);
            assert_eq!(config.batch_launch(8).grid_dim, (256, 8, 1));
        }
        let defines = config.defines();
        assert!(defines.contains(&"-DGDN_DK=128".to_string()));
        assert!(defines.contains(&"-DGDN_HV=32".to_string()));
    }

    #[test]
    fn unroll_divides_cols_and_bounds_registers() {
        for dk in [1, 33, 128, 256, 512, 1024] {
            let spec = LayerSpec {
                head_k_dim: dk,
                ..LayerSpec::QWEN3_NEXT
            };
            let c = KernelConfig::for_spec(spec);
            assert_eq!(c.cols % c.unroll, 0);
            assert!(c.unroll * dk.div_ceil(32) <= 32, "dk {dk}: {c:?}");
        }
    }

    #[test]
    fn huge_shapes_are_rejected_not_overflowed() {
        let spec = LayerSpec {
            num_k_heads: 1 << 12,
            num_v_heads: 1 << 12,
            head_k_dim: 1024,
            head_v_dim: 1024,
            conv_kernel: 4,
        };
        let err = KernelConfig::for_spec(spec).check_limits().unwrap_err();
        assert!(matches!(err, GdnError::InvalidSpec(_)), "{err}");
    }
}
