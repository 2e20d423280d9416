#!/usr/bin/env bash
# The project's test command: installs the pinned CUDA 13.0 compiler when none is reachable,
# compiles the kernels, and runs every test of the workspace. GPU tests are #[ignore]d and
# show as ignored on a machine without a GPU; pass `-- --include-ignored` on a Hopper host.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -z "${NVCC:-}" ] && [ -z "${CUDA_HOME:-}" ]; then
  scripts/install-cuda-toolchain.sh
fi
export DSA_EXPECT_KERNELS=${DSA_EXPECT_KERNELS:-1}
exec cargo test --workspace --release "$@"
