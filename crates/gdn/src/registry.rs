//! Resolves a backend by name. Every backend name the project knows is listed here, so a name that
//! is known but not usable in this build answers with the reason and the fix instead of "unknown".

use std::path::PathBuf;

use crate::backend::GdnBackend;
use crate::error::{GdnError, Result};
use crate::reference::{ReferenceBackend, ReferenceKernel};

/// Options a factory may use; each backend ignores what does not apply to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Host worker threads (`None`: the backend's default, usually all cores).
    pub threads: Option<usize>,
    /// The FPGA bitstream container for the `xrt` backend (`None`: `$HYBRID_GDN_XCLBIN`).
    pub xclbin: Option<PathBuf>,
    /// Which device (card) a device backend opens first (`xrt`: the XRT device index).
    pub device_index: usize,
}

impl BackendOptions {
    /// Options with an explicit host thread count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Options with the xclbin the `xrt` backend loads.
    pub fn with_xclbin(mut self, xclbin: impl Into<PathBuf>) -> Self {
        self.xclbin = Some(xclbin.into());
        self
    }

    /// Options with the device index a device backend opens first.
    pub fn with_device_index(mut self, device_index: usize) -> Self {
        self.device_index = device_index;
        self
    }
}

/// Builds a backend from options.
pub type BackendFactory = fn(&BackendOptions) -> Result<Box<dyn GdnBackend>>;

/// Backend names the project knows, with why each is missing until something registers it.
const KNOWN_BACKENDS: &[(&str, &str, &str)] = &[
    (
        "reference",
        "scalar oracle, canonical layout, 1 thread",
        "it is always compiled in",
    ),
    (
        "cpu",
        "fused SIMD (AVX2+FMA or portable) kernel, multi-threaded",
        "register hybrid_gdn_cpu::CpuBackend (the hybrid-decode facade does this)",
    ),
    (
        "cuda",
        "GPU-resident state, fused CUDA kernels",
        "not compiled in: rebuild with `--features cuda`",
    ),
    (
        "xrt",
        "AMD Alveo FPGA through the Xilinx Runtime",
        "not compiled in: enable the cargo feature `xrt`",
    ),
    (
        "xrt-sim",
        "the FPGA kernel's C++ run in-process (C-simulation)",
        "not compiled in: enable the cargo feature `xrt`",
    ),
];

/// One name in the registry.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    /// Backend name as users type it (`--gdn-backend NAME`).
    pub name: &'static str,
    /// One line on what it is.
    pub summary: &'static str,
    /// The factory when compiled in, otherwise why not and how to get it.
    pub availability: std::result::Result<BackendFactory, String>,
}

/// Name → backend factory, knowing every backend name of the project.
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<RegistryEntry>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry where `reference` is available and every other known name says why it is not.
    pub fn new() -> Self {
        let entries = KNOWN_BACKENDS
            .iter()
            .map(|&(name, summary, missing)| RegistryEntry {
                name,
                summary,
                availability: Err(missing.to_string()),
            })
            .collect();
        let mut registry = Registry { entries };
        registry.register(ReferenceKernel::NAME, KNOWN_BACKENDS[0].1, |_| {
            Ok(Box::new(ReferenceBackend::default()))
        });
        registry
    }

    /// Makes `name` available through `factory` (adding the name if the project did not know it).
    pub fn register(&mut self, name: &'static str, summary: &'static str, factory: BackendFactory) {
        match self.entries.iter_mut().find(|e| e.name == name) {
            Some(entry) => {
                entry.summary = summary;
                entry.availability = Ok(factory);
            }
            None => self.entries.push(RegistryEntry {
                name,
                summary,
                availability: Ok(factory),
            }),
        }
    }

    /// Keeps `name` known but unavailable, with `reason` (what is missing and how to get it):
    /// for a backend that is compiled in but cannot work on this machine.
    pub fn set_unavailable(&mut self, name: &'static str, reason: String) {
        match self.entries.iter_mut().find(|e| e.name == name) {
            Some(entry) => entry.availability = Err(reason),
            None => self.entries.push(RegistryEntry {
                name,
                summary: "",
                availability: Err(reason),
            }),
        }
    }

    /// Creates the backend called `name`, or says why it cannot.
    pub fn create(&self, name: &str, options: &BackendOptions) -> Result<Box<dyn GdnBackend>> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| GdnError::UnknownBackend {
                name: name.to_string(),
                known: self.names().join(", "),
            })?;
        match &entry.availability {
            Ok(factory) => factory(options),
            Err(reason) => Err(GdnError::Unavailable {
                name: name.to_string(),
                reason: reason.clone(),
            }),
        }
    }

    /// Every known name, available or not.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// Names that are compiled into this build.
    pub fn available(&self) -> Vec<&'static str> {
        self.entries
            .iter()
            .filter(|e| e.availability.is_ok())
            .map(|e| e.name)
            .collect()
    }

    /// All entries, for listings such as `--gdn-backend help`.
    pub fn entries(&self) -> &[RegistryEntry] {
        &self.entries
    }
}
