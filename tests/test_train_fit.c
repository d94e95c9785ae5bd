/* graft_train end to end on small models written by the test: learning a
 * synthetic task, freezing, determinism, early stopping with best-weight
 * restore, and resume after an interruption or a kill -9. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "graft.h"
#include "model/model.h"
#include "tfjs_model_writer.h"

enum { SIDE = 8, CLASSES = 3, N_TRAIN = 192, N_VAL = 96 };

static uint64_t rng_state;
static float uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

/* Class 0: horizontal stripes, 1: vertical stripes, 2: checkerboard; random phase,
 * contrast and noise so the task needs real features. */
static void make_example(float *img, int32_t *label, int cls)
{
    int phase = (int)(uniform() * 2);
    float contrast = 0.5f + uniform();
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            int on = cls == 0 ? (y + phase) % 2 : cls == 1 ? (x + phase) % 2 : (x + y + phase) % 2;
            img[y * SIDE + x] = contrast * (on ? 1.0f : -1.0f) + 0.6f * (uniform() - 0.5f);
        }
    *label = cls;
}

typedef struct dataset {
    int64_t n;
    float *x;
    int32_t *y;
    int fills;            /* calls so far */
    int stop_after_fills; /* raise *stop when reached (0: never) */
    volatile int *stop;
} dataset;

static void dataset_make(dataset *d, int64_t n, uint64_t seed)
{
    rng_state = seed;
    memset(d, 0, sizeof *d);
    d->n = n;
    d->x = malloc(sizeof(float) * (size_t)(n * SIDE * SIDE));
    d->y = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        make_example(d->x + i * SIDE * SIDE, d->y + i, (int)(i % CLASSES));
}

static graft_status dataset_fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x,
                                 int32_t *labels)
{
    dataset *d = user;
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * SIDE * SIDE, d->x + idx[i] * SIDE * SIDE, sizeof(float) * SIDE * SIDE);
        labels[i] = d->y[idx[i]];
    }
    if (++d->fills == d->stop_after_fills && d->stop)
        *d->stop = 1;
    return GRAFT_OK;
}

static graft_batch_source source_of(dataset *d)
{
    return (graft_batch_source){d->n, dataset_fill, d};
}

/* Glorot-uniform values for a weight of fan_in, fan_out. */
static float *glorot(int64_t count, int64_t fan_in, int64_t fan_out)
{
    float *w = malloc(sizeof(float) * (size_t)count);
    float limit = sqrtf(6.0f / (float)(fan_in + fan_out));
    for (int64_t i = 0; i < count; i++)
        w[i] = (2.0f * uniform() - 1.0f) * limit;
    return w;
}

static float *constant(int64_t count, float v)
{
    float *w = malloc(sizeof(float) * (size_t)count);
    for (int64_t i = 0; i < count; i++)
        w[i] = v;
    return w;
}

static void add(tmw_weights *w, const char *name, float *data, int rank, const int64_t *dims)
{
    assert_true(tmw_add_weight(w, name, data, rank, dims));
    free(data);
}

static void add_bn(json_t *layers, tmw_weights *w, const char *name, const char *input, int64_t ch)
{
    char key[64];
    json_array_append_new(layers, tmw_layer("BatchNormalization", name,
                                            json_pack("{s:f,s:f}", "momentum", 0.9, "epsilon", 1e-3),
                                            TMW_INPUTS(input)));
    const char *names[4] = {"gamma", "beta", "moving_mean", "moving_variance"};
    const float init[4] = {1.0f, 0.0f, 0.0f, 1.0f};
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%s/%s", name, names[i]);
        add(w, key, constant(ch, init[i]), 1, (int64_t[]){ch});
    }
}

/* conv(8, 3x3, relu) -> BN -> conv(16, 3x3 stride 2, relu) -> BN -> GAP -> dropout
 * -> dense(3, softmax): a small conv net from scratch. */
