/* SeparableConv2D: a depthwise conv (no bias) then a 1x1 pointwise conv with bias. */
#include "core/alloc.h"
#include "core/error.h"
#include "layers/conv_common.h"

typedef struct separable_config {
    graft__window window;
    int64_t multiplier, filters;
    int use_bias;
    graft__activation act;
} separable_config;

static graft_status separable_parse(graft__layer *layer, const json_t *config)
{
    separable_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc;
    if ((rc = graft__window_parse(&c->window, config, "kernel_size", 1, layer->name)) ||
        (rc = graft__config_bool(config, "use_bias", &c->use_bias, 1, layer->name)) ||
        (rc = graft__config_activation(config, &c->act, layer->name)))
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
    graft_status rc = graft__window_geom(&c->window, &in[0], 1, &g, layer->name);
    if (rc)
        return rc;
    int64_t mid = g.in_c * c->multiplier;
    int64_t ddims[4] = {g.kernel_h, g.kernel_w, g.in_c, c->multiplier};
    int64_t pdims[4] = {1, 1, mid, c->filters};
    int64_t odims[3] = {g.out_h, g.out_w, c->filters};
    graft__shape dk, pk, bias;
    if ((rc = graft__shape_make(&dk, 4, ddims, layer->name)) ||
        (rc = graft__shape_make(&pk, 4, pdims, layer->name)) ||
        (rc = graft__layer_declare_weight(layer, 0, "depthwise_kernel", &dk, 1)) ||
        (rc = graft__layer_declare_weight(layer, 1, "pointwise_kernel", &pk, 1)))
        return rc;
    if (c->use_bias && ((rc = graft__shape_make(&bias, 1, &c->filters, layer->name)) ||
                        (rc = graft__layer_declare_weight(layer, 2, "bias", &bias, 1))))
        return rc;
    return graft__shape_make(out, 3, odims, layer->name);
}

static size_t separable_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                                const graft__shape *out, int64_t batch)
{
    const separable_config *c = layer->config;
    /* The depthwise result, rounded up to keep the next buffer aligned. */
    size_t mid = sizeof(float) * (size_t)(batch * out->dim[0] * out->dim[1] * in[0].dim[2] *
                                          c->multiplier);
    return (mid + 63) / 64 * 64;
}

static void separable_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const separable_config *c = layer->config;
    graft_conv_geom dg, pg;
    graft__window_geom(&c->window, &a->in_shapes[0], a->batch, &dg, layer->name);
    dg.out_c = dg.in_c * c->multiplier;
    float *mid = a->scratch;
    graft_f32_dwconv2d_parallel(&dg, a->inputs[0], layer->weights[0].data, NULL, mid);
    pg = (graft_conv_geom){.batch = a->batch, .in_h = dg.out_h, .in_w = dg.out_w,
                           .in_c = dg.out_c, .out_c = c->filters, .kernel_h = 1, .kernel_w = 1,
                           .stride_h = 1, .stride_w = 1, .dilation_h = 1, .dilation_w = 1};
    graft_conv_geom_init(&pg, 0);
    /* A 1x1 stride-1 unpadded conv needs no im2col scratch. */
    graft_f32_conv2d__gemm(&pg, mid, layer->weights[1].data,
                           c->use_bias ? layer->weights[2].data : NULL, a->output, NULL);
    graft__activation_apply(c->act, a->output, a->batch * pg.out_h * pg.out_w, pg.out_c);
}

const graft__layer_ops graft__separable_conv2d_layer_ops = {
    .class_name = "SeparableConv2D",
    .parse = separable_parse,
    .infer = separable_infer,
    .scratch_bytes = separable_scratch,
    .forward = separable_forward,
};
