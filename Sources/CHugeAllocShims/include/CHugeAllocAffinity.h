#ifndef CHUGEALLOC_AFFINITY_H
#define CHUGEALLOC_AFFINITY_H

/*
 * Pins the calling thread to one CPU: sched_setaffinity(2) on the thread
 * (Glibc's overlay hides cpu_set_t's macros from Swift). Returns 0 or an errno.
 */
int ha_pin_thread_to_cpu(int cpu);

#endif
