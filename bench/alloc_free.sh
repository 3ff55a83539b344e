#!/usr/bin/env bash
# cuMemAlloc_v2 + cuMemFree_v2 pair: native vs under libvgpu, in one run.
# Usage: bench/alloc_free.sh   (on a GPU machine, after 'pip install .')
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# From /, so the installed package is found, not the source tree.
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
bin=$(mktemp -d)/alloc_free
cc -O2 -std=c11 -D_GNU_SOURCE -I"$here/../csrc/src" "$here/alloc_free.c" -o "$bin" -ldl
region=$(mktemp -u /tmp/alloc-bench.XXXXXX)
printf '| bytes | native ns/pair | libvgpu ns/pair | ratio |\n|---:|---:|---:|---:|\n'
for bytes in 4096 1048576 67108864; do
  native=$("$bin" "$bytes")
  hooked=$(LD_PRELOAD="$lib" CUDA_DEVICE_MEMORY_LIMIT=8g CUDA_DEVICE_MEMORY_SHARED_CACHE="$region" "$bin" "$bytes")
  awk -v b="$bytes" -v n="$native" -v h="$hooked" 'BEGIN { printf "| %d | %.0f | %.0f | %.3f |\n", b, n, h, h / n }'
done
rm -f "$region"
