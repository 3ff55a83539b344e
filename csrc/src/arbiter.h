/*
 * Turn-taking between capped processes on one GPU (layout and reasoning:
 * include/vgpu_arbiter.h). Every function takes the time explicitly, so the
 * protocol can be driven by a simulated clock in tests.
 */
#ifndef VGPU_ARBITER_OPS_H
#define VGPU_ARBITER_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "vgpu_arbiter.h"

/* A waiter that has not refreshed seen_ns for this long is taken for gone. */
#define VGPU_ARBITER_WAITER_TTL_NS (50u * 1000u * 1000u)

void vgpu_arbiter_format(struct vgpu_arbiter *a, uint64_t created_ns);
int vgpu_arbiter_valid(const struct vgpu_arbiter *a);

/* Maps (creating if needed) the arbiter of a GPU under dir, which is made a
 * private directory (safe_file.h) when private_dir is set. The file must be
 * this user's or root's; the mapping is guarded against truncation
 * (map_guard.h), `lost` running if it happens. -1 with a reason in err. */
int vgpu_arbiter_open(const char *dir, int private_dir, const unsigned char uuid[16], void (*lost)(void),
                      struct vgpu_arbiter **out, int *fd, char *err, size_t errlen);

/* Claims a tenant slot: through its OFD lock when fd >= 0, by compare-and-swap
 * on `share` otherwise (tests). Returns the tenant index or -1 when full. */
int vgpu_arbiter_join(struct vgpu_arbiter *a, int fd, uint32_t share, uint64_t now);

/* One attempt to take the GPU: 1 if `me` holds it afterwards. Marks `me` as
 * waiting, and frees the GPU from a holder that overstayed its quantum by
 * more than `grace` without launching. */
int vgpu_arbiter_try_acquire(struct vgpu_arbiter *a, int me, uint64_t now, uint64_t quantum, uint64_t grace);

/* 1 if a live tenant other than `me` waits for the GPU. */
int vgpu_arbiter_contended(struct vgpu_arbiter *a, int me, uint64_t now);

/* The holder has used the GPU for used_ns more: its pass advances. */
/* A tenant's share changed while it runs (a kernel's sub-slice re-divided). */
void vgpu_arbiter_set_share(struct vgpu_arbiter *a, int me, uint32_t share);

void vgpu_arbiter_charge(struct vgpu_arbiter *a, int me, uint64_t used_ns, uint64_t now);

void vgpu_arbiter_extend(struct vgpu_arbiter *a, int me, uint64_t now, uint64_t quantum);
void vgpu_arbiter_note_launch(struct vgpu_arbiter *a, uint64_t now);

/* Gives the GPU back; 0 if `me` no longer held it (it was displaced). */
int vgpu_arbiter_release(struct vgpu_arbiter *a, int me);

/* 1 if `me` holds the GPU. */
int vgpu_arbiter_holds(const struct vgpu_arbiter *a, int me);

#endif
