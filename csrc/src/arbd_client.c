#include "arbd_client.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "vgpu_arbd.h"

#define MS 1000000ull
#define RETRY_NS (1000 * MS)   /* a daemon that is down is tried again once a second */
#define WELCOME_NS (1000 * MS) /* a daemon that takes longer to answer HELLO is as good as down */
#define NOTE_NS (500000ull)
#define READ_NS (50000ull)     /* while holding, the daemon is read at most this often */

void vgpu_arbd_init(struct vgpu_arbd *c, const char *path, const unsigned char uuid[16], uint32_t claim, int force)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->claim = claim;
    c->force = force;
    memcpy(c->uuid, uuid, 16);
    snprintf(c->path, sizeof c->path, "%s", path ? path : "");
    c->state = c->path[0] ? VGPU_ARBD_S_DOWN : VGPU_ARBD_S_OFF;
}

static void go_down(struct vgpu_arbd *c, uint64_t now, const char *why)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->holding)
        c->revoked = 1; /* the pacer ends the turn it thought it had */
    c->holding = c->wanting = c->waiting = c->yield = 0;
    if (c->state == VGPU_ARBD_S_UP)
        c->losses++;
    c->state = VGPU_ARBD_S_DOWN;
    c->retry_at = now + RETRY_NS;
    if (!c->warned) {
        c->warned = 1;
        VGPU_ERROR("the GPU arbiter at %s does not answer (%s): this process takes turns at its own cap, %u%%, "
                   "paced locally, and rejoins when it is back",
                   c->path, why, c->claim);
    }
}

static int send_msg(struct vgpu_arbd *c, uint16_t op, uint32_t share, uint32_t flags, uint64_t value, uint64_t now)
{
    struct vgpu_arbd_msg m;
    memset(&m, 0, sizeof m);
    m.magic = VGPU_ARBD_MAGIC;
    m.version = VGPU_ARBD_VERSION;
    m.op = op;
    m.share = share;
    m.flags = flags;
    m.value = value;
    memcpy(m.uuid, c->uuid, 16);
    if (send(c->fd, &m, sizeof m, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)sizeof m)
        return 0;
    go_down(c, now, errno == EAGAIN ? "it stopped reading" : strerror(errno));
    return -1;
}

static void try_connect(struct vgpu_arbd *c, uint64_t now)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", c->path);
    c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        go_down(c, now, strerror(errno));
        return;
    }
    c->hello_at = now;
    c->state = VGPU_ARBD_S_HELLO;
    send_msg(c, VGPU_ARBD_HELLO, c->claim, c->force ? VGPU_ARBD_FORCE : 0, 0, now);
}

static void handle(struct vgpu_arbd *c, const struct vgpu_arbd_msg *m, uint64_t now)
{
    switch (m->op) {
    case VGPU_ARBD_WELCOME:
        if (c->state != VGPU_ARBD_S_HELLO || m->share < 1 || m->share > 100) {
            go_down(c, now, "an unexpected answer");
            return;
        }
        c->share = m->share;
        c->trusted = m->value == 1;
        c->state = VGPU_ARBD_S_UP;
        c->joins++;
        if (c->warned)
            VGPU_INFO("the GPU arbiter at %s answers again: turns come from it, at %u%%", c->path, c->share);
        return;
    case VGPU_ARBD_GRANT:
        if (c->wanting) {
            c->wanting = 0;
            c->holding = 1;
            c->waiting = c->yield = 0;
            c->deadline = m->value;
            c->last_note = now;
        }
        return;
    case VGPU_ARBD_WAITING:
        c->waiting = c->holding;
        return;
    case VGPU_ARBD_YIELD:
        c->yield = c->holding;
        return;
    case VGPU_ARBD_REVOKED:
        if (c->holding) {
            c->holding = 0;
            c->revoked = 1;
            c->waiting = c->yield = 0;
        }
        return;
    default:
        go_down(c, now, m->op == VGPU_ARBD_REFUSED ? "it refused this process" : "an unknown answer");
    }
}

int vgpu_arbd_pump(struct vgpu_arbd *c, uint64_t now)
{
    if (c->state == VGPU_ARBD_S_OFF)
        return c->state;
    if (c->state == VGPU_ARBD_S_DOWN) {
        if (now >= c->retry_at)
            try_connect(c, now);
        if (c->state == VGPU_ARBD_S_DOWN)
            return c->state;
    }
    if (c->state == VGPU_ARBD_S_UP && c->holding && now - c->last_read < READ_NS)
        return c->state;
    c->last_read = now;
    for (;;) {
        struct vgpu_arbd_msg m;
        ssize_t n = recv(c->fd, &m, sizeof m, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (n == 0) {
            go_down(c, now, "it closed the connection");
            break;
        }
        if (n != (ssize_t)sizeof m || m.magic != VGPU_ARBD_MAGIC || m.version != VGPU_ARBD_VERSION) {
            go_down(c, now, n < 0 ? strerror(errno) : "a malformed answer");
            break;
        }
        handle(c, &m, now);
        if (c->state == VGPU_ARBD_S_DOWN)
            break;
    }
    if (c->state == VGPU_ARBD_S_HELLO && now - c->hello_at > WELCOME_NS)
        go_down(c, now, "no answer to HELLO within a second");
    return c->state;
}

int vgpu_arbd_try_acquire(struct vgpu_arbd *c, uint64_t now, uint64_t quantum)
{
    if (c->state != VGPU_ARBD_S_UP)
        return 0;
    if (c->holding)
        return 1;
    if (!c->wanting && send_msg(c, VGPU_ARBD_WANT, 0, 0, quantum, now) == 0)
        c->wanting = 1;
    return 0;
}

void vgpu_arbd_done(struct vgpu_arbd *c, uint64_t used)
{
    if (!c->holding)
        return; /* revoked or lost: the daemon has charged it */
    c->holding = c->waiting = c->yield = 0;
    send_msg(c, VGPU_ARBD_DONE, 0, 0, used, c->last_note);
}

void vgpu_arbd_charge(struct vgpu_arbd *c, uint64_t used)
{
    if (c->holding)
        send_msg(c, VGPU_ARBD_CHARGE, 0, 0, used, c->last_note);
}

void vgpu_arbd_note(struct vgpu_arbd *c, uint64_t now)
{
    if (c->holding && now - c->last_note >= NOTE_NS) {
        c->last_note = now;
        send_msg(c, VGPU_ARBD_NOTE, 0, 0, 0, now);
    }
}

int vgpu_arbd_take_revoked(struct vgpu_arbd *c)
{
    int r = c->revoked;
    c->revoked = 0;
    return r;
}

void vgpu_arbd_wait(struct vgpu_arbd *c, uint64_t now, uint64_t until)
{
    if (until <= now)
        return;
    uint64_t left = until - now;
    struct timespec ts = {(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
    if (c->fd >= 0 && c->state >= VGPU_ARBD_S_HELLO) {
        struct pollfd pfd = {c->fd, POLLIN, 0};
        ppoll(&pfd, 1, &ts, NULL);
    } else {
        nanosleep(&ts, NULL);
    }
}

void vgpu_arbd_forget(struct vgpu_arbd *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    if (c->state != VGPU_ARBD_S_OFF)
        c->state = VGPU_ARBD_S_DOWN;
    c->holding = c->wanting = c->waiting = c->yield = c->revoked = 0;
    c->retry_at = 0;
}
