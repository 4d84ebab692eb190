//! GGML weight blocks rewritten as unsigned 8-bit integers with an affine scale per sub-block,
//! the one form the tiled int8 GEMM ([`crate::int8_gemm`]) multiplies:
//!
//! `w[i] = s[b] · u[i] + o[b]` for `i` in sub-block `b` (`u` in `0..=255`),
//!
//! so that `Σ w·x = s[b]·Σ u·x + o[b]·Σ x` per sub-block: an integer dot product plus a
//! correction from the activations' sub-block sums. Every supported type fits this form exactly:
//!
//! | type | sub-block | `u` | `s` | `o` |
//! |---|---:|---|---|---|
//! | Q8_0 | 32 | `q + 128` | `d` | `−128·d` |
//! | Q4_0 | 32 | nibble | `d` | `−8·d` |
//! | Q4_K | 32 | nibble | `d·sc` | `−dmin·m` |
//! | Q6_K | 16 | 6-bit `q` | `d·sc` | `−32·d·sc` |
//!
//! The bit layouts follow ggml's `dequantize_row_*` (the same as candle's `to_float`); the
//! tests check `s·u + o` against candle's dequantization of every type.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Values sharing one scale and offset in `dtype`'s unpacked form, or `None` when the tiled
/// GEMM does not take the type.
pub(crate) fn subblock_len(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4K => Some(32),
        GgmlDType::Q6K => Some(16),
        _ => None,
    }
}

/// The largest unpacked value `u` of `dtype` (the AVX2 kernel's 16-bit sums must not overflow).
pub(crate) fn max_value(dtype: GgmlDType) -> u8 {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4K => 15,
        GgmlDType::Q6K => 63,
        _ => 255,
    }
}

/// One row of `dtype` blocks (`row`, raw GGML bytes of `u.len()` values) unpacked into `u`,
/// and one scale and offset per sub-block into `s` and `o` (`u.len() / subblock_len` each).
/// The caller passes a type [`subblock_len`] accepts and a row of whole blocks.
pub(crate) fn unpack_row(dtype: GgmlDType, row: &[u8], u: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    match dtype {
        GgmlDType::Q8_0 => q8_0(row, u, s, o),
        GgmlDType::Q4_0 => q4_0(row, u, s, o),
        GgmlDType::Q4K => q4_k(row, u, s, o),
        GgmlDType::Q6K => q6_k(row, u, s, o),
        other => unreachable!("unpack_row called for {other:?}, which subblock_len refuses"),
    }
}

/// The little-endian f16 at `bytes[at..at + 2]` as f32.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Q8_0: 34-byte blocks, an f16 scale then 32 int8 values.
fn q8_0(row: &[u8], u: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    for (b, block) in row.chunks_exact(34).enumerate() {
        let d = f16_at(block, 0);
        s[b] = d;
        o[b] = -128.0 * d;
        for (out, &q) in u[b * 32..(b + 1) * 32].iter_mut().zip(&block[2..]) {
            // q + 128 for a two's-complement byte: flip the sign bit.
            *out = q ^ 0x80;
        }
    }
}

/// Q4_0: 18-byte blocks, an f16 scale then 16 bytes; low nibbles are values 0–15, high
/// nibbles 16–31, each `nibble − 8`.
fn q4_0(row: &[u8], u: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    for (b, block) in row.chunks_exact(18).enumerate() {
        let d = f16_at(block, 0);
        s[b] = d;
        o[b] = -8.0 * d;
        let out = &mut u[b * 32..(b + 1) * 32];
        for (i, &q) in block[2..].iter().enumerate() {
            out[i] = q & 0x0F;
            out[i + 16] = q >> 4;
        }
    }
}

/// Q4_K: 144-byte super-blocks of 256 values: f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit
/// scales and mins, 128 bytes of nibbles. Each 64 values take 32 bytes: low nibbles are the
/// first sub-block of 32, high nibbles the second.
fn q4_k(row: &[u8], u: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    for (sb, block) in row.chunks_exact(144).enumerate() {
        let d = f16_at(block, 0);
        let dmin = f16_at(block, 2);
        let scales = &block[4..16];
        let qs = &block[16..144];
        for j in 0..8 {
            let (sc, m) = q4_k_scale_min(j, scales);
            s[sb * 8 + j] = d * f32::from(sc);
            o[sb * 8 + j] = -(dmin * f32::from(m));
        }
        let out = &mut u[sb * 256..(sb + 1) * 256];
        for chunk in 0..4 {
            let bytes = &qs[chunk * 32..(chunk + 1) * 32];
            for (l, &q) in bytes.iter().enumerate() {
                out[chunk * 64 + l] = q & 0x0F;
                out[chunk * 64 + 32 + l] = q >> 4;
            }
        }
    }
}

/// Scale and min of sub-block `j` (0–7) of a Q4_K super-block from its 12 packed bytes: the
/// first four keep 6 bits each in bytes 0–3 / 4–7; the last four split theirs between the low
/// or high nibble of bytes 8–11 and the top two bits of bytes 0–7.
fn q4_k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q6_K: 210-byte super-blocks of 256 values: 128 bytes of low nibbles, 64 bytes of high
/// 2-bit pairs, 16 int8 scales (one per 16 values, in order), an f16 `d`; each value is
/// `d · sc · (q − 32)`.
fn q6_k(row: &[u8], u: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    for (sb, block) in row.chunks_exact(210).enumerate() {
        let ql = &block[..128];
        let qh = &block[128..192];
        let scales = &block[192..208];
        let d = f16_at(block, 208);
        for (j, &sc) in scales.iter().enumerate() {
            let scale = d * f32::from(sc as i8);
            s[sb * 16 + j] = scale;
            o[sb * 16 + j] = -32.0 * scale;
        }
        let out = &mut u[sb * 256..(sb + 1) * 256];
        for half in 0..2 {
            let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
            let out = &mut out[half * 128..(half + 1) * 128];
            for l in 0..32 {
                out[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                out[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// `s·u + o` equals candle's dequantization (ggml's formulas) for every type taken.
    #[test]
    fn unpacked_rows_equal_candles_dequantization() {
        let (n, k) = (3, 512);
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let bytes = q.data().unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let len = subblock_len(dtype).unwrap();
            let row_bytes = bytes.len() / n;
            for r in 0..n {
                let mut u = vec![0u8; k];
                let (mut s, mut o) = (vec![0f32; k / len], vec![0f32; k / len]);
                unpack_row(
                    dtype,
                    &bytes[r * row_bytes..(r + 1) * row_bytes],
                    &mut u,
                    &mut s,
                    &mut o,
                );
                for i in 0..k {
                    let got = s[i / len] * f32::from(u[i]) + o[i / len];
                    let expected = want[r * k + i];
                    assert!(
                        (got - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                        "{dtype:?} row {r} value {i}: {got} vs candle {expected}"
                    );
                }
            }
        }
    }
}
