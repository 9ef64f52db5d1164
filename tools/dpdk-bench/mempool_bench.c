/*
 * The mempool_perf loop on DPDK's rte_mempool, for tools/compare-dpdk.
 * Written for HugeAlloc against the public rte_mempool API.
 *
 * Usage: dpdk-mempool-bench <EAL args> -- OBJECT_SIZE COUNT CACHE BULK KEEP SECONDS
 * Every lcore given to EAL (-l) runs the loop: get KEEP objects BULK at a
 * time, put them back BULK at a time, repeat for SECONDS. Prints
 * rate_persec=N (objects round-tripped per second, summed over lcores).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mempool.h>

#define MAX_KEEP 4096

static struct rte_mempool *pool;
static unsigned bulk, keep;
static double seconds;
static double rates[RTE_MAX_LCORE];
static volatile unsigned ready;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One round trip of KEEP objects; N is a compile-time constant where the
 * call site passes one, as in the Swift benchmark. */
static inline __attribute__((always_inline)) int
rounds(void **table, unsigned n, unsigned count) {
    for (unsigned r = 0; r < count; r++) {
        for (unsigned i = 0; i < keep; i += n)
            if (rte_mempool_get_bulk(pool, &table[i], n) < 0) return -1;
        for (unsigned i = 0; i < keep; i += n)
            rte_mempool_put_bulk(pool, &table[i], n);
    }
    return 0;
}

static int run(unsigned n, void **table, unsigned count) {
    switch (n) {
    case 1: return rounds(table, 1, count);
    case 32: return rounds(table, 32, count);
    default: return rounds(table, n, count);
    }
}

static int worker(void *arg) {
    (void)arg;
    void *table[MAX_KEEP];
    unsigned lcores = rte_lcore_count();
    __atomic_add_fetch(&ready, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&ready, __ATOMIC_ACQUIRE) < lcores) {}
    if (run(bulk, table, 1024) < 0) { fprintf(stderr, "pool empty\n"); return -1; }
    double start = now(), elapsed;
    uint64_t objects = 0;
    do {
        if (run(bulk, table, 4096) < 0) { fprintf(stderr, "pool empty\n"); return -1; }
        objects += (uint64_t)4096 * keep;
        elapsed = now() - start;
    } while (elapsed < seconds);
    rates[rte_lcore_id()] = (double)objects / elapsed;
    return 0;
}

int main(int argc, char **argv) {
    int used = rte_eal_init(argc, argv);
    if (used < 0) { fprintf(stderr, "rte_eal_init failed: %s\n", rte_strerror(rte_errno)); return 1; }
    argc -= used;
    argv += used;
    if (argc < 7) {
        fprintf(stderr, "usage: dpdk-mempool-bench <EAL args> -- OBJECT_SIZE COUNT CACHE BULK KEEP SECONDS\n");
        return 2;
    }
    unsigned object_size = (unsigned)atoi(argv[1]);
    unsigned count = (unsigned)atoi(argv[2]);
    unsigned cache = (unsigned)atoi(argv[3]);
    bulk = (unsigned)atoi(argv[4]);
    keep = (unsigned)atoi(argv[5]);
    seconds = atof(argv[6]);
    if (bulk == 0 || keep == 0 || keep > MAX_KEEP || keep % bulk != 0) {
        fprintf(stderr, "KEEP must be a multiple of BULK and at most %d\n", MAX_KEEP);
        return 2;
    }
    /* Flags 0: multi-producer/multi-consumer ring, objects spread over channels. */
    pool = rte_mempool_create("bench", count, object_size, cache, 0, NULL, NULL, NULL, NULL,
                              (int)rte_socket_id(), 0);
    if (pool == NULL) { fprintf(stderr, "rte_mempool_create failed: %s\n", rte_strerror(rte_errno)); return 1; }
    unsigned lcore;
    printf("dpdk rte_mempool object_size=%u count=%u cache=%u bulk=%u keep=%u lcores=%u ops=%s\n",
           object_size, count, cache, bulk, keep, rte_lcore_count(), rte_mempool_get_ops(pool->ops_index)->name);
    int failed = rte_eal_mp_remote_launch(worker, NULL, CALL_MAIN);
    rte_eal_mp_wait_lcore();
    RTE_LCORE_FOREACH_WORKER(lcore) failed |= rte_eal_get_lcore_state(lcore) != WAIT;
    if (failed) return 1;
    double total = 0;
    RTE_LCORE_FOREACH(lcore) {
        printf("lcore %u: %.0f objects/s\n", lcore, rates[lcore]);
        total += rates[lcore];
    }
    rte_mempool_free(pool);
    rte_eal_cleanup();
    printf("rate_persec=%.0f\n", total);
    return 0;
}
