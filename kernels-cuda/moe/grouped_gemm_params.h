/* Parameters of the FP8 block-scaled grouped GEMM (kernels-cuda/moe/grouped_gemm.cu):
 * activations e4m3 with 1x128 fp32 scales, weights e4m3 with 128x128 fp32 scales, bf16 out.
 * Mirrored in Rust by bindgen into src/sys/grouped_gemm.rs. Layouts: the module docs of
 * src/moe/ (mod.rs, gemm.rs). */
#ifndef DSA_GROUPED_GEMM_PARAMS_H
#define DSA_GROUPED_GEMM_PARAMS_H
#include "common_params.h"

/* K per scale block and per pipeline stage; N and K must be multiples of it. */
#define DSA_GG_BLOCK_K 128
/* Threads per CTA: one TMA producer warpgroup and two wgmma math warpgroups. */
#define DSA_GG_THREADS 384
/* Dynamic shared memory of each kernel instance dsa_grouped_gemm_<BLOCK_M>x<BLOCK_N>
 * (1 KB alignment slack + stages x (A + B + activation-scale tiles) + two 8 KB epilogue
 * staging tiles + mbarriers). */
#define DSA_GG_SMEM_128x128 217184
#define DSA_GG_SMEM_128x256 216128
#define DSA_GG_SMEM_64x128 216192
#define DSA_GG_SMEM_64x256 223568

/* An encoded TMA descriptor (CUtensorMap): 128 opaque bytes, 64-byte aligned. Lives in
 * the kernel's parameter space (__grid_constant__), so no device copy is needed. */
typedef struct __attribute__((aligned(64))) DsaTmaDesc {
    uint64_t opaque[16];
} DsaTmaDesc;

/* One grouped GEMM launch: D[row, n] = sum_kb sa[row, kb] * sb[g, n/128, kb] * (A[row, kb-block] . B[g, n, kb-block]).
 *
 * Contiguous (masked == 0): A [m_rows, K], D [m_rows, N]; the group of a BLOCK_M tile is
 * m_indices[first row] (all rows group 0 when m_indices is null); rows whose m_indices
 * differ from the tile's group (-1 padding) and tiles whose first row is not a group are
 * written as zeros. sfa [K/128, sfa_ld] with sfa_ld = round_up(m_rows, 4).
 *
 * Masked (masked != 0): A [groups, m_rows, K], D [groups, m_rows, N], m_rows = max_m;
 * rows at or past masked_m[g] are written as zeros. sfa [groups, K/128, m_rows]. */
typedef struct DsaGroupedGemmParams {
    DsaTmaDesc a_desc;       /* A codes as a 2-D [rows_total, K] u8 tensor, box 128 x 64, 128B swizzle */
    DsaTmaDesc b_desc;       /* B codes as a 2-D [groups * N, K] u8 tensor, box 128 x BLOCK_N, 128B swizzle */
    const float *sfa;        /* activation scales, MN-major (see above) */
    const float *sfb;        /* weight scales [groups, N/128, K/128] */
    const int32_t *m_indices;/* contiguous: [m_rows] group per row, or null */
    const int32_t *masked_m; /* masked: [groups] valid rows per group */
    uint16_t *d;             /* bf16 out */
    int32_t m_rows;          /* contiguous: rows of A and D; masked: max_m */
    int32_t sfa_ld;          /* contiguous: row stride of sfa (round_up(m_rows, 4)); masked: m_rows */
    int32_t n;
    int32_t k;
    int32_t groups;
    int32_t masked;
} DsaGroupedGemmParams;

#endif