static void write_conv_net(const char *dir, uint64_t seed)
{
    rng_state = seed;
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){SIDE, SIDE, 1}));
    json_array_append_new(layers, tmw_layer("Conv2D", "conv1",
        json_pack("{s:i,s:[i,i],s:s,s:s}", "filters", 8, "kernel_size", 3, 3, "padding", "same",
                  "activation", "relu"), TMW_INPUTS("input_1")));
    add(&w, "conv1/kernel", glorot(3 * 3 * 1 * 8, 9, 72), 4, (int64_t[]){3, 3, 1, 8});
    add(&w, "conv1/bias", constant(8, 0.0f), 1, (int64_t[]){8});
    add_bn(layers, &w, "bn1", "conv1", 8);
    json_array_append_new(layers, tmw_layer("Conv2D", "conv2",
        json_pack("{s:i,s:[i,i],s:[i,i],s:s,s:s}", "filters", 16, "kernel_size", 3, 3, "strides",
                  2, 2, "padding", "same", "activation", "relu"), TMW_INPUTS("bn1")));
    add(&w, "conv2/kernel", glorot(3 * 3 * 8 * 16, 72, 144), 4, (int64_t[]){3, 3, 8, 16});
    add(&w, "conv2/bias", constant(16, 0.0f), 1, (int64_t[]){16});
    add_bn(layers, &w, "bn2", "conv2", 16);
    json_array_append_new(layers, tmw_layer("GlobalAveragePooling2D", "gap", json_object(),
                                            TMW_INPUTS("bn2")));
    json_array_append_new(layers, tmw_layer("Dropout", "drop", json_pack("{s:f}", "rate", 0.2),
                                            TMW_INPUTS("gap")));
    json_array_append_new(layers, tmw_layer("Dense", "head",
        json_pack("{s:i,s:s}", "units", CLASSES, "activation", "softmax"), TMW_INPUTS("drop")));
    add(&w, "head/kernel", glorot(16 * CLASSES, 16, CLASSES), 2, (int64_t[]){16, CLASSES});
    add(&w, "head/bias", constant(CLASSES, 0.0f), 1, (int64_t[]){CLASSES});
    assert_true(tmw_write(dir, tmw_functional("net", layers, "input_1", "head"), 1, &w));
    tmw_weights_free(&w);
}

static char model_dir[64];
static int head_only; /* train_and_copy freezes everything below the head */

static graft_model *load_net(void)
{
    graft_model *m = NULL;
    if (graft_model_load(model_dir, &m) != GRAFT_OK)
        fail_msg("%s", graft_last_error());
    return m;
}

static graft_train_config base_config(void)
{
    graft_train_config c;
    graft_train_config_defaults(&c);
    c.epochs = 12;
    c.batch_size = 16;
    c.seed = 42;
    c.learning_rate = 1e-2;
    return c;
}

/* Top-1 accuracy of the model in inference mode. */
static double accuracy(graft_model *m, const dataset *d)
{
    float *out = malloc(sizeof(float) * (size_t)(d->n * CLASSES));
    assert_int_equal(graft_model_forward(m, d->x, d->n, out), GRAFT_OK);
    int64_t correct = 0;
    for (int64_t i = 0; i < d->n; i++) {
        int best = 0;
        for (int c = 1; c < CLASSES; c++)
            best = out[i * CLASSES + c] > out[i * CLASSES + best] ? c : best;
        correct += best == d->y[i];
    }
    free(out);
    return (double)correct / (double)d->n;
}

static void conv_net_from_scratch_reaches_99_percent_train_accuracy(void **state)
{
    dataset train;
    dataset_make(&train, N_TRAIN, 7);
    graft_batch_source src = source_of(&train);
    graft_model *m = load_net();
    graft_train_config c = base_config();
    graft_train_result r;
    if (graft_train(m, &src, NULL, &c, &r) != GRAFT_OK)
        fail_msg("%s", graft_last_error());
    double acc = accuracy(m, &train);
    printf("    train accuracy after %d epochs: %.4f (last epoch loss %.4f)\n", r.epochs_run, acc,
           r.last.train_loss);
    assert_true(acc >= 0.99);
    graft_model_free(m);
    free(train.x);
    free(train.y);
}

/* Everything but the head frozen: frozen kernels and BN moving statistics keep
 * their exact bits; the head changes. */
static void frozen_layers_keep_exact_bits_and_only_head_learns(void **state)
{
    dataset train;
    dataset_make(&train, N_TRAIN, 8);
    graft_batch_source src = source_of(&train);
    graft_model *m = load_net();
    assert_int_equal(graft_model_unfreeze_from(m, "head"), GRAFT_OK);
    size_t bytes = sizeof(float) * (size_t)m->n_params;
    float *before = malloc(bytes);
    memcpy(before, m->params, bytes);
    graft_train_config c = base_config();
    c.epochs = 3;
    assert_int_equal(graft_train(m, &src, NULL, &c, NULL), GRAFT_OK);
    graft__layer *head = graft__graph_find_layer(m, "head");
    int64_t head_start = head->weights[0].offset;
    int64_t head_end = head->weights[1].offset + CLASSES;
    for (int64_t i = 0; i < m->n_params; i++)
        if (i < head_start || i >= head_end)
            assert_memory_equal(&before[i], &m->params[i], sizeof(float));
    assert_true(memcmp(before + head_start, m->params + head_start,
                       sizeof(float) * (size_t)(head_end - head_start)) != 0);
    free(before);
    graft_model_free(m);
    free(train.x);
    free(train.y);
}

