/*
 * DPDK's packet buffers for tools/compare-dpdk, written for HugeAlloc
 * against the public rte_mbuf API.
 *
 * Usage:
 *   dpdk-pktmbuf-bench <EAL args> -- packets COUNT CACHE BATCH SECONDS
 *     rte_pktmbuf_alloc_bulk BATCH mbufs, set each one's length (data_len
 *     and pkt_len), rte_pktmbuf_free_bulk them, repeat for SECONDS on one
 *     lcore. Prints rate_persec=N (packets per second).
 *   dpdk-pktmbuf-bench <EAL args> -- create COUNT CACHE
 *     Times rte_eal_init plus rte_pktmbuf_pool_create of COUNT mbufs with
 *     the default 2048-byte data room and 128-byte headroom: from no memory
 *     to a ready pool. Prints rate_persec=N (mbufs made ready per second)
 *     and, last, create_ms=X.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* COUNT rounds of alloc BATCH / set length / free BATCH; BATCH is a
 * compile-time constant where the call site passes one, as in the Swift
 * benchmark. */
static inline __attribute__((always_inline)) int
rounds(struct rte_mempool *pool, struct rte_mbuf **table, unsigned batch, unsigned count) {
    for (unsigned r = 0; r < count; r++) {
        if (rte_pktmbuf_alloc_bulk(pool, table, batch) != 0) return -1;
        for (unsigned i = 0; i < batch; i++) {
            table[i]->data_len = 64;
            table[i]->pkt_len = 64;
        }
        rte_pktmbuf_free_bulk(table, batch);
    }
    return 0;
}

static int run(struct rte_mempool *pool, struct rte_mbuf **table, unsigned batch, unsigned count) {
    return batch == 32 ? rounds(pool, table, 32, count) : rounds(pool, table, batch, count);
}

static int packets(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: dpdk-pktmbuf-bench <EAL args> -- packets COUNT CACHE BATCH SECONDS\n");
        return 2;
    }
    unsigned count = (unsigned)atoi(argv[1]), cache = (unsigned)atoi(argv[2]), batch = (unsigned)atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (batch == 0 || batch > 512) { fprintf(stderr, "BATCH must be 1...512\n"); return 2; }
    struct rte_mempool *pool = rte_pktmbuf_pool_create("bench", count, cache, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                                       (int)rte_socket_id());
    if (pool == NULL) { fprintf(stderr, "rte_pktmbuf_pool_create failed: %s\n", rte_strerror(rte_errno)); return 1; }
    struct rte_mbuf *table[512];
    printf("dpdk rte_pktmbuf count=%u cache=%u batch=%u ops=%s\n", count, cache, batch,
           rte_mempool_get_ops(pool->ops_index)->name);
    if (run(pool, table, batch, 1024) < 0) { fprintf(stderr, "pool empty\n"); return 1; }
    double start = now(), elapsed;
    uint64_t done = 0;
    do {
        if (run(pool, table, batch, 8192) < 0) { fprintf(stderr, "pool empty\n"); return 1; }
        done += (uint64_t)8192 * batch;
        elapsed = now() - start;
    } while (elapsed < seconds);
    rte_mempool_free(pool);
    printf("rate_persec=%.0f\n", (double)done / elapsed);
    return 0;
}

int main(int argc, char **argv) {
    double start = now();
    int used = rte_eal_init(argc, argv);
    if (used < 0) { fprintf(stderr, "rte_eal_init failed: %s\n", rte_strerror(rte_errno)); return 1; }
    double eal = now();
    argc -= used;
    argv += used;
    int status;
    if (argc >= 2 && strcmp(argv[1], "packets") == 0) {
        status = packets(argc - 1, argv + 1);
    } else if (argc >= 4 && strcmp(argv[1], "create") == 0) {
        unsigned count = (unsigned)atoi(argv[2]), cache = (unsigned)atoi(argv[3]);
        double pool_start = now();
        struct rte_mempool *pool = rte_pktmbuf_pool_create("bench", count, cache, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                                           (int)rte_socket_id());
        double end = now();
        if (pool == NULL) { fprintf(stderr, "rte_pktmbuf_pool_create failed: %s\n", rte_strerror(rte_errno)); return 1; }
        printf("dpdk create count=%u cache=%u eal_init_ms=%.2f pool_create_ms=%.2f\n", count, cache,
               (eal - start) * 1e3, (end - pool_start) * 1e3);
        printf("rate_persec=%.0f\n", count / (end - start));
        printf("create_ms=%.2f\n", (end - start) * 1e3);
        rte_mempool_free(pool);
        status = 0;
    } else {
        fprintf(stderr, "usage: dpdk-pktmbuf-bench <EAL args> -- packets COUNT CACHE BATCH SECONDS | create COUNT CACHE\n");
        status = 2;
    }
    rte_eal_cleanup();
    return status;
}
