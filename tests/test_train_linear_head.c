/* The recipe's linear-probe phase 1, checked from outside: a frozen 1x1
 * convolution + ReLU base on IDX images the test writes, the head fitted by
 * graft_recipe_run with linear_probe = 1. The test recomputes the pooled features
 * naively in double (convolution, ReLU, spatial mean), asks the solver for the
 * optimum at the L2 the recipe reports, and compares the Dense layer's kernel and
 * bias, the reported training loss and accuracy, and graft_evaluate's accuracy.
 * The L2 must come from the grid and, on features whose classes separate only
 * with a small penalty, must not be the largest one. The same with the head
 * pooled to a 3x3 grid and flattened; both heads survive a save and reload. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "graft.h"
#include "model/model.h"
#include "test_dataset_util.h"
#include "tfjs_model_writer.h"
#include "train/linear_head.h"
#include "train/probe.h"

enum { N = 60, CLASSES = 3, SIDE = 6, FILTERS = 5 };

static float conv_w[3 * FILTERS], conv_b[FILTERS];

static void write_base(const char *dir)
{
    assert_int_equal(mkdir(dir, 0755), 0);
    for (int i = 0; i < 3 * FILTERS; i++)
        conv_w[i] = (float)(((i * 37) % 11) - 5) / 7.0f;
    for (int f = 0; f < FILTERS; f++)
        conv_b[f] = 0.05f * (float)f - 0.1f;
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){SIDE, SIDE, 3}));
    json_array_append_new(layers, tmw_layer("Conv2D", "feat",
        json_pack("{s:i,s:i,s:s}", "filters", FILTERS, "kernel_size", 1, "activation", "relu"),
        TMW_INPUTS("input_1")));
    assert_true(tmw_add_weight(&w, "feat/kernel", conv_w, 4, (int64_t[]){1, 1, 3, FILTERS}));
    assert_true(tmw_add_weight(&w, "feat/bias", conv_b, 1, (int64_t[]){FILTERS}));
    assert_true(tmw_write(dir, tmw_functional("base", layers, "input_1", "feat"), 1, &w));
    tmw_weights_free(&w);
}

/* Images whose brightness depends on the class plus a per-image pattern, so the
 * classes overlap a little in feature space. */
static void write_images(const char *images, const char *labels_path)
{
    unsigned char px[N * SIDE * SIDE], labels[N];
    for (int i = 0; i < N; i++) {
        labels[i] = (unsigned char)(i % CLASSES);
        for (int p = 0; p < SIDE * SIDE; p++)
            px[i * SIDE * SIDE + p] =
                (unsigned char)(60 * labels[i] + (pixel_value(i, p / SIDE, p % SIDE) % 90));
    }
    const uint32_t dims[3] = {N, SIDE, SIDE}, ldims[1] = {N};
    write_idx(images, 3, dims, px, sizeof px);
    write_idx(labels_path, 1, ldims, labels, sizeof labels);
}

/* ReLU(1x1 conv) of the dataset's preprocessed pixels averaged over grid x grid
 * cells of (SIDE / grid) pixels (grid 1: global), flattened cell by cell with the
 * channels innermost, in double. */
static int64_t naive_features(graft_dataset *ds, int grid, float *features, int32_t *labels)
{
    static float x[N * SIDE * SIDE * 3];
    int64_t idx[N];
    for (int i = 0; i < N; i++)
        idx[i] = i;
    assert_int_equal(graft_dataset_load(ds, idx, N, NULL, 0, x, labels), GRAFT_OK);
    const int cell = SIDE / grid, d = grid * grid * FILTERS;
    for (int i = 0; i < N; i++)
        for (int gy = 0; gy < grid; gy++)
            for (int gx = 0; gx < grid; gx++)
                for (int f = 0; f < FILTERS; f++) {
                    double sum = 0.0;
                    for (int py = gy * cell; py < (gy + 1) * cell; py++)
                        for (int px = gx * cell; px < (gx + 1) * cell; px++) {
                            const int p = py * SIDE + px;
                            double v = conv_b[f];
                            for (int c = 0; c < 3; c++)
                                v += (double)x[(i * SIDE * SIDE + p) * 3 + c] * conv_w[c * FILTERS + f];
                            sum += v > 0 ? v : 0;
                        }
                    features[i * d + (gy * grid + gx) * FILTERS + f] = (float)(sum / (cell * cell));
                }
    return d;
}

