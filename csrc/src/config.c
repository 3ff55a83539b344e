#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "trusted.h"
#include "vgpu_arbd.h"

static struct vgpu_config g_config;
static pthread_once_t g_loaded = PTHREAD_ONCE_INIT;

static void load(void);

void vgpu_config_ensure(void) { pthread_once(&g_loaded, load); }

const struct vgpu_config *vgpu_config(void)
{
    vgpu_config_ensure();
    return &g_config;
}

/* At most 20 digits: every value below 2^64 fits, and a longer spelling
 * (leading zeros included) is refused the same way by hami_kernel/slice.py. */
#define SIZE_DIGITS 20

int vgpu_parse_size(const char *text, uint64_t *bytes)
{
    const char *p = text;
    uint64_t value = 0;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (p - text >= SIZE_DIGITS || value > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return -1;
        value = value * 10 + (uint64_t)(*p - '0');
    }
    unsigned shift = 0;
    switch (*p) {
    case '\0': break;
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    case 't': case 'T': shift = 40; p++; break;
    default: return -1;
    }
    if (*p != '\0' || value == 0 || value > (UINT64_MAX >> shift))
        return -1;
    value <<= shift;
    if (value == VGPU_UNLIMITED) /* the region's "no limit": not a size */
        return -1;
    *bytes = value;
    return 0;
}

int vgpu_parse_percent(const char *text, uint32_t *percent)
{
    /* One to three ASCII digits, nothing else: no sign, no space, no "%". */
    uint32_t value = 0;
    const char *p = text;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (p - text >= 3)
            return -1;
        value = value * 10 + (uint32_t)(*p - '0');
    }
    if (p == text || *p != '\0' || value > 100)
        return -1;
    *percent = value;
    return 0;
}

static void fail(const char *name, const char *value, const char *expected)
{
    if (g_config.broken)
        return; /* keep the first reason: it is the one to fix first */
    g_config.broken = 1;
    snprintf(g_config.error, sizeof g_config.error, "%s='%.80s' is not valid (%s)", name, value,
             expected);
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return (v && *v) ? v : NULL; /* an empty setting counts as unset */
}

/* A limit's variable: set but empty is a mistake (a template that lost its
 * value), never "no limit". NULL when unset. */
static const char *limit_env(const char *name, const char *expected)
{
    const char *v = getenv(name);
    if (v && !*v)
        fail(name, v, expected);
    return (v && *v) ? v : NULL;
}

#define SIZE_EXPECTED "expected a positive size such as 4g, 4096m or a byte count; unset it for no limit"
#define PERCENT_EXPECTED "expected a whole percent from 0 to 100, digits only"

static void size_var(const char *name, uint64_t *out)
{
    const char *v = limit_env(name, SIZE_EXPECTED);
    if (v && vgpu_parse_size(v, out) != 0)
        fail(name, v, SIZE_EXPECTED);
}

static void percent_var(const char *name, uint64_t *out)
{
    const char *v = limit_env(name, PERCENT_EXPECTED);
    uint32_t n;
    if (!v)
        return;
    if (vgpu_parse_percent(v, &n) != 0) {
        fail(name, v, PERCENT_EXPECTED);
        return;
    }
    *out = (n == 100) ? 0 : n; /* 0 and 100 both mean no cap */
}

/* Reads NAME and NAME_0 .. NAME_15 with `read`: the bare name sets every
 * device (else `all` stands), an indexed one overrides it for that CUDA ordinal. */
static void per_device(const char *name, void (*read)(const char *, uint64_t *), uint64_t all,
                       uint64_t out[VGPU_MAX_DEVICES])
{
    read(name, &all);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        char indexed[96];
        snprintf(indexed, sizeof indexed, "%s_%d", name, i);
        out[i] = all;
        read(indexed, &out[i]);
    }
}

static void per_device_percents(const char *name, uint32_t out[VGPU_MAX_DEVICES])
{
    uint64_t wide[VGPU_MAX_DEVICES];
    per_device(name, percent_var, 0, wide);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++)
        out[i] = (uint32_t)wide[i];
}

