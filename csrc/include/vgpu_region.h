/*
 * The shared region: how every process of one GPU slice accounts its usage.
 *
 * All processes that name the same file in CUDA_DEVICE_MEMORY_SHARED_CACHE map
 * it MAP_SHARED and account against it. This header is the single description
 * of its layout; hami_kernel/region.py reads the same bytes and must change
 * with it. Any change to a field's meaning, offset or size bumps
 * VGPU_REGION_VERSION; a process that finds another version fails closed.
 *
 * Layout (native byte order, which is little-endian on every supported
 * platform; naturally aligned; sizes fixed by static asserts):
 *
 *   offset 0       struct vgpu_region_header   (256 bytes)
 *   offset 256     struct vgpu_device[16]      (64 bytes each)
 *   offset 4096    struct vgpu_proc[1024]      (1024 bytes each)
 *
 * Devices are keyed by their 16-byte UUID, never by an index, because two
 * processes of one slice may number the same GPUs differently
 * (CUDA_VISIBLE_DEVICES="1,0" in one, unset in the other).
 *
 * Ownership, without any lock a dead process could leave held:
 *  - A process owns proc slot i while it holds an OFD write lock
 *    (fcntl F_OFD_SETLK) on the slot's first byte of the file. The kernel
 *    drops that lock when the process dies, however it dies, so "is slot i
 *    live?" is answered by F_OFD_GETLK, which a reused PID cannot fool.
 *  - Only the owner writes its slot's usage. To reclaim a dead slot, a
 *    process takes the slot's lock itself, zeroes it, and lets it go.
 *  - Slice-wide usage of a device is the sum of the slots' used[dev]; there
 *    is no separate total that a killed process could leave wrong. A dead
 *    process's slot still counts until someone reclaims it: any process that
 *    would otherwise be refused memory, or asks how much is free, does so
 *    first. Readers that show usage count live slots only.
 *  - Reclaim only what the GPU has really freed: the slot lock drops when a
 *    process dies, before the driver has torn down its context and freed
 *    its memory. A dead slot that still has usage is zeroed (or taken over)
 *    only once the driver no longer lists driver_pid among the processes
 *    on any GPU the slot used (NVML's per-process view). A slot whose
 *    driver_pid is 0 (the driver lists this process under another pid, as
 *    in a PID namespace, or NVML is missing), or whose check fails, is
 *    reclaimed once VGPU_RECLAIM_GRACE_MS have passed since the reclaiming
 *    process first found it dead.
 *  - Admission: add the request to your own used[dev], then sum all slots;
 *    if the sum exceeds the limit, take it back and fail. With sequentially
 *    consistent atomics, of any two concurrent requests at least one sees
 *    the other, so the admitted total never exceeds the limit.
 *
 * Device entries are claimed with compare-and-swap on uuid_lo, then uuid_hi
 * (any process that matches uuid_lo completes uuid_hi itself), and
 * memory_limit moves from VGPU_LIMIT_UNSET to a value by compare-and-swap.
 * An entry is registered once both UUID words are non-zero and its limit is
 * set. A new slot's per-process caps are written from its environment just
 * after it is claimed; a controller changes them only after that.
 * After that, memory_limit and sm_limit may be rewritten at any time by a
 * controller (the slice's new size applies to the next allocation).
 */
#ifndef VGPU_REGION_H
#define VGPU_REGION_H

#include <stdint.h>

#ifdef __cplusplus
#define VGPU_ATOMIC(t) t
#else
#include <stdatomic.h>
#define VGPU_ATOMIC(t) _Atomic t
#endif

#define VGPU_REGION_MAGIC 0x55504776u /* "vGPU" */
#define VGPU_REGION_VERSION 2u /* 2: driver_pid, and reclaim waits for the driver */
#define VGPU_MAX_DEVICES 16
#define VGPU_MAX_PROCS 1024
#define VGPU_IDENTITY_LEN 64
#define VGPU_RECLAIM_GRACE_MS 500

#define VGPU_HEADER_OFFSET 0
#define VGPU_DEVICES_OFFSET 256
#define VGPU_PROCS_OFFSET 4096
#define VGPU_PROC_SIZE 1024
#define VGPU_REGION_SIZE (VGPU_PROCS_OFFSET + VGPU_MAX_PROCS * VGPU_PROC_SIZE)

