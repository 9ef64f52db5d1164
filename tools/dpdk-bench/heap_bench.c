/*
 * The loop of `hugealloc-bench heap` on DPDK's rte_malloc and on the C
 * library's allocator, for tools/compare-dpdk. Written for HugeAlloc
 * against the public rte_malloc API.
 *
 * Usage:
 *   heap_bench --allocator rte  [--min B] [--max B] [--live N] [--seconds S] -- <EAL args>
 *   heap_bench --allocator libc [--min B] [--max B] [--live N] [--seconds S] [--threads N]
 *
 * Each thread keeps LIVE allocations; each step frees a random one and
 * allocates a new one, its size log-uniform in [MIN, MAX], alignment 64,
 * and writes its first and last byte. The random choices are exactly those
 * of Sources/hugealloc-bench/HeapBench.swift: xorshift64* per thread,
 * seeded 0x9E3779B97F4A7C15 * (thread + 1); sizes from a 4096-entry table
 * whose entry i is MIN * (MAX/MIN)^((i + 0.5) / 4096), rounded down; the
 * initial fill takes table[r & 4095] per allocation; each step takes
 * victim = ((r >> 32) * LIVE) >> 32 and size = table[r & 4095] from one r.
 *
 * rte:  rte_malloc_socket(NULL, size, 64, socket of the lcore) / rte_free,
 *       one thread per EAL lcore (-l), launched with rte_eal_mp_remote_launch.
 * libc: aligned_alloc(64, size rounded up to a multiple of 64) / free, on
 *       pthreads pinned to CPUs 0, 1, ... (run it with LD_PRELOAD of another
 *       malloc to measure that one).
 *
 * Prints rate_persec=N last: allocate+free pairs per second summed over
 * threads (each thread's pairs over its own elapsed time).
 *
 * --trace N allocates nothing: it prints an FNV-1a hash of the size table
 * and of each thread's first LIVE + N choices, so the choices can be
 * compared with the same hash over HeapWorkload's (they were equal for
 * --trace 1000000 at threads 0 and 1 when this was written).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_malloc.h>

#define TABLE_SIZE 4096
#define MAX_THREADS 128

enum allocator { ALLOC_RTE, ALLOC_LIBC };

static enum allocator allocator;
static long min_size = 64, max_size = 65536, live = 1024;
static double seconds = 2.0;
static long trace_steps;
static unsigned threads = 1;
static long table[TABLE_SIZE];
static volatile unsigned ready;
static volatile int failed;

struct result {
    uint64_t pairs;
    double seconds;
    long peak_live_bytes;
};
static struct result results[MAX_THREADS];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The same expression, in the same order, as HeapWorkload.sizes. */
static void make_table(void) {
    for (int i = 0; i < TABLE_SIZE; i++) {
        double u = ((double)i + 0.5) / 4096;
        long s = (long)((double)min_size * pow((double)max_size / (double)min_size, u));
        if (s > max_size) s = max_size;
        if (s < min_size) s = min_size;
        table[i] = s;
    }
}

static inline uint64_t next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline void *allocate(long size, int socket) {
    if (allocator == ALLOC_RTE) return rte_malloc_socket(NULL, (size_t)size, 64, socket);
    return aligned_alloc(64, ((size_t)size + 63) & ~(size_t)63);
}

static inline void release(void *p) {
    if (allocator == ALLOC_RTE) rte_free(p);
    else free(p);
}

static inline void *allocate_touched(long size, int socket) {
    unsigned char *p = allocate(size, socket);
    if (p == NULL) {
        fprintf(stderr, "allocating %ld bytes failed\n", size);
        failed = 1;
        exit(1);
    }
    p[0] = 1;
    p[size - 1] = 1;
    return p;
}

