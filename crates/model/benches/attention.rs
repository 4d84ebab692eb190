//! Decode attention over a long KV cache, in cached key and value bytes per second: one new
//! token's query heads against every cached position of one layer, the Qwen3.5-0.8B attention
//! shape (8 query heads sharing 2 KV heads of 256 dims) at 8192 positions (8 MiB of f16 keys
//! and values, beyond L2), for each cache type (`--kv-cache`) at every SIMD tier this CPU has.
//! What decode at long context spends beyond the weights is bound by these numbers.
//!
//! `cargo bench -p hybrid-model --bench attention` (`HYBRID_THREADS=N` sets the thread count).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hybrid_model::cached_attention::{attend_at, AttentionShape};
use hybrid_model::kv_cache::{KvCache, KvDtype};
use hybrid_simd::Tier;

const SHAPE: AttentionShape = AttentionShape {
    heads: 8,
    kv_heads: 2,
    head_dim: 256,
};
/// Cached positions before the new token.
const POSITIONS: usize = 8192;

fn attention(c: &mut Criterion) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim,
    } = SHAPE;
    let value = |i: usize, salt: usize| (((i * 7919 + salt) % 2003) as f32 / 1001.5 - 1.0) * 0.5;
    let row = kv_heads * head_dim;
    let keys: Vec<f32> = (0..(POSITIONS + 1) * row).map(|i| value(i, 1)).collect();
    let values: Vec<f32> = (0..(POSITIONS + 1) * row).map(|i| value(i, 2)).collect();
    let query: Vec<f32> = (0..heads * head_dim).map(|i| value(i, 3)).collect();
    let mut out = vec![0f32; heads * head_dim];
    let tiers: Vec<Tier> = Tier::ALL
        .into_iter()
        .rev()
        .filter(|t| t.is_supported())
        .collect();
    let mut group = c.benchmark_group(format!("attention {POSITIONS} positions"));
    group.sample_size(20);
    for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::F16] {
        let mut cache = KvCache::in_dtype(kv_heads, head_dim, dtype);
        cache.append(&keys, &values).expect("append");
        group.throughput(Throughput::Bytes(
            (2 * (POSITIONS + 1) * row * dtype.size()) as u64,
        ));
        for &tier in &tiers {
            group.bench_function(BenchmarkId::new(dtype.to_string(), tier.key()), |b| {
                b.iter(|| {
                    attend_at(tier, &query, &cache, POSITIONS, SHAPE, &mut out).expect("attend")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
