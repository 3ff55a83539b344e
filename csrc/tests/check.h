/* The smallest test harness that does the job: a failed check prints where
 * and why, and the case exits non-zero. */
#ifndef VGPU_CHECK_H
#define VGPU_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Runs the case named on the command line; lists the cases otherwise. */
static inline int run_case(int argc, char **argv, const struct test_case *cases, size_t n)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    for (size_t i = 0; argc == 2 && i < n; i++) {
        if (strcmp(argv[1], cases[i].name) == 0) {
            cases[i].run();
            printf("PASS %s\n", argv[1]);
            return 0;
        }
    }
    fprintf(stderr, "usage: %s CASE\ncases:", argv[0]);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %s", cases[i].name);
    fputc('\n', stderr);
    return 2;
}

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)

#endif
