/* Inverted-residual blocks at inference: expand 1x1 -> BatchNorm -> ReLU6 ->
 * (ZeroPadding2D) -> depthwise -> BatchNorm -> ReLU6 -> project 1x1 ->
 * BatchNorm (-> Add with the block's input), as MobileNetV2 chains them, run as
 * one step a band of output rows at a time. The expand stage may be any
 * convolution, padded by a ZeroPadding2D before it (MobileNetV2's stem, 3x3
 * stride 2, before its first block), run through im2col. The expanded activation (six times
 * the block's input) then lives in a ring of rows that stays in L2 instead of
 * going to DRAM and back three times (expand, pad, depthwise), and each thread
 * runs its own rows through all three stages with no barrier between them. */
#include <omp.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "kernels/gemm.h"
#include "model/model.h"

/* Output pixels a band aims at (the project GEMM's rows per call) and the
 * bytes of ring plus band that should stay within a core's L2. */
enum { BAND_PIXELS = 48, BLOCK_L2_BYTES = 320 << 10 };
/* A small image splits by channels instead (run_split): at most this many
 * bytes of expanded and depthwise maps per image, and fewer output rows per
 * thread than this. With 7 rows (batch 1, 224x224 input, blocks 13 to 16)
 * one thread gets 4 and the other 3; split by channels the shares are even.
 * Measured at batch 1: those blocks 6-9% faster; the 14-row blocks were not
 * faster (the halo costs about what the split's wider maps do), so they
 * keep splitting rows. */
enum { SPLIT_BYTES = 1 << 20, SPLIT_ROWS_PER_THREAD = 4 };


static graft_conv_geom node_geom(const graft_model *m, int i)
{
    const graft__node *node = &m->nodes[i];
    return node->layer->ops->conv_geom(node->layer, &m->nodes[node->inputs[0]].shape, 1);
}

/* A Conv2D that is a plain 1x1 (no stride, padding or dilation) and linear. */
static int is_pointwise(const graft_model *m, int i)
{
    if (!graft__node_is(m, i, "Conv2D") || m->nodes[i].layer->ops->output_activation(m->nodes[i].layer))
        return 0;
    graft_conv_geom g = node_geom(m, i);
    return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
           g.pad_top == 0 && g.pad_left == 0;
}

/* The node after a BatchNorm -> ReLU(6) pair that follows conv, and the
 * activation; -1 when conv is not followed by exactly that. */
static int bn_relu_after(const graft_model *m, int conv, int *bn, graft__activation *act)
{
    *bn = graft__only_reader(m, conv);
    if (!graft__node_is(m, *bn, "BatchNormalization"))
        return -1;
    int relu = graft__only_reader(m, *bn);
    if (relu < 0)
        return -1;
    const graft__layer *l = m->nodes[relu].layer;
    if (graft__relu_as_activation(l, act))
        return relu;
    if (!strcmp(l->ops->class_name, "Activation") && l->ops->output_activation) {
        *act = l->ops->output_activation(l);
        if (*act == GRAFT__ACT_RELU || *act == GRAFT__ACT_RELU6)
            return relu;
    }
    return -1;
}

/* The nodes of one block as matched, before anything is allocated. */
typedef struct block_nodes {
    int input, expand_pad, expand, expand_bn, expand_relu, pad, dw, dw_bn, dw_relu, project,
        project_bn, add;
    int64_t pad_amounts[4];
} block_nodes;

/* Matches a block starting at node i (its expand conv, or its depthwise conv
 * when it has no expand stage); 0 when i starts none. */
/* A linear Conv2D, or a ZeroPadding2D read only by one, at i: the conv node
 * and its geometry over the unpadded input; -1 if neither. */
