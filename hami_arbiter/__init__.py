"""The trusted per-node arbiter: turns on each GPU for every capped process.

``hami-arbiter`` (:mod:`hami_arbiter.cli`) listens on a Unix socket; libvgpu
in each capped process asks it for turns on a GPU (the wire:
``csrc/include/vgpu_arbd.h``, mirrored in :mod:`hami_arbiter.protocol`).
The daemon alone decides who holds each GPU (:mod:`hami_arbiter.scheduler`)
and takes each client's share from a source the client cannot write
(:mod:`hami_arbiter.slices`).
"""
