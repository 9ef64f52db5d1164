/*
 * hugealloc.h: the C API of HugeAlloc, DMA-ready memory for Linux.
 *
 * Plain C99. Build against it with pkg-config:
 *
 *     cc app.c $(pkg-config --cflags --libs hugealloc)
 *
 * Every entry point calls the Swift library (libHugeAllocC.so); there is no
 * second implementation. The one exception is the hot path of the four
 * mempool get and put calls, which this header inlines, as DPDK's
 * rte_mempool.h does: an object taken from or put into the calling
 * thread's cache, when the cache can serve the call alone (a handful of
 * loads and stores); everything else (refills, flushes, checked pools,
 * errors) is a call into the library. Define HA_NO_INLINE before including
 * this header to call the library every time. docs/c-api.md has the
 * ownership and threading rules and a walkthrough that runs DPDK on this
 * memory.
 *
 * Errors: a function that can fail returns 0 or a negative HA_ERR_* code
 * (pointer-returning functions return NULL), and ha_last_error() then
 * describes what was wrong and how to fix it. The description is kept per
 * thread. No function aborts the process on bad arguments: NULL pointers,
 * zero or overflowing sizes, alignments that are not powers of two, unknown
 * flags and pointers from elsewhere are reported as HA_ERR_* codes. What
 * cannot be checked without slowing the fast path (a double put into an
 * unchecked pool, a pointer into the middle of a heap block) is named in the
 * comment of the function concerned; create the pool with
 * HA_MEMPOOL_CHECKED, or the heap with HA_HEAP_CHECKED, to have it checked.
 * A pool argument must be NULL or a live pool from ha_mempool_create(): the
 * get and put paths do not look it up (ha_mempool_destroy() does, and
 * refuses anything else).
 */
#ifndef HUGEALLOC_H
#define HUGEALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- constants ---------------------------------------------------------- */

/* A NUMA node argument meaning "any node": the calling thread's node first,
 * then any other. */
#define HA_NODE_ANY (-1)
/* What ha_iova() returns for an address that is not HugeAlloc memory (or
 * whose IOVA the kernel hides: reading physical addresses needs
 * CAP_SYS_ADMIN). */
#define HA_BAD_IOVA UINT64_MAX

/* Error codes: every failing call returns one of these (negative). */
#define HA_OK                     0
#define HA_ERR_INVALID_ARGUMENT (-1)  /* NULL, zero or out-of-range size, bad alignment, unknown flag */
#define HA_ERR_NO_MEMORY        (-2)  /* too few free hugepages, memlock limit, heap exhausted */
#define HA_ERR_NO_OBJECTS       (-3)  /* a bulk get asked for more objects than are available */
#define HA_ERR_NAME_EXISTS      (-4)  /* a live pool already has this name */
#define HA_ERR_BAD_POINTER      (-5)  /* not this pool's or the heap's, not an object start, double free */
#define HA_ERR_LIMIT            (-6)  /* too many pools alive at once */
#define HA_ERR_SYSTEM           (-7)  /* a system call failed; the message names it and its errno */

/* Flags of ha_mempool_create(), or-ed together. */
/* Checked mode: puts check that each object is the pool's, at an object's
 * start, handed out (no double put) and not overrun (a guard cookie after
 * each object). A failed check is reported (ha_last_error()) and the object
 * is not put back. Costs 8 bytes per object and a check per put. */
#define HA_MEMPOOL_CHECKED        (1u << 0)
/* One thread at a time: no atomics and no per-thread caches, a plain LIFO
 * array. Using such a pool from two threads at once is a data race. */
#define HA_MEMPOOL_SINGLE_THREAD  (1u << 1)
/* A LIFO stack behind the caches instead of the lock-free ring: the object
 * put back last is handed out next (cache-warm). */
#define HA_MEMPOOL_STACK          (1u << 2)

/* Flags of ha_heap_init(). */
/* Checked heap: ha_free() checks that the pointer starts a live block. */
#define HA_HEAP_CHECKED           (1u << 0)
/* A block larger than 2 MiB needs a physically contiguous run of 2 MiB
 * pages; the heap looks for one among a bounded share of the free pages
 * (eight times the block plus 128 MiB, or 256 MiB, whichever is more),
 * leaving other processes the rest while it looks. With this flag it looks
 * at every free 2 MiB page: for a machine whose free pages are fragmented
 * (its ha_malloc() failing with "no physically contiguous run"). */
#define HA_HEAP_SEARCH_ALL        (1u << 1)

/* ---- mempools ----------------------------------------------------------- */

/* A pool of fixed-size objects in hugepage memory, each with an IOVA. */
typedef struct ha_mempool ha_mempool;

