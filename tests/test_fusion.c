/* Inference fusion (BatchNorm folded into the convolution before it, ReLU as its
 * epilogue, elementwise layers in place, inverted-residual blocks run band by
 * band) changes nothing but rounding: the fused plan and the plain one (every
 * layer on its own, through its own forward) agree, and asking for a layer
 * that fusion overwrites (a convolution's raw output) still returns that
 * layer's value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "graft.h"
#include "model/model.h"
#include "model/train_graph.h"
#include "tfjs_model_writer.h"

enum { BATCH = 3, SIDE = 96 };

static void fused_and_plain_plans_agree(void **state)
{
    char path[512];
    snprintf(path, sizeof path, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(path, &m), GRAFT_OK);
    assert_int_equal(graft_model_cut(m, "out_relu"), GRAFT_OK);
    assert_int_equal(graft_model_set_input_size(m, SIDE, SIDE), GRAFT_OK);
    int64_t n = (int64_t)BATCH * SIDE * SIDE * 3, out = BATCH * graft_model_output_size(m);
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        x[i] = sinf((float)i * 0.37f);
    float *fused = malloc(sizeof(float) * (size_t)out), *plain = malloc(sizeof(float) * (size_t)out);
    assert_int_equal(graft_model_forward(m, x, BATCH, fused), GRAFT_OK);
    /* Conv1 is the raw convolution that the fused plan folds bn_Conv1 into. */
    graft_layer_info info;
    graft_model_layer_info(m, graft_model_find_layer(m, "Conv1"), &info);
    int64_t conv_n = BATCH * info.shape[0] * info.shape[1] * info.shape[2];
    float *conv = malloc(sizeof(float) * (size_t)conv_n);
    const char *names[1] = {"Conv1"};
    float *outs[1] = {conv};
    assert_int_equal(graft_model_forward_layers(m, x, BATCH, 1, names, outs, plain), GRAFT_OK);
    double max_diff = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < out; i++) {
        max_diff = fmax(max_diff, fabs(fused[i] - plain[i]));
        max_ref = fmax(max_ref, fabs(plain[i]));
    }
    printf("    fused vs plain out_relu: max|diff| %.3g (max %.3g)\n", max_diff, max_ref);
    assert_true(max_diff <= 1e-4 * fmax(1.0, max_ref));
    /* The raw convolution is not a ReLU6 output: it has negative values. */
    int negative = 0;
    for (int64_t i = 0; i < conv_n; i++)
        negative |= conv[i] < 0.0f;
    assert_true(negative);
    free(x);
    free(fused);
    free(plain);
    free(conv);
    graft_model_free(m);
}

/* Training without a feature cache runs the frozen base through the fused
 * plan up to the cache boundary: its forward (dropout off) matches the plain
 * plan's, for a boundary after a fused block (block_10) and after pooling. */
