/* DepthwiseConv2D: kernel (KH, KW, Cin, M); output channel c*M + m. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/conv_common.h"

typedef struct depthwise_config {
    graft__conv_settings conv;
    int64_t multiplier;
} depthwise_config;

static graft_status depthwise_parse(graft__layer *layer, const json_t *config)
{
    depthwise_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc;
    if ((rc = graft__conv_settings_parse(&c->conv, config, layer->name)))
        return rc;
    const json_t *m = json_object_get(config, "depth_multiplier");
    c->multiplier = m ? json_integer_value(m) : 1;
    if (c->multiplier < 1 || c->multiplier > 4096)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': depth_multiplier must be a positive "
                           "integer", layer->name);
    return GRAFT_OK;
}

static graft_status depthwise_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                    graft__shape *out)
{
    const depthwise_config *c = layer->config;
    graft_conv_geom g;
    graft_status rc = graft__window_geom(&c->conv.window, &in[0], 1, &g, layer->name);
    if (rc)
        return rc;
    int64_t out_c = g.in_c * c->multiplier;
    int64_t kdims[4] = {g.kernel_h, g.kernel_w, g.in_c, c->multiplier};
    int64_t odims[3] = {g.out_h, g.out_w, out_c};
    graft__shape kernel, bias;
    if ((rc = graft__shape_make(&kernel, 4, kdims, layer->name)) ||
        (rc = graft__layer_declare_weight(layer, 0, "depthwise_kernel", &kernel, 1)))
        return rc;
    if (c->conv.use_bias && ((rc = graft__shape_make(&bias, 1, &out_c, layer->name)) ||
                        (rc = graft__layer_declare_weight(layer, 1, "bias", &bias, 1))))
        return rc;
    return graft__shape_make(out, 3, odims, layer->name);
}

static graft_conv_geom depthwise_geom(const graft__layer *layer, const graft__shape *in,
                                      int64_t batch)
{
    const depthwise_config *c = layer->config;
    graft_conv_geom g;
    graft__window_geom(&c->conv.window, in, batch, &g, layer->name);
    g.out_c = g.in_c * c->multiplier;
    return g;
}

static void depthwise_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const depthwise_config *c = layer->config;
    graft_conv_geom g = graft__geom_unpad(depthwise_geom(layer, &a->in_shapes[0], a->batch), a->in_pad);
    int64_t rows = a->batch * g.out_h * g.out_w;
    if (a->folded_kernel) {
        graft_f32_dwconv2d_parallel(&g, a->inputs[0], a->folded_kernel, a->folded_bias, a->output);
        graft__activation_apply(a->epilogue, a->output, rows, g.out_c);
        return;
    }
    if (a->in_map) {
        graft_f32_dwconv2d_forward_moments_mapped(&g, a->inputs[0], a->in_map,
                                                  layer->weights[0].data,
                                                  c->conv.use_bias ? layer->weights[1].data : NULL,
                                                  a->output, a->moments_out,
                                                  a->moments_out + GRAFT_CONV_TRAIN_PARTS * g.out_c,
                                                  a->scratch);
        return;
    }
    if (a->moments_out && c->conv.act == GRAFT__ACT_LINEAR) {
        graft_f32_dwconv2d_forward_moments(&g, a->inputs[0], layer->weights[0].data,
                                           c->conv.use_bias ? layer->weights[1].data : NULL,
                                           a->output, a->moments_out,
                                           a->moments_out + GRAFT_CONV_TRAIN_PARTS * g.out_c);
        return;
    }
    graft_f32_dwconv2d_parallel(&g, a->inputs[0], layer->weights[0].data,
                                c->conv.use_bias ? layer->weights[1].data : NULL, a->output);
    if (a->logits)
        return;
    if (a->saved && !graft__activation_derivative_from_output(c->conv.act))
        memcpy(a->saved, a->output, sizeof(float) * (size_t)(rows * g.out_c));
    graft__activation_apply(c->conv.act, a->output, rows, g.out_c);
}

/* Room for dy * f' (a non-linear activation); training's backward work. */
static size_t depthwise_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                                const graft__shape *out, int64_t batch)
{
    const depthwise_config *c = layer->config;
    graft_conv_geom g = depthwise_geom(layer, in, batch);
    size_t act = sizeof(float) * (size_t)(batch * graft__shape_elems(out));
    size_t train = graft_f32_dwconv2d_train_backward_scratch_floats(&g);
    size_t mapped = graft_f32_dwconv2d_forward_mapped_scratch_floats(&g);
    return sizeof(float) * (train > mapped ? train : mapped) +
           (c->conv.act == GRAFT__ACT_LINEAR ? 0 : (act + 63) / 64 * 64);
}

static size_t depthwise_saved(const graft__layer *layer, const graft__shape *out, int64_t batch)
{
    const depthwise_config *c = layer->config;
    return graft__activation_derivative_from_output(c->conv.act)
               ? 0
               : sizeof(float) * (size_t)(batch * graft__shape_elems(out));
}

