#ifndef _GNU_SOURCE
#error "CHugeAllocShims must be built with -D_GNU_SOURCE (see Package.swift)"
#endif

#include "CHugeAllocShims.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mman.h>
#include <linux/memfd.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << MAP_HUGE_SHIFT)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

const int HA_MAP_HUGETLB = MAP_HUGETLB;
const int HA_MAP_HUGE_SHIFT = MAP_HUGE_SHIFT;
const int HA_MAP_HUGE_MASK = MAP_HUGE_MASK;
const int HA_MAP_HUGE_2MB = MAP_HUGE_2MB;
const int HA_MAP_HUGE_1GB = MAP_HUGE_1GB;
const int HA_MAP_POPULATE = MAP_POPULATE;
const int HA_MAP_LOCKED = MAP_LOCKED;
const int HA_MAP_NORESERVE = MAP_NORESERVE;
const int HA_MAP_FIXED_NOREPLACE = MAP_FIXED_NOREPLACE;
const int HA_MFD_CLOEXEC = MFD_CLOEXEC;
const int HA_MFD_HUGETLB = MFD_HUGETLB;
const int HA_MFD_HUGE_SHIFT = MFD_HUGE_SHIFT;
const int HA_MLOCK_ONFAULT = MLOCK_ONFAULT;
const int HA_MADV_DONTFORK = MADV_DONTFORK;
const int HA_MADV_DOFORK = MADV_DOFORK;
const int HA_MADV_POPULATE_WRITE = MADV_POPULATE_WRITE;
const int HA_MREMAP_MAYMOVE = MREMAP_MAYMOVE;
const int HA_MREMAP_FIXED = MREMAP_FIXED;
const int HA_O_TMPFILE = O_TMPFILE;

int ha_memfd_create(const char *name, unsigned int flags) {
    return memfd_create(name, flags);
}

int ha_mlock2(const void *addr, size_t length, unsigned int flags) {
    return mlock2(addr, length, flags);
}

void *ha_mremap_fixed(void *old_address, size_t old_size, size_t new_size,
                      int flags, void *new_address) {
    return mremap(old_address, old_size, new_size, flags, new_address);
}

