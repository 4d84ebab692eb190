// Host driver for gdn.cu under cuda_shim.h: replays a script of decode steps and prefills the
// way backend.rs launches them, and writes every output plus the final device state.
//
// Build (the shape and tiling are the kernels' compile-time constants, as with NVRTC):
//   c++ -std=c++20 -O1 -pthread -I. -DGDN_HK=.. -DGDN_HV=.. -DGDN_DK=.. -DGDN_DV=.. -DGDN_K=..
//       -DGDN_COLS=.. -DGDN_UNROLL=.. -DGDN_WARPS=.. -DPREFILL_CHUNK=.. emulate.cpp -o emulate
// Run:  emulate SCRIPT OUTPUT
// SCRIPT (little-endian): u32 op count; conv weight (CONV_DIM×K f32, row-major per channel),
//   A_log (HV f32), dt_bias (HV f32); then per op: u32 kind (0 step, 1 prefill), u32 tokens,
//   x (tokens×CONV_DIM f32), a (tokens×HV f32), b (tokens×HV f32).
// OUTPUT: per op tokens×HV×DV f32 outputs; then u32 pos, ring (K×CONV_DIM f32), state
//   (HV×DV×DK f32, value-major).
#include "cuda_shim.h"

#include "../src/kernels/gdn.cu"

#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace {

struct Reader {
    FILE* f;
    unsigned u32() {
        unsigned v;
        if (std::fread(&v, 4, 1, f) != 1) throw std::runtime_error("short script");
        return v;
    }
    std::vector<float> f32s(size_t n) {
        std::vector<float> v(n);
        if (n && std::fread(v.data(), 4, n, f) != n) throw std::runtime_error("short script");
        return v;
    }
};

dim3 grid1(unsigned x) { return dim3{x, 1, 1}; }

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: emulate SCRIPT OUTPUT\n");
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    FILE* out = std::fopen(argv[2], "wb");
    if (!in || !out) {
        std::fprintf(stderr, "cannot open files\n");
        return 2;
    }
    try {
        Reader r{in};
        const unsigned ops = r.u32();
        const std::vector<float> weight = r.f32s((size_t)CONV_DIM * GDN_K);
        const std::vector<float> a_log = r.f32s(GDN_HV);
        const std::vector<float> dt_bias = r.f32s(GDN_HV);

        // Constants as CudaConstants::upload prepares them.
        std::vector<float> w_t((size_t)CONV_DIM * GDN_K);
        for (int c = 0; c < CONV_DIM; ++c)
            for (int k = 0; k < GDN_K; ++k) w_t[(size_t)k * CONV_DIM + c] = weight[(size_t)c * GDN_K + k];
        std::vector<float> neg_a(GDN_HV);
        for (int h = 0; h < GDN_HV; ++h) neg_a[h] = -std::exp(a_log[h]);

        std::vector<float> ring((size_t)GDN_K * CONV_DIM, 0.0f);
        std::vector<float> state((size_t)GDN_HV * GDN_DV * GDN_DK, 0.0f);
        unsigned meta[2] = {0, 0};
        const unsigned rec_blocks = (TOTAL_WARPS + GDN_WARPS - 1) / GDN_WARPS;

        for (unsigned op = 0; op < ops; ++op) {
            const unsigned kind = r.u32();
            const unsigned tokens = r.u32();
            const std::vector<float> x = r.f32s((size_t)tokens * CONV_DIM);
            const std::vector<float> a = r.f32s((size_t)tokens * GDN_HV);
            const std::vector<float> b = r.f32s((size_t)tokens * GDN_HV);
            std::vector<float> o((size_t)tokens * VALUE_DIM, 0.0f);
            if (kind == 0) {
                // One launch per token, inputs staged as x | a | b.
                for (unsigned t = 0; t < tokens; ++t) {
                    std::vector<float> staged(x.begin() + (size_t)t * CONV_DIM,
                                              x.begin() + (size_t)(t + 1) * CONV_DIM);
                    staged.insert(staged.end(), a.begin() + t * GDN_HV, a.begin() + (t + 1) * GDN_HV);
                    staged.insert(staged.end(), b.begin() + t * GDN_HV, b.begin() + (t + 1) * GDN_HV);
                    float* ot = o.data() + (size_t)t * VALUE_DIM;
                    launch(grid1(rec_blocks), grid1(THREADS), [&] {
                        gdn_decode(staged.data(), w_t.data(), neg_a.data(), dt_bias.data(), ring.data(),
                                   state.data(), meta, ot);
                    });
                }
            } else {
                for (unsigned first = 0; first < tokens; first += PREFILL_CHUNK) {
                    const unsigned count = std::min<unsigned>(PREFILL_CHUNK, tokens - first);
                    std::vector<float> packed(x.begin() + (size_t)first * CONV_DIM,
                                              x.begin() + (size_t)(first + count) * CONV_DIM);
                    packed.insert(packed.end(), a.begin() + first * GDN_HV, a.begin() + (first + count) * GDN_HV);
                    packed.insert(packed.end(), b.begin() + first * GDN_HV, b.begin() + (first + count) * GDN_HV);
                    std::vector<float> act((size_t)count * CONV_DIM), gates((size_t)count * 2 * GDN_HV);
                    const int n = (int)count;
                    launch(grid1(count), grid1(256), [&] {
                        gdn_prefill_conv(packed.data(), n, w_t.data(), neg_a.data(), dt_bias.data(), ring.data(),
                                         meta, act.data(), gates.data());
                    });
                    float* ot = o.data() + (size_t)first * VALUE_DIM;
                    launch(grid1(rec_blocks), grid1(THREADS),
                           [&] { gdn_prefill_scan(act.data(), gates.data(), n, state.data(), ot); });
                    launch(grid1(1), grid1(1024), [&] { gdn_prefill_commit(packed.data(), n, ring.data(), meta); });
                }
            }
            std::fwrite(o.data(), 4, o.size(), out);
        }
        std::fwrite(&meta[0], 4, 1, out);
        std::fwrite(ring.data(), 4, ring.size(), out);
        std::fwrite(state.data(), 4, state.size(), out);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "emulate: %s\n", e.what());
        return 1;
    }
    std::fclose(out);
    return 0;
}
