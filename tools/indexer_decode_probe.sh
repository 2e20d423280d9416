#!/usr/bin/env bash
# Decode-logits tuning on a GPU host: builds tools/indexer_decode_probe.cu with its pipeline
# variants (stages x CTAs per SM) and
# runs it on the bench shapes (64 heads, next_n 1: B128 32K/128K, B32 128K/32K).
#   tools/indexer_decode_probe.sh [case index 0-3]
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
bin=$(mktemp -d)
"$nvcc" -std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Ikernels-cuda/common \
  -Ikernels-cuda/indexer -DPROBE_VARIANTS tools/indexer_decode_probe.cu -o "$bin/probe"
"$bin/probe" "$@"