int ha_punch_hole(int fd, off_t offset, off_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int ha_getcpu(unsigned int *cpu, unsigned int *node) {
    return (int)syscall(SYS_getcpu, cpu, node, NULL);
}

/* ---- SIGBUS-guarded touch --------------------------------------------- */

static _Thread_local sigjmp_buf ha_touch_jmp;
static _Thread_local volatile sig_atomic_t ha_touch_active;
static _Thread_local volatile uintptr_t ha_touch_fault;
static struct sigaction ha_previous_sigbus;
static pthread_once_t ha_sigbus_once = PTHREAD_ONCE_INIT;

static void ha_sigbus_handler(int sig, siginfo_t *info, void *context) {
    if (ha_touch_active) {
        ha_touch_fault = (uintptr_t)info->si_addr;
        siglongjmp(ha_touch_jmp, 1);
    }
    /* Not a guarded touch: hand the signal to whoever had it before. */
    if (ha_previous_sigbus.sa_flags & SA_SIGINFO) {
        if (ha_previous_sigbus.sa_sigaction) {
            ha_previous_sigbus.sa_sigaction(sig, info, context);
            return;
        }
    } else if (ha_previous_sigbus.sa_handler == SIG_IGN) {
        return;
    } else if (ha_previous_sigbus.sa_handler != SIG_DFL) {
        ha_previous_sigbus.sa_handler(sig);
        return;
    }
    /* Default disposition: restore it; the faulting access repeats and the
     * process terminates with SIGBUS as it would have without us. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &dfl, NULL);
}

static void ha_install_sigbus(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = ha_sigbus_handler;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &ha_previous_sigbus);
}

int ha_guarded_touch(void *addr, size_t length, size_t stride, int write,
                     size_t *fault_offset) {
    if (stride == 0) { errno = EINVAL; return -2; }
    pthread_once(&ha_sigbus_once, ha_install_sigbus);
    volatile unsigned char *base = (volatile unsigned char *)addr;
    if (sigsetjmp(ha_touch_jmp, 1) != 0) {
        ha_touch_active = 0;
        if (fault_offset) *fault_offset = (size_t)(ha_touch_fault - (uintptr_t)addr);
        return -1;
    }
    ha_touch_active = 1;
    if (write) {
        for (size_t off = 0; off < length; off += stride) base[off] = base[off];
    } else {
        unsigned char sink = 0;
        for (size_t off = 0; off < length; off += stride) sink ^= base[off];
        (void)sink;
    }
    ha_touch_active = 0;
    return 0;
}

struct ha_touch_job {
    unsigned char *addr;
    size_t length, stride, fault;
    int write, result;
};

static void *ha_touch_thread(void *arg) {
    struct ha_touch_job *job = arg;
    job->result = ha_guarded_touch(job->addr, job->length, job->stride,
                                   job->write, &job->fault);
    return NULL;
}

int ha_parallel_guarded_touch(void *addr, size_t length, size_t stride,
                              int write, unsigned int threads,
                              size_t *fault_offset) {
    if (stride == 0) { errno = EINVAL; return -2; }
    size_t strides = (length + stride - 1) / stride;
    if (threads <= 1 || strides < 2)
        return ha_guarded_touch(addr, length, stride, write, fault_offset);
    if (threads > strides) threads = (unsigned int)strides;
    if (threads > 256) threads = 256;
    struct ha_touch_job jobs[256];
    pthread_t ids[256];
    size_t per = strides / threads, extra = strides % threads, start = 0;
    unsigned int started = 0;
    int status = 0;
    for (unsigned int i = 0; i < threads; i++) {
        size_t count = per + (i < extra ? 1 : 0);
        size_t begin = start * stride;
        size_t end = (start + count) * stride;
        if (end > length) end = length;
        jobs[i] = (struct ha_touch_job){ (unsigned char *)addr + begin,
                                         end - begin, stride, 0, write, 0 };
        start += count;
    }
    /* Job 0 runs on the calling thread; the others on new threads. */
    for (unsigned int i = 1; i < threads; i++) {
        int rc = pthread_create(&ids[i], NULL, ha_touch_thread, &jobs[i]);
        if (rc != 0) { errno = rc; status = -2; break; }
        started = i;
    }
    ha_touch_thread(&jobs[0]);
    for (unsigned int i = 1; i <= started; i++) pthread_join(ids[i], NULL);
    if (status != 0) return status;
    size_t lowest = (size_t)-1;
    for (unsigned int i = 0; i < threads; i++) {
        if (jobs[i].result == -1) {
            size_t off = (size_t)(jobs[i].addr - (unsigned char *)addr) + jobs[i].fault;
            if (off < lowest) lowest = off;
        } else if (jobs[i].result != 0) {
            return jobs[i].result;
        }
    }
    if (lowest != (size_t)-1) {
        if (fault_offset) *fault_offset = lowest;
        return -1;
    }
    return 0;
}

/* ---- fork probe -------------------------------------------------------- */

int ha_child_sees_mapping(void *addr, size_t length) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        unsigned char vec[1];
        long page = sysconf(_SC_PAGESIZE);
        (void)length;
        /* mincore fails with ENOMEM when the range is not mapped. */
        int rc = mincore((void *)((uintptr_t)addr & ~(uintptr_t)(page - 1)),
                         (size_t)page, vec);
        _exit(rc == 0 ? 1 : (errno == ENOMEM ? 0 : 2));
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    if (!WIFEXITED(status)) { errno = ECHILD; return -1; }
    int code = WEXITSTATUS(status);
    if (code == 2) { errno = EIO; return -1; }
    return code;
}

/* ---- per-thread slots -------------------------------------------------- */

_Thread_local uintptr_t ha_tls_slots[HA_TLS_SLOTS];

struct ha_exit_callback {
    void (*fn)(void *);
    void *arg;
    struct ha_exit_callback *next;
};

static pthread_key_t ha_exit_key;
static pthread_once_t ha_exit_once = PTHREAD_ONCE_INIT;

static void ha_run_exit_callbacks(void *head) {
    struct ha_exit_callback *node = head;
    while (node) {
        struct ha_exit_callback *next = node->next;
        node->fn(node->arg);
        free(node);
        node = next;
    }
}

static void ha_make_exit_key(void) {
    pthread_key_create(&ha_exit_key, ha_run_exit_callbacks);
}

int ha_at_thread_exit(void (*fn)(void *), void *arg) {
    pthread_once(&ha_exit_once, ha_make_exit_key);
    struct ha_exit_callback *node = malloc(sizeof *node);
    if (!node) return ENOMEM;
    node->fn = fn;
    node->arg = arg;
    node->next = pthread_getspecific(ha_exit_key);
    return pthread_setspecific(ha_exit_key, node);
}
