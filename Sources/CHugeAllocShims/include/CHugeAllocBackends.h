#ifndef CHUGEALLOC_BACKENDS_H
#define CHUGEALLOC_BACKENDS_H

/*
 * io_uring and AF_XDP rings, by raw system calls: the ring layouts and the
 * acquire/release order of their head and tail indices live here, in C;
 * Swift sees opaque pointers and plain integers; every call reports failure as
 * the C library does, -1 with errno set (the one convention of CHugeAllocShims).
 */

#include <stddef.h>
#include <stdint.h>

/* ---- io_uring ---------------------------------------------------------- */

/* O_DIRECT, which Glibc's overlay hides (it needs _GNU_SOURCE). */
extern const int HA_O_DIRECT;

/* One io_uring instance: the fd and the mapped submission/completion rings. */
struct ha_uring {
    int fd;
    unsigned sq_entries, cq_entries;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    void *sqes;
    void *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
    unsigned sq_local_tail;
};

extern const unsigned HA_IORING_REGISTER_BUFFERS;
extern const unsigned HA_IORING_UNREGISTER_BUFFERS;
extern const unsigned HA_IORING_REGISTER_PBUF_RING;
extern const unsigned HA_IORING_UNREGISTER_PBUF_RING;
extern const unsigned char HA_IORING_OP_READ;
extern const unsigned char HA_IORING_OP_READ_FIXED;
extern const unsigned char HA_IORING_OP_WRITE_FIXED;
extern const unsigned char HA_IOSQE_BUFFER_SELECT;
extern const uint32_t HA_IORING_CQE_F_BUFFER;
extern const unsigned HA_IORING_CQE_BUFFER_SHIFT;
/* IORING_MAX_REG_BUFFERS (kernel-internal, io_uring/rsrc.c). */
extern const unsigned HA_IORING_MAX_REG_BUFFERS;

/* io_uring_setup(2) and the ring mappings. Returns 0 or -1 with errno set. */
int ha_uring_open(struct ha_uring *ring, unsigned entries);
/* Unmaps the rings and closes the fd. */
void ha_uring_close(struct ha_uring *ring);
/* io_uring_register(2). Returns the call's result or -1 with errno set. */
int ha_uring_register(struct ha_uring *ring, unsigned opcode, const void *arg, unsigned nr_args);
/*
 * Queues one read/write SQE. `buf` is buf_index for *_FIXED opcodes and the
 * buffer group for IOSQE_BUFFER_SELECT. Returns 0, or -1 with errno EBUSY when the
 * submission ring is full.
 */
int ha_uring_queue_rw(struct ha_uring *ring, unsigned char opcode, int fd, void *addr, unsigned len,
                      uint64_t offset, uint16_t buf, unsigned char sqe_flags, uint64_t user_data);
/* io_uring_enter(2): submits what was queued and waits for `wait_nr`
 * completions. Returns the number submitted or -1 with errno set. */
int ha_uring_submit(struct ha_uring *ring, unsigned wait_nr);
/* Takes one completion: 1 and its fields, or 0 when none is ready. */
int ha_uring_reap(struct ha_uring *ring, uint64_t *user_data, int32_t *res, uint32_t *flags);

/* The `struct io_uring_buf_reg` argument of IORING_REGISTER_PBUF_RING. */
struct ha_uring_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};
/* Bytes of one provided-buffer ring entry (`struct io_uring_buf`). */
extern const size_t HA_IO_URING_BUF_SIZE;
/* Writes entry (tail + offset) & mask of a provided-buffer ring. */
void ha_uring_buf_ring_add(void *ring, unsigned mask, unsigned index, void *addr, unsigned len, uint16_t bid);
/* Publishes entries up to `tail` (a release store of the ring's tail). */
void ha_uring_buf_ring_publish(void *ring, uint16_t tail);

/* ---- AF_XDP -------------------------------------------------------------- */

extern const int HA_AF_XDP;
extern const int HA_SOL_XDP;
extern const uint32_t HA_XDP_PACKET_HEADROOM;
extern const uint32_t HA_XDP_UMEM_MIN_CHUNK_SIZE;
extern const uint32_t HA_XDP_UMEM_UNALIGNED_CHUNK_FLAG;
extern const uint16_t HA_XDP_COPY;
extern const uint16_t HA_XDP_USE_NEED_WAKEUP;

enum ha_xsk_ring_kind { HA_XSK_FILL = 0, HA_XSK_COMPLETION = 1, HA_XSK_RX = 2, HA_XSK_TX = 3 };

/* A mapped AF_XDP ring (fill and completion rings hold u64 UMEM addresses,
 * RX and TX rings `struct xdp_desc`). */
struct ha_xsk_ring {
    uint32_t *producer, *consumer, *flags;
    void *descs;
    uint32_t size, mask;
    void *map;
    size_t map_len;
};

/* socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0). Returns the fd or -1 with errno set. */
int ha_xsk_socket(void);
/* setsockopt(SOL_XDP, XDP_UMEM_REG). Returns 0 or -1 with errno set. */
int ha_xsk_register_umem(int fd, void *addr, uint64_t len, uint32_t chunk_size, uint32_t headroom, uint32_t flags);
/* setsockopt of the ring's size, getsockopt(XDP_MMAP_OFFSETS), mmap of the
 * ring at its page offset. Returns 0 or -1 with errno set. */
