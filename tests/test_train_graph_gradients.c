/* Whole-graph gradients of the training pass against central finite differences
 * of the inference forward, on a small residual network where one activation
 * feeds two later nodes at different distances (so its gradient accumulates from
 * two writers) and activation-gradient buffers are reused along the backward pass:
 *   x -> conv a (tanh) -> conv b (tanh) -> add1 = a + b -> conv c (tanh)
 *     -> add2 = add1 + c + a -> GAP -> Dense (linear).
 * The scalar is L = sum(output * r) for fixed random r, so d(L)/d(output) = r. */
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
#include <unistd.h>

#include "graft.h"
#include "model/model.h"
#include "model/train_graph.h"
#include "tfjs_model_writer.h"

enum { H = 4, W = 3, CIN = 2, CH = 3, CLASSES = 2, BATCH = 3 };

static uint64_t lcg = 99;
static float rnd(void)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(lcg >> 40) / 16777216.0) * 2.0f - 1.0f;
}

static void add_conv(json_t *layers, tmw_weights *w, const char *name, const char *input, int cin)
{
    float kernel[CIN > CH ? CIN * CH : CH * CH], bias[CH];
    for (int i = 0; i < cin * CH; i++)
        kernel[i] = 0.6f * rnd();
    for (int i = 0; i < CH; i++)
        bias[i] = 0.2f * rnd();
    json_array_append_new(layers, tmw_layer("Conv2D", name,
        json_pack("{s:i,s:i,s:s}", "filters", CH, "kernel_size", 1, "activation", "tanh"),
        TMW_INPUTS(input)));
    char key[64];
    snprintf(key, sizeof key, "%s/kernel", name);
    assert_true(tmw_add_weight(w, key, kernel, 4, (int64_t[]){1, 1, cin, CH}));
    snprintf(key, sizeof key, "%s/bias", name);
    assert_true(tmw_add_weight(w, key, bias, 1, (int64_t[]){CH}));
}

static void write_model(const char *dir)
{
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){H, W, CIN}));
    add_conv(layers, &w, "a", "input_1", CIN);
    add_conv(layers, &w, "b", "a", CH);
    json_array_append_new(layers, tmw_layer("Add", "add1", json_object(), TMW_INPUTS("a", "b")));
    add_conv(layers, &w, "c", "add1", CH);
    json_array_append_new(layers, tmw_layer("Add", "add2", json_object(),
                                            TMW_INPUTS("add1", "c", "a")));
    json_array_append_new(layers, tmw_layer("GlobalAveragePooling2D", "gap", json_object(),
                                            TMW_INPUTS("add2")));
    json_array_append_new(layers, tmw_layer("Dense", "out",
        json_pack("{s:i,s:s}", "units", CLASSES, "activation", "linear"), TMW_INPUTS("gap")));
    float kernel[CH * CLASSES], bias[CLASSES];
    for (int i = 0; i < CH * CLASSES; i++)
        kernel[i] = rnd();
    for (int i = 0; i < CLASSES; i++)
        bias[i] = 0.1f * rnd();
    assert_true(tmw_add_weight(&w, "out/kernel", kernel, 2, (int64_t[]){CH, CLASSES}));
    assert_true(tmw_add_weight(&w, "out/bias", bias, 1, (int64_t[]){CLASSES}));
    assert_true(tmw_write(dir, tmw_functional("res", layers, "input_1", "out"), 1, &w));
    tmw_weights_free(&w);
}

/* Through the training graph's own forward: the inference plan may keep packed
 * copies of the weights made when it was planned. */
static double scalar(graft__train_graph *tg, const float *x, const float *r)
{
    graft__train_forward(tg, x, BATCH, 0, 7, 0);
    const float *out = graft__train_output(tg);
    double s = 0.0;
    for (int i = 0; i < BATCH * CLASSES; i++)
        s += (double)out[i] * r[i];
    return s;
}

static void residual_graph_gradients_match_finite_differences(void **state)
{
    char dir[] = "/tmp/graft-graph-grad-XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_model(dir);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(dir, &m), GRAFT_OK);
    float x[BATCH * H * W * CIN], r[BATCH * CLASSES];
    for (int i = 0; i < BATCH * H * W * CIN; i++)
        x[i] = rnd();
    for (int i = 0; i < BATCH * CLASSES; i++)
        r[i] = rnd();

    graft__train_graph tg;
    assert_int_equal(graft__train_graph_init(&tg, m, BATCH, 1), GRAFT_OK);
    /* Fewer gradient buffers than nodes that need one: slots are reused. */
    int needing = 0;
    for (int i = 0; i < m->n_nodes; i++)
        needing += tg.d_act[i] != NULL;
    printf("    %d activation gradients in %d buffers\n", needing, tg.n_grad_slots);
    assert_true(tg.n_grad_slots < needing);
    /* Two passes: the second starts from buffers the first left dirty. */
    for (int pass = 0; pass < 2; pass++) {
        memset(tg.grads, 0, sizeof(float) * (size_t)tg.n_grads);
        graft__train_forward(&tg, x, BATCH, 1, 7, 0);
        graft__train_backward(&tg, r, BATCH, 7, 0);
    }

    const double h = 1.0 / 256.0;
    double worst = 0.0, scale = 0.0;
    for (int64_t p = 0; p < m->n_params; p++)
        scale = fmax(scale, fabs(tg.grads[p]));
    for (int64_t p = 0; p < m->n_params; p++) {
        const float keep = m->params[p];
        m->params[p] = keep + (float)h;
        double up = scalar(&tg, x, r);
        m->params[p] = keep - (float)h;
        double down = scalar(&tg, x, r);
        m->params[p] = keep;
        double numeric = (up - down) / (2.0 * h);
        worst = fmax(worst, fabs(numeric - tg.grads[p]));
    }
    printf("    %lld parameters: max |analytic - numeric| %.3g (largest gradient %.3g)\n",
           (long long)m->n_params, worst, scale);
    assert_true(scale > 0.05);
    assert_true(worst < 2e-3 * fmax(1.0, scale));
    graft__train_graph_free(&tg);
    graft_model_free(m);
    tmw_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(residual_graph_gradients_match_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
