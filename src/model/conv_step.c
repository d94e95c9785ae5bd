/* A convolution with its BatchNorm, ReLU(6) and a ZeroPadding2D before it, at
 * inference, as one step: im2col chunks through the fused GEMM, the padding
 * taken into the window, each thread on its own share of the pixels. This is
 * MobileNetV2's stem (Conv1_pad -> Conv1 -> bn_Conv1 -> Conv1_relu) and head
 * (Conv_1 -> Conv_1_bn -> out_relu); OpenBLAS with the passes around it ran the
 * stem at 25 GFLOP/s on 2 cores. */
#include <omp.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "kernels/gemm.h"
#include "model/model.h"


int graft__conv_step_find(const graft_model *m, int start, graft__conv_step *c, int *members,
                          int *n_members)
{
    memset(c, 0, sizeof *c);
    int64_t pad[4] = {0, 0, 0, 0};
    int conv = start, pad_node = -1;
    if (graft__node_is(m, start, "ZeroPadding2D") &&
        graft__zero_padding_amounts(m->nodes[start].layer, pad)) {
        pad_node = start;
        conv = graft__only_reader(m, start);
    }
    if (!graft__node_is(m, conv, "Conv2D"))
        return 0;
    const graft__layer *layer = m->nodes[conv].layer;
    if (layer->ops->output_activation(layer) != GRAFT__ACT_LINEAR)
        return 0;
    int bn = graft__only_reader(m, conv);
    if (!graft__node_is(m, bn, "BatchNormalization"))
        return 0;
    int relu = graft__only_reader(m, bn);
    c->act = GRAFT__ACT_LINEAR;
    if (relu < 0 || !graft__relu_epilogue(m->nodes[relu].layer, &c->act))
        relu = -1;
    /* The geometry over the padded input, its padding moved onto the unpadded. */
    c->g = layer->ops->conv_geom(layer, &m->nodes[m->nodes[conv].inputs[0]].shape, 1);
    c->g.in_h -= pad[0] + pad[1];
    c->g.in_w -= pad[2] + pad[3];
    c->g.pad_top += pad[0];
    c->g.pad_left += pad[2];
    c->input = m->nodes[pad_node >= 0 ? pad_node : conv].inputs[0];
    c->conv_node = conv;
    c->bn_node = bn;
    c->last = relu >= 0 ? relu : bn;
    *n_members = 0;
    const int all[] = {pad_node, conv, bn, relu};
    for (int k = 0; k < 4; k++)
        if (all[k] >= 0 && all[k] != c->last)
            members[(*n_members)++] = all[k];
    c->thread_floats = (graft_f32_conv2d_fused_scratch_floats(&c->g) + 15) / 16 * 16;
    return 1;
}

graft_status graft__conv_step_prepare(const graft_model *m, graft__conv_step *c)
{
    const graft__layer *layer = m->nodes[c->conv_node].layer;
    const int64_t n = c->g.out_c, k = c->g.kernel_h * c->g.kernel_w * c->g.in_c;
    int64_t kernel = graft__shape_elems(&layer->weights[0].shape);
    float *tmp = graft__malloc(sizeof(float) * (size_t)(kernel + 3 * n));
    c->packed = graft__malloc_aligned(sizeof(float) * (size_t)graft_f32_gemm_packed_floats(k, n));
    if (!tmp || !c->packed) {
        graft__free(tmp);
        return graft__fail(GRAFT_E_NOMEM, "out of memory folding '%s'", layer->name);
    }
    float *bias = tmp + kernel, *mul = bias + n, *add = mul + n;
    graft__batch_norm_affine(m->nodes[c->bn_node].layer, mul, add);
    layer->ops->fold_affine(layer, mul, add, tmp, bias);
    graft_f32_gemm_pack(k, n, tmp, bias, c->packed);
    graft__free(tmp);
    return GRAFT_OK;
}

void graft__conv_step_free(graft__conv_step *c)
{
    graft__free_aligned(c->packed);
    memset(c, 0, sizeof *c);
}

void graft__conv_step_run(const graft__conv_step *c, int64_t batch, const float *x, float *y,
                          float *scratch, size_t scratch_stride, int threads)
{
    graft_conv_geom g = c->g;
    g.batch = batch;
    const int64_t pixels = batch * g.out_h * g.out_w;
    if (threads > pixels)
        threads = (int)pixels;
#pragma omp parallel num_threads(threads)
    {
        int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t p0 = pixels * t / nt, p1 = pixels * (t + 1) / nt;
        graft_f32_conv2d_fused__packed(&g, p0, p1, x, c->packed, c->act, y + p0 * g.out_c,
                                       scratch + (size_t)t * scratch_stride);
    }
}
