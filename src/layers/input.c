/* InputLayer: the graph's entry; its shape comes from batch_input_shape. */
#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct input_config {
    graft__shape shape;
} input_config;

static graft_status input_parse(graft__layer *layer, const json_t *config)
{
    const json_t *dims = json_object_get(config, "batch_input_shape");
    if (!dims)
        dims = json_object_get(config, "batch_shape"); /* Keras 3 */
    if (!json_is_array(dims) || json_array_size(dims) < 2)
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': InputLayer has no batch_input_shape",
                           layer->name);
    int rank = (int)json_array_size(dims) - 1;
    int64_t d[GRAFT_MAX_RANK] = {0};
    if (rank > GRAFT_MAX_RANK)
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': input rank %d is not supported",
                           layer->name, rank);
    for (int i = 0; i < rank; i++) {
        const json_t *v = json_array_get(dims, (size_t)i + 1);
        if (!json_is_integer(v))
            return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': input dimension %d is not fixed "
                               "(graft needs a known input size)", layer->name, i + 1);
        d[i] = json_integer_value(v);
    }
    input_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    return graft__shape_make(&c->shape, rank, d, layer->name);
}

static graft_status input_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                graft__shape *out)
{
    const input_config *c = layer->config;
    *out = c->shape;
    return GRAFT_OK;
}

/* The executor hands the caller's input buffer to the consumers directly,
 * so an InputLayer computes nothing. */
static void input_forward(const graft__layer *layer, const graft__forward_args *args) {}

const graft__layer_ops graft__input_layer_ops = {
    .class_name = "InputLayer",
    .parse = input_parse,
    .infer = input_infer,
    .forward = input_forward,
};

/* Changes the shape an InputLayer declares (fully convolutional bases run at
 * any image size); the config saved with the model follows. */
graft_status graft__input_layer_set_shape(graft__layer *layer, const graft__shape *shape)
{
    input_config *c = layer->config;
    c->shape = *shape;
    json_t *dims = json_array();
    json_array_append_new(dims, json_null());
    for (int i = 0; i < shape->rank; i++)
        json_array_append_new(dims, json_integer(shape->dim[i]));
    if (layer->keras_config && json_object_set_new(layer->keras_config, "batch_input_shape", dims))
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    if (!layer->keras_config)
        json_decref(dims);
    return GRAFT_OK;
}
