#ifndef _GNU_SOURCE
#error "CHugeAllocShims must be built with -D_GNU_SOURCE (see Package.swift)"
#endif

#include "CHugeAllocCAPI.h"

#include <string.h>

#define HA_CAPI_ERROR_BYTES 1024

static _Thread_local char ha_capi_text[HA_CAPI_ERROR_BYTES];
static _Thread_local int ha_capi_code;

void ha_capi_set_error(int code, const char *text) {
    ha_capi_code = code;
    if (text == NULL) text = "";
    size_t n = strnlen(text, HA_CAPI_ERROR_BYTES - 1);
    memcpy(ha_capi_text, text, n);
    ha_capi_text[n] = '\0';
}

const char *ha_capi_error_text(void) { return ha_capi_text; }

int ha_capi_error_code(void) { return ha_capi_code; }

/* hugealloc.h's inline get and put read a pool's head as
 * `struct ha__mempool_head` and the cache records by word index: the
 * installed header and the library must agree, or those paths would read
 * the wrong words. Checked here, at build time. */
#include "../HugeAllocC/include/hugealloc.h"
#include <stddef.h>

#define HA_SAME_FIELD(field) \
    _Static_assert(offsetof(struct ha__mempool_head, field) == offsetof(struct ha_capi_mempool_head, field) \
                   && sizeof(((struct ha__mempool_head *)0)->field) == sizeof(((struct ha_capi_mempool_head *)0)->field), \
                   "hugealloc.h and CHugeAllocCAPI.h disagree on the pool head's " #field)
HA_SAME_FIELD(pool_id);
HA_SAME_FIELD(slot);
HA_SAME_FIELD(cache_capacity);
HA_SAME_FIELD(base);
HA_SAME_FIELD(length);
HA_SAME_FIELD(flags);
HA_SAME_FIELD(abi);
HA_SAME_FIELD(pool);
_Static_assert(sizeof(struct ha__mempool_head) == sizeof(struct ha_capi_mempool_head), "pool head sizes differ");
_Static_assert(HA__HEAD_CACHE == HA_CAPI_HEAD_CACHE && HA__HEAD_STATS == HA_CAPI_HEAD_STATS && HA__ABI == HA_CAPI_HEAD_ABI
               && HA__NO_POOL_ID == HA_CAPI_NO_POOL_ID,
               "hugealloc.h and CHugeAllocCAPI.h disagree on the pool head's flags");
_Static_assert(HA__RECORD_COUNT == HA_CAPI_RECORD_COUNT && HA__RECORD_GETS == HA_CAPI_RECORD_GETS
               && HA__RECORD_PUTS == HA_CAPI_RECORD_PUTS && HA__RECORD_SLOTS == HA_CAPI_RECORD_SLOTS,
               "hugealloc.h and CHugeAllocCAPI.h disagree on the cache record's words");