/* memory_limit values with a special meaning */
#define VGPU_LIMIT_UNSET 0u                    /* entry claimed, limit not yet written */
#define VGPU_UNLIMITED UINT64_MAX              /* no memory cap on this device */

struct vgpu_region_header {
    uint32_t magic;         /* VGPU_REGION_MAGIC */
    uint32_t version;       /* VGPU_REGION_VERSION */
    uint32_t region_size;   /* VGPU_REGION_SIZE */
    uint32_t max_devices;   /* VGPU_MAX_DEVICES */
    uint32_t max_procs;     /* VGPU_MAX_PROCS */
    uint32_t proc_size;     /* VGPU_PROC_SIZE */
    uint64_t created_ns;    /* CLOCK_REALTIME at creation */
    uint64_t checksum;      /* FNV-1a 64 (offset basis 14695981039346656037) over the 32 bytes above */
    /* Slots [0, proc_high) may be in use; it only grows. */
    VGPU_ATOMIC(uint32_t) proc_high;
    uint32_t reserved0;
    uint8_t reserved[208];
};

struct vgpu_device {
    VGPU_ATOMIC(uint64_t) uuid_lo;      /* bytes 0..7 of the UUID; 0 = free entry */
    VGPU_ATOMIC(uint64_t) uuid_hi;      /* bytes 8..15 */
    VGPU_ATOMIC(uint64_t) memory_limit; /* bytes for the whole slice on this GPU */
    VGPU_ATOMIC(uint64_t) context_size; /* bytes one CUDA context occupies; 0 = not measured */
    VGPU_ATOMIC(uint32_t) sm_limit;     /* percent of the GPU's compute; 0 = no cap */
    uint32_t reserved0;
    uint64_t reserved[3];
};

struct vgpu_proc {
    VGPU_ATOMIC(int32_t) pid;           /* informational: liveness is the slot lock */
    VGPU_ATOMIC(int32_t) driver_pid;    /* the pid NVML lists this process under; 0 = not known */
    uint64_t claimed_ns;                /* CLOCK_REALTIME when the slot was claimed */
    char identity[VGPU_IDENTITY_LEN];   /* LIBVGPU_IDENTITY (e.g. a kernel id), NUL-terminated */
    VGPU_ATOMIC(uint64_t) used[VGPU_MAX_DEVICES];         /* bytes charged on each device */
    VGPU_ATOMIC(uint64_t) memory_limit[VGPU_MAX_DEVICES]; /* per-process cap; 0 = none */
    /* Live statistics, refreshed at most once a second by the owner. */
    VGPU_ATOMIC(uint64_t) launches[VGPU_MAX_DEVICES];     /* kernel launches so far */
    VGPU_ATOMIC(uint32_t) sm_share[VGPU_MAX_DEVICES];     /* compute used over the last second, in 1/10000 */
    VGPU_ATOMIC(uint32_t) sm_limit[VGPU_MAX_DEVICES];     /* per-process compute cap, percent; 0 = none */
    VGPU_ATOMIC(uint64_t) updated_ns;                     /* CLOCK_REALTIME of the last statistics update */
    uint8_t reserved[VGPU_PROC_SIZE - 8 - 8 - VGPU_IDENTITY_LEN - 3 * 8 * VGPU_MAX_DEVICES -
                     2 * 4 * VGPU_MAX_DEVICES - 8];
};

struct vgpu_region {
    struct vgpu_region_header header;
    struct vgpu_device devices[VGPU_MAX_DEVICES];
    uint8_t pad[VGPU_PROCS_OFFSET - VGPU_DEVICES_OFFSET - VGPU_MAX_DEVICES * 64];
    struct vgpu_proc procs[VGPU_MAX_PROCS];
};

#ifndef __cplusplus
_Static_assert(sizeof(struct vgpu_region_header) == 256, "header size");
_Static_assert(sizeof(struct vgpu_device) == 64, "device entry size");
_Static_assert(sizeof(struct vgpu_proc) == VGPU_PROC_SIZE, "proc slot size");
_Static_assert(sizeof(struct vgpu_region) == VGPU_REGION_SIZE, "region size");
_Static_assert(__builtin_offsetof(struct vgpu_region, devices) == VGPU_DEVICES_OFFSET, "devices");
_Static_assert(__builtin_offsetof(struct vgpu_region, procs) == VGPU_PROCS_OFFSET, "procs");
#endif

#endif