static void load(void)
{
    memset(&g_config, 0, sizeof g_config);
    for (int i = 0; i < VGPU_MAX_DEVICES; i++)
        g_config.memory_ceiling[i] = VGPU_UNLIMITED;

    const char *level = env("LIBCUDA_LOG_LEVEL");
    if (level) {
        char *end;
        long n = strtol(level, &end, 10);
        vgpu_log_set_level((*end || n < 0) ? VGPU_LOG_ERROR : (int)(n > 4 ? 4 : n));
    }

    per_device("CUDA_DEVICE_MEMORY_LIMIT", size_var, VGPU_UNLIMITED, g_config.memory_limit);
    per_device("LIBVGPU_PROCESS_MEMORY_LIMIT", size_var, 0, g_config.process_memory_limit);
    per_device_percents("CUDA_DEVICE_SM_LIMIT", g_config.sm_limit);
    per_device_percents("LIBVGPU_PROCESS_SM_LIMIT", g_config.process_sm_limit);
    size_var("LIBVGPU_CONTEXT_SIZE", &g_config.context_size);

    const char *policy = limit_env("GPU_CORE_UTILIZATION_POLICY", "expected default, force or disable");
    if (!policy || strcasecmp(policy, "default") == 0)
        g_config.policy = VGPU_POLICY_DEFAULT;
    else if (strcasecmp(policy, "force") == 0)
        g_config.policy = VGPU_POLICY_FORCE;
    else if (strcasecmp(policy, "disable") == 0)
        g_config.policy = VGPU_POLICY_DISABLE;
    else
        fail("GPU_CORE_UTILIZATION_POLICY", policy, "expected default, force or disable");

    g_config.share_period_ns = 20000000u;
    const char *period = env("LIBVGPU_SHARE_PERIOD_MS");
    if (period) {
        char *end;
        errno = 0;
        long ms = strtol(period, &end, 10);
        if (errno || *end || ms < 5 || ms > 1000 || period[0] < '0' || period[0] > '9')
            fail("LIBVGPU_SHARE_PERIOD_MS", period, "expected whole milliseconds from 5 to 1000");
        else
            g_config.share_period_ns = (uint64_t)ms * 1000000u;
    }

    g_config.power_aware = 1;
    const char *aware = env("LIBVGPU_POWER_AWARE");
    if (aware && strcmp(aware, "0") != 0 && strcmp(aware, "1") != 0)
        fail("LIBVGPU_POWER_AWARE", aware, "expected 1 (on, the default) or 0 (off)");
    else if (aware)
        g_config.power_aware = aware[0] == '1';

    g_config.gpu_timed_turns = 0;
    const char *charge = env("LIBVGPU_TURN_CHARGE");
    if (charge && strcmp(charge, "host") != 0 && strcmp(charge, "gpu") != 0)
        fail("LIBVGPU_TURN_CHARGE", charge, "expected host (the default) or gpu");
    else if (charge)
        g_config.gpu_timed_turns = strcmp(charge, "gpu") == 0;

    /* Without settings, the region and the turn files live in a directory
     * of this user's own that nobody else can plant files in (safe_file.h). */
    snprintf(g_config.default_dir, sizeof g_config.default_dir, "/tmp/libvgpu.%u", (unsigned)geteuid());
    const char *path = env("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    if (path && strlen(path) >= sizeof g_config.region_path)
        fail("CUDA_DEVICE_MEMORY_SHARED_CACHE", path, "path too long");
    else if (path)
        snprintf(g_config.region_path, sizeof g_config.region_path, "%s", path);
    else
        snprintf(g_config.region_path, sizeof g_config.region_path, "%s/region", g_config.default_dir);
    g_config.region_default = !path;

    const char *arbiter = env("LIBVGPU_ARBITER_DIR");
    if (arbiter && strlen(arbiter) >= sizeof g_config.arbiter_dir - 64)
        fail("LIBVGPU_ARBITER_DIR", arbiter, "path too long");
    snprintf(g_config.arbiter_dir, sizeof g_config.arbiter_dir, "%s", arbiter ? arbiter : g_config.default_dir);
    g_config.arbiter_default = !arbiter;

    const char *sock = env("LIBVGPU_ARBITER_SOCKET");
    if (sock && (sock[0] != '/' || strlen(sock) >= sizeof g_config.arbiter_socket))
        fail("LIBVGPU_ARBITER_SOCKET", sock, "expected an absolute path of at most 107 bytes");
    else if (sock)
        snprintf(g_config.arbiter_socket, sizeof g_config.arbiter_socket, "%s", sock);
    else if (access(VGPU_ARBD_SOCKET_DEFAULT, F_OK) == 0)
        snprintf(g_config.arbiter_socket, sizeof g_config.arbiter_socket, "%s", VGPU_ARBD_SOCKET_DEFAULT);

    const char *identity = env("LIBVGPU_IDENTITY");
    snprintf(g_config.identity, sizeof g_config.identity, "%s", identity ? identity : "");
}

static uint64_t min_size(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* A compute cap: 0 is none, so the tighter of two is the smaller nonzero one. */
static uint32_t tighter_share(uint32_t a, uint32_t b) { return !a ? b : !b ? a : a < b ? a : b; }

int vgpu_config_apply_trusted(const char *path)
{
    static int applied;
    if (applied)
        return g_config.broken ? -1 : 0;
    applied = 1;
    struct vgpu_trusted t;
    char err[512];
    int found = vgpu_trusted_read(path, &t, err, sizeof err);
    if (found < 0) {
        g_config.broken = 1;
        snprintf(g_config.error, sizeof g_config.error, "%s", err);
        return -1;
    }
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        g_config.memory_ceiling[i] = found ? t.memory_limit[i] : VGPU_UNLIMITED;
        g_config.sm_ceiling[i] = found ? t.sm_limit[i] : 0;
    }
    if (!found)
        return 0;
    /* The environment may only tighten what root set. */
    g_config.trusted = 1;
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        g_config.memory_limit[i] = min_size(g_config.memory_limit[i], t.memory_limit[i]);
        g_config.sm_limit[i] = tighter_share(g_config.sm_limit[i], t.sm_limit[i]);
    }
    if (t.policy >= 0 && !(t.policy != VGPU_POLICY_FORCE && g_config.policy == VGPU_POLICY_FORCE))
        g_config.policy = t.policy; /* the environment may only ask for force */
    /* The slice's region and turn files are root's choice (or the private
     * defaults): pointing elsewhere would start a second, fresh slice. */
    if (t.region_path[0])
        snprintf(g_config.region_path, sizeof g_config.region_path, "%s", t.region_path);
    else
        snprintf(g_config.region_path, sizeof g_config.region_path, "%s/region", g_config.default_dir);
    g_config.region_default = !t.region_path[0];
    snprintf(g_config.arbiter_dir, sizeof g_config.arbiter_dir, "%s", t.arbiter_dir[0] ? t.arbiter_dir : g_config.default_dir);
    g_config.arbiter_default = !t.arbiter_dir[0];
    if (t.arbiter_socket[0]) {
        snprintf(g_config.arbiter_socket, sizeof g_config.arbiter_socket, "%s", t.arbiter_socket);
        g_config.arbiter_socket_trusted = 1;
    }
    return 0;
}
