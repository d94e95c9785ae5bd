/* The executor: plans activation memory for a maximum batch (each node output
 * in a slot reused after its last reader), then runs nodes in order. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

void graft__plan_free(graft__plan *plan)
{
    for (int i = 0; plan->folded && i < plan->n_folded; i++)
        graft__free_aligned(plan->folded[i]);
    graft__free(plan->folded);
    for (int i = 0; i < plan->n_blocks; i++)
        graft__block_free(&plan->blocks[i]);
    graft__free(plan->blocks);
    graft__free(plan->block_at);
    for (int i = 0; i < plan->n_convs; i++)
        graft__conv_step_free(&plan->convs[i]);
    graft__free(plan->convs);
    graft__free(plan->conv_at);
    graft__free_aligned(plan->block_scratch);
    graft__free(plan->skip);
    graft__free(plan->interior);
    graft__free(plan->epilogue);
    graft__free(plan->owner);
    for (int i = 0; i < plan->n_slots; i++)
        graft__free_aligned(plan->slot_data[i]);
    graft__free(plan->slot_data);
    graft__free(plan->slot_bytes);
    graft__free(plan->node_slot);
    graft__free_aligned(plan->scratch);
    memset(plan, 0, sizeof *plan);
}

/* Picks the free slot that wastes least (or grows the largest free one). */
static int take_slot(graft__plan *p, const int *busy, size_t need)
{
    int best = -1, largest = -1;
    for (int s = 0; s < p->n_slots; s++) {
        if (busy[s])
            continue;
        if (p->slot_bytes[s] >= need && (best < 0 || p->slot_bytes[s] < p->slot_bytes[best]))
            best = s;
        if (largest < 0 || p->slot_bytes[s] > p->slot_bytes[largest])
            largest = s;
    }
    if (best < 0 && largest >= 0) {
        p->slot_bytes[largest] = need;
        best = largest;
    }
    if (best < 0) {
        best = p->n_slots++;
        p->slot_bytes[best] = need;
    }
    return best;
}

/* Where node i runs: inside a fused block, at the block's last node. */
static int exec_at(const graft__plan *p, int i)
{
    if (p->block_at && p->block_at[i] >= 0)
        return p->blocks[p->block_at[i]].last;
    if (p->conv_at && p->conv_at[i] >= 0)
        return p->convs[p->conv_at[i]].last;
    return i;
}

/* The last step reading the buffer a node writes: with fusion several nodes
 * share one buffer, which lives until the last reader of any of them, and a
 * fused block reads its input when its last node runs. */
static int buffer_last_use(const graft_model *m, const graft__plan *p, int owner)
{
    int last = -1;
    for (int r = 0; r < m->n_nodes; r++)
        for (int k = 0; k < m->nodes[r].n_inputs; k++) {
            int src = m->nodes[r].inputs[k];
            if ((p->owner ? p->owner[src] : src) == owner && exec_at(p, r) > last)
                last = exec_at(p, r);
        }
    return last;
}

/* Gives every node that owns a buffer a slot; a slot is recycled after the last
 * reader of its buffer unless a node in it is pinned (kept for backward). */
static graft_status plan_assign_slots(const graft_model *m, graft__plan *p, int *busy,
                                      const char *pinned)
{
    int *release = graft__calloc((size_t)m->n_nodes, sizeof(int));
    if (!release)
        return graft__fail(GRAFT_E_NOMEM, "out of memory planning the graph");
    for (int i = 0; i < m->n_nodes; i++)
        release[i] = -2; /* -2: not an owner */
    for (int i = 0; i < m->n_nodes; i++) {
        int owner = p->owner ? p->owner[i] : i;
        if (owner != i)
            continue;
        int keep = (pinned && pinned[i]) || i == m->output_node ||
                   (p->owner && p->owner[m->output_node] == i);
        release[i] = keep ? m->n_nodes : buffer_last_use(m, p, i);
    }
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__node *node = &m->nodes[i];
        int owner = p->owner ? p->owner[i] : i;
        p->node_slot[i] = -1;
        if (owner < 0) {
            /* Inside a fused block: never stored. */
        } else if (owner != i) {
            p->node_slot[i] = p->node_slot[owner];
        } else if (i != m->input_node) {
            size_t need;
            if (!graft__mul_size((size_t)p->max_batch,
                                 sizeof(float) * (size_t)graft__shape_elems(&node->shape), &need)) {
                graft__free(release);
                return graft__fail(GRAFT_E_NOMEM, "batch %lld is too large for layer '%s'",
                                   (long long)p->max_batch, node->layer->name);
            }
            p->node_slot[i] = take_slot(p, busy, need);
            busy[p->node_slot[i]] = 1;
        }
        /* Buffers whose last reader is this node (or dead ends) free up now. */
        for (int o = 0; o <= i; o++)
            if (release[o] >= -1 && (release[o] == i || (release[o] == -1 && o == i)) &&
                p->node_slot[o] >= 0)
                busy[p->node_slot[o]] = 0;
    }
    graft__free(release);
    return GRAFT_OK;
}

