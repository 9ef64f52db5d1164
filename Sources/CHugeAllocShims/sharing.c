#ifndef _GNU_SOURCE
#error "CHugeAllocShims is built with -D_GNU_SOURCE (Package.swift)"
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include "CHugeAllocSharing.h"

static int fill_address(struct sockaddr_un *address, const char *path) {
    size_t length = strlen(path);
    if (length >= sizeof(address->sun_path)) { errno = ENAMETOOLONG; return -1; }
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, length + 1);
    return 0;
}

int ha_share_socket(void) {
    return socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
}

int ha_share_listen(int fd, const char *path, int backlog) {
    struct sockaddr_un address;
    if (fill_address(&address, path) != 0) return -1;
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) != 0) return -1;
    return listen(fd, backlog);
}

int ha_share_accept(int fd) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC);
}

int ha_share_pipe(int fds[2]) {
    return pipe2(fds, O_CLOEXEC | O_NONBLOCK);
}

int ha_share_connect(int fd, const char *path) {
    struct sockaddr_un address;
    if (fill_address(&address, path) != 0) return -1;
    int rc;
    do { rc = connect(fd, (struct sockaddr *)&address, sizeof(address)); } while (rc != 0 && errno == EINTR);
    return rc;
}

ssize_t ha_share_send(int fd, const void *bytes, size_t length, const int *fds, int nfds) {
    if (nfds < 0 || nfds > HA_SHARE_MAX_FDS) { errno = EINVAL; return -1; }
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int) * HA_SHARE_MAX_FDS)]; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1 };
    if (nfds > 0) {
        message.msg_control = control.space;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&message);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t rc;
    do { rc = sendmsg(fd, &message, MSG_NOSIGNAL); } while (rc < 0 && errno == EINTR);
    return rc;
}

ssize_t ha_share_receive(int fd, void *bytes, size_t capacity, int *fds, int *nfds) {
    struct iovec vector = { .iov_base = bytes, .iov_len = capacity };
    union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int) * HA_SHARE_MAX_FDS)]; } control;
    struct msghdr message = { .msg_iov = &vector, .msg_iovlen = 1,
                              .msg_control = control.space, .msg_controllen = sizeof(control.space) };
    *nfds = 0;
    ssize_t rc;
    do { rc = recvmsg(fd, &message, MSG_CMSG_CLOEXEC); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return rc;
    int count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c != NULL; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *received = (int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++) {
            if (count < HA_SHARE_MAX_FDS) fds[count++] = received[i];
            else close(received[i]);
        }
    }
    *nfds = count;
    if (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        for (int i = 0; i < count; i++) close(fds[i]);
        *nfds = 0;
        errno = EMSGSIZE;
        return -1;
    }
    return rc;
}

int ha_share_peer(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

int ha_pidfd_open(int32_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    return (int)syscall(434, pid, 0);
#endif
}

int ha_share_timeouts(int fd, int milliseconds) {
    struct timeval t = { .tv_sec = milliseconds / 1000, .tv_usec = (milliseconds % 1000) * 1000 };
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof(t)) != 0) return -1;
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof(t));
}

/* pthread calls return the error number; these return -1 with errno set,
 * as every other shim does. */
static int as_errno(int rc) {
    if (rc == 0) return 0;
    errno = rc;
    return -1;
}

size_t ha_robust_mutex_size(void) {
    return sizeof(pthread_mutex_t);
}

int ha_robust_mutex_init(void *mutex) {
    pthread_mutexattr_t attributes;
    int rc = pthread_mutexattr_init(&attributes);
    if (rc == 0) rc = pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init((pthread_mutex_t *)mutex, &attributes);
    pthread_mutexattr_destroy(&attributes);
    return as_errno(rc);
}

int ha_robust_mutex_lock(void *mutex) {
    int rc = pthread_mutex_lock((pthread_mutex_t *)mutex);
    if (rc == EOWNERDEAD) return 1;
    return as_errno(rc);
}

int ha_robust_mutex_consistent(void *mutex) {
    return as_errno(pthread_mutex_consistent((pthread_mutex_t *)mutex));
}

int ha_robust_mutex_unlock(void *mutex) {
    return as_errno(pthread_mutex_unlock((pthread_mutex_t *)mutex));
}
