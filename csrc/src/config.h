/*
 * Everything libvgpu reads from the environment, parsed once, at the first
 * CUDA or NVML call: hot paths never call getenv. A malformed value marks the whole
 * configuration broken; CUDA calls then fail (fail closed), never run unlimited.
 */
#ifndef VGPU_CONFIG_H
#define VGPU_CONFIG_H

#include <stdint.h>

#include "vgpu_region.h"

enum vgpu_policy {
    VGPU_POLICY_DEFAULT = 0, /* work-conserving compute share */
    VGPU_POLICY_FORCE = 1,   /* the share is a hard cap */
    VGPU_POLICY_DISABLE = 2, /* no compute cap */
};

struct vgpu_config {
    int broken;
    char error[640];
    /* Indexed by the CUDA device ordinal this process sees. */
    uint64_t memory_limit[VGPU_MAX_DEVICES];         /* VGPU_UNLIMITED when unset */
    uint64_t process_memory_limit[VGPU_MAX_DEVICES]; /* 0 = none */
    uint32_t sm_limit[VGPU_MAX_DEVICES];             /* percent, 0 = none */
    uint32_t process_sm_limit[VGPU_MAX_DEVICES];     /* percent, 0 = none */
    int policy;
    uint64_t share_period_ns; /* force: the period whose share% is a turn */
    int power_aware;          /* force: charge turns for the power headroom they used (power.h) */
    int gpu_timed_turns;      /* charge a turn the GPU's span of its work, timed with events (pacer.h) */
    uint64_t context_size; /* 0 = measure it */
    char region_path[4096];
    char arbiter_dir[4096];
    /* The trusted arbiter daemon's socket (vgpu_arbd.h): the slice file's, the
     * environment's, or the default path when it exists; "" = none. */
    char arbiter_socket[108];
    int arbiter_socket_trusted; /* it came from root's slice file */
    char default_dir[64];  /* /tmp/libvgpu.<euid>: private, 0700 */
    int region_default;    /* region_path is in default_dir */
    int arbiter_default;   /* arbiter_dir is default_dir */
    /* Root's slice (trusted.h), once applied: the environment only tightens it. */
    int trusted;
    uint64_t memory_ceiling[VGPU_MAX_DEVICES]; /* VGPU_UNLIMITED: none */
    uint32_t sm_ceiling[VGPU_MAX_DEVICES];     /* 0: none */
    char identity[VGPU_IDENTITY_LEN];
};


/* Applies root's slice file (trusted.h) if there is one: its limits become
 * ceilings the environment may only tighten, and its region and turn
 * directory stand. Runs once, at the first CUDA or NVML call (never at
 * load). -1 if the file cannot be trusted: the configuration is broken. */
int vgpu_config_apply_trusted(const char *path);

/* The process-wide configuration, parsed from the environment at the first
 * call (the first CUDA or NVML call, or the first log line), never at load:
 * a process that never touches CUDA runs none of libvgpu's code. */
const struct vgpu_config *vgpu_config(void);
void vgpu_config_ensure(void);

/* The languages of the limit variables, shared with hami_kernel/slice.py
 * (one table of cases tests both: tests/data/env_language.json).
 *
 * Sizes: "20480m", "4g", "1073741824": 1 to 20 ASCII digits with an optional
 * k/m/g/t suffix (either case, 1024-based), from 1 byte to 2^64 - 2.
 * Percents: 1 to 3 ASCII digits, 0 to 100. No sign, space or other unit.
 * Both return 0 on success and -1 on anything else. */
int vgpu_parse_size(const char *text, uint64_t *bytes);
int vgpu_parse_percent(const char *text, uint32_t *percent);

#endif
