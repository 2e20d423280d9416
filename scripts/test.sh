#!/usr/bin/env bash
# The project's test command: makes sure nvcc (CUDA 13.0) is reachable, installing it into
# .cuda-toolchain/ when missing, then compiles the kernels and runs every test of the
# workspace (the CUTLASS/CuTe headers are optional: no kernel includes them). GPU tests are #[ignore]d and show as
# ignored on a machine without a GPU; pass `-- --include-ignored` on a Hopper host.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=${DSA_CUDA_TOOLCHAIN_DIR:-$PWD/.cuda-toolchain}

# The same search order as build.rs (its header comment is the source of truth).
find_nvcc() {
  if [ -n "${NVCC:-}" ]; then echo "$NVCC"; return; fi
  for c in ${CUDA_HOME:+"$CUDA_HOME/bin/nvcc"} ${CUDA_PATH:+"$CUDA_PATH/bin/nvcc"} \
           "$(command -v nvcc || true)" "$toolchain/cuda/bin/nvcc"; do
    [ -n "$c" ] && [ -f "$c" ] && { echo "$c"; return; }
  done
  return 0 # none: the caller installs one
}
nvcc=$(find_nvcc)
if [ -z "$nvcc" ]; then
  scripts/install-cuda-toolchain.sh
  nvcc=$toolchain/cuda/bin/nvcc
fi
export DSA_EXPECT_KERNELS=${DSA_EXPECT_KERNELS:-1}
exec cargo test --workspace --release "$@"
