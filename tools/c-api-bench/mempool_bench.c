/*
 * The mempool_perf loop of `hugealloc-bench mempool`, written in C against
 * the installed C API (hugealloc.h), for tools/compare-c-api: how much the C
 * boundary costs on the hot path.
 *
 * Usage: c-api-mempool-bench OBJECT_SIZE COUNT CACHE BULK KEEP SECONDS
 * One thread, pinned to CPU 0 as the Swift benchmark pins its first thread:
 * get KEEP objects BULK at a time, put them back BULK at a time, repeat for
 * SECONDS. BULK 1 uses ha_mempool_get/ha_mempool_put, any other BULK
 * ha_mempool_get_bulk/ha_mempool_put_bulk. Prints rate_persec=N last
 * (objects round-tripped per second).
 */
#define _GNU_SOURCE
#include <hugealloc.h>

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_KEEP 4096

static ha_mempool *pool;
static unsigned keep;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The pool and the counts are parameters, as in the Swift loop (a global
 * would be reloaded after every store the compiler cannot tell apart). */
static int rounds_single(ha_mempool *p, void **table, unsigned keep_, unsigned count) {
    for (unsigned r = 0; r < count; r++) {
        for (unsigned i = 0; i < keep_; i++)
            if ((table[i] = ha_mempool_get(p)) == NULL) return -1;
        for (unsigned i = 0; i < keep_; i++)
            ha_mempool_put(p, table[i]);
    }
    return 0;
}

/* N is a compile-time constant where the call site passes one, as in the
 * Swift and DPDK loops. */
static inline __attribute__((always_inline)) int rounds_bulk(ha_mempool *p, void **table, unsigned keep_, unsigned n, unsigned count) {
    for (unsigned r = 0; r < count; r++) {
        for (unsigned i = 0; i < keep_; i += n)
            if (ha_mempool_get_bulk(p, &table[i], n) != 0) return -1;
        for (unsigned i = 0; i < keep_; i += n)
            ha_mempool_put_bulk(p, &table[i], n);
    }
    return 0;
}

static int run(unsigned bulk, void **table, unsigned count) {
    switch (bulk) {
    case 1: return rounds_single(pool, table, keep, count);
    case 32: return rounds_bulk(pool, table, keep, 32, count);
    default: return rounds_bulk(pool, table, keep, bulk, count);
    }
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: c-api-mempool-bench OBJECT_SIZE COUNT CACHE BULK KEEP SECONDS\n");
        return 2;
    }
    size_t object_size = strtoull(argv[1], NULL, 0);
    size_t count = strtoull(argv[2], NULL, 0);
    size_t cache = strtoull(argv[3], NULL, 0);
    unsigned bulk = (unsigned)atoi(argv[4]);
    keep = (unsigned)atoi(argv[5]);
    double seconds = atof(argv[6]);
    if (bulk == 0 || keep == 0 || keep > MAX_KEEP || keep % bulk != 0) {
        fprintf(stderr, "KEEP must be a multiple of BULK and at most %d\n", MAX_KEEP);
        return 2;
    }
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    sched_setaffinity(0, sizeof cpus, &cpus); /* best effort, as in the Swift benchmark */
    if (ha_mempool_create("bench", count, object_size, cache, HA_NODE_ANY, 0, &pool) != 0) {
        fprintf(stderr, "%s\n", ha_last_error());
        return 1;
    }
    printf("c-api mempool object_size=%zu count=%zu cache=%zu bulk=%u keep=%u threads=1\n",
           object_size, count, cache, bulk, keep);
    static void *table[MAX_KEEP];
    if (run(bulk, table, 1024) < 0) { fprintf(stderr, "pool empty: %s\n", ha_last_error()); return 1; }
    double start = now(), elapsed;
    uint64_t objects = 0;
    do {
        if (run(bulk, table, 4096) < 0) { fprintf(stderr, "pool empty: %s\n", ha_last_error()); return 1; }
        objects += (uint64_t)4096 * keep;
        elapsed = now() - start;
    } while (elapsed < seconds);
    ha_mempool_destroy(pool);
    printf("thread 0: %llu objects in %.3f s\n", (unsigned long long)objects, elapsed);
    printf("rate_persec=%.0f\n", (double)objects / elapsed);
    return 0;
}
