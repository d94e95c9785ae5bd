/* Add and Multiply: elementwise over inputs of one shape (Keras also broadcasts;
 * graft accepts only equal shapes and says so). */
#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

static graft_status merge_parse(graft__layer *layer, const json_t *config) { return GRAFT_OK; }

static graft_status merge_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                graft__shape *out)
{
    if (n_inputs < 2)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': needs at least two inputs", layer->name);
    for (int i = 1; i < n_inputs; i++)
        if (!graft__shape_equal(&in[0], &in[i])) {
            char a[96], b[96];
            return graft__fail(GRAFT_E_SHAPE, "layer '%s': input shapes %s and %s differ "
                               "(broadcasting is not supported)", layer->name,
                               graft__shape_str(&in[0], a, sizeof a),
                               graft__shape_str(&in[i], b, sizeof b));
        }
    *out = in[0];
    return GRAFT_OK;
}

static void add_forward(const graft__layer *layer, const graft__forward_args *a)
{
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    float *y = a->output;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float s = a->inputs[0][i];
        for (int k = 1; k < a->n_inputs; k++)
            s += a->inputs[k][i];
        y[i] = s;
    }
}

static void multiply_forward(const graft__layer *layer, const graft__forward_args *a)
{
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    float *y = a->output;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float p = a->inputs[0][i];
        for (int k = 1; k < a->n_inputs; k++)
            p *= a->inputs[k][i];
        y[i] = p;
    }
}

static void add_backward(const graft__layer *layer, const graft__backward_args *a)
{
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    for (int k = 0; k < a->n_inputs; k++)
        if (a->d_inputs[k])
            graft__accumulate(a->d_inputs[k], a->d_output, n);
}

/* d x_k = dy * product of the other inputs (recomputed; no division, so zeros are fine). */
static void multiply_backward(const graft__layer *layer, const graft__backward_args *a)
{
    int64_t n = a->batch * graft__shape_elems(a->out_shape);
    for (int k = 0; k < a->n_inputs; k++) {
        float *dx = a->d_inputs[k];
        if (!dx)
            continue;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float p = a->d_output[i];
            for (int j = 0; j < a->n_inputs; j++)
                if (j != k)
                    p *= a->inputs[j][i];
            dx[i] += p;
        }
    }
}

const graft__layer_ops graft__add_layer_ops = {
    .class_name = "Add",
    .parse = merge_parse,
    .infer = merge_infer,
    .forward = add_forward,
    .backward = add_backward,
};

const graft__layer_ops graft__multiply_layer_ops = {
    .class_name = "Multiply",
    .parse = merge_parse,
    .infer = merge_infer,
    .forward = multiply_forward,
    .backward = multiply_backward,
};
