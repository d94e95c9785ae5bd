/* Prefetch: the ring of batch buffers filled by a background thread. The
 * prefetcher on its own (every item, in order, into the right slot, never more
 * than the ring ahead, on another thread while the consumer holds an item;
 * failures and early stops), then graft_train with prefetch on and off: the
 * same fill calls in the same order, the same weights bit for bit, a failing
 * fill's message, an interruption mid-epoch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "graft.h"
#include "model/model.h"
#include "tfjs_model_writer.h"
#include "train/prefetch.h"

/* ---- the prefetcher alone --------------------------------------------------------- */

typedef struct item {
    int64_t index;
    pthread_t thread;
} item;

typedef struct producer_log {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int64_t calls, released;   /* produce calls started; items the consumer gave back */
    int64_t max_ahead;         /* most items produced and not yet released */
    int64_t fail_at;           /* produce fails on this item (-1: never) */
    int64_t block_from;        /* produce waits for `unblock` from this item on (-1: never) */
    int unblock;
    int64_t started_item;      /* the last item whose produce has started */
} producer_log;

static void log_init(producer_log *log)
{
    memset(log, 0, sizeof *log);
    pthread_mutex_init(&log->lock, NULL);
    pthread_cond_init(&log->changed, NULL);
    log->fail_at = log->block_from = log->started_item = -1;
}

static void log_free(producer_log *log)
{
    pthread_cond_destroy(&log->changed);
    pthread_mutex_destroy(&log->lock);
}

static graft_status produce(void *user, int64_t index, void *slot)
{
    producer_log *log = user;
    pthread_mutex_lock(&log->lock);
    log->calls++;
    log->started_item = index;
    if (log->calls - log->released > log->max_ahead)
        log->max_ahead = log->calls - log->released;
    pthread_cond_broadcast(&log->changed);
    while (log->block_from >= 0 && index >= log->block_from && !log->unblock)
        pthread_cond_wait(&log->changed, &log->lock);
    pthread_mutex_unlock(&log->lock);
    if (index == log->fail_at)
        return graft__fail(GRAFT_E_IO, "item %lld: the disk said no", (long long)index);
    item *it = slot;
    it->index = index;
    it->thread = pthread_self();
    return GRAFT_OK;
}

static void release(graft__prefetch *p, producer_log *log)
{
    pthread_mutex_lock(&log->lock);
    log->released++;
    pthread_mutex_unlock(&log->lock);
    graft__prefetch_release(p);
}

/* Waits up to 30 s for produce to have started item `index`; 1 if it did. */
static int wait_started(producer_log *log, int64_t index)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&log->lock);
    int rc = 0;
    while (log->started_item < index && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&log->changed, &log->lock, &deadline);
    int started = log->started_item >= index;
    pthread_mutex_unlock(&log->lock);
    return started;
}