static int expand_conv_at(const graft_model *m, int i, int *pad_node, graft_conv_geom *g)
{
    int64_t pad[4] = {0, 0, 0, 0};
    int conv = i;
    *pad_node = -1;
    if (graft__node_is(m, i, "ZeroPadding2D") && graft__zero_padding_amounts(m->nodes[i].layer, pad)) {
        *pad_node = i;
        conv = graft__only_reader(m, i);
    }
    if (!graft__node_is(m, conv, "Conv2D") ||
        m->nodes[conv].layer->ops->output_activation(m->nodes[conv].layer))
        return -1;
    *g = node_geom(m, conv);
    g->in_h -= pad[0] + pad[1];
    g->in_w -= pad[2] + pad[3];
    g->pad_top += pad[0];
    g->pad_left += pad[2];
    return conv;
}

static int match_block(const graft_model *m, int i, block_nodes *b, graft__block *blk)
{
    memset(b, -1, sizeof *b);
    memset(b->pad_amounts, 0, sizeof b->pad_amounts);
    int next = i;
    b->expand = expand_conv_at(m, i, &b->expand_pad, &blk->expand);
    if (b->expand >= 0) {
        if ((b->expand_relu = bn_relu_after(m, b->expand, &b->expand_bn, &blk->expand_act)) < 0)
            return 0;
        next = graft__only_reader(m, b->expand_relu);
    }
    if (graft__node_is(m, next, "ZeroPadding2D") && graft__zero_padding_amounts(m->nodes[next].layer,
                                                                          b->pad_amounts)) {
        b->pad = next;
        next = graft__only_reader(m, next);
    }
    if (!graft__node_is(m, next, "DepthwiseConv2D") ||
        m->nodes[next].layer->ops->output_activation(m->nodes[next].layer))
        return 0;
    b->dw = next;
    if ((b->dw_relu = bn_relu_after(m, b->dw, &b->dw_bn, &blk->dw_act)) < 0)
        return 0;
    b->project = graft__only_reader(m, b->dw_relu);
    if (!is_pointwise(m, b->project))
        return 0;
    b->project_bn = graft__only_reader(m, b->project);
    if (!graft__node_is(m, b->project_bn, "BatchNormalization"))
        return 0;
    int first = b->expand_pad >= 0 ? b->expand_pad
                : b->expand >= 0   ? b->expand
                : b->pad >= 0      ? b->pad
                                   : b->dw;
    b->input = m->nodes[first].inputs[0];
    int add = graft__only_reader(m, b->project_bn);
    if (graft__node_is(m, add, "Add") && m->nodes[add].n_inputs == 2) {
        const int *in = m->nodes[add].inputs;
        int other = in[0] == b->project_bn ? in[1] : in[0];
        if (other == b->input &&
            graft__shape_equal(&m->nodes[b->input].shape, &m->nodes[add].shape))
            b->add = add;
    }
    /* The depthwise geometry over the padded rows, then its padding moved onto
     * the unpadded ones: taps on the zeros read nothing either way. */
    graft_conv_geom g = node_geom(m, b->dw);
    if (g.out_c != g.in_c || g.kernel_h > GRAFT_DW_ROW_MAX_KH)
        return 0;
    g.in_h -= b->pad_amounts[0] + b->pad_amounts[1];
    g.in_w -= b->pad_amounts[2] + b->pad_amounts[3];
    g.pad_top += b->pad_amounts[0];
    g.pad_left += b->pad_amounts[2];
    blk->dw = g;
    return 1;
}

/* Folds node bn into conv and packs the result for the fused GEMM. */
static float *fold_packed(const graft_model *m, int conv, int bn, int64_t k, int64_t n)
{
    const graft__layer *layer = m->nodes[conv].layer;
    int64_t kernel = graft__shape_elems(&layer->weights[0].shape);
    float *tmp = graft__malloc(sizeof(float) * (size_t)(kernel + 3 * n));
    size_t packed_floats = (size_t)graft_f32_gemm_packed_floats(k, n);
    float *packed = graft__malloc_aligned(sizeof(float) * packed_floats);
    if (!tmp || !packed) {
        graft__free(tmp);
        graft__free_aligned(packed);
        return NULL;
    }
    float *bias = tmp + kernel, *mul = bias + n, *add = mul + n;
    graft__batch_norm_affine(m->nodes[bn].layer, mul, add);
    layer->ops->fold_affine(layer, mul, add, tmp, bias);
    graft_f32_gemm_pack(k, n, tmp, bias, packed);
    graft__free(tmp);
    return packed;
}