static void train_forward_runs_frozen_base_fused(void **state)
{
    char path[512];
    snprintf(path, sizeof path, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    const char *from[2] = {"global_average_pooling2d", "block_11_expand"};
    for (int f = 0; f < 2; f++) {
        graft_model *m = NULL;
        assert_int_equal(graft_model_load(path, &m), GRAFT_OK);
        assert_int_equal(graft_model_cut(m, "out_relu"), GRAFT_OK);
        assert_int_equal(graft_model_set_input_size(m, SIDE, SIDE), GRAFT_OK);
        assert_int_equal(graft_model_add_classifier(m, 7, 0.5, 1), GRAFT_OK);
        assert_int_equal(graft_model_unfreeze_from(m, from[f]), GRAFT_OK);
        graft__train_graph tg;
        assert_int_equal(graft__train_graph_init(&tg, m, BATCH, 1), GRAFT_OK);
        assert_int_not_equal(tg.fused_end, m->input_node);
        int64_t n = (int64_t)BATCH * SIDE * SIDE * 3, out = BATCH * graft_model_output_size(m);
        float *x = malloc(sizeof(float) * (size_t)n), *plain = malloc(sizeof(float) * (size_t)out);
        for (int64_t i = 0; i < n; i++)
            x[i] = cosf((float)i * 0.11f);
        graft__train_forward(&tg, x, BATCH, 0, 1, 0);
        const float *trained = graft__train_output(&tg);
        graft_layer_info info;
        graft_model_layer_info(m, graft_model_find_layer(m, "Conv1"), &info);
        float *conv = malloc(sizeof(float) * (size_t)(BATCH * info.shape[0] * info.shape[1] *
                                                      info.shape[2]));
        const char *names[1] = {"Conv1"};
        float *outs[1] = {conv};
        assert_int_equal(graft_model_forward_layers(m, x, BATCH, 1, names, outs, plain), GRAFT_OK);
        double max_diff = 0.0;
        for (int64_t i = 0; i < out; i++)
            max_diff = fmax(max_diff, fabs(trained[i] - plain[i]));
        printf("    frozen up to %s: train forward vs plain max|diff| %.3g\n",
               m->nodes[tg.fused_end].layer->name, max_diff);
        assert_true(max_diff <= 1e-5);
        free(x), free(plain), free(conv);
        graft__train_graph_free(&tg);
        graft_model_free(m);
    }
}

/* ---- inverted-residual blocks on models written here --------------------------- */

typedef struct block_case {
    int64_t h, w, cin, ce, cout; /* ce 0: no expand stage (then ce = cin) */
    int64_t kernel, stride;
    const char *dw_padding;      /* "same" or "valid" */
    int64_t pad[4];              /* ZeroPadding2D top, bottom, left, right; all 0: none */
    int residual;
    const char *expand_act;      /* "relu6" (a ReLU layer) or "relu" (an Activation) */
    int threads;
    int64_t expand_kernel, expand_stride; /* 0: a 1x1 expand */
    int64_t expand_pad[4];       /* ZeroPadding2D before the expand conv */
} block_case;

static uint32_t lcg = 2463534242u;

static float uniform(float lo, float hi)
{
    lcg = lcg * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)(lcg >> 8) * (1.0f / 16777216.0f);
}

static void add_random(tmw_weights *w, const char *name, int rank, const int64_t *dims, float lo,
                       float hi)
{
    int64_t n = 1;
    for (int i = 0; i < rank; i++)
        n *= dims[i];
    float *data = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        data[i] = uniform(lo, hi);
    assert_true(tmw_add_weight(w, name, data, rank, dims));
    free(data);
}

/* A BatchNorm named `name` after `input`, with random statistics. */
static void add_bn(json_t *layers, tmw_weights *w, const char *name, const char *input, int64_t c)
{
    char key[64];
    json_array_append_new(layers, tmw_layer("BatchNormalization", name,
                                            json_pack("{s:i,s:f}", "axis", -1, "epsilon", 1e-3),
                                            TMW_INPUTS(input)));
    const char *parts[] = {"gamma", "beta", "moving_mean", "moving_variance"};
    const float lo[] = {0.5f, -0.5f, -0.5f, 0.2f}, hi[] = {1.5f, 0.5f, 0.5f, 1.5f};
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%s/%s", name, parts[i]);
        add_random(w, key, 1, &c, lo[i], hi[i]);
    }
}

static void add_relu(json_t *layers, const char *name, const char *input, const char *act)
{
    if (!strcmp(act, "relu6"))
        json_array_append_new(layers, tmw_layer("ReLU", name, json_pack("{s:f}", "max_value", 6.0),
                                                TMW_INPUTS(input)));
    else
        json_array_append_new(layers, tmw_layer("Activation", name,
                                                json_pack("{s:s}", "activation", act),
                                                TMW_INPUTS(input)));
}

