#ifndef CHUGEALLOC_SHIMS_NUMA_H
#define CHUGEALLOC_SHIMS_NUMA_H
/* CPU affinity and CPU lookup for NUMA placement (numa_shims.c). */
#include <stddef.h>

/* sched_setaffinity(2) on the calling thread; mask is `bytes` long. 0 or -1/errno. */
int ha_sched_setaffinity(size_t bytes, const unsigned long *mask);

/* sched_getaffinity(2) on the calling thread. 0 or -1/errno. */
int ha_sched_getaffinity(size_t bytes, unsigned long *mask);

/* sched_getcpu(3): the CPU the calling thread runs on, or -1. */
int ha_sched_getcpu(void);

#endif
