#!/usr/bin/env bash
# Grouped GEMM tuning: builds kernels-cuda/moe/grouped_gemm.cu (cubin "base") and each given
# variant source (a modified copy of it; cubin named by its file stem) plus
# tools/grouped_gemm_probe.cu into DIR. On a GPU host then run
#   DIR/grouped_gemm_probe 15 DIR/base.cubin DIR/<variant>.cubin ...
# which times them side by side on the bench shapes and bit-compares their outputs.
#   tools/grouped_gemm_probe.sh DIR [variant.cu ...]     (NVCC=... picks the compiler)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1; shift
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
mkdir -p "$dir"
flags=(-std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Ikernels-cuda/common -Ikernels-cuda/moe)
"$nvcc" "${flags[@]}" -cubin kernels-cuda/moe/grouped_gemm.cu -o "$dir/base.cubin" &
for src in "$@"; do
  "$nvcc" "${flags[@]}" -cubin "$src" -o "$dir/$(basename "$src" .cu).cubin" &
done
"$nvcc" "${flags[@]}" -cudart static tools/grouped_gemm_probe.cu -o "$dir/grouped_gemm_probe" &
fail=0
for j in $(jobs -p); do wait "$j" || fail=1; done
exit $fail
