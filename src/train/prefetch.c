#include "train/prefetch.h"

#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"

static void *slot_of(const graft__prefetch *p, int64_t index)
{
    return p->slots[(index - p->first) % p->n_slots];
}

/* Records a failed item; the caller holds the lock. */
static void record_failure(graft__prefetch *p, int64_t index, graft_status rc, const char *msg)
{
    p->fail_index = index;
    p->fail_rc = rc;
    snprintf(p->fail_message, sizeof p->fail_message, "%s", msg);
}

static void *producer_main(void *arg)
{
    graft__prefetch *p = arg;
    /* Only this thread's own parallel regions (e.g. decoding) are sized here;
     * the consumer's compute keeps its own thread count. */
    if (p->threads > 0)
        omp_set_num_threads(p->threads);
    pthread_mutex_lock(&p->lock);
    while (!p->cancel && p->produced < p->end) {
        if (p->produced - p->released >= p->n_slots) {
            pthread_cond_wait(&p->changed, &p->lock);
            continue;
        }
        const int64_t index = p->produced;
        pthread_mutex_unlock(&p->lock);
        graft_status rc = p->produce(p->user, index, slot_of(p, index));
        char msg[sizeof p->fail_message] = "";
        if (rc != GRAFT_OK)
            snprintf(msg, sizeof msg, "%s", graft_last_error());
        pthread_mutex_lock(&p->lock);
        if (rc != GRAFT_OK) {
            record_failure(p, index, rc, msg);
            p->end = index + 1; /* nothing after a failure is produced */
        }
        p->produced = index + 1;
        pthread_cond_broadcast(&p->changed);
    }
    p->cancel = 1; /* tells a waiting consumer that nothing more comes */
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static int start_thread(graft__prefetch *p)
{
    if (pthread_mutex_init(&p->lock, NULL) != 0)
        return 0;
    if (pthread_cond_init(&p->changed, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        return 0;
    }
    /* Signals (a Ctrl-C) keep going to the caller's thread, whose handler sets
     * the stop flag training polls. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int ok = pthread_create(&p->thread, NULL, producer_main, p) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!ok) {
        pthread_cond_destroy(&p->changed);
        pthread_mutex_destroy(&p->lock);
    }
    return ok;
}

void graft__prefetch_start(graft__prefetch *p, graft__produce_fn produce, void *user,
                           void *const *slots, int n_slots, int threads, int64_t first,
                           int64_t end)
{
    memset(p, 0, sizeof *p);
    p->produce = produce;
    p->user = user;
    p->slots = slots;
    p->n_slots = n_slots > 0 ? n_slots : 1;
    p->threads = threads;
    p->first = p->produced = p->handed = p->released = first;
    p->end = p->fail_index = end > first ? end : first;
    p->started = 1;
    p->background = p->n_slots > 1 && p->end > p->first && start_thread(p);
}

static graft_status get_sync(graft__prefetch *p, void **slot)
{
    const int64_t index = p->handed;
    graft_status rc = p->produce(p->user, index, slot_of(p, index));
    if (rc != GRAFT_OK) {
        p->end = index + 1;
        p->fail_index = index;
        return rc;
    }
    p->handed++;
    *slot = slot_of(p, index);
    return GRAFT_OK;
}

static graft_status past_end(int64_t index)
{
    return graft__fail(GRAFT_E_INVALID_ARG, "prefetch: item %lld was not asked for",
                       (long long)index);
}

static graft_status all_held(const graft__prefetch *p, int64_t index)
{
    return graft__fail(GRAFT_E_INVALID_ARG, "prefetch: all %d slots are held; release one "
                       "before asking for item %lld", p->n_slots, (long long)index);
}

graft_status graft__prefetch_get(graft__prefetch *p, void **slot)
{
    *slot = NULL;
    if (!p->started)
        return graft__fail(GRAFT_E_INVALID_ARG, "prefetch: not started");
    if (!p->background)
        return p->handed - p->released >= p->n_slots ? all_held(p, p->handed)
               : p->handed < p->end                  ? get_sync(p, slot)
                                                     : past_end(p->handed);
    pthread_mutex_lock(&p->lock);
    const int64_t index = p->handed;
    /* Holding every slot, the consumer would wait for an item that has no room. */
    const int full = index - p->released >= p->n_slots;
    while (!full && p->produced <= index && index < p->end && !p->cancel)
        pthread_cond_wait(&p->changed, &p->lock);
    graft_status rc = GRAFT_OK;
    if (full)
        rc = all_held(p, index);
    else if (index >= p->end)
        rc = past_end(index);
    else if (index == p->fail_index)
        rc = graft__fail(p->fail_rc, "%s", p->fail_message);
    else if (p->produced <= index)
        rc = graft__fail(GRAFT_E_INVALID_ARG, "prefetch: stopped before item %lld",
                         (long long)index);
    if (rc == GRAFT_OK) {
        p->handed++;
        *slot = slot_of(p, index);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void graft__prefetch_release(graft__prefetch *p)
{
    if (!p->background) {
        if (p->released < p->handed)
            p->released++;
        return;
    }
    pthread_mutex_lock(&p->lock);
    if (p->released < p->handed)
        p->released++;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

void graft__prefetch_stop(graft__prefetch *p)
{
    if (p->started && p->background) {
        pthread_mutex_lock(&p->lock);
        p->cancel = 1;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
        pthread_cond_destroy(&p->changed);
        pthread_mutex_destroy(&p->lock);
    }
    p->started = p->background = 0;
}
