#include "arbiter.h"

#include "checksum.h"
#include "map_guard.h"
#include "safe_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t header_checksum(const struct vgpu_arbiter *a)
{
    return vgpu_fnv1a(a, offsetof(struct vgpu_arbiter, checksum));
}

void vgpu_arbiter_format(struct vgpu_arbiter *a, uint64_t created_ns)
{
    memset(a, 0, sizeof *a);
    a->magic = VGPU_ARBITER_MAGIC;
    a->version = VGPU_ARBITER_VERSION;
    a->size = VGPU_ARBITER_SIZE;
    a->tenants = VGPU_ARBITER_TENANTS;
    a->created_ns = created_ns;
    a->checksum = header_checksum(a);
}

int vgpu_arbiter_valid(const struct vgpu_arbiter *a)
{
    return a->magic == VGPU_ARBITER_MAGIC && a->version == VGPU_ARBITER_VERSION &&
           a->size == VGPU_ARBITER_SIZE && a->tenants == VGPU_ARBITER_TENANTS &&
           a->checksum == header_checksum(a) &&
           atomic_load_explicit(&a->tenant_high, memory_order_relaxed) <= VGPU_ARBITER_TENANTS;
}

int vgpu_arbiter_open(const char *dir, int private_dir, const unsigned char uuid[16], void (*lost)(void),
                      struct vgpu_arbiter **out, int *fd_out, char *err, size_t errlen)
{
    /* Turn files are taken only from this user or root (safe_file.h): a
     * world-writable directory let one user crash another's processes. Until
     * a trusted arbiter grants turns across users, the default directory is
     * this user's own. */
    if (private_dir) {
        if (vgpu_private_dir(dir, err, errlen) != 0)
            return -1;
    } else if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create the directory %s for the GPU's turn files: %s", dir, strerror(errno));
        return -1;
    }
    char path[4200], tmp[4300];
    int n = snprintf(path, sizeof path, "%s/GPU-", dir);
    for (int i = 0; i < 16; i++)
        n += snprintf(path + n, sizeof path - (size_t)n, "%s%02x", (i == 4 || i == 6 || i == 8 || i == 10) ? "-" : "",
                      uuid[i]);
    snprintf(path + n, sizeof path - (size_t)n, ".arbiter");
    int fd = vgpu_open_shared_file(path, O_RDWR, "the GPU's turn file", err, errlen);
    if (fd < 0 && errno == ENOENT) {
        /* Built whole in a private file, then linked into place: nobody can
         * see a half-made arbiter. */
        snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
        int t = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (t >= 0) {
            struct vgpu_arbiter fresh;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            vgpu_arbiter_format(&fresh, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
            int ok = pwrite(t, &fresh, sizeof fresh, 0) == (ssize_t)sizeof fresh;
            close(t);
            if (ok && link(tmp, path) != 0 && errno != EEXIST)
                ok = 0;
            unlink(tmp);
            (void)ok;
        }
        fd = vgpu_open_shared_file(path, O_RDWR, "the GPU's turn file", err, errlen);
    }
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != VGPU_ARBITER_SIZE) {
        snprintf(err, errlen, "the GPU's turn file %s has the wrong size: corrupted or another version", path);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, VGPU_ARBITER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map != MAP_FAILED)
        vgpu_map_guard_add(map, VGPU_ARBITER_SIZE, "the GPU's turn file", path, lost);
    if (map == MAP_FAILED || !vgpu_arbiter_valid(map)) {
        snprintf(err, errlen, "the GPU's turn file %s is corrupted or of another version", path);
        if (map != MAP_FAILED) {
            vgpu_map_guard_remove(map);
            munmap(map, VGPU_ARBITER_SIZE);
        }
        close(fd);
        return -1;
    }
    *out = map;
    *fd_out = fd;
    return 0;
}

static int lock_tenant(int fd, int i)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = VGPU_ARBITER_TENANTS_OFFSET + (off_t)i * (off_t)sizeof(struct vgpu_arbiter_tenant);
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl);
}

int vgpu_arbiter_join(struct vgpu_arbiter *a, int fd, uint32_t share, uint64_t now)
{
    for (int i = 0; i < VGPU_ARBITER_TENANTS; i++) {
        struct vgpu_arbiter_tenant *t = &a->tenant[i];
        if (fd >= 0) {
            if (lock_tenant(fd, i) != 0)
                continue;
        } else {
            uint32_t unused = 0;
            if (!atomic_compare_exchange_strong(&t->share, &unused, share))
                continue;
        }
        /* A newcomer starts at the system's virtual time: no banked credit. */
        atomic_store(&t->wanting, 0);
        atomic_store(&t->pass, atomic_load(&a->vtime));
        atomic_store(&t->seen_ns, now);
        atomic_store(&t->turns, 0);
        atomic_store(&t->pid, (int32_t)getpid());
        atomic_store(&t->share, share);
        uint32_t high = atomic_load(&a->tenant_high);
        while (high < (uint32_t)i + 1 && !atomic_compare_exchange_weak(&a->tenant_high, &high, (uint32_t)i + 1)) {
        }
        return i;
    }
    return -1;
}

