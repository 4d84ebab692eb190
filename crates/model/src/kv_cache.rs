//! The keys and values one attention layer has seen for one sequence, kept in pages.
//!
//! A page holds [`PAGE`] positions of every KV head; pages are allocated as the sequence grows
//! and never move, so appending a token copies only that token (the cache used to be one tensor
//! re-concatenated per token: the whole cache copied every step, plus a fresh multi-MiB
//! allocation and its page faults). Memory is bounded by the positions held, rounded up to a
//! page.
//!
//! Host pages store keys and values in f32, bf16 or f16 ([`KvDtype`]); the attention widens
//! them to f32 as it reads them and computes in f32 whatever the storage. 16 bits halve the
//! bytes every decode step streams per cached position, which is what decode time at long
//! context goes to (llama.cpp keeps f16 by default; HF transformers keeps the model's dtype).
//!
//! A model whose attention runs on candle's ops (on a GPU, or `LoadOptions::candle_ops`) keeps
//! the cache as two f32 tensors on its device instead ([`KvCache::on_device`]), `[kv_heads]
//! [capacity][head_dim]`, the capacity grown by doubling in whole pages; appending writes the
//! new rows in place, and a growth copies what is there once.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::error::{ModelError, Result};
use crate::gemv::WeightElement;

/// Positions per page: 1 MiB of f32 keys and values per page at the 0.8B shape (2 KV heads ×
/// 256 dims), few enough pages at long context that the per-page loop costs nothing.
pub const PAGE: usize = 256;

/// The element type a host-paged KV cache stores keys and values in (`--kv-cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 4 bytes a value: exactly what the projections produced.
    F32,
    /// 2 bytes, 8 significant bits, f32's range (HF transformers' cache for bf16 models).
    Bf16,
    /// 2 bytes, 11 significant bits, values up to 65504 (llama.cpp's default cache type).
    F16,
}

impl KvDtype {
    /// The values `--kv-cache` takes, for help texts and errors.
    pub const CHOICES: &'static str = "auto, f32, bf16, f16";

    /// The default for a model whose weight matrices are f32 (`full_precision`) or not: f32
    /// keeps an f32 model's logits those of the reference; every smaller weight format gets
    /// f16, as llama.cpp does for every model.
    pub fn auto(full_precision: bool) -> Self {
        if full_precision {
            KvDtype::F32
        } else {
            KvDtype::F16
        }
    }

    /// Parses a `--kv-cache` value: `auto` is `None` (see [`KvDtype::auto`]).
    pub fn parse_flag(value: &str) -> std::result::Result<Option<Self>, String> {
        match value {
            "auto" => Ok(None),
            other => other.parse().map(Some),
        }
    }

    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 | KvDtype::F16 => 2,
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
            KvDtype::F16 => "f16",
        })
    }
}

impl FromStr for KvDtype {
    type Err = String;

    fn from_str(value: &str) -> std::result::Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "bf16" => Ok(KvDtype::Bf16),
            "f16" => Ok(KvDtype::F16),
            _ => Err(format!(
                "unknown KV cache type `{value}` (one of {})",
                KvDtype::CHOICES
            )),
        }
    }
}

/// One page: `[kv_heads][PAGE][head_dim]` keys and the same of values, so one head's rows in a
/// page are contiguous.
#[derive(Debug, Clone)]
pub(crate) struct Page<T> {
    keys: Vec<T>,
    values: Vec<T>,
}

/// The pages of a host cache, in its [`KvDtype`].
#[derive(Debug, Clone)]
pub(crate) enum HostPages {
    F32(Vec<Page<f32>>),
    Bf16(Vec<Page<bf16>>),
    F16(Vec<Page<f16>>),
}

/// `$body` with `$pages` bound to the page vector of whichever dtype `$host` holds.
macro_rules! with_pages {
    ($host:expr, $pages:ident => $body:expr) => {
        match $host {
            HostPages::F32($pages) => $body,
            HostPages::Bf16($pages) => $body,
            HostPages::F16($pages) => $body,
        }
    };
}

/// A value type a host cache can store: narrowed from f32 on append, widened back by the
/// attention's loads ([`WeightElement`]).
pub(crate) trait KvElement: WeightElement + Default + Send + Sync + 'static {
    /// The value nearest `v` (round to nearest even).
    fn narrow(v: f32) -> Self;

    /// `values` as f32: the slice itself for f32, else widened into `scratch` by `half`'s slice
    /// conversion (F16C or NEON where the CPU has it, chosen once per call, not per value).
    fn as_f32<'a>(values: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32];

    /// The pages of `host` if it holds this type.
    fn pages(host: &HostPages) -> Option<&[Page<Self>]>;
}

impl KvElement for f32 {
    fn narrow(v: f32) -> Self {
        v
    }