static float *train_and_copy(const graft_train_config *c, dataset *train, dataset *val,
                             graft_status expect);
static int64_t param_count(void);

/* Head-only training from cached features ends with the weights of training
 * through the frozen base every epoch (to rounding), and asks the source for each
 * example once instead of once per epoch. */
static void feature_cache_gives_same_head_and_reads_each_example_once(void **state)
{
    dataset train, val;
    dataset_make(&train, N_TRAIN, 14);
    dataset_make(&val, N_VAL, 15);
    graft_train_config c = base_config();
    c.epochs = 5;
    head_only = 1;
    float *plain = train_and_copy(&c, &train, &val, GRAFT_OK);
    int plain_fills = train.fills;
    train.fills = 0;
    c.cache_views = 1;
    float *cached = train_and_copy(&c, &train, &val, GRAFT_OK);
    printf("    source calls: %d without cache, %d with\n", plain_fills, train.fills);
    assert_int_equal(train.fills, (N_TRAIN + 15) / 16);
    assert_int_equal(plain_fills, 5 * ((N_TRAIN + 15) / 16));
    /* Not bit-equal: GEMM rounding depends on which rows share a batch, and the
     * cache batches examples in order while training shuffles them. */
    double cache_diff = 0.0;
    for (int64_t i = 0; i < param_count(); i++)
        cache_diff = fmax(cache_diff, fabs(cached[i] - plain[i]));
    printf("    float32 cache: max weight difference %.3g\n", cache_diff);
    assert_true(cache_diff < 1e-5);
    c.cache_float16 = 1;
    c.cache_bytes = 1; /* forces the memory-mapped file */
    float *half = train_and_copy(&c, &train, &val, GRAFT_OK);
    double max_diff = 0.0;
    for (int64_t i = 0; i < param_count(); i++)
        max_diff = fmax(max_diff, fabs(half[i] - plain[i]));
    printf("    float16 mapped cache: max weight difference %.3g\n", max_diff);
    assert_true(max_diff < 1e-2);
    free(plain);
    free(cached);
    free(half);
    head_only = 0;
    free(train.x);
    free(train.y);
    free(val.x);
    free(val.y);
}

static float *train_and_copy(const graft_train_config *c, dataset *train, dataset *val,
                             graft_status expect)
{
    graft_batch_source src = source_of(train), vsrc = val ? source_of(val) : src;
    graft_model *m = load_net();
    if (head_only)
        assert_int_equal(graft_model_unfreeze_from(m, "head"), GRAFT_OK);
    graft_status rc = graft_train(m, &src, val ? &vsrc : NULL, c, NULL);
    if (rc != expect)
        fail_msg("graft_train returned %d: %s", rc, graft_last_error());
    float *w = malloc(sizeof(float) * (size_t)m->n_params);
    memcpy(w, m->params, sizeof(float) * (size_t)m->n_params);
    graft_model_free(m);
    return w;
}

static int64_t param_count(void)
{
    graft_model *m = load_net();
    int64_t n = m->n_params;
    graft_model_free(m);
    return n;
}

static void same_seed_gives_bit_identical_weights(void **state)
{
    dataset train;
    dataset_make(&train, N_TRAIN, 9);
    graft_train_config c = base_config();
    c.epochs = 3;
    float *a = train_and_copy(&c, &train, NULL, GRAFT_OK);
    float *b = train_and_copy(&c, &train, NULL, GRAFT_OK);
    assert_memory_equal(a, b, sizeof(float) * (size_t)param_count());
    c.seed = 43;
    float *other = train_and_copy(&c, &train, NULL, GRAFT_OK);
    assert_true(memcmp(a, other, sizeof(float) * (size_t)param_count()) != 0);
    free(a);
    free(b);
    free(other);
    free(train.x);
    free(train.y);
}

typedef struct epoch_log {
    int n;
    graft_epoch_metrics e[64];
} epoch_log;

static int record_epoch(const graft_epoch_metrics *e, void *user)
{
    epoch_log *log = user;
    log->e[log->n++] = *e;
    return 0;
}

