"""The suite's command line (bench/suite.py): its options, and main(), which prints the plan,
runs it, writes the JSON after every step and prints the report; or reprints saved runs."""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .context import Context
from .measurements import MEASUREMENTS, SHARE_CAPS, SHARE_SHAPES, Durations
from .metadata import find_library, metadata
from .plan import Selection, log, plan, print_plan, run_plan
from .processes import Timeouts
from .report import render_files, render_report

BENCH_DIR = Path(__file__).resolve().parent.parent
# The first paragraph of bench/suite.py's docstring: --help's description.
DESCRIPTION = "GPU benchmark suite for libvgpu: each measurement natively and under the library, in one run."


def write_json(path: Optional[Path], data: dict) -> None:
    if path is None:
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    temporary.replace(path)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 10x shorter runs, for smoke tests")
    parser.add_argument("--only", type=choices(MEASUREMENTS), default=MEASUREMENTS, metavar="NAME[,NAME]",
                        help="run only these measurements: " + ", ".join(MEASUREMENTS))
    parser.add_argument("--shapes", type=choices(SHARE_SHAPES), default=SHARE_SHAPES, metavar="SHAPE[,SHAPE]",
                        help="share measurement: only these shapes (" + ", ".join(SHARE_SHAPES) + ")")
    parser.add_argument("--caps", type=percents, default=SHARE_CAPS, metavar="CAP[,CAP]",
                        help="share measurement: these caps in percent (default "
                             + ",".join(map(str, SHARE_CAPS)) + ")")
    parser.add_argument("--out", type=Path, help="write all raw numbers here (JSON)")
    parser.add_argument("--long-seconds", type=positive_seconds, metavar="S",
                        help="run each share measurement for S seconds (the long run) instead of 30")
    parser.add_argument("--library", help="libvgpu.so to preload (default: the installed one)")
    parser.add_argument("--slice-env", type=slice_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="one more libvgpu setting for every hooked worker, such as "
                             "LIBVGPU_TURN_CHARGE=gpu (repeatable; the slice's own variables cannot be set)")
    parser.add_argument("--worker-cmd", type=shlex.split, metavar="CMD",
                        default=[sys.executable, str(BENCH_DIR / "workloads.py")],
                        help="command that starts a worker (default: python3 bench/workloads.py)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimate, run nothing")
    parser.add_argument("--render", type=Path, nargs="+", metavar="FILE",
                        help="print the tables of saved --out files, run nothing")
    args = parser.parse_args(argv)
    args.argv = None if argv is None else ["bench/suite.py", *argv]
    return args


def choices(allowed: Sequence[str]) -> Callable[[str], Tuple[str, ...]]:
    """An argparse type: a comma-separated list of names from `allowed`."""
    def parse(text: str) -> Tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or repr(text)}; choose from {', '.join(allowed)}")
        return names
    return parse


SLICE_OWN = ("LD_PRELOAD", "CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY",
             "CUDA_DEVICE_MEMORY_SHARED_CACHE", "LIBVGPU_ARBITER_DIR")


def slice_setting(text: str) -> Tuple[str, str]:
    """An argparse type: NAME=VALUE for one of libvgpu's LIBVGPU_* or LIBCUDA_* settings."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith(("LIBVGPU_", "LIBCUDA_")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE for a LIBVGPU_* or LIBCUDA_* setting")
    if name in SLICE_OWN or name.startswith(("CUDA_DEVICE_SM_LIMIT", "CUDA_DEVICE_MEMORY_LIMIT")):
        raise argparse.ArgumentTypeError(f"{name} is set by each measurement's slice")
    return name, value


def percents(text: str) -> Tuple[int, ...]:
    try:
        caps = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not caps or any(not 1 <= c <= 99 for c in caps):
        raise argparse.ArgumentTypeError("caps are percents from 1 to 99")
    return caps


def positive_seconds(text: str) -> float:
    value = float(text)
    if value < 2:
        raise argparse.ArgumentTypeError("needs at least 2 seconds")
    return value


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None, timeouts: Optional[Timeouts] = None,
         durations: Optional[Durations] = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render_files(args.render))
        return 0
    d = durations or Durations.make(args.quick, args.long_seconds)
    steps = plan(Selection(args.only, args.shapes, args.caps), d)
    print_plan(steps)
    if args.dry_run:
        return 0
    library = args.library or find_library()
    if not Path(library).is_file():
        raise SystemExit(f"suite: libvgpu {library!r} is not a file")
    library = str(Path(library).resolve())
    ctx = Context(durations=d, worker_cmd=args.worker_cmd, library=library, timeouts=timeouts or Timeouts(),
                  slice_env=dict(args.slice_env))
    meta = metadata(args, library, d)
    meta["slice_env"] = dict(args.slice_env)
    data: Dict[str, object] = {"suite": meta, "records": [], "errors": []}

    def save(records: List[dict], errors: List[dict]) -> None:
        data.update(records=records, errors=errors)
        write_json(args.out, data)

    previous = signal.signal(signal.SIGTERM, interrupt)  # so that a kill ends the workers too
    try:
        records, errors = run_plan(ctx, steps, save)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        write_json(args.out, data)
        print(render_report(data["records"], data["errors"], meta))  # type: ignore[arg-type]
        log("interrupted; workers ended; partial results kept" + (f" in {args.out}" if args.out else ""))
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    meta["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(args.out, data)
    print(render_report(records, errors, meta))
    if errors:
        log(f"{len(errors)} step(s) failed; see the messages above" + (f" and {args.out}" if args.out else ""))
    return 1 if errors else 0
