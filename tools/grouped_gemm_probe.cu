// Times builds of the grouped GEMM (kernels-cuda/moe/grouped_gemm.cu and modified copies of
// it, compiled to cubins by grouped_gemm_probe.sh) side by side on the bench shapes of
// benches/moe.rs: per repetition every cubin runs once, L2 flushed before each call, CUDA
// events; prints the median and minimum time and rate per cubin, and how many output
// values differ bitwise from the first cubin's. The repetitions interleave the cubins
// because the long shapes run at the H200's power limit: clocks sink as the GPU warms, so
// only times taken side by side compare (median and minimum differ by up to 10% there).
//
// usage: grouped_gemm_probe REPS A.cubin [B.cubin ...]
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "grouped_gemm_params.h"

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

typedef CUresult (*EncodeTiled)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static EncodeTiled encode;

static DsaTmaDesc desc2d(void *ptr, uint64_t rows, uint64_t k, uint32_t box_rows) {
    CUtensorMap m;
    cuuint64_t dims[2] = {k, rows}, strides[1] = {k};
    cuuint32_t boxes[2] = {128, box_rows}, elem[2] = {1, 1};
    CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, ptr, dims, strides, boxes, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "encode failed %d\n", (int)r);
        exit(1);
    }
    DsaTmaDesc d;
    memcpy(&d, &m, sizeof d);
    return d;
}

// e4m3 codes of moderate magnitude, never NaN (the benches' filler).
__global__ void fill_codes(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        h ^= h >> 15;
        const uint8_t c = (uint8_t)h;
        p[i] = (c & 0x80) | (0x20 + (c & 0x7f) % 0x40);
    }
}
__global__ void fill_scales(float *p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2246822519u ^ seed;
        h ^= h >> 16;
        p[i] = ldexpf(1.f, -12 + (int)(h % 6));
    }
}

