// Sparse MLA prefill: queries [s_q, h_q, 576] over a flat bf16 kv [s_kv, 576], each query
// with its own top-k row indices; also returns max_logits. Same warp-specialized wgmma
// kernel as the decode (sparse_mla_fwd.cuh), instantiated for bf16 rows.
#include "sparse_mla_fwd.cuh"

extern "C" __global__ void __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_prefill(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<false>(p);
}
