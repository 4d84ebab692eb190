//! The Gated DeltaNet layer on the candle side: input projections, the core through a
//! [`GdnBackend`], the gated RMSNorm and `out_proj`.
//!
//! Both projection layouts are folded at load time into one matrix whose output is
//! `[mixed_qkv (q_all | k_all | v_all) | z | b | a]`, so a token costs one matmul and the backend
//! gets contiguous inputs:
//! - Qwen3-Next interleaves per key-head group g: `in_proj_qkvz` rows are
//!   `[q_g | k_g | v_g (r·dv) | z_g (r·dv)]` and `in_proj_ba` rows `[b_g (r) | a_g (r)]`; value
//!   head g·r + j is the j-th of group g. The rows are permuted once here.
//! - Qwen3.5 stores `in_proj_qkv` (already q | k | v), `in_proj_z`, `in_proj_b`, `in_proj_a`.

use candle_core::{DType, Tensor};
use hybrid_gdn::{BatchMember, GdnBackend, LayerConstants, LayerSpec, SlotId, TokenInputs};

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};
use crate::nn::{with_f32_values, GatedRmsNorm, Linear};
use crate::placement::{Place, Target};
use crate::weights::WeightStore;

/// One GDN layer's candle-side weights.
#[derive(Debug, Clone)]
pub struct GdnMixer {
    in_proj: Linear,
    /// When `out_proj` expects its input value heads in another order than HF's (llama.cpp's
    /// tiled order in Qwen3.5 GGUFs): the HF channel for each input column.
    out_proj_input_order: Option<Tensor>,
    norm: GatedRmsNorm,
    out_proj: Linear,
    spec: LayerSpec,
}

