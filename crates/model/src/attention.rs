//! Gated softmax attention (the `full_attention` layers): q projection carrying a per-head output
//! gate, zero-centred q/k norms, partial rotary embedding, grouped-query attention over a growing
//! KV cache, `sigmoid(gate)` on the output, then `o_proj`.

use candle_core::{DType, Device, Tensor, D};

use crate::cached_attention::{attend, AttentionShape};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::{KvCache, KvDtype};
use crate::nn::{sigmoid, Linear, RmsNorm};
use crate::placement::{Place, Target};
use crate::weights::WeightStore;

/// Rotary tables for the first `rotary_dim` dims of each head (rotate-half layout).
#[derive(Debug, Clone)]
pub struct Rope {
    /// `1 / θ^(2i/rotary_dim)` in f32, as HF computes it.
    inv_freq: Vec<f32>,
    rotary_dim: usize,
}

impl Rope {
    /// Tables for `config`.
    pub fn new(config: &ModelConfig) -> Self {
        let rotary_dim = config.rotary_dim();
        let inv_freq = (0..rotary_dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / rotary_dim as f32;
                1.0 / (config.rope_theta as f32).powf(exponent)
            })
            .collect();
        Rope {
            inv_freq,
            rotary_dim,
        }
    }

    /// `(cos, sin)`, each `[T, rotary_dim]` f32, for the T `positions`.
    fn tables(&self, positions: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let len = positions.len();
        let mut cos = Vec::with_capacity(len * self.rotary_dim);
        let mut sin = Vec::with_capacity(len * self.rotary_dim);
        for &p in positions {
            // HF: freqs = position (f32) · inv_freq (f32); emb = cat(freqs, freqs).
            let angles: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| (*a as f64).cos() as f32));
                sin.extend(angles.iter().map(|a| (*a as f64).sin() as f32));
            }
        }
        let shape = (len, 2 * half);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }

    /// Rotates the first `rotary_dim` dims of `x` (`[T, heads, head_dim]`) in f32.
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (_, _, head_dim) = x.dims3()?;
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let rot = x.narrow(D::Minus1, 0, self.rotary_dim)?;
        let half = self.rotary_dim / 2;
        let x1 = rot.narrow(D::Minus1, 0, half)?;
        let x2 = rot.narrow(D::Minus1, half, half)?;
        let rotated_half = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let cos = cos.unsqueeze(1)?;
        let sin = sin.unsqueeze(1)?;
        let embedded = (rot.broadcast_mul(&cos)? + rotated_half.broadcast_mul(&sin)?)?;
        let out = if self.rotary_dim < head_dim {
            let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
            Tensor::cat(&[&embedded, &pass], D::Minus1)?
        } else {
            embedded
        };
        Ok(out.to_dtype(dtype)?)
    }
}

/// One full-attention layer's weights (each sequence keeps its own [`KvCache`]).
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Where the weights were placed and whether this crate's host attention runs (`true`:
    /// host-paged caches, [`crate::cached_attention`]) or candle's ops on `device` (caches in
    /// device tensors).
    target: Target,
}

impl Attention {
    /// Loads `<prefix>.{q,k,v,o}_proj` and `<prefix>.{q,k}_norm`.
    pub fn load(store: &WeightStore, prefix: &str, config: &ModelConfig) -> Result<Self> {
        let (h, heads, kv, hd) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let bias = config.attention_bias;
        Ok(Attention {
            q_proj: Linear::load(store, &format!("{prefix}.q_proj"), h, heads * hd * 2, bias)?,
            k_proj: Linear::load(store, &format!("{prefix}.k_proj"), h, kv * hd, bias)?,
            v_proj: Linear::load(store, &format!("{prefix}.v_proj"), h, kv * hd, bias)?,
            o_proj: Linear::load(store, &format!("{prefix}.o_proj"), heads * hd, h, bias)?,
            q_norm: RmsNorm::load(store, &format!("{prefix}.q_norm"), hd, config.rms_norm_eps)?,
            k_norm: RmsNorm::load(store, &format!("{prefix}.k_norm"), hd, config.rms_norm_eps)?,
            heads,
            kv_heads: kv,
            head_dim: hd,
            target: Target {
                device: Device::Cpu,
                native_kernels: true,
            },
        })
    }

    /// `(kv_heads, head_dim)`: the geometry of this layer's KV caches.
    pub fn kv_geometry(&self) -> (usize, usize) {
        (self.kv_heads, self.head_dim)
    }

    /// An empty KV cache of this layer's geometry, for a new sequence: host pages storing
    /// `dtype` for this crate's attention, f32 tensors on the model's device for candle's.
    pub fn new_cache(&self, dtype: KvDtype) -> KvCache {
        if self.host_attention() {
            KvCache::in_dtype(self.kv_heads, self.head_dim, dtype)
        } else {
            KvCache::on_device(self.kv_heads, self.head_dim, &self.target.device)
        }
    }

    fn host_attention(&self) -> bool {
        self.target.host_kernels()
    }

