#!/usr/bin/env bash
# The project's test command: makes sure nvcc (CUDA 13.0) and the CUTLASS/CuTe headers are
# reachable, installing whichever is missing into .cuda-toolchain/, then compiles the
# kernels and runs every test of the workspace. GPU tests are #[ignore]d and show as
# ignored on a machine without a GPU; pass `-- --include-ignored` on a Hopper host.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=${DSA_CUDA_TOOLCHAIN_DIR:-$PWD/.cuda-toolchain}

# The same search orders as build.rs (its header comment is the source of truth).
find_nvcc() {
  if [ -n "${NVCC:-}" ]; then echo "$NVCC"; return; fi
  for c in ${CUDA_HOME:+"$CUDA_HOME/bin/nvcc"} ${CUDA_PATH:+"$CUDA_PATH/bin/nvcc"} \
           "$(command -v nvcc || true)" "$toolchain/cuda/bin/nvcc"; do
    [ -n "$c" ] && [ -f "$c" ] && { echo "$c"; return; }
  done
  return 0 # none: the caller installs one
}
have_cutlass() { # nvcc path
  local probe=cute/arch/mma_sm90_gmma.hpp root
  [ -n "${CUTLASS_INCLUDE:-}" ] && return 0   # explicit settings are checked by build.rs
  [ -n "${CUTLASS_PATH:-}" ] && return 0
  [ -n "${CUTLASS_HOME:-}" ] && return 0
  root=$(dirname "$(dirname "$(readlink -f "$1")")")
  for d in "$root/include" "$root/targets/x86_64-linux/include" "$root/targets/sbsa-linux/include" \
           "$toolchain/cutlass-include"; do
    [ -f "$d/$probe" ] && return 0
  done
  return 1
}

nvcc=$(find_nvcc)
if [ -z "$nvcc" ]; then
  scripts/install-cuda-toolchain.sh
  nvcc=$toolchain/cuda/bin/nvcc
elif ! have_cutlass "$nvcc"; then
  echo "nvcc: $nvcc; CUTLASS headers missing" >&2
  scripts/install-cuda-toolchain.sh --cutlass-only
fi
export DSA_EXPECT_KERNELS=${DSA_EXPECT_KERNELS:-1}
exec cargo test --workspace --release "$@"
