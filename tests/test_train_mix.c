/* Mixup and cutmix inside graft_train, replayed naively: the test rebuilds each
 * batch's mixing from the documented rule (the batch's seed from seed, epoch and
 * batch number; a coin between cutmix and mixup when both are on; the pairing
 * and lambda from the exposed draws), mixes in double, and runs plain SGD on a
 * softmax head by hand. Per-step losses, the epoch's dominant-label accuracy and
 * the final weights must match graft's.
 *   - input space: Flatten -> Dense on the images (nothing cached);
 *   - feature space: a frozen 1x1 convolution, cached, then GAP -> Dense, with
 *     cutmix pasting boxes of the cached (H, W, C) map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/random.h"
#include "data/augment.h"
#include "graft.h"
#include "model/model.h"
#include "tfjs_model_writer.h"

enum { CLASSES = 3, N = 22, BATCH = 8, EPOCHS = 3, MAX_STEPS = 16 };
enum { H = 4, W = 4, C = 2, DIM = H * W * C }; /* input space model */
enum { FH = 6, FW = 6, FC_IN = 2, FC = 3 };     /* feature space model */
static const uint64_t SEED = 5;
static const double LR = 0.5, SMOOTHING = 0.1;
static const float CLASS_WEIGHTS[CLASSES] = {1.0f, 2.0f, 0.5f};

static char root[64];

static uint64_t lcg = 12345;
static float rnd(void)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

/* ---- the source, recording what training asked for --------------------------- */

typedef struct source {
    int64_t sample;
    float *x;
    int32_t y[N];
    int fills;
    int64_t order[EPOCHS * N];  /* indices in the order asked for, while < EPOCHS * N */
    int64_t asked;
    double step_loss[EPOCHS * MAX_STEPS];
    int steps;
    double epoch_accuracy[EPOCHS], epoch_loss[EPOCHS];
} source;

static graft_status fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x,
                         int32_t *labels)
{
    source *s = user;
    s->fills++;
    for (int64_t i = 0; i < n; i++) {
        if (s->asked < EPOCHS * N)
            s->order[s->asked++] = idx[i];
        memcpy(x + i * s->sample, s->x + idx[i] * s->sample, sizeof(float) * (size_t)s->sample);
        labels[i] = s->y[idx[i]];
    }
    return GRAFT_OK;
}

static void on_step(int epoch, int64_t step, int64_t steps, double loss, void *user)
{
    source *s = user;
    s->step_loss[s->steps++] = loss;
}

static int on_epoch(const graft_epoch_metrics *e, void *user)
{
    source *s = user;
    s->epoch_accuracy[e->epoch - 1] = e->train_accuracy;
    s->epoch_loss[e->epoch - 1] = e->train_loss;
    return 0;
}

static void source_make(source *s, int64_t sample)
{
    memset(s, 0, sizeof *s);
    s->sample = sample;
    s->x = malloc(sizeof(float) * (size_t)(N * sample));
    for (int64_t i = 0; i < N * sample; i++)
        s->x[i] = rnd();
    for (int i = 0; i < N; i++)
        s->y[i] = i % CLASSES;
}

/* ---- the rules being checked, written again ------------------------------------ */

