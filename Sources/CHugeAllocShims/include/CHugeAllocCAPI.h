#pragma once
/* The C API's per-thread error (hugealloc.h's ha_last_error()): a code and
 * a message kept in _Thread_local storage, so a failure on one thread never
 * shows on another. Internal to the library; prefixed ha_capi_. */

#ifdef __cplusplus
extern "C" {
#endif

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
