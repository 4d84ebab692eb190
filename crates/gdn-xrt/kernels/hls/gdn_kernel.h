// gdn_kernel.h — interface, capacity and design-point constants of the Gated DeltaNet FPGA kernel.
//
// Everything the host must agree on lives here: operation codes, status codes, the layout of the
// status words, and the compile-time capacity. The Rust host mirrors the codes in
// crates/gdn-xrt/src/kernel/abi.rs and reads the capacities back at run time (GDN_OP_INFO), so a
// kernel rebuilt with other limits needs no host change.
//
// Plain C++: no vendor headers. Vitis HLS reads the `#pragma HLS` lines; g++ ignores them.

#ifndef GDN_KERNEL_H
#define GDN_KERNEL_H

// ---- Design point -------------------------------------------------------------------------------

// P: value heads processed side by side per cycle (one state bank each). 2, 4, 8 or 16.
#ifndef GDN_P
#define GDN_P 16
#endif
#if GDN_P != 2 && GDN_P != 4 && GDN_P != 8 && GDN_P != 16
#error "GDN_P must be 2, 4, 8 or 16"
#endif

// Bumped whenever an op code, status code, argument or status word changes meaning.
#define GDN_ABI_VERSION 1u

// State floats of one value head read (and written) per cycle: one 64-bit URAM word holds two
// f32, so each head's bank delivers two elements of a state column per cycle.
#define GDN_U 2
// Channels handled per cycle in the conv and vector loops: one 512-bit AXI beat of f32.
#define GDN_CH 16
// Rotating partial sums per lane in the column reductions; covers the f32 adder latency so that
// the sweep keeps an initiation interval of one.
#define GDN_ACC 8
// Columns between reading a state column (retrieve) and writing it back (update): the delta of a
// column is ready GDN_LAG column-times after its first word was read.
#define GDN_LAG 2

// ---- Capacity (compile time) --------------------------------------------------------------------

#define GDN_MAX_LAYERS 64       // layer index < 64 (model layer numbers, GDN layers are sparse)
#define GDN_MAX_SLOTS 16        // device sequence slot index < 16
#define GDN_MAX_HK 32           // key heads
#define GDN_MAX_HV 64           // value heads
#define GDN_MAX_DK 128          // key head dim
#define GDN_MAX_DV 128          // value head dim
#define GDN_MAX_CONV_KERNEL 4   // K, the causal conv taps
#define GDN_MAX_CONV_DIM (2 * GDN_MAX_HK * GDN_MAX_DK + GDN_MAX_HV * GDN_MAX_DV)

// Recurrent-state memory: GDN_STATE_URAMS UltraRAM blocks of 4096 × 72 bit, each row of a bank
// holding GDN_U floats (64 of the 72 bits), split into GDN_P banks. 768 of the U55C's 960 URAMs
// (80 %: the platform shell and routing need the rest; check `platforminfo`): 24 MiB of f32
// state whatever P is, i.e. 12 Qwen3-Next layers of 2 MiB.
#define GDN_STATE_URAMS 768
#define GDN_URAM_DEPTH 4096
#define GDN_STATE_ROWS (GDN_STATE_URAMS / GDN_P * GDN_URAM_DEPTH)

// Block-RAM pools, in f32 words: conv weights of all loaded layers (2 MiB), and conv histories of
// all bound (layer, slot) pairs (1.5 MiB).
#define GDN_CONV_WEIGHT_WORDS (512u * 1024u)
#define GDN_CONV_STATE_WORDS (384u * 1024u)

// ---- Operations (scalar argument `op`) ----------------------------------------------------------

enum gdn_op {
    GDN_OP_INFO = 0,    // writes capacity and usage into the status words
    GDN_OP_LOAD = 1,    // in = conv_weight [C×K] | A_log [Hv] | dt_bias [Hv]; geometry in scalars
    GDN_OP_RESET = 2,   // binds (layer, slot) to on-chip memory if needed, zeroes its state
    GDN_OP_STEP = 3,    // in = mixed_qkv [T×C] | a [T×Hv] | b [T×Hv]; out = o [T×Hv×dv]
    GDN_OP_EXPORT = 4,  // out = conv [C×(K−1)] | recurrent [Hv×dk×dv] (canonical, key-major)
    GDN_OP_IMPORT = 5,  // in = the same layout as EXPORT
};

