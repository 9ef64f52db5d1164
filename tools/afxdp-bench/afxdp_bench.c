/*
 * The loop of `hugealloc-bench afxdp`, written against libxdp's xsk API:
 * one thread sends frames from one AF_XDP socket out of TX_IF and receives
 * them with a second AF_XDP socket on RX_IF (the other end of a veth pair),
 * both in copy mode, for SECONDS seconds.
 *
 * Per round, as the Swift loop does: take back completed TX frames (onto
 * the TX socket's free stack), send BATCH frames (reserve, write
 * descriptors, submit, kick with sendto while the kernel needs it and the
 * TX ring empties), receive up to BATCH frames and give their frames back
 * to the fill ring (through the RX socket's free stack). The free stacks are
 * this program's stand-in for a packet pool.
 *
 * Usage: afxdp_bench TX_IF RX_IF SECONDS BATCH FRAME_SIZE [FILL]
 * (FILL: frames kept on the fill ring, BATCH...2048, default 2048)
 * Prints tx_persec=N and rx_persec=N last (frames completed / received per
 * second), after the same per CPU second of this process (tx_per_cpu_second,
 * rx_per_cpu_second).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

#define FRAMES 4096
#define FRAME_SIZE XSK_UMEM__DEFAULT_FRAME_SIZE /* 2048 */
#define RING 2048

struct side {
    void *area;
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fq, tx;
    struct xsk_ring_cons cq, rx;
    uint64_t free_stack[FRAMES];
    uint32_t free_count;
};

static int rx_ifindex;

/* libxdp attached its program by netlink: it stays after exit unless detached. */
static void detach_program(void) {
    if (rx_ifindex) bpf_xdp_detach(rx_ifindex, XDP_FLAGS_SKB_MODE, NULL);
}

