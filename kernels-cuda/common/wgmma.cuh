// Warpgroup MMA (wgmma, sm_90a): shared-memory matrix descriptors, the fence / commit /
// wait protocol, and the bf16 and FP8 e4m3 shapes the kernels use, all with both operands
// in shared memory and f32 accumulators.
//
// Accumulator layout of a m64nN shape (per thread of the warpgroup, N/2 floats): warp w,
// lane l, g = l / 4, t = l % 4; d[4i + e] is row 16w + g + 8 (e / 2), column
// 8i + 2t + (e % 2).
#pragma once
#include <stdint.h>

namespace dsa {

// ----------------------------------------------------------------------- descriptors
// Swizzle mode of a shared-memory operand (the descriptor's layout-type field).
enum class Swizzle : uint32_t { None = 0, B128 = 1, B64 = 2, B32 = 3 };

// Descriptor of a shared-memory operand tile. K-major with a swizzle: `lbo` unused (16),
// `sbo` the stride between 8-row groups (8 rows x swizzle width, 1024 B for 128-byte
// rows). MN-major (transposed) with a swizzle: `lbo` the stride between swizzle-wide
// column chunks, `sbo` between 8-row groups along K. Swizzled tiles must start on the
// swizzle's repeat (1024 B for B128) so the base-offset field stays 0; advancing K inside
// the swizzle row is adding bytes / 16 to the descriptor.
template <Swizzle kSwizzle = Swizzle::B128>
__device__ __forceinline__ uint64_t smem_desc(uint32_t saddr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)((lbo_bytes >> 4) & 0x3FFF) << 16) |
           ((uint64_t)((sbo_bytes >> 4) & 0x3FFF) << 32) | ((uint64_t)kSwizzle << 62);
}

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a tile of 128-byte rows with
// the 128-byte swizzle: the layout a B128 descriptor reads without bank conflicts.
__device__ __forceinline__ uint32_t sw128_offset(int row, int chunk) {
    return (uint32_t)(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// ----------------------------------------------------------------------- protocol
// Orders this warpgroup's register and shared-memory writes before the MMAs that follow.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed MMA groups are in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers at this point of the program so the compiler neither reads
// them before the asynchronous MMA retires nor moves writes across the issue.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// ----------------------------------------------------------------------- shapes
// The operand lists are spelled out (inline asm cannot expand a parameter pack), once per
// fragment size, and shared by the bf16 and e4m3 shapes of that size.
// scale_d = 0 overwrites D, otherwise D is accumulated into.
template <int N, int kTransA, int kTransB>
struct WgmmaBf16;
template <int N>
struct WgmmaE4m3;

// Accumulator operand lists of an n-float fragment: the asm text "%0, ..., %(n-1)" and
// the matching read-write constraints (built from runs of eight).
#define DSA_ACC_RUN8(d, b)                                        \
    "+f"(d[b]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), \
    "+f"(d[b + 4]), "+f"(d[b + 5]), "+f"(d[b + 6]), "+f"(d[b + 7])
#define DSA_ACC_TEXT8_0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define DSA_ACC_TEXT8_1 "%8, %9, %10, %11, %12, %13, %14, %15"
#define DSA_ACC_TEXT8_2 "%16, %17, %18, %19, %20, %21, %22, %23"
#define DSA_ACC_TEXT8_3 "%24, %25, %26, %27, %28, %29, %30, %31"
#define DSA_ACC_TEXT8_4 "%32, %33, %34, %35, %36, %37, %38, %39"
#define DSA_ACC_TEXT8_5 "%40, %41, %42, %43, %44, %45, %46, %47"
#define DSA_ACC_TEXT8_6 "%48, %49, %50, %51, %52, %53, %54, %55"
#define DSA_ACC_TEXT8_7 "%56, %57, %58, %59, %60, %61, %62, %63"
#define DSA_ACC_TEXT8_8 "%64, %65, %66, %67, %68, %69, %70, %71"
#define DSA_ACC_TEXT8_9 "%72, %73, %74, %75, %76, %77, %78, %79"
#define DSA_ACC_TEXT8_10 "%80, %81, %82, %83, %84, %85, %86, %87"
#define DSA_ACC_TEXT8_11 "%88, %89, %90, %91, %92, %93, %94, %95"
#define DSA_ACC_TEXT8_12 "%96, %97, %98, %99, %100, %101, %102, %103"
#define DSA_ACC_TEXT8_13 "%104, %105, %106, %107, %108, %109, %110, %111"
#define DSA_ACC_TEXT8_14 "%112, %113, %114, %115, %116, %117, %118, %119"
#define DSA_ACC_TEXT8_15 "%120, %121, %122, %123, %124, %125, %126, %127"
#define DSA_ACC8_TEXT \
    DSA_ACC_TEXT8_0
#define DSA_ACC16_TEXT \
    DSA_ACC_TEXT8_0 ", " DSA_ACC_TEXT8_1
#define DSA_ACC32_TEXT \
    DSA_ACC_TEXT8_0 ", " DSA_ACC_TEXT8_1 ", " DSA_ACC_TEXT8_2 ", " DSA_ACC_TEXT8_3
#define DSA_ACC48_TEXT \
    DSA_ACC_TEXT8_0 ", " DSA_ACC_TEXT8_1 ", " DSA_ACC_TEXT8_2 ", " DSA_ACC_TEXT8_3 ", " DSA_ACC_TEXT8_4 \
    ", " DSA_ACC_TEXT8_5
#define DSA_ACC64_TEXT \
    DSA_ACC_TEXT8_0 ", " DSA_ACC_TEXT8_1 ", " DSA_ACC_TEXT8_2 ", " DSA_ACC_TEXT8_3 ", " DSA_ACC_TEXT8_4 \
    ", " DSA_ACC_TEXT8_5 ", " DSA_ACC_TEXT8_6 ", " DSA_ACC_TEXT8_7
#define DSA_ACC96_TEXT \
    DSA_ACC_TEXT8_0 ", " DSA_ACC_TEXT8_1 ", " DSA_ACC_TEXT8_2 ", " DSA_ACC_TEXT8_3 ", " DSA_ACC_TEXT8_4 \
    ", " DSA_ACC_TEXT8_5 ", " DSA_ACC_TEXT8_6 ", " DSA_ACC_TEXT8_7 ", " DSA_ACC_TEXT8_8 ", " \
    DSA_ACC_TEXT8_9 ", " DSA_ACC_TEXT8_10 ", " DSA_ACC_TEXT8_11
#define DSA_ACC128_TEXT \
    DSA_ACC_TEXT8_0 ", " DSA_ACC_TEXT8_1 ", " DSA_ACC_TEXT8_2 ", " DSA_ACC_TEXT8_3 ", " DSA_ACC_TEXT8_4 \
    ", " DSA_ACC_TEXT8_5 ", " DSA_ACC_TEXT8_6 ", " DSA_ACC_TEXT8_7 ", " DSA_ACC_TEXT8_8 ", " \
    DSA_ACC_TEXT8_9 ", " DSA_ACC_TEXT8_10 ", " DSA_ACC_TEXT8_11 ", " DSA_ACC_TEXT8_12 ", " \
    DSA_ACC_TEXT8_13 ", " DSA_ACC_TEXT8_14 ", " DSA_ACC_TEXT8_15
#define DSA_ACC8_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0)
#define DSA_ACC16_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0), DSA_ACC_RUN8(d, 8)
#define DSA_ACC32_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0), DSA_ACC_RUN8(d, 8), DSA_ACC_RUN8(d, 16), DSA_ACC_RUN8(d, 24)
#define DSA_ACC48_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0), DSA_ACC_RUN8(d, 8), DSA_ACC_RUN8(d, 16), DSA_ACC_RUN8(d, 24), \
    DSA_ACC_RUN8(d, 32), DSA_ACC_RUN8(d, 40)
#define DSA_ACC64_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0), DSA_ACC_RUN8(d, 8), DSA_ACC_RUN8(d, 16), DSA_ACC_RUN8(d, 24), \
    DSA_ACC_RUN8(d, 32), DSA_ACC_RUN8(d, 40), DSA_ACC_RUN8(d, 48), DSA_ACC_RUN8(d, 56)
#define DSA_ACC96_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0), DSA_ACC_RUN8(d, 8), DSA_ACC_RUN8(d, 16), DSA_ACC_RUN8(d, 24), \
    DSA_ACC_RUN8(d, 32), DSA_ACC_RUN8(d, 40), DSA_ACC_RUN8(d, 48), DSA_ACC_RUN8(d, 56), \
    DSA_ACC_RUN8(d, 64), DSA_ACC_RUN8(d, 72), DSA_ACC_RUN8(d, 80), DSA_ACC_RUN8(d, 88)
#define DSA_ACC128_OPERANDS(d) \
    DSA_ACC_RUN8(d, 0), DSA_ACC_RUN8(d, 8), DSA_ACC_RUN8(d, 16), DSA_ACC_RUN8(d, 24), \
    DSA_ACC_RUN8(d, 32), DSA_ACC_RUN8(d, 40), DSA_ACC_RUN8(d, 48), DSA_ACC_RUN8(d, 56), \
    DSA_ACC_RUN8(d, 64), DSA_ACC_RUN8(d, 72), DSA_ACC_RUN8(d, 80), DSA_ACC_RUN8(d, 88), \
    DSA_ACC_RUN8(d, 96), DSA_ACC_RUN8(d, 104), DSA_ACC_RUN8(d, 112), DSA_ACC_RUN8(d, 120)

// One specialization per shape. Operand numbers after the n accumulators: da = %n,
// db = %n+1, scale_d = %n+2, then the bf16 transpose immediates.
#define DSA_WGMMA_BF16_SHAPE(N, n, DA, DB, SD, TA, TB)                                                          \
    template <int kTransA, int kTransB>                                                                         \
    struct WgmmaBf16<N, kTransA, kTransB> {                                                                     \
        static __device__ __forceinline__ void mma(float (&d)[n], uint64_t da, uint64_t db, int scale_d) {      \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #SD ", 0;\n"                                      \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" DSA_ACC##n##_TEXT         \
                         "}, %" #DA ", %" #DB ", p, 1, 1, %" #TA ", %" #TB ";\n}\n"                             \
                         : DSA_ACC##n##_OPERANDS(d)                                                             \
                         : "l"(da), "l"(db), "r"(scale_d), "n"(kTransA), "n"(kTransB));                         \
        }                                                                                                       \
    };
#define DSA_WGMMA_E4M3_SHAPE(N, n, DA, DB, SD)                                                                  \
    template <>                                                                                                 \
    struct WgmmaE4m3<N> {                                                                                       \
        static __device__ __forceinline__ void mma(float (&d)[n], uint64_t da, uint64_t db, int scale_d) {      \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #SD ", 0;\n"                                      \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 {" DSA_ACC##n##_TEXT         \
                         "}, %" #DA ", %" #DB ", p, 1, 1;\n}\n"                                                 \
                         : DSA_ACC##n##_OPERANDS(d)                                                             \
                         : "l"(da), "l"(db), "r"(scale_d));                                                     \
        }                                                                                                       \
    };