    /// `x` is `[T, hidden]`: the rows of several sequences one after the other, `counts[i]`
    /// rows continuing the sequence whose cache is `caches[i]` (its next positions). Appends
    /// each sequence's keys and values to its cache and returns `[T, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        caches: &mut [&mut KvCache],
        counts: &[usize],
        rope: &Rope,
    ) -> Result<Tensor> {
        let (tokens, _) = x.dims2()?;
        if caches.len() != counts.len() || counts.iter().sum::<usize>() != tokens {
            return Err(crate::ModelError::InvalidOption(format!(
                "attention over {tokens} rows split as {counts:?} among {} caches",
                caches.len()
            )));
        }
        let positions: Vec<usize> = caches
            .iter()
            .zip(counts)
            .flat_map(|(cache, &count)| cache.len()..cache.len() + count)
            .collect();
        let (heads, kv_heads, hd) = (self.heads, self.kv_heads, self.head_dim);
        // 1. q carries a per-head output gate: [T, heads, 2·hd] = [query | gate] per head.
        let q_and_gate = self.q_proj.forward(x)?.reshape((tokens, heads, 2 * hd))?;
        let query = q_and_gate.narrow(2, 0, hd)?;
        let gate = q_and_gate
            .narrow(2, hd, hd)?
            .reshape((tokens, heads * hd))?;
        // 2. Zero-centred per-head norms, then partial rope.
        let query = self.q_norm.forward(&query.contiguous()?)?;
        let key = self
            .k_norm
            .forward(&self.k_proj.forward(x)?.reshape((tokens, kv_heads, hd))?)?;
        let value = self.v_proj.forward(x)?.reshape((tokens, kv_heads, hd))?;
        let (cos, sin) = rope.tables(&positions, x.device())?;
        let query = rope.apply(&query, &cos, &sin)?;
        let key = rope.apply(&key, &cos, &sin)?;
        // 3. Each sequence appends its rows to its cache, then attends over it (positions up
        //    to each token's own).
        // A cache of the other kind would be appended to and then read as empty: refuse it
        // before anything is touched (only a sequence of another model could carry one).
        if caches
            .iter()
            .any(|cache| cache.holds_tensors() == self.host_attention())
        {
            return Err(crate::ModelError::IncompatibleState(
                "a KV cache made for another attention path (host pages vs device tensors): \
                 the sequence belongs to a model loaded with another device or candle_ops"
                    .into(),
            ));
        }
        if !self.host_attention() {
            let attended = self.attend_on_device(&query, &key, &value, caches, counts)?;
            let gated = (attended.to_dtype(x.dtype())? * sigmoid(&gate)?)?;
            return self.o_proj.forward(&gated);
        }
        let flat = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let (key, value, query) = (flat(key)?, flat(value)?, flat(query)?);
        let (kv_row, q_row) = (kv_heads * hd, heads * hd);
        let mut attended = vec![0f32; tokens * q_row];
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim: hd,
        };
        let mut first = 0;
        for (cache, &count) in caches.iter_mut().zip(counts) {
            let start = cache.len();
            let rows = first..first + count;
            cache.append(
                &key[rows.start * kv_row..rows.end * kv_row],
                &value[rows.start * kv_row..rows.end * kv_row],
            )?;
            attend(
                &query[rows.start * q_row..rows.end * q_row],
                cache,
                start,
                shape,
                &mut attended[rows.start * q_row..rows.end * q_row],
            )?;
            first = rows.end;
        }
        let attended =
            Tensor::from_vec(attended, (tokens, q_row), x.device())?.to_dtype(x.dtype())?;
        // 5. Output gate, then o_proj.
        let gated = (attended * sigmoid(&gate)?)?;
        self.o_proj.forward(&gated)
    }

    /// Step 3 in candle's ops on the model's device: `query` `[T, heads, hd]`, `key` and
    /// `value` `[T, kv_heads, hd]`, rows split among `caches` as `counts` says. Appends to each
    /// (device) cache, then softmax(q Kᵀ / √hd) V per sequence with the causal mask inside its
    /// new rows, in f32 as the host kernel computes. Returns `[T, heads · hd]` f32.
    fn attend_on_device(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        caches: &mut [&mut KvCache],
        counts: &[usize],
    ) -> Result<Tensor> {
        let (heads, kv_heads, hd) = (self.heads, self.kv_heads, self.head_dim);
        let group = heads / kv_heads;
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let (query, key, value) = (f32(query)?, f32(key)?, f32(value)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outputs = Vec::with_capacity(caches.len());
        let mut first = 0;
        for (cache, &count) in caches.iter_mut().zip(counts) {
            let start = cache.len();
            cache.append_tensors(
                &key.narrow(0, first, count)?,
                &value.narrow(0, first, count)?,
            )?;
            let Some((keys, values)) = cache.tensors()? else {
                // Only an empty cache with no rows to add has no buffers yet.
                return Err(crate::ModelError::NoTokens);
            };
            let len = start + count;
            // Query head h reads KV head h / group (HF's repeat_kv): [kv, group·count, hd].
            let q = query
                .narrow(0, first, count)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((kv_heads, group * count, hd))?;
            let scores = (q.matmul(&keys.contiguous()?.t()?)? * scale)?;
            let scores = if count > 1 {
                // Row i of the new tokens (position start + i) sees positions ≤ start + i.
                let mask: Vec<f32> = (0..count)
                    .flat_map(|i| {
                        (0..len).map(move |j| {
                            if j > start + i {
                                f32::NEG_INFINITY
                            } else {
                                0.0
                            }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (1, 1, count, len), query.device())?;
                scores
                    .reshape((kv_heads, group, count, len))?
                    .broadcast_add(&mask)?
                    .reshape((kv_heads, group * count, len))?
            } else {
                scores
            };
            let max = scores.max_keepdim(2)?;
            let weights = scores.broadcast_sub(&max)?.exp()?;
            let weights = weights.broadcast_div(&weights.sum_keepdim(2)?)?;
            let attended = weights
                .matmul(&values.contiguous()?)?
                .reshape((heads, count, hd))?
                .transpose(0, 1)?
                .reshape((count, heads * hd))?;
            outputs.push(attended);
            first += count;
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }
}

impl Place for Attention {
    fn place(&mut self, target: &Target) -> Result<()> {
        self.target = target.clone();
        for projection in [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
        ] {
            projection.place(target)?;
        }
        self.q_norm.place(target)?;
        self.k_norm.place(target)
    }
}
