// gdn_kernel.cpp — Gated DeltaNet decode kernel for AMD Alveo (Vitis HLS C++).
//
// One compute unit keeps the recurrent state of every resident (layer, sequence slot) in on-chip
// memory for the whole generation; per token only the projections come in (m_axi) and the
// outputs go out. The math is DESIGN §3 of hybrid-decode:
//
//   conv + SiLU over mixed_qkv; q, k L2-normalised (q also by 1/√dk);
//   g = −exp(A_log)·softplus(a + dt_bias); β = sigmoid(b);
//   value head h reads key head ⌊h/r⌋:  S ← e^g S;  δ = β(v − Sᵀk);  S ← S + kδᵀ;  o = Sᵀq.
//
// The step is five phases: prepare (conv, L2 norm, gating) → retrieve (Sᵀk and Sᵀq) → delta →
// update + write-back → output. It uses the single-pass identity (S₀ the old state):
//
//   kv = e^g·S₀ᵀk,   o = e^g·S₀ᵀq + δ·(kᵀq),   S₁ = e^g·S₀ + kδᵀ,
//
// and value column j of S only needs δ_j, so each state element is read once and written once per
// token. Retrieve, delta and update share one flattened, II=1 pipeline over state words (one
// process must own the state memory in a dataflow region); update trails retrieve by GDN_LAG
// columns so that a column's delta is ready before its write-back starts.
//
// State layout (per bound (layer, slot) region, value-major):
//   row = base + (g·dv + j)·W + w,  lane p, word half u  ↔  value head h = g·P + p,
//   key index i = w·U + u, value column j;  W = ⌈dk/U⌉, g < ⌈Hv/P⌉.
// Bank p holds value head g·P + p, so the P heads of a group are read in the same cycle; value
// heads that share a key head (GVA, r = Hv/Hk) read the same k and q word.
//
// Plain C++ (g++ compiles it with the pragmas ignored; crates/gdn-xrt builds it as the C-simulation
// of the `xrt-sim` backend). No dynamic memory, no recursion, fixed-size buffers.

#include <math.h>

#include "gdn_kernel.h"

