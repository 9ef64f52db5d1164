/*
 * DPDK 22.11 running its mbufs on HugeAlloc memory, through the C API only
 * (built and run by tools/test-dpdk-c-api, inside a network namespace that
 * holds a veth pair).
 *
 *  1. Takes REGIONS blocks of 2 MiB from the DMA heap (ha_malloc), each one
 *     2 MiB page, and registers each with rte_extmem_register(), giving the
 *     page IOVAs the library reports (ha_iova). --shift-iova gives them one
 *     page off instead: the negative control, which must make this test fail.
 *  2. Maps each for DMA with rte_dev_dma_map() on the port's device where
 *     the device takes it (net_af_packet copies and answers ENOTSUP).
 *  3. Creates an mbuf pool whose data buffers lie in those blocks
 *     (rte_pktmbuf_pool_create_extbuf), giving each block's IOVA as DPDK's
 *     own memory map now translates it (rte_mem_virt2memseg): the
 *     registration is the only source of the mbufs' buf_iova.
 *  4. Checks every mbuf of the pool: buf_addr inside a HugeAlloc block and
 *     buf_iova == ha_iova(buf_addr).
 *  5. Moves frames through net_af_packet0 (EAL --vdev, bound to one veth
 *     end) and a raw AF_PACKET socket on the other end: DPDK -> peer and
 *     peer -> DPDK, every frame compared byte for byte, and every received
 *     mbuf checked as in 4.
 *
 * Usage: dpdk_extmem_test <EAL args> -- --peer IFNAME [--shift-iova]
 */
#define _GNU_SOURCE
#define ALLOW_EXPERIMENTAL_API /* rte_dev_dma_map, rte_pktmbuf_pool_create_extbuf */
#include <hugealloc.h>

#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include <rte_mempool.h>

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE (2u << 20)
#define REGIONS 2
#define ELEMENT RTE_MBUF_DEFAULT_BUF_SIZE
#define FRAMES 512
#define ETHERTYPE 0x88B5 /* IEEE local experimental */

static int failures;
#define CHECK(cond, ...) do { \
    if (!(cond)) { \
        if (failures++ < 20) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
    } \
} while (0)
#define DIE(...) do { fprintf(stderr, "FAIL: "); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static void *region[REGIONS];

static int in_hugealloc_blocks(const void *p, size_t length) {
    for (int r = 0; r < REGIONS; r++) {
        if ((const char *)p >= (char *)region[r] && (const char *)p + length <= (char *)region[r] + PAGE) return 1;
    }
    return 0;
}

/* buf_addr in HugeAlloc memory, buf_iova what HugeAlloc says it is. */
static void check_mbuf(const struct rte_mbuf *m, const char *where) {
    CHECK(in_hugealloc_blocks(m->buf_addr, m->buf_len), "%s: mbuf %p buf_addr %p (%u bytes) is not in HugeAlloc memory",
          where, (const void *)m, m->buf_addr, m->buf_len);
    uint64_t expected = ha_iova(m->buf_addr);
    CHECK(expected != HA_BAD_IOVA && m->buf_iova == expected, "%s: mbuf %p buf_iova 0x%llx, ha_iova(buf_addr) 0x%llx",
          where, (const void *)m, (unsigned long long)m->buf_iova, (unsigned long long)expected);
}

static unsigned checked_in_pool;
static void check_pool_mbuf(struct rte_mempool *mp, void *arg, void *obj, unsigned index) {
    (void)mp; (void)arg; (void)index;
    check_mbuf(obj, "pool");
    checked_in_pool++;
}