static void add_conv(json_t *layers, tmw_weights *w, const char *name, const char *input,
                     int64_t cin, int64_t cout, int64_t k, int64_t stride, const char *padding)
{
    char key[64];
    json_array_append_new(layers, tmw_layer("Conv2D", name,
                                            json_pack("{s:i,s:[i,i],s:[i,i],s:s,s:b}", "filters",
                                                      (int)cout, "kernel_size", (int)k, (int)k,
                                                      "strides", (int)stride, (int)stride,
                                                      "padding", padding, "use_bias", 0),
                                            TMW_INPUTS(input)));
    snprintf(key, sizeof key, "%s/kernel", name);
    float scale = 2.0f / sqrtf((float)(k * k * cin));
    add_random(w, key, 4, (int64_t[]){k, k, cin, cout}, -scale, scale);
}

static void add_pointwise(json_t *layers, tmw_weights *w, const char *name, const char *input,
                          int64_t cin, int64_t cout)
{
    add_conv(layers, w, name, input, cin, cout, 1, 1, "same");
}

/* input -> [e -> e_bn -> e_relu] -> [pad] -> dw -> dw_bn -> dw_relu -> p -> p_bn [-> add]. */
static void write_block_model(const char *dir, const block_case *c)
{
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){c->h, c->w, c->cin}));
    const char *x = "input_1";
    int64_t ce = c->ce ? c->ce : c->cin;
    if (c->expand_pad[0] || c->expand_pad[1] || c->expand_pad[2] || c->expand_pad[3]) {
        json_array_append_new(layers, tmw_layer("ZeroPadding2D", "e_pad",
                                                json_pack("{s:[[i,i],[i,i]]}", "padding",
                                                          (int)c->expand_pad[0],
                                                          (int)c->expand_pad[1],
                                                          (int)c->expand_pad[2],
                                                          (int)c->expand_pad[3]),
                                                TMW_INPUTS(x)));
        x = "e_pad";
    }
    if (c->ce && c->expand_kernel) {
        add_conv(layers, &w, "e", x, c->cin, ce, c->expand_kernel, c->expand_stride, "valid");
        add_bn(layers, &w, "e_bn", "e", ce);
        add_relu(layers, "e_relu", "e_bn", c->expand_act);
        x = "e_relu";
    } else if (c->ce) {
        add_pointwise(layers, &w, "e", x, c->cin, ce);
        add_bn(layers, &w, "e_bn", "e", ce);
        add_relu(layers, "e_relu", "e_bn", c->expand_act);
        x = "e_relu";
    }
    if (c->pad[0] || c->pad[1] || c->pad[2] || c->pad[3]) {
        json_array_append_new(layers, tmw_layer("ZeroPadding2D", "pad",
                                                json_pack("{s:[[i,i],[i,i]]}", "padding",
                                                          (int)c->pad[0], (int)c->pad[1],
                                                          (int)c->pad[2], (int)c->pad[3]),
                                                TMW_INPUTS(x)));
        x = "pad";
    }
    json_array_append_new(layers, tmw_layer("DepthwiseConv2D", "dw",
                                            json_pack("{s:[i,i],s:[i,i],s:s,s:b}", "kernel_size",
                                                      (int)c->kernel, (int)c->kernel, "strides",
                                                      (int)c->stride, (int)c->stride, "padding",
                                                      c->dw_padding, "use_bias", 0),
                                            TMW_INPUTS(x)));
    add_random(&w, "dw/depthwise_kernel", 4, (int64_t[]){c->kernel, c->kernel, ce, 1}, -0.5f, 0.5f);
    add_bn(layers, &w, "dw_bn", "dw", ce);
    add_relu(layers, "dw_relu", "dw_bn", "relu6");
    add_pointwise(layers, &w, "p", "dw_relu", ce, c->cout);
    add_bn(layers, &w, "p_bn", "p", c->cout);
    const char *out = "p_bn";
    if (c->residual) {
        json_array_append_new(layers, tmw_layer("Add", "add", NULL, TMW_INPUTS("input_1", "p_bn")));
        out = "add";
    }
    assert_true(tmw_write(dir, tmw_functional("block", layers, "input_1", out), 1, &w));
    tmw_weights_free(&w);
}

