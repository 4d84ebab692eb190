//! Gated softmax attention (the `full_attention` layers): q projection carrying a per-head output
//! gate, zero-centred q/k norms, partial rotary embedding, grouped-query attention over a growing
//! KV cache, `sigmoid(gate)` on the output, then `o_proj`.

use candle_core::{DType, Device, Tensor, D};

use crate::cached_attention::{attend, AttentionShape};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::nn::{sigmoid, Linear, RmsNorm};
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

    /// `(cos, sin)`, each `[T, rotary_dim]` f32, for positions `start..start + len`.
    fn tables(&self, start: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * self.rotary_dim);
        let mut sin = Vec::with_capacity(len * self.rotary_dim);
        for p in start..start + len {
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

/// One full-attention layer with its KV cache.
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
    cache: KvCache,
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
            cache: KvCache::new(kv, hd),
        })
    }

    /// Drops the KV cache.
    pub fn reset(&mut self) {
        self.cache.clear();
    }

    /// Tokens cached so far.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// `(kv_heads, head_dim)`: the cache holds `[kv_heads, cached, head_dim]` keys and values.
    pub fn kv_geometry(&self) -> (usize, usize) {
        (self.kv_heads, self.head_dim)
    }

    /// A copy of the KV cache as f32 `(keys, values)`, each `[kv_heads, cached, head_dim]`
    /// row-major; both empty before the first token. For snapshots and migration.
    pub fn export_cache(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(self.cache.export())
    }

    /// Replaces the KV cache with `cached` positions of f32 keys and values (layout as in
    /// [`export_cache`](Self::export_cache)); `cached == 0` empties it. A length that does not
    /// match is an error naming both, never a panic.
    pub fn import_cache(&mut self, cached: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        let want = self.kv_heads * cached * self.head_dim;
        if keys.len() != want || values.len() != want {
            return Err(crate::ModelError::IncompatibleState(format!(
                "KV cache of {cached} positions needs {want} keys and values, got {} and {}",
                keys.len(),
                values.len()
            )));
        }
        self.cache.import(cached, keys, values);
        Ok(())
    }

    /// `x` is `[T, hidden]` for positions `start..start + T`; returns `[T, hidden]`.
    pub fn forward(&mut self, x: &Tensor, start: usize, rope: &Rope) -> Result<Tensor> {
        let (tokens, _) = x.dims2()?;
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
        let (cos, sin) = rope.tables(start, tokens, x.device())?;
        let query = rope.apply(&query, &cos, &sin)?;
        let key = rope.apply(&key, &cos, &sin)?;
        if self.cache.len() != start {
            return Err(crate::ModelError::IncompatibleState(format!(
                "attention called for position {start} with {} positions cached",
                self.cache.len()
            )));
        }
        // 3. Append to the cache, then attend over it (positions up to each token's own).
        let flat = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        self.cache.append(&flat(key)?, &flat(value)?);
        let query = flat(query)?;
        let mut attended = vec![0f32; tokens * heads * hd];
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim: hd,
        };
        attend(&query, &self.cache, start, shape, &mut attended)?;
        let attended =
            Tensor::from_vec(attended, (tokens, heads * hd), x.device())?.to_dtype(x.dtype())?;
        // 5. Output gate, then o_proj.
        let gated = (attended * sigmoid(&gate)?)?;
        self.o_proj.forward(&gated)
    }
}
