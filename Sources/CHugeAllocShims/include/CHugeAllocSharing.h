/*
 * Sharing between processes: Unix sockets carrying file descriptors
 * (SCM_RIGHTS), the peer's credentials (SO_PEERCRED) and process file
 * descriptors (pidfd_open). The control-message macros (CMSG_*) are macros,
 * which Swift cannot call, so the message assembly lives here.
 */
#ifndef CHUGEALLOC_SHARING_H
#define CHUGEALLOC_SHARING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The most descriptors one message carries. */
#define HA_SHARE_MAX_FDS 8

/* A SOCK_SEQPACKET Unix socket, close-on-exec. -1 with errno set. */
int ha_share_socket(void);
/* bind(2) + listen(2) at `path`; 0 or -1 with errno set. */
int ha_share_listen(int fd, const char *path, int backlog);
/* accept4(2), close-on-exec. */
int ha_share_accept(int fd);
/* pipe2(2), close-on-exec and non-blocking. */
int ha_share_pipe(int fds[2]);
/* connect(2) to `path`; 0 or -1 with errno set. */
int ha_share_connect(int fd, const char *path);
/* sendmsg(2) of one message of `length` bytes with `nfds` descriptors
 * (SCM_RIGHTS). Bytes sent or -1 with errno set. */
ssize_t ha_share_send(int fd, const void *bytes, size_t length, const int *fds, int nfds);
/* recvmsg(2) of one message into `bytes` (`capacity` bytes); descriptors
 * passed with it go to `fds` (close-on-exec), their number to `*nfds`.
 * Bytes received (0 at the end of the stream) or -1 with errno set;
 * a truncated message or control data is EMSGSIZE (descriptors closed). */
ssize_t ha_share_receive(int fd, void *bytes, size_t capacity, int *fds, int *nfds);
/* getsockopt(SO_PEERCRED): the connected peer's pid, uid and gid. */
int ha_share_peer(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);
/* pidfd_open(2): a descriptor that polls readable when `pid` exits. */
int ha_pidfd_open(int32_t pid);
/* Sets SO_RCVTIMEO and SO_SNDTIMEO to `milliseconds`. */
int ha_share_timeouts(int fd, int milliseconds);

/* Bytes of a pthread_mutex_t: what a robust mutex in shared memory takes. */
size_t ha_robust_mutex_size(void);
/* pthread_mutex_init(3) of a mutex at `mutex` with PTHREAD_PROCESS_SHARED and
 * PTHREAD_MUTEX_ROBUST. 0 or -1 with errno set. */
int ha_robust_mutex_init(void *mutex);
/* pthread_mutex_lock(3): 0 when taken, 1 when taken from an owner that died
 * (EOWNERDEAD: the caller holds it and repairs, then marks it consistent),
 * -1 with errno set otherwise (ENOTRECOVERABLE: an owner died and the next
 * holder unlocked it without marking it consistent). */
int ha_robust_mutex_lock(void *mutex);
/* pthread_mutex_consistent(3). 0 or -1 with errno set. */
int ha_robust_mutex_consistent(void *mutex);
/* pthread_mutex_unlock(3). 0 or -1 with errno set. */
int ha_robust_mutex_unlock(void *mutex);

#ifdef __cplusplus
}
#endif
#endif
