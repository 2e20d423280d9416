// Sparse MLA prefill: queries [s_q, h_q, 576] over a flat bf16 kv [s_kv, 576], each query
// with its own top-k row indices; also returns max_logits. Same warp-specialized wgmma
// kernel as the decode (include/sparse_mla_fwd.cuh), instantiated for bf16 rows.
#include "sparse_mla_fwd.cuh"

extern "C" __global__ void __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_prefill(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<false, false>(p);
}

// Head groups in pairs (h_q a multiple of 128): the two CTAs of a query form a cluster and
// each gathers half of every block for both.
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_prefill_pair(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<false, true>(p);
}