int ha_xsk_map_ring(int fd, enum ha_xsk_ring_kind kind, uint32_t entries, struct ha_xsk_ring *ring);
void ha_xsk_unmap_ring(struct ha_xsk_ring *ring);
/* Puts up to `n` UMEM addresses on a fill ring; returns how many fit. */
uint32_t ha_xsk_fill(struct ha_xsk_ring *ring, const uint64_t *addrs, uint32_t n);
/* Takes up to `n` UMEM addresses off a completion ring. */
uint32_t ha_xsk_complete(struct ha_xsk_ring *ring, uint64_t *addrs, uint32_t n);
/* Takes up to `n` RX descriptors: UMEM address and length of each frame. */
uint32_t ha_xsk_receive(struct ha_xsk_ring *ring, uint64_t *addrs, uint32_t *lengths, uint32_t n);
/* Puts up to `n` TX descriptors (UMEM address and length of each frame) on a
 * TX ring; returns how many fit. */
uint32_t ha_xsk_transmit(struct ha_xsk_ring *ring, const uint64_t *addrs, const uint32_t *lengths, uint32_t n);
/* Free slots of a ring this process produces to (fill, TX). */
uint32_t ha_xsk_ring_room(const struct ha_xsk_ring *ring);
/* Whether the kernel set XDP_RING_NEED_WAKEUP in the ring's flags (sockets
 * bound with XDP_USE_NEED_WAKEUP). */
int ha_xsk_ring_needs_wakeup(const struct ha_xsk_ring *ring);
/* sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0): asks the kernel to transmit
 * what is on the TX ring. Returns 0 or -1 with errno set (EAGAIN, EBUSY,
 * ENOBUFS and ENETDOWN mean "busy, kick again later"). */
int ha_xsk_kick_transmit(int fd);
/* Entries a producer has published and the consumer not yet taken. */
uint32_t ha_xsk_ring_pending(const struct ha_xsk_ring *ring);
/* Zero-copy batch access, inline so a caller's loop reads and writes the
 * ring slots itself (no copy through scratch arrays): the consumer peeks at
 * up to `n` entries from slot index *start (mask with ring->mask), reads
 * them, then releases them; the producer reserves room for up to `n` from
 * *start, writes them, then submits as many as it wrote (at most the
 * reserved number). The index the other side moves is read with acquire
 * order, the own index published with release order, as in the calls above. */
static inline uint32_t ha_xsk_peek(const struct ha_xsk_ring *ring, uint32_t n, uint32_t *start) {
    uint32_t cons = *ring->consumer;
    uint32_t ready = __atomic_load_n(ring->producer, __ATOMIC_ACQUIRE) - cons;
    *start = cons;
    return n < ready ? n : ready;
}
static inline void ha_xsk_release(struct ha_xsk_ring *ring, uint32_t n) {
    __atomic_store_n(ring->consumer, *ring->consumer + n, __ATOMIC_RELEASE);
}
static inline uint32_t ha_xsk_reserve(const struct ha_xsk_ring *ring, uint32_t n, uint32_t *start) {
    uint32_t prod = *ring->producer;
    uint32_t room = ring->size - (prod - __atomic_load_n(ring->consumer, __ATOMIC_ACQUIRE));
    *start = prod;
    return n < room ? n : room;
}
static inline void ha_xsk_submit(struct ha_xsk_ring *ring, uint32_t n) {
    __atomic_store_n(ring->producer, *ring->producer + n, __ATOMIC_RELEASE);
}
/* bind(2) to an interface queue with `struct sockaddr_xdp`. Returns 0 or -1 with errno set. */
int ha_xsk_bind(int fd, uint32_t ifindex, uint32_t queue_id, uint16_t flags);

/* ---- XDP redirect to an AF_XDP socket (bpf(2), no libbpf) ----------------- */

/* An XSKMAP of `entries` slots. Returns the map fd or -1 with errno set. */
int ha_xsk_map_create(uint32_t entries);
/* Puts AF_XDP socket `xsk_fd` in slot `key` (the RX queue index). Returns 0 or -1 with errno set. */
int ha_xsk_map_set(int map_fd, uint32_t key, int xsk_fd);
/*
 * Loads an XDP program that redirects every frame to the socket in `map_fd`
 * at its RX queue's index (`bpf_redirect_map`), passing frames on when the
 * slot is empty. Returns the program fd or -1 with errno set; the verifier's log goes
 * to `log` when it refuses.
 */
int ha_xdp_redirect_program(int map_fd, char *log, uint32_t log_size);
/* Attaches an XDP program to an interface with a BPF link (BPF_LINK_CREATE,
 * BPF_XDP); `skb_mode` selects generic XDP. The program stays attached
 * while the returned link fd is open. Returns the fd or -1 with errno set. */
int ha_xdp_attach(int prog_fd, uint32_t ifindex, int skb_mode);

/* Sends one raw Ethernet frame out of an interface (AF_PACKET, SOCK_RAW).
 * Returns the bytes sent or -1 with errno set. */
long ha_packet_send(uint32_t ifindex, const void *frame, size_t length);

/* ---- O_DIRECT ------------------------------------------------------------ */

/* Whether `fd` was opened with O_DIRECT (fcntl(F_GETFL)) and, if so, the
 * alignment the kernel asks of the buffer address and of the file offset and
 * length (statx(2) with STATX_DIOALIGN; 512 when the file system does not
 * say). Returns 1 with both set, 0 when the file is not O_DIRECT, or -1 with
 * errno set. Alignments of 0 mean the file does not support direct I/O. */
int ha_direct_io_alignment(int fd, uint32_t *memory_alignment, uint32_t *offset_alignment);

#endif
