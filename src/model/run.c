/* The executor: plans activation memory for a maximum batch (each node output
 * in a slot reused after its last reader), then runs nodes in order. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

void graft__plan_free(graft__plan *plan)
{
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

/* Gives every node but the input a slot; a slot is recycled after its node's
 * last reader unless the node is pinned (kept for backward). */
static graft_status plan_assign_slots(const graft_model *m, graft__plan *p, int *busy,
                                      const char *pinned)
{
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__node *node = &m->nodes[i];
        p->node_slot[i] = -1;
        if (i != m->input_node) {
            size_t need;
            if (!graft__mul_size((size_t)p->max_batch,
                                 sizeof(float) * (size_t)graft__shape_elems(&node->shape), &need))
                return graft__fail(GRAFT_E_NOMEM, "batch %lld is too large for layer '%s'",
                                   (long long)p->max_batch, node->layer->name);
            p->node_slot[i] = take_slot(p, busy, need);
            busy[p->node_slot[i]] = 1;
        }
        for (int k = 0; k < node->n_inputs; k++) {
            int src = node->inputs[k];
            if (m->nodes[src].last_use == i && p->node_slot[src] >= 0 && !(pinned && pinned[src]))
                busy[p->node_slot[src]] = 0;
        }
        if (node->last_use < 0 && i != m->output_node && p->node_slot[i] >= 0 &&
            !(pinned && pinned[i]))
            busy[p->node_slot[i]] = 0;
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

graft_status graft__plan_build(const graft_model *m, graft__plan *p, int64_t max_batch,
                               const char *pinned)
{
    memset(p, 0, sizeof *p);
    p->max_batch = max_batch;
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

graft_status graft_model_prepare(graft_model *m, int64_t max_batch)
{
    if (!m || max_batch < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_prepare: batch must be >= 1");
    if (m->plan.max_batch >= max_batch)
        return GRAFT_OK;
    graft__plan_free(&m->plan);
    return graft__plan_build(m, &m->plan, max_batch, NULL);
}

static void run_node(graft_model *m, int i, int64_t batch, const float *input)
{
    const graft__node *node = &m->nodes[i];
    const float *inputs[64];
    graft__shape in_shapes[64];
    for (int k = 0; k < node->n_inputs && k < 64; k++) {
        int src = node->inputs[k];
        inputs[k] = src == m->input_node ? input : m->plan.slot_data[m->plan.node_slot[src]];
        in_shapes[k] = m->nodes[src].shape;
    }
    graft__forward_args args = {
        .batch = batch,
        .n_inputs = node->n_inputs,
        .inputs = inputs,
        .in_shapes = in_shapes,
        .output = m->plan.slot_data[m->plan.node_slot[i]],
        .out_shape = &node->shape,
        .scratch = m->plan.scratch,
        .training = 0,
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

static const float *node_output(const graft_model *m, int i, const float *input)
{
    return i == m->input_node ? input : m->plan.slot_data[m->plan.node_slot[i]];
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
    char *needed = rc ? NULL : graft__malloc((size_t)m->n_nodes);
    if (rc || !needed)
        return rc ? rc : graft__fail(GRAFT_E_NOMEM, "out of memory");
    mark_needed(m, targets, n_targets, needed);
    for (int i = 0; i < m->n_nodes; i++) {
        if (!needed[i])
            continue;
        if (i != m->input_node)
            run_node(m, i, batch, input);
        for (int t = 0; t < n_targets; t++) {
            if (targets[t] != i)
                continue;
            float *dst = t < n_layers ? outputs[t] : final_output;
            memcpy(dst, node_output(m, i, input),
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
