#!/usr/bin/env bash
# Top-k tuning on a GPU host: builds tools/topk_probe.cu against kernel variants,
# runs each (times, host check, phase times of CTA 0) with one CTA per row and with the
# cluster-split kernels, then one Nsight Compute profile.
#   tools/topk_probe.sh [extra-kernel-source.cu ...]   (extra sources must define the split kernels)
set -uo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=${OUT:-/tmp}
bin=$(mktemp -d)
build() {
  local name=$1; shift
  "$nvcc" -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Ikernels-cuda/common -Ikernels-cuda/topk -DPROBE_SPLITS "$@" \
    tools/topk_probe.cu -o "$bin/$name" > "$bin/$name.log" 2>&1 || { echo "build $name failed"; tail -5 "$bin/$name.log"; }
}
variants=(base u8 preload pipe2 probes)
build base &
build u8 -DDSA_TOPK_UNROLL=8 &
build preload -DDSA_TOPK_PRELOAD=1 &
build pipe2 -DDSA_TOPK_PIPELINE=1 -DDSA_TOPK_UNROLL=2 &
build probes -DDSA_TOPK_PROBES &
i=0
for src in "$@"; do
  i=$((i + 1)); variants+=("extra$i")
  build "extra$i" -DTOPK_SRC="\"$(realpath "$src")\"" &
done
wait
for v in "${variants[@]}"; do
  echo "== $v"
  [ -x "$bin/$v" ] && "$bin/$v"
done
if command -v ncu > /dev/null && [ -x "$bin/base" ]; then
  echo "== ncu base 128x128K"
  ncu --clock-control none -k dsa_topk_f32 --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
    "$bin/base" 1 > "$out/ncu-topk.txt" 2>&1
  grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Warp Cycles Per Issued|Stall|Achieved Occupancy" "$out/ncu-topk.txt" | head -20
fi
