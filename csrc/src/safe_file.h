/*
 * Opening the files that processes share (the slice's region, the turn
 * files) so that nobody else can plant them: no links followed, no FIFO or
 * device ever opened (so no open blocks), and only regular files that this
 * user (or root) owns and that nobody else may write.
 */
#ifndef VGPU_SAFE_FILE_H
#define VGPU_SAFE_FILE_H

#include <stddef.h>

/* Opens an existing shared file with flags (O_RDWR or O_RDONLY) after the
 * checks above. Returns the descriptor, or -1 with a one-line reason in err
 * ("what" names the file in it, e.g. "the shared region"). When the file
 * does not exist, errno is ENOENT so that the caller may create it. */
int vgpu_open_shared_file(const char *path, int flags, const char *what, char *err, size_t errlen);

/* Makes sure dir is a directory of this user's that only this user can use
 * (created 0700 if missing): the home of the default region and turn files.
 * Returns 0, or -1 with a one-line reason in err. */
int vgpu_private_dir(const char *dir, char *err, size_t errlen);

#endif
