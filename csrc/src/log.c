#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int g_level = VGPU_LOG_ERROR;

void vgpu_log_set_level(int level) { g_level = level; }

int vgpu_log_enabled(int level) { return level <= g_level; }

void vgpu_log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"", "error", "warning", "info", "debug"};
    if (level > g_level || level <= VGPU_LOG_OFF)
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "libvgpu[%d] %s: ", (int)getpid(), names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write() per line so lines of concurrent processes never interleave. */
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}
