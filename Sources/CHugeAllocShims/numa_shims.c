#ifndef _GNU_SOURCE
#error "CHugeAllocShims must be built with -D_GNU_SOURCE (see Package.swift)"
#endif

#include "CHugeAllocShimsNUMA.h"

#include <sched.h>

int ha_sched_setaffinity(size_t bytes, const unsigned long *mask) {
    return sched_setaffinity(0, bytes, (const cpu_set_t *)mask);
}

int ha_sched_getaffinity(size_t bytes, unsigned long *mask) {
    /* The system call returns the bytes written; glibc returns 0. */
    return sched_getaffinity(0, bytes, (cpu_set_t *)mask) < 0 ? -1 : 0;
}

int ha_sched_getcpu(void) {
    return sched_getcpu();
}
