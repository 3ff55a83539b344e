"""What every step gets: the durations, how to start a worker, the library, the time limits,
fresh slices in the step's own directory, and the native baselines measured so far."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .environment import Slice
from .measurements import Durations
from .processes import Timeouts


@dataclass
class Context:
    """What every step needs: durations, how to start workers, the library, native baselines."""
    durations: Durations
    worker_cmd: List[str]
    library: str
    slice_env: Dict[str, str] = field(default_factory=dict)  # --slice-env: more of libvgpu's settings
    base_env: Dict[str, str] = field(default_factory=lambda: dict(os.environ))
    timeouts: Timeouts = field(default_factory=Timeouts)
    baselines: Dict[str, dict] = field(default_factory=dict)
    workdir: Optional[Path] = None  # this step's temporary directory

    def worker_argv(self, program: str, args: Sequence[str]) -> List[str]:
        return [*self.worker_cmd, program, *args, "--json"]

    def step_dir(self) -> Path:
        assert self.workdir is not None, "steps run inside run_step()"
        return self.workdir

    def new_slice(self, tenant: str, **kwargs) -> Slice:
        """A fresh slice: a region path no process has used, in this step's directory."""
        region = self.step_dir() / f"{tenant}.region"
        if region.exists():
            raise RuntimeError(f"region {region} already used in this step")
        return Slice(region=str(region), arbiter_dir=str(self.step_dir() / "arbiter"),
                     extra=tuple(sorted(self.slice_env.items())), **kwargs)

    def baseline(self, shape: str) -> dict:
        if shape not in self.baselines:
            raise RuntimeError(f"no native baseline for shape {shape!r}: its baseline step failed or did not run")
        return self.baselines[shape]
