/*
 * Largest physically contiguous run DPDK's legacy memory mode finds.
 *
 * Run with EAL arguments, for example:
 *   legacy_contig --legacy-mem --in-memory --no-pci -l 0 -m 512
 * In legacy mode the EAL maps the hugepages it is given, sorts them by
 * physical address and joins adjacent ones into segments; this walks the
 * IOVA-contiguous chunks and prints the largest, the count, and the total.
 */
#include <stdio.h>
#include <stdint.h>
#include <rte_eal.h>
#include <rte_memory.h>

struct walk { size_t largest, total, chunks; };

static int on_chunk(const struct rte_memseg_list *msl, const struct rte_memseg *ms,
                    size_t len, void *arg) {
    (void)msl; (void)ms;
    struct walk *w = arg;
    if (len > w->largest) w->largest = len;
    w->total += len;
    w->chunks++;
    return 0;
}

int main(int argc, char **argv) {
    if (rte_eal_init(argc, argv) < 0) {
        fprintf(stderr, "rte_eal_init failed\n");
        return 1;
    }
    struct walk w = {0, 0, 0};
    rte_memseg_contig_walk(on_chunk, &w);
    printf("dpdk_legacy_chunks=%zu dpdk_legacy_total_bytes=%zu\n", w.chunks, w.total);
    printf("dpdk_legacy_largest_run_bytes=%zu\n", w.largest);
    rte_eal_cleanup();
    return 0;
}