/* The depthwise kernel and bias with bn folded in, in one buffer. */
static float *fold_dw(const graft_model *m, int dw, int bn, int64_t c)
{
    const graft__layer *layer = m->nodes[dw].layer;
    int64_t kernel = graft__shape_elems(&layer->weights[0].shape);
    float *out = graft__malloc_aligned(sizeof(float) * (size_t)(kernel + 3 * c));
    if (!out)
        return NULL;
    float *mul = out + kernel + c, *add = mul + c;
    graft__batch_norm_affine(m->nodes[bn].layer, mul, add);
    layer->ops->fold_affine(layer, mul, add, out, out + kernel);
    return out;
}

/* Rows per band and of the ring, and the scratch one thread needs. */
static void size_bands(graft__block *b)
{
    size_t im2col = b->has_expand ? graft_f32_conv2d_fused_scratch_floats(&b->expand) : 0;
    b->im2col_floats = (im2col + 15) / 16 * 16;
    const graft_conv_geom *g = &b->dw;
    const int64_t span = (g->kernel_h - 1) * g->dilation_h + 1;
    int64_t rows = (BAND_PIXELS + g->out_w - 1) / g->out_w;
    if (rows > g->out_h)
        rows = g->out_h;
    for (;;) {
        b->band_rows = rows;
        b->ring_rows = b->has_expand ? (rows - 1) * g->stride_h + span : 0;
        size_t floats = (size_t)((b->ring_rows * g->in_w + rows * g->out_w) * b->ce);
        b->thread_floats = (floats + 15) / 16 * 16 + b->im2col_floats;
        if (rows == 1 || floats * sizeof(float) <= BLOCK_L2_BYTES)
            return;
        rows--;
    }
}

/* The shared scratch of the channel split, or 0 where the block cannot split:
 * its expand stage must be a plain GEMM over the image's pixels. */
static void size_split(graft__block *b)
{
    const graft_conv_geom *e = &b->expand, *g = &b->dw;
    b->split_floats = 0;
    if (!b->has_expand || e->kernel_h != 1 || e->kernel_w != 1 || e->stride_h != 1 ||
        e->stride_w != 1 || e->out_h != b->x_h || e->out_w != b->x_w)
        return;
    size_t floats = (size_t)((g->in_h * g->in_w + g->out_h * g->out_w) * b->ce);
    if (floats * sizeof(float) <= SPLIT_BYTES)
        b->split_floats = floats;
}

void graft__block_free(graft__block *b)
{
    graft__free_aligned(b->expand_packed);
    graft__free_aligned(b->dw_weights);
    graft__free_aligned(b->project_packed);
    memset(b, 0, sizeof *b);
}

int graft__block_find(const graft_model *m, int start, graft__block *blk, int *members,
                      int *n_members)
{
    block_nodes b;
    memset(blk, 0, sizeof *blk);
    if (!match_block(m, start, &b, blk))
        return 0;
    const graft__shape *in = &m->nodes[b.input].shape;
    if (b.expand >= 0 && (blk->expand.out_h != blk->dw.in_h || blk->expand.out_w != blk->dw.in_w))
        return 0;
    blk->input = b.input;
    blk->last = b.add >= 0 ? b.add : b.project_bn;
    blk->has_expand = b.expand >= 0;
    blk->residual = b.add >= 0;
    blk->x_h = in->dim[0];
    blk->x_w = in->dim[1];
    blk->cin = in->dim[2];
    blk->ce = blk->dw.in_c;
    blk->cout = m->nodes[b.project].shape.dim[2];
    const int all[] = {b.expand_pad, b.expand, b.expand_bn, b.expand_relu, b.pad, b.dw,
                       b.dw_bn, b.dw_relu, b.project, b.project_bn, b.add};
    *n_members = 0;
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        if (all[k] >= 0 && all[k] != blk->last)
            members[(*n_members)++] = all[k];
    size_bands(blk);
    size_split(blk);
    blk->expand_node = b.expand;
    blk->expand_bn_node = b.expand_bn;
    blk->dw_node = b.dw;
    blk->dw_bn_node = b.dw_bn;
    blk->project_node = b.project;
    blk->project_bn_node = b.project_bn;
    return 1;
}

