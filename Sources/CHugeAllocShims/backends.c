#ifndef _GNU_SOURCE
#error "CHugeAllocShims must be built with -D_GNU_SOURCE (see Package.swift)"
#endif

#include "CHugeAllocBackends.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- io_uring ---------------------------------------------------------- */

const int HA_O_DIRECT = O_DIRECT;

const unsigned HA_IORING_REGISTER_BUFFERS = IORING_REGISTER_BUFFERS;
const unsigned HA_IORING_UNREGISTER_BUFFERS = IORING_UNREGISTER_BUFFERS;
const unsigned HA_IORING_REGISTER_PBUF_RING = IORING_REGISTER_PBUF_RING;
const unsigned HA_IORING_UNREGISTER_PBUF_RING = IORING_UNREGISTER_PBUF_RING;
const unsigned char HA_IORING_OP_READ = IORING_OP_READ;
const unsigned char HA_IORING_OP_READ_FIXED = IORING_OP_READ_FIXED;
const unsigned char HA_IORING_OP_WRITE_FIXED = IORING_OP_WRITE_FIXED;
const unsigned char HA_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT;
const uint32_t HA_IORING_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
const unsigned HA_IORING_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;
const unsigned HA_IORING_MAX_REG_BUFFERS = 1u << 14;
const size_t HA_IO_URING_BUF_SIZE = sizeof(struct io_uring_buf);

_Static_assert(sizeof(struct ha_uring_buf_reg) == sizeof(struct io_uring_buf_reg), "io_uring_buf_reg layout");

static void *map_ring(int fd, size_t length, off_t offset) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset);
    return p == MAP_FAILED ? NULL : p;
}

int ha_uring_open(struct ha_uring *r, unsigned entries) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    memset(r, 0, sizeof *r);
    r->fd = -1;
    int fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0) return -1;
    r->fd = fd;
    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && r->cq_map_len > r->sq_map_len) r->sq_map_len = r->cq_map_len;
    r->sq_map = map_ring(fd, r->sq_map_len, IORING_OFF_SQ_RING);
    if (!r->sq_map) goto fail;
    if (single) {
        r->cq_map = r->sq_map;
        r->cq_map_len = 0;
    } else if (!(r->cq_map = map_ring(fd, r->cq_map_len, IORING_OFF_CQ_RING))) {
        goto fail;
    }
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = map_ring(fd, r->sqes_len, IORING_OFF_SQES);
    if (!r->sqes) goto fail;
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = cq + p.cq_off.cqes;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    r->sq_local_tail = *r->sq_tail;
    return 0;
fail:;
    int e = errno;
    ha_uring_close(r);
    errno = e;
    return -1;
}

void ha_uring_close(struct ha_uring *r) {
    if (r->sqes) munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map) munmap(r->sq_map, r->sq_map_len);
    if (r->fd >= 0) close(r->fd);
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

int ha_uring_register(struct ha_uring *r, unsigned opcode, const void *arg, unsigned nr_args) {
    int ret = (int)syscall(__NR_io_uring_register, r->fd, opcode, arg, nr_args);
    return ret < 0 ? -1 : ret;
}

int ha_uring_queue_rw(struct ha_uring *r, unsigned char opcode, int fd, void *addr, unsigned len,
                      uint64_t offset, uint16_t buf, unsigned char sqe_flags, uint64_t user_data) {
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    if (r->sq_local_tail - head >= r->sq_entries) { errno = EBUSY; return -1; }
    unsigned index = r->sq_local_tail & *r->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)r->sqes + index;
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = opcode;
    sqe->flags = sqe_flags;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = len;
    sqe->off = offset;
    sqe->user_data = user_data;
    if (sqe_flags & IOSQE_BUFFER_SELECT) sqe->buf_group = buf; else sqe->buf_index = buf;
    r->sq_array[index] = index;
    r->sq_local_tail++;
    __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
    return 0;
}

