/* Conv2D: kernel (KH, KW, Cin, Cout) as Keras stores it, through im2col + GEMM. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "kernels/gemm.h"
#include "layers/conv_common.h"

typedef struct conv2d_config {
    graft__conv_settings conv;
    int64_t filters;
} conv2d_config;

static graft_status conv2d_parse(graft__layer *layer, const json_t *config)
{
    conv2d_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc;
    if ((rc = graft__conv_settings_parse(&c->conv, config, layer->name)))
        return rc;
    const json_t *filters = json_object_get(config, "filters");
    const json_t *groups = json_object_get(config, "groups");
    if (!json_is_integer(filters) || json_integer_value(filters) < 1 ||
        json_integer_value(filters) > GRAFT__MAX_DIM)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': filters must be a positive integer",
                           layer->name);
    if (groups && json_integer_value(groups) != 1)
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': grouped convolution is not "
                           "supported", layer->name);
    c->filters = json_integer_value(filters);
    return GRAFT_OK;
}

static graft_status conv2d_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                 graft__shape *out)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g;
    graft_status rc = graft__window_geom(&c->conv.window, &in[0], 1, &g, layer->name);
    if (rc)
        return rc;
    int64_t kdims[4] = {g.kernel_h, g.kernel_w, g.in_c, c->filters};
    int64_t odims[3] = {g.out_h, g.out_w, c->filters};
    graft__shape kernel, bias;
    if ((rc = graft__shape_make(&kernel, 4, kdims, layer->name)) ||
        (rc = graft__layer_declare_weight(layer, 0, "kernel", &kernel, 1)))
        return rc;
    if (c->conv.use_bias && ((rc = graft__shape_make(&bias, 1, &c->filters, layer->name)) ||
                        (rc = graft__layer_declare_weight(layer, 1, "bias", &bias, 1))))
        return rc;
    return graft__shape_make(out, 3, odims, layer->name);
}

static graft_conv_geom conv2d_geom(const graft__layer *layer, const graft__shape *in, int64_t batch)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g;
    graft__window_geom(&c->conv.window, in, batch, &g, layer->name);
    g.out_c = c->filters;
    return g;
}

/* Activations graft's packed kernels apply in their epilogue: those layers run
 * on kernels/conv2d_train.c outside inference's folded plans (OpenBLAS re-packed
 * its operands on every call there); the others keep im2col + OpenBLAS. */
static int packed_path(const conv2d_config *c)
{
    return c->conv.act == GRAFT__ACT_LINEAR || c->conv.act == GRAFT__ACT_RELU ||
           c->conv.act == GRAFT__ACT_RELU6;
}

static size_t round16(size_t floats) { return (floats + 15) / 16 * 16; }

/* Room for dy * f' (a non-linear fused activation), then the GEMM work area. */
static size_t act_bytes(const conv2d_config *c, const graft__shape *out, int64_t batch)
{
    return c->conv.act == GRAFT__ACT_LINEAR ? 0
                                            : round16((size_t)(batch * graft__shape_elems(out))) * sizeof(float);
}

static size_t conv2d_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                             const graft__shape *out, int64_t batch)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g = conv2d_geom(layer, &in[0], batch);
    size_t im2col = graft_f32_conv2d_scratch_bytes(&g);
    size_t packed = packed_path(c) ? sizeof(float) * graft_f32_conv2d_train_scratch_floats(&g) : 0;
    return act_bytes(c, out, batch) + (im2col > packed ? im2col : packed);
}

static size_t conv2d_saved(const graft__layer *layer, const graft__shape *out, int64_t batch)
{
    const conv2d_config *c = layer->config;
    return graft__activation_derivative_from_output(c->conv.act)
               ? 0
               : sizeof(float) * (size_t)(batch * graft__shape_elems(out));
}

static void conv2d_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g = graft__geom_unpad(conv2d_geom(layer, &a->in_shapes[0], a->batch), a->in_pad);
    int64_t rows = a->batch * g.out_h * g.out_w;
    if (a->folded_kernel) {
        graft_f32_conv2d__gemm(&g, a->inputs[0], a->folded_kernel, a->folded_bias, a->output,
                               a->scratch);
        graft__activation_apply(a->epilogue, a->output, rows, g.out_c);
        return;
    }
    const float *bias = c->conv.use_bias ? layer->weights[1].data : NULL;
    if (a->moments_out && c->conv.act == GRAFT__ACT_LINEAR) {
        graft_f32_conv2d_train_forward_moments(
            &g, a->inputs[0], a->in_map, layer->weights[0].data, bias, a->output,
            (float *)((char *)a->scratch + act_bytes(c, a->out_shape, a->batch)), a->moments_out,
            a->moments_out + GRAFT_CONV_TRAIN_PARTS * g.out_c);
        return;
    }
    if (packed_path(c) && !a->logits) {
        graft_f32_conv2d_train_forward(&g, a->inputs[0], layer->weights[0].data, bias, c->conv.act,
                                       a->output,
                                       (float *)((char *)a->scratch + act_bytes(c, a->out_shape, a->batch)));
        return;
    }
    graft_f32_conv2d__gemm(&g, a->inputs[0], layer->weights[0].data, bias, a->output, a->scratch);
    if (a->logits)
        return;
    if (a->saved && !graft__activation_derivative_from_output(c->conv.act))
        memcpy(a->saved, a->output, sizeof(float) * (size_t)(rows * g.out_c));
    graft__activation_apply(c->conv.act, a->output, rows, g.out_c);
}

