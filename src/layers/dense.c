/* Dense over the last axis: y = act(x @ kernel + bias), kernel (in, units). */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "kernels/gemm.h"
#include "layers/layer.h"

typedef struct dense_config {
    int64_t units;
    int use_bias;
    graft__activation act;
} dense_config;

static graft_status dense_parse(graft__layer *layer, const json_t *config)
{
    dense_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    const json_t *units = json_object_get(config, "units");
    if (!json_is_integer(units) || json_integer_value(units) < 1 ||
        json_integer_value(units) > GRAFT__MAX_DIM)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': units must be a positive integer "
                           "below %lld", layer->name, (long long)GRAFT__MAX_DIM);
    c->units = json_integer_value(units);
    graft_status rc = graft__config_bool(config, "use_bias", &c->use_bias, 1, layer->name);
    return rc ? rc : graft__config_activation(config, &c->act, layer->name);
}

static graft_status dense_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                graft__shape *out)
{
    const dense_config *c = layer->config;
    int64_t dims[2] = {in[0].dim[in[0].rank - 1], c->units};
    graft__shape kernel, bias;
    graft_status rc = graft__shape_make(&kernel, 2, dims, layer->name);
    if (!rc)
        rc = graft__layer_declare_weight(layer, 0, "kernel", &kernel, 1);
    if (!rc && c->use_bias) {
        graft__shape_make(&bias, 1, &c->units, layer->name);
        rc = graft__layer_declare_weight(layer, 1, "bias", &bias, 1);
    }
    *out = in[0];
    out->dim[out->rank - 1] = c->units;
    return rc ? rc : graft__shape_make(out, out->rank, out->dim, layer->name);
}

static void dense_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const dense_config *c = layer->config;
    const graft__shape *is = &a->in_shapes[0];
    int64_t in_dim = is->dim[is->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(is) / in_dim;
    graft_f32_gemm(0, 0, rows, c->units, in_dim, 1.0f, a->inputs[0], in_dim, layer->weights[0].data,
                   c->units, 0.0f, a->output, c->units);
    if (c->use_bias)
        graft_f32_add_bias_rows(a->output, layer->weights[1].data, rows, c->units);
    graft__activation_apply(c->act, a->output, rows, c->units);
}

/* Pre-activations are kept only for activations whose derivative needs them. */
static size_t dense_saved(const graft__layer *layer, const graft__shape *out, int64_t batch)
{
    const dense_config *c = layer->config;
    return graft__activation_derivative_from_output(c->act)
               ? 0
               : sizeof(float) * (size_t)(batch * graft__shape_elems(out));
}

static size_t dense_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                            const graft__shape *out, int64_t batch)
{
    return sizeof(float) * (size_t)(batch * graft__shape_elems(out));
}

static void dense_training_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const dense_config *c = layer->config;
    if (!a->logits && (!a->saved || graft__activation_derivative_from_output(c->act))) {
        dense_forward(layer, a);
        return;
    }
    const graft__shape *is = &a->in_shapes[0];
    int64_t in_dim = is->dim[is->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(is) / in_dim;
    graft_f32_gemm(0, 0, rows, c->units, in_dim, 1.0f, a->inputs[0], in_dim, layer->weights[0].data,
                   c->units, 0.0f, a->output, c->units);
    if (c->use_bias)
        graft_f32_add_bias_rows(a->output, layer->weights[1].data, rows, c->units);
    if (a->logits)
        return;
    memcpy(a->saved, a->output, sizeof(float) * (size_t)(rows * c->units));
    graft__activation_apply(c->act, a->output, rows, c->units);
}

static void dense_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const dense_config *c = layer->config;
    const graft__shape *is = &a->in_shapes[0];
    int64_t in_dim = is->dim[is->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(is) / in_dim;
    const float *g = a->logits ? a->d_output
                               : graft__activation_grad(c->act, a->saved, a->output, a->d_output,
                                                        a->scratch, rows, c->units);
    if (a->d_weights[0])
        graft_f32_gemm(1, 0, in_dim, c->units, rows, 1.0f, a->inputs[0], in_dim, g, c->units, 1.0f,
                       a->d_weights[0], c->units);
    if (c->use_bias && a->d_weights[1])
        graft__sum_rows(a->d_weights[1], g, rows, c->units);
    if (a->d_inputs[0])
        graft_f32_gemm(0, 1, rows, in_dim, c->units, 1.0f, g, c->units, layer->weights[0].data,
                       c->units, 1.0f, a->d_inputs[0], in_dim);
}

static graft__activation dense_output_activation(const graft__layer *layer)
{
    return ((const dense_config *)layer->config)->act;
}

const graft__layer_ops graft__dense_layer_ops = {
    .class_name = "Dense",
    .parse = dense_parse,
    .infer = dense_infer,
    .scratch_bytes = dense_scratch,
    .forward = dense_training_forward,
    .saved_bytes = dense_saved,
    .backward = dense_backward,
    .output_activation = dense_output_activation,
};