/* The fused block against the plain plan (forced by asking for the depthwise
 * conv's raw output) at batch 3 and 1, and that the block was fused at all. */
static void check_block(const block_case *c)
{
    char dir[] = "/tmp/graft_fusion_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_block_model(dir, c);
    graft_set_threads(c->threads);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(dir, &m), GRAFT_OK);
    tmw_remove(dir);
    int64_t out_n = graft_model_output_size(m);
    graft_layer_info info;
    graft_model_layer_info(m, graft_model_find_layer(m, "dw"), &info);
    int64_t dw_n = info.shape[0] * info.shape[1] * info.shape[2];
    const int64_t batches[] = {3, 1};
    for (int bi = 0; bi < 2; bi++) {
        int64_t batch = batches[bi], in_n = batch * c->h * c->w * c->cin;
        float *x = malloc(sizeof(float) * (size_t)in_n);
        for (int64_t i = 0; i < in_n; i++)
            x[i] = uniform(-2.0f, 2.0f);
        float *fused = malloc(sizeof(float) * (size_t)(batch * out_n));
        float *plain = malloc(sizeof(float) * (size_t)(batch * out_n));
        float *dw = malloc(sizeof(float) * (size_t)(batch * dw_n));
        assert_int_equal(graft_model_forward(m, x, batch, fused), GRAFT_OK);
        assert_int_equal(m->plan.n_blocks, 1);
        const char *names[1] = {"dw"};
        float *outs[1] = {dw};
        assert_int_equal(graft_model_forward_layers(m, x, batch, 1, names, outs, plain), GRAFT_OK);
        double max_diff = 0.0, max_ref = 0.0;
        for (int64_t i = 0; i < batch * out_n; i++) {
            max_diff = fmax(max_diff, fabs(fused[i] - plain[i]));
            max_ref = fmax(max_ref, fabs(plain[i]));
        }
        if (!(max_diff <= 1e-5 * fmax(1.0, max_ref)))
            print_error("block %lldx%lldx%lld ce %lld cout %lld k %lld s %lld batch %lld: "
                        "max|diff| %.3g (max %.3g)\n", (long long)c->h, (long long)c->w,
                        (long long)c->cin, (long long)c->ce, (long long)c->cout,
                        (long long)c->kernel, (long long)c->stride, (long long)batch, max_diff,
                        max_ref);
        assert_true(max_diff <= 1e-5 * fmax(1.0, max_ref));
        free(x), free(fused), free(plain), free(dw);
    }
    graft_model_free(m);
    graft_set_threads(0);
}

static void block_stride1_same_residual_odd_sizes(void **state)
{
    check_block(&(block_case){9, 11, 5, 30, 5, 3, 1, "same", {0}, 1, "relu6", 2,
                              0, 0, {0}});
}

static void block_stride2_one_sided_zero_padding_as_keras(void **state)
{
    check_block(&(block_case){10, 12, 8, 48, 12, 3, 2, "valid", {0, 1, 0, 1}, 0, "relu6", 2,
                              0, 0, {0}});
}

static void block_stride2_symmetric_zero_padding_odd_input(void **state)
{
    check_block(&(block_case){9, 7, 6, 36, 10, 3, 2, "valid", {1, 1, 1, 1}, 0, "relu6", 2,
                              0, 0, {0}});
}

static void block_stride2_same_padding_without_zero_padding(void **state)
{
    check_block(&(block_case){13, 6, 4, 24, 9, 3, 2, "same", {0}, 0, "relu6", 2,
                              0, 0, {0}});
}

static void block_without_expand_stage(void **state)
{
    check_block(&(block_case){8, 9, 19, 0, 7, 3, 1, "same", {0}, 0, "relu6", 2,
                              0, 0, {0}});
}

static void block_relu_expand_channels_not_multiple_of_vector(void **state)
{
    check_block(&(block_case){7, 10, 9, 17, 9, 3, 1, "same", {0}, 1, "relu", 2,
                              0, 0, {0}});
}

