#pragma once
/* The C API's per-thread error (hugealloc.h's ha_last_error()): a code and
 * a message kept in _Thread_local storage, so a failure on one thread never
 * shows on another. Internal to the library; prefixed ha_capi_. */

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What an `ha_mempool *` of the C API points to: the facts the inline get
 * and put of hugealloc.h read (`struct ha__mempool_head` there, the same
 * layout; capi.c asserts the two agree), then the Swift pool. Written once
 * by ha_mempool_create(), read-only afterwards. */
struct ha_capi_mempool_head {
    /* The pool's id, as a thread's table entry holds it. */
    uint64_t pool_id;
    /* The pool's entry in a thread's table (MempoolRegistry.ThreadTable). */
    uint64_t slot;
    /* Objects a thread's cache record holds at most. */
    int64_t cache_capacity;
    /* The pool's memory: ha_mempool_put's range check. */
    uintptr_t base;
    uintptr_t length;
    /* HA_CAPI_HEAD_* bits. */
    uint32_t flags;
    /* HA_CAPI_HEAD_ABI: what the inline functions were written against. */
    uint32_t abi;
    /* The Swift `Mempool`, retained by the head (Unmanaged). */
    void *pool;
};
/* The inline paths may serve this pool from the thread's cache record: an
 * unchecked pool with per-thread caches, records laid out as hugealloc.h
 * reads them. Without it every call goes to the library. */
#define HA_CAPI_HEAD_CACHE   (1u << 0)
/* The pool counts gets and puts in the thread's record. */
#define HA_CAPI_HEAD_STATS   (1u << 1)
/* A checked pool (HA_MEMPOOL_CHECKED). */
#define HA_CAPI_HEAD_CHECKED (1u << 2)
#define HA_CAPI_HEAD_ABI     1u
/* The pool id of a head without HA_CAPI_HEAD_CACHE: no thread table entry
 * holds it (pool ids count up from 1), so the inline paths, which compare
 * ids without looking at the flags, always call the library for it. */
#define HA_CAPI_NO_POOL_ID   0xFFFFFFFFFFFFFFFFull
/* Where a cache record keeps its words (in 8-byte words from its start),
 * and the thread-table slot of ha_tls_slots, as the inline paths read
 * them. The library sets HA_CAPI_HEAD_CACHE only when its records match. */
#define HA_CAPI_RECORD_COUNT 1
#define HA_CAPI_RECORD_GETS  2
#define HA_CAPI_RECORD_PUTS  3
#define HA_CAPI_RECORD_SLOTS 8
#define HA_CAPI_TLS_TABLE    0

/* Records `code` and a copy of `text` (truncated to 1023 bytes) for the
 * calling thread. */
void ha_capi_set_error(int code, const char *text);
/* The calling thread's last message ("" before any). */
const char *ha_capi_error_text(void);
/* The calling thread's last code (0 before any). */
int ha_capi_error_code(void);

#ifdef __cplusplus
}
#endif