impl GdnMixer {
    /// Loads `<prefix>.*` and returns the mixer plus the constants for the backend.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        config: &ModelConfig,
    ) -> Result<(Self, LayerConstants)> {
        let spec = config.gdn_spec();
        let hidden = config.hidden_size;
        let (key_dim, value_dim, hv) = (spec.key_dim(), spec.value_dim(), spec.num_v_heads);
        let conv_dim = spec.conv_dim();
        let matrix = |name: &str, rows: usize| {
            store.get_matrix(&format!("{prefix}.{name}.weight"), &[rows, hidden])
        };
        let has = |name: &str| store.contains(&format!("{prefix}.{name}.weight"));
        let (qkvz_rows, ba_rows) = deinterleave_rows(&spec);
        // q|k|v and z: Qwen3-Next checkpoints interleave them per key head in one matrix;
        // Qwen3.5 checkpoints and every GGUF (its converter de-interleaves) store two.
        let mut parts = if config.architecture == Architecture::Qwen3Next && has("in_proj_qkvz") {
            let qkvz = matrix("in_proj_qkvz", 2 * key_dim + 2 * value_dim)?;
            vec![qkvz.select_rows(&qkvz_rows)?]
        } else {
            vec![
                matrix("in_proj_qkv", conv_dim)?,
                matrix("in_proj_z", value_dim)?,
            ]
        };
        // b and a: interleaved per key head in Qwen3-Next (also in its GGUF), split in Qwen3.5.
        if config.architecture == Architecture::Qwen3Next {
            parts.push(matrix("in_proj_ba", 2 * hv)?.select_rows(&ba_rows)?);
        } else {
            parts.push(matrix("in_proj_b", hv)?);
            parts.push(matrix("in_proj_a", hv)?);
        }
        let in_proj = Linear::stacked(parts)?;
        let out_proj_input_order = match store.gguf() {
            Some(gguf) => gguf
                .value_head_order(spec.head_v_dim)
                .map(|order| Tensor::new(order.as_slice(), store.device()))
                .transpose()?,
            None => None,
        };
        let kernel = spec.conv_kernel;
        let conv_weight = store
            .get_as(
                &format!("{prefix}.conv1d.weight"),
                &[conv_dim, 1, kernel],
                DType::F32,
            )?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let vector = |name: &str| -> Result<Vec<f32>> {
            Ok(store
                .get_as(&format!("{prefix}.{name}"), &[hv], DType::F32)?
                .to_vec1::<f32>()?)
        };
        let constants = LayerConstants {
            conv_weight,
            a_log: vector("A_log")?,
            dt_bias: vector("dt_bias")?,
        };
        let mixer = GdnMixer {
            in_proj,
            out_proj_input_order,
            norm: GatedRmsNorm::load(
                store,
                &format!("{prefix}.norm"),
                spec.head_v_dim,
                config.rms_norm_eps,
            )?,
            out_proj: Linear::load(
                store,
                &format!("{prefix}.out_proj"),
                value_dim,
                hidden,
                false,
            )?,
            spec,
        };
        Ok((mixer, constants))
    }

    /// `x` is `[T, hidden]`: the rows of several sequences one after the other, `spans[i] =
    /// (slot, count)` meaning `count` rows that continue the sequence in `slot`. Runs the core
    /// of `layer` for all sequences in one batched backend call and returns `[T, hidden]`. The
    /// projections run once for all rows; the time in the backend is in its counters.
    pub fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        backend: &mut dyn GdnBackend,
        spans: &[(SlotId, usize)],
    ) -> Result<Tensor> {
        let (tokens, _) = x.dims2()?;
        let spec = &self.spec;
        let (conv_dim, value_dim, hv) = (spec.conv_dim(), spec.value_dim(), spec.num_v_heads);
        if spans.iter().map(|&(_, count)| count).sum::<usize>() != tokens {
            return Err(ModelError::InvalidOption(format!(
                "GDN layer {layer}: {tokens} rows split as {spans:?}"
            )));
        }
        let projected = self.in_proj.forward(x)?;
        let z = projected.narrow(1, conv_dim, value_dim)?;
        // The output buffer is the one allocation the core adds (the tensor below takes it over);
        // a decode step reads its inputs straight from the projection's storage.
        let mut out = vec![0.0f32; tokens * value_dim];
        let projected_f32 = projected.to_dtype(DType::F32)?;
        if spans.iter().all(|&(_, count)| count == 1) {
            let (_, width) = projected_f32.dims2()?;
            with_f32_values(&projected_f32, |data| {
                let inputs = CoreInputs::Rows {
                    data,
                    width,
                    conv_dim,
                    value_dim,
                    hv,
                };
                run_core(layer, backend, spans, &inputs, value_dim, &mut out)
            })?;
        } else {
            let inputs = CoreInputs::columns(&projected_f32, spec)?;
            run_core(layer, backend, spans, &inputs, value_dim, &mut out)?;
        }

        let core = Tensor::from_vec(out, (tokens, hv, spec.head_v_dim), x.device())?;
        let z = z.reshape((tokens, hv, spec.head_v_dim))?;
        let normed = self.norm.forward(&core, &z)?.reshape((tokens, value_dim))?;
        let normed = match &self.out_proj_input_order {
            Some(order) => normed.index_select(order, 1)?,
            None => normed,
        };
        self.out_proj.forward(&normed)
    }
}

/// Runs the core of `layer` for every span of `inputs` in one batched backend call, each member
/// writing its rows of `out` (`value_dim` values per token).
fn run_core(
    layer: usize,
    backend: &mut dyn GdnBackend,
    spans: &[(SlotId, usize)],
    inputs: &CoreInputs<'_>,
    value_dim: usize,
    out: &mut [f32],
) -> Result<()> {
    let mut rest = out;
    let mut first = 0;
    let mut members = spans.iter().map(|&(slot, count)| {
        let rows = first..first + count;
        first = rows.end;
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(count * value_dim);
        rest = tail;
        BatchMember {
            slot,
            inputs: inputs.rows(rows),
            out: mine,
        }
    });
    // One sequence (plain decode or prefill) needs no member list on the heap.
    let result = match (spans.len(), members.next()) {
        (1, Some(only)) => backend.run_batch(layer, &mut [only]),
        (_, first_member) => {
            let mut all: Vec<BatchMember<'_>> = first_member.into_iter().chain(members).collect();
            backend.run_batch(layer, &mut all)
        }
    };
    result.map_err(|source| ModelError::Gdn { layer, source })
}

