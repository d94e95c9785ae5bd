/* Dropout: the identity at inference. Training-mode masking arrives with the
 * training engine, which owns the random streams. */
#include <string.h>

#include "core/alloc.h"
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

static void dropout_forward(const graft__layer *layer, const graft__forward_args *a)
{
    if (a->output != a->inputs[0])
        memcpy(a->output, a->inputs[0],
               sizeof(float) * (size_t)(a->batch * graft__shape_elems(a->out_shape)));
}

const graft__layer_ops graft__dropout_layer_ops = {
    .class_name = "Dropout",
    .parse = dropout_parse,
    .infer = dropout_infer,
    .forward = dropout_forward,
};