int ha_uring_submit(struct ha_uring *r, unsigned wait_nr) {
    unsigned pending = r->sq_local_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    int ret = (int)syscall(__NR_io_uring_enter, r->fd, pending, wait_nr,
                           wait_nr ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
    return ret < 0 ? -1 : ret;
}

int ha_uring_reap(struct ha_uring *r, uint64_t *user_data, int32_t *res, uint32_t *flags) {
    unsigned head = *r->cq_head;
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    if (head == tail) return 0;
    const struct io_uring_cqe *cqe = (const struct io_uring_cqe *)r->cqes + (head & *r->cq_mask);
    *user_data = cqe->user_data;
    *res = cqe->res;
    *flags = cqe->flags;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return 1;
}

void ha_uring_buf_ring_add(void *ring, unsigned mask, unsigned index, void *addr, unsigned len, uint16_t bid) {
    struct io_uring_buf *b = &((struct io_uring_buf_ring *)ring)->bufs[index & mask];
    b->addr = (uint64_t)(uintptr_t)addr;
    b->len = len;
    b->bid = bid;
}

void ha_uring_buf_ring_publish(void *ring, uint16_t tail) {
    __atomic_store_n(&((struct io_uring_buf_ring *)ring)->tail, tail, __ATOMIC_RELEASE);
}

/* ---- AF_XDP -------------------------------------------------------------- */

const int HA_AF_XDP = AF_XDP;
const int HA_SOL_XDP = SOL_XDP;
const uint32_t HA_XDP_PACKET_HEADROOM = 256; /* XDP_PACKET_HEADROOM, include/uapi/linux/bpf.h */
const uint32_t HA_XDP_UMEM_MIN_CHUNK_SIZE = 2048;
const uint32_t HA_XDP_UMEM_UNALIGNED_CHUNK_FLAG = XDP_UMEM_UNALIGNED_CHUNK_FLAG;
const uint16_t HA_XDP_COPY = XDP_COPY;
const uint16_t HA_XDP_USE_NEED_WAKEUP = XDP_USE_NEED_WAKEUP;

int ha_xsk_socket(void) {
    int fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    return fd < 0 ? -1 : fd;
}

int ha_xsk_register_umem(int fd, void *addr, uint64_t len, uint32_t chunk_size, uint32_t headroom, uint32_t flags) {
    struct xdp_umem_reg reg;
    memset(&reg, 0, sizeof reg); /* newer kernels read the padding as tx_metadata_len */
    reg.addr = (uint64_t)(uintptr_t)addr;
    reg.len = len;
    reg.chunk_size = chunk_size;
    reg.headroom = headroom;
    reg.flags = flags;
    return setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof reg) == 0 ? 0 : -1;
}

int ha_xsk_map_ring(int fd, enum ha_xsk_ring_kind kind, uint32_t entries, struct ha_xsk_ring *ring) {
    static const int options[] = {XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING};
    static const uint64_t offsets[] = {XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING,
                                       XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING};
    memset(ring, 0, sizeof *ring);
    if ((unsigned)kind > HA_XSK_TX) { errno = EINVAL; return -1; }
    if (setsockopt(fd, SOL_XDP, options[kind], &entries, sizeof entries) != 0) return -1;
    struct xdp_mmap_offsets off;
    socklen_t optlen = sizeof off;
    if (getsockopt(fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen) != 0) return -1;
    const struct xdp_ring_offset *ro = kind == HA_XSK_FILL ? &off.fr
                                     : kind == HA_XSK_COMPLETION ? &off.cr
                                     : kind == HA_XSK_RX ? &off.rx : &off.tx;
    size_t desc_size = kind <= HA_XSK_COMPLETION ? sizeof(uint64_t) : sizeof(struct xdp_desc);
    size_t length = ro->desc + entries * desc_size;
    void *map = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (off_t)offsets[kind]);
    if (map == MAP_FAILED) return -1;
    ring->map = map;
    ring->map_len = length;
    ring->producer = (uint32_t *)((char *)map + ro->producer);
    ring->consumer = (uint32_t *)((char *)map + ro->consumer);
    ring->flags = (uint32_t *)((char *)map + ro->flags);
    ring->descs = (char *)map + ro->desc;
    ring->size = entries;
    ring->mask = entries - 1;
    return 0;
}

