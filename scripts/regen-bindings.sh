#!/usr/bin/env bash
# Regenerates src/sys/<family>.rs from kernels-cuda/include/<family>_params.h (needs libclang).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --features regen-bindings --quiet
out=$(ls -td target/debug/build/dsa-kernels-*/out/sys | head -1)
for f in "$out"/*.rs; do
  cp "$f" "src/sys/$(basename "$f")"
  echo "updated src/sys/$(basename "$f")"
done