DSA_WGMMA_BF16_SHAPE(32, 16, 16, 17, 18, 19, 20)
DSA_WGMMA_BF16_SHAPE(64, 32, 32, 33, 34, 35, 36)
DSA_WGMMA_BF16_SHAPE(128, 64, 64, 65, 66, 67, 68)
DSA_WGMMA_BF16_SHAPE(256, 128, 128, 129, 130, 131, 132)
DSA_WGMMA_E4M3_SHAPE(16, 8, 8, 9, 10)
DSA_WGMMA_E4M3_SHAPE(32, 16, 16, 17, 18)
DSA_WGMMA_E4M3_SHAPE(64, 32, 32, 33, 34)
DSA_WGMMA_E4M3_SHAPE(96, 48, 48, 49, 50)
DSA_WGMMA_E4M3_SHAPE(128, 64, 64, 65, 66)
DSA_WGMMA_E4M3_SHAPE(192, 96, 96, 97, 98)
DSA_WGMMA_E4M3_SHAPE(256, 128, 128, 129, 130)

// D[64 x N] (+)= A[64 x 16] B[16 x N], bf16 operands from shared memory. kTransB = 0: B
// K-major (rows of B^T, as keys are stored); 1: B MN-major (N contiguous), e.g. V read
// straight from a key tile.
template <int N, int kTransB = 0>
__device__ __forceinline__ void wgmma_bf16_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
    WgmmaBf16<N, 0, kTransB>::mma(d, da, db, scale_d);
}

// D[64 x N] (+)= A[64 x 32] B[32 x N], e4m3 operands from shared memory, both K-major
// (the only FP8 form wgmma has).
template <int N>
__device__ __forceinline__ void wgmma_e4m3_ss(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) {
    WgmmaE4m3<N>::mma(d, da, db, scale_d);
}

}  // namespace dsa
