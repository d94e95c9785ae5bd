/* GlobalAveragePooling2D and GlobalMaxPooling2D: (H, W, C) -> (C) or (1, 1, C). */
#include "core/alloc.h"
#include "core/error.h"
#include "kernels/conv.h"
#include "layers/layer.h"

typedef struct global_pooling_config {
    int keepdims;
} global_pooling_config;

static graft_status global_pooling_parse(graft__layer *layer, const json_t *config)
{
    global_pooling_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc = graft__config_channels_last(config, layer->name);
    return rc ? rc : graft__config_bool(config, "keepdims", &c->keepdims, 0, layer->name);
}

static graft_status global_pooling_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                         graft__shape *out)
{
    const global_pooling_config *c = layer->config;
    if (in[0].rank != 3)
        return graft__fail(GRAFT_E_SHAPE, "layer '%s': expects (H, W, C) input", layer->name);
    int64_t dims[3] = {1, 1, in[0].dim[2]};
    return c->keepdims ? graft__shape_make(out, 3, dims, layer->name)
                       : graft__shape_make(out, 1, &dims[2], layer->name);
}

static void global_average_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const graft__shape *s = &a->in_shapes[0];
    graft_f32_global_avgpool__direct(s->dim[0] * s->dim[1], s->dim[2], 0, a->batch, a->inputs[0],
                                     a->output);
}

static void global_max_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const graft__shape *s = &a->in_shapes[0];
    graft_f32_global_maxpool__direct(s->dim[0] * s->dim[1], s->dim[2], 0, a->batch, a->inputs[0],
                                     a->output);
}

static void global_average_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const graft__shape *s = &a->in_shapes[0];
    int64_t hw = s->dim[0] * s->dim[1], ch = s->dim[2];
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
    float scale = 1.0f / (float)hw;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < a->batch * hw; row++) {
        const float *dy = a->d_output + (row / hw) * ch;
        for (int64_t c = 0; c < ch; c++)
            dx[row * ch + c] += dy[c] * scale;
    }
}

/* The gradient goes to the first position holding the maximum. */
static void global_max_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const graft__shape *s = &a->in_shapes[0];
    int64_t hw = s->dim[0] * s->dim[1], ch = s->dim[2];
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < a->batch; n++)
        for (int64_t c = 0; c < ch; c++) {
            const float *x = a->inputs[0] + n * hw * ch + c;
            int64_t best = 0;
            for (int64_t p = 1; p < hw; p++)
                if (x[p * ch] > x[best * ch])
                    best = p;
            dx[(n * hw + best) * ch + c] += a->d_output[n * ch + c];
        }
}

const graft__layer_ops graft__global_average_pooling2d_layer_ops = {
    .class_name = "GlobalAveragePooling2D",
    .parse = global_pooling_parse,
    .infer = global_pooling_infer,
    .forward = global_average_forward,
    .backward = global_average_backward,
};

const graft__layer_ops graft__global_max_pooling2d_layer_ops = {
    .class_name = "GlobalMaxPooling2D",
    .parse = global_pooling_parse,
    .infer = global_pooling_infer,
    .forward = global_max_forward,
    .backward = global_max_backward,
};
