#!/usr/bin/env bash
# The preload arrangement on a real GPU: in a private mount namespace, /etc
# gets an overlay with libvgpu in ld.so.preload and a root-owned slice file
# (8 GiB); a PyTorch process started with LD_PRELOAD unset and
# CUDA_DEVICE_MEMORY_LIMIT=100g must still see and get only its 8 GiB. The
# host's /etc is never touched.
#
#   sudo bash bench/preload_wall_gpu.sh      (the package installed: libvgpu from hami_kernel)
set -euo pipefail
lib=$(cd / && python3 -c 'import hami_kernel; print(hami_kernel.library_path())')
work=$(mktemp -d)
cat > "$work/probe.py" <<'PY'
import os, torch
GiB = 1 << 30
assert "LD_PRELOAD" not in os.environ, "the probe must run without LD_PRELOAD"
free, total = torch.cuda.mem_get_info()
print(f"LD_PRELOAD unset, CUDA_DEVICE_MEMORY_LIMIT={os.environ.get('CUDA_DEVICE_MEMORY_LIMIT')}: "
      f"torch sees total {total / GiB:.2f} GiB, free {free / GiB:.2f} GiB")
try:
    torch.empty(12 * GiB, dtype=torch.uint8, device="cuda")
    print("problem: 12 GiB allocated in an 8 GiB slice")
    raise SystemExit(1)
except torch.cuda.OutOfMemoryError:
    print("ok: 12 GiB refused")
x = torch.empty(6 * GiB, dtype=torch.uint8, device="cuda")
print("ok: 6 GiB allocated")
raise SystemExit(0 if total <= 8 * GiB else 1)
PY
unshare --mount sh -c "
set -e
mount --make-rprivate /
top=\$(mktemp -d); mount -t tmpfs none \"\$top\"; mkdir -p \"\$top/up/hami-jupyter\" \"\$top/work\"
echo '$lib' > \"\$top/up/ld.so.preload\"
printf 'CUDA_DEVICE_MEMORY_LIMIT=8g\nCUDA_DEVICE_MEMORY_SHARED_CACHE=$work/wall.region\n' > \"\$top/up/hami-jupyter/slice\"
chmod 644 \"\$top/up/hami-jupyter/slice\"
mount -t overlay overlay -o \"lowerdir=/etc,upperdir=\$top/up,workdir=\$top/work\" /etc
env -u LD_PRELOAD CUDA_DEVICE_MEMORY_LIMIT=100g CUDA_VISIBLE_DEVICES=0 python3 '$work/probe.py'
"
