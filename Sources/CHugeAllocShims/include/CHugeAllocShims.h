/*
 * CHugeAllocShims: the Linux API that Glibc's Swift overlay hides.
 *
 * Every symbol is prefixed `ha_` / `HA_`. Constants are exported as named
 * values so Swift never spells a raw flag. Keep this target tiny: anything
 * that can be written in Swift is written in Swift.
 */
#ifndef CHUGEALLOC_SHIMS_H
#define CHUGEALLOC_SHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- mmap / memfd / mlock flags --------------------------------------- */
extern const int HA_MAP_HUGETLB;
extern const int HA_MAP_HUGE_SHIFT;
extern const int HA_MAP_HUGE_MASK;
extern const int HA_MAP_HUGE_2MB;
extern const int HA_MAP_HUGE_1GB;
extern const int HA_MAP_POPULATE;
extern const int HA_MAP_LOCKED;
extern const int HA_MAP_NORESERVE;
extern const int HA_MAP_FIXED_NOREPLACE;
extern const int HA_MFD_CLOEXEC;
extern const int HA_MFD_HUGETLB;
extern const int HA_MFD_HUGE_SHIFT;
extern const int HA_MLOCK_ONFAULT;
extern const int HA_MADV_DONTFORK;
extern const int HA_MADV_DOFORK;
extern const int HA_MADV_POPULATE_WRITE;
extern const int HA_MREMAP_MAYMOVE;
extern const int HA_MREMAP_FIXED;
extern const int HA_O_TMPFILE;

/* memfd_create(2). Returns a file descriptor or -1 with errno set. */
int ha_memfd_create(const char *name, unsigned int flags);

/* mlock2(2). Returns 0 or -1 with errno set. */
int ha_mlock2(const void *addr, size_t length, unsigned int flags);

/* mremap(2) with an explicit new address (MREMAP_FIXED). */
void *ha_mremap_fixed(void *old_address, size_t old_size, size_t new_size,
                      int flags, void *new_address);

/* fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: frees the
 * pages of [offset, offset+length) of a memfd or hugetlbfs file now. */
int ha_punch_hole(int fd, off_t offset, off_t length);

/* getcpu(2): the CPU and NUMA node the calling thread runs on. */
int ha_getcpu(unsigned int *cpu, unsigned int *node);

/* ---- SIGBUS-guarded touch --------------------------------------------- */
/*
 * Touches one byte every `stride` bytes of [addr, addr+length) (a write of
 * the byte's own value when `write` is non-zero, a read otherwise). hugetlb
 * quotas and cgroup limits are enforced when a page is first touched and
 * arrive as SIGBUS; here such a fault is caught and reported: the function
 * returns -1 and stores the faulting offset. Returns 0 when every page was
 * touched, -2 with errno EINVAL when `stride` is 0.
 *
 * Only a fault caused by this touch is caught: si_code BUS_ADRERR,
 * BUS_ADRALN, BUS_OBJERR or BUS_MCEERR_AR, with si_addr in the range, on the
 * thread touching it. Every other SIGBUS (kill(2), tgkill(2), sigqueue(3),
 * another thread's fault, a fault outside the range) is handled as if the
 * guard were not installed: a handler function installed before it is
 * called (with its sa_mask and flags), SIG_IGN ignores a sent signal and
 * lets a fault kill, SIG_DFL kills. The guard is installed on the first
 * call, and again when SIGBUS has since been set to SIG_DFL or SIG_IGN; a
 * handler function set after it is left in place (touches are then guarded
 * only if that handler forwards to the one it replaced). Installation is
 * thread-safe.
 */
int ha_guarded_touch(void *addr, size_t length, size_t stride, int write,
                     size_t *fault_offset);

/*
 * The same, split over `threads` POSIX threads (1 = this thread only).
 * Returns 0, or -1 with the lowest faulting offset, or -2 with errno set
 * when a thread could not be created.
 */
int ha_parallel_guarded_touch(void *addr, size_t length, size_t stride,
                              int write, unsigned int threads,
                              size_t *fault_offset);

