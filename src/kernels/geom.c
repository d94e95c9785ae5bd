#include "kernels/conv.h"

/* TF's conv_output_size and get_padding ('same' pads the odd cell at the
 * bottom/right), so a Keras model's shapes come out the same here. */
static int axis(int64_t in, int64_t k, int64_t s, int64_t d, int same, int64_t *out, int64_t *pad)
{
    if (in < 1 || k < 1 || s < 1 || d < 1)
        return 0;
    int64_t span = (k - 1) * d + 1;
    if (same) {
        int64_t o = (in + s - 1) / s;
        int64_t total = (o - 1) * s + span - in;
        *out = o;
        *pad = total > 0 ? total / 2 : 0;
        return 1;
    }
    if (in < span)
        return 0;
    *out = (in - span) / s + 1;
    *pad = 0;
    return 1;
}

int graft_conv_geom_init(graft_conv_geom *g, int same_padding)
{
    int64_t oh, ow, pt, pl;
    if (g->batch < 1 || g->in_c < 1 || g->out_c < 1)
        return 0;
    if (!axis(g->in_h, g->kernel_h, g->stride_h, g->dilation_h, same_padding, &oh, &pt) ||
        !axis(g->in_w, g->kernel_w, g->stride_w, g->dilation_w, same_padding, &ow, &pl))
        return 0;
    g->out_h = oh;
    g->out_w = ow;
    g->pad_top = pt;
    g->pad_left = pl;
    return 1;
}