struct Shape {
    const char *name;
    bool masked;
    int groups, m, n, k;  // contiguous: m rows per group; masked: max_m
    const char *tiling;   // kernel suffix
    int bm, bn, smem;
};

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s REPS A.cubin [B.cubin ...]\n", argv[0]);
        return 2;
    }
    const int reps = atoi(argv[1]);
    std::vector<std::string> cubins(argv + 2, argv + argc);
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void **)&encode, 12000, cudaEnableDefault, &q));
    std::vector<cudaLibrary_t> libs(cubins.size());
    for (size_t i = 0; i < cubins.size(); ++i)
        CK(cudaLibraryLoadFromFile(&libs[i], cubins[i].c_str(), nullptr, nullptr, 0, nullptr, nullptr, 0));
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));

    const Shape shapes[] = {
        {"contiguous 8x4096 n4096 k7168", false, 8, 4096, 4096, 7168, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"contiguous 8x4096 n7168 k2048", false, 8, 4096, 7168, 2048, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"contiguous 4x8192 n4096 k7168", false, 4, 8192, 4096, 7168, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"contiguous 4x8192 n7168 k2048", false, 4, 8192, 7168, 2048, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"masked 1x1024 n4096 k7168", true, 1, 1024, 4096, 7168, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"masked 2x512 n4096 k7168", true, 2, 512, 4096, 7168, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"masked 4x256 n4096 k7168", true, 4, 256, 4096, 7168, "128x256", 128, 256, DSA_GG_SMEM_128x256},
        {"contiguous 8x4096 n4096 k7168 @128x128", false, 8, 4096, 4096, 7168, "128x128", 128, 128, DSA_GG_SMEM_128x128},
        {"masked 2x192 n4096 k7168 @64x256", true, 2, 192, 4096, 7168, "64x256", 64, 256, DSA_GG_SMEM_64x256},
    };

    void *flush;
    const size_t flush_bytes = 256u << 20;
    CK(cudaMalloc(&flush, flush_bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("probe: %d reps, %zu cubins, %d SMs\n", reps, cubins.size(), sms);
    for (const Shape &s : shapes) {
        const size_t rows = (size_t)s.groups * s.m;
        const int kb = s.k / 128;
        const size_t sfa_ld = s.masked ? s.m : (rows + 3) / 4 * 4;
        uint8_t *a, *b;
        float *sfa, *sfb;
        int32_t *ids;
        uint16_t *d;
        CK(cudaMalloc(&a, rows * s.k));
        CK(cudaMalloc(&b, (size_t)s.groups * s.n * s.k));
        const size_t sfa_n = s.masked ? (size_t)s.groups * kb * s.m : (size_t)kb * sfa_ld;
        CK(cudaMalloc(&sfa, sfa_n * 4));
        const size_t sfb_n = (size_t)s.groups * (s.n / 128) * kb;
        CK(cudaMalloc(&sfb, sfb_n * 4));
        CK(cudaMalloc(&d, rows * s.n * 2));
        fill_codes<<<1024, 256>>>(a, rows * s.k, 1);
        fill_codes<<<1024, 256>>>(b, (size_t)s.groups * s.n * s.k, 2);
        fill_scales<<<256, 256>>>(sfa, sfa_n, 3);
        fill_scales<<<256, 256>>>(sfb, sfb_n, 4);
        std::vector<int32_t> hid;
        if (s.masked)
            hid.assign(s.groups, s.m);
        else
            for (int g = 0; g < s.groups; ++g) hid.insert(hid.end(), s.m, g);
        CK(cudaMalloc(&ids, hid.size() * 4));
        CK(cudaMemcpy(ids, hid.data(), hid.size() * 4, cudaMemcpyHostToDevice));

        DsaGroupedGemmParams p;
        memset(&p, 0, sizeof p);
        p.a_desc = desc2d(a, rows, s.k, 64);
        p.b_desc = desc2d(b, (uint64_t)s.groups * s.n, s.k, s.bn);
        p.sfa = sfa;
        p.sfb = sfb;
        p.m_indices = s.masked ? nullptr : ids;
        p.masked_m = s.masked ? ids : nullptr;
        p.d = d;
        p.m_rows = s.masked ? s.m : (int)rows;
        p.sfa_ld = (int)sfa_ld;
        p.n = s.n;
        p.k = s.k;
        p.groups = s.groups;
        p.masked = s.masked;
        const size_t tiles = (s.masked ? (size_t)s.groups * (s.m / s.bm) : (rows + s.bm - 1) / s.bm) * (s.n / s.bn);
        const int grid = (int)std::min<size_t>(tiles, sms);
        std::vector<cudaKernel_t> ks(cubins.size());
        const std::string kname = std::string("dsa_grouped_gemm_") + s.tiling;
        for (size_t i = 0; i < cubins.size(); ++i) {
            CK(cudaLibraryGetKernel(&ks[i], libs[i], kname.c_str()));
            CK(cudaFuncSetAttribute((const void *)ks[i], cudaFuncAttributeMaxDynamicSharedMemorySize, s.smem));
        }
        void *args[] = {&p};
        std::vector<std::vector<float>> ms(cubins.size());
        std::vector<uint16_t> ref(rows * s.n), out(rows * s.n);
        std::vector<long> mismatch(cubins.size(), 0);
        for (size_t i = 0; i < cubins.size(); ++i) {
            CK(cudaMemset(d, 0xff, rows * s.n * 2));
            CK(cudaLaunchKernel((const void *)ks[i], dim3(grid), dim3(DSA_GG_THREADS), args, s.smem, 0));
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(i == 0 ? ref.data() : out.data(), d, rows * s.n * 2, cudaMemcpyDeviceToHost));
            if (i > 0)
                for (size_t j = 0; j < ref.size(); ++j) mismatch[i] += ref[j] != out[j];
        }
        for (int r = 0; r < reps; ++r)
            for (size_t i = 0; i < cubins.size(); ++i) {
                CK(cudaMemsetAsync(flush, r & 0xff, flush_bytes, 0));
                CK(cudaEventRecord(e0, 0));
                CK(cudaLaunchKernel((const void *)ks[i], dim3(grid), dim3(DSA_GG_THREADS), args, s.smem, 0));
                CK(cudaEventRecord(e1, 0));
                CK(cudaEventSynchronize(e1));
                float t;
                CK(cudaEventElapsedTime(&t, e0, e1));
                ms[i].push_back(t);
            }
        const double flops = 2.0 * rows * s.n * s.k;
        for (size_t i = 0; i < cubins.size(); ++i) {
            std::sort(ms[i].begin(), ms[i].end());
            const double med = ms[i][ms[i].size() / 2];
            printf("%-42s %-28s %9.1f us %7.1f TFLOP/s  min %8.1f us  mismatches vs first %ld\n", s.name,
                   cubins[i].substr(cubins[i].find_last_of('/') + 1).c_str(), med * 1e3, flops / (med * 1e-3) / 1e12,
                   ms[i][0] * 1e3, mismatch[i]);
        }
        CK(cudaFree(a));
        CK(cudaFree(b));
        CK(cudaFree(sfa));
        CK(cudaFree(sfb));
        CK(cudaFree(ids));
        CK(cudaFree(d));
    }
    return 0;
}