static void run(unsigned thread, int socket) {
    void **pointers = malloc(sizeof(void *) * (size_t)live);
    long *held = malloc(sizeof(long) * (size_t)live);
    if (pointers == NULL || held == NULL) { fprintf(stderr, "out of memory\n"); exit(1); }
    uint64_t state = 0x9E3779B97F4A7C15ULL * (uint64_t)(thread + 1);
    long live_bytes = 0;
    for (long i = 0; i < live; i++) {
        long size = table[next(&state) & 4095];
        pointers[i] = allocate_touched(size, socket);
        held[i] = size;
        live_bytes += size;
    }
    long peak = live_bytes;
    uint64_t pairs = 0;
    double start = now(), elapsed;
    for (;;) {
        for (int k = 0; k < 1024; k++) {
            uint64_t r = next(&state);
            uint64_t victim = ((r >> 32) * (uint64_t)live) >> 32;
            long size = table[r & 4095];
            release(pointers[victim]);
            live_bytes -= held[victim];
            pointers[victim] = allocate_touched(size, socket);
            held[victim] = size;
            live_bytes += size;
            if (live_bytes > peak) peak = live_bytes;
        }
        pairs += 1024;
        elapsed = now() - start;
        if (elapsed >= seconds) break;
    }
    for (long i = 0; i < live; i++) release(pointers[i]);
    free(pointers);
    free(held);
    results[thread] = (struct result){ pairs, elapsed, peak };
}

/* --trace N: no allocation; prints a checksum of the size table and of
 * thread T's first N steps (initial fill, then victim and size per step),
 * to compare with the Swift loop's choices. */
static void trace(long steps, unsigned thread) {
    uint64_t h = 1469598103934665603ULL, t = 1469598103934665603ULL;
    for (int i = 0; i < TABLE_SIZE; i++) t = (t ^ (uint64_t)table[i]) * 1099511628211ULL;
    uint64_t state = 0x9E3779B97F4A7C15ULL * (uint64_t)(thread + 1);
    for (long i = 0; i < live; i++) h = (h ^ (uint64_t)table[next(&state) & 4095]) * 1099511628211ULL;
    for (long i = 0; i < steps; i++) {
        uint64_t r = next(&state);
        h = (h ^ (((r >> 32) * (uint64_t)live) >> 32)) * 1099511628211ULL;
        h = (h ^ (uint64_t)table[r & 4095]) * 1099511628211ULL;
    }
    printf("table=%016" PRIx64 " steps=%016" PRIx64 " first=%ld last=%ld\n", t, h, table[0], table[TABLE_SIZE - 1]);
}

static void wait_for_all(void) {
    __atomic_add_fetch(&ready, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&ready, __ATOMIC_ACQUIRE) < threads) {}
}

/* rte: every EAL lcore runs the loop; thread index = lcore index. */
static int rte_worker(void *arg) {
    (void)arg;
    wait_for_all();
    run((unsigned)rte_lcore_index((int)rte_lcore_id()), (int)rte_socket_id());
    return 0;
}

