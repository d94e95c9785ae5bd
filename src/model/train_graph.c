#include "model/train_graph.h"

#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"

int graft__weight_learns(const graft__layer *layer, int w)
{
    return layer->trainable && layer->weights[w].trainable;
}

static int layer_learns(const graft__layer *layer)
{
    for (int w = 0; w < layer->n_weights; w++)
        if (graft__weight_learns(layer, w))
            return 1;
    return 0;
}

/* A node runs backward when it learns or feeds from a node that does; nodes
 * below the lowest learning layer compute no gradient at all. */
static void mark_backward(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    tg->first_backward = m->n_nodes;
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__node *node = &m->nodes[i];
        char needs = (char)layer_learns(node->layer);
        for (int k = 0; k < node->n_inputs; k++)
            needs |= tg->needs_backward[node->inputs[k]];
        tg->needs_backward[i] = needs;
        if (needs && i < tg->first_backward)
            tg->first_backward = i;
    }
    /* Backward of node j reads its inputs and its output: keep those. */
    for (int j = 0; j < m->n_nodes; j++) {
        if (!tg->needs_backward[j])
            continue;
        tg->pinned[j] = 1;
        for (int k = 0; k < m->nodes[j].n_inputs; k++)
            tg->pinned[m->nodes[j].inputs[k]] = 1;
    }
    tg->pinned[m->output_node] = 1;
}

/* A BatchNorm that runs backward computes the ReLU(6) that alone reads it, in
 * both passes: one pass over memory each way instead of two (the ReLU passes
 * were a fifth of full fine-tuning), and the BatchNorm's own output is not kept. */
static void plan_absorbed_relus(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    for (int i = 0; i < m->n_nodes; i++)
        tg->absorbed_by[i] = tg->absorbs[i] = -1;
    for (int b = 0; b < m->n_nodes; b++) {
        int r = graft__only_reader(m, b);
        graft__activation act;
        if (!tg->needs_backward[b] || !m->nodes[b].layer->ops->absorbs_relu || r < 0 ||
            m->nodes[r].n_inputs != 1 || !graft__relu_epilogue(m->nodes[r].layer, &act))
            continue;
        tg->absorbs[b] = r;
        tg->absorbed_by[r] = b;
        tg->pinned[b] = 0;
    }
}

/* A convolution that runs backward takes the padding of the ZeroPadding2D that
 * alone feeds it into its window, as inference does: no padded copy forward,
 * no crop of its gradient backward (a twentieth of full fine-tuning). Not into
 * a 1x1 convolution, which would then need im2col scratch it was not given. */
static void plan_absorbed_padding(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    /* A padding at or below the cache boundary may be where the forward starts
     * (from the cache or the fused frozen prefix): what is before it is not computed. */
    const int boundary = graft__cache_boundary(m, tg->bn_inference);
    for (int i = 0; i < m->n_nodes; i++)
        tg->pad_before[i] = -1;
    for (int c = 0; c < m->n_nodes; c++) {
        const graft__node *node = &m->nodes[c];
        const graft__layer *layer = node->layer;
        if (!tg->needs_backward[c] || !layer->ops->absorbs_padding || node->n_inputs != 1)
            continue;
        int p = node->inputs[0];
        graft_conv_geom g = layer->ops->conv_geom(layer, &m->nodes[p].shape, 1);
        if (p <= boundary || g.kernel_h * g.kernel_w == 1 || graft__only_reader(m, p) != c ||
            m->nodes[p].n_inputs != 1 || !graft__zero_padding_amounts(m->nodes[p].layer, tg->pads[c]))
            continue;
        tg->pad_before[c] = p;
        tg->absorbed_by[p] = c;
        tg->pinned[p] = 0;
        tg->pinned[m->nodes[p].inputs[0]] = 1;
    }
}

/* A convolution whose output only a trainable BatchNorm reads takes that
 * output's batch moments while writing it (each chunk still in cache), sparing
 * the BatchNorm a pass over memory when it normalises with batch statistics. */
