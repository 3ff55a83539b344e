/*
 * libvgpu's side of the trusted arbiter daemon (the wire: include/vgpu_arbd.h).
 *
 * Never blocking: every call sends or reads without waiting, except
 * vgpu_arbd_wait, which waits at most until a given time for the daemon's
 * next word. When the daemon is down or stops answering, the client says so
 * once on stderr and is "down": the pacer then takes turns through the
 * per-user turn files at the process's own cap (arbiter.h), and the client
 * tries again at most once a second, so the process rejoins when the daemon
 * is back. All times are CLOCK_MONOTONIC ns, passed in.
 */
#ifndef VGPU_ARBD_CLIENT_H
#define VGPU_ARBD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

enum vgpu_arbd_state {
    VGPU_ARBD_S_OFF = 0,   /* no socket configured */
    VGPU_ARBD_S_DOWN = 1,  /* not connected; retry at retry_at */
    VGPU_ARBD_S_HELLO = 2, /* HELLO sent, WELCOME not yet in */
    VGPU_ARBD_S_UP = 3,    /* turns come from the daemon */
};

struct vgpu_arbd {
    int state;
    int fd;
    char path[108];
    unsigned char uuid[16];
    uint32_t claim;   /* the process's own cap */
    uint32_t share;   /* what the daemon granted (UP) */
    int trusted;      /* the granted share came from a trusted slice */
    int force;
    int wanting, holding;
    int waiting, yield; /* the daemon asked the holder to end its turn (at the quantum's end / now) */
    int revoked;        /* the turn held was taken back; cleared by vgpu_arbd_take_revoked */
    uint64_t deadline, last_note, retry_at, hello_at, last_read;
    int warned;
    uint64_t joins, losses;
};

/* Sets the client up; state OFF when path is "" (nothing is tried). */
void vgpu_arbd_init(struct vgpu_arbd *c, const char *path, const unsigned char uuid[16], uint32_t claim,
                    int force);

/* Reads what the daemon said (while holding a turn, at most every 50 us:
 * a launch path of short kernels should not pay a system call each);
 * (re)connects when DOWN and retry_at has passed. Returns the state afterwards. */
int vgpu_arbd_pump(struct vgpu_arbd *c, uint64_t now);

/* 1 if the turn is this process's; otherwise asks for it (once). */
int vgpu_arbd_try_acquire(struct vgpu_arbd *c, uint64_t now, uint64_t quantum);

/* The turn ends: `used` ns of GPU time charged. */
void vgpu_arbd_done(struct vgpu_arbd *c, uint64_t used);
/* The turn goes on (nobody waited): `used` ns charged so far. */
void vgpu_arbd_charge(struct vgpu_arbd *c, uint64_t used);
/* A launch in the turn (sent at most every 500 us). */
void vgpu_arbd_note(struct vgpu_arbd *c, uint64_t now);

/* 1 (once) if the daemon took the turn back. */
int vgpu_arbd_take_revoked(struct vgpu_arbd *c);

/* Waits for the daemon's next message until `until` at the latest. */
void vgpu_arbd_wait(struct vgpu_arbd *c, uint64_t now, uint64_t until);

/* In a forked child: the parent's connection is not the child's. */
void vgpu_arbd_forget(struct vgpu_arbd *c);

#endif