static void die(const char *what, int err) {
    fprintf(stderr, "afxdp_bench: %s: %s\n", what, strerror(err < 0 ? -err : err));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* User + system CPU seconds of this process (getrusage). */
static double user_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void open_side(struct side *s, const char *ifname, int rx, int tx) {
    size_t size = (size_t)FRAMES * FRAME_SIZE;
    /* 2 MiB hugepages, as the Swift side's packet pool: no fallback, so both
     * sides always run on the same kind of memory. */
    s->area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (s->area == MAP_FAILED) die("mmap(MAP_HUGETLB) of the UMEM (free 2 MiB hugepages?)", errno);
    struct xsk_umem_config ucfg = {
        .fill_size = RING, .comp_size = RING, .frame_size = FRAME_SIZE,
        .frame_headroom = XSK_UMEM__DEFAULT_FRAME_HEADROOM, .flags = 0,
    };
    int ret = xsk_umem__create(&s->umem, s->area, size, &s->fq, &s->cq, &ucfg);
    if (ret) die("xsk_umem__create", ret);
    struct xsk_socket_config cfg = {
        .rx_size = rx ? RING : 0, .tx_size = tx ? RING : 0,
        .libxdp_flags = rx ? 0 : XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = XDP_FLAGS_SKB_MODE, /* generic XDP, as XDPRedirect's default */
        .bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
    };
    ret = xsk_socket__create(&s->xsk, ifname, 0, s->umem, rx ? &s->rx : NULL, tx ? &s->tx : NULL, &cfg);
    if (ret) die("xsk_socket__create", ret);
    for (uint32_t i = 0; i < FRAMES; i++) s->free_stack[i] = (uint64_t)i * FRAME_SIZE;
    s->free_count = FRAMES;
}

/* Kicks while the kernel needs it and each kick empties the TX ring further. */
static void kick_tx(struct side *s) {
    uint32_t pending = s->tx.cached_prod - *s->tx.consumer;
    while (pending > 0 && xsk_ring_prod__needs_wakeup(&s->tx)) {
        int ret = sendto(xsk_socket__fd(s->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0);
        if (ret < 0 && errno != EAGAIN && errno != EBUSY && errno != ENOBUFS && errno != ENETDOWN) die("sendto", errno);
        uint32_t left = s->tx.cached_prod - __atomic_load_n(s->tx.consumer, __ATOMIC_ACQUIRE);
        if ((ret >= 0 && left == 0) || left >= pending) break;
        pending = left;
    }
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: afxdp_bench TX_IF RX_IF SECONDS BATCH FRAME_SIZE [FILL]\n");
        return 2;
    }
    const char *tx_if = argv[1], *rx_if = argv[2];
    double seconds = atof(argv[3]);
    uint32_t batch = (uint32_t)atoi(argv[4]), frame_len = (uint32_t)atoi(argv[5]);
    uint32_t fill = argc == 7 ? (uint32_t)atoi(argv[6]) : RING;
    if (batch == 0 || batch > 256 || frame_len < 60 || frame_len > 1514 || fill < batch || fill > RING) {
        fprintf(stderr, "afxdp_bench: BATCH must be 1...256, FRAME_SIZE 60...1514 and FILL BATCH...%d\n", RING);
        return 2;
    }
    static struct side txs, rxs;
    /* libxdp without a bpffs cannot tell when its program is no longer in
     * use: detach it at exit, also after a failure. */
    rx_ifindex = (int)if_nametoindex(rx_if);
    atexit(detach_program);
    libbpf_set_print(NULL); /* its notes on libxdp's object sections */
    libxdp_set_print(NULL);
    open_side(&rxs, rx_if, 1, 0);
    open_side(&txs, tx_if, 0, 1);

    /* Every TX frame holds the same Ethernet frame, written once. */
    uint8_t frame[1514];
    memset(frame, 0xFF, 6);
    memcpy(frame + 6, "\x02\x00\x00\x00\x00\x01\x88\xb5", 8);
    for (uint32_t i = 14; i < frame_len; i++) frame[i] = (uint8_t)i;
    for (uint32_t i = 0; i < FRAMES; i++)
        memcpy(xsk_umem__get_data(txs.area, (uint64_t)i * FRAME_SIZE + XSK_UMEM__DEFAULT_FRAME_HEADROOM), frame, frame_len);

    /* The RX socket's fill ring: FILL frames. */
    uint32_t idx;
    if (xsk_ring_prod__reserve(&rxs.fq, fill, &idx) != fill) die("fill ring reserve", EINVAL);
    for (uint32_t i = 0; i < fill; i++) *xsk_ring_prod__fill_addr(&rxs.fq, idx + i) = rxs.free_stack[--rxs.free_count];
    xsk_ring_prod__submit(&rxs.fq, fill);

    uint64_t sent = 0, completed = 0, received = 0;
    double cpu_start = cpu_seconds(), user_start = user_seconds();
    double start = now(), elapsed;
    do {
        /* Completions back onto the free stack. */
        uint32_t n = xsk_ring_cons__peek(&txs.cq, 256, &idx);
        for (uint32_t i = 0; i < n; i++)
            txs.free_stack[txs.free_count++] = *xsk_ring_cons__comp_addr(&txs.cq, idx + i) & ~(uint64_t)(FRAME_SIZE - 1);
        xsk_ring_cons__release(&txs.cq, n);
        completed += n;

        /* A batch out. */
        uint32_t k = batch < txs.free_count ? batch : txs.free_count;
        if (k > 0 && xsk_ring_prod__reserve(&txs.tx, k, &idx) == k) {
            for (uint32_t i = 0; i < k; i++) {
                struct xdp_desc *d = xsk_ring_prod__tx_desc(&txs.tx, idx + i);
                d->addr = txs.free_stack[--txs.free_count] + XSK_UMEM__DEFAULT_FRAME_HEADROOM;
                d->len = frame_len;
            }
            xsk_ring_prod__submit(&txs.tx, k);
            sent += k;
            kick_tx(&txs);
        }

        /* A batch in, and its frames back to the fill ring. */
        n = xsk_ring_cons__peek(&rxs.rx, batch, &idx);
        for (uint32_t i = 0; i < n; i++)
            rxs.free_stack[rxs.free_count++] = xsk_ring_cons__rx_desc(&rxs.rx, idx + i)->addr & ~(uint64_t)(FRAME_SIZE - 1);
        xsk_ring_cons__release(&rxs.rx, n);
        received += n;
        if (n > 0 && xsk_ring_prod__reserve(&rxs.fq, n, &idx) == n) {
            for (uint32_t i = 0; i < n; i++) *xsk_ring_prod__fill_addr(&rxs.fq, idx + i) = rxs.free_stack[--rxs.free_count];
            xsk_ring_prod__submit(&rxs.fq, n);
        }
        elapsed = now() - start;
    } while (elapsed < seconds);
    double cpu = cpu_seconds() - cpu_start, user = user_seconds() - user_start;

    struct xdp_statistics stats;
    socklen_t len = sizeof stats;
    memset(&stats, 0, sizeof stats);
    getsockopt(xsk_socket__fd(rxs.xsk), SOL_XDP, XDP_STATISTICS, &stats, &len);
    printf("afxdp libxdp batch=%u frame=%u fill=%u copy mode: sent %llu, completed %llu, received %llu in %.3f s, %.3f s of CPU; "
           "rx_dropped %llu, rx_ring_full %llu, rx_fill_ring_empty %llu\n",
           batch, frame_len, fill, (unsigned long long)sent, (unsigned long long)completed, (unsigned long long)received,
           elapsed, cpu, (unsigned long long)stats.rx_dropped, (unsigned long long)stats.rx_ring_full,
           (unsigned long long)stats.rx_fill_ring_empty_descs);
    xsk_socket__delete(txs.xsk);
    xsk_socket__delete(rxs.xsk);
    xsk_umem__delete(txs.umem);
    xsk_umem__delete(rxs.umem);
    /* User time of the loop alone per frame received (the kernel's copy path is system time). */
    printf("user_ns_per_frame=%.1f\n", user * 1e9 / (double)(received ? received : 1));
    printf("tx_per_cpu_second=%.0f\n", completed / cpu);
    printf("rx_per_cpu_second=%.0f\n", received / cpu);
    printf("tx_persec=%.0f\n", completed / elapsed);
    printf("rx_persec=%.0f\n", received / elapsed);
    return 0;
}
