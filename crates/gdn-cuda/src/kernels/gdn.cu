// Gated DeltaNet kernels of hybrid-gdn-cuda (DESIGN §3), compiled at run time by NVRTC.
//
// Every shape is a compile-time constant, given by the host as -D defines (see kernels/mod.rs):
//   GDN_HK, GDN_HV   key heads, value heads (GDN_HV % GDN_HK == 0)
//   GDN_DK, GDN_DV   key and value head dims
//   GDN_K            conv kernel size
//   GDN_COLS         value columns one warp owns (decode and scan)
//   GDN_UNROLL       columns a warp loads before it reduces (GDN_COLS % GDN_UNROLL == 0)
//   GDN_WARPS        warps per block
// so that every per-lane register array has a constant size and is indexed only with constants
// (fully unrolled loops), and every division by a head count is by a constant.
//
// Device layouts (one (layer, slot)):
//   state  [HV][DV][DK] f32, value-major: value column j of head h (everything δ_j touches) is one
//          contiguous row of DK floats, read once and written once per token by one warp.
//   ring   [K][CONV_DIM] f32: the last inputs of every conv channel. A token reads the K-1 rows
//          after `pos` (oldest first) and writes its own input into row `pos`, a row nobody reads
//          this token, so the warps of one launch never race on it.
//   meta   [2] u32: meta[0] = pos, meta[1] = blocks of the current launch that have finished. The
//          last block to finish advances pos, so the kernel's arguments never change from token
//          to token (a CUDA graph can replay it).
//
// Numerics follow hybrid_gdn::math (HF / PyTorch conventions): silu(x) = x / (1 + e^-x), softplus
// linear above 20, L2 norm x·(1/sqrt(Σx² + 1e-6)), q scaled by 1/sqrt(dk). Precise expf/sqrtf
// (no fast math): the conformance tolerance is 2e-6 relative.

#ifndef GDN_HK
#error "GDN_HK must be defined by the host"
#endif

#define KEY_DIM (GDN_HK * GDN_DK)
#define VALUE_DIM (GDN_HV * GDN_DV)
#define CONV_DIM (2 * KEY_DIM + VALUE_DIM)
#define IN_LEN (CONV_DIM + 2 * GDN_HV)
#define RATIO (GDN_HV / GDN_HK)
#define COL_GROUPS ((GDN_DV + GDN_COLS - 1) / GDN_COLS)
#define TOTAL_WARPS (GDN_HV * COL_GROUPS)
#define THREADS (GDN_WARPS * 32)

// A lane owns key elements idx(c, u) = c·32·VEC + lane·VEC + u: 16-byte loads when DK is a
// multiple of 128, 8-byte when of 64, single floats (bounds-checked) otherwise.
#if GDN_DK % 128 == 0
#define VEC 4
#elif GDN_DK % 64 == 0
#define VEC 2
#else
#define VEC 1
#endif
#define CHUNKS ((GDN_DK + 32 * VEC - 1) / (32 * VEC))
#define EPL (CHUNKS * VEC)
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ int key_index(int lane, int e) {
    return (e / VEC) * 32 * VEC + lane * VEC + (e % VEC);
}

__device__ __forceinline__ bool key_in_range(int lane, int e) {
#if GDN_DK % (32 * VEC) == 0
    return true;
#else
    return key_index(lane, e) < GDN_DK;
#endif
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        x += __shfl_xor_sync(FULL_MASK, x, offset);
    }
    return x;
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Loads one state row (DK floats) into the lane's registers.
__device__ __forceinline__ void load_row(const float* __restrict__ row, int lane, float (&r)[EPL]) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int base = c * 32 * VEC + lane * VEC;
#if VEC == 4
        const float4 t = *reinterpret_cast<const float4*>(row + base);
        r[c * 4 + 0] = t.x;
        r[c * 4 + 1] = t.y;
        r[c * 4 + 2] = t.z;
        r[c * 4 + 3] = t.w;
#elif VEC == 2
        const float2 t = *reinterpret_cast<const float2*>(row + base);
        r[c * 2 + 0] = t.x;
        r[c * 2 + 1] = t.y;
