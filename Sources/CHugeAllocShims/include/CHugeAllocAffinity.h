#ifndef CHUGEALLOC_AFFINITY_H
#define CHUGEALLOC_AFFINITY_H


/* Header only. A spin-wait hint (x86 `pause`): lets the sibling hyperthread run and
 * saves power while a lock-free ring waits for another thread. */
static inline void ha_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
