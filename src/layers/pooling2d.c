/* MaxPooling2D and AveragePooling2D with TF padding (average over valid cells). */
#include "core/alloc.h"
#include "core/error.h"
#include "layers/conv_common.h"

static graft_status pooling_parse(graft__layer *layer, const json_t *config)
{
    graft__window *w = graft__calloc(1, sizeof *w);
    if (!w)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = w;
    graft_status rc = graft__window_parse(w, config, "pool_size", 0, layer->name);
    if (!rc && (w->dilation[0] != 1 || w->dilation[1] != 1))
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': pooling has no dilation", layer->name);
    return rc;
}

static graft_status pooling_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                  graft__shape *out)
{
    graft_conv_geom g;
    graft_status rc = graft__window_geom(layer->config, &in[0], 1, &g, layer->name);
    int64_t dims[3] = {g.out_h, g.out_w, g.in_c};
    return rc ? rc : graft__shape_make(out, 3, dims, layer->name);
}

static void max_pooling_forward(const graft__layer *layer, const graft__forward_args *a)
{
    graft_conv_geom g;
    graft__window_geom(layer->config, &a->in_shapes[0], a->batch, &g, layer->name);
    graft_f32_maxpool2d_parallel(&g, a->inputs[0], a->output);
}

static void average_pooling_forward(const graft__layer *layer, const graft__forward_args *a)
{
    graft_conv_geom g;
    graft__window_geom(layer->config, &a->in_shapes[0], a->batch, &g, layer->name);
    graft_f32_avgpool2d_parallel(&g, a->inputs[0], a->output);
}

static void max_pooling_backward(const graft__layer *layer, const graft__backward_args *a)
{
    graft_conv_geom g;
    graft__window_geom(layer->config, &a->in_shapes[0], a->batch, &g, layer->name);
    if (a->d_inputs[0])
        graft_f32_maxpool2d_backward_parallel(&g, a->inputs[0], a->d_output, a->d_inputs[0]);
}

static void average_pooling_backward(const graft__layer *layer, const graft__backward_args *a)
{
    graft_conv_geom g;
    graft__window_geom(layer->config, &a->in_shapes[0], a->batch, &g, layer->name);
    if (a->d_inputs[0])
        graft_f32_avgpool2d_backward_parallel(&g, a->d_output, a->d_inputs[0]);
}

const graft__layer_ops graft__max_pooling2d_layer_ops = {
    .class_name = "MaxPooling2D",
    .parse = pooling_parse,
    .infer = pooling_infer,
    .forward = max_pooling_forward,
    .backward = max_pooling_backward,
};

const graft__layer_ops graft__average_pooling2d_layer_ops = {
    .class_name = "AveragePooling2D",
    .parse = pooling_parse,
    .infer = pooling_infer,
    .forward = average_pooling_forward,
    .backward = average_pooling_backward,
};
