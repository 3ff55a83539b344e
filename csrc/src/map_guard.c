#include "map_guard.h"

#include "log.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUARDS 40 /* the region and one turn file per device, with room */

struct guard {
    _Atomic uintptr_t start; /* 0 = unused */
    size_t len;
    void (*lost)(void);
    char line[600];
    size_t line_len;
};

static struct guard g_guards[GUARDS];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction g_previous;
static int g_installed;

static void pass_on(int sig, siginfo_t *info, void *context)
{
    if (g_previous.sa_flags & SA_SIGINFO) {
        g_previous.sa_sigaction(sig, info, context);
        return;
    }
    if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
        g_previous.sa_handler(sig);
        return;
    }
    /* The default action: die of SIGBUS, as without us. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    uintptr_t addr = (uintptr_t)info->si_addr;
    if (info->si_code > 0) { /* raised by the kernel for a fault, not sent */
        for (int i = 0; i < GUARDS; i++) {
            struct guard *g = &g_guards[i];
            uintptr_t start = atomic_load(&g->start);
            if (start == 0 || addr < start || addr - start >= g->len)
                continue;
            /* The file is shorter than the mapping: put private zeros in its
             * place so the access that faulted (and any later one) lands. */
            mmap((void *)start, g->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (atomic_exchange(&g->start, 0) != 0) {
                ssize_t ignored = 0;
                if (vgpu_log_enabled(VGPU_LOG_ERROR))
                    ignored = write(STDERR_FILENO, g->line, g->line_len);
                (void)ignored;
                if (g->lost)
                    g->lost();
            }
            return;
        }
    }
    pass_on(sig, info, context);
}

int vgpu_map_guard_add(void *addr, size_t len, const char *what, const char *path, void (*lost)(void))
{
    pthread_mutex_lock(&g_lock);
    if (!g_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        g_installed = sigaction(SIGBUS, &sa, &g_previous) == 0;
    }
    int slot = -1;
    for (int i = 0; i < GUARDS && slot < 0; i++)
        if (atomic_load(&g_guards[i].start) == 0)
            slot = i;
    if (slot >= 0) {
        struct guard *g = &g_guards[slot];
        g->len = len;
        g->lost = lost;
        g->line_len = vgpu_log_format(g->line, sizeof g->line, VGPU_LOG_ERROR,
                                      "%s %s was truncated while in use; CUDA calls will fail until this "
                                      "process restarts",
                                      what, path);
        atomic_store(&g->start, (uintptr_t)addr);
    }
    pthread_mutex_unlock(&g_lock);
    return slot >= 0 && g_installed ? 0 : -1;
}

void vgpu_map_guard_remove(void *addr)
{
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < GUARDS; i++) {
        uintptr_t expected = (uintptr_t)addr;
        atomic_compare_exchange_strong(&g_guards[i].start, &expected, 0);
    }
    pthread_mutex_unlock(&g_lock);
}
