/* ZeroPadding2D: zeros around H and W; Keras writes the padding as an int,
 * a pair (symmetric per axis) or ((top, bottom), (left, right)). */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

typedef struct zero_padding_config {
    int64_t top, bottom, left, right;
} zero_padding_config;

static int read_int(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > GRAFT__MAX_DIM)
        return 0;
    *out = json_integer_value(v);
    return 1;
}

static int parse_padding(const json_t *p, zero_padding_config *c)
{
    if (read_int(p, &c->top)) {
        c->bottom = c->left = c->right = c->top;
        return 1;
    }
    if (!json_is_array(p) || json_array_size(p) != 2)
        return 0;
    const json_t *h = json_array_get(p, 0), *w = json_array_get(p, 1);
    if (read_int(h, &c->top) && read_int(w, &c->left)) {
        c->bottom = c->top;
        c->right = c->left;
        return 1;
    }
    return json_array_size(h) == 2 && json_array_size(w) == 2 &&
           read_int(json_array_get(h, 0), &c->top) && read_int(json_array_get(h, 1), &c->bottom) &&
           read_int(json_array_get(w, 0), &c->left) && read_int(json_array_get(w, 1), &c->right);
}

static graft_status zero_padding_parse(graft__layer *layer, const json_t *config)
{
    graft_status rc = graft__config_channels_last(config, layer->name);
    if (rc)
        return rc;
    zero_padding_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    if (!parse_padding(json_object_get(config, "padding"), c))
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': padding is not an int, a pair or two "
                           "pairs of non-negative ints", layer->name);
    return GRAFT_OK;
}

static graft_status zero_padding_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                       graft__shape *out)
{
    const zero_padding_config *c = layer->config;
    if (in[0].rank != 3)
        return graft__fail(GRAFT_E_SHAPE, "layer '%s': expects (H, W, C) input", layer->name);
    int64_t dims[3] = {in[0].dim[0] + c->top + c->bottom, in[0].dim[1] + c->left + c->right,
                       in[0].dim[2]};
    return graft__shape_make(out, 3, dims, layer->name);
}

static void zero_padding_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const zero_padding_config *c = layer->config;
    const graft__shape *is = &a->in_shapes[0], *os = a->out_shape;
    int64_t in_h = is->dim[0], in_w = is->dim[1], ch = is->dim[2];
    int64_t out_h = os->dim[0], out_w = os->dim[1];
    const float *x = a->inputs[0];
    float *y = a->output;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < a->batch * out_h; row++) {
        int64_t n = row / out_h, oh = row % out_h, ih = oh - c->top;
        float *dst = y + row * out_w * ch;
        if (ih < 0 || ih >= in_h) {
            memset(dst, 0, sizeof(float) * (size_t)(out_w * ch));
            continue;
        }
        memset(dst, 0, sizeof(float) * (size_t)(c->left * ch));
        memcpy(dst + c->left * ch, x + ((n * in_h + ih) * in_w) * ch,
               sizeof(float) * (size_t)(in_w * ch));
        memset(dst + (c->left + in_w) * ch, 0, sizeof(float) * (size_t)(c->right * ch));
    }
}

static void zero_padding_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const zero_padding_config *c = layer->config;
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
    const graft__shape *is = &a->in_shapes[0], *os = a->out_shape;
    int64_t in_h = is->dim[0], in_w = is->dim[1], ch = is->dim[2], out_h = os->dim[0];
    int64_t out_w = os->dim[1];
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < a->batch * in_h; row++) {
        int64_t n = row / in_h, ih = row % in_h;
        const float *src = a->d_output + ((n * out_h + ih + c->top) * out_w + c->left) * ch;
        float *dst = dx + row * in_w * ch;
        for (int64_t i = 0; i < in_w * ch; i++)
            dst[i] += src[i];
    }
}

extern const graft__layer_ops graft__zero_padding2d_layer_ops;

int graft__zero_padding_amounts(const graft__layer *layer, int64_t pad[4])
{
    if (layer->ops != &graft__zero_padding2d_layer_ops)
        return 0;
    const zero_padding_config *c = layer->config;
    pad[0] = c->top;
    pad[1] = c->bottom;
    pad[2] = c->left;
    pad[3] = c->right;
    return 1;
}

const graft__layer_ops graft__zero_padding2d_layer_ops = {
    .class_name = "ZeroPadding2D",
    .parse = zero_padding_parse,
    .infer = zero_padding_infer,
    .forward = zero_padding_forward,
    .backward = zero_padding_backward,
};
