#include "region.h"

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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t vgpu_region_checksum(const struct vgpu_region_header *hdr)
{
    return vgpu_fnv1a(hdr, offsetof(struct vgpu_region_header, checksum));
}

int vgpu_region_valid(const struct vgpu_region *r)
{
    const struct vgpu_region_header *h = &r->header;
    return h->magic == VGPU_REGION_MAGIC && h->version == VGPU_REGION_VERSION &&
           h->region_size == VGPU_REGION_SIZE && h->max_devices == VGPU_MAX_DEVICES &&
           h->max_procs == VGPU_MAX_PROCS && h->proc_size == VGPU_PROC_SIZE &&
           h->checksum == vgpu_region_checksum(h) &&
           atomic_load_explicit(&h->proc_high, memory_order_relaxed) <= VGPU_MAX_PROCS;
}

static int create_region(const char *path, char *err, size_t errlen)
{
    /* Build the whole region in a private file, then link() it into place:
     * other processes see either no region or a complete one, and nobody ever
     * waits on a creator that may have died half way. */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create the shared region %s: %s", tmp, strerror(errno));
        return -1;
    }
    struct vgpu_region_header hdr;
    memset(&hdr, 0, sizeof hdr);
    hdr.magic = VGPU_REGION_MAGIC;
    hdr.version = VGPU_REGION_VERSION;
    hdr.region_size = VGPU_REGION_SIZE;
    hdr.max_devices = VGPU_MAX_DEVICES;
    hdr.max_procs = VGPU_MAX_PROCS;
    hdr.proc_size = VGPU_PROC_SIZE;
    hdr.created_ns = now_ns();
    hdr.checksum = vgpu_region_checksum(&hdr);
    int ok = ftruncate(fd, VGPU_REGION_SIZE) == 0 && pwrite(fd, &hdr, sizeof hdr, 0) == (ssize_t)sizeof hdr;
    int saved = errno;
    close(fd);
    if (ok && link(tmp, path) != 0 && errno != EEXIST) {
        saved = errno;
        ok = 0;
    }
    unlink(tmp);
    if (!ok) {
        snprintf(err, errlen, "cannot create the shared region %s: %s", path, strerror(saved));
        return -1;
    }
    return 0;
}

