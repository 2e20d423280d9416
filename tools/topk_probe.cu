// Tuning harness for kernels-cuda/topk/topk.cu, built and run on a GPU host by
// tools/topk_probe.sh: times the kernel on the bench shapes (L2 flushed before each
// launch, and back to back), checks a few rows against a host top-k with the same tie
// rule, and with -DDSA_TOPK_PROBES prints the phase times of CTA 0.
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Ikernels-cuda/common -Ikernels-cuda/topk \
//        [-DDSA_TOPK_PROBES] [-DDSA_TOPK_UNROLL=N] [-DDSA_TOPK_PRELOAD=1] [-DDSA_TOPK_PIPELINE=1] [-DTOPK_SRC='"path/to/topk.cu"'] \
//        tools/topk_probe.cu -o topk_probe && ./topk_probe [case]
#ifndef TOPK_SRC
#define TOPK_SRC "../kernels-cuda/topk/topk.cu"
#endif
#include TOPK_SRC

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            std::exit(1);                                                                  \
        }                                                                                  \
    } while (0)

struct Case {
    int rows, cols, k;
    bool ties;
    const char *name;
};

static const Case kCases[] = {
    {128, 32 * 1024, 2048, false, "128x32K"},   {128, 128 * 1024, 2048, false, "128x128K"},
    {4, 128 * 1024, 2048, false, "4x128K"},     {4096, 8 * 1024, 2048, false, "4096x8K"},
    {128, 128 * 1024, 2048, true, "128x128K/ties"}, {32, 128 * 1024, 2048, false, "32x128K"},
    {32, 128 * 1024, 2048, true, "32x128K/ties"},   {32, 8 * 1024, 2048, false, "32x8K"},
};

// Kernels by CTAs per row (clusters with -DPROBE_SPLITS, on sources that define them).
struct Kern {
    int split;
    void (*fn)(const DsaTopkParams);
};
static const Kern kKerns[] = {
    {1, dsa_topk_f32},
#ifdef PROBE_SPLITS
    {2, dsa_topk_f32_split2}, {4, dsa_topk_f32_split4}, {8, dsa_topk_f32_split8},
#endif
};

// Indices of the k largest (value desc, index asc), NaN never present here.
static std::vector<int> host_topk(const float *row, int n, int k) {
    std::vector<int> idx(n);
    for (int i = 0; i < n; ++i) idx[i] = i;
    auto cmp = [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
    const int m = std::min(k, n);
    std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), cmp);
    idx.resize(m);
    std::sort(idx.begin(), idx.end());
    return idx;
}

