/* SeparableConv2D: a depthwise conv (no bias) then a 1x1 pointwise conv with bias. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/conv_common.h"

typedef struct separable_config {
    graft__conv_settings conv;
    int64_t multiplier, filters;
    int64_t mid_channels;  /* input channels * multiplier, known after infer */
} separable_config;

static graft_status separable_parse(graft__layer *layer, const json_t *config)
{
    separable_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc;
    if ((rc = graft__conv_settings_parse(&c->conv, config, layer->name)))
        return rc;
    const json_t *m = json_object_get(config, "depth_multiplier");
    const json_t *f = json_object_get(config, "filters");
    c->multiplier = m ? json_integer_value(m) : 1;
    c->filters = json_integer_value(f);
    if (c->multiplier < 1 || c->multiplier > 4096 || c->filters < 1 || c->filters > GRAFT__MAX_DIM)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': depth_multiplier and filters must be "
                           "positive integers", layer->name);
    return GRAFT_OK;
}

static graft_status separable_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                    graft__shape *out)
{
    const separable_config *c = layer->config;
    graft_conv_geom g;
    graft_status rc = graft__window_geom(&c->conv.window, &in[0], 1, &g, layer->name);
    if (rc)
        return rc;
    int64_t mid = g.in_c * c->multiplier;
    ((separable_config *)layer->config)->mid_channels = mid;
    int64_t ddims[4] = {g.kernel_h, g.kernel_w, g.in_c, c->multiplier};
    int64_t pdims[4] = {1, 1, mid, c->filters};
    int64_t odims[3] = {g.out_h, g.out_w, c->filters};
    graft__shape dk, pk, bias;
    if ((rc = graft__shape_make(&dk, 4, ddims, layer->name)) ||
        (rc = graft__shape_make(&pk, 4, pdims, layer->name)) ||
        (rc = graft__layer_declare_weight(layer, 0, "depthwise_kernel", &dk, 1)) ||
        (rc = graft__layer_declare_weight(layer, 1, "pointwise_kernel", &pk, 1)))
        return rc;
    if (c->conv.use_bias && ((rc = graft__shape_make(&bias, 1, &c->filters, layer->name)) ||
                        (rc = graft__layer_declare_weight(layer, 2, "bias", &bias, 1))))
        return rc;
    return graft__shape_make(out, 3, odims, layer->name);
}

/* Bytes of the depthwise result, rounded up to keep the next buffer aligned. */
static size_t mid_bytes(const separable_config *c, const graft__shape *in, const graft__shape *out,
                        int64_t batch)
{
    size_t mid = sizeof(float) * (size_t)(batch * out->dim[0] * out->dim[1] * in->dim[2] *
                                          c->multiplier);
    return (mid + 63) / 64 * 64;
}

/* The depthwise result (or, in backward, its gradient), then room for dy * f'. */
static size_t separable_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                                const graft__shape *out, int64_t batch)
{
    const separable_config *c = layer->config;
    return mid_bytes(c, &in[0], out, batch) +
           (c->conv.act == GRAFT__ACT_LINEAR ? 0 : sizeof(float) * (size_t)(batch * graft__shape_elems(out)));
}

/* Training keeps the depthwise result for the pointwise weight gradient. */
static size_t separable_saved(const graft__layer *layer, const graft__shape *out, int64_t batch)
{
    const separable_config *c = layer->config;
    size_t pre = graft__activation_derivative_from_output(c->conv.act)
                     ? 0
                     : sizeof(float) * (size_t)(batch * graft__shape_elems(out));
    size_t mid = sizeof(float) * (size_t)(batch * out->dim[0] * out->dim[1] * c->mid_channels);
    return (mid + 63) / 64 * 64 + pre;
}

typedef struct separable_geoms {
    graft_conv_geom depthwise, pointwise;
} separable_geoms;