static graft_status plan_conv_moments(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    const int boundary = graft__cache_boundary(m, tg->bn_inference);
    for (int i = 0; i < m->n_nodes; i++)
        tg->moments_for[i] = -1;
    if (tg->bn_inference)
        return GRAFT_OK;
    for (int b = 0; b < m->n_nodes; b++) {
        const graft__node *bn = &m->nodes[b];
        if (!bn->layer->ops->absorbs_relu || !bn->layer->trainable || !tg->needs_backward[b] ||
            bn->n_inputs != 1)
            continue;
        int c = bn->inputs[0];
        const graft__layer *conv = m->nodes[c].layer;
        if (c <= boundary || !conv->ops->writes_moments || graft__only_reader(m, c) != b ||
            (conv->ops->output_activation && conv->ops->output_activation(conv) != GRAFT__ACT_LINEAR))
            continue;
        int64_t ch = m->nodes[c].shape.dim[m->nodes[c].shape.rank - 1];
        tg->moments[b] = graft__malloc(sizeof(double) * 2 * GRAFT_CONV_TRAIN_PARTS * (size_t)ch);
        if (!tg->moments[b])
            return graft__fail(GRAFT_E_NOMEM, "out of memory for layer '%s'", bn->layer->name);
        tg->moments_for[c] = b;
    }
    return GRAFT_OK;
}

/* Input k of node j as training computes it: through an absorbed padding. */
static int input_of(const graft__train_graph *tg, int j, int k)
{
    const graft_model *m = tg->model;
    int src = m->nodes[j].inputs[k];
    return k == 0 && tg->pad_before[j] >= 0 ? m->nodes[src].inputs[0] : src;
}

/* A BatchNorm (batch statistics, a ReLU absorbed) whose output only a layer
 * that takes its moments reads, directly or through a padding it absorbs,
 * writes no output in training: that layer maps the BatchNorm's input band by
 * band itself (and again, image by image, for its weight gradient), so the
 * output is neither written nor kept for backward. Full fine-tuning of
 * MobileNetV2 at batch 32, node by node: the expanding BatchNorms before the
 * depthwise convolutions so, forward 334-336 -> 290-298 ms a step (the
 * depthwise layers no slower), peak RSS 2023 -> 1586 MB; then the depthwise
 * BatchNorms before the pointwise projections that take the packed path too,
 * forward 272-288 ms, BatchNorms' forward 29 -> 11 ms, peak RSS 1363 MB. */
static void plan_mapped_outputs(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    for (int i = 0; i < m->n_nodes; i++)
        tg->maps_bn[i] = tg->mapped_by[i] = -1;
    for (int k = 0; k < m->n_nodes; k++) {
        const graft__layer *next = m->nodes[k].layer;
        if (tg->moments_for[k] < 0 || m->nodes[k].n_inputs != 1 || !next->ops->takes_in_map)
            continue;
        const int via = m->nodes[k].inputs[0], w = input_of(tg, k, 0); /* via: w or a padding */
        const int b = tg->absorbed_by[w];
        if (b < 0 || !tg->moments[b] || graft__only_reader(m, via) != k ||
            (via != w && graft__only_reader(m, w) != via) ||
            !next->ops->takes_in_map(next, &m->nodes[via].shape,
                                     tg->pad_before[k] >= 0 ? tg->pads[k] : NULL, tg->max_batch))
            continue;
        tg->maps_bn[k] = b;
        tg->mapped_by[b] = k;
        tg->pinned[w] = 0;
    }
}

static graft__activation absorbed_act(const graft__train_graph *tg, int b)
{
    graft__activation act = GRAFT__ACT_LINEAR;
    if (tg->absorbs[b] >= 0)
        graft__relu_epilogue(tg->model->nodes[tg->absorbs[b]].layer, &act);
    return act;
}

/* The node whose value (and gradient) node i's forward writes: its absorbed ReLU's. */
static int written_by(const graft__train_graph *tg, int i)
{
    return tg->absorbs[i] >= 0 ? tg->absorbs[i] : i;
}

static size_t node_saved_bytes(const graft_model *m, int i, int64_t batch)
{
    const graft__layer *layer = m->nodes[i].layer;
    return layer->ops->saved_bytes ? layer->ops->saved_bytes(layer, &m->nodes[i].shape, batch) : 0;
}

typedef struct slot_pool {
    size_t *bytes;
    char *busy;
    int n;
} slot_pool;

/* The free slot that fits best (the largest, grown, when none fits; a new one when
 * all are busy). */
