"""What the suite measures and how long: the measurements' names, shapes and caps, the goals
the tables judge them by, the slices' memory, and every duration (Durations).

bench/README.md says what each measurement means; change a goal or a length here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

MEASUREMENTS = ("launch", "matmul", "share", "tenants", "init", "fourtenants")
SHARE_SHAPES = ("matmul", "small", "sync")
SHARE_CAPS = (10, 30, 50, 70)
HELD_SHAPES = ("graph", "coop")  # in the tenants measurement: a 30/70 pair of each, 30 beside a matmul at 70, and 30 alone
HELD_CAP = 30
TENANT_CAPS = (30, 70)
FOUR_TENANT_CAP = 25

# Goals shown in the tables.
MATMUL_RATIO_GOAL = 0.995        # hooked / native TFLOP/s, at least
SHARE_TOLERANCE = 2.0            # points of the cap, alone under force
CV_GOAL = 0.05                   # stdev / mean of per-window throughput, at most
TENANT_TOLERANCE = 3.0           # points of the cap, concurrent tenants
INIT_EXTRA_MS_GOAL = 20.0        # hooked minus native per-process init, at most
INIT_BATCH_RATIO_GOAL = 1.2      # hooked / native wall time of the batch, at most
AGGREGATE_GOAL = 0.95            # four tenants together / one alone, at least

MEMORY_LIMIT = "16g"             # every hooked tenant's VRAM slice
INIT_BATCH_MEMORY_LIMIT = "48g"  # the one slice of the init batch: 64 contexts of ~0.5 GiB


@dataclass(frozen=True)
class Durations:
    """Every length of the suite; --quick divides the times by about 10."""
    share_s: float = 30.0
    baseline_s: float = 10.0
    tenants_s: float = 30.0
    fourtenants_s: float = 30.0
    window_s: float = 0.5
    warmup_s: float = 1.0
    first_s: float = 10.0
    launches: int = 200_000
    warmup_launches: int = 10_000
    launch_repeats: int = 5
    matmul_size: int = 8192
    matmul_products: int = 1000
    rounds: int = 5
    init_sequential: int = 10
    init_batch: int = 64

    @classmethod
    def make(cls, quick: bool = False, long_seconds: Optional[float] = None) -> "Durations":
        durations = cls()
        if quick:
            durations = replace(durations, share_s=3.0, baseline_s=1.5, tenants_s=3.0,
                                fourtenants_s=3.0, warmup_s=0.3, launches=20_000,
                                warmup_launches=2_000, launch_repeats=2, matmul_products=100, rounds=3,
                                init_sequential=3)
        if long_seconds is not None:
            durations = replace(durations, share_s=float(long_seconds))
        return durations