int vgpu_region_open(const char *path, struct vgpu_region_handle *h, void (*lost)(void), char *err,
                     size_t errlen)
{
    h->map = NULL;
    h->fd = -1;
    h->slot = -1;
    h->driver_holds = NULL;
    int fd = vgpu_open_shared_file(path, O_RDWR, "the shared region", err, errlen);
    if (fd < 0 && errno == ENOENT) {
        if (create_region(path, err, errlen) != 0)
            return -1;
        fd = vgpu_open_shared_file(path, O_RDWR, "the shared region", err, errlen);
    }
    if (fd < 0)
        return -1;
    struct stat st;
    struct vgpu_region_header hdr;
    memset(&hdr, 0, sizeof hdr);
    errno = 0;
    if (fstat(fd, &st) != 0 || pread(fd, &hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr) {
        snprintf(err, errlen, "cannot read the shared region %s (%s)", path,
                 errno ? strerror(errno) : "file too short");
        close(fd);
        return -1;
    }
    if (hdr.magic == VGPU_REGION_MAGIC && hdr.version != VGPU_REGION_VERSION) {
        snprintf(err, errlen,
                 "the shared region %s has layout version %u but this libvgpu uses %u; "
                 "stop the processes using it and remove the file",
                 path, hdr.version, VGPU_REGION_VERSION);
        close(fd);
        return -1;
    }
    if (st.st_size != VGPU_REGION_SIZE) {
        snprintf(err, errlen, "the shared region %s is %lld bytes, not %d: it is corrupted or not ours",
                 path, (long long)st.st_size, VGPU_REGION_SIZE);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, VGPU_REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map the shared region %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    /* Guarded before the first access: the file may shrink at any moment
     * (map_guard.h), and reading the header is an access. */
    vgpu_map_guard_add(map, VGPU_REGION_SIZE, "the shared region", path, lost);
    if (!vgpu_region_valid(map)) {
        snprintf(err, errlen, "the shared region %s is corrupted (bad header)", path);
        vgpu_map_guard_remove(map);
        munmap(map, VGPU_REGION_SIZE);
        close(fd);
        return -1;
    }
    h->map = map;
    h->fd = fd;
    return 0;
}

void vgpu_region_close(struct vgpu_region_handle *h)
{
    if (h->map) {
        vgpu_map_guard_remove(h->map);
        munmap(h->map, VGPU_REGION_SIZE);
    }
    if (h->fd >= 0)
        close(h->fd);
    h->map = NULL;
    h->fd = -1;
    h->slot = -1;
}

static off_t slot_offset(int slot) { return (off_t)VGPU_PROCS_OFFSET + (off_t)slot * VGPU_PROC_SIZE; }

/* The one byte of the file whose lock is slot i's ownership. */
static struct flock slot_byte(int slot, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = slot_offset(slot);
    fl.l_len = 1;
    return fl;
}

static int slot_lock(int fd, int slot, short type)
{
    struct flock fl = slot_byte(slot, type);
    return fcntl(fd, F_OFD_SETLK, &fl);
}

int vgpu_region_slot_live(const struct vgpu_region_handle *h, int slot)
{
    struct flock fl = slot_byte(slot, F_WRLCK);
    if (fcntl(h->fd, F_OFD_GETLK, &fl) != 0)
        return 1; /* cannot tell: treat as live, never reclaim a live process */
    return fl.l_type != F_UNLCK;
}

static void zero_slot(struct vgpu_proc *p)
{
    atomic_store(&p->pid, 0);
    atomic_store(&p->driver_pid, 0);
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        atomic_store(&p->used[d], 0);
        atomic_store(&p->memory_limit[d], 0);
        atomic_store(&p->launches[d], 0);
        atomic_store(&p->sm_share[d], 0);
        atomic_store(&p->sm_limit[d], 0);
    }
    atomic_store(&p->updated_ns, 0);
    p->claimed_ns = 0;
    memset(p->identity, 0, sizeof p->identity);
}

/* When this process first found each dead slot (for the grace), keyed by the
 * slot's claimed_ns so that a slot taken over since is not confused with it. */
static _Atomic uint64_t g_dead_claimed[VGPU_MAX_PROCS];
static _Atomic uint64_t g_dead_seen[VGPU_MAX_PROCS];

static int grace_over(int slot, uint64_t claimed)
{
    uint64_t now = mono_ns();
    if (atomic_exchange(&g_dead_claimed[slot], claimed) != claimed || atomic_load(&g_dead_seen[slot]) == 0) {
        atomic_store(&g_dead_seen[slot], now);
        return 0;
    }
    return now - atomic_load(&g_dead_seen[slot]) >= (uint64_t)VGPU_RECLAIM_GRACE_MS * 1000000u;
}

/* 1 if the memory of the dead process in slot i (whose lock we hold) is
 * gone from the GPU, so its usage may leave the slice (vgpu_region.h). */
static int dead_slot_released(struct vgpu_region_handle *h, int slot)
{
    struct vgpu_proc *p = &h->map->procs[slot];
    int32_t driver_pid = atomic_load(&p->driver_pid);
    int used = 0, unknown = driver_pid == 0 || !h->driver_holds;
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        if (atomic_load(&p->used[d]) == 0)
            continue;
        used = 1;
        if (unknown)
            continue;
        unsigned char uuid[16];
        vgpu_region_device_uuid(h->map, d, uuid);
        int holds = h->driver_holds(driver_pid, uuid);
        if (holds > 0)
            return 0;
        unknown |= holds < 0;
    }
    return !used || !unknown || grace_over(slot, p->claimed_ns);
}

int vgpu_region_claim_slot(struct vgpu_region_handle *h, const char *identity)
{
    struct vgpu_region *r = h->map;
    /* First pass over slots that look free, so start-up costs one fcntl in
     * the common case; second pass takes over slots of dead processes. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < VGPU_MAX_PROCS; i++) {
            if (pass == 0 && atomic_load(&r->procs[i].pid) != 0)
                continue;
            if (slot_lock(h->fd, i, F_WRLCK) != 0)
                continue;
            if (pass == 1 && !dead_slot_released(h, i)) {
                slot_lock(h->fd, i, F_UNLCK); /* its owner's memory is still on the GPU */
                continue;
            }
            struct vgpu_proc *p = &r->procs[i];
            zero_slot(p); /* whatever a dead owner left is no longer on the GPU */
            snprintf(p->identity, sizeof p->identity, "%s", identity);
            p->claimed_ns = now_ns();
            atomic_store(&p->pid, (int32_t)getpid());
            uint32_t high = atomic_load(&r->header.proc_high);
            while (high < (uint32_t)i + 1 &&
                   !atomic_compare_exchange_weak(&r->header.proc_high, &high, (uint32_t)i + 1)) {
            }
            h->slot = i;
            return 0;
        }
    }
    return -1;
}

static void uuid_words(const unsigned char uuid[16], uint64_t *lo, uint64_t *hi)
{
    memcpy(lo, uuid, 8);
    memcpy(hi, uuid + 8, 8);
    if (*lo == 0) /* 0 marks a free entry */
        *lo = 0x9e3779b97f4a7c15ull;
    if (*hi == 0)
        *hi = 0x9e3779b97f4a7c15ull;
}

