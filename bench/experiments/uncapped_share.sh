#!/bin/bash
# The compute share libvgpu publishes for an uncapped process (from NVML's
# per-process utilization): a busy matmul loop, read from the region while
# it runs. Usage: uncapped_share.sh
set -eu
here=$(dirname "$0"); d=$(mktemp -d)
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
LD_PRELOAD=$lib CUDA_DEVICE_MEMORY_LIMIT=16g CUDA_DEVICE_MEMORY_SHARED_CACHE=$d/region LIBVGPU_IDENTITY=busy \
    python3 "$here/../workloads.py" matmul --seconds 15 --json > "$d/out.json" &
w=$!
for i in $(seq 60); do [ -e $d/region ] && break; sleep 0.5; done; sleep 6
python3 -c "
from hami_kernel.region import read_region
p = read_region('$d/region').process('busy')[0]
print('uncapped matmul loop: sm_share', [round(x.sm_share, 3) for x in p.devices], 'launches', [x.launches for x in p.devices])"
wait $w
