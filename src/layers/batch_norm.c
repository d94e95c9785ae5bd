/* BatchNormalization over the last axis. At inference (and whenever the layer is
 * frozen, as Keras >= 2.1 does) it normalises with the moving statistics. */
#include <math.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct batch_norm_config {
    double epsilon, momentum;
    int center, scale;
} batch_norm_config;

static graft_status batch_norm_parse(graft__layer *layer, const json_t *config)
{
    batch_norm_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc;
    if ((rc = graft__config_double(config, "epsilon", &c->epsilon, 1e-3, layer->name)) ||
        (rc = graft__config_double(config, "momentum", &c->momentum, 0.99, layer->name)) ||
        (rc = graft__config_bool(config, "center", &c->center, 1, layer->name)) ||
        (rc = graft__config_bool(config, "scale", &c->scale, 1, layer->name)))
        return rc;
    const json_t *axis = json_object_get(config, "axis");
    if (json_is_array(axis) && json_array_size(axis) == 1)
        axis = json_array_get(axis, 0);
    if (axis && !json_is_null(axis) &&
        !(json_is_integer(axis) && (json_integer_value(axis) == -1 || json_integer_value(axis) == 3)))
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': only the last (channel) axis is "
                           "supported", layer->name);
    return GRAFT_OK;
}

static graft_status batch_norm_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                     graft__shape *out)
{
    const batch_norm_config *c = layer->config;
    graft__shape vec = {1, {in[0].dim[in[0].rank - 1]}};
    int index = 0;
    graft_status rc = GRAFT_OK;
    /* Keras's weight order: gamma, beta, moving_mean, moving_variance. */
    if (c->scale)
        rc = graft__layer_declare_weight(layer, index++, "gamma", &vec, 1);
    if (!rc && c->center)
        rc = graft__layer_declare_weight(layer, index++, "beta", &vec, 1);
    if (!rc)
        rc = graft__layer_declare_weight(layer, index++, "moving_mean", &vec, 0);
    if (!rc)
        rc = graft__layer_declare_weight(layer, index++, "moving_variance", &vec, 0);
    *out = in[0];
    return rc;
}

static size_t batch_norm_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                                 const graft__shape *out, int64_t batch)
{
    return 2 * sizeof(float) * (size_t)in[0].dim[in[0].rank - 1];
}

/* y = x * mul + add with mul = gamma / sqrt(var + eps), add = beta - mean * mul. */
static void batch_norm_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const batch_norm_config *c = layer->config;
    const graft__shape *s = a->out_shape;
    int64_t ch = s->dim[s->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(s) / ch;
    int w = 0;
    const float *gamma = c->scale ? layer->weights[w++].data : NULL;
    const float *beta = c->center ? layer->weights[w++].data : NULL;
    const float *mean = layer->weights[w++].data;
    const float *var = layer->weights[w].data;
    float *mul = a->scratch, *add = mul + ch;
    for (int64_t j = 0; j < ch; j++) {
        double m = (gamma ? gamma[j] : 1.0) / sqrt((double)var[j] + c->epsilon);
        mul[j] = (float)m;
        add[j] = (float)((beta ? beta[j] : 0.0) - mean[j] * m);
    }
    const float *x = a->inputs[0];
    float *y = a->output;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < ch; j++)
            y[r * ch + j] = x[r * ch + j] * mul[j] + add[j];
}

const graft__layer_ops graft__batch_norm_layer_ops = {
    .class_name = "BatchNormalization",
    .parse = batch_norm_parse,
    .infer = batch_norm_infer,
    .scratch_bytes = batch_norm_scratch,
    .forward = batch_norm_forward,
};