static void every_item_in_order_into_its_slot(void **state)
{
    const int slot_counts[4] = {1, 2, 3, 5};
    for (int s = 0; s < 4; s++) {
        int n_slots = slot_counts[s];
        item items[5];
        void *slots[5];
        for (int i = 0; i < 5; i++)
            slots[i] = &items[i];
        producer_log log;
        log_init(&log);
        graft__prefetch p;
        graft__prefetch_start(&p, produce, &log, slots, n_slots, 1, 3, 14);
        for (int64_t want = 3; want < 14; want++) {
            if (n_slots > 1 && want == 3)
                assert_true(wait_started(&log, 3 + n_slots - 1)); /* the ring fills */
            void *got = NULL;
            assert_int_equal(graft__prefetch_get(&p, &got), GRAFT_OK);
            assert_ptr_equal(got, slots[(want - 3) % n_slots]);
            assert_int_equal(((item *)got)->index, want);
            /* one slot: made inline, on this thread; more: on the producer's */
            assert_int_equal(pthread_equal(((item *)got)->thread, pthread_self()) != 0,
                             n_slots == 1);
            if (n_slots > 1 && want + 1 < 14)
                assert_true(wait_started(&log, want + 1)); /* made while we hold `want` */
            release(&p, &log);
        }
        void *past = NULL;
        assert_int_equal(graft__prefetch_get(&p, &past), GRAFT_E_INVALID_ARG);
        assert_null(past);
        graft__prefetch_stop(&p);
        assert_int_equal(log.calls, 11);
        assert_int_equal(log.max_ahead, n_slots); /* never more ahead than the ring */
        graft__prefetch_stop(&p); /* twice is fine */
        log_free(&log);
    }
    /* holding every slot and asking for more fails instead of waiting forever */
    {
        item two[2];
        void *ring[2] = {&two[0], &two[1]}, *first, *second, *third = &two[0];
        producer_log held;
        log_init(&held);
        graft__prefetch q;
        graft__prefetch_start(&q, produce, &held, ring, 2, 1, 0, 6);
        assert_int_equal(graft__prefetch_get(&q, &first), GRAFT_OK);
        assert_int_equal(graft__prefetch_get(&q, &second), GRAFT_OK);
        assert_int_equal(graft__prefetch_get(&q, &third), GRAFT_E_INVALID_ARG);
        assert_null(third);
        assert_non_null(strstr(graft_last_error(), "slots are held"));
        release(&q, &held);
        assert_int_equal(graft__prefetch_get(&q, &third), GRAFT_OK);
        assert_int_equal(((item *)third)->index, 2);
        graft__prefetch_stop(&q);
        log_free(&held);
    }
    /* an empty range hands out nothing */
    graft__prefetch p;
    item it;
    void *slots[2] = {&it, &it}, *got;
    producer_log log;
    log_init(&log);
    graft__prefetch_start(&p, produce, &log, slots, 2, 1, 4, 4);
    assert_int_equal(graft__prefetch_get(&p, &got), GRAFT_E_INVALID_ARG);
    graft__prefetch_stop(&p);
    assert_int_equal(log.calls, 0);
    log_free(&log);
}

static void failure_reaches_the_consumer_at_its_item(void **state)
{
    for (int n_slots = 1; n_slots <= 3; n_slots++) {
        item items[3];
        void *slots[3] = {&items[0], &items[1], &items[2]};
        producer_log log;
        log_init(&log);
        log.fail_at = 4;
        graft__prefetch p;
        graft__prefetch_start(&p, produce, &log, slots, n_slots, 1, 0, 10);
        for (int64_t want = 0; want < 4; want++) {
            void *got;
            assert_int_equal(graft__prefetch_get(&p, &got), GRAFT_OK);
            assert_int_equal(((item *)got)->index, want);
            release(&p, &log);
        }
        void *got = &log;
        graft__clear_error();
        assert_int_equal(graft__prefetch_get(&p, &got), GRAFT_E_IO);
        assert_null(got);
        /* the producer's message, on this thread */
        assert_string_equal(graft_last_error(), "item 4: the disk said no");
        graft__prefetch_stop(&p);
        assert_int_equal(log.calls, 5); /* nothing after the failure */
        log_free(&log);
    }
}

static void stop_while_producer_waits_or_works_returns(void **state)
{
    item items[3];
    void *slots[3] = {&items[0], &items[1], &items[2]};
    /* the ring full, the producer waiting for a free slot */
    producer_log log;
    log_init(&log);
    graft__prefetch p;
    graft__prefetch_start(&p, produce, &log, slots, 3, 1, 0, 100);
    void *got;
    assert_int_equal(graft__prefetch_get(&p, &got), GRAFT_OK);
    assert_true(wait_started(&log, 2));
    graft__prefetch_stop(&p);
    assert_int_equal(log.calls, 3);
    log_free(&log);
    /* the producer in the middle of a produce call: it finishes, nothing more */
    log_init(&log);
    log.block_from = 1;
    graft__prefetch_start(&p, produce, &log, slots, 3, 1, 0, 100);
    assert_int_equal(graft__prefetch_get(&p, &got), GRAFT_OK);
    assert_true(wait_started(&log, 1));
    pthread_mutex_lock(&log.lock);
    log.unblock = 1;
    pthread_cond_broadcast(&log.changed);
    pthread_mutex_unlock(&log.lock);
    graft__prefetch_stop(&p);
    int64_t calls = log.calls;
    assert_true(calls >= 2 && calls <= 3);
    usleep(20000);
    assert_int_equal(log.calls, calls); /* nothing runs after stop returned */
    log_free(&log);
    /* stop on a prefetcher that never started, and on a synchronous one */
    graft__prefetch zero;
    memset(&zero, 0, sizeof zero);
    graft__prefetch_stop(&zero);
    log_init(&log);
    graft__prefetch_start(&p, produce, &log, slots, 1, 1, 0, 5);
    graft__prefetch_stop(&p);
    assert_int_equal(log.calls, 0);
    log_free(&log);
}

