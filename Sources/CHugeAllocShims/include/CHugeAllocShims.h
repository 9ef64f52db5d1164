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
 * arrive as SIGBUS; here a SIGBUS inside the range is caught on this thread
 * and reported: the function returns -1 and stores the faulting offset.
 * Returns 0 when every page was touched. Other threads' SIGBUS and SIGBUS
 * outside a guarded touch go to the previously installed disposition.
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

/* ---- fork probe (tests of MADV_DONTFORK) -------------------------------- */
/*
 * Forks; the child asks mincore(2) whether [addr, addr+length) is mapped in
 * its address space and exits at once with the answer. Only async-signal-safe
 * calls run in the child. Returns 1 when the child sees the range mapped, 0
 * when it does not, -1 with errno set on failure.
 */
int ha_child_sees_mapping(void *addr, size_t length);

/* ---- per-thread slots ------------------------------------------------- */
#define HA_TLS_SLOTS 4
extern _Thread_local uintptr_t ha_tls_slots[HA_TLS_SLOTS];

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
#include "CHugeAllocBackends.h"
#include "CHugeAllocFileSystem.h"
#endif
