#!/usr/bin/env bash
# Top-k tuning on a GPU host: builds tools/topk_probe.cu against kernel variants,
# runs each (times, host check, phase times of CTA 0) with one CTA per row and with the
# cluster-split kernels, then Nsight Compute profiles of base and ring_wf.
# Variants (-D knobs of kernels-cuda/topk/topk.cu): base (defaults), probes (phase
# times), wf (DSA_TOPK_WARP_FINISH), ring (DSA_TOPK_TMA_RING), ring_wf (both), and
# ring_wf with another ring size (cap8k, cap16k), 4 chunks per step (g4), the ring
# primed only after the sample (noprime), or a looser sample select (loose:
# DSA_TOPK_SAMPLE_LOOSE=8).
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
variants=(base probes wf ring ring_wf ring_wf_probes ring_cap8k ring_cap16k ring_g4 ring_noprime ring_wf_loose ring_wf_loose_probes)
ring="-DDSA_TOPK_TMA_RING=1"
build base &
build probes -DDSA_TOPK_PROBES &
build wf -DDSA_TOPK_WARP_FINISH=1 &
build ring $ring &
build ring_wf $ring -DDSA_TOPK_WARP_FINISH=1 &
build ring_wf_probes $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_PROBES &
build ring_cap8k $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_RING_MIN_CAP=8192 &
build ring_cap16k $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_RING_MIN_CAP=16384 &
build ring_g4 $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_RING_G=4 &
build ring_noprime $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_RING_PRIME=0 &
build ring_wf_loose $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_SAMPLE_LOOSE=8 &
build ring_wf_loose_probes $ring -DDSA_TOPK_WARP_FINISH=1 -DDSA_TOPK_SAMPLE_LOOSE=8 -DDSA_TOPK_PROBES &
# Earlier candidate-pass knobs (measured slower), with TOPK_OLD=1.
if [ -n "${TOPK_OLD:-}" ]; then
  variants+=(u8 preload pipe2)
  build u8 -DDSA_TOPK_UNROLL=8 &
  build preload -DDSA_TOPK_PRELOAD=1 &
  build pipe2 -DDSA_TOPK_PIPELINE=1 -DDSA_TOPK_UNROLL=2 &
fi
i=0
for src in "$@"; do
  i=$((i + 1)); variants+=("extra$i")
  build "extra$i" -DTOPK_SRC="\"$(realpath "$src")\"" &
done
wait
# A stuck kernel (a wait that never completes) must not eat the rest of the run: each
# binary gets 60 s (a normal run takes seconds), and after one ring variant hangs the
# other ring variants are skipped.
ring_hung=
for v in "${variants[@]}"; do
  echo "== $v"
  if [ -n "$ring_hung" ] && [[ $v == ring* ]]; then echo "skipped (a ring variant hung)"; continue; fi
  if [ -x "$bin/$v" ]; then
    timeout 60 "$bin/$v"; rc=$?
    if [ $rc -eq 124 ]; then
      echo "TIMEOUT $v (hung kernel?)"
      [[ $v == ring* ]] && ring_hung=1
    fi
  fi
done
if command -v ncu > /dev/null; then
  for v in base ring_wf; do
    [ -x "$bin/$v" ] || continue
    [ -n "$ring_hung" ] && [[ $v == ring* ]] && continue
    echo "== ncu $v 128x128K"
    timeout 180 ncu --clock-control none -k dsa_topk_f32 --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
      "$bin/$v" 1 > "$out/ncu-topk-$v.txt" 2>&1
    grep -E "Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Warp Cycles Per Issued|Stall|Achieved Occupancy" "$out/ncu-topk-$v.txt" | head -20
  done
fi
