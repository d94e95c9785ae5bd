/* Public accessors of a loaded model. */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

void graft_model_free(graft_model *m)
{
    if (!m)
        return;
    graft__plan_free(&m->plan);
    graft__plan_free(&m->plain_plan);
    graft__graph_free(m);
    for (int64_t i = 0; i < m->n_labels; i++)
        graft__free(m->labels[i]);
    graft__free(m->labels);
    graft__free(m->path);
    graft__free(m);
}

graft_status graft_model_input_size(const graft_model *m, int64_t *height, int64_t *width,
                                    int64_t *channels)
{
    const graft__shape *s = &m->nodes[m->input_node].shape;
    if (s->rank != 3)
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: the input is not an image (rank %d)", m->path,
                           s->rank);
    *height = s->dim[0];
    *width = s->dim[1];
    *channels = s->dim[2];
    return GRAFT_OK;
}

int64_t graft_model_output_size(const graft_model *m)
{
    return graft__shape_elems(&m->nodes[m->output_node].shape);
}

int graft_model_layer_count(const graft_model *m) { return m ? m->n_layers : 0; }

int graft_model_find_layer(const graft_model *m, const char *name)
{
    for (int i = 0; m && name && i < m->n_layers; i++)
        if (strcmp(m->layers[i]->name, name) == 0)
            return i;
    return -1;
}

graft_status graft_model_layer_info(const graft_model *m, int index, graft_layer_info *info)
{
    if (!m || !info || index < 0 || index >= m->n_layers)
        return graft__fail(GRAFT_E_INVALID_ARG, "layer index %d is out of range", index);
    const graft__layer *layer = m->layers[index];
    memset(info, 0, sizeof *info);
    info->name = layer->name;
    info->class_name = layer->ops->class_name;
    info->trainable = layer->trainable;
    for (int w = 0; w < layer->n_weights; w++) {
        int64_t n = graft__shape_elems(&layer->weights[w].shape);
        info->params += n;
        if (layer->trainable && layer->weights[w].trainable)
            info->trainable_params += n;
    }
    for (int i = 0; i < m->n_nodes; i++) {
        const graft__node *node = &m->nodes[i];
        if (node->layer != layer)
            continue;
        info->rank = node->shape.rank;
        memcpy(info->shape, node->shape.dim, sizeof info->shape);
        info->n_inputs = node->n_inputs;
        for (int k = 0; k < node->n_inputs && k < 8; k++)
            info->inputs[k] = m->nodes[node->inputs[k]].layer->name;
        break;
    }
    return GRAFT_OK;
}

const char *graft_model_label(const graft_model *m, int64_t index)
{
    return m && index >= 0 && index < m->n_labels ? m->labels[index] : NULL;
}

void graft_model_set_trainable_all(graft_model *m, int trainable)
{
    for (int i = 0; m && i < m->n_layers; i++)
        m->layers[i]->trainable = trainable != 0;
}

/* Layers are kept in creation order, which is graph order for the models graft
 * builds (a layer is created at its first call). */
graft_status graft_model_unfreeze_from(graft_model *m, const char *name)
{
    int from = graft_model_find_layer(m, name);
    if (from < 0)
        return graft__fail(GRAFT_E_NOT_FOUND, "%s: no layer named '%s'", m ? m->path : "model",
                           name ? name : "(null)");
    for (int i = 0; i < m->n_layers; i++)
        m->layers[i]->trainable = i >= from;
    return GRAFT_OK;
}

graft_status graft_model_unfreeze_last(graft_model *m, int n)
{
    if (!m || n < 0)
        return graft__fail(GRAFT_E_INVALID_ARG, "unfreeze_last: n must be >= 0");
    int from = m->n_layers;
    for (int seen = 0; from > 0 && seen < n; from--)
        seen += m->layers[from - 1]->n_weights > 0;
    for (int i = 0; i < m->n_layers; i++)
        m->layers[i]->trainable = i >= from;
    return GRAFT_OK;
}

static int is_merge(const graft__layer *layer)
{
    return !strcmp(layer->ops->class_name, "Add") || !strcmp(layer->ops->class_name, "Concatenate");
}

/* A block ends at a residual Add or a Concatenate (MobileNet's and Inception's
 * blocks); the layers after the last one (e.g. MobileNetV2's final 1x1 conv)
 * belong to the last block. */
graft_status graft_model_unfreeze_last_blocks(graft_model *m, int n)
{
    if (!m || n < 0)
        return graft__fail(GRAFT_E_INVALID_ARG, "unfreeze_last_blocks: n must be >= 0");
    int seen = 0, start_node = 0;
    for (int i = m->n_nodes - 1; i >= 0; i--) {
        if (!is_merge(m->nodes[i].layer))
            continue;
        if (++seen == n) {
            start_node = i + 1;
            break;
        }
    }
    if (n == 0)
        start_node = m->n_nodes;
    for (int l = 0; l < m->n_layers; l++)
        m->layers[l]->trainable = 0;
    for (int i = start_node; i < m->n_nodes; i++)
        m->nodes[i].layer->trainable = 1;
    return GRAFT_OK;
}
