#include "safe_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Root may own a shared file: a trusted daemon or an image's setup runs as root. */
static int trusted_owner(uid_t uid) { return uid == geteuid() || uid == 0; }

static const char *kind_of(mode_t mode)
{
    if (S_ISLNK(mode))
        return "a symbolic link";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device";
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISSOCK(mode))
        return "a socket";
    return "not a regular file";
}

/* The checks every shared file passes, on what lstat or fstat says. */
static int check(const struct stat *st, const char *path, const char *what, char *err, size_t errlen)
{
    if (!S_ISREG(st->st_mode)) {
        snprintf(err, errlen, "%s %s is %s: refusing it", what, path, kind_of(st->st_mode));
        return -1;
    }
    if (!trusted_owner(st->st_uid)) {
        snprintf(err, errlen, "%s %s belongs to uid %u, not to this user (uid %u) or root: refusing it",
                 what, path, (unsigned)st->st_uid, (unsigned)geteuid());
        return -1;
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(err, errlen, "%s %s is writable by %s (mode %04o): refusing it", what, path,
                 (st->st_mode & S_IWOTH) ? "others" : "its group", (unsigned)(st->st_mode & 07777));
        return -1;
    }
    return 0;
}

int vgpu_open_shared_file(const char *path, int flags, const char *what, char *err, size_t errlen)
{
    /* lstat first, so that a FIFO or a device is never even opened (opening
     * some devices has effects); then open without following a link and
     * without blocking, and check that the file opened is the one looked at. */
    struct stat before, st;
    if (lstat(path, &before) != 0) {
        int saved = errno;
        snprintf(err, errlen, "cannot open %s %s: %s", what, path, strerror(saved));
        errno = saved;
        return -1;
    }
    if (check(&before, path, what, err, errlen) != 0) {
        errno = EPERM;
        return -1;
    }
    int fd = open(path, flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        snprintf(err, errlen, "cannot open %s %s: %s", what, path,
                 saved == ELOOP ? "it is a symbolic link" : strerror(saved));
        errno = saved;
        return -1;
    }
    if (fstat(fd, &st) != 0 || st.st_dev != before.st_dev || st.st_ino != before.st_ino) {
        snprintf(err, errlen, "%s %s was replaced while it was opened: refusing it", what, path);
        close(fd);
        errno = EPERM;
        return -1;
    }
    if (check(&st, path, what, err, errlen) != 0) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

int vgpu_private_dir(const char *dir, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create the directory %s: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (lstat(dir, &st) != 0) {
        snprintf(err, errlen, "cannot use the directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s is %s, not a directory of this user's: refusing it", dir, kind_of(st.st_mode));
        return -1;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen, "the directory %s belongs to uid %u, not to this user (uid %u): refusing it",
                 dir, (unsigned)st.st_uid, (unsigned)geteuid());
        return -1;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, errlen, "the directory %s is open to other users (mode %04o, expected 0700): refusing it",
                 dir, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}
