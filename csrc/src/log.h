/* One-line diagnostics on stderr, filtered by LIBCUDA_LOG_LEVEL. */
#ifndef VGPU_LOG_H
#define VGPU_LOG_H

enum vgpu_log_level {
    VGPU_LOG_OFF = 0,
    VGPU_LOG_ERROR = 1, /* the default: fail-closed reasons are always worth a line */
    VGPU_LOG_WARN = 2,
    VGPU_LOG_INFO = 3,
    VGPU_LOG_DEBUG = 4,
};

#include <stdarg.h>
#include <stddef.h>

void vgpu_log_set_level(int level);
int vgpu_log_enabled(int level);
void vgpu_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Formats one line as vgpu_log writes it (prefix, control characters
 * escaped, a final newline) into line[size], size >= 64; returns its length.
 * For lines that must be ready before they are written (a signal handler's). */
size_t vgpu_log_format(char *line, size_t size, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
size_t vgpu_log_vformat(char *line, size_t size, int level, const char *fmt, va_list ap);

#define VGPU_ERROR(...) vgpu_log(VGPU_LOG_ERROR, __VA_ARGS__)
#define VGPU_WARN(...) vgpu_log(VGPU_LOG_WARN, __VA_ARGS__)
#define VGPU_INFO(...) vgpu_log(VGPU_LOG_INFO, __VA_ARGS__)
#define VGPU_DEBUG(...) vgpu_log(VGPU_LOG_DEBUG, __VA_ARGS__)

#endif