/* Creates a pool of `count` objects of `object_size` bytes (each starting
 * at a 64-byte boundary, starts spread over 4 memory channels as DPDK does)
 * in a new mapping of 2 MiB hugepages, populated, with every page's IOVA
 * read once from /proc/self/pagemap.
 *   name        a unique name among the live pools of this API (1 to 63 bytes)
 *   count       1 to 2^31 - 1 objects
 *   object_size bytes per object, at least 1; an object larger than a page
 *               needs physically contiguous pages
 *   cache_size  objects each thread keeps for itself, 0 (no cache) to 512
 *   numa_node   HA_NODE_ANY, or a node the memory must be on (mbind(2)
 *               MPOL_BIND: fails rather than fall back to another node)
 *   flags       HA_MEMPOOL_* or-ed, or 0
 *   out         receives the pool; left untouched on failure
 * Returns 0, or HA_ERR_INVALID_ARGUMENT, HA_ERR_NO_MEMORY (the message gives
 * how many objects would fit and the command that reserves more hugepages),
 * HA_ERR_NAME_EXISTS, HA_ERR_LIMIT, HA_ERR_SYSTEM. */
int  ha_mempool_create(const char *name, size_t count, size_t object_size, size_t cache_size, int numa_node, unsigned flags, ha_mempool **out);

/* Destroys a pool and unmaps its memory. Every object must be back in the
 * pool and no other thread may use it any more; pointers into the pool are
 * dangling afterwards. NULL is ignored. */
void ha_mempool_destroy(ha_mempool *pool);

/* Takes one object, or returns NULL when the pool is empty (or `pool` is
 * NULL; ha_last_error() says which). Thread-safe unless the pool was created
 * with HA_MEMPOOL_SINGLE_THREAD. */
void *ha_mempool_get(ha_mempool *pool);                                  /* NULL when empty */

/* Takes `n` objects into objects[0..n-1], all or nothing. Returns 0, or
 * HA_ERR_NO_OBJECTS (nothing taken) when fewer than `n` are available,
 * HA_ERR_INVALID_ARGUMENT for a NULL pool, NULL `objects` with n > 0, or
 * n larger than the pool. n == 0 returns 0. */
int  ha_mempool_get_bulk(ha_mempool *pool, void **objects, unsigned n);  /* all or nothing */

/* Puts one object back. NULL objects and pointers outside the pool's memory
 * are refused (ha_last_error() says so; nothing is put back). In a checked
 * pool every misuse is refused likewise. In an unchecked pool a pointer
 * inside the pool that is not an object the pool handed out, or an object
 * put back twice, is not detected and corrupts the pool: create it with
 * HA_MEMPOOL_CHECKED while debugging. */
void ha_mempool_put(ha_mempool *pool, void *object);

/* Puts objects[0..n-1] back. Refused (nothing put back, ha_last_error()
 * says why): a NULL pool, NULL `objects` with n > 0, n larger than the pool.
 * A checked pool also checks every object as ha_mempool_put() does and
 * refuses the whole call on the first misuse. An unchecked pool does not
 * look at the pointers (a range check per object would cost more than the
 * bulk put itself): NULL or foreign pointers, or objects put back twice,
 * corrupt the pool there. n == 0 does nothing. */
void ha_mempool_put_bulk(ha_mempool *pool, void *const *objects, unsigned n);

/* Objects free right now: in the shared store plus every thread's cache.
 * Exact while no get or put is in flight; 0 for NULL. */
unsigned ha_mempool_available(const ha_mempool *pool);

/* With GCC on x86-64, the four get and put entry points are called through
 * the GOT directly rather than through the PLT: one jump fewer on every
 * call (what -fno-plt does for all calls). Clang users get the same with
 * -fno-plt. Declarations only; the functions are the ones above. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((noplt)) void *ha_mempool_get(ha_mempool *pool);
__attribute__((noplt)) int ha_mempool_get_bulk(ha_mempool *pool, void **objects, unsigned n);
__attribute__((noplt)) void ha_mempool_put(ha_mempool *pool, void *object);
__attribute__((noplt)) void ha_mempool_put_bulk(ha_mempool *pool, void *const *objects, unsigned n);
#endif

/* ---- inline get and put ------------------------------------------------ */

/* What follows is the layout the library shares with its callers for the
 * inline paths: names starting with ha__ are not API and may change with
 * HA__ABI. The library marks a pool HA__HEAD_CACHE only when its cache
 * records are laid out as read here; any other pool, and any call the
 * cache cannot serve alone, goes to the library functions above, which a
 * macro reaches by their own names (`(ha_mempool_get)(pool)`), and which
 * bindings for other languages call directly. The inline paths are for
 * 64-bit GCC and Clang; define HA_NO_INLINE to turn them off. */