/* Val loss re-measured after training equals the best epoch's: best weights came back. */
static void early_stopping_restores_best_weights(void **state)
{
    dataset train, val;
    dataset_make(&train, N_TRAIN, 10);
    dataset_make(&val, N_VAL, 11);
    graft_batch_source src = source_of(&train), vsrc = source_of(&val);
    graft_model *m = load_net();
    epoch_log log = {0};
    graft_train_config c = base_config();
    c.epochs = 20;
    c.learning_rate = 0.05; /* noisy on purpose, so val loss goes up and down */
    c.patience = 3;
    c.on_epoch = record_epoch;
    c.user = &log;
    graft_train_result r;
    assert_int_equal(graft_train(m, &src, &vsrc, &c, &r), GRAFT_OK);
    double best = INFINITY;
    int best_epoch = 0;
    for (int i = 0; i < log.n; i++)
        if (log.e[i].val_loss < best) {
            best = log.e[i].val_loss;
            best_epoch = log.e[i].epoch;
        }
    assert_int_equal(r.best_epoch, best_epoch);
    /* Stopped early exactly `patience` epochs after the best, or ran to the end. */
    assert_true(log.n == c.epochs || log.n == best_epoch + c.patience);
    graft_train_config again = c;
    again.epochs = 1;
    again.learning_rate = 1e-30; /* one pass that changes nothing measurable */
    again.on_epoch = NULL;
    again.patience = 0;
    graft_set_allocator(NULL);
    graft_train_result r2;
    assert_int_equal(graft_train(m, &src, &vsrc, &again, &r2), GRAFT_OK);
    printf("    best epoch %d of %d: val loss %.6f, re-measured %.6f\n", best_epoch, log.n, best,
           r2.last.val_loss);
    assert_true(fabs(r2.last.val_loss - best) < 1e-3 * fmax(1.0, best));
    graft_model_free(m);
    free(train.x);
    free(train.y);
    free(val.x);
    free(val.y);
}

/* Reduce-on-plateau cuts the rate by its factor after `plateau_patience` epochs
 * without a better val loss; with a vanishing layer decay every group below the
 * top one gets a rate too small to move a float, so only the head moves. */
static void plateau_cuts_rate_and_layer_decay_scales_groups(void **state)
{
    dataset train, val;
    dataset_make(&train, N_TRAIN, 16);
    dataset_make(&val, N_VAL, 17);
    graft_batch_source src = source_of(&train), vsrc = source_of(&val);
    graft_model *m = load_net();
    epoch_log log = {0};
    graft_train_config c = base_config();
    c.epochs = 8;
    c.learning_rate = 0.3; /* too high: val loss stalls, the plateau rule must act */
    c.plateau_patience = 1;
    c.plateau_factor = 0.1;
    c.on_epoch = record_epoch;
    c.user = &log;
    assert_int_equal(graft_train(m, &src, &vsrc, &c, NULL), GRAFT_OK);
    int cuts = 0;
    for (int i = 1; i < log.n; i++) {
        double ratio = log.e[i].learning_rate / log.e[i - 1].learning_rate;
        assert_true(fabs(ratio - 1.0) < 1e-9 || fabs(ratio - 0.1) < 1e-9);
        cuts += fabs(ratio - 0.1) < 1e-9;
        if (fabs(ratio - 0.1) < 1e-9)
            assert_false(log.e[i - 1].best); /* only after an epoch that did not improve */
    }
    printf("    plateau: %d cuts over %d epochs\n", cuts, log.n);
    assert_true(cuts >= 1);
    graft_model_free(m);

    m = load_net();
    size_t bytes = sizeof(float) * (size_t)m->n_params;
    float *before = malloc(bytes);
    memcpy(before, m->params, bytes);
    graft_train_config d = base_config();
    d.epochs = 2;
    d.layer_lr = GRAFT_LAYER_LR_DECAY;
    d.layer_decay = 1e-20; /* lower groups' steps fall far below a float's resolution */
    d.bn_inference = 1; /* so frozen-rate BatchNorms keep their statistics too */
    assert_int_equal(graft_train(m, &src, NULL, &d, NULL), GRAFT_OK);
    graft__layer *head = graft__graph_find_layer(m, "head"), *conv1 = graft__graph_find_layer(m, "conv1");
    int64_t cw = graft__shape_elems(&conv1->weights[0].shape);
    assert_memory_equal(before + conv1->weights[0].offset, conv1->weights[0].data, sizeof(float) * (size_t)cw);
    assert_true(memcmp(before + head->weights[0].offset, head->weights[0].data,
                       sizeof(float) * 16 * CLASSES) != 0);
    free(before);
    graft_model_free(m);
    free(train.x);
    free(train.y);
    free(val.x);
    free(val.y);
}