/* libc: pinned like hugealloc-bench (thread i on CPU i, best effort). */
static void *libc_worker(void *arg) {
    unsigned thread = (unsigned)(uintptr_t)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(thread, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    wait_for_all();
    run(thread, 0);
    return NULL;
}

static void usage(void) {
    fprintf(stderr,
            "usage: heap_bench --allocator rte  [--min B] [--max B] [--live N] [--seconds S] -- <EAL args>\n"
            "       heap_bench --allocator libc [--min B] [--max B] [--live N] [--seconds S] [--threads N]\n"
            "       heap_bench --allocator libc --trace N [--min B] [--max B] [--live N] [--threads N]\n");
}

int main(int argc, char **argv) {
    int have_allocator = 0, eal_at = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) { eal_at = i; break; }
        if (i + 1 >= argc) { usage(); return 2; }
        const char *v = argv[++i];
        if (strcmp(a, "--allocator") == 0) {
            if (strcmp(v, "rte") == 0) allocator = ALLOC_RTE;
            else if (strcmp(v, "libc") == 0) allocator = ALLOC_LIBC;
            else { fprintf(stderr, "--allocator takes rte or libc (got '%s')\n", v); return 2; }
            have_allocator = 1;
        } else if (strcmp(a, "--min") == 0) min_size = atol(v);
        else if (strcmp(a, "--max") == 0) max_size = atol(v);
        else if (strcmp(a, "--live") == 0) live = atol(v);
        else if (strcmp(a, "--seconds") == 0) seconds = atof(v);
        else if (strcmp(a, "--threads") == 0) threads = (unsigned)atoi(v);
        else if (strcmp(a, "--trace") == 0) trace_steps = atol(v);
        else { usage(); return 2; }
    }
    if (!have_allocator) { usage(); return 2; }
    if (min_size < 1 || max_size < min_size) { fprintf(stderr, "need 1 <= --min <= --max\n"); return 2; }
    if (live < 1 || live > (1L << 24)) { fprintf(stderr, "--live must be 1 to 16777216\n"); return 2; }
    if (!(seconds > 0)) { fprintf(stderr, "--seconds must be positive\n"); return 2; }
    make_table();
    if (trace_steps > 0) {
        for (unsigned t = 0; t < threads; t++) trace(trace_steps, t);
        return 0;
    }

    if (allocator == ALLOC_RTE) {
        /* EAL sees argv[0] followed by what comes after "--". */
        int eal_argc = argc - eal_at;
        char **eal_argv = &argv[eal_at];
        eal_argv[0] = argv[0];
        if (eal_at == argc) { eal_argc = 1; eal_argv = argv; }
        if (rte_eal_init(eal_argc, eal_argv) < 0) {
            fprintf(stderr, "rte_eal_init failed: %s\n", rte_strerror(rte_errno));
            return 1;
        }
        threads = rte_lcore_count();
        if (threads > MAX_THREADS) { fprintf(stderr, "at most %d lcores\n", MAX_THREADS); return 2; }
        printf("dpdk rte_malloc_socket min=%ld max=%ld live=%ld threads=%u alignment=64\n",
               min_size, max_size, live, threads);
        rte_eal_mp_remote_launch(rte_worker, NULL, CALL_MAIN);
        rte_eal_mp_wait_lcore();
    } else {
        if (threads < 1 || threads > MAX_THREADS) { fprintf(stderr, "--threads must be 1 to %d\n", MAX_THREADS); return 2; }
        /* Which library's aligned_alloc runs: the C library's, or the one LD_PRELOAD put first. */
        Dl_info info;
        const char *library = dladdr((void *)aligned_alloc, &info) && info.dli_fname ? info.dli_fname : "?";
        printf("libc aligned_alloc min=%ld max=%ld live=%ld threads=%u alignment=64 library=%s\n",
               min_size, max_size, live, threads, library);
        pthread_t ids[MAX_THREADS];
        for (unsigned t = 1; t < threads; t++)
            if (pthread_create(&ids[t], NULL, libc_worker, (void *)(uintptr_t)t) != 0) {
                fprintf(stderr, "pthread_create failed\n");
                return 1;
            }
        libc_worker((void *)(uintptr_t)0);
        for (unsigned t = 1; t < threads; t++) pthread_join(ids[t], NULL);
    }
    if (failed) return 1;
    double total = 0;
    long peak = 0;
    for (unsigned t = 0; t < threads; t++) {
        printf("thread %u: %" PRIu64 " pairs in %.3f s\n", t, results[t].pairs, results[t].seconds);
        total += (double)results[t].pairs / results[t].seconds;
        peak += results[t].peak_live_bytes;
    }
    printf("peak_live_bytes=%ld\n", peak);
    if (allocator == ALLOC_RTE) rte_eal_cleanup();
    printf("rate_persec=%.0f\n", total);
    return 0;
}
