/* Prefetch: one background thread prepares numbered items (training batches)
 * ahead of a consumer, into a fixed ring of caller-owned slots, so preparing
 * item i + 1 overlaps consuming item i while memory stays at n_slots items.
 *
 * Items are produced and handed out strictly in order, first, first + 1, ...,
 * end - 1; item i goes to slot (i - first) mod n_slots, which the producer
 * refills only after the consumer has released it. So with n_slots = 2 the
 * producer works on item i + 1 while the consumer holds item i.
 *
 * With one slot, or when the thread cannot be started, everything runs on the
 * consumer's thread inside graft__prefetch_get: the synchronous path, with the
 * same produce calls in the same order.
 *
 * A failed produce ends production: the consumer gets that item's status and
 * message (re-raised on its own thread) when it asks for that item, and every
 * item before it normally. Stopping early cancels what is not yet started and
 * joins the thread; a produce call in progress runs to its end first. */
#ifndef GRAFT_TRAIN_PREFETCH_H
#define GRAFT_TRAIN_PREFETCH_H

#include <pthread.h>
#include <stdint.h>

#include "graft.h"

/* Fills `slot` with item `index`. Called from one thread at a time, in order. */
typedef graft_status (*graft__produce_fn)(void *user, int64_t index, void *slot);

typedef struct graft__prefetch {
    graft__produce_fn produce;
    void *user;
    void *const *slots;
    int n_slots;
    int threads;          /* OpenMP threads the producer's own parallel regions use */
    int64_t first, end;   /* items [first, end) */
    int64_t produced;     /* items [first, produced) are ready (or failed at fail_index) */
    int64_t handed;       /* items [first, handed) were returned by get */
    int64_t released;     /* items [first, released) were given back */
    int cancel, background, started;
    int64_t fail_index;   /* end when nothing failed */
    graft_status fail_rc;
    char fail_message[1024];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
} graft__prefetch;

/* Starts producing items [first, end) into slots (n_slots >= 1; more than one
 * runs a producer thread whose OpenMP regions use `threads` threads, 0 = the
 * default). The slots must outlive graft__prefetch_stop. Never fails: without
 * a thread it runs synchronously. */
void graft__prefetch_start(graft__prefetch *p, graft__produce_fn produce, void *user,
                           void *const *slots, int n_slots, int threads, int64_t first,
                           int64_t end);

/* The next item in order, waiting for it when needed: *slot receives it, or the
 * status of producing it is returned (with its message). Asking past end fails. */
graft_status graft__prefetch_get(graft__prefetch *p, void **slot);

/* Gives back the oldest item get returned and the consumer still holds; its slot
 * may then be refilled. Holding all n_slots items, get fails rather than wait. */
void graft__prefetch_release(graft__prefetch *p);

/* Cancels the items not yet started and joins the producer. Safe to call on a
 * stopped or zeroed prefetcher. */
void graft__prefetch_stop(graft__prefetch *p);

#endif
