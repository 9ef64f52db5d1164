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
