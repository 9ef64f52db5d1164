#ifndef _GNU_SOURCE
#error "CHugeAllocShims is built with -D_GNU_SOURCE (Package.swift)"
#endif
#include <sys/ioctl.h>
#include "CHugeAllocDevices.h"

int ha_ioctl_pointer(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}

int ha_ioctl_value(int fd, unsigned long request, unsigned long value) {
    return ioctl(fd, request, value);
}
