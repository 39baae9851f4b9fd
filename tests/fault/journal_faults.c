/*
 * Fault injection for rollwright's journal, from outside the binary: an
 * LD_PRELOAD library that wraps write(2) and fdatasync(2) on files named
 * journal.jsonl. The shipped binary has no test hook; the tests load this.
 *
 *   RW_FAULT_CRASH_AFTER_SYNCS=N  SIGKILL right after the Nth durable batch
 *                                 (the Nth fdatasync that succeeded).
 *   RW_FAULT_CRASH_AT=TEXT        SIGKILL right after the batch holding a
 *                                 record that contains TEXT became durable.
 *   RW_FAULT_FAIL_AFTER_SYNCS=N   after N durable batches, every further
 *                                 write fails with RW_FAULT_ERRNO (ENOSPC by
 *                                 default; "EIO" to fail fdatasync instead).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fdatasync)(int);
static int syncs;
static int crash_pending;

static int is_journal(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t len = (size_t)n, suffix = strlen("journal.jsonl");
    return len >= suffix && strcmp(path + len - suffix, "journal.jsonl") == 0;
}

static int env_int(const char *name) {
    const char *v = getenv(name);
    return v ? atoi(v) : -1;
}

static int failing(void) {
    int after = env_int("RW_FAULT_FAIL_AFTER_SYNCS");
    return after >= 0 && syncs >= after;
}

ssize_t write(int fd, const void *buf, size_t count) {
    if (!real_write) real_write = dlsym(RTLD_NEXT, "write");
    if (is_journal(fd)) {
        const char *eio = getenv("RW_FAULT_ERRNO");
        if (failing() && !(eio && strcmp(eio, "EIO") == 0)) {
            errno = ENOSPC;
            return -1;
        }
        const char *at = getenv("RW_FAULT_CRASH_AT");
        if (at && memmem(buf, count, at, strlen(at))) crash_pending = 1;
    }
    return real_write(fd, buf, count);
}

int fdatasync(int fd) {
    if (!real_fdatasync) real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    if (!is_journal(fd)) return real_fdatasync(fd);
    if (failing()) {
        errno = EIO;
        return -1;
    }
    int r = real_fdatasync(fd);
    if (r == 0) {
        syncs++;
        if (crash_pending || syncs == env_int("RW_FAULT_CRASH_AFTER_SYNCS")) raise(SIGKILL);
    }
    return r;
}