static int consumers(const graft_model *m, int node, int *only)
{
    int n = 0;
    for (int i = 0; i < m->n_nodes; i++)
        for (int k = 0; k < m->nodes[i].n_inputs; k++)
            if (m->nodes[i].inputs[k] == node) {
                n++;
                *only = i;
            }
    return n;
}

/* Layers that may overwrite their input when nothing else reads it. */
static int elementwise(const graft__layer *layer)
{
    static const char *const kinds[] = {"BatchNormalization", "ReLU", "Activation", "Dropout",
                                        "Flatten", "Reshape", "Rescaling"};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
        if (!strcmp(layer->ops->class_name, kinds[i]))
            return 1;
    return 0;
}

static graft_status fold_into(const graft_model *m, graft__plan *p, int conv, int bn)
{
    const graft__layer *layer = m->nodes[conv].layer;
    int64_t ch = m->nodes[conv].shape.dim[m->nodes[conv].shape.rank - 1];
    int64_t kernel = graft__shape_elems(&layer->weights[0].shape);
    float *mul = graft__malloc(sizeof(float) * 2 * (size_t)ch);
    p->folded[conv] = graft__malloc_aligned(sizeof(float) * (size_t)(kernel + ch));
    if (!mul || !p->folded[conv]) {
        graft__free(mul);
        return graft__fail(GRAFT_E_NOMEM, "out of memory folding '%s'", layer->name);
    }
    graft__batch_norm_affine(m->nodes[bn].layer, mul, mul + ch);
    layer->ops->fold_affine(layer, mul, mul + ch, p->folded[conv], p->folded[conv] + kernel);
    graft__free(mul);
    return GRAFT_OK;
}

/* Marks a fused step's inner nodes: run inside it, no buffer. */
static void mark_members(graft__plan *p, int *at, int index, const int *members, int n)
{
    for (int k = 0; k < n; k++) {
        at[members[k]] = index;
        p->skip[members[k]] = p->interior[members[k]] = 1;
        p->owner[members[k]] = -1;
    }
}

/* Inverted-residual blocks (block.c), then convolutions with their BatchNorm
 * and ReLU (conv_step.c), whose inner outputs nobody else reads run as one
 * step at their last node; the nodes inside get no buffer. The per-thread
 * scratch is sized for the largest step. */
static graft_status find_steps(const graft_model *m, graft__plan *p)
{
    p->block_at = graft__malloc(sizeof(int) * (size_t)m->n_nodes);
    p->conv_at = graft__malloc(sizeof(int) * (size_t)m->n_nodes);
    p->blocks = graft__calloc((size_t)m->n_nodes, sizeof(graft__block));
    p->convs = graft__calloc((size_t)m->n_nodes, sizeof(graft__conv_step));
    if (!p->block_at || !p->conv_at || !p->blocks || !p->convs)
        return graft__fail(GRAFT_E_NOMEM, "out of memory planning the graph");
    for (int i = 0; i < m->n_nodes; i++)
        p->block_at[i] = p->conv_at[i] = -1;
    int members[16], n_members;
    for (int i = 0; i < m->n_nodes; i++) {
        graft__block *b = &p->blocks[p->n_blocks];
        if (p->block_at[i] >= 0 || !graft__block_find(m, i, b, members, &n_members))
            continue;
        graft_status rc = graft__block_prepare(m, b);
        p->n_blocks++;
        if (rc)
            return rc;
        p->block_at[b->last] = p->n_blocks - 1;
        mark_members(p, p->block_at, p->n_blocks - 1, members, n_members);
        if (b->thread_floats > p->block_stride)
            p->block_stride = b->thread_floats;
    }
    for (int i = 0; i < m->n_nodes; i++) {
        graft__conv_step *c = &p->convs[p->n_convs];
        if (p->block_at[i] >= 0 || p->conv_at[i] >= 0 ||
            !graft__conv_step_find(m, i, c, members, &n_members))
            continue;
        int taken = p->block_at[c->last] >= 0;
        for (int k = 0; k < n_members; k++)
            taken |= p->block_at[members[k]] >= 0;
        if (taken) {
            memset(c, 0, sizeof *c);
            continue;
        }
        graft_status rc = graft__conv_step_prepare(m, c);
        p->n_convs++;
        if (rc)
            return rc;
        p->conv_at[c->last] = p->n_convs - 1;
        mark_members(p, p->conv_at, p->n_convs - 1, members, n_members);
        if (c->thread_floats > p->block_stride)
            p->block_stride = c->thread_floats;
    }
    if (!p->n_blocks && !p->n_convs)
        return GRAFT_OK;
    p->block_threads = graft_threads();
    /* A block that splits small images by channels shares the threads' scratch. */
    for (int k = 0; k < p->n_blocks; k++) {
        size_t share = (p->blocks[k].split_floats + (size_t)p->block_threads - 1) /
                       (size_t)p->block_threads;
        if (share > p->block_stride)
            p->block_stride = (share + 15) / 16 * 16;
    }
    size_t bytes;
    if (!graft__mul_size(p->block_stride * sizeof(float), (size_t)p->block_threads, &bytes) ||
        !(p->block_scratch = graft__malloc_aligned(bytes)))
        return graft__fail(GRAFT_E_NOMEM, "out of memory for block scratch");
    return GRAFT_OK;
}

