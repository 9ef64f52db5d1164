/* libhugetlbfs (Debian: libhugetlbfs-dev). Its header uses size_t without
 * including <stddef.h>, so that comes first. The library ships no .pc file. */
#include <stddef.h>
#include <hugetlbfs.h>
