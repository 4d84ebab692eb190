//! CUDA graphs for [`step_layers`](crate::CudaExt::step_layers).
//!
//! One token's GDN work over 36 layers is 36 small kernels of ~2 µs each; issued one by one,
//! the host's launch cost (~2–4 µs per `cuLaunchKernel`) rather than the GPU sets the pace. A
//! graph captured once per list of (layer, slot state) replays the upload, all launches and the download
//! with one `cuGraphLaunch`. Nothing in a captured launch changes between tokens: inputs and
//! outputs go through fixed staging buffers, and the conv ring position lives on the device
//! (`meta`), advanced by the kernel itself.
//!
//! A graph holds raw device addresses, so it is dropped when one of its states is freed or a
//! staging buffer is reallocated.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{sys, CudaGraph, CudaStream};
use hybrid_gdn::{GdnError, Result};

use crate::device::{device_error, NAME};

/// Which graph: (layer, state id) of every launch, in launch order.
pub type GraphKey = Vec<(usize, u64)>;

/// An instantiated graph that can move between threads with its backend.
pub struct SendGraph(CudaGraph);

// SAFETY: CUDA graph objects may be used from any thread as long as calls on one graph are
// serialised (CUDA driver API, "Graph object thread safety"); a `SendGraph` is only reachable
// through `&mut CudaKernel`, which serialises every call.
unsafe impl Send for SendGraph {}

impl SendGraph {
    /// Enqueues the graph on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        self.0
            .launch()
            .map_err(|e| device_error("launching a CUDA graph", e))
    }
}

impl std::fmt::Debug for SendGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendGraph")
    }
}

/// Captured graphs by key, and whether `step_layers` uses them.
#[derive(Debug, Default)]
pub struct GraphCache {
    enabled: bool,
    graphs: HashMap<GraphKey, SendGraph>,
}

impl GraphCache {
    /// Enabled unless `HYBRID_GDN_CUDA_GRAPHS=0`.
    pub fn from_env() -> Self {
        GraphCache {
            enabled: std::env::var("HYBRID_GDN_CUDA_GRAPHS").map_or(true, |v| v.trim() != "0"),
            graphs: HashMap::new(),
        }
    }

    /// Whether graphs are used.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Turns graphs on or off (off drops the captured ones).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if !enabled {
            self.clear();
        }
    }

    /// Whether a graph for `key` is captured.
    pub fn contains(&self, key: &GraphKey) -> bool {
        self.graphs.contains_key(key)
    }

    /// Stores a captured graph.
    pub fn insert(&mut self, key: GraphKey, graph: SendGraph) {
        self.graphs.insert(key, graph);
    }

    /// Enqueues the graph for `key` on the stream it was captured from.
    pub fn launch(&self, key: &GraphKey) -> Result<()> {
        let graph = self.graphs.get(key).ok_or_else(|| GdnError::Internal {
            backend: NAME.into(),
            message: "CUDA graph missing from its cache".into(),
        })?;
        graph.launch()
    }

    /// Drops every graph (buffers moved).
    pub fn clear(&mut self) {
        self.graphs.clear();
    }

    /// Drops the graphs that launch on the state `id` (its memory is about to be freed).
    pub fn forget_state(&mut self, id: u64) {
        self.graphs
            .retain(|key, _| !key.iter().any(|&(_, state)| state == id));
    }
}

/// Captures what `enqueue` puts on `stream` into an instantiated graph. Capture always ends,
/// also when `enqueue` fails, so the stream is never left capturing.
pub fn capture(
    stream: &Arc<CudaStream>,
    enqueue: impl FnOnce() -> Result<()>,
) -> Result<SendGraph> {
    // Relaxed: other threads of the process (another backend, candle) may call CUDA meanwhile.
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(|e| device_error("starting CUDA graph capture", e))?;
    let enqueued = enqueue();
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    enqueued?;
    graph
        .map_err(|e| device_error("instantiating a CUDA graph", e))?
        .map(SendGraph)
        .ok_or_else(|| GdnError::Device {
            backend: NAME.into(),
            message: "CUDA graph capture produced no graph".into(),
        })
}