/* Conv -> BatchNorm (-> ReLU) chains become one node; elementwise layers whose
 * input has no other reader run in place. */
static graft_status analyse_fusion(const graft_model *m, graft__plan *p)
{
    size_t n = (size_t)m->n_nodes;
    p->skip = graft__calloc(n, 1);
    p->interior = graft__calloc(n, 1);
    p->folded = graft__calloc(n, sizeof(float *));
    p->epilogue = graft__calloc(n, sizeof(graft__activation));
    p->owner = graft__calloc(n, sizeof(int));
    if (!p->skip || !p->interior || !p->folded || !p->epilogue || !p->owner)
        return graft__fail(GRAFT_E_NOMEM, "out of memory planning the graph");
    p->n_folded = m->n_nodes;
    p->fused = 1;
    for (int i = 0; i < m->n_nodes; i++)
        p->owner[i] = i;
    graft_status rc = find_steps(m, p);
    if (rc)
        return rc;
    float probe[1];
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__node *node = &m->nodes[i];
        const graft__layer *layer = node->layer;
        int next = -1, after = -1;
        if (p->block_at[i] >= 0 || p->conv_at[i] >= 0)
            continue;
        if (layer->ops->fold_affine && layer->ops->output_activation &&
            layer->ops->output_activation(layer) == GRAFT__ACT_LINEAR && i != m->output_node &&
            consumers(m, i, &next) == 1 && m->nodes[next].n_inputs == 1 &&
            !strcmp(m->nodes[next].layer->ops->class_name, "BatchNormalization")) {
            rc = fold_into(m, p, i, next);
            if (rc)
                return rc;
            (void)probe;
            p->skip[next] = 1;
            p->owner[next] = i;
            p->interior[i] = 1;
            graft__activation act;
            if (next != m->output_node && consumers(m, next, &after) == 1 &&
                graft__relu_epilogue(m->nodes[after].layer, &act)) {
                p->epilogue[i] = act;
                p->skip[after] = 1;
                p->owner[after] = i;
                p->interior[next] = 1;
            }
            continue;
        }
        if (p->skip[i] || !elementwise(layer) || node->n_inputs != 1)
            continue;
        int src = node->inputs[0], only = -1;
        if (src != m->input_node && consumers(m, src, &only) == 1 && !p->interior[src] &&
            p->owner[src] >= 0) {
            p->owner[i] = p->owner[src];
            p->interior[src] = 1;
        }
    }
    return GRAFT_OK;
}

size_t graft__node_scratch(const graft_model *m, int i, int64_t batch)
{
    const graft__node *node = &m->nodes[i];
    if (!node->layer->ops->scratch_bytes)
        return 0;
    graft__shape in[64];
    for (int k = 0; k < node->n_inputs && k < 64; k++)
        in[k] = m->nodes[node->inputs[k]].shape;
    return node->layer->ops->scratch_bytes(node->layer, node->n_inputs, in, &node->shape, batch);
}