static int slot_acquire(slot_pool *p, size_t bytes)
{
    int best = -1;
    for (int s = 0; s < p->n; s++) {
        if (p->busy[s])
            continue;
        int fits = p->bytes[s] >= bytes, best_fits = best >= 0 && p->bytes[best] >= bytes;
        if (best < 0 || (fits && (!best_fits || p->bytes[s] < p->bytes[best])) ||
            (!fits && !best_fits && p->bytes[s] > p->bytes[best]))
            best = s;
    }
    if (best < 0)
        best = p->n++;
    if (p->bytes[best] < bytes)
        p->bytes[best] = bytes;
    p->busy[best] = 1;
    return best;
}

/* Node j writes its input's gradient over its output's (BatchNorm): j is that
 * input's only reader and so its first writer, which overwrites (`fresh`). In
 * place, the pass reads lines it writes, and DRAM is not read a third time for
 * the lines written (154 MB at block_1_expand_BN, full MobileNetV2 at batch
 * 32), and one gradient slot fewer is live: full fine-tuning's BatchNorm
 * backward went from 171 to 138-152 ms a step, its peak RSS 2131 -> 2003 MB. */
static int in_place(const graft__train_graph *tg, int j, const int *slot_of)
{
    const graft_model *m = tg->model;
    const graft__node *node = &m->nodes[j];
    if (!node->layer->ops->backward_in_place || !node->layer->ops->writes_fresh_grads ||
        node->n_inputs != 1 || written_by(tg, j) == m->output_node ||
        slot_of[written_by(tg, j)] < 0)
        return 0;
    int src = input_of(tg, j, 0);
    return tg->needs_backward[src] && src != m->input_node && slot_of[src] < 0 &&
           src == node->inputs[0] && graft__only_reader(m, src) == j &&
           graft__shape_elems(&m->nodes[src].shape) == graft__shape_elems(&node->shape);
}

/* Activation gradients live from the backward of a node's last consumer (which
 * writes it first) to the node's own backward: replaying the backward order once
 * assigns each a slot, reused after, so memory is the widest cut of live gradients
 * rather than their sum (5.4 GB for full MobileNetV2 fine-tuning at batch 32 before). */
static graft_status plan_gradient_slots(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    const int n = m->n_nodes;
    int *slot_of = graft__malloc(sizeof(int) * (size_t)n);
    slot_pool pool = {graft__calloc((size_t)n, sizeof(size_t)), graft__calloc((size_t)n, 1), 0};
    graft_status rc = slot_of && pool.bytes && pool.busy
                          ? GRAFT_OK : graft__fail(GRAFT_E_NOMEM, "out of memory planning gradients");
    for (int i = 0; !rc && i < n; i++) {
        slot_of[i] = -1;
        tg->first_writer[i] = -1;
    }
    const int out = m->output_node;
#define NODE_BYTES(i) (sizeof(float) * (size_t)(tg->max_batch * graft__shape_elems(&m->nodes[i].shape)))
    if (!rc && tg->needs_backward[out])
        slot_of[out] = slot_acquire(&pool, NODE_BYTES(out));
    for (int j = n - 1; !rc && j >= tg->first_backward; j--) {
        /* An absorbed ReLU's gradient lives on to its BatchNorm's backward. */
        if (!tg->needs_backward[j] || j == m->input_node || tg->absorbed_by[j] >= 0)
            continue;
        if (in_place(tg, j, slot_of)) {
            /* The input's gradient takes over the output's slot, still busy. */
            int src = input_of(tg, j, 0);
            slot_of[src] = slot_of[written_by(tg, j)];
            tg->first_writer[src] = j;
            continue;
        }
        for (int k = 0; k < m->nodes[j].n_inputs; k++) {
            int src = input_of(tg, j, k);
            if (tg->needs_backward[src] && src != m->input_node && slot_of[src] < 0) {
                slot_of[src] = slot_acquire(&pool, NODE_BYTES(src));
                tg->first_writer[src] = j;
            }
        }
        if (slot_of[written_by(tg, j)] >= 0)
            pool.busy[slot_of[written_by(tg, j)]] = 0;
    }
#undef NODE_BYTES
    if (!rc && !(tg->grad_slots = graft__calloc((size_t)(pool.n ? pool.n : 1), sizeof(float *))))
        rc = graft__fail(GRAFT_E_NOMEM, "out of memory planning gradients");
    for (int s = 0; !rc && s < pool.n; s++, tg->n_grad_slots++)
        if (!(tg->grad_slots[s] = graft__malloc_aligned(pool.bytes[s])))
            rc = graft__fail(GRAFT_E_NOMEM, "out of memory for activation gradients (%zu bytes)",
                             pool.bytes[s]);
    for (int i = 0; !rc && i < n; i++)
        tg->d_act[i] = slot_of[i] >= 0 ? tg->grad_slots[slot_of[i]] : NULL;
    graft__free(slot_of);
    graft__free(pool.bytes);
    graft__free(pool.busy);
    return rc;
}

