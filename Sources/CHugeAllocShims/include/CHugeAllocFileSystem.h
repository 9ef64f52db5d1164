#ifndef CHUGEALLOC_FILESYSTEM_H
#define CHUGEALLOC_FILESYSTEM_H

/* Header only. statfs(2) and fstatfs(2), which Glibc's Swift overlay does not
 * export: the file-system type (f_type) tells hugetlbfs from ext4 or tmpfs,
 * and on hugetlbfs f_bsize is the mount's page size. flock(2) (<sys/file.h>):
 * the whole-file locks DPDK takes on its hugepage files. */
#include <sys/vfs.h>
#include <sys/file.h>

/* fcntl(2) commands of <fcntl.h> that need _GNU_SOURCE: a write lease is
 * granted only while no other open file description of the inode exists. */
#define HA_F_SETLEASE 1024
#define HA_F_GETLEASE 1025

#endif
