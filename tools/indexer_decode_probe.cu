// Tuning harness for the paged decode logits (kernels-cuda/indexer/indexer_logits.cu),
// built and run on a GPU host by tools/indexer_decode_probe.sh: times the exported
// h64_q1 kernel and, with -DPROBE_VARIANTS, pipeline variants of it (stages x CTAs per
// SM) on the bench shapes (64 heads, next_n 1, L2
// flushed before each launch), and checks sampled logits of every variant against a host
// computation.
//
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//        -Ikernels-cuda/common -Ikernels-cuda/indexer [-DPROBE_VARIANTS] \
//        [-DINDEXER_SRC='"path/to/indexer_logits.cu"'] tools/indexer_decode_probe.cu -o probe
#ifndef INDEXER_SRC
#define INDEXER_SRC "../kernels-cuda/indexer/indexer_logits.cu"
#endif
#include INDEXER_SRC

#include <cuda_runtime.h>

#ifndef DSA_INDEXER_DECODE_MAX_CTAS_PER_SM
#define DSA_INDEXER_DECODE_MAX_CTAS_PER_SM 3  // sources before the constant
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                                        \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                                            \
        }                                                                                            \
    } while (0)

#ifdef PROBE_VARIANTS
template <int S>
__global__ void __launch_bounds__(128, 1) probe_decode_s(const __grid_constant__ DsaIndexerDecodeParams p) {
    decode_body<64, 1, S>(p);
}
#endif

struct Variant {
    const char *name;
    const void *fn;
    int threads, smem, ctas;
};

static float e4m3_to_f32(uint8_t b) {
    const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? std::ldexp((float)m / 8.f, -6) : std::ldexp(1.f + (float)m / 8.f, e - 7);
    return s ? -v : v;
}

__global__ void fill_bytes(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = (uint8_t)(h & 0xB7);  // e4m3 codes of magnitude < 2^8, never NaN
    }
}
__global__ void fill_scales(uint8_t *cache, size_t pages) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < pages * 64; i += (size_t)gridDim.x * blockDim.x) {
        const size_t pg = i / 64, k = i % 64;
        reinterpret_cast<float *>(cache + pg * DSA_INDEXER_PAGE_BYTES + 8192)[k] = 0.001f * (1 + (i * 7) % 13);
    }
}

