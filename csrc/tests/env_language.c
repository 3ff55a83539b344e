/*
 * Prints what libvgpu's configuration makes of one variable of the
 * environment: "ok BYTES", "ok PERCENT", "ok none" (no cap) or "error
 * MESSAGE". tests/test_env_language.py runs it over the table of cases that
 * hami_kernel/slice.py's parsers must agree with (tests/data/env_language.json).
 *
 * Run as: NAME=VALUE env_language NAME
 */
#include <stdio.h>
#include <string.h>

#include "config.h"

static int print_size(uint64_t v)
{
    printf("ok %llu\n", (unsigned long long)v);
    return 0;
}

static int print_percent(uint32_t v)
{
    if (v == 0)
        printf("ok none\n");
    else
        printf("ok %u\n", v);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: NAME=VALUE %s NAME\n", argv[0]);
        return 2;
    }
    const struct vgpu_config *c = vgpu_config();
    if (c->broken) {
        printf("error %s\n", c->error);
        return 0;
    }
    const char *name = argv[1];
    if (strncmp(name, "CUDA_DEVICE_MEMORY_LIMIT", 24) == 0)
        return print_size(c->memory_limit[0]);
    if (strcmp(name, "LIBVGPU_PROCESS_MEMORY_LIMIT") == 0)
        return print_size(c->process_memory_limit[0]);
    if (strncmp(name, "CUDA_DEVICE_SM_LIMIT", 20) == 0)
        return print_percent(c->sm_limit[0]);
    if (strcmp(name, "LIBVGPU_PROCESS_SM_LIMIT") == 0)
        return print_percent(c->process_sm_limit[0]);
    fprintf(stderr, "env_language does not know %s\n", name);
    return 2;
}
