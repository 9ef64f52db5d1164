/* libnuma (Debian: libnuma-dev). numa.h for topology, numaif.h for the
 * mbind(2), get_mempolicy(2) and move_pages(2) system calls. */
#include <numa.h>
#include <numaif.h>
