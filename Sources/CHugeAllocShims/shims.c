#ifndef _GNU_SOURCE
#error "CHugeAllocShims must be built with -D_GNU_SOURCE (see Package.swift)"
#endif

#include "CHugeAllocShims.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mman.h>
#include <linux/memfd.h>
#include <linux/falloc.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
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
/*
 * hugetlb quotas, cgroup limits and holes in a file arrive as a synchronous
 * SIGBUS when a page is first touched. The guard turns into an error only
 * such a fault (si_code BUS_ADRERR, BUS_ADRALN, BUS_OBJERR or BUS_MCEERR_AR)
 * whose si_addr lies in the range the current thread is touching. Any other
 * SIGBUS (sent by kill(2), tgkill(2) or sigqueue(3), a fault on a thread
 * that is not touching, or outside the range) is handled as if the guard
 * were not installed: see ha_sigbus_forward.
 */

static _Thread_local sigjmp_buf ha_touch_jmp;
static _Thread_local volatile sig_atomic_t ha_touch_active;
static _Thread_local volatile uintptr_t ha_touch_begin;
static _Thread_local volatile size_t ha_touch_length;
static _Thread_local volatile uintptr_t ha_touch_fault;

/* The disposition the guard replaced, in two slots: an installer fills the
 * slot not in use, then publishes its index, so a handler forwarding on
 * another thread never reads a half-written struct. Installers hold the lock. */
static struct sigaction ha_previous_sigbus[2];
static unsigned int ha_previous_slot;
static int ha_sigbus_installed;
static pthread_mutex_t ha_sigbus_lock = PTHREAD_MUTEX_INITIALIZER;

static int ha_sigbus_is_fault(const siginfo_t *info) {
    switch (info->si_code) {
    case BUS_ADRALN:
    case BUS_ADRERR:
    case BUS_OBJERR:
#ifdef BUS_MCEERR_AR
    case BUS_MCEERR_AR:
#endif
        return 1;
    default:   /* SI_USER, SI_TKILL, SI_QUEUE, BUS_MCEERR_AO: not this access */
        return 0;
    }
}

static void ha_sigbus_set_default(int sig) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
}

/* Does what the kernel would have done had the guard not been installed. */
static void ha_sigbus_forward(int sig, siginfo_t *info, void *context, int fault) {
    struct sigaction *slot = &ha_previous_sigbus[__atomic_load_n(&ha_previous_slot, __ATOMIC_ACQUIRE)];
    struct sigaction previous = *slot;
    /* SIG_DFL and SIG_IGN are values of the handler, with SA_SIGINFO or not. */
    if (previous.sa_handler == SIG_IGN) {
        /* An ignored signal is discarded. An ignored fault is not: the kernel
         * resets the disposition and the access, repeated on return, kills. */
        if (fault) ha_sigbus_set_default(sig);
        return;
    }
    if (previous.sa_handler == SIG_DFL) {
        /* Terminate as the default action would. A fault repeats on return,
         * with the kernel's own siginfo; a sent signal does not: raise it
         * again (SA_NODEFER: it is not blocked here). */
        ha_sigbus_set_default(sig);
        if (!fault) raise(sig);
        return;
    }
    /* A function: call it as the kernel would, with its sa_mask (and the
     * signal, unless SA_NODEFER) blocked and SA_RESETHAND honoured. */
    if (previous.sa_flags & SA_RESETHAND)
        __atomic_store_n(&slot->sa_handler, SIG_DFL, __ATOMIC_RELAXED);
    sigset_t blocked = previous.sa_mask, saved;
    if (!(previous.sa_flags & SA_NODEFER)) sigaddset(&blocked, sig);
    pthread_sigmask(SIG_BLOCK, &blocked, &saved);
    if (previous.sa_flags & SA_SIGINFO) previous.sa_sigaction(sig, info, context);
    else previous.sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

static void ha_sigbus_handler(int sig, siginfo_t *info, void *context) {
    int fault = ha_sigbus_is_fault(info);
    if (fault && ha_touch_active) {
        uintptr_t addr = (uintptr_t)info->si_addr;
        if (addr - ha_touch_begin < ha_touch_length) {
            ha_touch_fault = addr;
            siglongjmp(ha_touch_jmp, 1);
        }
    }
    ha_sigbus_forward(sig, info, context, fault);
}

static int ha_sigbus_is_ours(const struct sigaction *action) {
    return (action->sa_flags & SA_SIGINFO) && action->sa_sigaction == ha_sigbus_handler;
}

/*
 * Makes the guard the disposition of SIGBUS unless it already is. Once
 * installed it can be replaced: by signal(SIGBUS, SIG_IGN) in the
 * application, or by our own reset to SIG_DFL. Over SIG_DFL or SIG_IGN it is
 * installed again, forwarding to what it replaces. A handler function set
 * after the guard is left in place: it may forward to the guard, and the
 * guard forwarding back to it would loop; touches are guarded only if it does.
 */
static void ha_sigbus_ensure(void) {
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) == 0 && ha_sigbus_is_ours(&current)) return;
    pthread_mutex_lock(&ha_sigbus_lock);
    if (sigaction(SIGBUS, NULL, &current) == 0 && !ha_sigbus_is_ours(&current)
        && (!ha_sigbus_installed || current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN)) {
        unsigned int next = 1 - __atomic_load_n(&ha_previous_slot, __ATOMIC_RELAXED);
        ha_previous_sigbus[next] = current;
        __atomic_store_n(&ha_previous_slot, next, __ATOMIC_RELEASE);
        struct sigaction action, replaced;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = ha_sigbus_handler;
        /* SA_RESTART and SA_ONSTACK as the replaced disposition had them, so
         * interrupted system calls and stacks see no difference. */
        action.sa_flags = SA_SIGINFO | SA_NODEFER | (current.sa_flags & (SA_RESTART | SA_ONSTACK));
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &replaced) == 0) {
            ha_sigbus_installed = 1;
            if (!ha_sigbus_is_ours(&replaced) && (replaced.sa_handler != current.sa_handler
                                                   || replaced.sa_flags != current.sa_flags)) {
                /* Changed outside the lock in between: forward to what was replaced. */
                next = 1 - next;
                ha_previous_sigbus[next] = replaced;
                __atomic_store_n(&ha_previous_slot, next, __ATOMIC_RELEASE);
            }
        }
    }
    pthread_mutex_unlock(&ha_sigbus_lock);
}