/// The core's inputs of one forward.
enum CoreInputs<'a> {
    /// One row per sequence (a decode step): the whole `[T, width]` projection, borrowed; a
    /// row's `mixed_qkv`, `b` and `a` are slices of it.
    Rows {
        data: &'a [f32],
        width: usize,
        conv_dim: usize,
        value_dim: usize,
        hv: usize,
    },
    /// Some sequence has several rows (a prefill): `mixed_qkv`, `a` and `b` each as their own
    /// contiguous `T × width` block, so that a span's tokens are one slice.
    Columns {
        mixed_qkv: Vec<f32>,
        a: Vec<f32>,
        b: Vec<f32>,
        conv_dim: usize,
        hv: usize,
    },
}

impl CoreInputs<'_> {
    /// A prefill's inputs, copied out of the projection once.
    fn columns(projected: &Tensor, spec: &LayerSpec) -> Result<Self> {
        let (conv_dim, value_dim, hv) = (spec.conv_dim(), spec.value_dim(), spec.num_v_heads);
        let column = |start: usize, width: usize| -> Result<Vec<f32>> {
            Ok(projected
                .narrow(1, start, width)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        Ok(CoreInputs::Columns {
            mixed_qkv: column(0, conv_dim)?,
            b: column(conv_dim + value_dim, hv)?,
            a: column(conv_dim + value_dim + hv, hv)?,
            conv_dim,
            hv,
        })
    }

    /// The inputs of the tokens in `rows` (a single row for [`CoreInputs::Rows`], which is only
    /// made when every span has one).
    fn rows(&self, rows: std::ops::Range<usize>) -> TokenInputs<'_> {
        match *self {
            CoreInputs::Rows {
                data,
                width,
                conv_dim,
                value_dim,
                hv,
            } => {
                let row = &data[rows.start * width..rows.end * width];
                let b = conv_dim + value_dim;
                TokenInputs {
                    mixed_qkv: &row[..conv_dim],
                    b: &row[b..b + hv],
                    a: &row[b + hv..b + 2 * hv],
                }
            }
            CoreInputs::Columns {
                ref mixed_qkv,
                ref a,
                ref b,
                conv_dim,
                hv,
            } => TokenInputs {
                mixed_qkv: &mixed_qkv[rows.start * conv_dim..rows.end * conv_dim],
                a: &a[rows.start * hv..rows.end * hv],
                b: &b[rows.start * hv..rows.end * hv],
            },
        }
    }
}

/// Row permutations that turn Qwen3-Next's per-group interleaving into
/// `[q_all | k_all | v_all | z_all]` and `[b_all | a_all]`.
pub(crate) fn deinterleave_rows(spec: &LayerSpec) -> (Vec<u32>, Vec<u32>) {
    let (hk, dk, dv, r) = (
        spec.num_k_heads,
        spec.head_k_dim,
        spec.head_v_dim,
        spec.gva_ratio(),
    );
    let group = 2 * dk + 2 * r * dv;
    let segment = |offset: usize, width: usize| -> Vec<u32> {
        (0..hk)
            .flat_map(|g| (0..width).map(move |i| (g * group + offset + i) as u32))
            .collect()
    };
    let mut qkvz = segment(0, dk);
    qkvz.extend(segment(dk, dk));
    qkvz.extend(segment(2 * dk, r * dv));
    qkvz.extend(segment(2 * dk + r * dv, r * dv));
    let ba_group = 2 * r;
    let mut ba: Vec<u32> = (0..hk)
        .flat_map(|g| (0..r).map(move |j| (g * ba_group + j) as u32))
        .collect();
    ba.extend((0..hk).flat_map(|g| (0..r).map(move |j| (g * ba_group + r + j) as u32)));
    (qkvz, ba)
}

impl Place for GdnMixer {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.in_proj.place(target)?;
        self.out_proj_input_order.place(target)?;
        self.norm.place(target)?;
        self.out_proj.place(target)
    }
}
