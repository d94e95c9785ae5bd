/* Training throughput on MobileNetV2 (the three workloads): a new head
 * on out_relu trained with (a) only the head trainable, (b) everything from
 * block_11 up, (c) everything; no feature cache. Each workload runs in its own
 * process so its peak RSS is its own.
 *
 *   build/bench_train [--model models/mobilenet_v2] [--batch 32] [--threads 2] [--steps 6]
 *   build/bench_train --serve --workload head|block_11|full [--warmup 2] [--per-round 2] ...
 *
 * --serve is bench/compare's worker mode (bench/serve.h): training runs on after
 * --warmup steps, and each "round" on stdin times --per-round optimiser steps
 * (batch fill, forward, backward, update), measured between step callbacks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "graft.h"
#include "serve.h"

/* One batch worth of distinct images, served for every index modulo its size:
 * the speed does not depend on which images a step sees, and the pool keeps the
 * process's RSS to what training needs (PyTorch's peer holds one batch too). */
typedef struct bench_data {
    int64_t pool, sample;
    float *x;
    int32_t *y;
} bench_data;

static graft_status fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x,
                         int32_t *labels)
{
    bench_data *d = user;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = idx[i] % d->pool;
        memcpy(x + i * d->sample, d->x + k * d->sample, sizeof(float) * (size_t)d->sample);
        labels[i] = d->y[k];
    }
    return GRAFT_OK;
}

typedef struct serve_state {
    long warmup, per_round, seen, in_round;
    double last;
    double *seconds; /* (per_round) */
    volatile int stop;
} serve_state;

/* Runs after every optimiser step: the pause for the driver's next command sits
 * between two steps, so a round times whole steps only. */
static void on_step(int epoch, int64_t step, int64_t steps, double loss, void *user)
{
    serve_state *s = user;
    double t = serve_now();
    s->seen++;
    if (s->seen > s->warmup)
        s->seconds[s->in_round++] = t - s->last;
    if (s->seen == s->warmup || s->in_round == s->per_round) {
        if (s->seen == s->warmup)
            serve_ready("");
        else
            serve_report(s->seconds, s->per_round);
        s->in_round = 0;
        if (!serve_next_round())
            s->stop = 1;
    }
    s->last = serve_now();
}

static int run_workload(const char *model_path, const char *mode, long batch, long threads,
                        long steps, const serve_state *serve_config)
{
    graft_set_threads((int)threads);
    graft_model *m = NULL;
    if (graft_model_load(model_path, &m) != GRAFT_OK || graft_model_cut(m, "out_relu") != GRAFT_OK ||
        graft_model_add_classifier(m, 10, 0.2, 1) != GRAFT_OK) {
        fprintf(stderr, "bench_train: %s\n", graft_last_error());
        graft_model_free(m);
        return 1;
    }
    graft_status rc = GRAFT_OK;
    if (strcmp(mode, "head") == 0)
        rc = graft_model_unfreeze_from(m, "global_average_pooling2d");
    else if (strcmp(mode, "block_11") == 0)
        rc = graft_model_unfreeze_from(m, "block_11_expand");
    else
        graft_model_set_trainable_all(m, 1);
    if (rc) {
        fprintf(stderr, "bench_train: %s\n", graft_last_error());
        graft_model_free(m);
        return 1;
    }
    int64_t h, w, c;
    graft_model_input_size(m, &h, &w, &c);
    bench_data d = {batch, h * w * c, NULL, NULL};
    d.x = malloc(sizeof(float) * (size_t)(d.pool * d.sample));
    d.y = malloc(sizeof(int32_t) * (size_t)d.pool);
    for (int64_t i = 0; i < d.pool * d.sample; i++)
        d.x[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    for (int64_t i = 0; i < d.pool; i++)
        d.y[i] = (int32_t)(i % 10);
    graft_batch_source src = {batch * steps, fill, &d};
    graft_train_config cfg;
    graft_train_config_defaults(&cfg);
    cfg.batch_size = batch;
    cfg.epochs = 2; /* the first epoch warms up */
    serve_state serve = {0};
    if (serve_config) {
        /* One long epoch: the driver, not the epoch count, ends training. */
        serve = *serve_config;
        serve.seconds = malloc(sizeof(double) * (size_t)serve.per_round);
        src.count = batch * (serve.warmup + 1000 * serve.per_round + 1);
        cfg.epochs = 1;
        cfg.on_step = on_step;
        cfg.user = &serve;
        cfg.stop = &serve.stop;
    }
    graft_train_result r;
    rc = graft_train(m, &src, NULL, &cfg, &r);
    free(serve.seconds);
    free(d.x);
    free(d.y);
    if (rc != GRAFT_OK && !(serve_config && rc == GRAFT_E_INTERRUPTED)) {
        fprintf(stderr, "bench_train: %s\n", graft_last_error());
        graft_model_free(m);
        return 1;
    }
    graft_model_free(m);
    if (serve_config)
        return 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"bench\":\"train\",\"workload\":\"%s\",\"batch\":%ld,\"threads\":%d,"
           "\"images_per_s\":%.2f,\"peak_rss_mb\":%.1f}\n",
           mode, batch, graft_threads(), r.last.images_per_second, ru.ru_maxrss / 1024.0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model_path = "models/mobilenet_v2";
    long batch = 32, threads = 2, steps = 6;
    const char *only = NULL;
    int serve = 0;
    serve_state serve_config = {.warmup = 2, .per_round = 2};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--serve")) {
            serve = 1;
            continue;
        }
        if (i + 1 == argc) {
            fprintf(stderr, "bench_train: '%s' needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--model"))
            model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--workload"))
            only = argv[i + 1];
        else if (!strcmp(argv[i], "--warmup"))
            serve_config.warmup = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--per-round"))
            serve_config.per_round = atol(argv[i + 1]);
        else {
            fprintf(stderr, "bench_train: unknown option '%s'\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (batch < 1 || steps < 1 || serve_config.warmup < 1 || serve_config.per_round < 1 ||
        serve_config.per_round > 1000 || (serve && !only) ||
        (only && strcmp(only, "head") && strcmp(only, "block_11") && strcmp(only, "full"))) {
        fprintf(stderr, "bench_train: bad --batch, --steps, --warmup, --per-round or --workload "
                        "(head, block_11 or full; --serve needs one)\n");
        return 2;
    }
    if (only)
        return run_workload(model_path, only, batch, threads, steps, serve ? &serve_config : NULL);
    const char *modes[3] = {"head", "block_11", "full"};
    printf("MobileNetV2 training, batch %ld, %ld threads, %ld steps per epoch "
           "(median-free: second epoch of two)\n", batch, threads, steps);
    for (int k = 0; k < 3; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            char b[32], t[32], s[32];
            snprintf(b, sizeof b, "%ld", batch);
            snprintf(t, sizeof t, "%ld", threads);
            snprintf(s, sizeof s, "%ld", steps);
            execl("/proc/self/exe", argv[0], "--model", model_path, "--batch", b, "--threads", t,
                  "--steps", s, "--workload", modes[k], (char *)NULL);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
    }
    return 0;
}