/* Forgets that the guard was installed, for a forked child that starts over
 * (the self-test below). */
static void ha_sigbus_forget(void) {
    pthread_mutex_init(&ha_sigbus_lock, NULL);
    ha_sigbus_installed = 0;
    memset(ha_previous_sigbus, 0, sizeof ha_previous_sigbus);
}

int ha_guarded_touch(void *addr, size_t length, size_t stride, int write,
                     size_t *fault_offset) {
    if (stride == 0) { errno = EINVAL; return -2; }
    ha_sigbus_ensure();
    volatile unsigned char *base = (volatile unsigned char *)addr;
    if (sigsetjmp(ha_touch_jmp, 1) != 0) {
        ha_touch_active = 0;
        if (fault_offset) *fault_offset = (size_t)(ha_touch_fault - (uintptr_t)addr);
        return -1;
    }
    ha_touch_begin = (uintptr_t)addr;
    ha_touch_length = length;
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

/* ---- SIGBUS guard self-test (used by the test suite) ------------------- */
/*
 * Each scenario runs in a forked child, so a scenario that must end with the
 * process killed by SIGBUS, or a regression that spins, cannot take the test
 * runner with it. The child starts as a fresh process would (SIGBUS at its
 * default, no guard installed), installs the disposition the scenario names
 * and records each step it completes in a page shared with the parent. A
 * failed check exits with that step's number.
 */

#define HA_ST_UNEXPECTED_FAULT 90   /* a real in-range fault reached the application */
#define HA_ST_UNEXPECTED_SEGV 91
#define HA_ST_SETUP_FAILED 92

static volatile int *ha_st_steps;
static size_t ha_st_base_page, ha_st_fault_page;
static volatile sig_atomic_t ha_st_calls;       /* the application's handler ran */
static volatile sig_atomic_t ha_st_last_code;   /* si_code it saw (SA_SIGINFO only) */
static int ha_st_fix_fd = -1;                   /* grown by that handler to end a fault outside the range */
static unsigned char *ha_st_trap;               /* PROT_NONE page inside a guarded range */
static unsigned char *ha_st_outside;            /* second page faults; never in a guarded range */
static void (*ha_st_action)(void);              /* runs on the trap's SIGSEGV, inside the touch */
static sem_t ha_st_armed;
static pthread_t ha_st_target;
static volatile sig_atomic_t ha_st_stop;

#define HA_ST_STEP(n, ok) do { if (!(ok)) _exit(n); *ha_st_steps = (n); } while (0)

/* The application's handlers: they count, and say whether they ran. */
static void ha_st_counting_siginfo(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)context;
    ha_st_calls++;
    ha_st_last_code = info->si_code;
    if (info->si_code > 0) {
        /* A fault: expected only outside the guarded range, where growing
         * the file lets the repeated access succeed. */
        if (ha_st_fix_fd < 0 || ftruncate(ha_st_fix_fd, (off_t)(2 * ha_st_base_page)) != 0)
            _exit(HA_ST_UNEXPECTED_FAULT);
    }
}

