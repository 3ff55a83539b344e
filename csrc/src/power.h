/*
 * Power headroom under `force`: a turn is charged the work it did, not only
 * its length.
 *
 * A GPU that is held to its power limit under full load runs compute-bound
 * work faster when it is busy only part of the time, because its clocks and
 * voltage can rise into the unused power. On an H100 (700 W) alone under a
 * 30% cap, 4096^3 bf16 matmuls took 178 us each at 1980 MHz against 203 us at
 * full load, so 30% of the time bought 33.5% of the throughput the process
 * gets with the GPU to itself, and 70% bought 77.9% (bench/RESULTS.md). A cap
 * promises a share of what the GPU can do, so under `force` a turn is charged
 * its length times the speed-up the headroom gave it.
 *
 * The speed-up is estimated from NVML's energy counter. Over the last few
 * seconds, the GPU's average power P and this process's duty d (its time in
 * turns over wall time) give the power its work would draw at full duty:
 * P_full = P_idle + (P - P_idle) / d. At or below the power limit the work
 * would run just as fast at full duty: nothing more is charged. Above it the
 * GPU would lower clocks and voltage until it fits. Along that curve the
 * power the work adds to the GPU's (P - P_idle, the switching power) grows
 * about as the cube of speed, while P_idle stays; so the speed-up is
 * ((P_full - P_idle) / (limit - P_idle))^(1/3). Memory-bound work draws far less than the limit
 * and is never charged more.
 *
 * P_idle here is the GPU's power between turns, not at rest. Gaps of a few
 * milliseconds are too short for the GPU to leave its working clocks, so it
 * draws more there than the power read when the meter opens (the GPU idle
 * before the first capped launch). On an H100 a duty sweep of matmuls (200,
 * 372 and 660 W at 10, 30 and 70%) extrapolates to 114-156 W at no duty,
 * against about 70 W at rest; and an error in P_idle is multiplied by 1/d
 * in P_full: at 30% the rest reading alone put a sync loop and a CUDA graph
 * (which gain at most 2% from the headroom) at 830-890 W and over-charged
 * them by 6-9%. So the gap is taken as the rest reading plus 10% of the
 * power limit (VGPU_POWER_GAP_ALLOWANCE).
 *
 * It applies only while this process is the GPU's only user (otherwise P
 * holds others' work too), and not at all without NVML's energy counter or
 * with LIBVGPU_POWER_AWARE=0.
 */
#ifndef VGPU_POWER_H
#define VGPU_POWER_H

#include <stdint.h>

#include "driver_abi.h"

#define VGPU_SCALE_ONE 1024u   /* charge scales are fixed point: 1024 = 1.0 */
#define VGPU_SCALE_MAX 2048u
#define VGPU_POWER_GAP_ALLOWANCE 0.10 /* between turns: power at rest + this share of the limit */
#define VGPU_POWER_SAMPLES 9   /* 4 s of 0.5 s samples: NVML's counter moves only every 100 ms */

/* The charge scale for work that kept the GPU at `avg_w` on average while
 * this process was in turns `duty` (0..1) of the time. */
uint32_t vgpu_power_scale(double avg_w, double duty, double idle_w, double limit_w);

struct vgpu_power_sample {
    uint64_t at_ns, energy_mj, busy_ns;
};

struct vgpu_power_meter {
    int usable;
    nvmlDevice_t dev;
    double limit_w, open_w, idle_w; /* idle_w: between turns (see above) */
    double last_avg_w, last_duty;    /* the last window's, for the exit report */
    uint32_t last_scale;
    struct vgpu_power_sample ring[VGPU_POWER_SAMPLES];
    int count, next;
};

/* power_meter.c: the same fed from NVML. */

/* Opens the meter for a GPU, before this process's first capped launch: the
 * power read then is the GPU's power at rest. */
void vgpu_power_meter_open(struct vgpu_power_meter *m, const unsigned char uuid[16]);

/* Takes a sample (the monitor's, every 0.5 s) given this process's total
 * time in turns, and returns the charge scale to use now, or 0 while it is
 * not known yet. */
uint32_t vgpu_power_meter_sample(struct vgpu_power_meter *m, uint64_t now_ns, uint64_t busy_ns);

/* The arithmetic of a window of samples, apart from NVML: the scale, or 0
 * (not known yet) while the window is shorter than 1 s. */
uint32_t vgpu_power_window_scale(const struct vgpu_power_sample *oldest, const struct vgpu_power_sample *newest,
                                 double idle_w, double limit_w);

#endif
