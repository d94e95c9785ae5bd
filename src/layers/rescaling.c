/* Rescaling: x * scale + offset (scalars, as Keras saves them). */
#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct rescaling_config {
    float scale, offset;
} rescaling_config;

static graft_status rescaling_parse(graft__layer *layer, const json_t *config)
{
    double scale, offset;
    graft_status rc;
    if ((rc = graft__config_double(config, "scale", &scale, 1.0, layer->name)) ||
        (rc = graft__config_double(config, "offset", &offset, 0.0, layer->name)))
        return rc == GRAFT_E_FORMAT
                   ? graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': only scalar scale and offset "
                                 "are supported", layer->name)
                   : rc;
    rescaling_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    c->scale = (float)scale;
    c->offset = (float)offset;
    layer->config = c;
    return GRAFT_OK;
}

static graft_status rescaling_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                    graft__shape *out)
{
    *out = in[0];
    return GRAFT_OK;
}

static void rescaling_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const rescaling_config *c = layer->config;
    const float *x = a->inputs[0];
    float *y = a->output;
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * c->scale + c->offset;
}

static void rescaling_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const rescaling_config *c = layer->config;
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        dx[i] += a->d_output[i] * c->scale;
}

const graft__layer_ops graft__rescaling_layer_ops = {
    .class_name = "Rescaling",
    .parse = rescaling_parse,
    .infer = rescaling_infer,
    .forward = rescaling_forward,
    .backward = rescaling_backward,
};