/* graft_train's shuffle: Fisher-Yates from the counter generator. */
static void shuffle(int64_t *order, int64_t n, uint64_t seed, int epoch)
{
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    uint64_t s = graft__seed_derive(seed, (uint64_t)epoch);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(graft__mix64(s + (uint64_t)i) % (uint64_t)(i + 1));
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

typedef struct batch_mix {
    int cutmix;
    int64_t partner[BATCH];
    double lambda;
    graft__cutmix_box box;
} batch_mix;

/* Batch k of an epoch: seed = derive(derive(seed ^ 0x3a1c5eed, epoch), k); with
 * both on, cutmix when uniform(seed, 0) < 1/2; the draw from derive(seed, 1). */
static batch_mix draw_batch(int epoch, int64_t k, int64_t n, int64_t h, int64_t w, double mixup,
                            double cutmix)
{
    batch_mix b;
    memset(&b, 0, sizeof b);
    uint64_t seed = graft__seed_derive(graft__seed_derive(SEED ^ 0x3a1c5eedull, (uint64_t)epoch),
                                       (uint64_t)k);
    b.cutmix = cutmix > 0 && (mixup <= 0 || graft__uniform(seed, 0) < 0.5f);
    if (b.cutmix) {
        assert_int_equal(graft__cutmix_draw(n, h, w, cutmix, graft__seed_derive(seed, 1),
                                            b.partner, &b.box), GRAFT_OK);
        b.lambda = b.box.lambda;
    } else {
        assert_int_equal(graft__mixup_draw(n, mixup, graft__seed_derive(seed, 1), b.partner,
                                           &b.lambda), GRAFT_OK);
    }
    return b;
}

/* ---- a softmax head trained by hand --------------------------------------------- */

typedef struct head {
    int64_t in;
    double kernel[DIM][CLASSES]; /* (in, classes), in <= DIM */
    double bias[CLASSES];
} head;

/* One SGD step on inputs feats (n, in) with labels a, b and weight lambda;
 * returns the batch loss and adds the dominant-label hits to *correct. */
static double head_step(head *hd, const double *feats, const int32_t *a, const int32_t *b,
                        double lambda, int64_t n, int *correct)
{
    double g_kernel[DIM][CLASSES] = {{0}}, g_bias[CLASSES] = {0}, total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double z[CLASSES], p[CLASSES], max = -INFINITY, sum = 0.0;
        for (int j = 0; j < CLASSES; j++) {
            z[j] = hd->bias[j];
            for (int64_t d = 0; d < hd->in; d++)
                z[j] += feats[i * hd->in + d] * hd->kernel[d][j];
            max = fmax(max, z[j]);
        }
        for (int j = 0; j < CLASSES; j++)
            sum += exp(z[j] - max);
        int top = 0;
        for (int j = 0; j < CLASSES; j++) {
            p[j] = exp(z[j] - max) / sum;
            top = z[j] > z[top] ? j : top;
        }
        *correct += top == (lambda >= 0.5 ? a[i] : b[i]);
        /* two smoothed one-hot targets, each with its weight and class weight */
        const int32_t label[2] = {a[i], b[i]};
        const double weight[2] = {lambda * CLASS_WEIGHTS[a[i]],
                                  (1 - lambda) * CLASS_WEIGHTS[b[i]]};
        for (int t = 0; t < 2; t++)
            for (int j = 0; j < CLASSES; j++) {
                double target = SMOOTHING / CLASSES + (j == label[t] ? 1 - SMOOTHING : 0);
                total -= weight[t] * target * log(p[j]);
                double g = weight[t] * (p[j] - target) / (double)n;
                g_bias[j] += g;
                for (int64_t d = 0; d < hd->in; d++)
                    g_kernel[d][j] += feats[i * hd->in + d] * g;
            }
    }
    for (int j = 0; j < CLASSES; j++) {
        hd->bias[j] -= LR * g_bias[j];
        for (int64_t d = 0; d < hd->in; d++)
            hd->kernel[d][j] -= LR * g_kernel[d][j];
    }
    return total / (double)n;
}

static void assert_close(double got, double want, double tol, const char *what)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("%s: got %.9g, want %.9g", what, got, want);
}

static void compare_head(graft_model *m, const head *hd)
{
    graft__layer *layer = graft__graph_find_layer(m, "head");
    const float *kernel = layer->weights[0].data, *bias = layer->weights[1].data;
    for (int64_t d = 0; d < hd->in; d++)
        for (int j = 0; j < CLASSES; j++)
            assert_close(kernel[d * CLASSES + j], hd->kernel[d][j],
                         2e-5 * (1 + fabs(hd->kernel[d][j])), "kernel");
    for (int j = 0; j < CLASSES; j++)
        assert_close(bias[j], hd->bias[j], 2e-5 * (1 + fabs(hd->bias[j])), "bias");
}

static graft_train_config config(source *s, double mixup, double cutmix)
{
    graft_train_config c;
    graft_train_config_defaults(&c);
    c.epochs = EPOCHS;
    c.batch_size = BATCH;
    c.seed = SEED;
    c.optimizer = GRAFT_OPTIMIZER_SGD;
    c.momentum = 0;
    c.learning_rate = LR;
    c.label_smoothing = SMOOTHING;
    c.class_weights = CLASS_WEIGHTS;
    c.mixup = mixup;
    c.cutmix = cutmix;
    c.on_step = on_step;
    c.on_epoch = on_epoch;
    c.user = s;
    return c;
}

/* Each epoch's step losses and accuracy against the replay's. */
static void compare_epoch(const source *s, int epoch, const double *losses, int steps,
                          int correct)
{
    for (int k = 0; k < steps; k++)
        assert_close(s->step_loss[epoch * steps + k], losses[k], 1e-5 * (1 + losses[k]),
                     "step loss");
    assert_close(s->epoch_accuracy[epoch], (double)correct / N, 1e-12, "train accuracy");
}

static float *random_weights(int64_t count, float scale)
{
    float *w = malloc(sizeof(float) * (size_t)count);
    for (int64_t i = 0; i < count; i++)
        w[i] = scale * rnd();
    return w;
}