int main(int argc, char **argv) {
    const int only = argc > 1 ? std::atoi(argv[1]) : -1;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int base_smem = DSA_INDEXER_DECODE_SMEM_BASE + DSA_INDEXER_DECODE_SMEM_PER_COLUMN * 64;
    auto ctas_for = [](int smem, int maxc) {
        return std::min(maxc, (int)(DSA_SM90_SMEM_PER_SM / (smem + DSA_SM90_SMEM_RESERVED_PER_CTA)));
    };
    std::vector<Variant> vs = {
        {"exported", (const void *)dsa_indexer_logits_decode_h64_q1, 128, base_smem,
         ctas_for(base_smem, DSA_INDEXER_DECODE_MAX_CTAS_PER_SM)},
    };
#ifdef PROBE_VARIANTS
    auto smem_s = [](int s) { return 1024 + 64 * 128 + s * (8192 + 256 + 16) + 64 * 4; };
    vs.push_back({"s6c3", (const void *)probe_decode_s<6>, 128, smem_s(6), ctas_for(smem_s(6), 8)});
    vs.push_back({"s5c4", (const void *)probe_decode_s<5>, 128, smem_s(5), ctas_for(smem_s(5), 8)});
    vs.push_back({"s4c5", (const void *)probe_decode_s<4>, 128, smem_s(4), ctas_for(smem_s(4), 8)});
    vs.push_back({"s4c4", (const void *)probe_decode_s<4>, 128, smem_s(4), 4});
    vs.push_back({"s3c6", (const void *)probe_decode_s<3>, 128, smem_s(3), ctas_for(smem_s(3), 8)});
    vs.push_back({"s3c5", (const void *)probe_decode_s<3>, 128, smem_s(3), 5});
    vs.push_back({"s8c2", (const void *)probe_decode_s<8>, 128, smem_s(8), ctas_for(smem_s(8), 8)});
#endif
    for (auto &v : vs) CK(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, v.smem));

    struct Case {
        int batch, ctx;
    };
    const Case cases[] = {{128, 32768}, {128, 131072}, {32, 131072}, {32, 32768}};
    const size_t max_pages_all = (size_t)128 * 131072 / 64;
    uint8_t *cache;
    CK(cudaMalloc(&cache, max_pages_all * DSA_INDEXER_PAGE_BYTES));
    fill_bytes<<<1024, 256>>>(cache, max_pages_all * DSA_INDEXER_PAGE_BYTES, 17);
    fill_scales<<<1024, 256>>>(cache, max_pages_all);
    void *flush;
    const size_t flush_bytes = 256u << 20;
    CK(cudaMalloc(&flush, flush_bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::mt19937 rng(7);
    for (int ci = 0; ci < 4; ++ci) {
        if (only >= 0 && ci != only) continue;
        const Case c = cases[ci];
        const int max_pages = c.ctx / 64, B = c.batch;
        std::vector<int> lens(B, c.ctx), table((size_t)B * max_pages);
        for (size_t i = 0; i < table.size(); ++i) table[i] = (int)((i * 7919) % max_pages_all);
        std::vector<uint8_t> q8((size_t)B * 64 * 128);
        for (auto &x : q8) x = (uint8_t)(rng() & 0xB7);
        std::vector<float> w((size_t)B * 64);
        for (auto &x : w) x = (float)(rng() % 1000) / 1000.f;
        int *d_lens, *d_table, *d_plan;
        uint8_t *d_q8;
        float *d_w, *d_out;
        CK(cudaMalloc(&d_lens, B * 4));
        CK(cudaMalloc(&d_table, table.size() * 4));
        CK(cudaMalloc(&d_plan, (B + 1) * 4));
        CK(cudaMalloc(&d_q8, q8.size()));
        CK(cudaMalloc(&d_w, w.size() * 4));
        CK(cudaMalloc(&d_out, (size_t)B * c.ctx * 4));
        CK(cudaMemcpy(d_lens, lens.data(), B * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_q8, q8.data(), q8.size(), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_w, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
        DsaIndexerPlanParams pp{d_lens, d_plan, B, max_pages, c.ctx, 0};
        dsa_indexer_decode_plan<<<1, 1024>>>(pp);
        DsaIndexerDecodeParams p{};
        p.q8 = d_q8;
        p.w = d_w;
        p.cache = cache;
        p.context_lens = d_lens;
        p.block_table = d_table;
        p.plan = d_plan;
        p.out = d_out;
        p.out_stride = c.ctx;
        p.num_pages = (int64_t)max_pages_all;
        p.batch = B;
        p.next_n = 1;
        p.max_pages = max_pages;
        p.max_ctx = c.ctx;
        // Host check points: (row, key) pairs.
        std::vector<std::pair<int, int>> pts;
        for (int i = 0; i < 512; ++i) pts.push_back({(int)(rng() % B), (int)(rng() % c.ctx)});
        std::vector<float> want(pts.size());
        std::vector<uint8_t> key(128);
        float ks;
        for (size_t i = 0; i < pts.size(); ++i) {
            const int b = pts[i].first, t = pts[i].second;
            const int id = table[(size_t)b * max_pages + t / 64];
            CK(cudaMemcpy(key.data(), cache + (size_t)id * DSA_INDEXER_PAGE_BYTES + (t % 64) * 128, 128, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(&ks, cache + (size_t)id * DSA_INDEXER_PAGE_BYTES + 8192 + (t % 64) * 4, 4, cudaMemcpyDeviceToHost));
            double s = 0;
            for (int h = 0; h < 64; ++h) {
                double d = 0;
                for (int j = 0; j < 128; ++j) d += (double)e4m3_to_f32(q8[((size_t)b * 64 + h) * 128 + j]) * e4m3_to_f32(key[j]);
                s += w[(size_t)b * 64 + h] * std::max(d, 0.0);
            }
            want[i] = (float)(s * ks);
        }
        const double gb = (double)B * c.ctx * 136 / 1e9;
        for (auto &v : vs) {
            const int grid = v.ctas * sms;
            void *args[] = {&p};
            auto launch = [&] { CK(cudaLaunchKernel(v.fn, dim3(grid), dim3(v.threads), args, v.smem, 0)); };
            CK(cudaMemset(d_out, 0xff, (size_t)B * c.ctx * 4));
            launch();
            CK(cudaDeviceSynchronize());
            double err = 0, ref = 0;
            for (size_t i = 0; i < pts.size(); ++i) {
                float got;
                CK(cudaMemcpy(&got, d_out + (size_t)pts[i].first * c.ctx + pts[i].second, 4, cudaMemcpyDeviceToHost));
                err = std::max(err, (double)std::fabs(got - want[i]));
                ref = std::max(ref, (double)std::fabs(want[i]));
            }
            std::vector<float> ts;
            for (int i = 0; i < 15; ++i) {
                CK(cudaMemsetAsync(flush, i, flush_bytes));
                CK(cudaEventRecord(e0));
                launch();
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                ts.push_back(ms * 1e3f);
            }
            std::sort(ts.begin(), ts.end());
            const float med = ts[ts.size() / 2];
            std::printf("PROBE b%d_ctx%dk %-9s grid %4d x %3d  %8.1f us  %6.0f GB/s  %.3f of 4242  err %.2e of %.2e\n", B,
                        c.ctx / 1024, v.name, grid, v.threads, med, gb / (med * 1e-6), gb / (med * 1e-6) / 4242.0, err / ref,
                        ref);
        }
        CK(cudaFree(d_lens));
        CK(cudaFree(d_table));
        CK(cudaFree(d_plan));
        CK(cudaFree(d_q8));
        CK(cudaFree(d_w));
        CK(cudaFree(d_out));
    }
    return 0;
}