/* ---- through graft_train ----------------------------------------------------------- */

enum { SIDE = 6, CLASSES = 3, N = 45, BATCH = 8, EPOCHS = 3, MAX_CALLS = 64 };

typedef struct fill_call {
    int epoch;
    int64_t n;
    int64_t idx[BATCH];
} fill_call;

typedef struct source {
    float x[N * SIDE * SIDE];
    int32_t y[N];
    fill_call calls[MAX_CALLS];
    int n_calls;
    int fail_on_call;        /* 1-based; 0: never */
    int stop_on_step;        /* raise *stop in on_step at this global step; 0: never */
    int steps;
    volatile int stop;
} source;

static graft_status source_fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x,
                                int32_t *labels)
{
    source *s = user;
    if (s->n_calls < MAX_CALLS) {
        fill_call *c = &s->calls[s->n_calls];
        c->epoch = epoch;
        c->n = n;
        memcpy(c->idx, idx, sizeof(int64_t) * (size_t)(n < BATCH ? n : BATCH));
    }
    if (++s->n_calls == s->fail_on_call)
        return graft__fail(GRAFT_E_FORMAT, "photo %lld.jpg: truncated", (long long)idx[0]);
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * SIDE * SIDE, s->x + idx[i] * SIDE * SIDE, sizeof(float) * SIDE * SIDE);
        labels[i] = s->y[idx[i]];
    }
    return GRAFT_OK;
}

static void on_step(int epoch, int64_t step, int64_t steps, double loss, void *user)
{
    source *s = user;
    if (++s->steps == s->stop_on_step)
        s->stop = 1;
}

static void source_make(source *s)
{
    memset(s, 0, sizeof *s);
    uint64_t r = 99;
    for (int64_t i = 0; i < N; i++) {
        s->y[i] = (int32_t)(i % CLASSES);
        for (int k = 0; k < SIDE * SIDE; k++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            float noise = (float)((r >> 40) * (1.0 / 16777216.0)) - 0.5f;
            int on = s->y[i] == 0 ? (k / SIDE) % 2 : s->y[i] == 1 ? (k % SIDE) % 2 : k % 2;
            s->x[i * SIDE * SIDE + k] = (on ? 1.0f : -1.0f) + noise;
        }
    }
}

static char model_dir[64];

