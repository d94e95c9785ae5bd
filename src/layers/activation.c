/* Activation layer: one of Keras's named activations over the last axis. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct activation_config {
    graft__activation act;
} activation_config;

static graft_status activation_parse(graft__layer *layer, const json_t *config)
{
    activation_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    return graft__config_activation(config, &c->act, layer->name);
}

static graft_status activation_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                     graft__shape *out)
{
    *out = in[0];
    return GRAFT_OK;
}

static void activation_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const activation_config *c = layer->config;
    int64_t cols = a->out_shape->dim[a->out_shape->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(a->out_shape) / cols;
    if (a->output != a->inputs[0])
        memcpy(a->output, a->inputs[0], sizeof(float) * (size_t)(rows * cols));
    if (!a->logits)
        graft__activation_apply(c->act, a->output, rows, cols);
}

static void activation_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const activation_config *c = layer->config;
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
    int64_t cols = a->out_shape->dim[a->out_shape->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(a->out_shape) / cols, n = rows * cols;
    if (a->logits) {
        graft__accumulate(dx, a->d_output, n);
        return;
    }
    if (c->act == GRAFT__ACT_SOFTMAX) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            graft_f32_softmax_rows_backward(a->output, a->d_output, dx, cols, r, r + 1);
        return;
    }
    const int64_t chunk = 16384;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < n; s += chunk)
        graft_f32_activation_backward(c->act, a->inputs[0], a->output, a->d_output, dx, s,
                                      s + chunk < n ? s + chunk : n);
}

static graft__activation activation_output_activation(const graft__layer *layer)
{
    return ((const activation_config *)layer->config)->act;
}

const graft__layer_ops graft__activation_layer_ops = {
    .class_name = "Activation",
    .parse = activation_parse,
    .infer = activation_infer,
    .forward = activation_forward,
    .backward = activation_backward,
    .output_activation = activation_output_activation,
};