#else
        r[c] = key_in_range(lane, c) ? row[base] : 0.0f;
#endif
    }
}

// Stores one state row from the lane's registers.
__device__ __forceinline__ void store_row(float* __restrict__ row, int lane, const float (&r)[EPL]) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int base = c * 32 * VEC + lane * VEC;
#if VEC == 4
        float4 t;
        t.x = r[c * 4 + 0];
        t.y = r[c * 4 + 1];
        t.z = r[c * 4 + 2];
        t.w = r[c * 4 + 3];
        // An explicit vector store: NVVM splits a plain float4 assignment here into four scalar
        // stores.
        __stwb(reinterpret_cast<float4*>(row + base), t);
#elif VEC == 2
        float2 t;
        t.x = r[c * 2 + 0];
        t.y = r[c * 2 + 1];
        __stwb(reinterpret_cast<float2*>(row + base), t);
#else
        if (key_in_range(lane, c)) {
            row[base] = r[c];
        }
#endif
    }
}

// Causal depthwise conv of channel c over [history (K-1 values, oldest first), x], then SiLU.
// `hist(i)` gives history value i (0 = oldest).
template <typename History>
__device__ __forceinline__ float conv_channel(const float* __restrict__ w_t, int c, float x,
                                              History hist) {
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < GDN_K - 1; ++i) {
        acc += w_t[i * CONV_DIM + c] * hist(i);
    }
    acc += w_t[(GDN_K - 1) * CONV_DIM + c] * x;
    return silu(acc);
}

// The conv of channel c for one decode token: history from the ring rows after `pos`.
__device__ __forceinline__ float decode_conv(const float* __restrict__ ring,
                                             const float* __restrict__ w_t, const float* x,
                                             unsigned pos, int c) {
    return conv_channel(w_t, c, x[c],
                        [&](int i) { return ring[((pos + 1 + i) % GDN_K) * CONV_DIM + c]; });
}

// q (scaled) and k of key head kh, L2-normalised; returns kᵀq (the same on every lane).
__device__ __forceinline__ float normalise_qk(float (&q)[EPL], float (&k)[EPL], int lane) {
    float sq = 0.0f, sk = 0.0f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
        sq += q[e] * q[e];
        sk += k[e] * k[e];
    }
    sq = warp_sum(sq);
    sk = warp_sum(sk);
    const float scale_q = (1.0f / sqrtf(sq + 1e-6f)) * (1.0f / sqrtf((float)GDN_DK));
    const float scale_k = 1.0f / sqrtf(sk + 1e-6f);
    float kq = 0.0f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
        q[e] *= scale_q;
        k[e] *= scale_k;
        kq += k[e] * q[e];
    }
    return warp_sum(kq);
}