static void ha_st_counting_plain(int sig) {
    (void)sig;
    ha_st_calls++;
}

static void ha_st_set_sigbus(void (*handler)(int), void (*action)(int, siginfo_t *, void *)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    if (action) { sa.sa_sigaction = action; sa.sa_flags = SA_SIGINFO; }
    else sa.sa_handler = handler;
    if (sigaction(SIGBUS, &sa, NULL) != 0) _exit(HA_ST_SETUP_FAILED);
}

static void ha_st_segv(int sig, siginfo_t *info, void *context) {
    (void)sig; (void)context;
    unsigned char *addr = info->si_addr;
    if (!ha_st_trap || addr < ha_st_trap || addr >= ha_st_trap + ha_st_base_page)
        _exit(HA_ST_UNEXPECTED_SEGV);
    ha_st_action();
    if (mprotect(ha_st_trap, ha_st_base_page, PROT_READ | PROT_WRITE) != 0) _exit(HA_ST_SETUP_FAILED);
}

/* Two pages of `fd` (a one-page memfd of base pages when fd < 0): the
 * second faults with SIGBUS (past the end of the file, or over the quota of
 * a hugetlbfs mount) every time it is touched. */
static unsigned char *ha_st_faulting_map(int fd, size_t page) {
    if (fd < 0) {
        fd = memfd_create("ha-sigbus-selftest", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)page) != 0) _exit(HA_ST_SETUP_FAILED);
    }
    void *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (map == MAP_FAILED) _exit(HA_ST_SETUP_FAILED);
    return map;
}

/* A guarded touch of two pages whose second faults: 1 when the guard
 * reports exactly that page. */
static int ha_st_fault_caught(unsigned char *map) {
    size_t offset = 0;
    return ha_guarded_touch(map, 2 * ha_st_fault_page, ha_st_fault_page, 1, &offset) == -1
        && offset == ha_st_fault_page;
}

static int ha_st_good_touch(void) {
    unsigned char buffer[64];
    size_t offset = 0;
    return ha_guarded_touch(buffer, sizeof buffer, 16, 1, &offset) == 0;
}

/* A guarded touch of four pages in `threads` threads, page `trap` being
 * PROT_NONE: its SIGSEGV runs `action` on the touching thread, in the middle
 * of the guarded touch, then opens the page. Returns the touch's result. */
static int ha_st_trapped_touch(void (*action)(void), unsigned int threads, size_t trap) {
    size_t page = ha_st_base_page, offset = 0;
    unsigned char *range = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (range == MAP_FAILED || mprotect(range + trap * page, page, PROT_NONE) != 0) _exit(HA_ST_SETUP_FAILED);
    ha_st_trap = range + trap * page;
    ha_st_action = action;
    int rc = ha_parallel_guarded_touch(range, 4 * page, page, 1, threads, &offset);
    ha_st_trap = NULL;
    munmap(range, 4 * page);
    return rc;
}

static void ha_st_fault_outside(void) { ((volatile unsigned char *)ha_st_outside)[ha_st_base_page] = 1; }
static void ha_st_kill_process(void) { kill(getpid(), SIGBUS); }
static void ha_st_kill_thread(void) { pthread_kill(pthread_self(), SIGBUS); }
static void ha_st_queue_process(void) { sigqueue(getpid(), SIGBUS, (union sigval){ .sival_int = 7 }); }

/* Lets the sender thread pthread_kill this thread, and waits until the
 * application's handler has run (or 5 s). */