graft_status graft__block_prepare(const graft_model *m, graft__block *blk)
{
    if (blk->has_expand &&
        !(blk->expand_packed = fold_packed(m, blk->expand_node, blk->expand_bn_node,
                                           blk->expand.kernel_h * blk->expand.kernel_w * blk->cin,
                                           blk->ce)))
        return graft__fail(GRAFT_E_NOMEM, "out of memory folding '%s'",
                           m->nodes[blk->expand_node].layer->name);
    if (!(blk->dw_weights = fold_dw(m, blk->dw_node, blk->dw_bn_node, blk->ce)) ||
        !(blk->project_packed = fold_packed(m, blk->project_node, blk->project_bn_node, blk->ce,
                                            blk->cout)))
        return graft__fail(GRAFT_E_NOMEM, "out of memory folding '%s'",
                           m->nodes[blk->dw_node].layer->name);
    return GRAFT_OK;
}

/* Expanded rows [from, to) of one image into their ring slots (row iy in slot
 * iy mod ring_rows), one call per contiguous run of slots. */
static void expand_rows(const graft__block *b, const float *img, float *ring, float *im2col,
                        int64_t from, int64_t to)
{
    const int64_t W = b->dw.in_w;
    while (from < to) {
        int64_t slot = from % b->ring_rows, run = to - from;
        if (run > b->ring_rows - slot)
            run = b->ring_rows - slot;
        graft_f32_conv2d_fused__packed(&b->expand, from * W, (from + run) * W, img,
                                       b->expand_packed, b->expand_act, ring + slot * W * b->ce,
                                       im2col);
        from += run;
    }
}

/* Output rows [r0, r1) of the flattened (batch * out_h) rows, in bands. The
 * ring holds the expanded input rows [.., have) of the current image; a band
 * expands only the rows it needs beyond those. */
static void run_rows(const graft__block *b, const float *x, float *y, float *scratch, int64_t r0,
                     int64_t r1)
{
    const graft_conv_geom *g = &b->dw;
    const int64_t H = g->in_h, W = g->in_w, OH = g->out_h, OW = g->out_w;
    float *im2col = scratch, *ring = scratch + b->im2col_floats;
    float *band = ring + b->ring_rows * W * b->ce;
    const float *dw_kernel = b->dw_weights;
    const float *dw_bias = b->dw_weights + g->kernel_h * g->kernel_w * b->ce;
    int64_t image = -1, have = 0;
    for (int64_t r = r0; r < r1;) {
        const int64_t n = r / OH, oy0 = r % OH;
        int64_t oy1 = oy0 + b->band_rows;
        if (oy1 > OH)
            oy1 = OH;
        if (oy1 - oy0 > r1 - r)
            oy1 = oy0 + (r1 - r);
        const float *img = x + n * b->x_h * b->x_w * b->cin;
        if (n != image)
            image = n, have = 0;
        if (b->has_expand) {
            int64_t lo = oy0 * g->stride_h - g->pad_top;
            int64_t hi = (oy1 - 1) * g->stride_h - g->pad_top +
                         (g->kernel_h - 1) * g->dilation_h + 1;
            lo = lo < 0 ? 0 : lo;
            hi = hi > H ? H : hi;
            if (have < lo)
                have = lo;
            if (have < hi) {
                expand_rows(b, img, ring, im2col, have, hi);
                have = hi;
            }
        }
        for (int64_t oy = oy0; oy < oy1; oy++) {
            const float *rows[GRAFT_DW_ROW_MAX_KH];
            for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                rows[ky] = iy < 0 || iy >= H ? NULL
                           : b->has_expand   ? ring + (iy % b->ring_rows) * W * b->ce
                                             : img + iy * W * b->cin;
            }
            graft_f32_dwconv2d_row__direct(g, rows, dw_kernel, dw_bias, b->dw_act,
                                           band + (oy - oy0) * OW * b->ce);
        }
        /* With a residual the block keeps its size: output row oy is input row oy. */
        graft_f32_gemm_fused__packed((oy1 - oy0) * OW, b->cout, b->ce, band, b->ce,
                                     b->project_packed, GRAFT__ACT_LINEAR,
                                     b->residual ? img + oy0 * OW * b->cout : NULL, b->cout,
                                     y + (n * OH + oy0) * OW * b->cout, b->cout);
        r += oy1 - oy0;
    }
}