static size_t act_bytes(const depthwise_config *c, const graft__backward_args *a)
{
    size_t floats = (size_t)(a->batch * graft__shape_elems(a->out_shape));
    return c->conv.act == GRAFT__ACT_LINEAR ? 0 : (floats * sizeof(float) + 63) / 64 * 64;
}

/* A following BatchNorm's input gradient is taken an image at a time by the
 * training backward, which has no bias gradient to give. */
static int depthwise_takes_bn_grad(const graft__layer *layer, const graft__shape *in,
                                   const int64_t *in_pad, int64_t batch)
{
    const depthwise_config *c = layer->config;
    return c->conv.act == GRAFT__ACT_LINEAR && !c->conv.use_bias;
}

/* The BatchNorm before takes its sums from the training backward's bands of
 * input rows. Strided, that ran 18-27% slower than the BatchNorm's own pass
 * after (113x113x96 and 57x57x144, batch 32; 2-6% faster at stride 1), so
 * the BatchNorm keeps its pass there. */
static int depthwise_takes_bn_sums(const graft__layer *layer, const graft__shape *in,
                                   const int64_t *in_pad, int64_t batch)
{
    graft_conv_geom g = graft__geom_unpad(depthwise_geom(layer, in, batch), in_pad);
    return g.stride_h == 1 && g.stride_w == 1;
}

/* A BatchNorm's output is mapped band by band by the moments-taking forward. */
static int depthwise_takes_in_map(const graft__layer *layer, const graft__shape *in,
                                  const int64_t *in_pad, int64_t batch)
{
    const depthwise_config *c = layer->config;
    return c->conv.act == GRAFT__ACT_LINEAR;
}

static void depthwise_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const depthwise_config *c = layer->config;
    graft_conv_geom g = graft__geom_unpad(depthwise_geom(layer, &a->in_shapes[0], a->batch), a->in_pad);
    int64_t rows = a->batch * g.out_h * g.out_w;
    const float *dy = a->logits ? a->d_output
                                : graft__activation_grad(c->conv.act, a->saved, a->output,
                                                         a->d_output, a->scratch, rows, g.out_c);
    if (c->conv.use_bias && a->d_weights[1])
        graft__sum_rows(a->d_weights[1], dy, rows, g.out_c);
    if (a->d_output_bn || a->d_input_bn_sums || a->in_map ||
        (a->d_weights[0] && a->d_inputs[0])) {
        graft_f32_dwconv2d_train_backward(&g, a->inputs[0], dy, layer->weights[0].data,
                                          a->d_weights[0], a->d_inputs[0], !(a->fresh & 1u),
                                          a->d_output_bn, a->output, a->d_input_bn_sums,
                                          a->in_map,
                                          (float *)((char *)a->scratch + act_bytes(c, a)));
        return;
    }
    if (a->d_weights[0])
        graft_f32_dwconv2d_backward_weight_parallel(&g, a->inputs[0], dy, a->d_weights[0]);
    if (a->d_inputs[0] && (a->fresh & 1u))
        graft_f32_dwconv2d_backward_input_parallel_overwrite(&g, dy, layer->weights[0].data,
                                                             a->d_inputs[0]);
    else if (a->d_inputs[0])
        graft_f32_dwconv2d_backward_input_parallel(&g, dy, layer->weights[0].data, a->d_inputs[0]);
}

/* Kernel (KH, KW, Cin, M): output channel c*M + m is the last two axes flattened. */
static void depthwise_fold_affine(const graft__layer *layer, const float *mul, const float *add,
                                  float *kernel, float *bias)
{
    const depthwise_config *c = layer->config;
    const graft__weight *k = &layer->weights[0];
    int64_t cout = k->shape.dim[2] * k->shape.dim[3], n = graft__shape_elems(&k->shape);
    for (int64_t i = 0; i < n; i++)
        kernel[i] = k->data[i] * mul[i % cout];
    for (int64_t o = 0; o < cout; o++)
        bias[o] = (c->conv.use_bias ? layer->weights[1].data[o] : 0.0f) * mul[o] + add[o];
}

static graft__activation depthwise_output_activation(const graft__layer *layer)
{
    return ((const depthwise_config *)layer->config)->conv.act;
}

const graft__layer_ops graft__depthwise_conv2d_layer_ops = {
    .class_name = "DepthwiseConv2D",
    .parse = depthwise_parse,
    .infer = depthwise_infer,
    .scratch_bytes = depthwise_scratch,
    .forward = depthwise_forward,
    .saved_bytes = depthwise_saved,
    .backward = depthwise_backward,
    .writes_moments = 1,
    .output_activation = depthwise_output_activation,
    .fold_affine = depthwise_fold_affine,
    .conv_geom = depthwise_geom,
    .takes_bn_grad = depthwise_takes_bn_grad,
    .takes_bn_sums = depthwise_takes_bn_sums,
    .takes_in_map = depthwise_takes_in_map,
    .absorbs_padding = 1,
    .writes_fresh_grads = 1,
};
