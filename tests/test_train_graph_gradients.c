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
static double scalar_mode(graft__train_graph *tg, const float *x, const float *r, int training)
{
    graft__train_forward(tg, x, BATCH, training, 7, 0);
    const float *out = graft__train_output(tg);
    double s = 0.0;
    for (int i = 0; i < BATCH * CLASSES; i++)
        s += (double)out[i] * r[i];
    return s;
}

static double scalar(graft__train_graph *tg, const float *x, const float *r)
{
    return scalar_mode(tg, x, r, 0);
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

/* An inverted-residual-like net whose BatchNorms absorb the ReLU6 / ReLU after
 * them in training (the ReLUs' passes skipped), whose depthwise convolution
 * absorbs the one-sided padding before it (as MobileNetV2's stride-2 blocks
 * have), and one BatchNorm with no ReLU:
 *   x -> conv a -> a_bn -> ReLU6 -> pad (0,1),(0,1) -> dw 3x3 stride 2 valid
 *     -> dw_bn -> Activation relu -> conv p -> p_bn -> GAP -> Dense. */
enum { BH = 9, BW = 7, BC = 3 };

static void add_bn(json_t *layers, tmw_weights *w, const char *name, const char *input)
{
    json_array_append_new(layers, tmw_layer("BatchNormalization", name,
                                            json_pack("{s:i,s:f}", "axis", -1, "epsilon", 1e-3),
                                            TMW_INPUTS(input)));
    const char *parts[] = {"gamma", "beta", "moving_mean", "moving_variance"};
    /* gamma up to 4: normalised values reach past ReLU6's 6 */
    const float lo[] = {0.5f, -0.5f, -0.5f, 0.2f}, hi[] = {4.0f, 1.0f, 0.5f, 1.5f};
    for (int i = 0; i < 4; i++) {
        float v[BC];
        for (int c = 0; c < BC; c++)
            v[c] = lo[i] + (hi[i] - lo[i]) * 0.5f * (rnd() + 1.0f);
        char key[64];
        snprintf(key, sizeof key, "%s/%s", name, parts[i]);
        assert_true(tmw_add_weight(w, key, v, 1, (int64_t[]){BC}));
    }
}

static void add_pointwise(json_t *layers, tmw_weights *w, const char *name, const char *input,
                          int cin)
{
    float kernel[BC * BC];
    for (int i = 0; i < cin * BC; i++)
        kernel[i] = rnd();
    json_array_append_new(layers, tmw_layer("Conv2D", name,
        json_pack("{s:i,s:i,s:b}", "filters", BC, "kernel_size", 1, "use_bias", 0),
        TMW_INPUTS(input)));
    char key[64];
    snprintf(key, sizeof key, "%s/kernel", name);
    assert_true(tmw_add_weight(w, key, kernel, 4, (int64_t[]){1, 1, cin, BC}));
}

static void write_bn_model(const char *dir)
{
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){BH, BW, CIN}));
    add_pointwise(layers, &w, "a", "input_1", CIN);
    add_bn(layers, &w, "a_bn", "a");
    json_array_append_new(layers, tmw_layer("ReLU", "a_relu", json_pack("{s:f}", "max_value", 6.0),
                                            TMW_INPUTS("a_bn")));
    json_array_append_new(layers, tmw_layer("ZeroPadding2D", "pad",
        json_pack("{s:[[i,i],[i,i]]}", "padding", 0, 1, 0, 1), TMW_INPUTS("a_relu")));
    json_array_append_new(layers, tmw_layer("DepthwiseConv2D", "dw",
        json_pack("{s:[i,i],s:[i,i],s:s,s:b}", "kernel_size", 3, 3, "strides", 2, 2, "padding",
                  "valid", "use_bias", 0),
        TMW_INPUTS("pad")));
    float dk[9 * BC];
    for (int i = 0; i < 9 * BC; i++)
        dk[i] = rnd();
    assert_true(tmw_add_weight(&w, "dw/depthwise_kernel", dk, 4, (int64_t[]){3, 3, BC, 1}));
    add_bn(layers, &w, "dw_bn", "dw");
    json_array_append_new(layers, tmw_layer("Activation", "dw_relu",
                                            json_pack("{s:s}", "activation", "relu"),
                                            TMW_INPUTS("dw_bn")));
    add_pointwise(layers, &w, "p", "dw_relu", BC);
    add_bn(layers, &w, "p_bn", "p");
    json_array_append_new(layers, tmw_layer("GlobalAveragePooling2D", "gap", json_object(),
                                            TMW_INPUTS("p_bn")));
    json_array_append_new(layers, tmw_layer("Dense", "out",
        json_pack("{s:i,s:s}", "units", CLASSES, "activation", "linear"), TMW_INPUTS("gap")));
    float kernel[BC * CLASSES], bias[CLASSES];
    for (int i = 0; i < BC * CLASSES; i++)
        kernel[i] = rnd();
    for (int i = 0; i < CLASSES; i++)
        bias[i] = 0.1f * rnd();
    assert_true(tmw_add_weight(&w, "out/kernel", kernel, 2, (int64_t[]){BC, CLASSES}));
    assert_true(tmw_add_weight(&w, "out/bias", bias, 1, (int64_t[]){CLASSES}));
    assert_true(tmw_write(dir, tmw_functional("bn", layers, "input_1", "out"), 1, &w));
    tmw_weights_free(&w);
}

