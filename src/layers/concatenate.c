/* Concatenate along one axis of the sample (Keras axis counts the batch as 0;
 * -1, the default, is the channels). */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct concatenate_config {
    int64_t axis; /* as written in the config */
} concatenate_config;

static graft_status concatenate_parse(graft__layer *layer, const json_t *config)
{
    concatenate_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    const json_t *axis = json_object_get(config, "axis");
    c->axis = json_is_integer(axis) ? json_integer_value(axis) : -1;
    return GRAFT_OK;
}

/* The axis within one sample (0-based, batch excluded). */
static int sample_axis(const concatenate_config *c, int rank)
{
    int64_t axis = c->axis < 0 ? c->axis + rank + 1 : c->axis;
    return axis >= 1 && axis <= rank ? (int)axis - 1 : -1;
}

static graft_status concatenate_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                      graft__shape *out)
{
    const concatenate_config *c = layer->config;
    int axis = sample_axis(c, in[0].rank);
    if (axis < 0)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': axis %lld is out of range", layer->name,
                           (long long)c->axis);
    *out = in[0];
    for (int i = 1; i < n_inputs; i++) {
        int same = in[i].rank == in[0].rank;
        for (int d = 0; same && d < in[0].rank; d++)
            same = d == axis || in[i].dim[d] == in[0].dim[d];
        if (!same)
            return graft__fail(GRAFT_E_SHAPE, "layer '%s': input %d does not match input 0 off "
                               "the concatenation axis", layer->name, i);
        out->dim[axis] += in[i].dim[axis];
    }
    return graft__shape_make(out, out->rank, out->dim, layer->name);
}

static void concatenate_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const concatenate_config *c = layer->config;
    int axis = sample_axis(c, a->out_shape->rank);
    /* Each sample is (outer, axis, inner); copy one contiguous run per input per outer index. */
    int64_t outer = a->batch, inner = 1;
    for (int d = 0; d < axis; d++)
        outer *= a->out_shape->dim[d];
    for (int d = axis + 1; d < a->out_shape->rank; d++)
        inner *= a->out_shape->dim[d];
    int64_t out_run = a->out_shape->dim[axis] * inner;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        float *dst = a->output + o * out_run;
        for (int i = 0; i < a->n_inputs; i++) {
            int64_t run = a->in_shapes[i].dim[axis] * inner;
            memcpy(dst, a->inputs[i] + o * run, sizeof(float) * (size_t)run);
            dst += run;
        }
    }
}

static void concatenate_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const concatenate_config *c = layer->config;
    int axis = sample_axis(c, a->out_shape->rank);
    int64_t outer = a->batch, inner = 1;
    for (int d = 0; d < axis; d++)
        outer *= a->out_shape->dim[d];
    for (int d = axis + 1; d < a->out_shape->rank; d++)
        inner *= a->out_shape->dim[d];
    int64_t out_run = a->out_shape->dim[axis] * inner;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++) {
        const float *src = a->d_output + o * out_run;
        for (int i = 0; i < a->n_inputs; i++) {
            int64_t run = a->in_shapes[i].dim[axis] * inner;
            float *dst = a->d_inputs[i];
            for (int64_t j = 0; dst && j < run; j++)
                dst[o * run + j] += src[j];
            src += run;
        }
    }
}

const graft__layer_ops graft__concatenate_layer_ops = {
    .class_name = "Concatenate",
    .parse = concatenate_parse,
    .infer = concatenate_infer,
    .forward = concatenate_forward,
    .backward = concatenate_backward,
};