/* A convolution (pointwise, or depthwise) whose output only a BatchNorm on batch statistics
 * reads, the BatchNorm's input gradient taking over its output gradient's slot,
 * maps that gradient a chunk at a time in its own backward from the BatchNorm's
 * per-channel sums: the convolution's output gradient (154 MB at
 * block_1_expand, full MobileNetV2 at batch 32) is never written to memory and
 * read back. Full fine-tuning's backward pass, timed node by node (steps 4-24
 * at batch 32): 669 -> 579 ms, BatchNorms 154 -> 95 ms, with the depthwise
 * backward taking both its gradients an image at a time. */
static graft_status plan_bn_grad_deferral(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    for (int c = 0; c < m->n_nodes; c++) {
        tg->bn_grad_from[c] = -1;
        const int b = tg->moments_for[c];
        const graft__layer *conv = m->nodes[c].layer;
        if (b < 0 || !tg->d_act[c] || tg->d_act[c] != tg->d_act[written_by(tg, b)] ||
            tg->first_writer[c] != b || !conv->ops->takes_bn_grad || m->nodes[c].n_inputs != 1 ||
            !conv->ops->takes_bn_grad(conv, &m->nodes[m->nodes[c].inputs[0]].shape,
                                      tg->pad_before[c] >= 0 ? tg->pads[c] : NULL, tg->max_batch))
            continue;
        int64_t ch = m->nodes[b].shape.dim[m->nodes[b].shape.rank - 1];
        if (!(tg->bn_coefs[b] = graft__malloc_aligned(sizeof(float) * 3 * (size_t)ch)))
            return graft__fail(GRAFT_E_NOMEM, "out of memory for layer '%s'", m->nodes[b].layer->name);
        tg->bn_grad_from[c] = b;
    }
    return GRAFT_OK;
}

/* The layer after a BatchNorm on batch statistics that alone writes the
 * BatchNorm's output gradient (and absorbs no padding: strided depthwise
 * convolutions, the ones that do, do not take sums) takes the BatchNorm's
 * backward sums from each chunk of that gradient as it writes it, sparing the
 * BatchNorm a pass over it and over its input: 2-12% off the pair's time at
 * MobileNetV2's pointwise and stride-1 depthwise layers (batch 32, call by call
 * in one process). */
static graft_status plan_bn_sums(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    for (int i = 0; i < m->n_nodes; i++)
        tg->sums_for[i] = -1;
    if (tg->bn_inference)
        return GRAFT_OK;
    for (int b = 0; b < m->n_nodes; b++) {
        const graft__node *bn = &m->nodes[b];
        if (!bn->layer->ops->absorbs_relu || !bn->layer->trainable || !tg->needs_backward[b] ||
            bn->n_inputs != 1 || !tg->d_act[written_by(tg, b)])
            continue;
        const int w = written_by(tg, b), k = tg->first_writer[w];
        if (k < 0 || m->nodes[k].n_inputs != 1 || input_of(tg, k, 0) != w)
            continue;
        if (m->nodes[k].inputs[0] != w || graft__only_reader(m, w) != k)
            continue;
        const graft__layer *next = m->nodes[k].layer;
        if (!next->ops->takes_bn_sums || !next->ops->writes_fresh_grads ||
            !next->ops->takes_bn_sums(next, &m->nodes[w].shape, NULL, tg->max_batch))
            continue;
        int64_t ch = bn->shape.dim[bn->shape.rank - 1];
        if (!(tg->bn_sums[b] = graft__malloc(sizeof(double) * 2 * GRAFT_BN_SUM_PARTS * (size_t)ch)))
            return graft__fail(GRAFT_E_NOMEM, "out of memory for layer '%s'", bn->layer->name);
        tg->sums_for[k] = b;
    }
    return GRAFT_OK;
}