// One decode token for one (layer, slot): conv + SiLU, L2 norm, gating and the single-pass
// delta-rule update (kv = e^g S₀ᵀk, o = e^g S₀ᵀq + δ·kᵀq). Warp w owns value columns
// [group·COLS, group·COLS + COLS) of head h; each state element is read once and written once.
// `block` of `blocks` is this block's place among the blocks working on this (layer, slot).
//
// in:  [IN_LEN] = mixed_qkv | a | b     out: [HV·DV]
__device__ __forceinline__ void decode_token(const float* __restrict__ in,
                                             const float* __restrict__ w_t,
                                             const float* __restrict__ neg_a,
                                             const float* __restrict__ dt_bias,
                                             float* __restrict__ ring, float* __restrict__ state,
                                             unsigned* __restrict__ meta, float* __restrict__ out,
                                             unsigned block, unsigned blocks) {
    const int lane = threadIdx.x & 31;
    const int warp = block * GDN_WARPS + (threadIdx.x >> 5);
    // Read before this block reports done: the last block advances it (below).
    const unsigned pos = *(volatile unsigned*)meta;

    if (warp < TOTAL_WARPS) {
        const int h = warp / COL_GROUPS;
        const int group = warp % COL_GROUPS;
        const int kh = h / RATIO;
        const float* x = in;

        float q[EPL], k[EPL];
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
            q[e] = 0.0f;
            k[e] = 0.0f;
            if (key_in_range(lane, e)) {
                const int i = key_index(lane, e);
                q[e] = decode_conv(ring, w_t, x, pos, kh * GDN_DK + i);
                k[e] = decode_conv(ring, w_t, x, pos, KEY_DIM + kh * GDN_DK + i);
            }
        }
        const float kq = normalise_qk(q, k, lane);

        const float g = neg_a[h] * softplus(x[CONV_DIM + h] + dt_bias[h]);
        const float decay = expf(g);
        const float beta = sigmoid(x[CONV_DIM + GDN_HV + h]);

        // One warp per key head records the head's q and k inputs in the ring.
        if (h % RATIO == 0 && group == 0) {
#pragma unroll
            for (int e = 0; e < EPL; ++e) {
                if (key_in_range(lane, e)) {
                    const int cq = kh * GDN_DK + key_index(lane, e);
                    ring[pos * CONV_DIM + cq] = x[cq];
                    ring[pos * CONV_DIM + KEY_DIM + cq] = x[KEY_DIM + cq];
                }
            }
        }

        float* s_head = state + (size_t)h * GDN_DV * GDN_DK;
        const int j0 = group * GDN_COLS;
#pragma unroll
        for (int jj = 0; jj < GDN_COLS; jj += GDN_UNROLL) {
            float s[GDN_UNROLL][EPL];
            float kv[GDN_UNROLL], qv[GDN_UNROLL];
            // All loads of the batch first, so several rows are in flight at once.
#pragma unroll
            for (int u = 0; u < GDN_UNROLL; ++u) {
                const int j = j0 + jj + u;
                if (j < GDN_DV) {
                    load_row(s_head + (size_t)j * GDN_DK, lane, s[u]);
                } else {
#pragma unroll
                    for (int e = 0; e < EPL; ++e) s[u][e] = 0.0f;
                }
            }
#pragma unroll
            for (int u = 0; u < GDN_UNROLL; ++u) {
                float a_kv = 0.0f, a_qv = 0.0f;
#pragma unroll
                for (int e = 0; e < EPL; ++e) {
                    a_kv += s[u][e] * k[e];
                    a_qv += s[u][e] * q[e];
                }
                kv[u] = warp_sum(a_kv);
                qv[u] = warp_sum(a_qv);
            }
#pragma unroll
            for (int u = 0; u < GDN_UNROLL; ++u) {
                const int j = j0 + jj + u;
                if (j < GDN_DV) {
                    const int cv = 2 * KEY_DIM + h * GDN_DV + j;
                    const float v = decode_conv(ring, w_t, x, pos, cv);
                    const float delta = beta * (v - decay * kv[u]);
#pragma unroll
                    for (int e = 0; e < EPL; ++e) {
                        s[u][e] = decay * s[u][e] + k[e] * delta;
                    }
                    store_row(s_head + (size_t)j * GDN_DK, lane, s[u]);
                    if (lane == 0) {
                        out[h * GDN_DV + j] = decay * qv[u] + delta * kq;
                        ring[pos * CONV_DIM + cv] = x[cv];
                    }
                }
            }
        }
    }

    // The last block to finish advances the ring position for the next token. Every block read
    // `pos` before its thread 0 got here, so nobody reads the new value in this launch.
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned done = atomicAdd(&meta[1], 1u);
        if (done == blocks - 1) {
            meta[0] = (pos + 1) % GDN_K;
            meta[1] = 0;
            __threadfence();
        }
    }
}

// One decode token of one (layer, slot): the blocks of the grid share the token.
extern "C" __global__ void __launch_bounds__(THREADS)
    gdn_decode(const float* __restrict__ in, const float* __restrict__ w_t,
               const float* __restrict__ neg_a, const float* __restrict__ dt_bias,
               float* __restrict__ ring, float* __restrict__ state, unsigned* __restrict__ meta,
               float* __restrict__ out) {
    decode_token(in, w_t, neg_a, dt_bias, ring, state, meta, out, blockIdx.x, gridDim.x);
}

