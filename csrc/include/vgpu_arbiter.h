/*
 * The per-GPU arbiter: how processes with a compute share take turns on one
 * physical GPU, across slices.
 *
 * Why turns: without MPS a GPU time-slices between processes, so two busy
 * processes each get about half of it whatever they ask for, and "keeping
 * work in flight 30% of the time" does not yield 30% of the GPU. Exact shares
 * need exclusive turns. All capped processes on a GPU, whatever their slice,
 * map one file per GPU, LIBVGPU_ARBITER_DIR/<uuid>.arbiter, and take turns by
 * stride scheduling: a turn of length L advances the holder's pass by
 * L * 100 / share, and the waiting tenant with the smallest pass goes next.
 * Shares of busy tenants are therefore proportional to their caps.
 *
 * Work-conserving: a holder whose quantum ends while nobody waits keeps the
 * GPU (its pass still advances). A newcomer starts at the system's virtual
 * time, so idle time is never banked as credit.
 *
 * No locks: the turn is a compare-and-swap on `holder`. A holder that dies or
 * stops launching is displaced once its deadline plus a grace period passes
 * without a launch; waiters prove they are alive by refreshing `seen_ns`, so
 * a dead waiter drops out of the election by itself. Tenant slots are owned
 * through an OFD lock on their first byte, as in vgpu_region.h.
 *
 * All times are CLOCK_MONOTONIC nanoseconds, which every process on the host
 * shares.
 */
#ifndef VGPU_ARBITER_H
#define VGPU_ARBITER_H

#include <stdint.h>

#ifdef __cplusplus
#define VGPU_ARB_ATOMIC(t) t
#else
#include <stdatomic.h>
#define VGPU_ARB_ATOMIC(t) _Atomic t
#endif

#define VGPU_ARBITER_MAGIC 0x42524176u /* "vARB" */
#define VGPU_ARBITER_VERSION 1u
#define VGPU_ARBITER_TENANTS 256
#define VGPU_ARBITER_TENANTS_OFFSET 256
#define VGPU_ARBITER_SIZE (VGPU_ARBITER_TENANTS_OFFSET + VGPU_ARBITER_TENANTS * 64)

struct vgpu_arbiter_tenant {
    VGPU_ARB_ATOMIC(uint32_t) share;   /* percent 1..100; 0 = slot unused */
    VGPU_ARB_ATOMIC(uint32_t) wanting; /* 1 while waiting for a turn */
    VGPU_ARB_ATOMIC(uint64_t) pass;    /* stride-scheduling virtual time */
    VGPU_ARB_ATOMIC(uint64_t) seen_ns; /* last sign of life while wanting */
    VGPU_ARB_ATOMIC(uint64_t) turns;   /* turns taken, for statistics */
    VGPU_ARB_ATOMIC(int32_t) pid;      /* informational */
    uint8_t reserved[28];
};

struct vgpu_arbiter {
    uint32_t magic;
    uint32_t version;
    uint32_t size;
    uint32_t tenants;
    uint64_t created_ns;
    uint64_t checksum; /* FNV-1a over the 24 bytes above */
    VGPU_ARB_ATOMIC(uint64_t) holder;       /* tenant index + 1; 0 = the GPU is free */
    VGPU_ARB_ATOMIC(uint64_t) deadline_ns;  /* end of the holder's quantum */
    VGPU_ARB_ATOMIC(uint64_t) launched_ns;  /* the holder's last launch, roughly */
    VGPU_ARB_ATOMIC(uint64_t) vtime;        /* pass of the latest holder: where newcomers start */
    VGPU_ARB_ATOMIC(uint32_t) tenant_high;  /* tenants [0, tenant_high) may be in use */
    uint8_t reserved[VGPU_ARBITER_TENANTS_OFFSET - 68];
    struct vgpu_arbiter_tenant tenant[VGPU_ARBITER_TENANTS];
};

#ifndef __cplusplus
_Static_assert(sizeof(struct vgpu_arbiter_tenant) == 64, "tenant size");
_Static_assert(__builtin_offsetof(struct vgpu_arbiter, tenant) == VGPU_ARBITER_TENANTS_OFFSET, "tenants");
_Static_assert(sizeof(struct vgpu_arbiter) == VGPU_ARBITER_SIZE, "arbiter size");
#endif

#endif