static void block_5x5_kernel_zero_padding_and_same(void **state)
{
    check_block(&(block_case){11, 9, 6, 30, 6, 5, 1, "same", {1, 2, 2, 1}, 0, "relu6", 2,
                              0, 0, {0}});
}

/* Small images split by channels (block.c's run_split: fewer than 4 output
 * rows per thread): 3x3 outputs at batch 3 on three threads, so the images
 * take turns between barriers, 40 expanded channels give each thread a panel
 * and 8 output channels leave two threads no projection share. */
static void block_small_image_split_by_channels_three_threads(void **state)
{
    check_block(&(block_case){6, 5, 8, 40, 8, 3, 2, "same", {0}, 0, "relu6", 3,
                              0, 0, {0}});
}

/* The same split with a residual, 5 rows at batch 1 on three threads (at batch
 * 3 the rows split as usual). */
static void block_small_image_split_residual(void **state)
{
    check_block(&(block_case){5, 4, 6, 20, 6, 3, 1, "same", {0}, 1, "relu6", 3,
                              0, 0, {0}});
}

/* Wide rows: bands of several rows and the ring of expanded rows wrapping
 * around, on three threads whose shares start mid-image. */
static void block_wide_image_ring_wraps_three_threads(void **state)
{
    check_block(&(block_case){21, 40, 8, 24, 8, 3, 1, "same", {0}, 1, "relu6", 3,
                              0, 0, {0}});
    check_block(&(block_case){21, 40, 8, 24, 16, 3, 2, "valid", {0, 1, 0, 1}, 0, "relu6", 3,
                              0, 0, {0}});
}

/* The expand stage as a padded 3x3 stride-2 convolution (MobileNetV2's stem
 * before its first block), rows of it recomputed for no band. */
static void block_expand_stage_is_padded_strided_3x3_conv(void **state)
{
    check_block(&(block_case){12, 14, 3, 16, 8, 3, 1, "same", {0}, 0, "relu6", 2, 3, 2,
                              {0, 1, 0, 1}});
    check_block(&(block_case){11, 9, 3, 10, 7, 3, 2, "valid", {1, 1, 1, 1}, 0, "relu", 3, 3, 1,
                              {1, 1, 1, 1}});
}

/* ---- a convolution with its padding, BatchNorm and ReLU as one step ---------- */

typedef struct conv_case {
    int64_t h, w, cin, cout, kernel, stride;
    const char *padding;  /* of the Conv2D */
    int64_t pad[4];       /* ZeroPadding2D before it; all 0: none */
    const char *act;      /* "relu6", "relu" or NULL (the BatchNorm ends it) */
} conv_case;