static separable_geoms separable_geom(const graft__layer *layer, const graft__shape *in,
                                      int64_t batch)
{
    const separable_config *c = layer->config;
    separable_geoms s;
    graft__window_geom(&c->conv.window, in, batch, &s.depthwise, layer->name);
    s.depthwise.out_c = s.depthwise.in_c * c->multiplier;
    s.pointwise = (graft_conv_geom){.batch = batch, .in_h = s.depthwise.out_h,
                                    .in_w = s.depthwise.out_w, .in_c = s.depthwise.out_c,
                                    .out_c = c->filters, .kernel_h = 1, .kernel_w = 1,
                                    .stride_h = 1, .stride_w = 1, .dilation_h = 1,
                                    .dilation_w = 1};
    graft_conv_geom_init(&s.pointwise, 0);
    return s;
}

static void separable_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const separable_config *c = layer->config;
    separable_geoms s = separable_geom(layer, &a->in_shapes[0], a->batch);
    float *mid = a->saved ? a->saved : a->scratch;
    int64_t rows = a->batch * s.pointwise.out_h * s.pointwise.out_w;
    graft_f32_dwconv2d_parallel(&s.depthwise, a->inputs[0], layer->weights[0].data, NULL, mid);
    /* A 1x1 stride-1 unpadded conv needs no im2col scratch. */
    graft_f32_conv2d__gemm(&s.pointwise, mid, layer->weights[1].data,
                           c->conv.use_bias ? layer->weights[2].data : NULL, a->output, NULL);
    if (a->saved && !graft__activation_derivative_from_output(c->conv.act))
        memcpy((char *)a->saved + mid_bytes(c, &a->in_shapes[0], a->out_shape, a->batch),
               a->output, sizeof(float) * (size_t)(rows * c->filters));
    graft__activation_apply(c->conv.act, a->output, rows, c->filters);
}

static void separable_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const separable_config *c = layer->config;
    separable_geoms s = separable_geom(layer, &a->in_shapes[0], a->batch);
    int64_t rows = a->batch * s.pointwise.out_h * s.pointwise.out_w;
    size_t mb = mid_bytes(c, &a->in_shapes[0], a->out_shape, a->batch);
    const float *mid = a->saved;
    const float *pre = graft__activation_derivative_from_output(c->conv.act)
                           ? NULL
                           : (const float *)((const char *)a->saved + mb);
    float *d_mid = a->scratch, *act_buf = (float *)((char *)a->scratch + mb);
    const float *dy = graft__activation_grad(c->conv.act, pre, a->output, a->d_output, act_buf, rows,
                                             c->filters);
    if (a->d_weights[1])
        graft_f32_conv2d_backward_weight__gemm(&s.pointwise, mid, dy, a->d_weights[1], NULL);
    if (c->conv.use_bias && a->d_weights[2])
        graft__sum_rows(a->d_weights[2], dy, rows, c->filters);
    if (!a->d_weights[0] && !a->d_inputs[0])
        return;
    memset(d_mid, 0, sizeof(float) * (size_t)(rows * s.depthwise.out_c));
    graft_f32_conv2d_backward_input__gemm(&s.pointwise, dy, layer->weights[1].data, d_mid, NULL);
    if (a->d_weights[0])
        graft_f32_dwconv2d_backward_weight_parallel(&s.depthwise, a->inputs[0], d_mid,
                                                    a->d_weights[0]);
    if (a->d_inputs[0])
        graft_f32_dwconv2d_backward_input_parallel(&s.depthwise, d_mid, layer->weights[0].data,
                                                   a->d_inputs[0]);
}

const graft__layer_ops graft__separable_conv2d_layer_ops = {
    .class_name = "SeparableConv2D",
    .parse = separable_parse,
    .infer = separable_infer,
    .scratch_bytes = separable_scratch,
    .forward = separable_forward,
    .saved_bytes = separable_saved,
    .backward = separable_backward,
};