/* ---- input space ----------------------------------------------------------------------- */

static void write_flat_model(const char *dir, head *hd)
{
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){H, W, C}));
    json_array_append_new(layers, tmw_layer("Flatten", "flat", json_object(),
                                            TMW_INPUTS("input_1")));
    json_array_append_new(layers, tmw_layer("Dense", "head",
        json_pack("{s:i,s:s}", "units", CLASSES, "activation", "softmax"), TMW_INPUTS("flat")));
    float *kernel = random_weights(DIM * CLASSES, 0.3f), *bias = random_weights(CLASSES, 0.1f);
    hd->in = DIM;
    for (int d = 0; d < DIM; d++)
        for (int j = 0; j < CLASSES; j++)
            hd->kernel[d][j] = kernel[d * CLASSES + j];
    for (int j = 0; j < CLASSES; j++)
        hd->bias[j] = bias[j];
    assert_true(tmw_add_weight(&w, "head/kernel", kernel, 2, (int64_t[]){DIM, CLASSES}));
    assert_true(tmw_add_weight(&w, "head/bias", bias, 1, (int64_t[]){CLASSES}));
    assert_true(tmw_write(dir, tmw_functional("flat", layers, "input_1", "head"), 1, &w));
    tmw_weights_free(&w);
    free(kernel);
    free(bias);
}

static void mixup_on_images_matches_naive_replay(void **state)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/flat", root);
    mkdir(dir, 0755);
    head hd;
    write_flat_model(dir, &hd);
    source s;
    source_make(&s, DIM);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(dir, &m), GRAFT_OK);
    graft_train_config c = config(&s, 0.4, 0);
    if (graft_train(m, &(graft_batch_source){N, fill, &s}, NULL, &c, NULL) != GRAFT_OK)
        fail_msg("%s", graft_last_error());
    const int steps = (N + BATCH - 1) / BATCH;
    assert_int_equal(s.steps, EPOCHS * steps);
    for (int e = 0; e < EPOCHS; e++) {
        int64_t order[N];
        shuffle(order, N, SEED, e + 1);
        /* the order training asked for is the shuffle written again above */
        assert_memory_equal(order, s.order + e * N, sizeof order);
        double losses[MAX_STEPS];
        int correct = 0;
        for (int64_t k = 0; k < steps; k++) {
            const int64_t *idx = order + k * BATCH;
            const int64_t n = N - k * BATCH < BATCH ? N - k * BATCH : BATCH;
            batch_mix b = draw_batch(e + 1, k, n, H, W, 0.4, 0);
            assert_false(b.cutmix);
            double feats[BATCH * DIM];
            int32_t a[BATCH], partner[BATCH];
            for (int64_t i = 0; i < n; i++) {
                a[i] = s.y[idx[i]];
                partner[i] = s.y[idx[b.partner[i]]];
                for (int d = 0; d < DIM; d++)
                    feats[i * DIM + d] = b.lambda * s.x[idx[i] * DIM + d] +
                                         (1 - b.lambda) * s.x[idx[b.partner[i]] * DIM + d];
            }
            losses[k] = head_step(&hd, feats, a, partner, b.lambda, n, &correct);
        }
        compare_epoch(&s, e, losses, steps, correct);
    }
    compare_head(m, &hd);
    graft_model_free(m);
    free(s.x);
}

/* ---- feature space ------------------------------------------------------------------------ */

static float proj_kernel[FC_IN * FC], proj_bias[FC];

static void write_conv_model(const char *dir, head *hd)
{
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){FH, FW, FC_IN}));
    json_array_append_new(layers, tmw_layer("Conv2D", "proj",
        json_pack("{s:i,s:[i,i]}", "filters", FC, "kernel_size", 1, 1), TMW_INPUTS("input_1")));
    json_array_append_new(layers, tmw_layer("GlobalAveragePooling2D", "gap", json_object(),
                                            TMW_INPUTS("proj")));
    json_array_append_new(layers, tmw_layer("Dense", "head",
        json_pack("{s:i,s:s}", "units", CLASSES, "activation", "softmax"), TMW_INPUTS("gap")));
    float *k = random_weights(FC_IN * FC, 1.0f), *b = random_weights(FC, 0.5f);
    memcpy(proj_kernel, k, sizeof proj_kernel);
    memcpy(proj_bias, b, sizeof proj_bias);
    assert_true(tmw_add_weight(&w, "proj/kernel", k, 4, (int64_t[]){1, 1, FC_IN, FC}));
    assert_true(tmw_add_weight(&w, "proj/bias", b, 1, (int64_t[]){FC}));
    free(k);
    free(b);
    float *kernel = random_weights(FC * CLASSES, 0.5f), *bias = random_weights(CLASSES, 0.1f);
    hd->in = FC;
    for (int d = 0; d < FC; d++)
        for (int j = 0; j < CLASSES; j++)
            hd->kernel[d][j] = kernel[d * CLASSES + j];
    for (int j = 0; j < CLASSES; j++)
        hd->bias[j] = bias[j];
    assert_true(tmw_add_weight(&w, "head/kernel", kernel, 2, (int64_t[]){FC, CLASSES}));
    assert_true(tmw_add_weight(&w, "head/bias", bias, 1, (int64_t[]){CLASSES}));
    assert_true(tmw_write(dir, tmw_functional("conv", layers, "input_1", "head"), 1, &w));
    tmw_weights_free(&w);
    free(kernel);
    free(bias);
}

