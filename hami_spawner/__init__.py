"""JupyterHub side of hami-jupyter: GPU profiles users may choose, and the
single-machine allocator that places their slices on this host's GPUs."""

from hami_spawner.allocator import (AlreadyPlaced, Allocator, Gpu, NeverFits, NoCapacity,
                                    Placement, discover_gpus)
from hami_spawner.profiles import (ChoiceError, CustomRange, GpuProfile, GpuProfiles,
                                   ProfileError)

__all__ = ["AlreadyPlaced", "Allocator", "ChoiceError", "CustomRange", "Gpu", "GpuProfile",
           "GpuProfiles", "NeverFits", "NoCapacity", "Placement", "ProfileError", "discover_gpus"]
