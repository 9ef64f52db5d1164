/*
 * The C API as a C program sees it: only <hugealloc.h> and pkg-config
 * (built and run by tools/test-c-api). Pools, bulk operations, the DMA
 * heap, IOVAs checked against this program's own read of
 * /proc/self/pagemap, and every bad-argument case: each must come back as
 * an error code with a message, never abort the process.
 */
#define _GNU_SOURCE
#include <hugealloc.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
static int checks;

#define CHECK(cond, ...) do { \
    checks++; \
    if (!(cond)) { \
        failures++; \
        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        fprintf(stderr, __VA_ARGS__); \
        fprintf(stderr, " (last error %d: %s)\n", ha_last_error_code(), ha_last_error()); \
    } \
} while (0)

/* An error code and a message that says something. */
#define CHECK_ERROR(expr, code) do { \
    int rc_ = (expr); \
    CHECK(rc_ == (code), "%s returned %d, expected %d", #expr, rc_, (code)); \
    CHECK(strlen(ha_last_error()) > 20, "%s left no message", #expr); \
} while (0)

/* A void or pointer call that must record `code`. */
#define CHECK_RECORDS(stmt, code) do { \
    ha_free(NULL); /* no-op: leaves the last error as it was */ \
    stmt; \
    CHECK(ha_last_error_code() == (code), "%s recorded %d, expected %d", #stmt, ha_last_error_code(), (code)); \
    CHECK(strlen(ha_last_error()) > 20, "%s left no message", #stmt); \
} while (0)

/* ---- this program's own pagemap reader ---------------------------------- */

static int pagemap_fd = -1;
/* --negative-control: this reader answers one page off, so every IOVA
 * check must fail (proves the checks can fail). */
static uint64_t pagemap_shift;

/* The physical address of the byte at `p`, from /proc/self/pagemap
 * (bits 0-54: page frame number; bit 63: present). */
static uint64_t pagemap_physical(const void *p) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t va = (uintptr_t)p;
    uint64_t entry;
    if (pagemap_fd < 0) pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap_fd < 0) return HA_BAD_IOVA;
    if (pread(pagemap_fd, &entry, sizeof entry, (off_t)(va / page) * 8) != sizeof entry) return HA_BAD_IOVA;
    if (!(entry >> 63) || (entry & ((1ULL << 55) - 1)) == 0) return HA_BAD_IOVA;
    return (entry & ((1ULL << 55) - 1)) * page + va % page + pagemap_shift;
}

static void check_iova(const void *p, const char *what) {
    uint64_t mine = pagemap_physical(p);
    uint64_t theirs = ha_iova(p);
    CHECK(mine != HA_BAD_IOVA, "%s: pagemap has no address for %p", what, p);
    CHECK(theirs == mine, "%s: ha_iova(%p) = 0x%llx, pagemap says 0x%llx", what, p,
          (unsigned long long)theirs, (unsigned long long)mine);
}

/* ---- pools -------------------------------------------------------------- */

static int compare_pointers(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)*(void *const *)a;
    uintptr_t y = (uintptr_t)*(void *const *)b;
    return x < y ? -1 : x > y;
}

