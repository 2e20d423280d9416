#!/usr/bin/env bash
# Compiles tools/device_layer_check.cu for sm_90a (no GPU needed): every wrapper of the
# device layer goes through ptxas. Prints the ptxas summary; fails on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-$(command -v nvcc || echo .cuda-toolchain/cuda/bin/nvcc)}
out=$(mktemp -d)
"$nvcc" -cubin -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Ikernels-cuda/common -Xptxas=-v \
  tools/device_layer_check.cu -o "$out/device_layer_check.cubin"
echo "device layer: ok"