/* conv(4, 3x3, relu) -> BN -> GAP -> dropout -> dense(3, softmax). */
static void write_model(void)
{
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    float kernel[3 * 3 * 4], bias[4] = {0}, dense[4 * CLASSES], dense_bias[CLASSES] = {0};
    float ones[4] = {1, 1, 1, 1}, zeros[4] = {0};
    for (int i = 0; i < 36; i++)
        kernel[i] = (float)((i * 37) % 17 - 8) / 16.0f;
    for (int i = 0; i < 4 * CLASSES; i++)
        dense[i] = (float)((i * 11) % 7 - 3) / 6.0f;
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){SIDE, SIDE, 1}));
    json_array_append_new(layers, tmw_layer("Conv2D", "conv",
        json_pack("{s:i,s:[i,i],s:s,s:s}", "filters", 4, "kernel_size", 3, 3, "padding", "same",
                  "activation", "relu"), TMW_INPUTS("input_1")));
    assert_true(tmw_add_weight(&w, "conv/kernel", kernel, 4, (int64_t[]){3, 3, 1, 4}));
    assert_true(tmw_add_weight(&w, "conv/bias", bias, 1, (int64_t[]){4}));
    json_array_append_new(layers, tmw_layer("BatchNormalization", "bn",
        json_pack("{s:f,s:f}", "momentum", 0.9, "epsilon", 1e-3), TMW_INPUTS("conv")));
    assert_true(tmw_add_weight(&w, "bn/gamma", ones, 1, (int64_t[]){4}));
    assert_true(tmw_add_weight(&w, "bn/beta", zeros, 1, (int64_t[]){4}));
    assert_true(tmw_add_weight(&w, "bn/moving_mean", zeros, 1, (int64_t[]){4}));
    assert_true(tmw_add_weight(&w, "bn/moving_variance", ones, 1, (int64_t[]){4}));
    json_array_append_new(layers, tmw_layer("GlobalAveragePooling2D", "gap", json_object(),
                                            TMW_INPUTS("bn")));
    json_array_append_new(layers, tmw_layer("Dropout", "drop", json_pack("{s:f}", "rate", 0.25),
                                            TMW_INPUTS("gap")));
    json_array_append_new(layers, tmw_layer("Dense", "head",
        json_pack("{s:i,s:s}", "units", CLASSES, "activation", "softmax"), TMW_INPUTS("drop")));
    assert_true(tmw_add_weight(&w, "head/kernel", dense, 2, (int64_t[]){4, CLASSES}));
    assert_true(tmw_add_weight(&w, "head/bias", dense_bias, 1, (int64_t[]){CLASSES}));
    assert_true(tmw_write(model_dir, tmw_functional("net", layers, "input_1", "head"), 1, &w));
    tmw_weights_free(&w);
}

typedef struct run_result {
    graft_status rc;
    char message[512];
    float *params;
    int64_t n_params;
    graft_train_result result;
} run_result;

/* Trains a fresh copy of the model. */
static run_result train_once(source *s, int prefetch, double mixup, double cutmix)
{
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(model_dir, &m), GRAFT_OK);
    graft_train_config c;
    graft_train_config_defaults(&c);
    c.epochs = EPOCHS;
    c.batch_size = BATCH;
    c.seed = 5;
    c.learning_rate = 0.05;
    c.prefetch = prefetch;
    c.mixup = mixup;
    c.cutmix = cutmix;
    c.on_step = on_step;
    c.user = s;
    c.stop = &s->stop;
    run_result r;
    memset(&r, 0, sizeof r);
    graft_batch_source src = {N, source_fill, s};
    r.rc = graft_train(m, &src, NULL, &c, &r.result);
    snprintf(r.message, sizeof r.message, "%s", graft_last_error());
    /* every weight and BatchNorm statistic */
    r.n_params = m->n_params;
    r.params = malloc(sizeof(float) * (size_t)m->n_params);
    memcpy(r.params, m->params, sizeof(float) * (size_t)m->n_params);
    graft_model_free(m);
    return r;
}

static void same_fill_calls_and_bit_identical_weights(void **state)
{
    const double mixes[3][2] = {{0, 0}, {0.4, 0}, {0.4, 1.0}};
    for (int k = 0; k < 3; k++) {
        source sync, ahead1, ahead3;
        source_make(&sync);
        source_make(&ahead1);
        source_make(&ahead3);
        run_result a = train_once(&sync, 0, mixes[k][0], mixes[k][1]);
        run_result b = train_once(&ahead1, 1, mixes[k][0], mixes[k][1]);
        run_result c = train_once(&ahead3, 3, mixes[k][0], mixes[k][1]);
        assert_int_equal(a.rc, GRAFT_OK);
        assert_int_equal(b.rc, GRAFT_OK);
        assert_int_equal(c.rc, GRAFT_OK);
        /* the batches asked for: every epoch a permutation of all N, in batches
         * of 8 and a last one of 5, the epochs in order */
        const int per_epoch = (N + BATCH - 1) / BATCH;
        assert_int_equal(sync.n_calls, EPOCHS * per_epoch);
        for (int e = 0; e < EPOCHS; e++) {
            int seen[N] = {0};
            for (int j = 0; j < per_epoch; j++) {
                const fill_call *fc = &sync.calls[e * per_epoch + j];
                assert_int_equal(fc->epoch, e + 1);
                assert_int_equal(fc->n, j + 1 < per_epoch ? BATCH : N - BATCH * (per_epoch - 1));
                for (int64_t i = 0; i < fc->n; i++)
                    seen[fc->idx[i]]++;
            }
            for (int i = 0; i < N; i++)
                assert_int_equal(seen[i], 1);
        }
        /* prefetching asks for exactly the same batches in the same order */
        assert_int_equal(ahead1.n_calls, sync.n_calls);
        assert_int_equal(ahead3.n_calls, sync.n_calls);
        assert_memory_equal(ahead1.calls, sync.calls, sizeof(fill_call) * (size_t)sync.n_calls);
        assert_memory_equal(ahead3.calls, sync.calls, sizeof(fill_call) * (size_t)sync.n_calls);
        /* and trains the same weights, bit for bit, with the same metrics */
        assert_int_equal(a.n_params, b.n_params);
        assert_int_equal(a.n_params, c.n_params);
        assert_memory_equal(a.params, b.params, sizeof(float) * (size_t)a.n_params);
        assert_memory_equal(a.params, c.params, sizeof(float) * (size_t)a.n_params);
        assert_true(a.result.last.train_loss == b.result.last.train_loss);
        assert_true(a.result.last.train_accuracy == c.result.last.train_accuracy);
        free(a.params);
        free(b.params);
        free(c.params);
    }
}

