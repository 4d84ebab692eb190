// gdn_csim.cpp — C-simulation harness of gdn_kernel.cpp for the `xrt-sim` backend.
//
// It includes the kernel source itself, so the simulation runs the kernel's own C++. The only
// difference from the HLS top function is where the resident memories live: in hardware they are
// the compute unit's static on-chip arrays; here each simulated card gets its own heap copy, so
// that several cards (and several backends on several threads) can exist in one process.
//
// Built once per design point with -DGDN_P=P; every exported symbol carries the suffix `_pP`.

#include <stdlib.h>

#define GDN_CAT_(a, b) a##b
#define GDN_CAT(a, b) GDN_CAT_(a, b)
#define GDN_SUFFIXED(name) GDN_CAT(GDN_CAT(name, _p), GDN_P)

// The top function is compiled too, under a suffixed name, so that tests can drive the exact HLS
// entry point (static memories and all) and see its state persist across invocations.
#define GDN_WITH_TOP
#define GDN_TOP_NAME GDN_SUFFIXED(gdn_kernel_top)

#include "../hls/gdn_kernel.cpp"

namespace {

// The on-chip memories of one card, zero as after configuration.
struct SimCard {
    StateRow state[GDN_STATE_ROWS];
    float conv_state[GDN_CONV_STATE_WORDS];
    float conv_weight[GDN_CONV_WEIGHT_WORDS];
    GdnTables tables;
};

}  // namespace

extern "C" {

// A fresh simulated card, or null when the host is out of memory. calloc: pages that the
// simulation never touches are never committed.
void* GDN_SUFFIXED(gdn_csim_card_new)(void) { return calloc(1, sizeof(SimCard)); }

void GDN_SUFFIXED(gdn_csim_card_free)(void* card) { free(card); }

// One kernel invocation on `card`, with the top function's arguments.
void GDN_SUFFIXED(gdn_csim_invoke)(void* card, const float* in, float* out, unsigned* status,
                                   unsigned op, unsigned layer, unsigned slot, unsigned tokens,
                                   unsigned hk, unsigned hv, unsigned dk, unsigned dv,
                                   unsigned conv_kernel, float q_scale) {
    SimCard* c = static_cast<SimCard*>(card);
    gdn_core(in, out, status, op, layer, slot, tokens, hk, hv, dk, dv, conv_kernel, q_scale,
             c->state, c->conv_state, c->conv_weight, c->tables);
}

}  // extern "C"
