//! Decode matrix–vector kernels in weight bytes per second: one activation row against a weight
//! matrix larger than the last-level cache, for every weight format the model streams (f32,
//! bf16, Q8_0 with our kernel, Q4_K and Q6_K with ours and through candle's block dots). Decode speed is bound
//! by these numbers; compare them with the machine's memory bandwidth.
//!
//! bf16 is also measured with eight activation rows (a batched decode step), from memory and
//! with the weights in cache; Q8_0, Q4_K and Q6_K with eight rows from memory.
//! Dense and Q8_0 kernels are measured at every SIMD tier this CPU has (`avx512`, `avx2`,
//! `portable`), so one run compares the paths.
//!
//! `cargo bench -p hybrid-model --bench matvec` (`HYBRID_THREADS=N` sets the thread count).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use hybrid_model::gemv::{gemv_at, WeightRows};
use hybrid_model::kquant_gemv::kquant_matmul_at;
use hybrid_model::qgemm::{blocks_matmul, q8_0_matmul_at};
use hybrid_simd::Tier;

/// Weight rows and row length: 256 Mi values (1 GiB in f32, 272 MiB in Q8_0, 144 MiB in Q4_K),
/// beyond the last-level caches seen here (up to 105 MiB), with the 0.8B shape's hidden size as
/// the row length.
const N: usize = 262144;
const K: usize = 1024;
/// Activation rows of the batched measurement: the largest decode batch the GEMV takes.
const BATCH: usize = 8;
/// Weight rows of the in-cache batched measurement (4 MiB of bf16: within L2 + L3 here).
const CACHED_ROWS: usize = 2048;

fn matvec(c: &mut Criterion) {
    let x: Vec<f32> = (0..K)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut y = vec![0f32; N];
    let w = Tensor::randn(0f32, 1.0, (N, K), &Device::Cpu).expect("random weights");
    let mut group = c.benchmark_group(format!("matvec {N}x{K}"));
    group.sample_size(20);

    let tiers: Vec<Tier> = Tier::ALL
        .into_iter()
        .rev()
        .filter(|t| t.is_supported())
        .collect();
    let f32_weights = w
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32");
    group.throughput(Throughput::Bytes((N * K * 4) as u64));
    for &tier in &tiers {
        group.bench_function(BenchmarkId::new("f32", tier.key()), |b| {
            b.iter(|| gemv_at(tier, WeightRows::F32(&f32_weights), K, &x, &mut y).expect("gemv"))
        });
    }
    let bf16_weights: Vec<bf16> = f32_weights.iter().map(|&v| bf16::from_f32(v)).collect();
    drop(f32_weights);
    group.throughput(Throughput::Bytes((N * K * 2) as u64));
    for &tier in &tiers {
        group.bench_function(BenchmarkId::new("bf16", tier.key()), |b| {
            b.iter(|| gemv_at(tier, WeightRows::Bf16(&bf16_weights), K, &x, &mut y).expect("gemv"))
        });
    }
    // A batched decode step: BATCH activation rows against the same weights, read once. The
    // throughput is still weight bytes per second, so BATCH × this rate is the FLOP rate.
    let xs: Vec<f32> = (0..BATCH)
        .flat_map(|r| x.iter().map(move |v| v * (r + 1) as f32))
        .collect();
    let mut ys = vec![0f32; BATCH * N];
    for &tier in &tiers {
        group.bench_function(
            BenchmarkId::new(format!("bf16 x{BATCH} rows"), tier.key()),
            |b| {
                b.iter(|| {
                    gemv_at(tier, WeightRows::Bf16(&bf16_weights), K, &xs, &mut ys).expect("gemv")
                })
            },
        );
    }
    // The same batch with the weights in cache (the first CACHED_ROWS rows, 4 MiB): what the
    // batched kernel computes per second when memory is not the limit. Below the DRAM figure,
    // the batched step is compute-bound.
    let cached = &bf16_weights[..CACHED_ROWS * K];
    let mut ys_cached = vec![0f32; BATCH * CACHED_ROWS];
    group.throughput(Throughput::Bytes((CACHED_ROWS * K * 2) as u64));
    for &tier in &tiers {
        group.bench_function(
            BenchmarkId::new(format!("bf16 x{BATCH} rows, cached"), tier.key()),
            |b| {
                b.iter(|| {
                    gemv_at(tier, WeightRows::Bf16(cached), K, &xs, &mut ys_cached).expect("gemv")
                })
            },
        );
    }
    drop(bf16_weights);

    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
        let bytes = QTensor::quantize(&w, dtype)
            .and_then(|q| q.data().map(|d| d.into_owned()))
            .expect("quantize");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let name = format!("{dtype:?}");
        if dtype == GgmlDType::Q8_0 {
            for &tier in &tiers {
                group.bench_function(BenchmarkId::new(&name, tier.key()), |b| {
                    b.iter(|| q8_0_matmul_at(tier, &bytes, N, K, &x, &mut y).expect("q8_0"))
                });
            }
            for &tier in &tiers {
                let batch = BenchmarkId::new(format!("{name} x{BATCH} rows"), tier.key());
                group.bench_function(batch, |b| {
                    b.iter(|| q8_0_matmul_at(tier, &bytes, N, K, &xs, &mut ys).expect("q8_0"))
                });
            }
        } else {
            // Our K-quant kernels (AVX-512 and AVX2) beside candle's block dots.
            for &tier in tiers.iter().filter(|t| **t >= Tier::Avx2) {
                group.bench_function(BenchmarkId::new(&name, tier.key()), |b| {
                    b.iter(|| {
                        kquant_matmul_at(tier, dtype, &bytes, N, K, &x, &mut y).expect("k-quant")
                    })
                });
            }
            // A batched decode step: each unpacked chunk of weights shared by the rows.
            for &tier in tiers.iter().filter(|t| **t >= Tier::Avx2) {
                let batch = BenchmarkId::new(format!("{name} x{BATCH} rows"), tier.key());
                group.bench_function(batch, |b| {
                    b.iter(|| {
                        kquant_matmul_at(tier, dtype, &bytes, N, K, &xs, &mut ys).expect("k-quant")
                    })
                });
            }
            // One row against L3-resident weights (8192 rows): the kernel's rate without DRAM.
            let rows = 8192;
            let row_bytes = bytes.len() / N;
            let hot = &bytes[..rows * row_bytes];
            group.throughput(Throughput::Bytes(hot.len() as u64));
            for &tier in tiers.iter().filter(|t| **t >= Tier::Avx2) {
                group.bench_function(
                    BenchmarkId::new(format!("{name}, in L3"), tier.key()),
                    |b| {
                        b.iter(|| {
                            kquant_matmul_at(tier, dtype, hot, rows, K, &x, &mut y[..rows])
                                .expect("k-quant")
                        })
                    },
                );
            }
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_function(BenchmarkId::new(&name, "candle"), |b| {
                b.iter(|| blocks_matmul(dtype, &bytes, (1, K, N), &x, &mut y).expect("blocks"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matvec);
criterion_main!(benches);
