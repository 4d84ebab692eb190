// Just enough of CUDA to run gdn.cu on the host, one std::thread per CUDA thread.
//
// Not a general emulator: it exists so that the kernels' *logic* (indexing, the ring protocol,
// the last-block position update, the prefill phases) is checked against the Rust reference on
// machines without a GPU (tests/emulated_kernels.rs). Blocks run one after another; the threads
// of a block run concurrently, with std::barrier standing in for __syncthreads and for the
// lock-step exchange of a warp shuffle. Numerics use the host's libm, so this proves logic,
// not the GPU's rounding.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

struct WarpShared {
    std::barrier<> bar{32};
    float buf[32];
};

struct ThreadCtx {
    dim3 tid, bid, bdim, gdim;
    std::barrier<>* block_bar = nullptr;
    WarpShared* warp = nullptr;
};
inline thread_local ThreadCtx ctx;

#define threadIdx (ctx.tid)
#define blockIdx (ctx.bid)
#define blockDim (ctx.bdim)
#define gridDim (ctx.gdim)

inline void __syncthreads() { ctx.block_bar->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline float __shfl_xor_sync(unsigned, float x, int offset) {
    const int lane = threadIdx.x & 31;
    WarpShared* w = ctx.warp;
    w->buf[lane] = x;
    w->bar.arrive_and_wait();
    const float r = w->buf[lane ^ offset];
    w->bar.arrive_and_wait();
    return r;
}

inline unsigned atomicAdd(unsigned* p, unsigned v) {
    return std::atomic_ref<unsigned>(*p).fetch_add(v);
}

inline void __stwb(float4* p, float4 v) { *p = v; }
inline void __stwb(float2* p, float2 v) { *p = v; }

// Runs `kernel` over the grid: blocks in order (x fastest), each block's threads concurrently.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned b = 0; b < grid.x; ++b) {
        std::barrier<> block_bar(block.x);
        std::vector<std::unique_ptr<WarpShared>> warps;
        for (unsigned w = 0; w < (block.x + 31) / 32; ++w) warps.push_back(std::make_unique<WarpShared>());
        std::vector<std::thread> threads;
        threads.reserve(block.x);
        for (unsigned t = 0; t < block.x; ++t) {
            threads.emplace_back([&, t] {
                ctx.tid = {t, 0, 0};
                ctx.bid = {b, y, 0};
                ctx.bdim = block;
                ctx.gdim = grid;
                ctx.block_bar = &block_bar;
                ctx.warp = warps[t / 32].get();
                kernel();
            });
        }
        for (auto& th : threads) th.join();
    }
}