// One decode token for each of gridDim.y slots of one layer, in one launch (a batched decode
// step). Member m = blockIdx.y reads staged inputs m (rows of IN_LEN), writes outputs m (rows of
// VALUE_DIM) and works on the slot whose buffers `slots` names: slots[m] is its ring,
// slots[members + m] its state and slots[2·members + m] its meta, as device addresses. Each
// member's blocks advance that member's ring position, as a launch of gdn_decode would.
extern "C" __global__ void __launch_bounds__(THREADS)
    gdn_decode_batch(const float* __restrict__ in, const float* __restrict__ w_t,
                     const float* __restrict__ neg_a, const float* __restrict__ dt_bias,
                     const unsigned long long* __restrict__ slots, float* __restrict__ out) {
    const unsigned m = blockIdx.y;
    const unsigned members = gridDim.y;
    decode_token(in + (size_t)m * IN_LEN, w_t, neg_a, dt_bias, (float*)slots[m],
                 (float*)slots[members + m], (unsigned*)slots[2 * members + m],
                 out + (size_t)m * VALUE_DIM, blockIdx.x, gridDim.x);
}

// Prefill, phase 1 (one block per token): conv + SiLU of every channel, L2 norm of q and k, and
// the gates. `x` holds `tokens` rows of CONV_DIM, then `tokens` a's and `tokens` b's (HV each).
// Writes act[t] = [q̂ | k̂ | v] (CONV_DIM) and gates[t] = [e^g (HV) | β (HV)].
// The ring is only read here (phase 3 updates it), so blocks never race on it.
extern "C" __global__ void __launch_bounds__(256)
    gdn_prefill_conv(const float* __restrict__ x, int tokens, const float* __restrict__ w_t,
                     const float* __restrict__ neg_a, const float* __restrict__ dt_bias,
                     const float* __restrict__ ring, const unsigned* __restrict__ meta,
                     float* __restrict__ act, float* __restrict__ gates) {
    const int t = blockIdx.x;
    if (t >= tokens) return;
    const unsigned pos = meta[0];
    const float* xt = x + (size_t)t * CONV_DIM;
    float* at = act + (size_t)t * CONV_DIM;
    for (int c = threadIdx.x; c < CONV_DIM; c += blockDim.x) {
        // History value i (0 = oldest) of token t is input t - (K-1) + i: from this prompt when
        // that index is ≥ 0, else from the ring.
        at[c] = conv_channel(w_t, c, xt[c], [&](int i) {
            const int tau = t - (GDN_K - 1) + i;
            return tau >= 0 ? x[(size_t)tau * CONV_DIM + c]
                            : ring[((pos + 1 + (tau + GDN_K - 1)) % GDN_K) * CONV_DIM + c];
        });
    }
    __syncthreads();

    const int lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    // 2·HK heads to normalise: q heads first (scaled by 1/sqrt(dk)), then k heads.
    for (int head = threadIdx.x >> 5; head < 2 * GDN_HK; head += warps) {
        float* v = at + head * GDN_DK;
        float sum = 0.0f;
        for (int i = lane; i < GDN_DK; i += 32) sum += v[i] * v[i];
        sum = warp_sum(sum);
        float scale = 1.0f / sqrtf(sum + 1e-6f);
        if (head < GDN_HK) scale *= 1.0f / sqrtf((float)GDN_DK);
        for (int i = lane; i < GDN_DK; i += 32) v[i] *= scale;
    }
    const float* a = x + (size_t)tokens * CONV_DIM;
    const float* b = a + (size_t)tokens * GDN_HV;
    for (int h = threadIdx.x; h < GDN_HV; h += blockDim.x) {
        const float g = neg_a[h] * softplus(a[t * GDN_HV + h] + dt_bias[h]);
        gates[(size_t)t * 2 * GDN_HV + h] = expf(g);
        gates[(size_t)t * 2 * GDN_HV + GDN_HV + h] = sigmoid(b[t * GDN_HV + h]);
    }
}