void vgpu_region_device_uuid(const struct vgpu_region *r, int entry, unsigned char uuid[16])
{
    uint64_t lo = atomic_load(&r->devices[entry].uuid_lo), hi = atomic_load(&r->devices[entry].uuid_hi);
    memcpy(uuid, &lo, 8);
    memcpy(uuid + 8, &hi, 8);
}

int vgpu_region_find_device(const struct vgpu_region *r, const unsigned char uuid[16])
{
    uint64_t lo, hi;
    uuid_words(uuid, &lo, &hi);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        const struct vgpu_device *d = &r->devices[i];
        if (atomic_load(&d->uuid_lo) == lo && atomic_load(&d->uuid_hi) == hi)
            return i;
    }
    return -1;
}

int vgpu_region_device(struct vgpu_region *r, const unsigned char uuid[16], uint64_t memory_limit,
                       uint32_t sm_limit)
{
    uint64_t lo, hi;
    uuid_words(uuid, &lo, &hi);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        struct vgpu_device *d = &r->devices[i];
        uint64_t cur = atomic_load(&d->uuid_lo);
        if (cur == 0 && atomic_compare_exchange_strong(&d->uuid_lo, &cur, lo))
            cur = lo;
        if (cur != lo)
            continue;
        /* Whoever matches uuid_lo may complete uuid_hi: no claimer to wait for. */
        uint64_t h = 0;
        atomic_compare_exchange_strong(&d->uuid_hi, &h, hi);
        if (atomic_load(&d->uuid_hi) != hi)
            continue;
        uint64_t unset = VGPU_LIMIT_UNSET;
        if (atomic_compare_exchange_strong(&d->memory_limit, &unset, memory_limit))
            atomic_store(&d->sm_limit, sm_limit);
        return i;
    }
    return -1;
}

uint64_t vgpu_region_used(const struct vgpu_region *r, int dev)
{
    uint32_t high = atomic_load(&r->header.proc_high);
    if (high > VGPU_MAX_PROCS)
        high = VGPU_MAX_PROCS;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < high; i++) {
        uint64_t u = atomic_load(&r->procs[i].used[dev]);
        sum = (sum + u < sum) ? UINT64_MAX : sum + u;
    }
    return sum;
}

int vgpu_region_reclaim(struct vgpu_region_handle *h)
{
    struct vgpu_region *r = h->map;
    uint32_t high = atomic_load(&r->header.proc_high);
    int freed = 0;
    for (uint32_t i = 0; i < high && i < VGPU_MAX_PROCS; i++) {
        if ((int)i == h->slot || atomic_load(&r->procs[i].pid) == 0)
            continue;
        /* Holding the slot's lock proves its owner is gone, and keeps a new
         * owner from claiming it while we zero it. */
        if (slot_lock(h->fd, (int)i, F_WRLCK) != 0)
            continue;
        if (!dead_slot_released(h, (int)i)) {
            slot_lock(h->fd, (int)i, F_UNLCK);
            continue;
        }
        zero_slot(&r->procs[i]);
        slot_lock(h->fd, (int)i, F_UNLCK);
        freed++;
    }
    return freed;
}

enum vgpu_charge_result vgpu_region_charge(struct vgpu_region_handle *h, int dev, uint64_t bytes, uint64_t ceiling)
{
    struct vgpu_region *r = h->map;
    if (r->header.magic != VGPU_REGION_MAGIC)
        return VGPU_REGION_BROKEN;
    struct vgpu_proc *me = &r->procs[h->slot];
    uint64_t mine = atomic_fetch_add(&me->used[dev], bytes) + bytes;
    uint64_t cap = atomic_load(&me->memory_limit[dev]);
    if (mine < bytes || (cap != 0 && mine > cap)) {
        atomic_fetch_sub(&me->used[dev], bytes);
        return VGPU_OVER_PROCESS;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        uint64_t limit = atomic_load(&r->devices[dev].memory_limit);
        limit = limit < ceiling ? limit : ceiling;
        if (limit == VGPU_UNLIMITED || vgpu_region_used(r, dev) <= limit) {
            /* A region truncated during the sum reads as zeros (map_guard.h):
             * the sum proves nothing then. */
            if (r->header.magic != VGPU_REGION_MAGIC)
                return VGPU_REGION_BROKEN;
            return VGPU_CHARGED;
        }
        if (vgpu_region_reclaim(h) == 0)
            break;
    }
    atomic_fetch_sub(&me->used[dev], bytes);
    return VGPU_OVER_SLICE;
}

void vgpu_region_uncharge(struct vgpu_region_handle *h, int dev, uint64_t bytes)
{
    struct vgpu_proc *me = &h->map->procs[h->slot];
    uint64_t cur = atomic_load(&me->used[dev]);
    /* Never wrap below zero, whatever the program frees. */
    while (!atomic_compare_exchange_weak(&me->used[dev], &cur, cur > bytes ? cur - bytes : 0)) {
    }
}
