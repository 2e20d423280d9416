// Sparse MLA decode over the paged MLA cache (FP8 656 B/token, or bf16 576 x bf16/token):
// the shared warp-specialized wgmma kernel of sparse_mla_fwd.cuh, for FP8 also in the
// paired form (two head groups in a 2-CTA cluster sharing the gather). Split-KV partials
// are merged by the MLA combine (mla_combine.cu).
#include "sparse_mla_fwd.cuh"

extern "C" __global__ void __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_decode_fp8(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<true>(p);
}

extern "C" __global__ void __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_decode_bf16(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<false>(p);
}

// Two 64-head groups of a (row, split) as a 2-CTA cluster sharing the gather; the host
// picks it for an even number of head groups.
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_decode_fp8_pair(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<true, true>(p);
}