// Prefill, phase 2: the recurrence over `tokens` tokens. Same warp → columns map as decode, but
// the warp's state columns stay in registers for the whole prompt: each state element is read
// once and written once per prefill call. Warps never talk to each other.
extern "C" __global__ void __launch_bounds__(THREADS)
    gdn_prefill_scan(const float* __restrict__ act, const float* __restrict__ gates, int tokens,
                     float* __restrict__ state, float* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int warp = blockIdx.x * GDN_WARPS + (threadIdx.x >> 5);
    if (warp >= TOTAL_WARPS) return;
    const int h = warp / COL_GROUPS;
    const int group = warp % COL_GROUPS;
    const int kh = h / RATIO;
    const int j0 = group * GDN_COLS;
    float* s_head = state + (size_t)h * GDN_DV * GDN_DK;

    float s[GDN_COLS][EPL];
#pragma unroll
    for (int u = 0; u < GDN_COLS; ++u) {
        if (j0 + u < GDN_DV) {
            load_row(s_head + (size_t)(j0 + u) * GDN_DK, lane, s[u]);
        } else {
#pragma unroll
            for (int e = 0; e < EPL; ++e) s[u][e] = 0.0f;
        }
    }

    for (int t = 0; t < tokens; ++t) {
        const float* at = act + (size_t)t * CONV_DIM;
        float q[EPL], k[EPL];
        float kq = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
            const bool ok = key_in_range(lane, e);
            const int i = key_index(lane, e);
            q[e] = ok ? at[kh * GDN_DK + i] : 0.0f;
            k[e] = ok ? at[KEY_DIM + kh * GDN_DK + i] : 0.0f;
            kq += k[e] * q[e];
        }
        kq = warp_sum(kq);
        const float decay = gates[(size_t)t * 2 * GDN_HV + h];
        const float beta = gates[(size_t)t * 2 * GDN_HV + GDN_HV + h];
#pragma unroll
        for (int u = 0; u < GDN_COLS; ++u) {
            const int j = j0 + u;
            float a_kv = 0.0f, a_qv = 0.0f;
#pragma unroll
            for (int e = 0; e < EPL; ++e) {
                a_kv += s[u][e] * k[e];
                a_qv += s[u][e] * q[e];
            }
            const float kv = warp_sum(a_kv);
            const float qv = warp_sum(a_qv);
            if (j < GDN_DV) {
                const float v = at[2 * KEY_DIM + h * GDN_DV + j];
                const float delta = beta * (v - decay * kv);
#pragma unroll
                for (int e = 0; e < EPL; ++e) {
                    s[u][e] = decay * s[u][e] + k[e] * delta;
                }
                if (lane == 0) {
                    out[(size_t)t * VALUE_DIM + h * GDN_DV + j] = decay * qv + delta * kq;
                }
            }
        }
    }

#pragma unroll
    for (int u = 0; u < GDN_COLS; ++u) {
        if (j0 + u < GDN_DV) {
            store_row(s_head + (size_t)(j0 + u) * GDN_DK, lane, s[u]);
        }
    }
}

// Prefill, phase 3 (one block): the conv history after the prompt is the last K-1 of
// [old history, x_0 .. x_{tokens-1}]. Each thread gathers its channels' new history before
// writing, and the single block syncs before resetting pos, so nothing races.
extern "C" __global__ void __launch_bounds__(1024)
    gdn_prefill_commit(const float* __restrict__ x, int tokens, float* __restrict__ ring,
                       unsigned* __restrict__ meta) {
    const unsigned pos = meta[0];
    for (int c = threadIdx.x; c < CONV_DIM; c += blockDim.x) {
        float hist[GDN_K];
#pragma unroll
        for (int i = 0; i < GDN_K - 1; ++i) {
            // New history value i is input tokens - (K-1) + i, from the prompt or the old ring.
            const int tau = tokens - (GDN_K - 1) + i;
            hist[i] = tau >= 0 ? x[(size_t)tau * CONV_DIM + c]
                               : ring[((pos + 1 + (tau + GDN_K - 1)) % GDN_K) * CONV_DIM + c];
        }
        // Layout with pos = 0: history i lives in row i + 1.
#pragma unroll
        for (int i = 0; i < GDN_K - 1; ++i) {
            ring[(i + 1) * CONV_DIM + c] = hist[i];
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        meta[0] = 0;
        meta[1] = 0;
    }
}