static void check_linear_head(int grid)
{
    write_base(at("base"));
    write_images(at("x-images-idx3-ubyte"), at("x-labels-idx1-ubyte"));
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = opts.width = SIDE;
    opts.preprocess = GRAFT_PREPROCESS_UNIT;
    graft_dataset *ds = NULL;
    graft_model *m = NULL;
    assert_int_equal(graft_dataset_open(at("x-images-idx3-ubyte"), &opts, &ds), GRAFT_OK);
    assert_int_equal(graft_model_load(at("base"), &m), GRAFT_OK);

    graft_recipe r;
    graft_recipe_defaults(&r);
    r.cut = "feat";
    r.linear_probe = 1;
    r.fine_tune = 0;
    r.seed = 4;
    r.head_grid = grid;
    graft_recipe_result res;
    if (graft_recipe_run(m, ds, NULL, &r, &res) != GRAFT_OK)
        fail_msg("%s", graft_last_error());

    static const double l2_grid[] = {1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0};
    int on_grid = 0;
    for (size_t g = 0; g < sizeof l2_grid / sizeof *l2_grid; g++)
        on_grid |= res.head_l2 == l2_grid[g];
    assert_true(on_grid);
    assert_true(res.head_l2 < 10.0);
    assert_int_equal(res.phase1.epochs_run, 1);
    assert_false(res.phase2_run);

    static float features[N * 9 * FILTERS], w[9 * FILTERS * CLASSES];
    float b[CLASSES];
    int32_t labels[N];
    const int64_t d = naive_features(ds, grid, features, labels);
    assert_int_equal(graft__linear_probe_fit(features, labels, N, d, CLASSES, res.head_l2, 1000, w,
                                             b, NULL), GRAFT_OK);
    graft__layer *dense = graft__graph_find_layer(m, "classifier");
    assert_non_null(dense);
    const float *kernel = dense->weights[0].data, *bias = dense->weights[1].data;
    double scale = 0.0;
    assert_int_equal(dense->weights[0].shape.dim[0], d);
    for (int i = 0; i < d * CLASSES; i++)
        scale = fmax(scale, fabs(w[i]));
    for (int i = 0; i < d * CLASSES; i++)
        if (fabs(kernel[i] - w[i]) > 1e-3 * scale)
            fail_msg("kernel[%d] = %g, solver on naive features %g", i, kernel[i], w[i]);
    for (int k = 0; k < CLASSES; k++)
        if (fabs(bias[k] - b[k]) > 1e-3 * (1.0 + fabs(b[k])))
            fail_msg("bias[%d] = %g, solver on naive features %g", k, bias[k], b[k]);

    /* The reported metrics are those of the naive weights. */
    int right = 0;
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        double z[CLASSES], top = -INFINITY, sum = 0.0;
        int best = 0;
        for (int k = 0; k < CLASSES; k++) {
            z[k] = b[k];
            for (int f = 0; f < d; f++)
                z[k] += (double)features[i * d + f] * w[f * CLASSES + k];
            if (z[k] > top) {
                top = z[k];
                best = k;
            }
        }
        for (int k = 0; k < CLASSES; k++)
            sum += exp(z[k] - top);
        loss += top + log(sum) - z[labels[i]];
        right += best == labels[i];
    }
    assert_true(fabs(res.phase1.last.train_loss - loss / N) < 1e-3 * (1.0 + loss / N));
    assert_true(fabs(res.phase1.last.train_accuracy - (double)right / N) < 1e-12);
    assert_true(isnan(res.phase1.last.val_loss));
    graft_evaluation ev;
    assert_int_equal(graft_evaluate(m, ds, 16, 0, &ev), GRAFT_OK);
    assert_true(fabs(ev.accuracy - (double)right / N) < 1e-12);
    graft_evaluation_free(&ev);
    /* Saved and loaded again, the head predicts the same. */
    mkdir(at("saved%d", grid), 0755);
    assert_int_equal(graft_model_save(m, at("saved%d", grid)), GRAFT_OK);
    graft_model *again = NULL;
    assert_int_equal(graft_model_load(at("saved%d", grid), &again), GRAFT_OK);
    assert_int_equal(graft_evaluate(again, ds, 16, 0, &ev), GRAFT_OK);
    assert_true(fabs(ev.accuracy - (double)right / N) < 1e-12);
    graft_evaluation_free(&ev);
    graft_model_free(again);
    graft_model_free(m);
    graft_dataset_free(ds);
}

static void linear_head_is_the_solver_optimum_on_pooled_features(void **state)
{
    check_linear_head(1);
}

/* The 3x3 grid head: AveragePooling2D over 2x2 cells of the 6x6 map, Flatten. */
static void grid_head_is_the_solver_optimum_on_grid_features(void **state)
{
    check_linear_head(3);
}

/* A head the solver cannot take: no global pooling before the Dense layer. */
static void linear_head_refuses_a_head_without_pooling(void **state)
{
    write_base(at("base"));
    write_images(at("x-images-idx3-ubyte"), at("x-labels-idx1-ubyte"));
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = opts.width = SIDE;
    graft_dataset *ds = NULL;
    graft_model *m = NULL;
    assert_int_equal(graft_dataset_open(at("x-images-idx3-ubyte"), &opts, &ds), GRAFT_OK);
    assert_int_equal(graft_model_load(at("base"), &m), GRAFT_OK);
    graft_train_config c;
    graft_train_config_defaults(&c);
    graft_train_result res;
    /* The base alone ends in a convolution, not pooling -> Dense. */
    graft_status rc = graft__fit_linear_head(m, ds, NULL, 0, &c, &res, NULL);
    assert_int_equal(rc, GRAFT_E_UNSUPPORTED);
    assert_non_null(strstr(graft_last_error(), "Dense"));
    graft_model_free(m);
    graft_dataset_free(ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(linear_head_is_the_solver_optimum_on_pooled_features,
                                        fresh_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(grid_head_is_the_solver_optimum_on_grid_features,
                                        fresh_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(linear_head_refuses_a_head_without_pooling,
                                        fresh_scratch, remove_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