#if !defined(HA_NO_INLINE) && defined(__GNUC__) && defined(__LP64__)

#define HA__ABI 1
#define HA__HEAD_CACHE (1u << 0)
#define HA__HEAD_STATS (1u << 1)
#define HA__NO_POOL_ID UINT64_MAX
#define HA__RECORD_COUNT 1
#define HA__RECORD_GETS  2
#define HA__RECORD_PUTS  3
#define HA__RECORD_SLOTS 8

/* What an ha_mempool * points to, written once by ha_mempool_create(). */
struct ha__mempool_head {
    uint64_t pool_id;        /* as a thread's table entry holds it */
    uint64_t slot;           /* the pool's entry in a thread's table */
    int64_t cache_capacity;  /* objects a thread's cache holds at most */
    uintptr_t base;          /* the pool's memory, for ha_mempool_put's check */
    uintptr_t length;
    uint32_t flags;          /* HA__HEAD_* */
    uint32_t abi;            /* HA__ABI */
    void *pool;              /* the library's own */
};

/* Per thread, word 0: the thread's table of cache records (pairs of words:
 * the record's address, the pool's id), 0 before the thread's first get or
 * put. */
extern __thread uintptr_t ha_tls_slots[4] __attribute__((tls_model("initial-exec")));

/* The calling thread's table entry for `pool` (the record's address, then
 * the pool's id), or NULL: no table or record yet, or a pool the inline
 * paths do not serve. A matching entry always holds a record. */
static inline const uintptr_t *ha__mempool_entry(const ha_mempool *pool) {
    const struct ha__mempool_head *head = (const struct ha__mempool_head *)(const void *)pool;
    /* A pool the inline paths do not serve (no HA__HEAD_CACHE) has the id
     * HA__NO_POOL_ID, which no table entry holds: its entry never matches. */
    if (__builtin_expect(head == NULL, 0)) return NULL;
    const uintptr_t *table = (const uintptr_t *)ha_tls_slots[0];
    if (__builtin_expect(table == NULL, 0)) return NULL;
    const uintptr_t *entry = table + 2 * head->slot;
    if (__builtin_expect(entry[1] != (uintptr_t)head->pool_id, 0)) return NULL;
    return entry;
}

/* Only the owning thread writes its record; others read the count with
 * relaxed loads: relaxed atomics here too (plain moves). */
static inline intptr_t ha__record_load(const uintptr_t *record, int word) {
    return (intptr_t)__atomic_load_n(&record[word], __ATOMIC_RELAXED);
}
static inline void ha__record_store(uintptr_t *record, int word, intptr_t value) {
    __atomic_store_n(&record[word], (uintptr_t)value, __ATOMIC_RELAXED);
}
static inline void ha__record_count_op(const ha_mempool *pool, uintptr_t *record, int word, unsigned n) {
    if (((const struct ha__mempool_head *)(const void *)pool)->flags & HA__HEAD_STATS)
        ha__record_store(record, word, ha__record_load(record, word) + (intptr_t)n);
}

static inline void *ha__mempool_get(ha_mempool *pool) {
    const uintptr_t *entry = ha__mempool_entry(pool);
    if (__builtin_expect(entry != NULL, 1)) {
        uintptr_t *record = (uintptr_t *)entry[0];
        intptr_t have = ha__record_load(record, HA__RECORD_COUNT);
        if (__builtin_expect(have > 0, 1)) {
            void *object = (void *)record[HA__RECORD_SLOTS + have - 1];
            ha__record_store(record, HA__RECORD_COUNT, have - 1);
            ha__record_count_op(pool, record, HA__RECORD_GETS, 1);
            return object;
        }
    }
    return (ha_mempool_get)(pool);
}

static inline int ha__mempool_get_bulk(ha_mempool *pool, void **objects, unsigned n) {
    const uintptr_t *entry = ha__mempool_entry(pool);
    if (__builtin_expect(entry != NULL && objects != NULL, 1)) {
        uintptr_t *record = (uintptr_t *)entry[0];
        intptr_t have = ha__record_load(record, HA__RECORD_COUNT);
        if (__builtin_expect((intptr_t)n <= have, 1)) {
            __builtin_memcpy(objects, &record[HA__RECORD_SLOTS + have - (intptr_t)n], (size_t)n * sizeof(void *));
            ha__record_store(record, HA__RECORD_COUNT, have - (intptr_t)n);
            ha__record_count_op(pool, record, HA__RECORD_GETS, n);
            return 0;
        }
    }
    return (ha_mempool_get_bulk)(pool, objects, n);
}

