/*
 * The wire between libvgpu and the trusted arbiter daemon (`hami-arbiter`,
 * Python package hami_arbiter, whose protocol.py mirrors this header).
 *
 * Why a daemon: turn files shared between processes work only where every
 * process can see and write the same file, i.e. one user in one /tmp. Pods
 * have their own /tmp, and a world-writable file lets any user disturb every
 * other. The daemon is the only writer of the turns: clients ask for them
 * over a Unix socket, the daemon knows who asks (SO_PEERCRED) and takes each
 * client's share from a source the client cannot write (the slice file of
 * its container, or the local hub's grants), never from the client's say.
 *
 * Transport: SOCK_SEQPACKET, so every message arrives whole or not at all.
 * One connection per process and GPU; every message is one struct
 * vgpu_arbd_msg (native byte order: both ends are on one host). A message
 * of another size, magic or version, or an unknown op, ends the connection.
 *
 * Client -> daemon:
 *   HELLO   uuid = the GPU, share = the process's own cap (1..100, a
 *           sub-cap can only lower the trusted share), flags = FORCE if
 *           the policy is force. First message, once.
 *   WANT    value = the turn's quantum (ns) the client will use.
 *   DONE    value = GPU time (ns) the turn used; the turn is given back.
 *   CHARGE  value = GPU time used since the turn (or the last CHARGE)
 *           began; the turn goes on (work-conserving, nobody waited).
 *   NOTE    the holder is still launching (sent at most every 500 us).
 * Daemon -> client:
 *   WELCOME share = the share granted (the trusted slice's, lowered by the
 *           client's cap), value = 1 if it came from a trusted source.
 *   GRANT   the turn is the client's; value = its deadline (CLOCK_MONOTONIC ns).
 *   WAITING another tenant waits: end the turn when its quantum is up.
 *   YIELD   a tenant that used less than its share waits: end the turn at
 *           the next launch.
 *   REVOKED the turn was taken back (held past its deadline, or idle
 *           while others waited); the daemon charged it.
 *   REFUSED no share can be given (value: reason code); the connection ends.
 */
#ifndef VGPU_ARBD_H
#define VGPU_ARBD_H

#include <stdint.h>

#define VGPU_ARBD_MAGIC 0x44425261u /* "aRBD" */
#define VGPU_ARBD_VERSION 1u
#define VGPU_ARBD_SOCKET_DEFAULT "/run/hami-jupyter/arbiter/arbiter.sock"

enum vgpu_arbd_op {
    VGPU_ARBD_HELLO = 1,
    VGPU_ARBD_WANT = 2,
    VGPU_ARBD_DONE = 3,
    VGPU_ARBD_CHARGE = 4,
    VGPU_ARBD_NOTE = 5,
    VGPU_ARBD_WELCOME = 101,
    VGPU_ARBD_GRANT = 102,
    VGPU_ARBD_WAITING = 103,
    VGPU_ARBD_YIELD = 104,
    VGPU_ARBD_REVOKED = 105,
    VGPU_ARBD_REFUSED = 106,
};

#define VGPU_ARBD_FORCE 1u

struct vgpu_arbd_msg {
    uint32_t magic;
    uint16_t version;
    uint16_t op;
    uint32_t share;
    uint32_t flags;
    uint64_t value;
    unsigned char uuid[16];
};

#ifndef __cplusplus
_Static_assert(sizeof(struct vgpu_arbd_msg) == 40, "the arbiter's message is 40 bytes");
#endif

#endif
