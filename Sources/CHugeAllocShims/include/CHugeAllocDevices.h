/*
 * CHugeAllocDevices: device-register access that Swift cannot spell.
 *
 * A memory-mapped device register must be read and written exactly once per
 * access, in program order: `volatile` says so to the compiler. Every symbol
 * is prefixed `ha_`. These are loads and stores, not system calls, so they
 * cannot fail and have no errno.
 */
#ifndef CHUGEALLOC_DEVICES_H
#define CHUGEALLOC_DEVICES_H

#include <stdint.h>

/* Reads the 32-bit register at `base + offset`. */
static inline uint32_t ha_mmio_read32(const void *base, uint32_t offset) {
    return *(const volatile uint32_t *)((const char *)base + offset);
}

/* Writes the 32-bit register at `base + offset`. */
static inline void ha_mmio_write32(void *base, uint32_t offset, uint32_t value) {
    *(volatile uint32_t *)((char *)base + offset) = value;
}

/* Orders this thread's stores to DMA memory before a following register
 * write that hands that memory to a device (x86: a compiler barrier plus
 * sfence; elsewhere a full fence). */
static inline void ha_dma_write_barrier(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* ioctl(2) with a pointer argument (VFIO's structs); -1 with errno on failure.
 * Swift cannot call the variadic ioctl itself. */
int ha_ioctl_pointer(int fd, unsigned long request, void *argument);

/* ioctl(2) with an integer argument (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU,
 * VFIO_GROUP_GET_DEVICE_FD takes a string: use the pointer form). */
int ha_ioctl_value(int fd, unsigned long request, unsigned long value);

#endif