    fn as_f32<'a>(values: &'a [Self], _: &'a mut Vec<f32>) -> &'a [f32] {
        values
    }

    fn pages(host: &HostPages) -> Option<&[Page<Self>]> {
        match host {
            HostPages::F32(pages) => Some(pages),
            _ => None,
        }
    }
}

/// The 16-bit element types: narrowed by `half`'s rounding, widened a slice at a time.
macro_rules! sixteen_bit_element {
    ($element:ty, $variant:ident) => {
        impl KvElement for $element {
            fn narrow(v: f32) -> Self {
                <$element>::from_f32(v)
            }

            fn as_f32<'a>(values: &'a [Self], scratch: &'a mut Vec<f32>) -> &'a [f32] {
                scratch.resize(values.len(), 0.0);
                values.convert_to_f32_slice(scratch);
                scratch
            }

            fn pages(host: &HostPages) -> Option<&[Page<Self>]> {
                match host {
                    HostPages::$variant(pages) => Some(pages),
                    _ => None,
                }
            }
        }
    };
}

sixteen_bit_element!(bf16, Bf16);
sixteen_bit_element!(f16, F16);

/// Appends `tokens` positions, `[token][kv_head][dim]` f32, at position `len` of `pages`
/// (narrowed to `T`), allocating pages as they fill.
fn append_rows<T: KvElement>(
    pages: &mut Vec<Page<T>>,
    (kv_heads, head_dim): (usize, usize),
    len: usize,
    keys: &[f32],
    values: &[f32],
) {
    let row = kv_heads * head_dim;
    let tokens = keys.len() / row.max(1);
    let narrow = |dst: &mut [T], src: &[f32]| {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = T::narrow(*s));
    };
    for t in 0..tokens {
        let (page, slot) = ((len + t) / PAGE, (len + t) % PAGE);
        if page == pages.len() {
            let n = kv_heads * PAGE * head_dim;
            pages.push(Page {
                keys: vec![T::default(); n],
                values: vec![T::default(); n],
            });
        }
        let page = &mut pages[page];
        for h in 0..kv_heads {
            let src = t * row + h * head_dim;
            let dst = (h * PAGE + slot) * head_dim;
            narrow(
                &mut page.keys[dst..dst + head_dim],
                &keys[src..src + head_dim],
            );
            narrow(
                &mut page.values[dst..dst + head_dim],
                &values[src..src + head_dim],
            );
        }
    }
}

/// Head `head`'s rows of the first `positions` positions of `pages`, one `(keys, values)` pair
/// of `[rows][head_dim]` slices per page.
fn page_rows<T>(
    pages: &[Page<T>],
    head: usize,
    positions: usize,
    head_dim: usize,
) -> impl Iterator<Item = (&[T], &[T])> + '_ {
    pages.iter().enumerate().filter_map(move |(p, page)| {
        let rows = positions.saturating_sub(p * PAGE).min(PAGE);
        (rows > 0).then(|| {
            let at = head * PAGE * head_dim;
            (
                &page.keys[at..at + rows * head_dim],
                &page.values[at..at + rows * head_dim],
            )
        })
    })
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
    pages: HostPages,
    /// `Some`: the cache lives in tensors on a device (the pages stay empty).
    device: Option<DeviceKv>,
    len: usize,
}

