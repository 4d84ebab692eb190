//! The keys and values one attention layer has seen for one sequence, kept in pages.
//!
//! A page holds [`PAGE`] positions of every KV head; pages are allocated as the sequence grows
//! and never move, so appending a token copies only that token (the cache used to be one tensor
//! re-concatenated per token: the whole cache copied every step, plus a fresh multi-MiB
//! allocation and its page faults). Memory is bounded by the positions held, rounded up to a
//! page. Storage is f32, the precision the attention computes in.
//!
//! A model whose attention runs on candle's ops (on a GPU, or `LoadOptions::candle_ops`) keeps
//! the cache as two tensors on its device instead ([`KvCache::on_device`]), `[kv_heads][capacity]
//! [head_dim]`, the capacity grown by doubling in whole pages; appending writes the new rows in
//! place, and a growth copies what is there once.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Positions per page: 1 MiB of keys and values per page at the 0.8B shape (2 KV heads × 256
/// dims), few enough pages at long context that the per-page loop costs nothing.
pub const PAGE: usize = 256;

/// One page: `[kv_heads][PAGE][head_dim]` keys and the same of values, so one head's rows in a
/// page are contiguous.
#[derive(Debug, Clone)]
struct Page {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// The cache of a model whose attention runs on candle's ops: keys and values as tensors on the
/// model's device, `[kv_heads][capacity][head_dim]` (`None` until the first append).
#[derive(Debug, Clone)]
struct DeviceKv {
    device: Device,
    buffers: Option<(Tensor, Tensor)>,
}

/// A paged KV cache for one attention layer of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    pages: Vec<Page>,
    /// `Some`: the cache lives in tensors on a device (the pages stay empty).
    device: Option<DeviceKv>,
    len: usize,
}

