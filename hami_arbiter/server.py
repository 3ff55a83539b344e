"""The daemon's socket: accepts libvgpu clients and carries out the scheduler's answers.

One SOCK_SEQPACKET connection per process and GPU (protocol.py). The peer is
known by SO_PEERCRED, its share by ``slice_of`` (slices.py); anything that is
not the protocol ends that connection only, and a client that stops reading
(its socket buffer full) is dropped rather than waited for: nothing a client
does can hold up the daemon's loop or another client's turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import time
from typing import Callable, Dict, Optional, Set

from hami_arbiter import protocol as P
from hami_arbiter.scheduler import Gpu, Send, Tenant
from hami_arbiter.slices import TrustedSlice

log = logging.getLogger("hami_arbiter")

SOCKET_NAME = "arbiter.sock"
HELLO_TIMEOUT = 5.0
MAX_CLIENTS = 4096
# One user cannot take every connection the daemon will hold.
MAX_CLIENTS_PER_UID = 1024
# A client sends at most a NOTE per 0.5 ms plus a few messages a turn; far
# more than that is a flood, and the connection is dropped.
MAX_MESSAGES_PER_SECOND = 20000
# A tenant whose turns are taken back is named in the log at its first time,
# then at most once a minute (one that misbehaves would be revoked every turn).
REVOKED_LOG_INTERVAL_NS = 60 * 1_000_000_000


def _now() -> int:
    return time.monotonic_ns()


class Client:
    def __init__(self, sock: socket.socket, pid: int, uid: int):
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.gpu: Optional[Gpu] = None
        self.tenant: Optional[Tenant] = None
        self.closed = False
        self.window_start = 0
        self.window_count = 0
        self.revoked = 0
        self.revoked_logged_at: Optional[int] = None


class ArbiterServer:
    def __init__(self, socket_dir: str, slice_of: Callable[[int], Optional[TrustedSlice]]):
        self.socket_dir = socket_dir
        self.path = os.path.join(socket_dir, SOCKET_NAME)
        self.slice_of = slice_of
        self.gpus: Dict[bytes, Gpu] = {}
        self.timers: Dict[bytes, asyncio.TimerHandle] = {}
        self.clients: Set[Client] = set()
        self.listener: Optional[socket.socket] = None

    # -- the socket ---------------------------------------------------------------------

    def bind(self) -> None:
        """DIR 0755 and DIR/arbiter.sock 0666 (the contract); a stale socket is replaced."""
        os.makedirs(self.socket_dir, mode=0o755, exist_ok=True)
        st = os.stat(self.socket_dir, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{self.socket_dir} is not a directory")
        os.chmod(self.socket_dir, 0o755)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock

    async def serve(self) -> None:
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.listener)
            except OSError as exc:  # out of descriptors, say: later, not never
                log.warning("cannot accept a client: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                conn.setblocking(False)
                pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            except OSError:
                conn.close()
                continue
            if len(self.clients) >= MAX_CLIENTS or \
                    sum(1 for c in self.clients if c.uid == uid) >= MAX_CLIENTS_PER_UID:
                conn.close()  # it paces itself at its own cap, and says so
                continue
            client = Client(conn, pid, uid)
            self.clients.add(client)
            asyncio.ensure_future(self._serve_client(client))

    def close(self) -> None:
        for client in list(self.clients):
            self._drop(client, None)
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    # -- one client -----------------------------------------------------------------------

    async def _serve_client(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        reason: Optional[str] = None
        try:
            data = await asyncio.wait_for(loop.sock_recv(client.sock, P.SIZE + 1), HELLO_TIMEOUT)
            self._hello(client, P.unpack(data))
            while not client.closed:
                data = await loop.sock_recv(client.sock, P.SIZE + 1)
                if not data:
                    break
                self._message(client, P.unpack(data))
        except P.ProtocolError as exc:
            reason = str(exc)
        except asyncio.TimeoutError:
            reason = "no HELLO in time"
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a fault of ours: that client goes, the daemon stays
            log.exception("pid %d: %s", client.pid, exc)
            reason = f"an internal error ({exc})"
        self._drop(client, reason)

    def _hello(self, client: Client, msg: P.Message) -> None:
        if msg.op != P.HELLO or not 1 <= msg.share <= 100:
            raise P.ProtocolError("the first message must be HELLO with a share of 1..100")
        trusted = self.slice_of(client.pid)
        share = msg.share
        if trusted is not None and trusted.compute_share is not None:
            share = min(share, trusted.compute_share)  # a sub-cap only lowers it
        gpu = self.gpus.get(msg.uuid)
        if gpu is None:
            gpu = self.gpus[msg.uuid] = Gpu(msg.uuid)
        tenant = Tenant(conn=client, share=share, force=bool(msg.flags & P.FORCE))
        client.gpu, client.tenant = gpu, tenant
        log.info("pid %d (uid %d) joins %s at %d%% (%s)", client.pid, client.uid, P.uuid_text(msg.uuid),
                 share, trusted.source if trusted else "its own claim: no trusted slice")
        self._send(client, P.Message(P.WELCOME, share=share, value=1 if trusted else 0))
        self._carry_out(gpu, gpu.join(tenant, _now()))

    def _message(self, client: Client, msg: P.Message) -> None:
        gpu, tenant = client.gpu, client.tenant
        assert gpu is not None and tenant is not None
        now = _now()
        if now - client.window_start > 1_000_000_000:
            client.window_start, client.window_count = now, 0
        client.window_count += 1
        if client.window_count > MAX_MESSAGES_PER_SECOND:
            raise P.ProtocolError("too many messages")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%.6f <- pid %d op %d value %d", now / 1e9, client.pid, msg.op, msg.value)
        if msg.op == P.WANT:
            sends = gpu.want(tenant, msg.value, now)
        elif msg.op == P.DONE:
            sends = gpu.done(tenant, msg.value, now)
        elif msg.op == P.CHARGE:
            sends = gpu.charge(tenant, msg.value, now)
        elif msg.op == P.NOTE:
            sends = gpu.note(tenant, now)
        else:
            raise P.ProtocolError("HELLO twice")
        self._carry_out(gpu, sends)

    def _drop(self, client: Client, reason: Optional[str]) -> None:
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        if reason:
            log.warning("pid %d (uid %d) dropped: %s", client.pid, client.uid, reason)
        try:
            client.sock.close()
        except OSError:
            pass
        if client.gpu is not None and client.tenant is not None:
            self._carry_out(client.gpu, client.gpu.leave(client.tenant, _now()))

    # -- the scheduler's answers --------------------------------------------------------

    def _send(self, client: Client, msg: P.Message) -> bool:
        if client.closed:
            return False
        try:
            client.sock.send(msg.pack())
            return True
        except (BlockingIOError, OSError):
            return False

    def _carry_out(self, gpu: Gpu, sends: list[Send]) -> None:
        failed = []
        for client, msg in sends:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%.6f -> pid %d op %d", time.monotonic(), client.pid, msg.op)
            if msg.op == P.REVOKED:
                self._log_revoked(client)
            if not self._send(client, msg):
                failed.append(client)
        for client in failed:
            self._drop(client, "it stopped reading")  # leaves the GPU, which may grant anew
        self._arm(gpu)

    def _log_revoked(self, client: Client) -> None:
        client.revoked += 1
        now = _now()
        if client.revoked_logged_at is not None and now - client.revoked_logged_at < REVOKED_LOG_INTERVAL_NS:
            return
        client.revoked_logged_at = now
        log.info("pid %d (uid %d) kept the GPU from others without using it: its turn was taken back "
                 "(%d time%s so far)", client.pid, client.uid, client.revoked, "" if client.revoked == 1 else "s")

    def _arm(self, gpu: Gpu) -> None:
        old = self.timers.pop(gpu.uuid, None)
        if old is not None:
            old.cancel()
        due = gpu.next_check()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self.timers[gpu.uuid] = loop.call_at(due / 1e9, self._tick, gpu)

    def _tick(self, gpu: Gpu) -> None:
        self.timers.pop(gpu.uuid, None)
        self._carry_out(gpu, gpu.tick(_now()))