static void test_pool(const char *name, unsigned flags, size_t cache) {
    enum { COUNT = 4095, SIZE = 2048 };
    ha_mempool *pool = NULL;
    int rc = ha_mempool_create(name, COUNT, SIZE, cache, HA_NODE_ANY, flags, &pool);
    CHECK(rc == 0 && pool != NULL, "create %s: %d", name, rc);
    if (rc != 0) return;
    CHECK(ha_mempool_available(pool) == COUNT, "%s: %u available", name, ha_mempool_available(pool));

    /* Every object, one at a time: distinct, aligned, inside, with IOVAs. */
    void **all = calloc(COUNT + 1, sizeof *all);
    size_t got = 0;
    void *o;
    while (got <= COUNT && (o = ha_mempool_get(pool)) != NULL) all[got++] = o;
    CHECK(got == COUNT, "%s: got %zu objects of %d", name, got, COUNT);
    CHECK(ha_last_error_code() == HA_ERR_NO_OBJECTS, "%s: empty get recorded %d", name, ha_last_error_code());
    CHECK(ha_mempool_available(pool) == 0, "%s: %u available when empty", name, ha_mempool_available(pool));
    qsort(all, got, sizeof *all, compare_pointers);
    for (size_t i = 0; i < got; i++) {
        CHECK((uintptr_t)all[i] % 64 == 0, "%s: object %p not 64-byte aligned", name, all[i]);
        if (i > 0) CHECK((char *)all[i] - (char *)all[i - 1] >= SIZE, "%s: objects %p %p overlap", name, all[i - 1], all[i]);
        memset(all[i], (int)i, SIZE);
    }
    for (size_t i = 0; i < got; i += 97) check_iova(all[i], name);
    check_iova((char *)all[0] + SIZE - 1, name);
    for (size_t i = 0; i < got; i++) ha_mempool_put(pool, all[i]);
    CHECK(ha_mempool_available(pool) == COUNT, "%s: %u available after put", name, ha_mempool_available(pool));

    /* Bulk: all or nothing. */
    void *bulk[128];
    CHECK(ha_mempool_get_bulk(pool, bulk, 32) == 0, "%s: get_bulk 32", name);
    CHECK(ha_mempool_available(pool) == COUNT - 32, "%s: %u after get_bulk", name, ha_mempool_available(pool));
    ha_mempool_put_bulk(pool, bulk, 32);
    CHECK(ha_mempool_get_bulk(pool, bulk, 0) == 0, "%s: get_bulk 0", name);
    for (size_t taken = 0; taken + 128 <= COUNT; taken += 128) {
        CHECK(ha_mempool_get_bulk(pool, all + taken, 128) == 0, "%s: get_bulk 128 at %zu", name, taken);
    }
    unsigned left = ha_mempool_available(pool);
    CHECK(left == COUNT % 128, "%s: %u left", name, left);
    CHECK_ERROR(ha_mempool_get_bulk(pool, bulk, left + 1), HA_ERR_NO_OBJECTS);
    CHECK(ha_mempool_available(pool) == left, "%s: a failed bulk get took objects (%u left)", name, ha_mempool_available(pool));
    for (size_t taken = 0; taken + 128 <= COUNT; taken += 128) ha_mempool_put_bulk(pool, all + taken, 128);
    CHECK(ha_mempool_available(pool) == COUNT, "%s: %u after bulk round", name, ha_mempool_available(pool));

    /* Bad arguments on a live pool. */
    int local;
    CHECK_ERROR(ha_mempool_get_bulk(pool, NULL, 4), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_get_bulk(pool, bulk, COUNT + 1), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(ha_mempool_put(pool, NULL), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(ha_mempool_put(pool, &local), HA_ERR_BAD_POINTER);
    CHECK_RECORDS(ha_mempool_put_bulk(pool, NULL, 3), HA_ERR_INVALID_ARGUMENT);
    CHECK(ha_mempool_get_bulk(pool, bulk, 4) == 0, "%s: get_bulk 4", name);
    CHECK_RECORDS(ha_mempool_put_bulk(pool, bulk, COUNT + 1), HA_ERR_INVALID_ARGUMENT);
    if (flags & HA_MEMPOOL_CHECKED) {
        /* Only checked pools look at each pointer of a bulk put. */
        void *mixed[4] = { bulk[0], bulk[1], &local, bulk[3] };
        CHECK_RECORDS(ha_mempool_put_bulk(pool, mixed, 4), HA_ERR_BAD_POINTER);
        void *with_null[2] = { bulk[0], NULL };
        CHECK_RECORDS(ha_mempool_put_bulk(pool, with_null, 2), HA_ERR_INVALID_ARGUMENT);
        CHECK(ha_mempool_available(pool) == COUNT - 4, "%s: a refused put_bulk put objects back (%u)", name, ha_mempool_available(pool));
    }
    ha_mempool_put_bulk(pool, bulk, 4);
    CHECK(ha_mempool_available(pool) == COUNT, "%s: %u after the bulk misuse round", name, ha_mempool_available(pool));

    if (flags & HA_MEMPOOL_CHECKED) {
        void *a = ha_mempool_get(pool);
        ha_mempool_put(pool, a);
        CHECK_RECORDS(ha_mempool_put(pool, a), HA_ERR_BAD_POINTER);          /* double put */
        CHECK(strstr(ha_last_error(), "double free") != NULL, "%s: message: %s", name, ha_last_error());
        a = ha_mempool_get(pool);
        CHECK_RECORDS(ha_mempool_put(pool, (char *)a + 8), HA_ERR_BAD_POINTER);  /* not an object start */
        memset(a, 0xEE, SIZE + 8);                                           /* overrun into the guard */
        CHECK_RECORDS(ha_mempool_put(pool, a), HA_ERR_BAD_POINTER);
        CHECK(strstr(ha_last_error(), "past the end") != NULL, "%s: message: %s", name, ha_last_error());
        CHECK(ha_mempool_available(pool) == COUNT - 1, "%s: %u after refused puts", name, ha_mempool_available(pool));
        void *twice[2] = { bulk[0], bulk[0] };
        CHECK(ha_mempool_get_bulk(pool, bulk, 1) == 0, "%s: get 1", name);
        twice[0] = twice[1] = bulk[0];
        CHECK_RECORDS(ha_mempool_put_bulk(pool, twice, 2), HA_ERR_BAD_POINTER);
        ha_mempool_put(pool, bulk[0]);
    }

    free(all);
    ha_mempool_destroy(pool);
    printf("pool %-14s flags 0x%x cache %zu: ok\n", name, flags, cache);
}

/* ---- threads sharing a cached pool ---------------------------------------- */

enum { SHARED_COUNT = 8191, SHARED_SIZE = 64, SHARED_ROUNDS = 20000 };
static ha_mempool *shared_pool;

/* Takes and gives back objects in singles and bursts of varying size, so
 * that its cache empties, refills, fills and flushes (the library's part)
 * between inline gets and puts (the header's part); every object it holds
 * carries its mark and its place in the burst, checked before it goes
 * back: no object is held twice, by two threads or by one. */
static void *pool_worker(void *arg) {
    uintptr_t mark = (uintptr_t)arg;
    void *held[300];
    unsigned seed = (unsigned)mark * 2654435761u;
    for (int round = 0; round < SHARED_ROUNDS; round++) {
        seed = seed * 1103515245u + 12345u;
        unsigned n = 1 + (seed >> 16) % 300;
        int bulk = (seed >> 8) & 1;
        unsigned got = 0;
        if (bulk) {
            if (ha_mempool_get_bulk(shared_pool, held, n) == 0) got = n;
        } else {
            while (got < n && (held[got] = ha_mempool_get(shared_pool)) != NULL) got++;
        }
        for (unsigned i = 0; i < got; i++) {
            ((volatile uintptr_t *)held[i])[0] = mark;
            ((volatile uintptr_t *)held[i])[1] = i;
        }
        for (unsigned i = 0; i < got; i++) {
            CHECK(((volatile uintptr_t *)held[i])[0] == mark, "thread %lu: object %p taken by two threads", (unsigned long)mark, held[i]);
            CHECK(((volatile uintptr_t *)held[i])[1] == i, "thread %lu: object %p handed out twice", (unsigned long)mark, held[i]);
        }
        if (bulk) ha_mempool_put_bulk(shared_pool, held, got);
        else for (unsigned i = 0; i < got; i++) ha_mempool_put(shared_pool, held[i]);
    }
    return NULL;
}

static void test_pool_threads(void) {
    CHECK(ha_mempool_create("threads", SHARED_COUNT, SHARED_SIZE, 256, HA_NODE_ANY, 0, &shared_pool) == 0,
          "create threads: %s", ha_last_error());
    pthread_t threads[4];
    for (uintptr_t t = 0; t < 4; t++) pthread_create(&threads[t], NULL, pool_worker, (void *)(t + 1));
    for (int t = 0; t < 4; t++) pthread_join(threads[t], NULL);
    /* Each thread's cache went back to the pool when the thread exited. */
    CHECK(ha_mempool_available(shared_pool) == SHARED_COUNT, "threads: %u available after the threads exited",
          ha_mempool_available(shared_pool));
#ifdef HA__HEAD_CACHE
    /* The inline paths serve this pool (the library found its cache records
     * laid out as the header reads them); a checked pool goes to the library. */
    const struct ha__mempool_head *head = (const struct ha__mempool_head *)(const void *)shared_pool;
    CHECK(head->flags & HA__HEAD_CACHE, "the inline get and put do not serve an unchecked cached pool (flags 0x%x)", head->flags);
    ha_mempool *checked = NULL;
    CHECK(ha_mempool_create("threads-checked", 16, 64, 8, HA_NODE_ANY, HA_MEMPOOL_CHECKED, &checked) == 0, "create checked");
    if (checked) {
        const struct ha__mempool_head *checked_head = (const struct ha__mempool_head *)(const void *)checked;
        CHECK(!(checked_head->flags & HA__HEAD_CACHE) && checked_head->pool_id == HA__NO_POOL_ID,
              "the inline paths would serve a checked pool (flags 0x%x)", checked_head->flags);
        ha_mempool_destroy(checked);
    }
#endif
    ha_mempool_destroy(shared_pool);
    printf("pool threads: ok\n");
}

static void *other_thread(void *arg) {
    (void)arg;
    CHECK(ha_last_error_code() == HA_OK, "a new thread starts with error %d", ha_last_error_code());
    CHECK(ha_mempool_get_bulk(NULL, NULL, 1) == HA_ERR_INVALID_ARGUMENT, "NULL pool in thread");
    return NULL;
}

static void test_bad_pool_arguments(void) {
    ha_mempool *pool = NULL, *again = NULL;
    CHECK_ERROR(ha_mempool_create(NULL, 16, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 64, 0, HA_NODE_ANY, 0, NULL), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("", 16, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    char longname[100];
    memset(longname, 'n', 99);
    longname[99] = 0;
    CHECK_ERROR(ha_mempool_create(longname, 16, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 0, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", SIZE_MAX, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", (size_t)1 << 31, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 0, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, SIZE_MAX, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 1 << 20, 1 << 30, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 64, 513, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 64, SIZE_MAX, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 64, 0, -5, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 64, 0, 999, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 16, 64, 0, HA_NODE_ANY, 0x80, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_create("x", 1u << 30, 4096, 0, HA_NODE_ANY, 0, &pool), HA_ERR_NO_MEMORY);
    CHECK(strstr(ha_last_error(), "nr_hugepages") != NULL, "a shortage names the fix: %s", ha_last_error());
    CHECK(pool == NULL, "a failed create wrote *out");

    CHECK(ha_mempool_create("dup", 16, 64, 0, 0, 0, &pool) == 0, "create dup on node 0");
    CHECK_ERROR(ha_mempool_create("dup", 16, 64, 0, HA_NODE_ANY, 0, &again), HA_ERR_NAME_EXISTS);
    ha_mempool_destroy(pool);
    CHECK(ha_mempool_create("dup", 16, 64, 0, HA_NODE_ANY, 0, &again) == 0, "the name is free after destroy");
    ha_mempool_destroy(again);
    CHECK_RECORDS(ha_mempool_destroy(again), HA_ERR_BAD_POINTER);                 /* destroyed twice */
    CHECK_RECORDS(ha_mempool_destroy((ha_mempool *)(void *)&checks), HA_ERR_BAD_POINTER); /* not a pool */

    CHECK_RECORDS(CHECK(ha_mempool_get(NULL) == NULL, "get(NULL)"), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_mempool_get_bulk(NULL, NULL, 0), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(ha_mempool_put(NULL, &pool), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(ha_mempool_put_bulk(NULL, NULL, 1), HA_ERR_INVALID_ARGUMENT);
    CHECK(ha_mempool_available(NULL) == 0, "available(NULL)");
    ha_mempool_destroy(NULL);

    /* The last error belongs to the thread that failed. */
    CHECK_ERROR(ha_mempool_create("x", 0, 64, 0, HA_NODE_ANY, 0, &pool), HA_ERR_INVALID_ARGUMENT);
    char mine[256];
    snprintf(mine, sizeof mine, "%s", ha_last_error());
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    CHECK(strcmp(mine, ha_last_error()) == 0, "another thread's failure changed this thread's message: %s", ha_last_error());
    printf("pool bad arguments: ok\n");
}

/* ---- the DMA heap -------------------------------------------------------- */

static void test_heap(void) {
    CHECK_ERROR(ha_heap_init(0x10), HA_ERR_INVALID_ARGUMENT);
    /* Every free 2 MiB page is looked at for a large block's run: a checked
     * 2 MiB block needs two adjacent pages, and right after a reservation a
     * test machine's free pages can be mostly single pages (the bounded
     * look then finds none; the test is of the heap's blocks, not of how
     * far it looks). */
    const unsigned flags = HA_HEAP_CHECKED | HA_HEAP_SEARCH_ALL;
    CHECK(ha_heap_init(flags) == 0, "ha_heap_init(CHECKED | SEARCH_ALL)");
    CHECK(ha_heap_init(flags) == 0, "ha_heap_init twice with the same flags");
    CHECK_ERROR(ha_heap_init(0), HA_ERR_INVALID_ARGUMENT);
    CHECK_ERROR(ha_heap_init(HA_HEAP_CHECKED), HA_ERR_INVALID_ARGUMENT);

    static const size_t sizes[] = { 1, 63, 64, 100, 4096, 65536, 1 << 20, 2 << 20 };
    static const size_t aligns[] = { 0, 64, 4096, 1 << 21 };
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        for (size_t a = 0; a < sizeof aligns / sizeof *aligns; a++) {
            uint64_t iova = 0;
            void *p = ha_malloc(sizes[s], aligns[a], HA_NODE_ANY, &iova);
            CHECK(p != NULL, "ha_malloc(%zu, %zu)", sizes[s], aligns[a]);
            if (!p) continue;
            size_t align = aligns[a] ? aligns[a] : 64;
            CHECK((uintptr_t)p % align == 0, "ha_malloc(%zu, %zu) = %p misaligned", sizes[s], align, p);
            CHECK(iova == ha_iova(p), "iova_out 0x%llx vs ha_iova 0x%llx", (unsigned long long)iova, (unsigned long long)ha_iova(p));
            memset(p, 0xA5, sizes[s]);
            /* IOVA-contiguous: every 4 KiB step of the block is at iova + offset. */
            for (size_t off = 0; off < sizes[s]; off += 4096) {
                check_iova((char *)p + off, "heap");
                CHECK(ha_iova((char *)p + off) == iova + off, "block %p not IOVA-contiguous at +%zu", p, off);
            }
            check_iova((char *)p + sizes[s] - 1, "heap last byte");
            ha_free(p);
        }
    }
    uint64_t *z = ha_zmalloc(8192, 0, HA_NODE_ANY, NULL);
    CHECK(z != NULL, "ha_zmalloc");
    if (z) {
        int zero = 1;
        for (size_t i = 0; i < 1024; i++) zero &= z[i] == 0;
        CHECK(zero, "ha_zmalloc memory is not zeroed");
        ha_free(z);
    }
    void *on0 = ha_malloc(256, 0, 0, NULL);
    CHECK(on0 != NULL, "ha_malloc on node 0");
    ha_free(on0);

    /* Bad arguments. */
    int local;
    CHECK_RECORDS(CHECK(ha_malloc(0, 0, HA_NODE_ANY, NULL) == NULL, "size 0"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc(SIZE_MAX, 0, HA_NODE_ANY, NULL) == NULL, "SIZE_MAX"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc(SIZE_MAX / 2, 64, HA_NODE_ANY, NULL) == NULL, "SIZE_MAX/2"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc((size_t)1 << 40, 64, HA_NODE_ANY, NULL) == NULL, "1 TiB"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc((size_t)48 << 30, 64, HA_NODE_ANY, NULL) == NULL, "48 GiB"), HA_ERR_NO_MEMORY);
    CHECK_RECORDS(CHECK(ha_zmalloc(64, 3, HA_NODE_ANY, NULL) == NULL, "alignment 3"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc(64, 96, HA_NODE_ANY, NULL) == NULL, "alignment 96"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc(64, SIZE_MAX / 2 + 1, HA_NODE_ANY, NULL) == NULL, "alignment 2^63"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc(64, 0, -7, NULL) == NULL, "node -7"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(CHECK(ha_malloc(64, 0, 999, NULL) == NULL, "node 999"), HA_ERR_INVALID_ARGUMENT);
    CHECK_RECORDS(ha_free(&local), HA_ERR_BAD_POINTER);
    CHECK_RECORDS(ha_free((void *)1), HA_ERR_BAD_POINTER);
    void *p = ha_malloc(1000, 0, HA_NODE_ANY, NULL);
    CHECK_RECORDS(ha_free((char *)p + 64), HA_ERR_BAD_POINTER);              /* checked heap: not a block start */
    ha_free(p);
    CHECK_RECORDS(ha_free(p), HA_ERR_BAD_POINTER);                            /* checked heap: double free */
    CHECK(ha_iova(NULL) == HA_BAD_IOVA, "ha_iova(NULL)");
    CHECK(ha_iova(&local) == HA_BAD_IOVA, "ha_iova(stack)");
    CHECK(ha_iova(&checks) == HA_BAD_IOVA, "ha_iova(a global)");
    printf("heap: ok\n");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--negative-control") == 0) pagemap_shift = (uint64_t)sysconf(_SC_PAGESIZE);
    if (geteuid() != 0) {
        fprintf(stderr, "capi_test needs root (physical addresses in /proc/self/pagemap need CAP_SYS_ADMIN)\n");
        return 77;
    }
    CHECK(ha_last_error_code() == HA_OK && strcmp(ha_last_error(), "") == 0, "no error before any call");
    test_pool("ring-cached", 0, 512);
    test_pool("ring-uncached", 0, 0);
    test_pool("stack", HA_MEMPOOL_STACK, 64);
    test_pool("single-thread", HA_MEMPOOL_SINGLE_THREAD, 0);
    test_pool("checked", HA_MEMPOOL_CHECKED, 32);
    test_bad_pool_arguments();
    test_pool_threads();
    test_heap();
    printf("%d checks, %d failures\n", checks, failures);
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