static graft_status plan_build(const graft_model *m, graft__plan *p, int64_t max_batch,
                              const char *pinned, int fuse)
{
    memset(p, 0, sizeof *p);
    p->max_batch = max_batch;
    if (fuse) {
        graft_status rc = analyse_fusion(m, p);
        if (rc) {
            graft__plan_free(p);
            return rc;
        }
    }
    int *busy = graft__calloc((size_t)m->n_nodes, sizeof(int));
    p->slot_bytes = graft__calloc((size_t)m->n_nodes, sizeof(size_t));
    p->node_slot = graft__calloc((size_t)m->n_nodes, sizeof(int));
    p->slot_data = graft__calloc((size_t)m->n_nodes, sizeof(float *));
    graft_status rc = busy && p->slot_bytes && p->node_slot && p->slot_data
                          ? plan_assign_slots(m, p, busy, pinned)
                          : graft__fail(GRAFT_E_NOMEM, "out of memory planning the graph");
    graft__free(busy);
    for (int s = 0; !rc && s < p->n_slots; s++)
        if (!(p->slot_data[s] = graft__malloc_aligned(p->slot_bytes[s])))
            rc = graft__fail(GRAFT_E_NOMEM, "out of memory for activations (%zu bytes)",
                             p->slot_bytes[s]);
    for (int i = 0; !rc && i < m->n_nodes; i++) {
        size_t bytes = graft__node_scratch(m, i, max_batch);
        p->scratch_bytes = bytes > p->scratch_bytes ? bytes : p->scratch_bytes;
    }
    if (!rc && p->scratch_bytes && !(p->scratch = graft__malloc_aligned(p->scratch_bytes)))
        rc = graft__fail(GRAFT_E_NOMEM, "out of memory for scratch (%zu bytes)", p->scratch_bytes);
    if (rc)
        graft__plan_free(p);
    return rc;
}

graft_status graft__plan_build(const graft_model *m, graft__plan *p, int64_t max_batch,
                               const char *pinned)
{
    return plan_build(m, p, max_batch, pinned, 0);
}

graft_status graft__plan_build_fused(const graft_model *m, graft__plan *p, int64_t max_batch)
{
    return plan_build(m, p, max_batch, NULL, 1);
}

