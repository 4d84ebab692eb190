// Host driver for gdn.cu under cuda_shim.h: replays a script of decode steps, batched decode
// steps and prefills over several slots the way backend.rs launches them, and writes every
// output plus each slot's final device state.
//
// Build (the shape and tiling are the kernels' compile-time constants, as with NVRTC):
//   c++ -std=c++20 -O1 -pthread -I. -DGDN_HK=.. -DGDN_HV=.. -DGDN_DK=.. -DGDN_DV=.. -DGDN_K=..
//       -DGDN_COLS=.. -DGDN_UNROLL=.. -DGDN_WARPS=.. -DPREFILL_CHUNK=.. emulate.cpp -o emulate
// Run:  emulate SCRIPT OUTPUT
// SCRIPT (little-endian): u32 slot count, u32 op count; conv weight (CONV_DIM×K f32, row-major
//   per channel), A_log (HV f32), dt_bias (HV f32); then per op: u32 kind (0 steps, 1 prefill,
//   2 batched steps), u32 member count, u32 slot of each member, u32 tokens, then per member
//   x (tokens×CONV_DIM f32), a (tokens×HV f32), b (tokens×HV f32). Kinds 0 and 1 run the
//   members one after another (gdn_decode per token, or the prefill passes); kind 2 runs each
//   token of every member in one gdn_decode_batch launch.
// OUTPUT: per op, per member, tokens×HV×DV f32 outputs; then per slot u32 pos, ring
//   (K×CONV_DIM f32), state (HV×DV×DK f32, value-major).
#include "cuda_shim.h"

#include "../src/kernels/gdn.cu"

#include <algorithm>
#include <cstdint>
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