static void ha_st_arm_and_wait(void) {
    sig_atomic_t before = ha_st_calls;
    ha_st_target = pthread_self();
    sem_post(&ha_st_armed);
    struct timespec ms = { 0, 1000000 };
    for (int i = 0; i < 5000 && ha_st_calls == before; i++) nanosleep(&ms, NULL);
}

static void *ha_st_sender(void *arg) {
    (void)arg;
    sigset_t bus;
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    pthread_sigmask(SIG_BLOCK, &bus, NULL);
    for (;;) {
        while (sem_wait(&ha_st_armed) != 0) {}
        if (ha_st_stop) return NULL;
        pthread_kill(ha_st_target, SIGBUS);
    }
}

struct ha_st_toucher { unsigned char *map; int caught; };

static void *ha_st_touch_thread(void *arg) {
    struct ha_st_toucher *t = arg;
    t->caught = ha_st_fault_caught(t->map);
    return NULL;
}

static int ha_st_run(int scenario, int fd, size_t page) {
    ha_sigbus_forget();
    struct rlimit nocore = { 0, 0 };
    setrlimit(RLIMIT_CORE, &nocore);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    ha_st_set_sigbus(SIG_DFL, NULL);
    struct sigaction segv;
    memset(&segv, 0, sizeof segv);
    sigemptyset(&segv.sa_mask);
    segv.sa_sigaction = ha_st_segv;
    segv.sa_flags = SA_SIGINFO;
    if (sigaction(SIGSEGV, &segv, NULL) != 0) _exit(HA_ST_SETUP_FAILED);

    ha_st_base_page = (size_t)sysconf(_SC_PAGESIZE);
    ha_st_fault_page = fd < 0 ? ha_st_base_page : page;
    unsigned char *faulting = ha_st_faulting_map(fd, ha_st_fault_page);
    ha_st_outside = ha_st_faulting_map(-1, ha_st_base_page);

    switch (scenario) {
    case HA_SIGBUS_SELFTEST_IGNORED_AFTER_INSTALL:
        HA_ST_STEP(1, ha_st_good_touch());
        ha_st_set_sigbus(SIG_IGN, NULL);
        HA_ST_STEP(2, ha_st_fault_caught(faulting));
        kill(getpid(), SIGBUS);
        HA_ST_STEP(3, 1);
        HA_ST_STEP(4, ha_st_trapped_touch(ha_st_kill_thread, 1, 0) == 0);
        HA_ST_STEP(5, ha_st_fault_caught(faulting));
        ha_st_fault_outside();
        return 6;

    case HA_SIGBUS_SELFTEST_IGNORED_FROM_START:
        ha_st_set_sigbus(SIG_IGN, NULL);
        HA_ST_STEP(1, ha_st_fault_caught(faulting));
        kill(getpid(), SIGBUS);
        HA_ST_STEP(2, 1);
        ha_st_fault_outside();
        return 3;

    case HA_SIGBUS_SELFTEST_SENT_TO_PREVIOUS:
        ha_st_set_sigbus(NULL, ha_st_counting_siginfo);
        HA_ST_STEP(1, ha_st_good_touch() && ha_st_calls == 0);
        kill(getpid(), SIGBUS);
        HA_ST_STEP(2, ha_st_calls == 1 && ha_st_last_code == SI_USER);
        HA_ST_STEP(3, ha_st_trapped_touch(ha_st_kill_process, 1, 0) == 0
                      && ha_st_calls == 2 && ha_st_last_code == SI_USER);
        HA_ST_STEP(4, ha_st_trapped_touch(ha_st_queue_process, 1, 0) == 0
                      && ha_st_calls == 3 && ha_st_last_code == SI_QUEUE);
        HA_ST_STEP(5, ha_st_fault_caught(faulting) && ha_st_calls == 3);
        return 0;

    case HA_SIGBUS_SELFTEST_THREAD_KILL: {
        ha_st_set_sigbus(ha_st_counting_plain, NULL);
        pthread_t sender;
        if (sem_init(&ha_st_armed, 0, 0) != 0 || pthread_create(&sender, NULL, ha_st_sender, NULL) != 0)
            _exit(HA_ST_SETUP_FAILED);
        /* The calling thread, then the second thread of a parallel touch. */
        HA_ST_STEP(1, ha_st_trapped_touch(ha_st_arm_and_wait, 1, 0) == 0 && ha_st_calls == 1);
        HA_ST_STEP(2, ha_st_trapped_touch(ha_st_arm_and_wait, 2, 2) == 0 && ha_st_calls == 2);
        HA_ST_STEP(3, ha_st_fault_caught(faulting) && ha_st_calls == 2);
        ha_st_stop = 1;
        sem_post(&ha_st_armed);
        pthread_join(sender, NULL);
        return 0;
    }

    case HA_SIGBUS_SELFTEST_DEFAULT_FAULT_OUTSIDE:
        HA_ST_STEP(1, ha_st_good_touch());
        ha_st_trapped_touch(ha_st_fault_outside, 1, 0);
        return 2;

    case HA_SIGBUS_SELFTEST_DEFAULT_SENT:
        HA_ST_STEP(1, ha_st_good_touch());
        kill(getpid(), SIGBUS);
        *ha_st_steps = 2;
        HA_ST_STEP(3, ha_st_fault_caught(faulting));
        return 0;

    case HA_SIGBUS_SELFTEST_PREVIOUS_FIXES_OUTSIDE:
        ha_st_set_sigbus(NULL, ha_st_counting_siginfo);
        ha_st_fix_fd = memfd_create("ha-sigbus-selftest-fix", MFD_CLOEXEC);
        if (ha_st_fix_fd < 0 || ftruncate(ha_st_fix_fd, (off_t)ha_st_base_page) != 0) _exit(HA_ST_SETUP_FAILED);
        ha_st_outside = ha_st_faulting_map(ha_st_fix_fd, ha_st_base_page);
        HA_ST_STEP(1, ha_st_trapped_touch(ha_st_fault_outside, 1, 0) == 0
                      && ha_st_calls == 1 && ha_st_last_code == BUS_ADRERR);
        HA_ST_STEP(2, ha_st_fault_caught(faulting) && ha_st_calls == 1);
        return 0;

    case HA_SIGBUS_SELFTEST_REINSTALL_CONCURRENT:
        for (int round = 1; round <= 16; round++) {
            /* The application resets SIGBUS between touches. */
            ha_st_set_sigbus(round % 2 ? SIG_DFL : SIG_IGN, NULL);
            struct ha_st_toucher touchers[4];
            pthread_t ids[4];
            for (int i = 0; i < 4; i++) {
                touchers[i] = (struct ha_st_toucher){ faulting, 0 };
                if (pthread_create(&ids[i], NULL, ha_st_touch_thread, &touchers[i]) != 0) _exit(HA_ST_SETUP_FAILED);
            }
            int caught = 0;
            for (int i = 0; i < 4; i++) { pthread_join(ids[i], NULL); caught += touchers[i].caught; }
            HA_ST_STEP(round, caught == 4);
        }
        return 0;

    default:
        return HA_ST_SETUP_FAILED;
    }
}

