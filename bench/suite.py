#!/usr/bin/env python3
"""GPU benchmark suite for libvgpu: each measurement natively and under the library, in one run.

    python3 bench/suite.py [--quick] [--only NAME[,NAME]] [--out FILE] [--long-seconds 200]
    python3 bench/suite.py --dry-run ...        # print the plan and its time estimate only
    python3 bench/suite.py --render FILE ...    # print the tables of saved results again

Measurements (names for --only): launch, matmul, share, tenants, init, fourtenants.
bench/README.md says what each one measures and how shares are computed.

Every worker is a separate process (bench/workloads.py, or --worker-cmd) with
a clean environment: the caller's, minus LD_PRELOAD and every variable that
libvgpu reads. Native workers get nothing more; hooked workers get
LD_PRELOAD=<libvgpu> plus the slice's variables, a fresh region file per
tenant (per measurement) and one fresh arbiter directory per measurement.
Progress goes to stderr; the markdown tables to stdout at the end; all raw
numbers to --out (JSON), rewritten after every step.

The parts are in bench/gpu_suite/ (its __init__ says which module does what).
"""
import sys

from gpu_suite.cli import main  # bench/ is sys.path[0] when this file runs as a script

if __name__ == "__main__":
    sys.exit(main())