static int node_named(const graft_model *m, const char *name)
{
    for (int i = 0; i < m->n_nodes; i++)
        if (!strcmp(m->nodes[i].layer->name, name))
            return i;
    fail_msg("no node %s", name);
    return -1;
}

/* Batch statistics (training forward, which only moves the moving statistics)
 * or moving statistics (bn_inference). Moving statistics are state, not parameters:
 * only the learning weights are checked. With `from`, only layers from it up
 * learn: from "dw", the padding is where the training forward starts (the frozen
 * prefix computed apart), so it stays a node of its own. */
static void bn_graph_case(int bn_inference, const char *from)
{
    char dir[] = "/tmp/graft-graph-bn-XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_bn_model(dir);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(dir, &m), GRAFT_OK);
    if (from)
        assert_int_equal(graft_model_unfreeze_from(m, from), GRAFT_OK);
    enum { N = BATCH * BH * BW * CIN };
    float x[N], r[BATCH * CLASSES];
    for (int i = 0; i < N; i++)
        x[i] = 2.0f * rnd();
    for (int i = 0; i < BATCH * CLASSES; i++)
        r[i] = rnd();
    graft__train_graph tg;
    assert_int_equal(graft__train_graph_init(&tg, m, BATCH, bn_inference), GRAFT_OK);
    assert_int_equal(tg.absorbed_by[node_named(m, "a_relu")], from ? -1 : node_named(m, "a_bn"));
    assert_int_equal(tg.absorbed_by[node_named(m, "dw_relu")], node_named(m, "dw_bn"));
    assert_int_equal(tg.absorbs[node_named(m, "p_bn")], -1);
    assert_int_equal(tg.pad_before[node_named(m, "dw")], from ? -1 : node_named(m, "pad"));
    /* with batch statistics the convolutions take their BatchNorms' moments */
    assert_int_equal(tg.moments_for[node_named(m, "p")], bn_inference ? -1 : node_named(m, "p_bn"));
    assert_int_equal(tg.moments_for[node_named(m, "dw")],
                     bn_inference ? -1 : node_named(m, "dw_bn"));
    /* BatchNorms write their input's gradient over their output's */
    assert_ptr_equal(tg.d_act[node_named(m, "dw")], tg.d_act[node_named(m, "dw_relu")]);
    assert_ptr_equal(tg.d_act[node_named(m, "p")], tg.d_act[node_named(m, "p_bn")]);
    assert_int_equal(tg.moments_for[node_named(m, "a")],
                     bn_inference || from ? -1 : node_named(m, "a_bn"));
    /* and the convolutions map their BatchNorms' input gradients themselves (a:
     * weight gradient only, its input being the network's; dw: through the
     * padding it absorbs, or from "dw" weight gradient only) */
    assert_int_equal(tg.bn_grad_from[node_named(m, "p")], bn_inference ? -1 : node_named(m, "p_bn"));
    assert_int_equal(tg.bn_grad_from[node_named(m, "a")],
                     bn_inference || from ? -1 : node_named(m, "a_bn"));
    assert_int_equal(tg.bn_grad_from[node_named(m, "dw")],
                     bn_inference ? -1 : node_named(m, "dw_bn"));
    /* and the layer after a BatchNorm takes its backward sums (not dw: strided,
     * through a padding) */
    assert_int_equal(tg.sums_for[node_named(m, "dw")], -1);
    assert_int_equal(tg.sums_for[node_named(m, "p")], bn_inference ? -1 : node_named(m, "dw_bn"));
    assert_int_equal(tg.sums_for[node_named(m, "gap")], -1);
    /* and dw maps a_bn's output itself (through the padding), which is then
     * neither written nor kept */
    assert_int_equal(tg.maps_bn[node_named(m, "dw")],
                     bn_inference || from ? -1 : node_named(m, "a_bn"));
    if (!bn_inference && !from)
        assert_int_equal(tg.pinned[node_named(m, "a_relu")], 0);
    else if (!from)
        assert_int_equal(tg.pinned[node_named(m, "a_relu")], 1);
    /* and p maps dw_bn's, directly */
    assert_int_equal(tg.maps_bn[node_named(m, "p")], bn_inference ? -1 : node_named(m, "dw_bn"));
    assert_int_equal(tg.maps_bn[node_named(m, "gap")], -1);
    const int training = !bn_inference;
    for (int pass = 0; pass < 2; pass++) {
        memset(tg.grads, 0, sizeof(float) * (size_t)tg.n_grads);
        graft__train_forward(&tg, x, BATCH, 1, 7, 0);
        graft__train_backward(&tg, r, BATCH, 7, 0);
    }
    const double h = 1.0 / 512.0;
    double worst = 0.0, scale = 0.0;
    for (int64_t p = 0; p < m->n_params; p++)
        scale = fmax(scale, fabs(tg.grads[p]));
    int64_t kinks = 0, checked = 0;
    assert_true(m->n_params > 0);
    char *learns = calloc((size_t)m->n_params + 1, 1);
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__layer *l = m->nodes[i].layer;
        for (int k = 0; k < l->n_weights; k++)
            if (graft__weight_learns(l, k))
                memset(learns + l->weights[k].offset, 1,
                       (size_t)graft__shape_elems(&l->weights[k].shape));
    }
    for (int64_t p = 0; p < m->n_params; p++) {
        if (!learns[p])
            continue;
        checked++;
        const float keep = m->params[p];
        m->params[p] = keep + (float)h;
        double up = scalar_mode(&tg, x, r, training);
        m->params[p] = keep - (float)h;
        double down = scalar_mode(&tg, x, r, training);
        m->params[p] = keep;
        double mid = scalar_mode(&tg, x, r, training);
        double numeric = (up - down) / (2.0 * h);
        /* A ReLU kink inside [-h, h] bends the difference: seen as the two
         * one-sided slopes disagreeing; such parameters are left out. */
        if (fabs((up - mid) - (mid - down)) / h > 1e-2 * fmax(1.0, scale)) {
            kinks++;
            continue;
        }
        worst = fmax(worst, fabs(numeric - tg.grads[p]));
    }
    printf("    bn_inference %d from %s: %lld parameters (%lld at a kink): max |analytic - numeric| %.3g "
           "(largest gradient %.3g)\n", bn_inference, from ? from : "input", (long long)checked, (long long)kinks,
           worst, scale);
    free(learns);
    assert_true(scale > 0.05);
    assert_true(checked > (from ? 20 : 50) && kinks < checked / 10);
    assert_true(worst < 2e-3 * fmax(1.0, scale));
    graft__train_graph_free(&tg);
    graft_model_free(m);
    tmw_remove(dir);
}

static void absorbed_relu_gradients_match_finite_differences_batch_stats(void **state)
{
    bn_graph_case(0, NULL);
}

static void absorbed_relu_gradients_match_finite_differences_moving_stats(void **state)
{
    bn_graph_case(1, NULL);
}

static void padding_at_the_frozen_boundary_stays_a_node(void **state)
{
    bn_graph_case(0, "dw");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(residual_graph_gradients_match_finite_differences),
        cmocka_unit_test(absorbed_relu_gradients_match_finite_differences_batch_stats),
        cmocka_unit_test(absorbed_relu_gradients_match_finite_differences_moving_stats),
        cmocka_unit_test(padding_at_the_frozen_boundary_stays_a_node),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