namespace {

// ---- On-chip tables -----------------------------------------------------------------------------

struct GdnLayer {
    unsigned loaded;
    unsigned hk, hv, dk, dv, kernel;  // geometry
    unsigned weight_base;             // first word of this layer's conv weights
    float q_scale;                    // 1/√dk as the host computes it
};

// Everything but the three big memories: loaded layers, per-head constants, slot bindings and
// the bump allocators. Zero at configuration time (registers / BRAM initialised from the
// bitstream), which means "nothing loaded, nothing bound".
struct GdnTables {
    GdnLayer layers[GDN_MAX_LAYERS];
    float neg_a[GDN_MAX_LAYERS][GDN_MAX_HV];    // −exp(A_log)
    float dt_bias[GDN_MAX_LAYERS][GDN_MAX_HV];
    unsigned char bound[GDN_MAX_LAYERS][GDN_MAX_SLOTS];
    unsigned state_base[GDN_MAX_LAYERS][GDN_MAX_SLOTS];  // first state row of (layer, slot)
    unsigned conv_base[GDN_MAX_LAYERS][GDN_MAX_SLOTS];   // first conv-history word
    unsigned state_rows_used;
    unsigned conv_words_used;
    unsigned weight_words_used;
};

typedef float StateRow[GDN_P][GDN_U];

// ---- Small helpers ------------------------------------------------------------------------------

inline unsigned ceil_div(unsigned a, unsigned b) { return (a + b - 1) / b; }

// Channel-padded conv width: the conv memories hold whole rows of GDN_CH channels.
inline unsigned padded_channels(unsigned conv_dim) { return ceil_div(conv_dim, GDN_CH) * GDN_CH; }

inline unsigned conv_dim_of(const GdnLayer& l) { return 2 * l.hk * l.dk + l.hv * l.dv; }

// Rows of state memory one (layer, slot) occupies: every group of P value heads, every value
// column, every word of U key elements.
inline unsigned state_rows_of(const GdnLayer& l) {
    return ceil_div(l.hv, GDN_P) * l.dv * ceil_div(l.dk, GDN_U);
}

inline unsigned conv_words_of(const GdnLayer& l) {
    return padded_channels(conv_dim_of(l)) * (l.kernel - 1);
}

// PyTorch conventions (hybrid_gdn::math): softplus with threshold 20, SiLU as x / (1 + e^−x).
inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
inline float silu(float x) { return x / (1.0f + expf(-x)); }

const float L2_NORM_EPS = 1e-6f;

void set_status(unsigned* status, unsigned code, unsigned detail, unsigned limit, unsigned op) {
    status[GDN_SW_CODE] = code;
    status[GDN_SW_DETAIL] = detail;
    status[GDN_SW_LIMIT] = limit;
    status[GDN_SW_OP] = op;
}

// Sums N partial sums (N a power of two) in a fixed pairwise order: an adder tree in hardware.
template <int N>
float tree_sum(const float (&partial)[N]) {
    float level[N];
#pragma HLS array_partition variable = level complete
    for (int i = 0; i < N; ++i) level[i] = partial[i];
    for (int width = N / 2; width >= 1; width /= 2) {
#pragma HLS unroll
        for (int i = 0; i < width; ++i) level[i] = level[i] + level[i + width];
    }
    return level[0];
}

// ---- Phase 1: prepare (conv + SiLU, L2 norm, gating) --------------------------------------------

// Per-token vectors handed from prepare to the state sweep (ping-pong buffers in hardware).
struct TokenVectors {
    float act[GDN_MAX_CONV_DIM];  // [q (Hk·dk) | k (Hk·dk) | v (Hv·dv)] after conv, SiLU, norm
    float decay[GDN_MAX_HV];      // e^g
    float beta[GDN_MAX_HV];       // sigmoid(b)
    float kq[GDN_MAX_HK];         // kᵀq per key head (for o = e^g S₀ᵀq + δ kᵀq)
};

// Depthwise causal conv over [history, x] and SiLU, GDN_CH channels per cycle; shifts the history.
// Weights: row r = channels r·CH.., tap t at weight[base + (r·K + t)·CH + lane].
// History: age 0 = oldest, at conv_state[base + (r·(K−1) + age)·CH + lane].
void conv_silu(const float* x, const float* conv_weight, unsigned weight_base, float* conv_state,
               unsigned history_base, unsigned conv_dim, unsigned kernel, float* act) {
    const unsigned history = kernel - 1;
    const unsigned rows = ceil_div(conv_dim, GDN_CH);
conv_rows:
    for (unsigned r = 0; r < rows; ++r) {
#pragma HLS pipeline II = 1
        for (unsigned lane = 0; lane < GDN_CH; ++lane) {
#pragma HLS unroll
            const unsigned c = r * GDN_CH + lane;
            if (c >= conv_dim) continue;
            const float xin = x[c];
            float sum = 0.0f;
            for (unsigned age = 0; age < history; ++age) {
#pragma HLS unroll
                sum += conv_weight[weight_base + (r * kernel + age) * GDN_CH + lane] *
                       conv_state[history_base + (r * history + age) * GDN_CH + lane];
            }
            sum += conv_weight[weight_base + (r * kernel + history) * GDN_CH + lane] * xin;
            act[c] = silu(sum);
            for (unsigned age = 0; age + 1 < history; ++age) {
#pragma HLS unroll
                conv_state[history_base + (r * history + age) * GDN_CH + lane] =
                    conv_state[history_base + (r * history + age + 1) * GDN_CH + lane];
            }
            if (history > 0) conv_state[history_base + (r * history + history - 1) * GDN_CH + lane] = xin;
        }
    }
}

// Rotating partial sums of a reduction over GDN_CH lanes: word w of a vector adds into
// partial[lane][w % GDN_ACC], so that consecutive words never wait on the same adder and the loop
// keeps II = 1; the sum is a tree over all of them.
struct LaneSums {
    float partial[GDN_CH * GDN_ACC];
};

inline void lane_sums_add(LaneSums& s, unsigned word, unsigned lane, float value) {
    const unsigned at = (word % GDN_ACC) * GDN_CH + lane;
    s.partial[at] = (word < GDN_ACC ? 0.0f : s.partial[at]) + value;
}

inline float lane_sums_total(LaneSums& s, unsigned words) {
    // Accumulators that this vector never reached still hold another vector's sums: drop them.
    for (unsigned a = words; a < GDN_ACC; ++a)
        for (unsigned lane = 0; lane < GDN_CH; ++lane) s.partial[a * GDN_CH + lane] = 0.0f;
    return tree_sum(s.partial);
}

// The L2-norm factor of every q head then every k head (2·Hk heads, dk each, head-major in `x`):
// rsqrt(Σx² + 1e-6), times q_scale for q heads. One pipeline flattened over (head, word).
void norm_factors(const float* x, unsigned hk, unsigned dk, float q_scale, float* factor) {
    const unsigned words = ceil_div(dk, GDN_CH);
    LaneSums sums;
#pragma HLS array_partition variable = sums.partial complete
norm_sums:
    for (unsigned n = 0; n < 2 * hk * words; ++n) {
#pragma HLS pipeline II = 1
        const unsigned h = n / words;
        const unsigned w = n % words;
        for (unsigned lane = 0; lane < GDN_CH; ++lane) {
#pragma HLS unroll
            const unsigned i = w * GDN_CH + lane;
            const float v = i < dk ? x[h * dk + i] : 0.0f;
            lane_sums_add(sums, w, lane, v * v);
        }
        if (w + 1 == words) {
            const float scale = h < hk ? q_scale : 1.0f;
            factor[h] = (1.0f / sqrtf(lane_sums_total(sums, words) + L2_NORM_EPS)) * scale;
        }
    }
}

// Scales q and k by their factors in place and computes kᵀq per key head, flattened over
// (key head, word).
void normalize_and_dot(float* q, float* k, unsigned hk, unsigned dk, const float* factor,
                       float* kq) {
    const unsigned words = ceil_div(dk, GDN_CH);
    LaneSums sums;
#pragma HLS array_partition variable = sums.partial complete
normalize:
    for (unsigned n = 0; n < hk * words; ++n) {
#pragma HLS pipeline II = 1
        const unsigned h = n / words;
        const unsigned w = n % words;
        for (unsigned lane = 0; lane < GDN_CH; ++lane) {
#pragma HLS unroll
            const unsigned i = w * GDN_CH + lane;
            float product = 0.0f;
            if (i < dk) {
                const float qn = q[h * dk + i] * factor[h];
                const float kn = k[h * dk + i] * factor[hk + h];
                q[h * dk + i] = qn;
                k[h * dk + i] = kn;
                product = kn * qn;
            }
            lane_sums_add(sums, w, lane, product);
        }
        if (w + 1 == words) kq[h] = lane_sums_total(sums, words);
    }
}

// g = −exp(A_log)·softplus(a + dt_bias) → decay e^g; β = sigmoid(b).
void gating(const float* a, const float* b, const float* neg_a, const float* dt_bias, unsigned hv,
            float* decay, float* beta) {
gate_heads:
    for (unsigned h = 0; h < hv; ++h) {
#pragma HLS pipeline II = 1
        decay[h] = expf(neg_a[h] * softplus(a[h] + dt_bias[h]));
        beta[h] = sigmoid(b[h]);
    }
}

void prepare(const float* x, const float* a, const float* b, const GdnTables& t, unsigned layer,
             const float* conv_weight, float* conv_state, unsigned history_base,
             TokenVectors& tv) {
    const GdnLayer& l = t.layers[layer];
    const unsigned key_dim = l.hk * l.dk;
    conv_silu(x, conv_weight, l.weight_base, conv_state, history_base, conv_dim_of(l), l.kernel,
              tv.act);
    float factor[2 * GDN_MAX_HK];
    norm_factors(tv.act, l.hk, l.dk, l.q_scale, factor);
    normalize_and_dot(tv.act, tv.act + key_dim, l.hk, l.dk, factor, tv.kq);
    gating(a, b, t.neg_a[layer], t.dt_bias[layer], l.hv, tv.decay, tv.beta);
}

// ---- Phases 2–4: retrieve, delta, update + write-back (one pipeline over state words) ----------

// What the sweep carries between its stages: the last GDN_LAG + 1 columns read (so that column c
// can be written back GDN_LAG columns after it was read), their deltas, and the running partial
// sums of the column being read.
struct SweepBuffers {
    float column[GDN_LAG + 1][GDN_MAX_DK / GDN_U][GDN_P][GDN_U];
    float delta[GDN_LAG + 1][GDN_P];
    float acc_k[GDN_P][GDN_U][GDN_ACC];
    float acc_q[GDN_P][GDN_U][GDN_ACC];
};

struct SweepGeometry {
    unsigned hv, dk, dv, ratio;  // ratio r = Hv/Hk
    unsigned words;              // W = ⌈dk/U⌉
    unsigned base;               // first state row of the region
};

// Retrieve: reads word w of column c for all P heads of its group, keeps it for the write-back
// and accumulates its share of S₀ᵀk and S₀ᵀq.
void retrieve_word(const StateRow* state, const SweepGeometry& sg, const float* q, const float* k,
                   unsigned c, unsigned w, SweepBuffers& sb) {
    const unsigned group = c / sg.dv;
    const unsigned slot = c % (GDN_LAG + 1);
    const unsigned row = sg.base + c * sg.words + w;
    const unsigned acc = w % GDN_ACC;
    for (unsigned p = 0; p < GDN_P; ++p) {
#pragma HLS unroll
        const unsigned h = group * GDN_P + p;
        const unsigned key_head = h / sg.ratio;  // paired value heads read the same k, q word
        for (unsigned u = 0; u < GDN_U; ++u) {
#pragma HLS unroll
            const unsigned i = w * GDN_U + u;
            const bool valid = h < sg.hv && i < sg.dk;
            const float s0 = valid ? state[row][p][u] : 0.0f;
            const float ki = valid ? k[key_head * sg.dk + i] : 0.0f;
            const float qi = valid ? q[key_head * sg.dk + i] : 0.0f;
            sb.column[slot][w][p][u] = s0;
            const float prev_k = w < GDN_ACC ? 0.0f : sb.acc_k[p][u][acc];
            const float prev_q = w < GDN_ACC ? 0.0f : sb.acc_q[p][u][acc];
            sb.acc_k[p][u][acc] = prev_k + s0 * ki;
            sb.acc_q[p][u][acc] = prev_q + s0 * qi;
        }
    }
}

// Delta: after the last word of column c, finishes S₀ᵀk and S₀ᵀq (adder tree) and computes
// δ_j = β(v_j − e^g S₀ᵀk) and o_j = e^g S₀ᵀq + δ_j kᵀq for the P heads.
void delta_column(const SweepGeometry& sg, const float* v, const TokenVectors& tv, unsigned c,
                  SweepBuffers& sb, float* o) {
    const unsigned group = c / sg.dv;
    const unsigned j = c % sg.dv;
    const unsigned slot = c % (GDN_LAG + 1);
    const unsigned used_acc = sg.words < GDN_ACC ? sg.words : GDN_ACC;
    for (unsigned p = 0; p < GDN_P; ++p) {
#pragma HLS unroll
        const unsigned h = group * GDN_P + p;
        float partial_k[GDN_U * GDN_ACC];
        float partial_q[GDN_U * GDN_ACC];
        for (unsigned n = 0; n < GDN_U * GDN_ACC; ++n) {
            const unsigned u = n / GDN_ACC;
            const unsigned a = n % GDN_ACC;
            const bool live = u < GDN_U && a < used_acc;
            partial_k[n] = live ? sb.acc_k[p][u][a] : 0.0f;
            partial_q[n] = live ? sb.acc_q[p][u][a] : 0.0f;
        }
        if (h >= sg.hv) {
            sb.delta[slot][p] = 0.0f;
            continue;
        }
        const float decay = tv.decay[h];
        const float kv = decay * tree_sum(partial_k);
        const float qs = decay * tree_sum(partial_q);
        const float d = tv.beta[h] * (v[h * sg.dv + j] - kv);
        sb.delta[slot][p] = d;
        o[h * sg.dv + j] = qs + d * tv.kq[h / sg.ratio];
    }
}

// Update + write-back: S₁ = e^g S₀ + k δᵀ for word w of column c, from the copy read earlier.
void update_word(StateRow* state, const SweepGeometry& sg, const float* k, const TokenVectors& tv,
                 unsigned c, unsigned w, const SweepBuffers& sb) {
    const unsigned group = c / sg.dv;
    const unsigned slot = c % (GDN_LAG + 1);
    const unsigned row = sg.base + c * sg.words + w;
    for (unsigned p = 0; p < GDN_P; ++p) {
#pragma HLS unroll
        const unsigned h = group * GDN_P + p;
        if (h >= sg.hv) continue;
        const unsigned key_head = h / sg.ratio;
        for (unsigned u = 0; u < GDN_U; ++u) {
#pragma HLS unroll
            const unsigned i = w * GDN_U + u;
            if (i >= sg.dk) continue;
            state[row][p][u] =
                sb.column[slot][w][p][u] * tv.decay[h] + k[key_head * sg.dk + i] * sb.delta[slot][p];
        }
    }
}

// The whole recurrence of one token: every column of every head group, each state word read once
// (retrieve) and written once (update, GDN_LAG columns later).
void sweep_state(StateRow* state, const GdnLayer& l, unsigned base, const TokenVectors& tv,
                 float* o) {
    SweepBuffers sb;  // registers / LUTRAM; every entry is written before it is read
#pragma HLS array_partition variable = sb.column dim = 3 complete
#pragma HLS array_partition variable = sb.column dim = 4 complete
#pragma HLS array_partition variable = sb.acc_k complete
#pragma HLS array_partition variable = sb.acc_q complete
    SweepGeometry sg;
    sg.hv = l.hv;
    sg.dk = l.dk;
    sg.dv = l.dv;
    sg.ratio = l.hv / l.hk;
    sg.words = ceil_div(l.dk, GDN_U);
    sg.base = base;
    const unsigned key_dim = l.hk * l.dk;
    const float* q = tv.act;
    const float* k = tv.act + key_dim;
    const float* v = tv.act + 2 * key_dim;
    const unsigned columns = ceil_div(l.hv, GDN_P) * l.dv;
sweep_columns:
    for (unsigned t = 0; t < columns + GDN_LAG; ++t) {
    sweep_words:
        for (unsigned w = 0; w < sg.words; ++w) {
#pragma HLS pipeline II = 1
#pragma HLS loop_flatten
#pragma HLS dependence variable = state inter false
            if (t < columns) {
                retrieve_word(state, sg, q, k, t, w, sb);
                if (w + 1 == sg.words) delta_column(sg, v, tv, t, sb, o);
            }
            if (t >= GDN_LAG) update_word(state, sg, k, tv, t - GDN_LAG, w, sb);
        }
    }
}

// ---- Phase 5: output ----------------------------------------------------------------------------

// One 512-bit beat (GDN_CH floats) per cycle.
void write_output(const float* o, unsigned n, float* out) {
write_out:
    for (unsigned r = 0; r < ceil_div(n, GDN_CH); ++r) {
#pragma HLS pipeline II = 1
        for (unsigned lane = 0; lane < GDN_CH; ++lane) {
#pragma HLS unroll
            const unsigned i = r * GDN_CH + lane;
            if (i < n) out[i] = o[i];
        }
    }
}

// ---- Operations ---------------------------------------------------------------------------------

unsigned check_geometry(unsigned hk, unsigned hv, unsigned dk, unsigned dv, unsigned kernel,
                        unsigned* field, unsigned* limit) {
    if (hk < 1 || hk > GDN_MAX_HK) { *field = GDN_FIELD_HK; *limit = GDN_MAX_HK; return GDN_ERR_DIMS; }
    if (hv < 1 || hv > GDN_MAX_HV) { *field = GDN_FIELD_HV; *limit = GDN_MAX_HV; return GDN_ERR_DIMS; }
    if (dk < 1 || dk > GDN_MAX_DK) { *field = GDN_FIELD_DK; *limit = GDN_MAX_DK; return GDN_ERR_DIMS; }
    if (dv < 1 || dv > GDN_MAX_DV) { *field = GDN_FIELD_DV; *limit = GDN_MAX_DV; return GDN_ERR_DIMS; }
    if (kernel < 1 || kernel > GDN_MAX_CONV_KERNEL) {
        *field = GDN_FIELD_CONV_KERNEL;
        *limit = GDN_MAX_CONV_KERNEL;
        return GDN_ERR_DIMS;
    }
    if (hv % hk != 0) { *field = GDN_FIELD_GVA; *limit = hk; return GDN_ERR_DIMS; }
    return GDN_OK;
}

void op_info(const GdnTables& t, unsigned* status) {
    set_status(status, GDN_OK, 0, 0, GDN_OP_INFO);
    status[GDN_SW_ABI] = GDN_ABI_VERSION;
    status[GDN_SW_P] = GDN_P;
    status[GDN_SW_U] = GDN_U;
    status[GDN_SW_MAX_LAYERS] = GDN_MAX_LAYERS;
    status[GDN_SW_MAX_SLOTS] = GDN_MAX_SLOTS;
    status[GDN_SW_MAX_HK] = GDN_MAX_HK;
    status[GDN_SW_MAX_HV] = GDN_MAX_HV;
    status[GDN_SW_MAX_DK] = GDN_MAX_DK;
    status[GDN_SW_MAX_DV] = GDN_MAX_DV;
    status[GDN_SW_MAX_CONV_KERNEL] = GDN_MAX_CONV_KERNEL;
    status[GDN_SW_STATE_ROWS] = GDN_STATE_ROWS;
    status[GDN_SW_STATE_ROWS_USED] = t.state_rows_used;
    status[GDN_SW_CONV_WORDS] = GDN_CONV_STATE_WORDS;
    status[GDN_SW_CONV_WORDS_USED] = t.conv_words_used;
    status[GDN_SW_WEIGHT_WORDS] = GDN_CONV_WEIGHT_WORDS;
    status[GDN_SW_WEIGHT_WORDS_USED] = t.weight_words_used;
    status[GDN_SW_CH] = GDN_CH;
}

// Stores a layer's geometry and constants; its slots are bound later (RESET).
void op_load(const float* in, GdnTables& t, float* conv_weight, unsigned* status, unsigned layer,
             unsigned hk, unsigned hv, unsigned dk, unsigned dv, unsigned kernel, float q_scale) {
    unsigned field = 0, limit = 0;
    const unsigned code = check_geometry(hk, hv, dk, dv, kernel, &field, &limit);
    if (code != GDN_OK) { set_status(status, code, field, limit, GDN_OP_LOAD); return; }
    if (t.layers[layer].loaded) { set_status(status, GDN_ERR_LAYER_LOADED, layer, 0, GDN_OP_LOAD); return; }
    GdnLayer l;
    l.loaded = 1;
    l.hk = hk;
    l.hv = hv;
    l.dk = dk;
    l.dv = dv;
    l.kernel = kernel;
    l.q_scale = q_scale;
    const unsigned conv_dim = conv_dim_of(l);
    const unsigned words = padded_channels(conv_dim) * kernel;
    const unsigned free_words = GDN_CONV_WEIGHT_WORDS - t.weight_words_used;
    if (words > free_words) {
        set_status(status, GDN_ERR_WEIGHTS_FULL, words, free_words, GDN_OP_LOAD);
        return;
    }
    l.weight_base = t.weight_words_used;
    t.weight_words_used += words;
load_weights:
    for (unsigned r = 0; r < ceil_div(conv_dim, GDN_CH); ++r) {
        for (unsigned tap = 0; tap < kernel; ++tap) {
            for (unsigned lane = 0; lane < GDN_CH; ++lane) {
#pragma HLS pipeline II = 1
                const unsigned c = r * GDN_CH + lane;
                conv_weight[l.weight_base + (r * kernel + tap) * GDN_CH + lane] =
                    c < conv_dim ? in[c * kernel + tap] : 0.0f;
            }
        }
    }
load_heads:
    for (unsigned h = 0; h < hv; ++h) {
#pragma HLS pipeline II = 1
        t.neg_a[layer][h] = -expf(in[conv_dim * kernel + h]);
        t.dt_bias[layer][h] = in[conv_dim * kernel + hv + h];
    }
    for (unsigned s = 0; s < GDN_MAX_SLOTS; ++s) t.bound[layer][s] = 0;
    t.layers[layer] = l;
    set_status(status, GDN_OK, 0, 0, GDN_OP_LOAD);
}

// Binds (layer, slot) to state and conv-history memory on first use, then zeroes both. URAM has
// no initial contents, so nothing is assumed zero that this has not zeroed.
void op_reset(GdnTables& t, StateRow* state, float* conv_state, unsigned* status, unsigned layer,
              unsigned slot) {
    const GdnLayer& l = t.layers[layer];
    const unsigned rows = state_rows_of(l);
    const unsigned words = conv_words_of(l);
    if (!t.bound[layer][slot]) {
        const unsigned free_rows = GDN_STATE_ROWS - t.state_rows_used;
        const unsigned free_words = GDN_CONV_STATE_WORDS - t.conv_words_used;
        if (rows > free_rows) {
            set_status(status, GDN_ERR_STATE_FULL, rows, free_rows, GDN_OP_RESET);
            return;
        }
        if (words > free_words) {
            set_status(status, GDN_ERR_CONV_FULL, words, free_words, GDN_OP_RESET);
            return;
        }
        t.state_base[layer][slot] = t.state_rows_used;
        t.conv_base[layer][slot] = t.conv_words_used;
        t.state_rows_used += rows;
        t.conv_words_used += words;
        t.bound[layer][slot] = 1;
    }
    const unsigned base = t.state_base[layer][slot];
zero_state:
    for (unsigned r = 0; r < rows; ++r) {
#pragma HLS pipeline II = 1
        for (unsigned p = 0; p < GDN_P; ++p)
            for (unsigned u = 0; u < GDN_U; ++u) state[base + r][p][u] = 0.0f;
    }
zero_conv:
    for (unsigned w = 0; w < words; ++w) {
#pragma HLS pipeline II = 1
        conv_state[t.conv_base[layer][slot] + w] = 0.0f;
    }
    set_status(status, GDN_OK, 0, 0, GDN_OP_RESET);
}

// One token: the five phases as a dataflow region. prepare owns the conv history, the sweep owns
// the recurrent state, and the per-token vectors and outputs pass between them in ping-pong
// buffers.
void step_one_token(const float* x, const float* a, const float* b, float* out,
                    const GdnTables& t, unsigned layer, unsigned slot, const float* conv_weight,
                    StateRow* state, float* conv_state) {
#pragma HLS dataflow
    // Locals, not statics: the C-simulation runs several simulated cards on several threads.
    TokenVectors tv;
    float o[GDN_MAX_HV * GDN_MAX_DV];
    const GdnLayer& l = t.layers[layer];
    prepare(x, a, b, t, layer, conv_weight, conv_state, t.conv_base[layer][slot], tv);
    sweep_state(state, l, t.state_base[layer][slot], tv, o);
    write_output(o, l.hv * l.dv, out);
}

void op_step(const float* in, float* out, const GdnTables& t, const float* conv_weight,
             StateRow* state, float* conv_state, unsigned* status, unsigned layer, unsigned slot,
             unsigned tokens) {
    if (tokens == 0) { set_status(status, GDN_ERR_TOKENS, 0, 1, GDN_OP_STEP); return; }
    const GdnLayer& l = t.layers[layer];
    const unsigned conv_dim = conv_dim_of(l);
    const unsigned value_dim = l.hv * l.dv;
    const float* a_all = in + tokens * conv_dim;
    const float* b_all = a_all + tokens * l.hv;
step_tokens:
    for (unsigned n = 0; n < tokens; ++n) {
        step_one_token(in + n * conv_dim, a_all + n * l.hv, b_all + n * l.hv,
                       out + n * value_dim, t, layer, slot, conv_weight, state, conv_state);
    }
    set_status(status, GDN_OK, 0, 0, GDN_OP_STEP);
}

// EXPORT (to_host = true) writes the canonical layout to `out`; IMPORT reads it from `in`.
// Canonical: conv [C][K−1] oldest first, then recurrent key-major [Hv][dk][dv].
void op_transfer(const float* in, float* out, const GdnTables& t, StateRow* state,
                 float* conv_state, unsigned* status, unsigned layer, unsigned slot,
                 bool to_host) {
    const GdnLayer& l = t.layers[layer];
    const unsigned conv_dim = conv_dim_of(l);
    const unsigned history = l.kernel - 1;
    const unsigned hbase = t.conv_base[layer][slot];
transfer_conv:
    for (unsigned c = 0; c < conv_dim; ++c) {
        for (unsigned age = 0; age < history; ++age) {
#pragma HLS pipeline II = 1
            const unsigned word =
                hbase + ((c / GDN_CH) * history + age) * GDN_CH + c % GDN_CH;
            if (to_host) out[c * history + age] = conv_state[word];
            else conv_state[word] = in[c * history + age];
        }
    }
    const unsigned offset = conv_dim * history;
    const unsigned words = ceil_div(l.dk, GDN_U);
    const unsigned base = t.state_base[layer][slot];
    const unsigned columns = ceil_div(l.hv, GDN_P) * l.dv;
transfer_state:
    for (unsigned c = 0; c < columns; ++c) {
        const unsigned group = c / l.dv;
        const unsigned j = c % l.dv;
        for (unsigned w = 0; w < words; ++w) {
            for (unsigned p = 0; p < GDN_P; ++p) {
                for (unsigned u = 0; u < GDN_U; ++u) {
#pragma HLS pipeline II = 1
                    const unsigned h = group * GDN_P + p;
                    const unsigned i = w * GDN_U + u;
                    if (h >= l.hv || i >= l.dk) continue;
                    const unsigned canonical = offset + (h * l.dk + i) * l.dv + j;
                    if (to_host) out[canonical] = state[base + c * words + w][p][u];
                    else state[base + c * words + w][p][u] = in[canonical];
                }
            }
        }
    }
    set_status(status, GDN_OK, 0, 0, to_host ? GDN_OP_EXPORT : GDN_OP_IMPORT);
}

// One invocation: validates the request against the tables, then runs the operation.
void gdn_core(const float* in, float* out, unsigned* status, unsigned op, unsigned layer,
              unsigned slot, unsigned tokens, unsigned hk, unsigned hv, unsigned dk, unsigned dv,
              unsigned kernel, float q_scale, StateRow* state, float* conv_state,
              float* conv_weight, GdnTables& t) {
    if (op == GDN_OP_INFO) { op_info(t, status); return; }
    if (op > GDN_OP_IMPORT) { set_status(status, GDN_ERR_OP, op, GDN_OP_IMPORT, op); return; }
    if (layer >= GDN_MAX_LAYERS) {
        set_status(status, GDN_ERR_LAYER_RANGE, layer, GDN_MAX_LAYERS, op);
        return;
    }
    if (op == GDN_OP_LOAD) {
        op_load(in, t, conv_weight, status, layer, hk, hv, dk, dv, kernel, q_scale);
        return;
    }
    if (slot >= GDN_MAX_SLOTS) { set_status(status, GDN_ERR_SLOT_RANGE, slot, GDN_MAX_SLOTS, op); return; }
    if (!t.layers[layer].loaded) { set_status(status, GDN_ERR_LAYER_NOT_LOADED, layer, 0, op); return; }
    if (op == GDN_OP_RESET) { op_reset(t, state, conv_state, status, layer, slot); return; }
    if (!t.bound[layer][slot]) { set_status(status, GDN_ERR_SLOT_NOT_BOUND, slot, layer, op); return; }
    if (op == GDN_OP_STEP) {
        op_step(in, out, t, conv_weight, state, conv_state, status, layer, slot, tokens);
    } else {
        op_transfer(in, out, t, state, conv_state, status, layer, slot, op == GDN_OP_EXPORT);
    }
}

}  // namespace