static graft_status alloc_node_buffers(graft__train_graph *tg)
{
    const graft_model *m = tg->model;
    graft_status rc = plan_gradient_slots(tg);
    for (int i = 0; !rc && i < m->n_nodes; i++) {
        if (!tg->needs_backward[i])
            continue;
        size_t saved = node_saved_bytes(m, i, tg->max_batch);
        if (saved && !(tg->saved[i] = graft__malloc_aligned(saved)))
            return graft__fail(GRAFT_E_NOMEM, "out of memory for layer '%s'",
                               m->nodes[i].layer->name);
    }
    if (!rc)
        rc = plan_bn_grad_deferral(tg);
    return rc ? rc : plan_bn_sums(tg);
}

/* The frozen, deterministic nodes up to the cache boundary compute the same
 * in training as at inference, so the fused inference plan (folded
 * BatchNorms, fused blocks) runs them when no feature cache replaces them;
 * when the boundary is inside a fused step the layer-by-layer path stays. */
static graft_status plan_frozen_prefix(graft__train_graph *tg)
{
    graft_model *m = tg->model;
    int boundary = graft__cache_boundary(m, tg->bn_inference);
    tg->fused_end = m->input_node;
    if (boundary == m->input_node)
        return GRAFT_OK;
    graft_status rc = graft__plan_build_fused(m, &tg->fused, tg->max_batch);
    if (rc)
        return rc;
    /* A node the plan skips (computed inside an earlier one, with its epilogue)
     * or runs inside a fused step has no value of its own there; a later node
     * overwriting it in place does not matter, as nothing after it runs. */
    if (tg->fused.skip[boundary] || tg->fused.owner[boundary] < 0)
        graft__plan_free(&tg->fused);
    else
        tg->fused_end = boundary;
    return GRAFT_OK;
}

graft_status graft__train_graph_init(graft__train_graph *tg, graft_model *model, int64_t max_batch,
                                     int bn_inference)
{
    memset(tg, 0, sizeof *tg);
    tg->model = model;
    tg->max_batch = max_batch;
    tg->bn_inference = bn_inference;
    tg->start_node = model->input_node;
    tg->fused_end = model->input_node;
    size_t n = (size_t)model->n_nodes;
    tg->needs_backward = graft__calloc(n, 1);
    tg->pinned = graft__calloc(n, 1);
    tg->d_act = graft__calloc(n, sizeof(float *));
    tg->first_writer = graft__calloc(n, sizeof(int));
    tg->saved = graft__calloc(n, sizeof(void *));
    tg->absorbed_by = graft__calloc(n, sizeof(int));
    tg->absorbs = graft__calloc(n, sizeof(int));
    tg->pad_before = graft__calloc(n, sizeof(int));
    tg->pads = graft__calloc(n, sizeof *tg->pads);
    tg->moments_for = graft__calloc(n, sizeof(int));
    tg->moments = graft__calloc(n, sizeof(double *));
    tg->bn_grad_from = graft__calloc(n, sizeof(int));
    tg->bn_coefs = graft__calloc(n, sizeof(float *));
    tg->sums_for = graft__calloc(n, sizeof(int));
    tg->maps_bn = graft__calloc(n, sizeof(int));
    tg->mapped_by = graft__calloc(n, sizeof(int));
    tg->bn_sums = graft__calloc(n, sizeof(double *));
    tg->n_grads = model->n_params;
    tg->grads = graft__malloc_aligned(sizeof(float) * (size_t)(model->n_params ? model->n_params : 1));
    if (!tg->needs_backward || !tg->pinned || !tg->d_act || !tg->first_writer || !tg->saved ||
        !tg->absorbed_by || !tg->absorbs || !tg->pad_before || !tg->pads || !tg->moments_for || !tg->moments ||
        !tg->bn_grad_from || !tg->bn_coefs || !tg->sums_for || !tg->bn_sums || !tg->maps_bn || !tg->mapped_by || !tg->grads) {
        graft__train_graph_free(tg);
        return graft__fail(GRAFT_E_NOMEM, "out of memory preparing training");
    }
    memset(tg->grads, 0, sizeof(float) * (size_t)model->n_params);
    mark_backward(tg);
    plan_absorbed_relus(tg);
    plan_absorbed_padding(tg);
    graft_status rc = plan_conv_moments(tg);
    if (!rc)
        plan_mapped_outputs(tg);
    for (int i = 0; i < model->n_nodes && !rc; i++)
        if (tg->needs_backward[i] && i != model->input_node && !model->nodes[i].layer->ops->backward)
            rc = graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s' (%s) cannot be trained yet: it has "
                             "no backward pass", model->nodes[i].layer->name,
                             model->nodes[i].layer->ops->class_name);
    if (!rc)
        rc = graft__plan_build(model, &tg->plan, max_batch, tg->pinned);
    if (!rc)
        rc = alloc_node_buffers(tg);
    if (!rc)
        rc = plan_frozen_prefix(tg);
    /* Backward uses the same scratch as forward; it may need more (Dense keeps
     * dy*f' there), so the plan's scratch is sized by the same scratch_bytes. */
    if (rc)
        graft__train_graph_free(tg);
    return rc;
}

