/* Training throughput on MobileNetV2 (the three workloads): a new head
 * on out_relu trained with (a) only the head trainable, (b) everything from
 * block_11 up, (c) everything; no feature cache. Each workload runs in its own
 * process so its peak RSS is its own.
 *
 *   build/bench_train [--model models/mobilenet_v2] [--batch 32] [--threads 2] [--steps 6]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "graft.h"

typedef struct bench_data {
    int64_t n, sample;
    float *x;
    int32_t *y;
} bench_data;

static graft_status fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x,
                         int32_t *labels)
{
    bench_data *d = user;
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * d->sample, d->x + idx[i] * d->sample, sizeof(float) * (size_t)d->sample);
        labels[i] = d->y[idx[i]];
    }
    return GRAFT_OK;
}

static int run_workload(const char *model_path, const char *mode, long batch, long threads,
                        long steps)
{
    graft_set_threads((int)threads);
    graft_model *m = NULL;
    if (graft_model_load(model_path, &m) != GRAFT_OK || graft_model_cut(m, "out_relu") != GRAFT_OK ||
        graft_model_add_classifier(m, 10, 0.2, 1) != GRAFT_OK) {
        fprintf(stderr, "bench_train: %s\n", graft_last_error());
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
        return 1;
    }
    int64_t h, w, c;
    graft_model_input_size(m, &h, &w, &c);
    bench_data d = {batch * steps, h * w * c, NULL, NULL};
    d.x = malloc(sizeof(float) * (size_t)(d.n * d.sample));
    d.y = malloc(sizeof(int32_t) * (size_t)d.n);
    for (int64_t i = 0; i < d.n * d.sample; i++)
        d.x[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    for (int64_t i = 0; i < d.n; i++)
        d.y[i] = (int32_t)(i % 10);
    graft_batch_source src = {d.n, fill, &d};
    graft_train_config cfg;
    graft_train_config_defaults(&cfg);
    cfg.batch_size = batch;
    cfg.epochs = 2; /* the first epoch warms up */
    graft_train_result r;
    if (graft_train(m, &src, NULL, &cfg, &r) != GRAFT_OK) {
        fprintf(stderr, "bench_train: %s\n", graft_last_error());
        return 1;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"bench\":\"train\",\"workload\":\"%s\",\"batch\":%ld,\"threads\":%d,"
           "\"images_per_s\":%.2f,\"peak_rss_mb\":%.1f}\n",
           mode, batch, graft_threads(), r.last.images_per_second, ru.ru_maxrss / 1024.0);
    free(d.x);
    free(d.y);
    graft_model_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model_path = "models/mobilenet_v2";
    long batch = 32, threads = 2, steps = 6;
    const char *only = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
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
    }
    if (only)
        return run_workload(model_path, only, batch, threads, steps);
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