// ---- Status (written to the `status` buffer on every invocation) --------------------------------

enum gdn_status {
    GDN_OK = 0,
    GDN_ERR_OP = 1,                // unknown op
    GDN_ERR_LAYER_RANGE = 2,       // layer >= GDN_MAX_LAYERS
    GDN_ERR_SLOT_RANGE = 3,        // slot >= GDN_MAX_SLOTS
    GDN_ERR_DIMS = 4,              // geometry outside the compile-time limits (detail = field)
    GDN_ERR_LAYER_NOT_LOADED = 5,
    GDN_ERR_LAYER_LOADED = 6,
    GDN_ERR_SLOT_NOT_BOUND = 7,    // STEP/EXPORT/IMPORT before the first RESET of (layer, slot)
    GDN_ERR_TOKENS = 8,            // STEP with zero tokens
    GDN_ERR_WEIGHTS_FULL = 9,      // conv weight pool exhausted (detail = needed, limit = free)
    GDN_ERR_STATE_FULL = 10,       // recurrent-state rows exhausted (detail = needed, limit = free)
    GDN_ERR_CONV_FULL = 11,        // conv-history pool exhausted (detail = needed, limit = free)
};

// Which geometry field GDN_ERR_DIMS complains about (status word GDN_SW_DETAIL).
enum gdn_dims_field {
    GDN_FIELD_HK = 1,
    GDN_FIELD_HV = 2,
    GDN_FIELD_DK = 3,
    GDN_FIELD_DV = 4,
    GDN_FIELD_CONV_KERNEL = 5,
    GDN_FIELD_GVA = 6,  // Hv not a multiple of Hk
};

// Status words.
enum gdn_status_word {
    GDN_SW_CODE = 0,
    GDN_SW_DETAIL = 1,
    GDN_SW_LIMIT = 2,
    GDN_SW_OP = 3,
    // GDN_OP_INFO only:
    GDN_SW_ABI = 4,
    GDN_SW_P = 5,
    GDN_SW_U = 6,
    GDN_SW_MAX_LAYERS = 7,
    GDN_SW_MAX_SLOTS = 8,
    GDN_SW_MAX_HK = 9,
    GDN_SW_MAX_HV = 10,
    GDN_SW_MAX_DK = 11,
    GDN_SW_MAX_DV = 12,
    GDN_SW_MAX_CONV_KERNEL = 13,
    GDN_SW_STATE_ROWS = 14,
    GDN_SW_STATE_ROWS_USED = 15,
    GDN_SW_CONV_WORDS = 16,
    GDN_SW_CONV_WORDS_USED = 17,
    GDN_SW_WEIGHT_WORDS = 18,
    GDN_SW_WEIGHT_WORDS_USED = 19,
    GDN_SW_CH = 20,
    GDN_STATUS_WORDS = 32,
};

// ---- Entry points -------------------------------------------------------------------------------

#ifdef __cplusplus
extern "C" {
#endif

// The HLS top function (one compute unit). Compiled for hardware, and into the crate only when
// GDN_WITH_TOP is defined (its static memories are process-wide in software).
//   in, out, status: m_axi;  op .. q_scale: s_axilite;  control: ap_ctrl_chain.
#ifndef GDN_TOP_NAME
#define GDN_TOP_NAME gdn_kernel
#endif
void GDN_TOP_NAME(const float* in, float* out, unsigned* status, unsigned op, unsigned layer,
                  unsigned slot, unsigned tokens, unsigned hk, unsigned hv, unsigned dk,
                  unsigned dv, unsigned conv_kernel, float q_scale);

#ifdef __cplusplus
}
#endif

#endif  // GDN_KERNEL_H
