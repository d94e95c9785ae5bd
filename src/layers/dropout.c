/* Dropout: the identity at inference, inverted dropout in training. */
#include <string.h>

#include "core/alloc.h"
#include "core/random.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct dropout_config {
    double rate;
} dropout_config;

static graft_status dropout_parse(graft__layer *layer, const json_t *config)
{
    dropout_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc = graft__config_double(config, "rate", &c->rate, 0.0, layer->name);
    if (rc == GRAFT_OK && (c->rate < 0.0 || c->rate >= 1.0))
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': dropout rate %g is outside [0, 1)",
                           layer->name, c->rate);
    return rc;
}

static graft_status dropout_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                  graft__shape *out)
{
    *out = in[0];
    return GRAFT_OK;
}

/* Inverted dropout (Keras): kept values are scaled by 1/(1-rate) so inference
 * needs no rescaling. The mask is a function of (seed, index): backward
 * regenerates it instead of storing it. */
static float keep_scale(const dropout_config *c, uint64_t seed, int64_t i)
{
    return graft__uniform(seed, (uint64_t)i) >= (float)c->rate ? (float)(1.0 / (1.0 - c->rate))
                                                                : 0.0f;
}

static void dropout_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const dropout_config *c = layer->config;
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    if (!a->training || c->rate == 0.0) {
        if (a->output != a->inputs[0])
            memcpy(a->output, a->inputs[0], sizeof(float) * (size_t)n);
        return;
    }
    const float *x = a->inputs[0];
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        a->output[i] = x[i] * keep_scale(c, a->seed, i);
}

static void dropout_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const dropout_config *c = layer->config;
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    if (c->rate == 0.0) {
        graft__accumulate(dx, a->d_output, n);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        dx[i] += a->d_output[i] * keep_scale(c, a->seed, i);
}

const graft__layer_ops graft__dropout_layer_ops = {
    .class_name = "Dropout",
    .parse = dropout_parse,
    .infer = dropout_infer,
    .forward = dropout_forward,
    .backward = dropout_backward,
};