/* The frozen 1x1 convolution's output for image i, (FH, FW, FC). */
static void project(const source *s, int64_t i, double *out)
{
    for (int p = 0; p < FH * FW; p++)
        for (int o = 0; o < FC; o++) {
            double v = proj_bias[o];
            for (int ci = 0; ci < FC_IN; ci++)
                v += (double)s->x[i * FH * FW * FC_IN + p * FC_IN + ci] * proj_kernel[ci * FC + o];
            out[p * FC + o] = v;
        }
}

static void cutmix_and_mixup_on_cached_feature_maps_match_naive_replay(void **state)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/conv", root);
    mkdir(dir, 0755);
    head hd;
    write_conv_model(dir, &hd);
    source s;
    source_make(&s, FH * FW * FC_IN);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(dir, &m), GRAFT_OK);
    assert_int_equal(graft_model_unfreeze_from(m, "gap"), GRAFT_OK);
    graft_train_config c = config(&s, 0.4, 1.0);
    c.cache_views = 1;
    if (graft_train(m, &(graft_batch_source){N, fill, &s}, NULL, &c, NULL) != GRAFT_OK)
        fail_msg("%s", graft_last_error());
    /* the cache was filled once; the epochs read it */
    assert_int_equal(s.fills, (N + BATCH - 1) / BATCH);
    const int steps = (N + BATCH - 1) / BATCH;
    int kinds[2] = {0, 0};
    for (int e = 0; e < EPOCHS; e++) {
        int64_t order[N];
        shuffle(order, N, SEED, e + 1);
        double losses[MAX_STEPS];
        int correct = 0;
        for (int64_t k = 0; k < steps; k++) {
            const int64_t *idx = order + k * BATCH;
            const int64_t n = N - k * BATCH < BATCH ? N - k * BATCH : BATCH;
            batch_mix b = draw_batch(e + 1, k, n, FH, FW, 0.4, 1.0);
            kinds[b.cutmix]++;
            double feats[BATCH * FC], own[FH * FW * FC], other[FH * FW * FC];
            int32_t a[BATCH], partner[BATCH];
            for (int64_t i = 0; i < n; i++) {
                a[i] = s.y[idx[i]];
                partner[i] = s.y[idx[b.partner[i]]];
                project(&s, idx[i], own);
                project(&s, idx[b.partner[i]], other);
                /* mix the (FH, FW, FC) maps, then average-pool them */
                for (int o = 0; o < FC; o++)
                    feats[i * FC + o] = 0;
                for (int y = 0; y < FH; y++)
                    for (int x = 0; x < FW; x++)
                        for (int o = 0; o < FC; o++) {
                            const int p = (y * FW + x) * FC + o;
                            double v;
                            if (b.cutmix)
                                v = x >= b.box.x0 && x < b.box.x1 && y >= b.box.y0 &&
                                            y < b.box.y1 ? other[p] : own[p];
                            else
                                v = b.lambda * own[p] + (1 - b.lambda) * other[p];
                            feats[i * FC + o] += v / (FH * FW);
                        }
            }
            losses[k] = head_step(&hd, feats, a, partner, b.lambda, n, &correct);
        }
        compare_epoch(&s, e, losses, steps, correct);
    }
    printf("    batches: %d cutmix, %d mixup\n", kinds[1], kinds[0]);
    assert_true(kinds[0] > 0 && kinds[1] > 0);
    compare_head(m, &hd);
    graft_model_free(m);
    free(s.x);
}

static int setup(void **state)
{
    snprintf(root, sizeof root, "/tmp/graft-mix-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mixup_on_images_matches_naive_replay),
        cmocka_unit_test(cutmix_and_mixup_on_cached_feature_maps_match_naive_replay),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