int ha_sigbus_selftest(int scenario, int fd, size_t page, int *steps) {
    if (steps) *steps = 0;
    volatile int *shared = mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) return -1;
    *shared = 0;
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        munmap((void *)shared, sizeof(int));
        errno = saved;
        return -1;
    }
    if (pid == 0) {
        ha_st_steps = shared;
        _exit(ha_st_run(scenario, fd, page));
    }
    /* A child that spins (a fault repeating forever) is killed after 10 s. */
    int status = 0;
    struct timespec ms = { 0, 1000000 };
    for (int waited = 0;; waited++) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) break;
        if (done < 0 && errno != EINTR) {
            int saved = errno;
            munmap((void *)shared, sizeof(int));
            errno = saved;
            return -1;
        }
        if (waited == 10000) kill(pid, SIGKILL);
        nanosleep(&ms, NULL);
    }
    if (steps) *steps = *shared;
    munmap((void *)shared, sizeof(int));
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    errno = ECHILD;
    return -1;
}

int ha_thread_capability(int capability, int enable) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (capability < 0 || capability >= 32 * _LINUX_CAPABILITY_U32S_3) { errno = EINVAL; return -1; }
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    unsigned bit = 1u << (capability % 32);
    int was = (data[capability / 32].effective & bit) != 0;
    if (enable) data[capability / 32].effective |= bit;
    else data[capability / 32].effective &= ~bit;
    if (syscall(SYS_capset, &header, data) != 0) return -1;
    return was;
}
