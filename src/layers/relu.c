/* ReLU layer with Keras's max_value, negative_slope and threshold. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct relu_config {
    float max_value; /* < 0: unbounded */
    float negative_slope;
    float threshold;
} relu_config;

static graft_status relu_parse(graft__layer *layer, const json_t *config)
{
    double max_value, slope, threshold;
    graft_status rc;
    if ((rc = graft__config_double(config, "max_value", &max_value, -1.0, layer->name)) ||
        (rc = graft__config_double(config, "negative_slope", &slope, 0.0, layer->name)) ||
        (rc = graft__config_double(config, "threshold", &threshold, 0.0, layer->name)))
        return rc;
    relu_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    c->max_value = (float)max_value;
    c->negative_slope = (float)slope;
    c->threshold = (float)threshold;
    layer->config = c;
    return GRAFT_OK;
}

static graft_status relu_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                               graft__shape *out)
{
    *out = in[0];
    return GRAFT_OK;
}

static void relu_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const relu_config *c = layer->config;
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    if (a->output != a->inputs[0])
        memcpy(a->output, a->inputs[0], sizeof(float) * (size_t)n);
    if (c->max_value == 6.0f && c->negative_slope == 0.0f && c->threshold == 0.0f) {
        graft__activation_apply(GRAFT__ACT_RELU6, a->output, 1, n);
        return;
    }
    const int64_t chunk = 16384;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < n; s += chunk)
        graft_f32_relu_general(a->output, s, s + chunk < n ? s + chunk : n, c->max_value,
                               c->negative_slope, c->threshold);
}

static void relu_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const relu_config *c = layer->config;
    if (!a->d_inputs[0])
        return;
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    const int64_t chunk = 16384;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < n; s += chunk)
        graft_f32_relu_general_backward(a->inputs[0], a->d_output, a->d_inputs[0], s,
                                        s + chunk < n ? s + chunk : n, c->max_value,
                                        c->negative_slope, c->threshold);
}

extern const graft__layer_ops graft__relu_layer_ops;

int graft__relu_as_activation(const graft__layer *layer, graft__activation *act)
{
    if (layer->ops != &graft__relu_layer_ops)
        return 0;
    const relu_config *c = layer->config;
    if (c->negative_slope != 0.0f || c->threshold != 0.0f)
        return 0;
    if (c->max_value == 6.0f)
        *act = GRAFT__ACT_RELU6;
    else if (c->max_value < 0.0f)
        *act = GRAFT__ACT_RELU;
    else
        return 0;
    return 1;
}

const graft__layer_ops graft__relu_layer_ops = {
    .class_name = "ReLU",
    .parse = relu_parse,
    .infer = relu_infer,
    .forward = relu_forward,
    .backward = relu_backward,
};