void ha_xsk_unmap_ring(struct ha_xsk_ring *ring) {
    if (ring->map) munmap(ring->map, ring->map_len);
    memset(ring, 0, sizeof *ring);
}

uint32_t ha_xsk_fill(struct ha_xsk_ring *ring, const uint64_t *addrs, uint32_t n) {
    uint32_t prod = *ring->producer;
    uint32_t cons = __atomic_load_n(ring->consumer, __ATOMIC_ACQUIRE);
    uint32_t room = ring->size - (prod - cons);
    if (n > room) n = room;
    uint64_t *descs = ring->descs;
    for (uint32_t i = 0; i < n; i++) descs[(prod + i) & ring->mask] = addrs[i];
    __atomic_store_n(ring->producer, prod + n, __ATOMIC_RELEASE);
    return n;
}

uint32_t ha_xsk_complete(struct ha_xsk_ring *ring, uint64_t *addrs, uint32_t n) {
    uint32_t cons = *ring->consumer;
    uint32_t prod = __atomic_load_n(ring->producer, __ATOMIC_ACQUIRE);
    if (n > prod - cons) n = prod - cons;
    const uint64_t *descs = ring->descs;
    for (uint32_t i = 0; i < n; i++) addrs[i] = descs[(cons + i) & ring->mask];
    __atomic_store_n(ring->consumer, cons + n, __ATOMIC_RELEASE);
    return n;
}

uint32_t ha_xsk_receive(struct ha_xsk_ring *ring, uint64_t *addrs, uint32_t *lengths, uint32_t n) {
    uint32_t cons = *ring->consumer;
    uint32_t prod = __atomic_load_n(ring->producer, __ATOMIC_ACQUIRE);
    if (n > prod - cons) n = prod - cons;
    const struct xdp_desc *descs = ring->descs;
    for (uint32_t i = 0; i < n; i++) {
        addrs[i] = descs[(cons + i) & ring->mask].addr;
        lengths[i] = descs[(cons + i) & ring->mask].len;
    }
    __atomic_store_n(ring->consumer, cons + n, __ATOMIC_RELEASE);
    return n;
}

uint32_t ha_xsk_transmit(struct ha_xsk_ring *ring, const uint64_t *addrs, const uint32_t *lengths, uint32_t n) {
    uint32_t prod = *ring->producer;
    uint32_t cons = __atomic_load_n(ring->consumer, __ATOMIC_ACQUIRE);
    uint32_t room = ring->size - (prod - cons);
    if (n > room) n = room;
    struct xdp_desc *descs = ring->descs;
    for (uint32_t i = 0; i < n; i++) {
        struct xdp_desc *d = &descs[(prod + i) & ring->mask];
        d->addr = addrs[i];
        d->len = lengths[i];
        d->options = 0;
    }
    __atomic_store_n(ring->producer, prod + n, __ATOMIC_RELEASE);
    return n;
}

uint32_t ha_xsk_ring_room(const struct ha_xsk_ring *ring) {
    return ring->size - (*ring->producer - __atomic_load_n(ring->consumer, __ATOMIC_ACQUIRE));
}

