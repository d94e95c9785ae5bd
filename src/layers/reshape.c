/* Flatten and Reshape: the same floats under a new shape (NHWC order is kept,
 * which is what Keras's channels_last Flatten produces). */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct reshape_config {
    int rank;        /* 0 for Flatten */
    int64_t target[GRAFT_MAX_RANK]; /* -1 for the one inferred dimension */
} reshape_config;

static graft_status flatten_parse(graft__layer *layer, const json_t *config)
{
    graft_status rc = graft__config_channels_last(config, layer->name);
    if (rc)
        return rc;
    layer->config = graft__calloc(1, sizeof(reshape_config));
    return layer->config ? GRAFT_OK : graft__fail(GRAFT_E_NOMEM, "out of memory");
}

static graft_status reshape_parse(graft__layer *layer, const json_t *config)
{
    const json_t *target = json_object_get(config, "target_shape");
    size_t rank = json_array_size(target);
    if (!json_is_array(target) || rank < 1 || rank > GRAFT_MAX_RANK)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': target_shape must list 1 to %d "
                           "dimensions", layer->name, GRAFT_MAX_RANK);
    reshape_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    c->rank = (int)rank;
    for (size_t i = 0; i < rank; i++) {
        const json_t *v = json_array_get(target, i);
        c->target[i] = json_is_integer(v) ? json_integer_value(v) : 0;
        if (c->target[i] == 0 || c->target[i] < -1)
            return graft__fail(GRAFT_E_FORMAT, "layer '%s': target_shape entry %zu is invalid",
                               layer->name, i);
    }
    return GRAFT_OK;
}

static graft_status reshape_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                  graft__shape *out)
{
    const reshape_config *c = layer->config;
    int64_t total = graft__shape_elems(&in[0]);
    if (c->rank == 0)
        return graft__shape_make(out, 1, &total, layer->name);
    int64_t dims[GRAFT_MAX_RANK], known = 1;
    int unknown = -1;
    for (int i = 0; i < c->rank; i++) {
        dims[i] = c->target[i];
        if (dims[i] == -1) {
            if (unknown >= 0)
                return graft__fail(GRAFT_E_FORMAT, "layer '%s': more than one -1 in target_shape",
                                   layer->name);
            unknown = i;
        } else {
            known *= dims[i];
        }
    }
    if (unknown >= 0 && known > 0 && total % known == 0)
        dims[unknown] = total / known;
    else if (unknown >= 0)
        known = -1;
    if (unknown < 0 ? known != total : known < 0)
        return graft__fail(GRAFT_E_SHAPE, "layer '%s': cannot reshape %lld values to target_shape",
                           layer->name, (long long)total);
    return graft__shape_make(out, c->rank, dims, layer->name);
}

static void reshape_forward(const graft__layer *layer, const graft__forward_args *a)
{
    if (a->output != a->inputs[0])
        memcpy(a->output, a->inputs[0],
               sizeof(float) * (size_t)(a->batch * graft__shape_elems(a->out_shape)));
}

static void reshape_backward(const graft__layer *layer, const graft__backward_args *a)
{
    if (a->d_inputs[0])
        graft__accumulate(a->d_inputs[0], a->d_output, a->batch * graft__shape_elems(a->out_shape));
}

const graft__layer_ops graft__flatten_layer_ops = {
    .class_name = "Flatten",
    .parse = flatten_parse,
    .infer = reshape_infer,
    .forward = reshape_forward,
    .backward = reshape_backward,
};

const graft__layer_ops graft__reshape_layer_ops = {
    .class_name = "Reshape",
    .parse = reshape_parse,
    .infer = reshape_infer,
    .forward = reshape_forward,
    .backward = reshape_backward,
};
