#ifndef _GNU_SOURCE
#error "CHugeAllocShims must be built with -D_GNU_SOURCE (see Package.swift)"
#endif

#include "CHugeAllocAffinity.h"

#include <errno.h>
#include <sched.h>

int ha_pin_thread_to_cpu(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}
