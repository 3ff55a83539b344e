/*
 * Surviving a shared file that is truncated while it is mapped.
 *
 * Touching a page of a MAP_SHARED mapping past the end of its file raises
 * SIGBUS, which kills the process. Ownership and mode checks (safe_file.h)
 * keep other users from truncating our files, but the same user can still
 * do it, by mistake or not. So the region and the turn files are mapped
 * under a guard: a SIGBUS at an address inside a guarded mapping replaces
 * that mapping with zero-filled private memory (so the faulting access
 * completes), writes one line to stderr, and calls the mapping's `lost`
 * hook, which fails the library closed. Zeros are never a valid header, so
 * every later check of the mapping sees it as broken too.
 *
 * A SIGBUS anywhere else goes to the handler the program had before (or the
 * default action). A program that installs its own SIGBUS handler after us
 * takes precedence, and gets today's behaviour.
 */
#ifndef VGPU_MAP_GUARD_H
#define VGPU_MAP_GUARD_H

#include <stddef.h>

/* Guards [addr, addr + len). `lost` runs in the signal handler: it must be
 * async-signal-safe. 0 on success, -1 if the guard table is full (the
 * mapping then works unguarded). */
int vgpu_map_guard_add(void *addr, size_t len, const char *what, const char *path, void (*lost)(void));

/* Stops guarding the mapping that starts at addr (before unmapping it). */
void vgpu_map_guard_remove(void *addr);

#endif
