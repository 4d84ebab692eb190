//! Which device the model runs on (`--device cpu|cuda[:N]`), and which ops run there.
//!
//! On the CPU the projections, MLPs and lm_head go through this crate's kernels ([`crate::gemv`],
//! [`crate::dense_gemm`], the quantized GEMV/GEMMs); on any other device through candle's tensor
//! ops (cuBLAS and candle's quantized matmul on CUDA). `LoadOptions::candle_ops` makes the CPU
//! take candle's path too, so that the code a GPU runs is tested on machines without one.

use candle_core::Device;

use crate::error::{ModelError, Result};

/// What runs the matrix products of a model on `device`, for run summaries: this crate's CPU
/// kernels and their SIMD tier (`native`), or candle's ops on the device.
pub(crate) fn kernel_description(device: &Device, native: bool) -> String {
    if native && device.is_cpu() {
        return crate::gemv::kernel_paths();
    }
    match device.location() {
        candle_core::DeviceLocation::Cpu => "candle's CPU ops (LoadOptions::candle_ops)".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => {
            format!("candle on CUDA GPU {gpu_id} (cuBLAS, candle's quantized matmul)")
        }
        candle_core::DeviceLocation::Metal { gpu_id } => format!("candle on Metal GPU {gpu_id}"),
    }
}

/// The syntax of a device name, without opening anything: `cpu` → `None`, `cuda` → GPU 0,
/// `cuda:N` → GPU N (case and surrounding blanks ignored); anything else is an error naming the
/// accepted forms.
pub fn cuda_ordinal(spec: &str) -> Result<Option<usize>> {
    let spec = spec.trim();
    match spec.to_ascii_lowercase().as_str() {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        lower => match lower.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => Err(ModelError::InvalidOption(format!(
                "device `{spec}`: expected cpu, cuda or cuda:N (N = the GPU's index)"
            ))),
        },
    }
}

/// Parses `cpu`, `cuda` (GPU 0) or `cuda:N` ([`cuda_ordinal`]) and opens that device.
///
/// A CUDA device needs a build with the facade's `cuda-full` feature (this crate's `cuda`) and an
/// NVIDIA driver; both failures are errors that say so.
pub fn parse_device(spec: &str) -> Result<Device> {
    let Some(ordinal) = cuda_ordinal(spec)? else {
        return Ok(Device::Cpu);
    };
    let spec = spec.trim();
    if !cfg!(feature = "cuda") {
        return Err(ModelError::InvalidOption(format!(
            "device `{spec}`: this build has no CUDA support for the model; rebuild with \
             `--features cuda-full` (building needs a CUDA toolkit: see crates/gdn-cuda/README.md)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        ModelError::InvalidOption(format!(
            "device `{spec}`: cannot open CUDA GPU {ordinal} ({e}); is an NVIDIA driver \
             installed and does `nvidia-smi` list GPU {ordinal}?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_bad_names() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "metal", ""] {
            let err = parse_device(bad).unwrap_err().to_string();
            assert!(err.contains("expected cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    /// Without the `cuda` feature a CUDA device is refused with the rebuild it needs; with it
    /// (and no GPU here) the error names the GPU.
    #[test]
    fn cuda_without_support_says_what_to_do() {
        for spec in ["cuda", "cuda:1"] {
            let Err(err) = parse_device(spec) else {
                continue; // a machine with a GPU and a CUDA build: nothing to check
            };
            let text = err.to_string();
            if cfg!(feature = "cuda") {
                assert!(text.contains("cannot open CUDA GPU"), "{text}");
            } else {
                assert!(text.contains("--features cuda-full"), "{text}");
            }
        }
    }
}