static void conv2d_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g = graft__geom_unpad(conv2d_geom(layer, &a->in_shapes[0], a->batch), a->in_pad);
    int64_t rows = a->batch * g.out_h * g.out_w;
    float *act_buf = a->scratch;
    float *work = (float *)((char *)a->scratch + act_bytes(c, a->out_shape, a->batch));
    const float *dy = a->logits ? a->d_output
                                : graft__activation_grad(c->conv.act, a->saved, a->output, a->d_output,
                                                         act_buf, rows, g.out_c);
    const int packed = packed_path(c) && graft_f32_conv2d_is_pointwise(&g);
    const int weight_packed = packed_path(c) && graft_f32_conv2d_train_weight_packed_pays(&g);
    float *din = a->d_inputs[0];
    if (c->conv.use_bias && a->d_weights[1])
        graft__sum_rows(a->d_weights[1], dy, rows, g.out_c);
    if (packed && weight_packed &&
        (a->d_output_bn || a->d_input_bn_sums || a->in_map || (a->d_weights[0] && din))) {
        graft_f32_conv2d_train_backward_pointwise(&g, a->inputs[0], dy, layer->weights[0].data,
                                                  a->d_weights[0], din, !(a->fresh & 1u),
                                                  a->d_output_bn, a->output, a->d_input_bn_sums,
                                                  a->in_map, work);
        return;
    }
    if (a->d_weights[0]) {
        if (weight_packed)
            graft_f32_conv2d_train_backward_weight(&g, a->inputs[0], dy, a->d_weights[0], work);
        else
            graft_f32_conv2d_backward_weight__gemm(&g, a->inputs[0], dy, a->d_weights[0], work);
    }
    if (!din)
        return;
    if (packed) {
        graft_f32_conv2d_train_backward_input(&g, dy, layer->weights[0].data, din,
                                              !(a->fresh & 1u), work);
        return;
    }
    if (a->fresh & 1u)
        memset(din, 0, sizeof(float) * (size_t)(g.batch * g.in_h * g.in_w * g.in_c));
    graft_f32_conv2d_backward_input__gemm(&g, dy, layer->weights[0].data, din, work);
}

/* A following BatchNorm's input gradient is taken a chunk at a time by the
 * pointwise backward on the packed path (its weight gradient kernel), which has
 * no bias gradient to give. */
static int conv2d_takes_bn_grad(const graft__layer *layer, const graft__shape *in,
                                const int64_t *in_pad, int64_t batch)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g = graft__geom_unpad(conv2d_geom(layer, in, batch), in_pad);
    return c->conv.act == GRAFT__ACT_LINEAR && !c->conv.use_bias &&
           graft_f32_conv2d_is_pointwise(&g) && graft_f32_conv2d_train_weight_packed_pays(&g);
}

/* The BatchNorm before takes its sums from the pointwise backward's chunks. */
static int conv2d_takes_bn_sums(const graft__layer *layer, const graft__shape *in,
                                const int64_t *in_pad, int64_t batch)
{
    graft_conv_geom g = graft__geom_unpad(conv2d_geom(layer, in, batch), in_pad);
    return packed_path(layer->config) && graft_f32_conv2d_is_pointwise(&g) &&
           graft_f32_conv2d_train_weight_packed_pays(&g);
}

/* A BatchNorm's output is mapped chunk by chunk by the moments-taking forward
 * and the pointwise backward (whose weight gradient the packed path takes). */
static int conv2d_takes_in_map(const graft__layer *layer, const graft__shape *in,
                               const int64_t *in_pad, int64_t batch)
{
    const conv2d_config *c = layer->config;
    graft_conv_geom g = graft__geom_unpad(conv2d_geom(layer, in, batch), in_pad);
    return c->conv.act == GRAFT__ACT_LINEAR && graft_f32_conv2d_is_pointwise(&g) &&
           graft_f32_conv2d_train_weight_packed_pays(&g);
}

/* Output channel o of kernel (KH, KW, Cin, Cout) scales by mul[o]. */
static void conv2d_fold_affine(const graft__layer *layer, const float *mul, const float *add,
                               float *kernel, float *bias)
{
    const conv2d_config *c = layer->config;
    const graft__weight *k = &layer->weights[0];
    int64_t cout = c->filters, n = graft__shape_elems(&k->shape);
    for (int64_t i = 0; i < n; i++)
        kernel[i] = k->data[i] * mul[i % cout];
    for (int64_t o = 0; o < cout; o++)
        bias[o] = (c->conv.use_bias ? layer->weights[1].data[o] : 0.0f) * mul[o] + add[o];
}

static graft__activation conv2d_output_activation(const graft__layer *layer)
{
    return ((const conv2d_config *)layer->config)->conv.act;
}

const graft__layer_ops graft__conv2d_layer_ops = {
    .class_name = "Conv2D",
    .parse = conv2d_parse,
    .infer = conv2d_infer,
    .scratch_bytes = conv2d_scratch,
    .forward = conv2d_forward,
    .saved_bytes = conv2d_saved,
    .backward = conv2d_backward,
    .output_activation = conv2d_output_activation,
    .fold_affine = conv2d_fold_affine,
    .conv_geom = conv2d_geom,
    .takes_bn_grad = conv2d_takes_bn_grad,
    .takes_bn_sums = conv2d_takes_bn_sums,
    .takes_in_map = conv2d_takes_in_map,
    .absorbs_padding = 1,
    .writes_fresh_grads = 1,
    .writes_moments = 1,
};
