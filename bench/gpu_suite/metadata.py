"""What a run records about itself (the JSON's "suite" and the report's header): command,
host, GPU, git commit and uncommitted paths, the libvgpu preloaded and its sha256, the
durations; and where the installed libvgpu is (find_library)."""
from __future__ import annotations

import argparse
import datetime
import hashlib
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from .measurements import Durations

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DIRTY_PATHS_SHOWN = 8            # uncommitted paths named in a report's source line


def command_output(argv: Sequence[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_library() -> str:
    """libvgpu as installed (run from /, so that the source tree's hami_kernel is not imported)."""
    done = subprocess.run([sys.executable, "-c", "import hami_kernel; print(hami_kernel.library_path())"],
                          capture_output=True, text=True, cwd="/", timeout=60)
    if done.returncode != 0:
        raise SystemExit("suite: cannot find the installed libvgpu (pip install . first, or pass --library):\n"
                         + done.stderr.strip())
    return done.stdout.strip()


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def metadata(args: argparse.Namespace, library: str, d: Durations) -> dict:
    git = command_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT)
    status = command_output(["git", "status", "--porcelain"], cwd=REPO_ROOT) or ""
    # The paths themselves, so that a reader can tell an edit to the code from a stray file.
    dirty = [line.split(None, 1)[-1] for line in status.splitlines() if line.strip()][:DIRTY_PATHS_SHOWN]
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]) if args.argv is None else shlex.join(args.argv),
        "host": platform.node(),
        "gpu": command_output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"]),
        "git_commit": git, "git_dirty": dirty, "library": library,
        "library_sha256": file_sha256(library), "durations": asdict(d),
    }