namespace {

struct Slot {
    std::vector<float> ring = std::vector<float>((size_t)GDN_K * CONV_DIM, 0.0f);
    std::vector<float> state = std::vector<float>((size_t)GDN_HV * GDN_DV * GDN_DK, 0.0f);
    unsigned meta[2] = {0, 0};
};

struct Member {
    unsigned slot;
    std::vector<float> x, a, b;
    // Token t staged as x | a | b (IN_LEN floats), as Staging::pack lays it out.
    std::vector<float> staged(unsigned t) const {
        std::vector<float> s(x.begin() + (size_t)t * CONV_DIM, x.begin() + (size_t)(t + 1) * CONV_DIM);
        s.insert(s.end(), a.begin() + t * GDN_HV, a.begin() + (t + 1) * GDN_HV);
        s.insert(s.end(), b.begin() + t * GDN_HV, b.begin() + (t + 1) * GDN_HV);
        return s;
    }
};

struct Constants {
    std::vector<float> w_t, neg_a, dt_bias;
};

const unsigned kRecBlocks = (TOTAL_WARPS + GDN_WARPS - 1) / GDN_WARPS;

// One gdn_decode launch per token.
void steps(const Constants& c, Slot& s, const Member& m, unsigned tokens, float* o) {
    for (unsigned t = 0; t < tokens; ++t) {
        const std::vector<float> staged = m.staged(t);
        float* ot = o + (size_t)t * VALUE_DIM;
        launch(grid1(kRecBlocks), grid1(THREADS), [&] {
            gdn_decode(staged.data(), c.w_t.data(), c.neg_a.data(), c.dt_bias.data(), s.ring.data(),
                       s.state.data(), s.meta, ot);
        });
    }
}

// Chunks of PREFILL_CHUNK tokens, three launches each.
void prefill(const Constants& c, Slot& s, const Member& m, unsigned tokens, float* o) {
    for (unsigned first = 0; first < tokens; first += PREFILL_CHUNK) {
        const unsigned count = std::min<unsigned>(PREFILL_CHUNK, tokens - first);
        std::vector<float> packed(m.x.begin() + (size_t)first * CONV_DIM,
                                  m.x.begin() + (size_t)(first + count) * CONV_DIM);
        packed.insert(packed.end(), m.a.begin() + first * GDN_HV, m.a.begin() + (first + count) * GDN_HV);
        packed.insert(packed.end(), m.b.begin() + first * GDN_HV, m.b.begin() + (first + count) * GDN_HV);
        std::vector<float> act((size_t)count * CONV_DIM), gates((size_t)count * 2 * GDN_HV);
        const int n = (int)count;
        launch(grid1(count), grid1(256), [&] {
            gdn_prefill_conv(packed.data(), n, c.w_t.data(), c.neg_a.data(), c.dt_bias.data(),
                             s.ring.data(), s.meta, act.data(), gates.data());
        });
        float* ot = o + (size_t)first * VALUE_DIM;
        launch(grid1(kRecBlocks), grid1(THREADS),
               [&] { gdn_prefill_scan(act.data(), gates.data(), n, s.state.data(), ot); });
        launch(grid1(1), grid1(1024), [&] { gdn_prefill_commit(packed.data(), n, s.ring.data(), s.meta); });
    }
}

// Per token one gdn_decode_batch launch over every member: inputs staged member after member,
// the slot table as backend.rs builds it (rings, then states, then metas).
void batched_steps(const Constants& c, std::vector<Slot>& slots, const std::vector<Member>& members,
                   unsigned tokens, std::vector<std::vector<float>>& outs) {
    const unsigned count = (unsigned)members.size();
    std::vector<unsigned long long> table(3 * (size_t)count);
    for (unsigned i = 0; i < count; ++i) {
        Slot& s = slots.at(members[i].slot);
        table[i] = (unsigned long long)(uintptr_t)s.ring.data();
        table[count + i] = (unsigned long long)(uintptr_t)s.state.data();
        table[2 * count + i] = (unsigned long long)(uintptr_t)s.meta;
    }
    for (unsigned t = 0; t < tokens; ++t) {
        std::vector<float> staged;
        for (const Member& m : members) {
            const std::vector<float> one = m.staged(t);
            staged.insert(staged.end(), one.begin(), one.end());
        }
        std::vector<float> o((size_t)count * VALUE_DIM, 0.0f);
        launch(dim3{kRecBlocks, count, 1}, grid1(THREADS), [&] {
            gdn_decode_batch(staged.data(), c.w_t.data(), c.neg_a.data(), c.dt_bias.data(), table.data(),
                             o.data());
        });
        for (unsigned i = 0; i < count; ++i) {
            std::copy(o.begin() + (size_t)i * VALUE_DIM, o.begin() + (size_t)(i + 1) * VALUE_DIM,
                      outs[i].begin() + (size_t)t * VALUE_DIM);
        }
    }
}

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
        std::vector<Slot> slots(r.u32());
        const unsigned ops = r.u32();
        const std::vector<float> weight = r.f32s((size_t)CONV_DIM * GDN_K);
        const std::vector<float> a_log = r.f32s(GDN_HV);
        // Constants as CudaConstants::upload prepares them.
        Constants c;
        c.dt_bias = r.f32s(GDN_HV);
        c.w_t.resize((size_t)CONV_DIM * GDN_K);
        for (int ch = 0; ch < CONV_DIM; ++ch)
            for (int k = 0; k < GDN_K; ++k) c.w_t[(size_t)k * CONV_DIM + ch] = weight[(size_t)ch * GDN_K + k];
        c.neg_a.resize(GDN_HV);
        for (int h = 0; h < GDN_HV; ++h) c.neg_a[h] = -std::exp(a_log[h]);

        for (unsigned op = 0; op < ops; ++op) {
            const unsigned kind = r.u32();
            std::vector<Member> members(r.u32());
            for (Member& m : members) {
                m.slot = r.u32();
                if (m.slot >= slots.size()) throw std::runtime_error("slot out of range");
            }
            const unsigned tokens = r.u32();
            for (Member& m : members) {
                m.x = r.f32s((size_t)tokens * CONV_DIM);
                m.a = r.f32s((size_t)tokens * GDN_HV);
                m.b = r.f32s((size_t)tokens * GDN_HV);
            }
            std::vector<std::vector<float>> outs(members.size(),
                                                 std::vector<float>((size_t)tokens * VALUE_DIM, 0.0f));
            if (kind == 2) {
                batched_steps(c, slots, members, tokens, outs);
            } else {
                for (size_t i = 0; i < members.size(); ++i) {
                    Slot& s = slots[members[i].slot];
                    if (kind == 0) {
                        steps(c, s, members[i], tokens, outs[i].data());
                    } else {
                        prefill(c, s, members[i], tokens, outs[i].data());
                    }
                }
            }
            for (const auto& o : outs) std::fwrite(o.data(), 4, o.size(), out);
        }
        for (const Slot& s : slots) {
            std::fwrite(&s.meta[0], 4, 1, out);
            std::fwrite(s.ring.data(), 4, s.ring.size(), out);
            std::fwrite(s.state.data(), 4, s.state.size(), out);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "emulate: %s\n", e.what());
        return 1;
    }
    std::fclose(out);
    return 0;
}