impl KvCache {
    /// An empty f32 cache in host pages for `kv_heads` heads of `head_dim` values.
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        Self::in_dtype(kv_heads, head_dim, KvDtype::F32)
    }

    /// An empty cache in host pages storing `dtype`.
    pub fn in_dtype(kv_heads: usize, head_dim: usize, dtype: KvDtype) -> Self {
        KvCache {
            kv_heads,
            head_dim,
            pages: match dtype {
                KvDtype::F32 => HostPages::F32(Vec::new()),
                KvDtype::Bf16 => HostPages::Bf16(Vec::new()),
                KvDtype::F16 => HostPages::F16(Vec::new()),
            },
            device: None,
            len: 0,
        }
    }

    /// An empty cache in f32 tensors on `device`, for attention on candle's ops.
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

    /// The type keys and values are stored in (f32 for a device cache).
    pub fn dtype(&self) -> KvDtype {
        match self.pages {
            HostPages::F32(_) => KvDtype::F32,
            HostPages::Bf16(_) => KvDtype::Bf16,
            HostPages::F16(_) => KvDtype::F16,
        }
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
            None => with_pages!(&self.pages, pages => pages.len()) * self.page_values(),
        };
        2 * values * self.dtype().size()
    }

    /// Forgets every position and frees the pages (or buffers).
    pub fn clear(&mut self) {
        with_pages!(&mut self.pages, pages => *pages = Vec::new());
        if let Some(device) = &mut self.device {
            device.buffers = None;
        }
        self.len = 0;
    }

    fn page_values(&self) -> usize {
        self.kv_heads * PAGE * self.head_dim
    }

    /// Appends `tokens` positions whose keys and values are laid out `[token][kv_head][dim]`
    /// (as the projections produce them) to a host-paged cache, rounded to its dtype.
    pub fn append(&mut self, keys: &[f32], values: &[f32]) -> Result<()> {
        if self.device.is_some() {
            return Err(wrong_kind("host rows", "device tensors"));
        }
        let row = self.kv_heads * self.head_dim;
        debug_assert_eq!(keys.len(), values.len());
        debug_assert_eq!(keys.len() % row.max(1), 0);
        let geometry = self.geometry();
        with_pages!(&mut self.pages, pages => append_rows(pages, geometry, self.len, keys, values));
        self.len += keys.len() / row.max(1);
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
    pub(crate) fn head_pages<T: KvElement>(
        &self,
        head: usize,
        positions: usize,
    ) -> impl Iterator<Item = (&[T], &[T])> + '_ {
        // Another type's pages are none of this type's (the attention asks for `dtype()`'s).
        let pages = T::pages(&self.pages).unwrap_or_default();
        page_rows(pages, head, positions.min(self.len), self.head_dim)
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
            with_pages!(&self.pages, pages => {
                for (k, v) in page_rows(pages, h, self.len, self.head_dim) {
                    keys.extend(k.iter().map(|x| x.widen()));
                    values.extend(v.iter().map(|x| x.widen()));
                }
            });
        }
        Ok((keys, values))
    }

    /// Replaces the contents with `len` positions laid out as [`export`](Self::export) returns
    /// them, rounded to the cache's type (exact for what a cache of the same type exported: a
    /// snapshot restores bit for bit into a model with the same `--kv-cache`); `len == 0`
    /// empties it. Lengths that do not match are an error naming both, and leave the cache as
    /// it was.
    pub fn import(&mut self, len: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        let want = self.kv_heads * len * self.head_dim;
        if keys.len() != want || values.len() != want {
            return Err(ModelError::IncompatibleState(format!(
                "a KV cache of {len} positions × {} heads × {} dims needs {want} keys and \
                 values, got {} and {}",
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
            .head_pages::<f32>(1, PAGE + 3)
            .map(|(k, _)| k.len() / hd)
            .collect();
        assert_eq!(rows, vec![PAGE, 3]);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.allocated_bytes(), 0);
    }

    /// A 16-bit cache holds each value rounded to nearest in its type, takes half the bytes of
    /// an f32 one, and its export imports back to the same contents (a snapshot round trip
    /// loses nothing more).
    #[test]
    fn sixteen_bit_pages_round_to_nearest_and_round_trip() {
        let (heads, hd, len) = (2, 5, PAGE + 3);
        let k: Vec<f32> = (0..len * heads * hd)
            .map(|i| ((i * 7919) % 1999) as f32 / 7.3 - 130.0)
            .collect();
        let v: Vec<f32> = k.iter().map(|x| x * 0.37 + 1.0 / 3.0).collect();
        let f32_bytes = {
            let mut cache = KvCache::new(heads, hd);
            cache.append(&k, &v).unwrap();
            cache.allocated_bytes()
        };
        type Rounding = fn(f32) -> f32;
        let rounded: [(KvDtype, Rounding); 2] = [
            (KvDtype::Bf16, |x| bf16::from_f32(x).to_f32()),
            (KvDtype::F16, |x| f16::from_f32(x).to_f32()),
        ];
        for (dtype, round) in rounded {
            let mut cache = KvCache::in_dtype(heads, hd, dtype);
            assert_eq!(cache.dtype(), dtype);
            cache.append(&k[..heads * hd], &v[..heads * hd]).unwrap();
            cache.append(&k[heads * hd..], &v[heads * hd..]).unwrap();
            assert_eq!(cache.allocated_bytes(), f32_bytes / 2);
            let (keys, values) = cache.export().unwrap();
            for h in 0..heads {
                for t in 0..len {
                    for d in 0..hd {
                        let (i, src) = ((h * len + t) * hd + d, (t * heads + h) * hd + d);
                        assert_eq!(keys[i], round(k[src]), "{dtype} key {i}");
                        assert_eq!(values[i], round(v[src]), "{dtype} value {i}");
                    }
                }
            }
            let mut copy = KvCache::in_dtype(heads, hd, dtype);
            copy.import(len, &keys, &values).unwrap();
            assert_eq!(copy.export().unwrap(), (keys, values));
            // Pages of another type are not this type's: nothing to read.
            assert_eq!(cache.head_pages::<f32>(0, len).count(), 0);
        }
        assert_eq!("F16".parse::<KvDtype>(), Ok(KvDtype::F16));
        assert_eq!(KvDtype::parse_flag("auto"), Ok(None));
        assert!(KvDtype::parse_flag("q8_0")
            .unwrap_err()
            .contains("auto, f32"));
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