/* Thread t's share [lo, hi) of n columns, in whole panels of the packed GEMM. */
static void panel_share(int64_t n, int64_t t, int64_t nt, int64_t *lo, int64_t *hi)
{
    const int64_t nr = graft_f32_gemm_panel_cols(), panels = (n + nr - 1) / nr;
    *lo = panels * t / nt * nr;
    *hi = panels * (t + 1) / nt * nr;
    *hi = *hi < n ? *hi : n;
}

/* Image by image, each thread expands and filters its share of the expanded
 * channels over the whole image, then (after a barrier) projects its share of
 * the output channels. Called by every thread of the team. */
static void run_split(const graft__block *b, int64_t batch, const float *x, float *y,
                      float *shared)
{
    const graft_conv_geom *g = &b->dw;
    const int64_t H = g->in_h, W = g->in_w, OH = g->out_h, OW = g->out_w, ce = b->ce;
    float *expanded = shared, *filtered = shared + H * W * ce;
    const float *dw_kernel = b->dw_weights;
    const float *dw_bias = b->dw_weights + g->kernel_h * g->kernel_w * ce;
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t e0, e1, p0, p1;
    panel_share(ce, t, nt, &e0, &e1);
    panel_share(b->cout, t, nt, &p0, &p1);
    for (int64_t n = 0; n < batch; n++) {
        const float *img = x + n * b->x_h * b->x_w * b->cin;
        if (e0 < e1) {
            graft_f32_gemm_fused_cols__packed(H * W, ce, b->cin, img, b->cin, b->expand_packed,
                                              e0, e1, b->expand_act, NULL, 0, expanded, ce);
            for (int64_t oy = 0; oy < OH; oy++) {
                const float *rows[GRAFT_DW_ROW_MAX_KH];
                for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                    int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                    rows[ky] = iy < 0 || iy >= H ? NULL : expanded + iy * W * ce;
                }
                graft_f32_dwconv2d_row_channels__direct(g, rows, dw_kernel, dw_bias, b->dw_act,
                                                        e0, e1, filtered + oy * OW * ce);
            }
        }
#pragma omp barrier
        if (p0 < p1)
            graft_f32_gemm_fused_cols__packed(OH * OW, b->cout, ce, filtered, ce,
                                              b->project_packed, p0, p1, GRAFT__ACT_LINEAR,
                                              b->residual ? img : NULL, b->cout,
                                              y + n * OH * OW * b->cout, b->cout);
        /* The next image overwrites the maps this one's projection reads. */
        if (n + 1 < batch) {
#pragma omp barrier
        }
    }
}

void graft__block_run(const graft__block *b, int64_t batch, const float *x, float *y,
                      float *scratch, size_t scratch_stride, int threads)
{
    const int64_t rows = batch * b->dw.out_h;
    if (b->split_floats && threads > 1 && rows < (int64_t)SPLIT_ROWS_PER_THREAD * threads &&
        b->split_floats <= scratch_stride * (size_t)threads) {
#pragma omp parallel num_threads(threads)
        run_split(b, batch, x, y, scratch);
        return;
    }
    if (threads > rows)
        threads = (int)rows;
#pragma omp parallel num_threads(threads)
    {
        /* Contiguous shares: a thread's bands follow each other down an image,
         * so each expanded row is computed once. */
        int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        run_rows(b, x, y, scratch + (size_t)t * scratch_stride, r0, r1);
    }
}