/* A stop request mid-epoch checkpoints; resuming ends with the same weights. */
static void stop_request_checkpoints_and_resume_matches(void **state)
{
    char ckpt[128];
    snprintf(ckpt, sizeof ckpt, "%s/stop.ckpt", model_dir);
    dataset train;
    dataset_make(&train, N_TRAIN, 12);
    graft_train_config c = base_config();
    c.epochs = 4;
    float *straight = train_and_copy(&c, &train, NULL, GRAFT_OK);
    volatile int stop = 0;
    train.fills = 0;
    train.stop = &stop;
    train.stop_after_fills = 17; /* in epoch 2 of 12 batches each */
    c.checkpoint = ckpt;
    c.stop = &stop;
    free(train_and_copy(&c, &train, NULL, GRAFT_E_INTERRUPTED));
    train.stop = NULL;
    c.resume = 1;
    c.stop = NULL;
    float *resumed = train_and_copy(&c, &train, NULL, GRAFT_OK);
    assert_memory_equal(straight, resumed, sizeof(float) * (size_t)param_count());
    free(straight);
    free(resumed);
    free(train.x);
    free(train.y);
}

/* The child of the kill test: trains with a checkpoint until killed. */
static int run_child(const char *dir, const char *ckpt)
{
    snprintf(model_dir, sizeof model_dir, "%s", dir);
    dataset train;
    dataset_make(&train, N_TRAIN, 13);
    graft_batch_source src = source_of(&train);
    graft_model *m = NULL;
    if (graft_model_load(model_dir, &m) != GRAFT_OK)
        return 3;
    graft_train_config c = base_config();
    c.epochs = 40;
    c.checkpoint = ckpt;
    c.resume = 1;
    return graft_train(m, &src, NULL, &c, NULL) == GRAFT_OK ? 0 : 4;
}

static char self_path[512];

static void kill_9_then_resume_matches_uninterrupted_run(void **state)
{
    char ckpt[128];
    snprintf(ckpt, sizeof ckpt, "%s/kill.ckpt", model_dir);
    dataset train;
    dataset_make(&train, N_TRAIN, 13);
    graft_train_config c = base_config();
    c.epochs = 40;
    float *straight = train_and_copy(&c, &train, NULL, GRAFT_OK);

    srand((unsigned)time(NULL));
    int delay_ms = 150 + rand() % 600;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(self_path, self_path, "--train-child", model_dir, ckpt, (char *)NULL);
        _exit(5);
    }
    usleep((useconds_t)delay_ms * 1000);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    printf("    child killed after %d ms (%s)\n", delay_ms,
           WIFSIGNALED(status) ? "mid-run" : "had already finished");
    c.checkpoint = ckpt;
    c.resume = 1;
    float *resumed = train_and_copy(&c, &train, NULL, GRAFT_OK);
    assert_memory_equal(straight, resumed, sizeof(float) * (size_t)param_count());
    free(straight);
    free(resumed);
    free(train.x);
    free(train.y);
}

static int setup(void **state)
{
    snprintf(model_dir, sizeof model_dir, "/tmp/graft-fit-XXXXXX");
    if (!mkdtemp(model_dir))
        return -1;
    write_conv_net(model_dir, 1);
    return 0;
}

static int teardown(void **state)
{
    tmw_remove(model_dir);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--train-child") == 0)
        return run_child(argv[2], argv[3]);
    if (!realpath(argv[0], self_path))
        snprintf(self_path, sizeof self_path, "%s", argv[0]);
    graft_set_threads(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conv_net_from_scratch_reaches_99_percent_train_accuracy),
        cmocka_unit_test(frozen_layers_keep_exact_bits_and_only_head_learns),
        cmocka_unit_test(same_seed_gives_bit_identical_weights),
        cmocka_unit_test(feature_cache_gives_same_head_and_reads_each_example_once),
        cmocka_unit_test(early_stopping_restores_best_weights),
        cmocka_unit_test(plateau_cuts_rate_and_layer_decay_scales_groups),
        cmocka_unit_test(stop_request_checkpoints_and_resume_matches),
        cmocka_unit_test(kill_9_then_resume_matches_uninterrupted_run),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