void graft__train_graph_free(graft__train_graph *tg)
{
    if (!tg->model)
        return;
    for (int i = 0; tg->saved && i < tg->model->n_nodes; i++)
        graft__free_aligned(tg->saved[i]);
    for (int s = 0; s < tg->n_grad_slots; s++)
        graft__free_aligned(tg->grad_slots[s]);
    graft__free(tg->grad_slots);
    graft__free(tg->first_writer);
    graft__free(tg->absorbed_by);
    graft__free(tg->absorbs);
    graft__free(tg->pad_before);
    graft__free(tg->pads);
    for (int i = 0; tg->moments && i < tg->model->n_nodes; i++)
        graft__free(tg->moments[i]);
    graft__free(tg->moments);
    graft__free(tg->moments_for);
    for (int i = 0; tg->bn_coefs && i < tg->model->n_nodes; i++)
        graft__free_aligned(tg->bn_coefs[i]);
    graft__free(tg->bn_coefs);
    graft__free(tg->bn_grad_from);
    for (int i = 0; tg->bn_sums && i < tg->model->n_nodes; i++)
        graft__free(tg->bn_sums[i]);
    graft__free(tg->bn_sums);
    graft__free(tg->sums_for);
    graft__free(tg->maps_bn);
    graft__free(tg->mapped_by);
    graft__free(tg->d_act);
    graft__free(tg->saved);
    graft__free(tg->needs_backward);
    graft__free(tg->pinned);
    graft__free_aligned(tg->grads);
    graft__plan_free(&tg->plan);
    graft__plan_free(&tg->fused);
    memset(tg, 0, sizeof *tg);
}

static float *activation(graft__train_graph *tg, int i, const float *input)
{
    return i == tg->start_node ? (float *)input : tg->plan.slot_data[tg->plan.node_slot[i]];
}

void graft__train_graph_start_at(graft__train_graph *tg, int node) { tg->start_node = node; }

/* A node is deterministic in training unless it draws randomness or batch moments. */
static int stable_in_training(const graft__layer *layer, int bn_inference)
{
    const char *cls = layer->ops->class_name;
    if (strcmp(cls, "Dropout") == 0)
        return 0;
    if (strcmp(cls, "BatchNormalization") == 0 && layer->trainable && !bn_inference)
        return 0;
    for (int w = 0; w < layer->n_weights; w++)
        if (graft__weight_learns(layer, w))
            return 0;
    return 1;
}

int graft__cache_boundary_of_rank(const graft_model *m, int bn_inference, int rank)
{
    int best = m->input_node;
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__node *node = &m->nodes[i];
        if (i != m->input_node && !stable_in_training(node->layer, bn_inference))
            break;
        /* i is a boundary when no later node reads a node before i. */
        int crossed = 0;
        for (int j = i + 1; j < m->n_nodes && !crossed; j++)
            for (int k = 0; k < m->nodes[j].n_inputs; k++)
                crossed |= m->nodes[j].inputs[k] < i;
        if (!crossed && (rank == 0 || node->shape.rank == rank))
            best = i;
    }
    return best;
}

