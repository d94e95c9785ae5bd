/* Status and the per-thread message of the last failed call.
 * Everything in graft reports failure through graft__fail(), which records a
 * one-line message and returns the status so callers can `return graft__fail(...)`. */
#ifndef GRAFT_CORE_ERROR_H
#define GRAFT_CORE_ERROR_H

#include "graft.h"

#if defined(__GNUC__)
#define GRAFT__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define GRAFT__PRINTF(a, b)
#endif

/* Records the message (printf format) for graft_last_error() and returns rc. */
graft_status graft__fail(graft_status rc, const char *fmt, ...) GRAFT__PRINTF(2, 3);

/* Prefixes the current message with "prefix: " (used to add a file or layer name
 * to an error raised deeper down) and returns rc unchanged. */
graft_status graft__fail_prefix(graft_status rc, const char *fmt, ...) GRAFT__PRINTF(2, 3);

void graft__clear_error(void);

#endif
