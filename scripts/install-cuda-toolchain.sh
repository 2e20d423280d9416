#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (and CUTLASS/CuTe headers) from PyPI into
# .cuda-toolchain/ (git-ignored) when no usable nvcc is reachable. Idempotent: a second
# run that finds the toolchain complete returns at once.
#
# Every nvidia-* package is pinned to 13.0.*: an unpinned nvidia-nvvm resolves to a newer
# release whose PTX the 13.0 ptxas rejects.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${DSA_CUDA_TOOLCHAIN_DIR:-$root/.cuda-toolchain}
stamp="$dest/.complete-13.0-cutlass-4.2.0.0"
if [ -f "$stamp" ]; then
  echo "CUDA toolchain present: $dest/cuda/bin/nvcc"
  exit 0
fi
py=${PYTHON:-python3}
echo "installing CUDA 13.0 toolchain into $dest ..." >&2
rm -rf "$dest"
mkdir -p "$dest"
"$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --target "$dest/site" \
  'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*' \
  'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*' \
  'nvidia-cutlass==4.2.0.0'
# cuobjdump has no 13.0 wheel; it only reads cubins, so a newer one is safe. Best effort.
"$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-deps \
  --target "$dest/tools" 'nvidia-cuda-cuobjdump' || echo "cuobjdump not installed (optional)" >&2
# The wheels scatter bin/, include/ and nvvm/ across nvidia/cu13/; give nvcc one CUDA_HOME.
cu=$(find "$dest/site/nvidia" -maxdepth 2 -type d -name 'cu13' | head -1)
[ -n "$cu" ] || { echo "nvidia/cu13 not found in the installed wheels" >&2; exit 1; }
ln -sfn "${cu#$dest/}" "$dest/cuda"
chmod +x "$dest"/cuda/bin/* "$dest"/cuda/nvvm/bin/* 2>/dev/null || true
[ -e "$dest/cuda/lib64" ] || ln -sfn lib "$dest/cuda/lib64"
cutlass_inc=$(find "$dest/site" -path '*cutlass_library/source/include' -type d | head -1)
[ -n "$cutlass_inc" ] && ln -sfn "${cutlass_inc#$dest/}" "$dest/cutlass-include"
"$dest/cuda/bin/nvcc" --version | tail -2
touch "$stamp"
echo "CUDA toolchain installed: $dest/cuda/bin/nvcc" >&2
