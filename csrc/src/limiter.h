/*
 * The compute share: every kernel launch, of whatever kind, passes through
 * here. Processes with no cap only count the launch. Capped processes launch
 * during turns on their GPU (arbiter.h) and keep the GPU from lagging far
 * behind their launches, so that a turn ends when its time is up.
 *
 * The decisions themselves are pacer.c's (and why they are what they are is
 * written there and in include/vgpu_arbiter.h); this file carries them out
 * with the real clock, CUDA events and the driver.
 */
#ifndef VGPU_LIMITER_H
#define VGPU_LIMITER_H

#include <stdint.h>

#include "driver_abi.h"

struct vgpu_launch {
    int entry;  /* region device entry, -1 if unknown */
    int paced;  /* 1 if this launch went through the pacer (its lock is held) */
};

/* Before the driver's launch: may wait for this process's turn. */
CUresult vgpu_launch_enter(CUstream stream, int per_thread, struct vgpu_launch *l);
/* After it: releases what enter took; records progress markers. */
void vgpu_launch_exit(const struct vgpu_launch *l, CUstream stream, int per_thread, CUresult r);

/* A device got (or lost) a live context in this process. */
void vgpu_limiter_device_active(int entry);

/* Statistics for the monitor: launches and GPU time in turns, per entry. */
uint64_t vgpu_limiter_launches(int entry);
uint64_t vgpu_limiter_busy_ns(int entry);
int vgpu_limiter_capped(int entry);
/* Whether this process has had a context on the device. */
int vgpu_limiter_active(int entry);

/* The statistics thread's turn to measure power headroom (power.h) on a
 * device; returns the charge scale it found (1024 = none, 0 = not known). */
uint32_t vgpu_limiter_sample_power(int entry, uint64_t now_ns);

void vgpu_limiter_reset_after_fork(void);

#endif