static inline void ha__mempool_put(ha_mempool *pool, void *object) {
    const uintptr_t *entry = ha__mempool_entry(pool);
    const struct ha__mempool_head *head = (const struct ha__mempool_head *)(const void *)pool;
    /* One compare refuses NULL and pointers outside the pool, as the
     * library does (a NULL pool has no entry and never reads head). */
    if (__builtin_expect(entry != NULL && (uintptr_t)object - head->base < head->length, 1)) {
        uintptr_t *record = (uintptr_t *)entry[0];
        intptr_t have = ha__record_load(record, HA__RECORD_COUNT);
        if (__builtin_expect(have < head->cache_capacity, 1)) {
            record[HA__RECORD_SLOTS + have] = (uintptr_t)object;
            ha__record_store(record, HA__RECORD_COUNT, have + 1);
            ha__record_count_op(pool, record, HA__RECORD_PUTS, 1);
            return;
        }
    }
    (ha_mempool_put)(pool, object);
}

static inline void ha__mempool_put_bulk(ha_mempool *pool, void *const *objects, unsigned n) {
    const uintptr_t *entry = ha__mempool_entry(pool);
    const struct ha__mempool_head *head = (const struct ha__mempool_head *)(const void *)pool;
    if (__builtin_expect(entry != NULL && objects != NULL, 1)) {
        uintptr_t *record = (uintptr_t *)entry[0];
        intptr_t have = ha__record_load(record, HA__RECORD_COUNT);
        if (__builtin_expect((intptr_t)n <= head->cache_capacity - have, 1)) {
            __builtin_memcpy(&record[HA__RECORD_SLOTS + have], objects, (size_t)n * sizeof(void *));
            ha__record_store(record, HA__RECORD_COUNT, have + (intptr_t)n);
            ha__record_count_op(pool, record, HA__RECORD_PUTS, n);
            return;
        }
    }
    (ha_mempool_put_bulk)(pool, objects, n);
}

#define ha_mempool_get(pool) ha__mempool_get(pool)
#define ha_mempool_get_bulk(pool, objects, n) ha__mempool_get_bulk(pool, objects, n)
#define ha_mempool_put(pool, object) ha__mempool_put(pool, object)
#define ha_mempool_put_bulk(pool, objects, n) ha__mempool_put_bulk(pool, objects, n)

#endif /* inline get and put */

/* ---- the DMA heap ------------------------------------------------------- */

/* Creates the process's DMA heap now, with HA_HEAP_* flags (the first
 * ha_malloc() or ha_zmalloc() otherwise creates it with flags 0).
 * Returns 0, also when the heap exists with the same flags;
 * HA_ERR_INVALID_ARGUMENT for unknown flags or when it already exists with
 * other flags; HA_ERR_NO_MEMORY or HA_ERR_SYSTEM when it cannot be made. */
int  ha_heap_init(unsigned flags);

/* Allocates `size` bytes of DMA memory, IOVA-contiguous (one IOVA range a
 * device can be given), from hugepages, locked. `alignment` is a power of
 * two (0 means 64); `numa_node` is HA_NODE_ANY (the calling thread's node
 * first, then any) or a node. When `iova_out` is not NULL it receives the
 * IOVA of the first byte. Returns NULL on failure (zero size, bad alignment
 * or node, no memory), with ha_last_error() saying why. Thread-safe. */
void *ha_malloc(size_t size, size_t alignment, int numa_node, uint64_t *iova_out);  /* the DMA heap; iova_out may be NULL */

/* As ha_malloc(), with the memory zeroed. */
void *ha_zmalloc(size_t size, size_t alignment, int numa_node, uint64_t *iova_out);

/* Gives back a block from ha_malloc()/ha_zmalloc(). NULL is ignored. A
 * pointer outside the heap is refused with HA_ERR_BAD_POINTER in
 * ha_last_error() (two compares). A pointer inside the heap that does not
 * start a live block (a double free) is refused too when the heap is
 * checked (HA_HEAP_CHECKED); otherwise it is undefined, as with free(3). */
void ha_free(void *pointer);

/* The IOVA of any byte of HugeAlloc memory in this process: the DMA heap
 * and the pools of this API. HA_BAD_IOVA otherwise (and for NULL). Heap
 * addresses cost two compares and a table load; pool addresses a search
 * of the live pools. Thread-safe. */
uint64_t ha_iova(const void *address);          /* any byte of HugeAlloc memory in this process; HA_BAD_IOVA otherwise */

/* ---- errors ------------------------------------------------------------- */

/* What the calling thread's last failing call said: what was wrong and how
 * to fix it. "" before any failure. The text stays valid until the next
 * failing call on this thread. */
const char *ha_last_error(void);

/* The HA_ERR_* code of the calling thread's last failing call (HA_OK before
 * any): the code of a failure in a function that returns void or a
 * pointer. */
int  ha_last_error_code(void);

#ifdef __cplusplus
}
#endif

#endif /* HUGEALLOC_H */
