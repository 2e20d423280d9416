#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler and the CUTLASS/CuTe 4.2 headers from PyPI into
# .cuda-toolchain/ (git-ignored; DSA_CUDA_TOOLCHAIN_DIR overrides the place, and build.rs
# reads the same variable). Needs python3 with pip; downloads 107 MB of wheels (313 MB
# installed; the CUTLASS headers alone: a 6 MB wheel).
#
#   scripts/install-cuda-toolchain.sh                 compiler + CUTLASS headers
#   scripts/install-cuda-toolchain.sh --cutlass-only  CUTLASS headers only (an nvcc exists)
#
# Idempotent: a part whose stamp is present is not installed again.
#
# Every nvidia-* package is pinned to 13.0.*: an unpinned nvidia-nvvm resolves to a newer
# release whose PTX the 13.0 ptxas rejects. nvidia-cutlass is installed without its Python
# dependencies (numpy, scipy, cuda-python, ...: ~450 MB the headers do not need).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${DSA_CUDA_TOOLCHAIN_DIR:-$root/.cuda-toolchain}
py=${PYTHON:-python3}
cutlass_only=0
[ "${1:-}" = "--cutlass-only" ] && cutlass_only=1

"$py" -m pip --version >/dev/null 2>&1 || {
  echo "error: $py with pip is needed to install the CUDA toolchain (apt-get install python3-pip)" >&2
  exit 1
}
pip_into() { # target dir, packages...
  local target=$1; shift
  "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$target" "$@"
}
mkdir -p "$dest"

# A toolchain installed by an earlier version of this script is complete as it is.
[ -f "$dest/.complete-13.0-cutlass-4.2.0.0" ] && touch "$dest/.cuda-13.0" "$dest/.cutlass-4.2.0.0"

if [ ! -f "$dest/.cutlass-4.2.0.0" ]; then
  echo "installing CUTLASS 4.2.0.0 headers into $dest/cutlass ..." >&2
  rm -rf "$dest/cutlass" "$dest/cutlass-include"
  pip_into "$dest/cutlass" --no-deps 'nvidia-cutlass==4.2.0.0'
  inc=$(find "$dest/cutlass" -path '*cutlass_library/source/include' -type d | head -1)
  [ -n "$inc" ] && [ -f "$inc/cute/arch/mma_sm90_gmma.hpp" ] || {
    echo "error: the nvidia-cutlass wheel has no CuTe headers where expected" >&2
    exit 1
  }
  ln -sfn "${inc#$dest/}" "$dest/cutlass-include"
  touch "$dest/.cutlass-4.2.0.0"
fi
echo "CUTLASS headers: $dest/cutlass-include" >&2
[ "$cutlass_only" = 1 ] && exit 0

if [ ! -f "$dest/.cuda-13.0" ]; then
  echo "installing the CUDA 13.0 compiler into $dest ..." >&2
  rm -rf "$dest/site" "$dest/cuda"
  pip_into "$dest/site" --no-deps \
    'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*' \
    'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*'
  # cuobjdump has no 13.0 wheel; it only reads cubins, so a newer one is safe. Best effort.
  pip_into "$dest/tools" --no-deps 'nvidia-cuda-cuobjdump' || echo "cuobjdump not installed (optional)" >&2
  # The wheels scatter bin/, include/ and nvvm/ across nvidia/cu13/; give nvcc one CUDA_HOME.
  cu=$(find "$dest/site/nvidia" -maxdepth 2 -type d -name 'cu13' | head -1)
  [ -n "$cu" ] || { echo "error: nvidia/cu13 not found in the installed wheels" >&2; exit 1; }
  ln -sfn "${cu#$dest/}" "$dest/cuda"
  chmod +x "$dest"/cuda/bin/* "$dest"/cuda/nvvm/bin/* 2>/dev/null || true
  [ -e "$dest/cuda/lib64" ] || ln -sfn lib "$dest/cuda/lib64"
  "$dest/cuda/bin/nvcc" --version | tail -2
  touch "$dest/.cuda-13.0"
fi
echo "CUDA compiler: $dest/cuda/bin/nvcc" >&2