impl KvCache {
    /// An empty cache in host pages for `kv_heads` heads of `head_dim` values.
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        KvCache {
            kv_heads,
            head_dim,
            pages: Vec::new(),
            device: None,
            len: 0,
        }
    }

    /// An empty cache in tensors on `device`, for attention on candle's ops.
    pub fn on_device(kv_heads: usize, head_dim: usize, device: &Device) -> Self {
        KvCache {
            device: Some(DeviceKv {
                device: device.clone(),
                buffers: None,
            }),
            ..Self::new(kv_heads, head_dim)
        }
    }

    /// True for a cache kept in device tensors ([`KvCache::on_device`]), false for host pages.
    pub fn holds_tensors(&self) -> bool {
        self.device.is_some()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(kv_heads, head_dim)`.
    pub fn geometry(&self) -> (usize, usize) {
        (self.kv_heads, self.head_dim)
    }

    /// Bytes allocated (whole pages).
    pub fn allocated_bytes(&self) -> usize {
        let values = match &self.device {
            Some(DeviceKv {
                buffers: Some((keys, _)),
                ..
            }) => keys.elem_count(),
            Some(_) => 0,
            None => self.pages.len() * self.page_values(),
        };
        2 * values * std::mem::size_of::<f32>()
    }

    /// Forgets every position and frees the pages (or buffers).
    pub fn clear(&mut self) {
        self.pages = Vec::new();
        if let Some(device) = &mut self.device {
            device.buffers = None;
        }
        self.len = 0;
    }

    fn page_values(&self) -> usize {
        self.kv_heads * PAGE * self.head_dim
    }

    /// Appends `tokens` positions whose keys and values are laid out `[token][kv_head][dim]`
    /// (as the projections produce them) to a host-paged cache.
    pub(crate) fn append(&mut self, keys: &[f32], values: &[f32]) -> Result<()> {
        if self.device.is_some() {
            return Err(wrong_kind("host rows", "device tensors"));
        }
        let row = self.kv_heads * self.head_dim;
        debug_assert_eq!(keys.len(), values.len());
        debug_assert_eq!(keys.len() % row.max(1), 0);
        let tokens = keys.len() / row.max(1);
        for t in 0..tokens {
            let (page, slot) = (self.len / PAGE, self.len % PAGE);
            if page == self.pages.len() {
                let n = self.page_values();
                self.pages.push(Page {
                    keys: vec![0.0; n],
                    values: vec![0.0; n],
                });
            }
            let page = &mut self.pages[page];
            for h in 0..self.kv_heads {
                let src = t * row + h * self.head_dim;
                let dst = (h * PAGE + slot) * self.head_dim;
                page.keys[dst..dst + self.head_dim]
                    .copy_from_slice(&keys[src..src + self.head_dim]);
                page.values[dst..dst + self.head_dim]
                    .copy_from_slice(&values[src..src + self.head_dim]);
            }
            self.len += 1;
        }
        Ok(())
    }

    /// Appends the positions of `keys` and `values`, `[tokens, kv_heads, head_dim]` on the
    /// cache's device, to a device-tensor cache.
    pub(crate) fn append_tensors(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let Some(device) = &mut self.device else {
            return Err(wrong_kind("tensors", "host pages"));
        };
        let tokens = keys.dim(0)?;
        let needed = self.len + tokens;
        let (kv, hd) = (self.kv_heads, self.head_dim);
        let capacity = device.buffers.as_ref().map_or(0, |(k, _)| k.dims()[1]);
        if needed > capacity {
            // Double (in whole pages) so that a long generation copies O(len) values in all.
            let grown = needed.max(2 * capacity).div_ceil(PAGE) * PAGE;
            let fresh = || Tensor::zeros((kv, grown, hd), DType::F32, &device.device);
            let (new_keys, new_values) = (fresh()?, fresh()?);
            if let Some((old_keys, old_values)) = &device.buffers {
                new_keys.slice_set(&old_keys.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                new_values.slice_set(&old_values.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
            device.buffers = Some((new_keys, new_values));
        }
        let (buffer_keys, buffer_values) = device.buffers.as_ref().expect("allocated above");
        let head_major = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?)
        };
        buffer_keys.slice_set(&head_major(keys)?, 1, self.len)?;
        buffer_values.slice_set(&head_major(values)?, 1, self.len)?;
        self.len = needed;
        Ok(())
    }

    /// A device cache's keys and values of every position, `[kv_heads, len, head_dim]` views
    /// (`None` for a host-paged cache, or before the first append).
    pub(crate) fn tensors(&self) -> Result<Option<(Tensor, Tensor)>> {
        match &self.device {
            Some(DeviceKv {
                buffers: Some((keys, values)),
                ..
            }) => Ok(Some((
                keys.narrow(1, 0, self.len)?,
                values.narrow(1, 0, self.len)?,
            ))),
            _ => Ok(None),
        }
    }

    /// Head `head`'s keys and values of the first `positions` positions, one `(keys, values)`
    /// pair of `[rows][head_dim]` slices per page, in order.
    pub(crate) fn head_pages(
        &self,
        head: usize,
        positions: usize,
    ) -> impl Iterator<Item = (&[f32], &[f32])> + '_ {
        let positions = positions.min(self.len);
        let hd = self.head_dim;
        self.pages.iter().enumerate().filter_map(move |(p, page)| {
            let rows = positions.saturating_sub(p * PAGE).min(PAGE);
            (rows > 0).then(|| {
                let at = head * PAGE * hd;
                (
                    &page.keys[at..at + rows * hd],
                    &page.values[at..at + rows * hd],
                )
            })
        })
    }

    /// A copy as f32 `(keys, values)`, each `[kv_heads][len][head_dim]` row-major (the snapshot
    /// layout).
    pub fn export(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        if self.device.is_some() {
            return Ok(match self.tensors()? {
                Some((keys, values)) => (
                    keys.flatten_all()?.to_vec1::<f32>()?,
                    values.flatten_all()?.to_vec1::<f32>()?,
                ),
                None => (Vec::new(), Vec::new()),
            });
        }
        let mut keys = Vec::with_capacity(self.kv_heads * self.len * self.head_dim);
        let mut values = Vec::with_capacity(keys.capacity());
        for h in 0..self.kv_heads {
            for (k, v) in self.head_pages(h, self.len) {
                keys.extend_from_slice(k);
                values.extend_from_slice(v);
            }
        }
        Ok((keys, values))
    }

    /// Replaces the contents with `len` positions laid out as [`export`](Self::export) returns
    /// them; `len == 0` empties it. Lengths that do not match are an error naming both, and
    /// leave the cache as it was.
    pub fn import(&mut self, len: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        let want = self.kv_heads * len * self.head_dim;
        if keys.len() != want || values.len() != want {
            return Err(ModelError::IncompatibleState(format!(
                "a KV cache of {len} positions × {} heads × {} dims needs {want} keys and                  values, got {} and {}",
                self.kv_heads,
                self.head_dim,
                keys.len(),
                values.len()
            )));
        }
        self.clear();
        if let Some(device) = &self.device {
            let shape = (self.kv_heads, len, self.head_dim);
            let token_major = |values: &[f32]| -> Result<Tensor> {
                Ok(Tensor::from_slice(values, shape, &device.device)?.transpose(0, 1)?)
            };
            let (keys, values) = (token_major(keys)?, token_major(values)?);
            return self.append_tensors(&keys, &values);
        }
        let hd = self.head_dim;
        let row = self.kv_heads * hd;
        // Re-interleave to the token-major layout `append` takes, a token at a time.
        let mut k = vec![0f32; row];
        let mut v = vec![0f32; row];
        for t in 0..len {
            for h in 0..self.kv_heads {
                let src = (h * len + t) * hd;
                k[h * hd..(h + 1) * hd].copy_from_slice(&keys[src..src + hd]);
                v[h * hd..(h + 1) * hd].copy_from_slice(&values[src..src + hd]);
            }
            self.append(&k, &v)?;
        }
        Ok(())
    }
}

/// Rows of one kind handed to a cache of the other (attention refuses such a cache first).
fn wrong_kind(given: &str, held: &str) -> ModelError {
    ModelError::IncompatibleState(format!("KV cache: {given} appended to a cache of {held}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions spanning several pages come back in order, per head, and survive export/import.
    #[test]
    fn append_export_import_round_trip() {
        let (heads, hd, len) = (2, 3, 2 * PAGE + 5);
        let value = |t: usize, h: usize, d: usize| (t * 100 + h * 10 + d) as f32;
        let mut cache = KvCache::new(heads, hd);
        // Appended in uneven chunks, as prefill chunks and decode steps do.
        let mut t = 0;
        for chunk in [1, PAGE - 2, 7, PAGE - 10, 9] {
            let mut k = Vec::new();
            for tt in t..t + chunk {
                for h in 0..heads {
                    k.extend((0..hd).map(|d| value(tt, h, d)));
                }
            }
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            cache.append(&k, &v).unwrap();
            t += chunk;
        }
        assert_eq!(cache.len(), len);
        assert_eq!(cache.allocated_bytes(), 3 * 2 * heads * PAGE * hd * 4);
        let (keys, values) = cache.export().unwrap();
        for h in 0..heads {
            for t in 0..len {
                for d in 0..hd {
                    let i = (h * len + t) * hd + d;
                    assert_eq!(keys[i], value(t, h, d));
                    assert_eq!(values[i], -value(t, h, d));
                }
            }
        }
        let mut copy = KvCache::new(heads, hd);
        copy.import(len, &keys, &values).unwrap();
        assert!(copy.import(len, &keys[1..], &values).is_err());
        assert_eq!(copy.export().unwrap(), (keys, values));
        // A prefix view stops inside the last page it reaches.
        let rows: Vec<usize> = cache
            .head_pages(1, PAGE + 3)
            .map(|(k, _)| k.len() / hd)
            .collect();
        assert_eq!(rows, vec![PAGE, 3]);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.allocated_bytes(), 0);
    }

    /// The tensor cache (attention on candle's ops) holds what the paged one holds, across
    /// several capacity doublings, and round-trips through export/import the same way.
    #[test]
    fn tensor_cache_matches_the_paged_one() {
        let (heads, hd) = (2, 3);
        let mut paged = KvCache::new(heads, hd);
        let mut tensors = KvCache::on_device(heads, hd, &Device::Cpu);
        let mut t = 0;
        for chunk in [3, 1, PAGE, 1, 2 * PAGE + 7] {
            let k: Vec<f32> = (0..chunk * heads * hd)
                .map(|i| (t * 1000 + i) as f32)
                .collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            paged.append(&k, &v).unwrap();
            let shape = (chunk, heads, hd);
            let (kt, vt) = (
                Tensor::from_slice(&k, shape, &Device::Cpu).unwrap(),
                Tensor::from_slice(&v, shape, &Device::Cpu).unwrap(),
            );
            tensors.append_tensors(&kt, &vt).unwrap();
            // Rows of the other kind are refused and change nothing.
            assert!(tensors.append(&k, &v).is_err());
            assert!(paged.append_tensors(&kt, &vt).is_err());
            t += chunk;
            assert_eq!(tensors.len(), t);
            assert_eq!(tensors.export().unwrap(), paged.export().unwrap());
        }
        assert!(tensors.allocated_bytes() >= paged.allocated_bytes());
        let (keys, values) = paged.export().unwrap();
        let mut copy = KvCache::on_device(heads, hd, &Device::Cpu);
        copy.import(t, &keys, &values).unwrap();
        assert!(copy.import(t, &keys[1..], &values).is_err());
        assert_eq!(copy.export().unwrap(), (keys, values));
        copy.clear();
        assert!(copy.is_empty());
        assert_eq!(copy.allocated_bytes(), 0);
        assert_eq!(copy.export().unwrap(), (Vec::new(), Vec::new()));
    }
}