graft_status graft_model_prepare(graft_model *m, int64_t max_batch)
{
    if (!m || max_batch < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_prepare: batch must be >= 1");
    /* Fused steps keep scratch for the threads there were at planning. */
    int more_threads = m->plan.block_scratch && graft_threads() > m->plan.block_threads;
    if (m->plan.max_batch >= max_batch && !more_threads)
        return GRAFT_OK;
    if (m->plan.max_batch > max_batch)
        max_batch = m->plan.max_batch;
    graft__plan_free(&m->plan);
    return graft__plan_build_fused(m, &m->plan, max_batch);
}

static const float *node_output(const graft_model *m, const graft__plan *p, int i,
                                const float *input)
{
    return i == m->input_node ? input : p->slot_data[p->node_slot[i]];
}

static void run_node(graft_model *m, const graft__plan *p, int i, int64_t batch,
                     const float *input)
{
    const graft__node *node = &m->nodes[i];
    if (p->skip && p->skip[i])
        return;
    /* A fused step's inner nodes have no buffer: it reads only its input. It
     * runs on the threads graft_set_threads allows now, up to the number its
     * scratch was planned for. */
    int threads = graft_threads() < p->block_threads ? graft_threads() : p->block_threads;
    if (p->block_at && p->block_at[i] >= 0) {
        const graft__block *b = &p->blocks[p->block_at[i]];
        graft__block_run(b, batch, node_output(m, p, b->input, input),
                         p->slot_data[p->node_slot[i]], p->block_scratch, p->block_stride,
                         threads);
        return;
    }
    if (p->conv_at && p->conv_at[i] >= 0) {
        const graft__conv_step *c = &p->convs[p->conv_at[i]];
        graft__conv_step_run(c, batch, node_output(m, p, c->input, input),
                             p->slot_data[p->node_slot[i]], p->block_scratch,
                             p->block_stride, threads);
        return;
    }
    const float *inputs[64];
    graft__shape in_shapes[64];
    for (int k = 0; k < node->n_inputs && k < 64; k++) {
        int src = node->inputs[k];
        inputs[k] = src == m->input_node ? input : p->slot_data[p->node_slot[src]];
        in_shapes[k] = m->nodes[src].shape;
    }
    const float *folded = p->folded ? p->folded[i] : NULL;
    graft__forward_args args = {
        .batch = batch,
        .n_inputs = node->n_inputs,
        .inputs = inputs,
        .in_shapes = in_shapes,
        .output = p->slot_data[p->node_slot[i]],
        .out_shape = &node->shape,
        .scratch = p->scratch,
        .training = 0,
        .folded_kernel = folded,
        .folded_bias = folded ? folded + graft__shape_elems(&node->layer->weights[0].shape) : NULL,
        .epilogue = p->epilogue ? p->epilogue[i] : GRAFT__ACT_LINEAR,
    };
    node->layer->ops->forward(node->layer, &args);
}

/* The first node applying the named layer, or -1. */
static int node_of_layer(const graft_model *m, const char *name)
{
    for (int i = 0; i < m->n_nodes; i++)
        if (strcmp(m->nodes[i].layer->name, name) == 0)
            return i;
    return -1;
}

/* Marks the nodes the targets depend on. */
static void mark_needed(const graft_model *m, const int *targets, int n, char *needed)
{
    memset(needed, 0, (size_t)m->n_nodes);
    for (int t = 0; t < n; t++)
        if (targets[t] >= 0)
            needed[targets[t]] = 1;
    for (int i = m->n_nodes - 1; i >= 0; i--)
        if (needed[i])
            for (int k = 0; k < m->nodes[i].n_inputs; k++)
                needed[m->nodes[i].inputs[k]] = 1;
}


graft_status graft__plan_forward_to(graft_model *m, graft__plan *p, const float *input,
                                   int64_t batch, int target, float *dst)
{
    char *needed = graft__malloc((size_t)m->n_nodes);
    if (!needed)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    mark_needed(m, &target, 1, needed);
    for (int i = 0; i <= target; i++)
        if (needed[i] && i != m->input_node)
            run_node(m, p, i, batch, input);
    memcpy(dst, node_output(m, p, target, input),
           sizeof(float) * (size_t)(batch * graft__shape_elems(&m->nodes[target].shape)));
    graft__free(needed);
    return GRAFT_OK;
}

graft_status graft_model_forward_layers(graft_model *m, const float *input, int64_t batch,
                                        int n_layers, const char *const *names,
                                        float *const *outputs, float *final_output)
{
    if (!m || !input || batch < 1 || n_layers < 0 || (n_layers && (!names || !outputs)))
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_forward: bad arguments");
    int targets[65], n_targets = 0;
    if (n_layers > 64)
        return graft__fail(GRAFT_E_INVALID_ARG, "at most 64 layer outputs per call");
    for (int t = 0; t < n_layers; t++) {
        targets[n_targets] = node_of_layer(m, names[t]);
        if (targets[n_targets++] < 0)
            return graft__fail(GRAFT_E_NOT_FOUND, "%s: no layer named '%s'", m->path, names[t]);
    }
    if (final_output)
        targets[n_targets++] = m->output_node;
    graft_status rc = graft_model_prepare(m, batch);
    /* A requested output that fusion overwrites needs the unfused plan. */
    graft__plan *p = &m->plan;
    for (int t = 0; !rc && t < n_targets; t++)
        if (m->plan.interior && m->plan.interior[targets[t]])
            p = &m->plain_plan;
    if (!rc && p == &m->plain_plan && m->plain_plan.max_batch < batch) {
        graft__plan_free(&m->plain_plan);
        rc = graft__plan_build(m, &m->plain_plan, batch, NULL);
    }
    char *needed = rc ? NULL : graft__malloc((size_t)m->n_nodes);
    if (rc || !needed)
        return rc ? rc : graft__fail(GRAFT_E_NOMEM, "out of memory");
    mark_needed(m, targets, n_targets, needed);
    for (int i = 0; i < m->n_nodes; i++) {
        if (!needed[i])
            continue;
        if (i != m->input_node)
            run_node(m, p, i, batch, input);
        for (int t = 0; t < n_targets; t++) {
            if (targets[t] != i)
                continue;
            float *dst = t < n_layers ? outputs[t] : final_output;
            memcpy(dst, node_output(m, p, i, input),
                   sizeof(float) * (size_t)(batch * graft__shape_elems(&m->nodes[i].shape)));
        }
    }
    graft__free(needed);
    return GRAFT_OK;
}

graft_status graft_model_forward(graft_model *m, const float *input, int64_t batch, float *output)
{
    if (!output)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_forward: output is required");
    return graft_model_forward_layers(m, input, batch, 0, NULL, NULL, output);
}