/* ---- SIGBUS guard self-test (used by the test suite) ------------------ */
/*
 * Runs one scenario of the SIGBUS guard in a forked child, so that one which
 * must end with the process killed by SIGBUS cannot take the caller with it.
 * The child starts as a fresh process (SIGBUS at its default, no guard
 * installed). `fd` is a file whose second page of `page` bytes faults when
 * touched (past its end, or over a hugetlbfs quota; mapped MAP_SHARED |
 * MAP_NORESERVE); with fd < 0 the child makes a one-page memfd instead.
 * `*steps` receives the number of steps the child completed. Returns the
 * child's exit code (0: every step passed; n: step n failed; 90: a fault in
 * the guarded range reached the application's handler; 91: an unexpected
 * SIGSEGV; 92: setup failed), 128 + the signal that killed it (a child still
 * running after 10 s is killed with SIGKILL), or -1 with errno set.
 * Not part of the library's API.
 */
/* SIG_IGN set after the guard was installed: faults in range are still
 * caught, a sent SIGBUS is ignored, a fault outside kills (steps 5). */
#define HA_SIGBUS_SELFTEST_IGNORED_AFTER_INSTALL 1
/* SIG_IGN before the first guarded touch: the same (steps 2, then killed). */
#define HA_SIGBUS_SELFTEST_IGNORED_FROM_START 2
/* An SA_SIGINFO handler before the guard receives kill(2) and sigqueue(3)
 * SIGBUS, also during a guarded touch; the touch still catches a fault. */
#define HA_SIGBUS_SELFTEST_SENT_TO_PREVIOUS 3
/* pthread_kill(SIGBUS) to a thread in a guarded touch (the caller, then a
 * worker of the parallel touch) reaches a plain sa_handler; not a fault. */
#define HA_SIGBUS_SELFTEST_THREAD_KILL 4
/* SIG_DFL: a fault outside the range during a guarded touch kills (steps 1). */
#define HA_SIGBUS_SELFTEST_DEFAULT_FAULT_OUTSIDE 5
/* SIG_DFL: kill(2) SIGBUS after a guarded touch kills (steps 1). */
#define HA_SIGBUS_SELFTEST_DEFAULT_SENT 6
/* A fault outside the range during a guarded touch goes to the SA_SIGINFO
 * handler, which grows the file; the touch then succeeds. */
#define HA_SIGBUS_SELFTEST_PREVIOUS_FIXES_OUTSIDE 7
/* SIGBUS reset to SIG_DFL / SIG_IGN between touches made by four threads at
 * once: every touch still catches its fault (steps 16). */
#define HA_SIGBUS_SELFTEST_REINSTALL_CONCURRENT 8
int ha_sigbus_selftest(int scenario, int fd, size_t page, int *steps);

/* ---- fork probe (tests of MADV_DONTFORK) -------------------------------- */
/*
 * Forks; the child asks mincore(2) whether [addr, addr+length) is mapped in
 * its address space and exits at once with the answer. Only async-signal-safe
 * calls run in the child. Returns 1 when the child sees the range mapped, 0
 * when it does not, -1 with errno set on failure.
 */
int ha_child_sees_mapping(void *addr, size_t length);

/* Raises (enable != 0) or drops one capability in the calling THREAD's
 * effective set, within its permitted set (capget(2)/capset(2); Linux keeps
 * capabilities per thread). Returns whether it was effective before, or -1
 * with errno. Lets a test see the error a process without the capability
 * gets, without a second process. */
int ha_thread_capability(int capability, int enable);

/* ---- per-thread slots ------------------------------------------------- */
#define HA_TLS_SLOTS 4
/* initial-exec: one %fs-relative load, also when the library is a shared
 * object (libHugeAllocC.so), where the default model would call
 * __tls_get_addr on every access. 32 bytes of the static TLS block. */
extern _Thread_local uintptr_t ha_tls_slots[HA_TLS_SLOTS] __attribute__((tls_model("initial-exec")));

static inline uintptr_t ha_tls_load(unsigned int slot) {
    return ha_tls_slots[slot & (HA_TLS_SLOTS - 1)];
}
static inline void ha_tls_store(unsigned int slot, uintptr_t value) {
    ha_tls_slots[slot & (HA_TLS_SLOTS - 1)] = value;
}

/*
 * Runs fn(arg) when the calling thread exits (a pthread key destructor).
 * Callbacks run in reverse order of registration. Returns 0 or an errno.
 */
int ha_at_thread_exit(void (*fn)(void *), void *arg);

#ifdef __cplusplus
}
#endif
#include "CHugeAllocShimsNUMA.h"
#include "CHugeAllocAffinity.h"
#include "CHugeAllocCAPI.h"
#include "CHugeAllocBackends.h"
#include "CHugeAllocFileSystem.h"
#include "CHugeAllocDevices.h"
#include "CHugeAllocSharing.h"
#endif
