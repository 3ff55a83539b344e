"""What libvgpu costs a process that never touches CUDA, under the image's
preload arrangement (libvgpu in /etc/ld.so.preload).

Every process of the container loads libvgpu then: shells, ls, the server.
At load it only reads its environment (no file, no syscall of its own); the
slice file and the region are read at the first CUDA or NVML call. This
runs a few such programs N times with and without libvgpu in
/etc/ld.so.preload, in a private mount namespace (root; the host's /etc is
never touched), and prints the medians of the CPU time each run took.

    sudo python3 bench/preload_cost.py [--runs 400] [--library PATH]

PATH defaults to the installed hami_kernel's libvgpu.so.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

PROGRAMS = [["/bin/true"], ["sh", "-c", ":"], ["ls", "/"]]

# Runs inside the namespace: runs each program `runs` times, in turns, with
# and without the preload, and prints JSON {program: {"off": [...], "on": [...]}}
# of the CPU time (user + system, ns) each run took: unlike wall time, that
# hardly moves with what else the machine is doing.
INNER = r'''
import json, os, shutil, sys
runs, library, programs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
null = os.open(os.devnull, os.O_WRONLY)
def start(argv):
    pid = os.posix_spawn(shutil.which(argv[0]), argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)])
    _, status, usage = os.wait4(pid, 0)
    assert status == 0, argv
    return int((usage.ru_utime + usage.ru_stime) * 1e9)
out = {" ".join(p): {"off": [], "on": []} for p in programs}
for i in range(runs):
    for setting in ("off", "on"):
        with open("/etc/ld.so.preload", "w") as f:
            f.write(library + "\n" if setting == "on" else "")
        for p in programs:
            out[" ".join(p)][setting].append(start(p))
print(json.dumps(out))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--library")
    args = parser.parse_args()
    library = args.library
    if library is None:
        import hami_kernel
        library = hami_kernel.library_path()
    script = f"""set -e
mount --make-rprivate /
top=$(mktemp -d); mount -t tmpfs none "$top"; mkdir "$top/up" "$top/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$top/up,workdir=$top/work" /etc
exec {shlex.quote(sys.executable)} -c {shlex.quote(INNER)} {args.runs} {shlex.quote(str(library))} {shlex.quote(json.dumps(PROGRAMS))}
"""
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    results = json.loads(done.stdout)
    print(f"libvgpu {library}, {args.runs} runs each, CPU time (user + system) per run, "
          f"median (90th percentile):")
    print("| program | without | with libvgpu preloaded | difference |")
    print("|---|--:|--:|--:|")
    for name, times in results.items():
        off, on = (sorted(times[k]) for k in ("off", "on"))
        med = lambda xs: xs[len(xs) // 2] / 1e3
        p90 = lambda xs: xs[len(xs) * 9 // 10] / 1e3
        print(f"| `{name}` | {med(off):.0f} µs ({p90(off):.0f}) | {med(on):.0f} µs ({p90(on):.0f}) | "
              f"{med(on) - med(off):+.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