// ---- HLS top function ---------------------------------------------------------------------------

#if defined(__SYNTHESIS__) || defined(GDN_WITH_TOP)
extern "C" void GDN_TOP_NAME(const float* in, float* out, unsigned* status, unsigned op,
                             unsigned layer, unsigned slot, unsigned tokens, unsigned hk,
                             unsigned hv, unsigned dk, unsigned dv, unsigned conv_kernel,
                             float q_scale) {
#pragma HLS INTERFACE mode = m_axi port = in offset = slave bundle = gmem0 max_read_burst_length = 64 depth = 1048576
#pragma HLS INTERFACE mode = m_axi port = out offset = slave bundle = gmem1 max_write_burst_length = 64 depth = 1048576
#pragma HLS INTERFACE mode = m_axi port = status offset = slave bundle = gmem2 depth = 32
#pragma HLS INTERFACE mode = s_axilite port = op
#pragma HLS INTERFACE mode = s_axilite port = layer
#pragma HLS INTERFACE mode = s_axilite port = slot
#pragma HLS INTERFACE mode = s_axilite port = tokens
#pragma HLS INTERFACE mode = s_axilite port = hk
#pragma HLS INTERFACE mode = s_axilite port = hv
#pragma HLS INTERFACE mode = s_axilite port = dk
#pragma HLS INTERFACE mode = s_axilite port = dv
#pragma HLS INTERFACE mode = s_axilite port = conv_kernel
#pragma HLS INTERFACE mode = s_axilite port = q_scale
#pragma HLS INTERFACE mode = s_axilite port = return
#pragma HLS INTERFACE mode = ap_ctrl_chain port = return

    // Resident memories: static, so they keep their contents across invocations for as long as
    // the xclbin stays loaded.
    static StateRow state[GDN_STATE_ROWS];
#pragma HLS bind_storage variable = state type = ram_2p impl = uram
#pragma HLS array_partition variable = state dim = 2 complete
#pragma HLS array_reshape variable = state dim = 3 complete
    static float conv_state[GDN_CONV_STATE_WORDS];
#pragma HLS bind_storage variable = conv_state type = ram_2p impl = bram
#pragma HLS array_partition variable = conv_state cyclic factor = 16
    static float conv_weight[GDN_CONV_WEIGHT_WORDS];
#pragma HLS bind_storage variable = conv_weight type = ram_2p impl = bram
#pragma HLS array_partition variable = conv_weight cyclic factor = 16
    static GdnTables tables;

    gdn_core(in, out, status, op, layer, slot, tokens, hk, hv, dk, dv, conv_kernel, q_scale, state,
             conv_state, conv_weight, tables);
}
#endif
