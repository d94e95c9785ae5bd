#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { GRAFT__MESSAGE_MAX = 1024 };

/* The only mutable global of the library: one message slot per thread, as dlerror() keeps. */
static _Thread_local char last_message[GRAFT__MESSAGE_MAX];

graft_status graft__fail(graft_status rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return rc;
}

graft_status graft__fail_prefix(graft_status rc, const char *fmt, ...)
{
    char prefix[GRAFT__MESSAGE_MAX];
    char old[GRAFT__MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_message, sizeof old);
    /* Truncation is acceptable: the message stays a readable prefix. */
    size_t used = strlen(prefix);
    if (used > sizeof last_message - 3)
        used = sizeof last_message - 3;
    memcpy(last_message, prefix, used);
    memcpy(last_message + used, ": ", 2);
    size_t room = sizeof last_message - used - 3;
    size_t tail = strlen(old);
    if (tail > room)
        tail = room;
    memcpy(last_message + used + 2, old, tail);
    last_message[used + 2 + tail] = '\0';
    return rc;
}

void graft__clear_error(void) { last_message[0] = '\0'; }

const char *graft_last_error(void) { return last_message; }

const char *graft_status_str(graft_status rc)
{
    switch (rc) {
    case GRAFT_OK: return "ok";
    case GRAFT_E_INVALID_ARG: return "invalid argument";
    case GRAFT_E_IO: return "input/output error";
    case GRAFT_E_FORMAT: return "malformed file";
    case GRAFT_E_UNSUPPORTED: return "unsupported";
    case GRAFT_E_NOMEM: return "out of memory";
    case GRAFT_E_SHAPE: return "shape mismatch";
    case GRAFT_E_NOT_FOUND: return "not found";
    case GRAFT_E_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}
