#include "trusted.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

#define MAX_FILE 65536

static int bad(char *err, size_t errlen, const char *path, int line, const char *what)
{
    snprintf(err, errlen, "the slice file %s, line %d: %s", path, line, what);
    return -1;
}

/* NAME or NAME_<0..15>: the device index, -1 for the bare name, -2 if not this name. */
static int device_of(const char *name, const char *base)
{
    size_t n = strlen(base);
    if (strncmp(name, base, n) != 0)
        return -2;
    if (name[n] == '\0')
        return -1;
    if (name[n] != '_' || name[n + 1] < '0' || name[n + 1] > '9')
        return -2;
    char *end;
    long i = strtol(name + n + 1, &end, 10);
    return (*end || i >= VGPU_MAX_DEVICES || (name[n + 1] == '0' && name[n + 2])) ? -2 : (int)i;
}

static int set_path(char *out, size_t size, const char *value)
{
    if (value[0] != '/' || strlen(value) >= size)
        return -1;
    snprintf(out, size, "%s", value);
    return 0;
}

static int one_setting(struct vgpu_trusted *t, const char *name, const char *value, uint64_t mem_all[2],
                       uint32_t sm_all[2])
{
    int dev;
    if ((dev = device_of(name, "CUDA_DEVICE_MEMORY_LIMIT")) != -2) {
        uint64_t bytes;
        if (vgpu_parse_size(value, &bytes) != 0)
            return -1;
        if (dev < 0)
            mem_all[0] = 1, mem_all[1] = bytes;
        else
            t->memory_limit[dev] = bytes;
        return 0;
    }
    if ((dev = device_of(name, "CUDA_DEVICE_SM_LIMIT")) != -2) {
        uint32_t percent;
        if (vgpu_parse_percent(value, &percent) != 0)
            return -1;
        percent = percent == 100 ? 0 : percent;
        if (dev < 0)
            sm_all[0] = 1, sm_all[1] = percent;
        else
            t->sm_limit[dev] = percent + 1; /* +1: set, resolved below */
        return 0;
    }
    if (strcmp(name, "GPU_CORE_UTILIZATION_POLICY") == 0) {
        if (strcasecmp(value, "default") == 0)
            t->policy = VGPU_POLICY_DEFAULT;
        else if (strcasecmp(value, "force") == 0)
            t->policy = VGPU_POLICY_FORCE;
        else if (strcasecmp(value, "disable") == 0)
            t->policy = VGPU_POLICY_DISABLE;
        else
            return -1;
        return 0;
    }
    if (strcmp(name, "CUDA_DEVICE_MEMORY_SHARED_CACHE") == 0)
        return set_path(t->region_path, sizeof t->region_path, value);
    if (strcmp(name, "LIBVGPU_ARBITER_DIR") == 0)
        return set_path(t->arbiter_dir, sizeof t->arbiter_dir - 64, value);
    if (strcmp(name, "LIBVGPU_ARBITER_SOCKET") == 0)
        return set_path(t->arbiter_socket, 108, value); /* sockaddr_un's sun_path */
    return -2;
}

static int parse(char *text, const char *path, struct vgpu_trusted *t, char *err, size_t errlen)
{
    uint64_t mem_all[2] = {0, VGPU_UNLIMITED};
    uint32_t sm_all[2] = {0, 0};
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        t->memory_limit[i] = 0; /* 0: not set per device */
        t->sm_limit[i] = 0;
    }
    int line = 0;
    for (char *p = text; *p;) {
        char *end = strchr(p, '\n');
        if (end)
            *end = '\0';
        line++;
        if (*p && *p != '#') {
            char *eq = strchr(p, '=');
            if (!eq)
                return bad(err, errlen, path, line, "expected NAME=VALUE");
            *eq = '\0';
            int r = one_setting(t, p, eq + 1, mem_all, sm_all);
            if (r == -2)
                return bad(err, errlen, path, line, "not a setting libvgpu takes from this file");
            if (r != 0)
                return bad(err, errlen, path, line, "malformed value (the environment's language)");
        }
        if (!end)
            break;
        p = end + 1;
    }
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        t->memory_limit[i] = t->memory_limit[i] ? t->memory_limit[i] : mem_all[1];
        t->sm_limit[i] = t->sm_limit[i] ? t->sm_limit[i] - 1 : sm_all[1];
    }
    return 0;
}

int vgpu_trusted_read(const char *path, struct vgpu_trusted *t, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    t->policy = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return 0;
    if (fd < 0) {
        snprintf(err, errlen, "cannot read the slice file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    char *text = NULL;
    int result = -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "the slice file %s is not a regular file: refusing it", path);
    } else if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH))) {
        snprintf(err, errlen, "the slice file %s must belong to root and be writable by nobody else "
                 "(uid %u, mode %04o): refusing it", path, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    } else if (st.st_size > MAX_FILE || !(text = malloc((size_t)st.st_size + 1))) {
        snprintf(err, errlen, "the slice file %s is too large", path);
    } else {
        ssize_t n = pread(fd, text, (size_t)st.st_size, 0);
        if (n < 0) {
            snprintf(err, errlen, "cannot read the slice file %s: %s", path, strerror(errno));
        } else {
            text[n] = '\0';
            if (strlen(text) != (size_t)n)
                snprintf(err, errlen, "the slice file %s holds a NUL byte", path);
            else
                result = parse(text, path, t, err, errlen) == 0 ? 1 : -1;
        }
    }
    free(text);
    close(fd);
    return result;
}