int main(int argc, char **argv) {
    const int only = argc > 1 ? std::atoi(argv[1]) : -1;
    for (const Kern &kk : kKerns)
        CK(cudaFuncSetAttribute(kk.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, DSA_TOPK_SMEM_BYTES));
    void *flush = nullptr;
    const size_t flush_bytes = 128u << 20;
    CK(cudaMalloc(&flush, flush_bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int ci = 0; ci < (int)(sizeof(kCases) / sizeof(kCases[0])); ++ci) {
        if (only >= 0 && ci != only) continue;
        const Case &c = kCases[ci];
        const size_t n = (size_t)c.rows * c.cols;
        std::vector<float> h(n);
        std::mt19937 rng(1234 + ci);
        std::uniform_real_distribution<float> u(-1.f, 1.f), v(0.f, 1.f);
        std::uniform_int_distribution<int> d16(0, 15);
        for (size_t i = 0; i < n; ++i) {
            if (c.ties) {
                h[i] = (float)d16(rng);
            } else {
                const float a = u(rng), b = v(rng);
                h[i] = a + b * b * b * 4.f;
            }
        }
        std::vector<int> ends(c.rows, c.cols);
        float *d_logits;
        int *d_ends, *d_out;
        CK(cudaMalloc(&d_logits, n * 4));
        CK(cudaMalloc(&d_ends, c.rows * 4));
        CK(cudaMalloc(&d_out, (size_t)c.rows * c.k * 4));
        CK(cudaMemcpy(d_logits, h.data(), n * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_ends, ends.data(), c.rows * 4, cudaMemcpyHostToDevice));
        DsaTopkParams p{};
        p.logits = d_logits;
        p.row_stride = c.cols;
        p.ends = d_ends;
        p.out = d_out;
        p.rows = c.rows;
        p.cols = c.cols;
        p.k = c.k;
        p.next_n = 1;
      for (const Kern &kk : kKerns) {
        if (kk.split > 1 && c.rows * kk.split > 264) continue;
        auto launch = [&] {
            kk.fn<<<c.rows * kk.split, DSA_TOPK_THREADS, DSA_TOPK_SMEM_BYTES>>>(p);
        };
        for (int i = 0; i < 3; ++i) launch();
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        // Flushed: median of 21 single launches, L2 written over before each.
        std::vector<float> ts;
        for (int i = 0; i < 21; ++i) {
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
        // Back to back: 20 launches between two events (no launch gaps; warm L2 where
        // the logits fit in it).
        CK(cudaEventRecord(e0));
        for (int i = 0; i < 20; ++i) launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms_b2b;
        CK(cudaEventElapsedTime(&ms_b2b, e0, e1));
        CK(cudaGetLastError());
        // Check a few rows against the host.
        std::vector<int> out((size_t)c.rows * c.k);
        CK(cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost));
        int bad = 0;
        for (int r = 0; r < std::min(c.rows, 6); ++r) {
            std::vector<int> want = host_topk(h.data() + (size_t)r * c.cols, c.cols, c.k);
            std::vector<int> got(out.begin() + (size_t)r * c.k, out.begin() + (size_t)(r + 1) * c.k);
            std::sort(got.begin(), got.end());
            if (got != want) ++bad;
        }
        const double gb = n * 4.0 / 1e9;
        CK(cudaMemset(d_out, 0xff, out.size() * 4));
        launch();
        CK(cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost));
        for (int r = 0; r < c.rows; r += 7) {
            std::vector<int> want = host_topk(h.data() + (size_t)r * c.cols, c.cols, c.k);
            std::vector<int> got(out.begin() + (size_t)r * c.k, out.begin() + (size_t)(r + 1) * c.k);
            std::sort(got.begin(), got.end());
            if (got != want) ++bad;
        }
        std::printf("PROBE split%d %-14s flushed median %8.2f us (%6.0f GB/s)  back-to-back %8.2f us (%6.0f GB/s)  rows-bad %d\n",
                    kk.split, c.name, ts[ts.size() / 2], gb / (ts[ts.size() / 2] * 1e-6), ms_b2b * 1e3 / 20,
                    gb / (ms_b2b * 1e-3 / 20), bad);
#ifdef DSA_TOPK_PROBES
        CK(cudaMemsetAsync(flush, 7, flush_bytes));
        launch();
        CK(cudaDeviceSynchronize());
        unsigned long long pr[16];
        CK(cudaMemcpyFromSymbol(pr, dsa_topk_probe, sizeof(pr)));
        std::printf("PHASES %-14s sample %.2f  main %.2f  refine %.2f  collect %.2f  sort %.2f  write %.2f us"
                    " | n %llu t_lo %#llx nc %llu in_smem %llu count %llu\n",
                    c.name, (pr[1] - pr[0]) / 1e3, (pr[2] - pr[1]) / 1e3, (pr[3] - pr[2]) / 1e3,
                    (pr[4] - pr[3]) / 1e3, (pr[5] - pr[4]) / 1e3, (pr[6] - pr[5]) / 1e3, pr[8], pr[9], pr[10],
                    pr[11], pr[12]);
#endif
      }
        CK(cudaFree(d_logits));
        CK(cudaFree(d_ends));
        CK(cudaFree(d_out));
    }
    return 0;
}