/* Frame i: broadcast, a fixed source, our ethertype, i, then bytes from i. */
static size_t frame_length(unsigned i) { return 60 + (i * 37) % (1514 - 60 + 1); }
static void fill_frame(uint8_t *f, unsigned i, uint8_t direction) {
    size_t n = frame_length(i);
    memset(f, 0xff, 6);
    const uint8_t src[6] = { 0x02, 0x48, 0x41, 0x00, 0x00, direction };
    memcpy(f + 6, src, 6);
    f[12] = ETHERTYPE >> 8;
    f[13] = ETHERTYPE & 0xff;
    memcpy(f + 14, &i, 4);
    for (size_t j = 18; j < n; j++) f[j] = (uint8_t)(i * 131 + j * 7 + direction);
}
static int is_ours(const uint8_t *f, size_t n, uint8_t direction) {
    return n >= 18 && f[12] == (ETHERTYPE >> 8) && f[13] == (ETHERTYPE & 0xff) && f[11] == direction;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int consumed = rte_eal_init(argc, argv);
    if (consumed < 0) DIE("rte_eal_init: %s", rte_strerror(rte_errno));
    argc -= consumed;
    argv += consumed;
    const char *peer = NULL;
    int shift = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--peer") == 0 && i + 1 < argc) peer = argv[++i];
        else if (strcmp(argv[i], "--shift-iova") == 0) shift = 1;
        else DIE("unknown argument %s (usage: <EAL args> -- --peer IFNAME [--shift-iova])", argv[i]);
    }
    if (!peer) DIE("--peer IFNAME is required");
    if (rte_eal_iova_mode() != RTE_IOVA_PA) DIE("EAL is not in IOVA-as-PA mode (pass --iova-mode=pa)");
    if (rte_eth_dev_count_avail() != 1) DIE("expected one port (--vdev=net_af_packet0,iface=...), found %u", rte_eth_dev_count_avail());
    uint16_t port = 0;
    RTE_ETH_FOREACH_DEV(port) break;
    struct rte_eth_dev_info info;
    if (rte_eth_dev_info_get(port, &info) != 0) DIE("rte_eth_dev_info_get");

    /* 1-2: HugeAlloc memory, registered with HugeAlloc's IOVAs, DMA-mapped. */
    struct rte_pktmbuf_extmem ext[REGIONS];
    unsigned elements = 0;
    for (int r = 0; r < REGIONS; r++) {
        uint64_t iova;
        region[r] = ha_malloc(PAGE, PAGE, HA_NODE_ANY, &iova);
        if (!region[r]) DIE("ha_malloc(2 MiB): %s", ha_last_error());
        rte_iova_t pages[PAGE / PAGE];
        for (unsigned p = 0; p < PAGE / PAGE; p++) {
            pages[p] = ha_iova((char *)region[r] + (size_t)p * PAGE) + (shift ? PAGE : 0);
        }
        if (rte_extmem_register(region[r], PAGE, pages, PAGE / PAGE, PAGE) != 0)
            DIE("rte_extmem_register: %s", rte_strerror(rte_errno));
        int rc = rte_dev_dma_map(info.device, region[r], pages[0], PAGE);
        if (rc != 0 && rte_errno != ENOTSUP) DIE("rte_dev_dma_map: %s", rte_strerror(rte_errno));
        if (r == 0) printf("rte_dev_dma_map on %s: %s\n", rte_dev_name(info.device), rc == 0 ? "mapped" : "not needed (ENOTSUP: the PMD copies)");
        /* The IOVA as DPDK's memory map has it now: the registration's. */
        struct rte_memseg *ms = rte_mem_virt2memseg(region[r], NULL);
        if (!ms) DIE("rte_mem_virt2memseg found no segment for the registered block");
        ext[r] = (struct rte_pktmbuf_extmem){
            .buf_ptr = region[r],
            .buf_iova = ms->iova + (uint64_t)((char *)region[r] - (char *)ms->addr),
            .buf_len = PAGE,
            .elt_size = ELEMENT,
        };
        elements += PAGE / ELEMENT;
        printf("block %d: va %p, ha_iova 0x%llx, registered 0x%llx\n", r, region[r],
               (unsigned long long)iova, (unsigned long long)ext[r].buf_iova);
    }

    /* 3-4: an mbuf pool whose data buffers are those blocks. */
    struct rte_mempool *mp = rte_pktmbuf_pool_create_extbuf("ha_extbuf", elements, 32, 0, ELEMENT,
                                                            (int)rte_socket_id(), ext, REGIONS);
    if (!mp) DIE("rte_pktmbuf_pool_create_extbuf: %s", rte_strerror(rte_errno));
    rte_mempool_obj_iter(mp, check_pool_mbuf, NULL);
    CHECK(checked_in_pool == elements, "checked %u mbufs of %u", checked_in_pool, elements);
    printf("pool: %u mbufs, data buffers in HugeAlloc memory, buf_iova == ha_iova(buf_addr): %s\n",
           checked_in_pool, failures ? "NO" : "yes");

    /* 5: the port on one veth end, a raw socket on the other. */
    struct rte_eth_conf conf = { 0 };
    if (rte_eth_dev_configure(port, 1, 1, &conf) != 0) DIE("rte_eth_dev_configure");
    if (rte_eth_rx_queue_setup(port, 0, 512, rte_eth_dev_socket_id(port), NULL, mp) != 0) DIE("rx queue setup");
    if (rte_eth_tx_queue_setup(port, 0, 512, rte_eth_dev_socket_id(port), NULL) != 0) DIE("tx queue setup");
    if (rte_eth_dev_start(port) != 0) DIE("rte_eth_dev_start");
    rte_eth_promiscuous_enable(port);

    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) DIE("socket(AF_PACKET): %s", strerror(errno));
    struct sockaddr_ll at = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)if_nametoindex(peer) };
    if (at.sll_ifindex == 0 || bind(s, (struct sockaddr *)&at, sizeof at) != 0) DIE("bind to %s: %s", peer, strerror(errno));
    int rcvbuf = 16 << 20;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);

    /* DPDK -> peer: frames written into mbufs from HugeAlloc memory. */
    uint8_t expected[1514], got[2048];
    unsigned sent = 0, received = 0;
    double deadline = now() + 20;
    while (received < FRAMES && now() < deadline) {
        if (sent < FRAMES && sent - received < 32) {
            struct rte_mbuf *m = rte_pktmbuf_alloc(mp);
            if (!m) DIE("rte_pktmbuf_alloc");
            check_mbuf(m, "tx");
            uint8_t *data = (uint8_t *)rte_pktmbuf_append(m, (uint16_t)frame_length(sent));
            fill_frame(data, sent, 1);
            if (rte_eth_tx_burst(port, 0, &m, 1) == 1) sent++;
            else rte_pktmbuf_free(m);
        }
        struct pollfd pfd = { .fd = s, .events = POLLIN };
        if (poll(&pfd, 1, sent < FRAMES ? 0 : 10) <= 0) continue;
        struct sockaddr_ll from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(s, got, sizeof got, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0 || from.sll_pkttype == PACKET_OUTGOING || !is_ours(got, (size_t)n, 1)) continue;
        unsigned i;
        memcpy(&i, got + 14, 4);
        CHECK(i == received, "peer got frame %u, expected %u", i, received);
        fill_frame(expected, received, 1);
        CHECK((size_t)n == frame_length(received) && memcmp(got, expected, (size_t)n) == 0,
              "frame %u differs at the peer (%zd bytes, expected %zu)", received, n, frame_length(received));
        received++;
    }
    CHECK(received == FRAMES, "DPDK -> peer: %u of %u frames arrived", received, FRAMES);
    printf("DPDK -> peer: %u of %u frames, byte for byte\n", received, FRAMES);

    /* peer -> DPDK: frames land in mbufs from HugeAlloc memory. */
    unsigned arrived = 0;
    sent = 0;
    deadline = now() + 20;
    while (arrived < FRAMES && now() < deadline) {
        if (sent < FRAMES && sent - arrived < 32) {
            fill_frame(expected, sent, 2);
            if (send(s, expected, frame_length(sent), 0) == (ssize_t)frame_length(sent)) sent++;
        }
        struct rte_mbuf *burst[32];
        uint16_t n = rte_eth_rx_burst(port, 0, burst, 32);
        for (uint16_t k = 0; k < n; k++) {
            struct rte_mbuf *m = burst[k];
            check_mbuf(m, "rx");
            const uint8_t *data = rte_pktmbuf_mtod(m, const uint8_t *);
            CHECK(in_hugealloc_blocks(data, m->data_len), "rx: frame data %p is not in HugeAlloc memory", (const void *)data);
            CHECK(rte_pktmbuf_iova(m) == ha_iova(data), "rx: rte_pktmbuf_iova 0x%llx, ha_iova 0x%llx",
                  (unsigned long long)rte_pktmbuf_iova(m), (unsigned long long)ha_iova(data));
            if (m->nb_segs == 1 && is_ours(data, m->data_len, 2)) {
                unsigned i;
                memcpy(&i, data + 14, 4);
                CHECK(i == arrived, "DPDK got frame %u, expected %u", i, arrived);
                fill_frame(expected, arrived, 2);
                CHECK(m->pkt_len == frame_length(arrived) && memcmp(data, expected, m->pkt_len) == 0,
                      "frame %u differs in DPDK (%u bytes, expected %zu)", arrived, m->pkt_len, frame_length(arrived));
                arrived++;
            }
            rte_pktmbuf_free(m);
        }
    }
    CHECK(arrived == FRAMES, "peer -> DPDK: %u of %u frames arrived", arrived, FRAMES);
    printf("peer -> DPDK: %u of %u frames, byte for byte\n", arrived, FRAMES);

    close(s);
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    CHECK(rte_mempool_avail_count(mp) == elements, "%u of %u mbufs back in the pool", rte_mempool_avail_count(mp), elements);
    rte_mempool_free(mp);
    for (int r = 0; r < REGIONS; r++) {
        struct rte_memseg *ms = rte_mem_virt2memseg(region[r], NULL);
        if (ms) rte_dev_dma_unmap(info.device, region[r], ms->iova, PAGE);
        if (rte_extmem_unregister(region[r], PAGE) != 0) CHECK(0, "rte_extmem_unregister: %s", rte_strerror(rte_errno));
        ha_free(region[r]);
    }
    rte_eal_cleanup();
    printf("%s (%d failed checks)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
