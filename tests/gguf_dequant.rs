//! Dequantization of every GGUF weight type against ggml's own: `models/goldens/gguf/dequant.gguf`
//! (written by `models/tools/gen_gguf_fixtures.py`) holds, per type, 2 × 512 values of seeded
//! random block bytes and `<type>.expected`, what gguf-py's `dequantize` makes of them (checked
//! there to be bit-identical to ggml's C dequantizer). The engine reads the file with candle's
//! reader and dequantizes with candle's kernels, as it does every weight it loads; the values
//! must be bit-identical.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use candle_core::Device;

#[test]
fn every_weight_type_dequantizes_like_ggml() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/goldens/gguf/dequant.gguf");
    let mut file = std::fs::File::open(&path).expect("dequant.gguf");
    let content = Content::read(&mut file).expect("header");
    let types = [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
    ];
    for name in types {
        let q = content.tensor(&mut file, name, &Device::Cpu).expect(name);
        assert_eq!(
            hybrid_decode::model::matrix::ggml_name(q.dtype()),
            name,
            "stored type of `{name}`"
        );
        let got = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("dequantize");
        let want = content
            .tensor(&mut file, &format!("{name}.expected"), &Device::Cpu)
            .and_then(|t| t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>())
            .expect("expected");
        assert_eq!(got.len(), 1024, "{name}");
        // Bits, not differences: the F32/BF16 goldens span the whole finite range.
        let mismatches: Vec<usize> = (0..got.len())
            .filter(|&i| {
                got[i].to_bits() != want[i].to_bits() && !(got[i] == 0.0 && want[i] == 0.0)
            })
            .collect();
        assert!(
            mismatches.is_empty(),
            "{name}: {} of 1024 values differ, first at {}: {} vs ggml {}",
            mismatches.len(),
            mismatches[0],
            got[mismatches[0]],
            want[mismatches[0]]
        );
    }
}