static void check_conv_step(const conv_case *c)
{
    char dir[] = "/tmp/graft_fusion_XXXXXX";
    assert_non_null(mkdtemp(dir));
    tmw_weights w;
    tmw_weights_init(&w);
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){c->h, c->w, c->cin}));
    const char *x = "input_1";
    if (c->pad[0] || c->pad[1] || c->pad[2] || c->pad[3]) {
        json_array_append_new(layers, tmw_layer("ZeroPadding2D", "pad",
                                                json_pack("{s:[[i,i],[i,i]]}", "padding",
                                                          (int)c->pad[0], (int)c->pad[1],
                                                          (int)c->pad[2], (int)c->pad[3]),
                                                TMW_INPUTS(x)));
        x = "pad";
    }
    json_array_append_new(layers, tmw_layer("Conv2D", "conv",
                                            json_pack("{s:i,s:[i,i],s:[i,i],s:s,s:b}", "filters",
                                                      (int)c->cout, "kernel_size", (int)c->kernel,
                                                      (int)c->kernel, "strides", (int)c->stride,
                                                      (int)c->stride, "padding", c->padding,
                                                      "use_bias", 1),
                                            TMW_INPUTS(x)));
    float scale = 2.0f / sqrtf((float)(c->kernel * c->kernel * c->cin));
    add_random(&w, "conv/kernel", 4, (int64_t[]){c->kernel, c->kernel, c->cin, c->cout}, -scale,
               scale);
    add_random(&w, "conv/bias", 1, &c->cout, -0.5f, 0.5f);
    add_bn(layers, &w, "bn", "conv", c->cout);
    if (c->act)
        add_relu(layers, "act", "bn", c->act);
    assert_true(tmw_write(dir, tmw_functional("conv", layers, "input_1", c->act ? "act" : "bn"), 1,
                          &w));
    tmw_weights_free(&w);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(dir, &m), GRAFT_OK);
    tmw_remove(dir);
    const int64_t batch = 3, in_n = batch * c->h * c->w * c->cin;
    int64_t out_n = batch * graft_model_output_size(m);
    float *x_in = malloc(sizeof(float) * (size_t)in_n);
    for (int64_t i = 0; i < in_n; i++)
        x_in[i] = uniform(-2.0f, 2.0f);
    float *fused = malloc(sizeof(float) * (size_t)out_n);
    float *plain = malloc(sizeof(float) * (size_t)out_n);
    float *raw = malloc(sizeof(float) * (size_t)out_n);
    assert_int_equal(graft_model_forward(m, x_in, batch, fused), GRAFT_OK);
    assert_int_equal(m->plan.n_convs, 1);
    const char *names[1] = {"conv"};
    float *outs[1] = {raw};
    assert_int_equal(graft_model_forward_layers(m, x_in, batch, 1, names, outs, plain), GRAFT_OK);
    double max_diff = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < out_n; i++) {
        max_diff = fmax(max_diff, fabs(fused[i] - plain[i]));
        max_ref = fmax(max_ref, fabs(plain[i]));
    }
    if (!(max_diff <= 1e-5 * fmax(1.0, max_ref)))
        print_error("conv %lldx%lldx%lld k %lld s %lld: max|diff| %.3g (max %.3g)\n",
                    (long long)c->h, (long long)c->w, (long long)c->cin, (long long)c->kernel,
                    (long long)c->stride, max_diff, max_ref);
    assert_true(max_diff <= 1e-5 * fmax(1.0, max_ref));
    free(x_in), free(fused), free(plain), free(raw);
    graft_model_free(m);
}

static void conv_step_zero_padding_stride2_relu6_as_keras_stem(void **state)
{
    check_conv_step(&(conv_case){12, 10, 3, 32, 3, 2, "valid", {0, 1, 0, 1}, "relu6"});
}

static void conv_step_uneven_zero_padding_same_conv_relu(void **state)
{
    check_conv_step(&(conv_case){9, 11, 5, 9, 3, 2, "same", {1, 2, 0, 1}, "relu"});
}

static void conv_step_pointwise_without_activation(void **state)
{
    check_conv_step(&(conv_case){7, 5, 20, 33, 1, 1, "valid", {0}, NULL});
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fused_and_plain_plans_agree),
        cmocka_unit_test(train_forward_runs_frozen_base_fused),
        cmocka_unit_test(block_stride1_same_residual_odd_sizes),
        cmocka_unit_test(block_stride2_one_sided_zero_padding_as_keras),
        cmocka_unit_test(block_stride2_symmetric_zero_padding_odd_input),
        cmocka_unit_test(block_stride2_same_padding_without_zero_padding),
        cmocka_unit_test(block_without_expand_stage),
        cmocka_unit_test(block_relu_expand_channels_not_multiple_of_vector),
        cmocka_unit_test(block_5x5_kernel_zero_padding_and_same),
        cmocka_unit_test(block_wide_image_ring_wraps_three_threads),
        cmocka_unit_test(block_small_image_split_by_channels_three_threads),
        cmocka_unit_test(block_small_image_split_residual),
        cmocka_unit_test(block_expand_stage_is_padded_strided_3x3_conv),
        cmocka_unit_test(conv_step_zero_padding_stride2_relu6_as_keras_stem),
        cmocka_unit_test(conv_step_uneven_zero_padding_same_conv_relu),
        cmocka_unit_test(conv_step_pointwise_without_activation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
