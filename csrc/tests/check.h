/* The smallest test harness that does the job: a failed check prints where
 * and why, and the case exits non-zero. */
#ifndef VGPU_CHECK_H
#define VGPU_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fputc('\n', stderr);                                                                  \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

#define CHECK_CU(expr, want)                                                                      \
    do {                                                                                          \
        int got_ = (int)(expr);                                                                   \
        CHECK(got_ == (int)(want), "%s returned %d, expected %d", #expr, got_, (int)(want));      \
    } while (0)

struct test_case {
    const char *name;
    void (*run)(void);
};

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)

#endif