int graft__cache_boundary(const graft_model *m, int bn_inference)
{
    return graft__cache_boundary_of_rank(m, bn_inference, 0);
}

/* BatchNorm b's backward map, from what its forward saved and (when its input
 * gradient is deferred) its backward's coefficients. */
static graft_bn_grad_map bn_map_of(const graft__train_graph *tg, int b)
{
    const graft__shape *s = &tg->model->nodes[b].shape;
    const int64_t ch = s->dim[s->rank - 1];
    const float *saved = tg->saved[b], *coefs = tg->bn_coefs[b];
    return (graft_bn_grad_map){absorbed_act(tg, b), saved + 2 * ch, saved + 3 * ch, saved,
                               saved + ch, coefs, coefs ? coefs + ch : NULL,
                               coefs ? coefs + 2 * ch : NULL};
}

void graft__train_forward(graft__train_graph *tg, const float *input, int64_t batch, int training,
                          uint64_t seed, int logits_output)
{
    graft_model *m = tg->model;
    tg->input = input;
    int first = tg->start_node;
    if (first == m->input_node && tg->fused_end != m->input_node) {
        graft__plan_forward_to(m, &tg->fused, input, batch, tg->fused_end,
                               activation(tg, tg->fused_end, input));
        first = tg->fused_end;
    }
    for (int i = first + 1; i < m->n_nodes; i++) {
        if (tg->absorbed_by[i] >= 0)
            continue;
        const graft__node *node = &m->nodes[i];
        const float *inputs[64];
        graft__shape in_shapes[64];
        for (int k = 0; k < node->n_inputs && k < 64; k++) {
            inputs[k] = activation(tg, input_of(tg, i, k), input);
            in_shapes[k] = m->nodes[node->inputs[k]].shape;
        }
        const int mapped = training && tg->maps_bn[i] >= 0;
        graft_bn_grad_map in_map;
        if (mapped) {
            in_map = bn_map_of(tg, tg->maps_bn[i]);
            inputs[0] = activation(tg, input_of(tg, tg->maps_bn[i], 0), input);
        }
        graft__forward_args args = {
            .batch = batch,
            .n_inputs = node->n_inputs,
            .inputs = inputs,
            .in_shapes = in_shapes,
            .output = activation(tg, written_by(tg, i), input),
            .out_shape = &node->shape,
            .scratch = tg->plan.scratch,
            .training = training,
            .batch_stats = training && node->layer->trainable && !tg->bn_inference,
            .saved = training ? tg->saved[i] : NULL,
            .seed = graft__seed_derive(seed, (uint64_t)i),
            .logits = logits_output && i == m->output_node,
            .epilogue = absorbed_act(tg, i),
            .in_pad = tg->pad_before[i] >= 0 ? tg->pads[i] : NULL,
            .moments_out = training && tg->moments_for[i] >= 0 ? tg->moments[tg->moments_for[i]] : NULL,
            .moments_in = training ? tg->moments[i] : NULL,
            .output_unused = training && tg->mapped_by[i] >= 0,
            .in_map = mapped ? &in_map : NULL,
        };
        node->layer->ops->forward(node->layer, &args);
    }
}

float *graft__train_output(graft__train_graph *tg)
{
    return activation(tg, tg->model->output_node, tg->input);
}

/* Layers accumulate into their inputs' gradients: each starts at zero just
 * before its first writer runs (its slot held another node's gradient before),
 * or the first writer, when its kind can, overwrites it. Returns the inputs to
 * overwrite (bit k: input k, its first occurrence). */
static unsigned start_input_grads(graft__train_graph *tg, int j, int64_t batch)
{
    const graft_model *m = tg->model;
    const int can_overwrite = m->nodes[j].layer->ops->writes_fresh_grads;
    unsigned fresh = 0;
    for (int k = 0; k < m->nodes[j].n_inputs; k++) {
        int src = input_of(tg, j, k), seen = 0;
        for (int e = 0; e < k; e++)
            seen |= input_of(tg, j, e) == src;
        if (tg->first_writer[src] != j || !tg->d_act[src] || seen)
            continue;
        if (can_overwrite && k < 32) /* the bits `fresh` has */
            fresh |= 1u << k;
        else
            memset(tg->d_act[src], 0,
                   sizeof(float) * (size_t)(batch * graft__shape_elems(&m->nodes[src].shape)));
    }
    return fresh;
}

