#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int g_level = VGPU_LOG_ERROR;

/* config.c, where it is linked in (not in some test programs): the level
 * comes from the environment, which is read at the first need. */
void vgpu_config_ensure(void) __attribute__((weak));

void vgpu_log_set_level(int level) { g_level = level; }

int vgpu_log_enabled(int level) { return level <= g_level; }

size_t vgpu_log_vformat(char *line, size_t size, int level, const char *fmt, va_list ap)
{
    static const char *const names[] = {"", "error", "warning", "info", "debug"};
    char raw[512];
    int m = vsnprintf(raw, sizeof raw, fmt, ap);
    size_t raw_len = m < 0 ? 0 : (size_t)m < sizeof raw ? (size_t)m : sizeof raw - 1;
    int n = snprintf(line, size, "libvgpu[%d] %s: ", (int)getpid(), names[level]);
    size_t len = n < 0 ? 0 : (size_t)n;
    /* Messages quote values from the environment and paths: a control
     * character (a newline above all) is written escaped, so that nothing
     * can add lines that look like ours. */
    for (size_t i = 0; i < raw_len && len + 5 < size; i++) {
        unsigned char c = (unsigned char)raw[i];
        if (c < 0x20 || c == 0x7f)
            len += (size_t)snprintf(line + len, size - len, "\\x%02x", c);
        else
            line[len++] = (char)c;
    }
    line[len++] = '\n';
    return len;
}

size_t vgpu_log_format(char *line, size_t size, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t len = vgpu_log_vformat(line, size, level, fmt, ap);
    va_end(ap);
    return len;
}

void vgpu_log(int level, const char *fmt, ...)
{
    if (vgpu_config_ensure)
        vgpu_config_ensure();
    if (level > g_level || level <= VGPU_LOG_OFF)
        return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    size_t len = vgpu_log_vformat(line, sizeof line, level, fmt, ap);
    va_end(ap);
    /* One write() per line so lines of concurrent processes never interleave. */
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
}