static void failing_fill_ends_training_with_its_message(void **state)
{
    for (int prefetch = 0; prefetch <= 3; prefetch += 3) {
        source s;
        source_make(&s);
        s.fail_on_call = 9; /* epoch 2, its third batch */
        run_result r = train_once(&s, prefetch, 0.2, 0);
        assert_int_equal(r.rc, GRAFT_E_FORMAT);
        assert_non_null(strstr(r.message, ".jpg: truncated"));
        assert_int_equal(s.steps, 8);  /* every batch before it trained */
        assert_int_equal(s.n_calls, 9); /* and nothing was asked after it */
        free(r.params);
    }
}

static void stop_mid_epoch_returns_promptly(void **state)
{
    for (int prefetch = 0; prefetch <= 3; prefetch++) {
        source s;
        source_make(&s);
        s.stop_on_step = 3;
        run_result r = train_once(&s, prefetch, 0, 0);
        assert_int_equal(r.rc, GRAFT_E_INTERRUPTED);
        assert_int_equal(s.steps, 3);
        /* the ring may have been filled ahead, never further */
        assert_true(s.n_calls >= 3 && s.n_calls <= 3 + prefetch);
        free(r.params);
    }
}

static void bad_prefetch_or_mix_settings_are_refused(void **state)
{
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(model_dir, &m), GRAFT_OK);
    source s;
    source_make(&s);
    graft_batch_source src = {N, source_fill, &s};
    graft_train_config c;
    graft_train_config_defaults(&c);
    assert_int_equal(c.prefetch, -1); /* automatic */
    c.prefetch = -2;
    assert_int_equal(graft_train(m, &src, NULL, &c, NULL), GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "prefetch"));
    c.prefetch = 1;
    c.mixup = -0.5;
    assert_int_equal(graft_train(m, &src, NULL, &c, NULL), GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "mixup"));
    c.mixup = 0;
    c.cutmix = INFINITY;
    assert_int_equal(graft_train(m, &src, NULL, &c, NULL), GRAFT_E_INVALID_ARG);
    assert_int_equal(s.n_calls, 0);
    graft_model_free(m);
}

static int setup(void **state)
{
    snprintf(model_dir, sizeof model_dir, "/tmp/graft-prefetch-XXXXXX");
    if (!mkdtemp(model_dir))
        return -1;
    write_model();
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", model_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_item_in_order_into_its_slot),
        cmocka_unit_test(failure_reaches_the_consumer_at_its_item),
        cmocka_unit_test(stop_while_producer_waits_or_works_returns),
        cmocka_unit_test(same_fill_calls_and_bit_identical_weights),
        cmocka_unit_test(failing_fill_ends_training_with_its_message),
        cmocka_unit_test(stop_mid_epoch_returns_promptly),
        cmocka_unit_test(bad_prefetch_or_mix_settings_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