static int live_waiter(const struct vgpu_arbiter_tenant *t, uint64_t now)
{
    uint64_t seen = atomic_load(&t->seen_ns);
    /* Another process read the clock after us: seen may be ahead of now. */
    int fresh = seen >= now || now - seen < VGPU_ARBITER_WAITER_TTL_NS;
    return atomic_load(&t->share) != 0 && atomic_load(&t->wanting) && fresh;
}

/* 1 if no live waiter comes before `me`: lower pass, or equal pass and index. */
static int first_in_line(const struct vgpu_arbiter *a, int me, uint64_t now)
{
    uint64_t mine = atomic_load(&a->tenant[me].pass);
    uint32_t high = atomic_load(&a->tenant_high);
    for (uint32_t i = 0; i < high && i < VGPU_ARBITER_TENANTS; i++) {
        if ((int)i == me || !live_waiter(&a->tenant[i], now))
            continue;
        uint64_t p = atomic_load(&a->tenant[i].pass);
        if (p < mine || (p == mine && (int)i < me))
            return 0;
    }
    return 1;
}

int vgpu_arbiter_holds(const struct vgpu_arbiter *a, int me)
{
    return atomic_load(&a->holder) == (uint64_t)me + 1;
}

int vgpu_arbiter_try_acquire(struct vgpu_arbiter *a, int me, uint64_t now, uint64_t quantum, uint64_t grace)
{
    struct vgpu_arbiter_tenant *t = &a->tenant[me];
    uint64_t holder = atomic_load(&a->holder);
    if (holder == (uint64_t)me + 1)
        return 1;
    if (!atomic_load(&t->wanting)) {
        uint64_t vt = atomic_load(&a->vtime);
        if (atomic_load(&t->pass) < vt)
            atomic_store(&t->pass, vt);
        atomic_store(&t->wanting, 1);
    }
    atomic_store(&t->seen_ns, now);
    if (holder != 0) {
        uint64_t deadline = atomic_load(&a->deadline_ns);
        if (now > deadline + grace && atomic_load(&a->launched_ns) < deadline)
            atomic_compare_exchange_strong(&a->holder, &holder, 0); /* gone or idle: free the GPU */
        return 0;
    }
    if (!first_in_line(a, me, now))
        return 0;
    /* Publish the quantum before the claim, so that nobody who sees the new
     * holder can read a stale deadline and take it for overdue. */
    atomic_store(&a->deadline_ns, now + quantum);
    atomic_store(&a->launched_ns, now);
    uint64_t free_gpu = 0;
    if (!atomic_compare_exchange_strong(&a->holder, &free_gpu, (uint64_t)me + 1))
        return 0;
    atomic_store(&t->wanting, 0);
    atomic_fetch_add(&t->turns, 1);
    return 1;
}

int vgpu_arbiter_contended(struct vgpu_arbiter *a, int me, uint64_t now)
{
    uint32_t high = atomic_load(&a->tenant_high);
    for (uint32_t i = 0; i < high && i < VGPU_ARBITER_TENANTS; i++)
        if ((int)i != me && live_waiter(&a->tenant[i], now))
            return 1;
    return 0;
}

void vgpu_arbiter_charge(struct vgpu_arbiter *a, int me, uint64_t used_ns, uint64_t now)
{
    struct vgpu_arbiter_tenant *t = &a->tenant[me];
    uint32_t share = atomic_load(&t->share);
    uint64_t pass = atomic_fetch_add(&t->pass, used_ns * 100u / (share ? share : 100u)) +
                    used_ns * 100u / (share ? share : 100u);
    /* The system's virtual time: the smallest pass among those competing now
     * (this tenant included). It only moves forward. */
    uint64_t vt = pass;
    uint32_t high = atomic_load(&a->tenant_high);
    for (uint32_t i = 0; i < high && i < VGPU_ARBITER_TENANTS; i++) {
        if ((int)i != me && live_waiter(&a->tenant[i], now)) {
            uint64_t p = atomic_load(&a->tenant[i].pass);
            vt = p < vt ? p : vt;
        }
    }
    uint64_t old = atomic_load(&a->vtime);
    while (old < vt && !atomic_compare_exchange_weak(&a->vtime, &old, vt)) {
    }
}

void vgpu_arbiter_extend(struct vgpu_arbiter *a, int me, uint64_t now, uint64_t quantum)
{
    if (vgpu_arbiter_holds(a, me))
        atomic_store(&a->deadline_ns, now + quantum);
}

void vgpu_arbiter_note_launch(struct vgpu_arbiter *a, uint64_t now)
{
    atomic_store_explicit(&a->launched_ns, now, memory_order_relaxed);
}

int vgpu_arbiter_release(struct vgpu_arbiter *a, int me)
{
    uint64_t mine = (uint64_t)me + 1;
    return atomic_compare_exchange_strong(&a->holder, &mine, 0);
}

void vgpu_arbiter_set_share(struct vgpu_arbiter *a, int me, uint32_t share)
{
    atomic_store(&a->tenant[me].share, share);
}
