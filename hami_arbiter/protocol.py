"""The wire between libvgpu and the daemon: csrc/include/vgpu_arbd.h in Python."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0x44425261
VERSION = 1
SIZE = 40
_FORMAT = struct.Struct("=IHHIIQ16s")
assert _FORMAT.size == SIZE

HELLO, WANT, DONE, CHARGE, NOTE = 1, 2, 3, 4, 5
WELCOME, GRANT, WAITING, YIELD, REVOKED, REFUSED = 101, 102, 103, 104, 105, 106
CLIENT_OPS = frozenset({HELLO, WANT, DONE, CHARGE, NOTE})
FORCE = 1

# REFUSED's reasons.
REFUSED_NO_SHARE = 1


class ProtocolError(ValueError):
    """A message that is not one of ours: the connection that sent it is dropped."""


@dataclass(frozen=True)
class Message:
    op: int
    share: int = 0
    flags: int = 0
    value: int = 0
    uuid: bytes = bytes(16)

    def pack(self) -> bytes:
        return _FORMAT.pack(MAGIC, VERSION, self.op, self.share, self.flags, self.value, self.uuid)


def unpack(data: bytes) -> Message:
    """A client's message, or ProtocolError for anything else."""
    if len(data) != SIZE:
        raise ProtocolError(f"a message of {len(data)} bytes, not {SIZE}")
    magic, version, op, share, flags, value, uuid = _FORMAT.unpack(data)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("not the arbiter's protocol (magic or version)")
    if op not in CLIENT_OPS:
        raise ProtocolError(f"unknown operation {op}")
    return Message(op, share, flags, value, uuid)


def uuid_text(uuid: bytes) -> str:
    """NVML's form of a GPU's UUID ("GPU-xxxxxxxx-xxxx-...")."""
    h = uuid.hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