int ha_xsk_ring_needs_wakeup(const struct ha_xsk_ring *ring) {
    return ring->flags && (__atomic_load_n(ring->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP) != 0;
}

int ha_xsk_kick_transmit(int fd) {
    return sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 ? -1 : 0;
}

uint32_t ha_xsk_ring_pending(const struct ha_xsk_ring *ring) {
    return __atomic_load_n(ring->producer, __ATOMIC_ACQUIRE) - __atomic_load_n(ring->consumer, __ATOMIC_ACQUIRE);
}

int ha_xsk_bind(int fd, uint32_t ifindex, uint32_t queue_id, uint16_t flags) {
    struct sockaddr_xdp sxdp;
    memset(&sxdp, 0, sizeof sxdp);
    sxdp.sxdp_family = AF_XDP;
    sxdp.sxdp_flags = flags;
    sxdp.sxdp_ifindex = ifindex;
    sxdp.sxdp_queue_id = queue_id;
    return bind(fd, (struct sockaddr *)&sxdp, sizeof sxdp) == 0 ? 0 : -1;
}

/* ---- XDP redirect to an AF_XDP socket ------------------------------------ */

static long bpf_call(int cmd, union bpf_attr *attr) {
    return syscall(__NR_bpf, cmd, attr, sizeof *attr);
}

int ha_xsk_map_create(uint32_t entries) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_XSKMAP;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = entries;
    long fd = bpf_call(BPF_MAP_CREATE, &attr);
    return fd < 0 ? -1 : (int)fd;
}

int ha_xsk_map_set(int map_fd, uint32_t key, int xsk_fd) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    uint32_t value = (uint32_t)xsk_fd;
    attr.map_fd = (uint32_t)map_fd;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&value;
    return bpf_call(BPF_MAP_UPDATE_ELEM, &attr) < 0 ? -1 : 0;
}

int ha_xdp_redirect_program(int map_fd, char *log, uint32_t log_size) {
    struct bpf_insn insns[] = {
        /* r2 = ctx->rx_queue_index */
        {.code = BPF_LDX | BPF_MEM | BPF_W, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_1,
         .off = offsetof(struct xdp_md, rx_queue_index)},
        /* r1 = the map (a 16-byte load of its fd) */
        {.code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map_fd},
        {0},
        /* r3 = XDP_PASS: the action when the slot is empty */
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = XDP_PASS},
        {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect_map},
        {.code = BPF_JMP | BPF_EXIT},
    };
    static const char license[] = "GPL";
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_XDP;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = sizeof insns / sizeof insns[0];
    attr.license = (uint64_t)(uintptr_t)license;
    if (log && log_size) {
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    long fd = bpf_call(BPF_PROG_LOAD, &attr);
    if (fd < 0 && log && log_size && errno != EINVAL) log[0] = 0;
    return fd < 0 ? -1 : (int)fd;
}

int ha_xdp_attach(int prog_fd, uint32_t ifindex, int skb_mode) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.link_create.prog_fd = (uint32_t)prog_fd;
    attr.link_create.target_ifindex = ifindex;
    attr.link_create.attach_type = BPF_XDP;
    attr.link_create.flags = skb_mode ? XDP_FLAGS_SKB_MODE : 0;
    long fd = bpf_call(BPF_LINK_CREATE, &attr);
    return fd < 0 ? -1 : (int)fd;
}

long ha_packet_send(uint32_t ifindex, const void *frame, size_t length) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0) return -1;
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_ifindex = (int)ifindex;
    to.sll_halen = ETH_ALEN;
    memcpy(to.sll_addr, frame, ETH_ALEN);
    long sent = sendto(fd, frame, length, 0, (struct sockaddr *)&to, sizeof to);
    int e = errno;
    close(fd);
    errno = e;
    return sent < 0 ? -1 : sent;
}

int ha_direct_io_alignment(int fd, uint32_t *memory_alignment, uint32_t *offset_alignment) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    if (!(flags & O_DIRECT)) return 0;
    struct statx stx;
    memset(&stx, 0, sizeof stx);
#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0) return -1;
    if (!(stx.stx_mask & STATX_DIOALIGN)) {
        /* The file system does not say: the logical block size is what
         * block devices and most file systems ask for. */
        *memory_alignment = 512;
        *offset_alignment = 512;
        return 1;
    }
    *memory_alignment = stx.stx_dio_mem_align;
    *offset_alignment = stx.stx_dio_offset_align;
    return 1;
}