static graft_bn_sums_out bn_sums_of(graft__train_graph *tg, int b)
{
    const graft__shape *s = &tg->model->nodes[b].shape;
    const int64_t ch = s->dim[s->rank - 1];
    return (graft_bn_sums_out){bn_map_of(tg, b), activation(tg, input_of(tg, b, 0), tg->input),
                               tg->bn_sums[b], tg->bn_sums[b] + GRAFT_BN_SUM_PARTS * ch};
}

static void backward_node(graft__train_graph *tg, int i, int64_t batch, uint64_t seed, int logits,
                          unsigned fresh)
{
    graft_model *m = tg->model;
    const graft__node *node = &m->nodes[i];
    const graft__layer *layer = node->layer;
    const float *inputs[64];
    float *d_inputs[64], *d_weights[GRAFT__MAX_WEIGHTS];
    graft__shape in_shapes[64];
    for (int k = 0; k < node->n_inputs && k < 64; k++) {
        int src = input_of(tg, i, k);
        inputs[k] = activation(tg, src, tg->input);
        in_shapes[k] = m->nodes[node->inputs[k]].shape;
        d_inputs[k] = tg->needs_backward[src] ? tg->d_act[src] : NULL;
    }
    graft_bn_grad_map in_map;
    if (tg->maps_bn[i] >= 0) {
        in_map = bn_map_of(tg, tg->maps_bn[i]);
        inputs[0] = activation(tg, input_of(tg, tg->maps_bn[i], 0), tg->input);
    }
    for (int w = 0; w < layer->n_weights; w++)
        d_weights[w] = graft__weight_learns(layer, w) ? tg->grads + layer->weights[w].offset : NULL;
    graft_bn_grad_map bn_map;
    const int bn = tg->bn_grad_from[i];
    if (bn >= 0)
        bn_map = bn_map_of(tg, bn);
    graft_bn_sums_out sums_out, sums_in;
    if (tg->sums_for[i] >= 0)
        sums_out = bn_sums_of(tg, tg->sums_for[i]);
    if (tg->bn_sums[i])
        sums_in = bn_sums_of(tg, i);
    graft__backward_args args = {
        .batch = batch,
        .n_inputs = node->n_inputs,
        .inputs = inputs,
        .in_shapes = in_shapes,
        .output = activation(tg, written_by(tg, i), tg->input),
        .out_shape = &node->shape,
        .d_output = tg->d_act[written_by(tg, i)],
        .d_inputs = d_inputs,
        .d_weights = d_weights,
        .scratch = tg->plan.scratch,
        .batch_stats = layer->trainable && !tg->bn_inference,
        .saved = tg->saved[i],
        .seed = graft__seed_derive(seed, (uint64_t)i),
        .logits = logits,
        .epilogue = absorbed_act(tg, i),
        .fresh = fresh,
        .in_pad = tg->pad_before[i] >= 0 ? tg->pads[i] : NULL,
        .defer_input_grad = tg->bn_coefs[i],
        .d_output_bn = bn >= 0 ? &bn_map : NULL,
        .d_input_bn_sums = tg->sums_for[i] >= 0 ? &sums_out : NULL,
        .bn_sums_in = tg->bn_sums[i] ? &sums_in : NULL,
        .in_map = tg->maps_bn[i] >= 0 ? &in_map : NULL,
    };
    layer->ops->backward(layer, &args);
}

void graft__train_backward(graft__train_graph *tg, const float *d_output, int64_t batch,
                           uint64_t seed, int logits_output)
{
    graft_model *m = tg->model;
    int out = m->output_node;
    if (!tg->needs_backward[out])
        return;
    memcpy(tg->d_act[out], d_output,
           sizeof(float) * (size_t)(batch * graft__shape_elems(&m->nodes[out].shape)));
    for (int i = m->n_nodes - 1; i >= tg->first_backward; i--)
        if (tg->needs_backward[i] && i != m->input_node && tg->absorbed_by[i] < 0) {
            unsigned fresh = start_input_grads(tg, i, batch);
            backward_node(tg, i, batch, seed, logits_output && i == out, fresh);
        }
}
