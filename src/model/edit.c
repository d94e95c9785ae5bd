/* Editing a loaded model for transfer learning: cut it at a feature layer and
 * put a new classifier on top. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"
#include "model/model.h"

/* New arena for the current weights; values of weights that had one are kept. */
static graft_status relayout_params(graft_model *m)
{
    float *old = m->params;
    int64_t *old_offsets = graft__calloc((size_t)m->n_layers * GRAFT__MAX_WEIGHTS + 1,
                                         sizeof(int64_t));
    if (!old_offsets)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++)
            old_offsets[i * GRAFT__MAX_WEIGHTS + w] = m->layers[i]->weights[w].data
                                                          ? m->layers[i]->weights[w].offset
                                                          : -1;
    m->params = NULL;
    graft_status rc = graft__graph_alloc_params(m);
    if (rc) {
        m->params = old;
        graft__free(old_offsets);
        return rc;
    }
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++) {
            int64_t from = old_offsets[i * GRAFT__MAX_WEIGHTS + w];
            graft__weight *wt = &m->layers[i]->weights[w];
            if (from >= 0)
                memcpy(wt->data, old + from, sizeof(float) * (size_t)graft__shape_elems(&wt->shape));
        }
    graft__free(old_offsets);
    graft__free_aligned(old);
    graft__plan_free(&m->plan);
    graft__plan_free(&m->plain_plan);
    return GRAFT_OK;
}

/* Keeps only the nodes the output depends on, and the layers they apply. */
static graft_status prune(graft_model *m)
{
    char *keep = graft__calloc((size_t)m->n_nodes, 1);
    int *renumber = graft__calloc((size_t)m->n_nodes, sizeof(int));
    if (!keep || !renumber) {
        graft__free(keep);
        graft__free(renumber);
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    }
    keep[m->output_node] = 1;
    for (int i = m->n_nodes - 1; i >= 0; i--)
        for (int k = 0; keep[i] && k < m->nodes[i].n_inputs; k++)
            keep[m->nodes[i].inputs[k]] = 1;
    int n = 0;
    for (int i = 0; i < m->n_nodes; i++) {
        if (!keep[i]) {
            graft__free(m->nodes[i].inputs);
            continue;
        }
        renumber[i] = n;
        graft__node node = m->nodes[i];
        for (int k = 0; k < node.n_inputs; k++)
            node.inputs[k] = renumber[node.inputs[k]];
        m->nodes[n++] = node;
    }
    m->input_node = renumber[m->input_node];
    m->output_node = renumber[m->output_node];
    m->n_nodes = n;
    int kept_layers = 0;
    for (int l = 0; l < m->n_layers; l++) {
        graft__layer *layer = m->layers[l];
        int used = 0;
        for (int i = 0; i < m->n_nodes && !used; i++)
            used = m->nodes[i].layer == layer;
        if (used) {
            m->layers[kept_layers++] = layer;
            continue;
        }
        graft__free(layer->config);
        json_decref(layer->keras_config);
        graft__free(layer->name);
        graft__free(layer);
    }
    m->n_layers = kept_layers;
    graft__free(keep);
    graft__free(renumber);
    graft__graph_compute_last_use(m);
    return relayout_params(m);
}

graft_status graft_model_cut(graft_model *m, const char *layer_name)
{
    int node = -1;
    for (int i = 0; m && layer_name && i < m->n_nodes && node < 0; i++)
        if (strcmp(m->nodes[i].layer->name, layer_name) == 0)
            node = i;
    if (node < 0)
        return graft__fail(GRAFT_E_NOT_FOUND, "%s: no layer named '%s' to cut at",
                           m ? m->path : "model", layer_name ? layer_name : "(null)");
    m->output_node = node;
    return prune(m);
}

/* A name not yet used by any layer: base, base_1, base_2, ... */
static void unique_name(const graft_model *m, const char *base, char *out, size_t size)
{
    snprintf(out, size, "%s", base);
    for (int k = 1; graft__graph_find_layer((graft_model *)m, out); k++)
        snprintf(out, size, "%s_%d", base, k);
}

static graft_status append(graft_model *m, const char *base, const char *cls, json_t *config,
                           int *node)
{
    char name[128];
    unique_name(m, base, name, sizeof name);
    json_object_set_new(config, "name", json_string(name));
    json_object_set_new(config, "trainable", json_true());
    int input = m->output_node;
    graft_status rc = graft__graph_add_layer(m, name, cls, config, &input, 1, node);
    json_decref(config);
    if (!rc)
        m->output_node = *node;
    return rc;
}

/* Glorot-uniform kernel and zero bias, as Keras initialises Dense. */
static void init_dense(graft__layer *dense, uint64_t seed)
{
    graft__weight *kernel = &dense->weights[0];
    int64_t fan_in = kernel->shape.dim[0], fan_out = kernel->shape.dim[1];
    float limit = sqrtf(6.0f / (float)(fan_in + fan_out));
    for (int64_t i = 0; i < fan_in * fan_out; i++)
        kernel->data[i] = (2.0f * graft__uniform(seed, (uint64_t)i) - 1.0f) * limit;
    if (dense->n_weights > 1)
        memset(dense->weights[1].data, 0, sizeof(float) * (size_t)fan_out);
}

graft_status graft_model_add_classifier(graft_model *m, int64_t classes, double dropout,
                                        uint64_t seed)
{
    return graft_model_add_grid_classifier(m, classes, dropout, 1, seed);
}

graft_status graft_model_add_grid_classifier(graft_model *m, int64_t classes, double dropout,
                                             int grid, uint64_t seed)
{
    if (!m || classes < 2 || dropout < 0.0 || dropout >= 1.0)
        return graft__fail(GRAFT_E_INVALID_ARG, "a classifier needs at least 2 classes and "
                           "dropout in [0, 1)");
    int node;
    graft_status rc = GRAFT_OK;
    const graft__shape *out = &m->nodes[m->output_node].shape;
    if (out->rank == 3 && grid > 1) {
        json_int_t ph = (json_int_t)((out->dim[0] + grid - 1) / grid);
        json_int_t pw = (json_int_t)((out->dim[1] + grid - 1) / grid);
        rc = append(m, "average_pooling2d", "AveragePooling2D",
                    json_pack("{s:[I,I],s:[I,I],s:s,s:s}", "pool_size", ph, pw, "strides", ph, pw,
                              "padding", "same", "data_format", "channels_last"), &node);
        if (!rc)
            rc = append(m, "flatten", "Flatten", json_object(), &node);
    } else if (out->rank == 3)
        rc = append(m, "global_average_pooling2d", "GlobalAveragePooling2D",
                    json_pack("{s:s}", "data_format", "channels_last"), &node);
    else if (out->rank != 1)
        rc = append(m, "flatten", "Flatten", json_object(), &node);
    if (!rc && dropout > 0.0)
        rc = append(m, "dropout", "Dropout", json_pack("{s:f}", "rate", dropout), &node);
    if (!rc)
        rc = append(m, "classifier", "Dense",
                    json_pack("{s:I,s:s,s:b}", "units", (json_int_t)classes, "activation",
                              "softmax", "use_bias", 1), &node);
    if (!rc) {
        graft__graph_compute_last_use(m);
        rc = relayout_params(m);
    }
    if (!rc)
        init_dense(m->nodes[m->output_node].layer, graft__seed_derive(seed, 0xd1e5eull));
    return rc;
}

graft_status graft__input_layer_set_shape(graft__layer *layer, const graft__shape *shape);

graft_status graft_model_set_input_size(graft_model *m, int64_t height, int64_t width)
{
    graft__node *input = &m->nodes[m->input_node];
    if (input->shape.rank != 3)
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: the input is not an image", m->path);
    graft__shape shape = input->shape, old = input->shape;
    int64_t dims[3] = {height, width, input->shape.dim[2]};
    graft_status rc = graft__shape_make(&shape, 3, dims, "input size");
    if (rc)
        return rc;
    /* Keras keeps the old config object alive in the layer; copy before editing. */
    json_t *copy = json_deep_copy(input->layer->keras_config);
    json_decref(input->layer->keras_config);
    input->layer->keras_config = copy;
    if ((rc = graft__input_layer_set_shape(input->layer, &shape)))
        return rc;
    for (int i = 0; i < m->n_nodes && !rc; i++) {
        graft__node *node = &m->nodes[i];
        graft__shape in[64];
        for (int k = 0; k < node->n_inputs && k < 64; k++)
            in[k] = m->nodes[node->inputs[k]].shape;
        rc = node->layer->ops->infer(node->layer, node->n_inputs, in, &node->shape);
    }
    if (rc) {
        graft__fail_prefix(rc, "%s: cannot run at %lldx%lld", m->path, (long long)height,
                           (long long)width);
        graft__input_layer_set_shape(input->layer, &old);
        for (int i = 0; i < m->n_nodes; i++) {
            graft__node *node = &m->nodes[i];
            graft__shape in[64];
            for (int k = 0; k < node->n_inputs && k < 64; k++)
                in[k] = m->nodes[node->inputs[k]].shape;
            node->layer->ops->infer(node->layer, node->n_inputs, in, &node->shape);
        }
        return rc;
    }
    graft__plan_free(&m->plan);
    graft__plan_free(&m->plain_plan);
    return GRAFT_OK;
}

graft_status graft_model_set_labels(graft_model *m, const char *const *labels, int64_t n)
{
    char **copy = graft__calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    if (!copy)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        if (!(copy[i] = graft__strdup(labels[i]))) {
            for (int64_t j = 0; j < i; j++)
                graft__free(copy[j]);
            graft__free(copy);
            return graft__fail(GRAFT_E_NOMEM, "out of memory");
        }
    for (int64_t i = 0; i < m->n_labels; i++)
        graft__free(m->labels[i]);
    graft__free(m->labels);
    m->labels = copy;
    m->n_labels = n;
    return GRAFT_OK;
}

/* Keras's defaults: Glorot-uniform kernels, zero biases, BatchNorm as identity. */
static void reinit_weight(graft__weight *w, uint64_t seed)
{
    int64_t n = graft__shape_elems(&w->shape);
    float fill = !strcmp(w->name, "gamma") || !strcmp(w->name, "moving_variance") ? 1.0f : 0.0f;
    w->loaded = 0;
    if (!strstr(w->name, "kernel")) {
        for (int64_t i = 0; i < n; i++)
            w->data[i] = fill;
        return;
    }
    /* (KH, KW, in, out) or (in, out): receptive field times the last two axes. */
    int64_t field = 1;
    for (int d = 0; d + 2 < w->shape.rank; d++)
        field *= w->shape.dim[d];
    int64_t fan_in = field * w->shape.dim[w->shape.rank - 2];
    int64_t fan_out = field * w->shape.dim[w->shape.rank - 1];
    float limit = sqrtf(6.0f / (float)(fan_in + fan_out));
    for (int64_t i = 0; i < n; i++)
        w->data[i] = (2.0f * graft__uniform(seed, (uint64_t)i) - 1.0f) * limit;
}

graft_status graft_model_reinitialize(graft_model *m, uint64_t seed)
{
    if (!m)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_reinitialize: no model");
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < m->layers[l]->n_weights; w++)
            reinit_weight(&m->layers[l]->weights[w],
                          graft__seed_derive(seed, (uint64_t)(l * GRAFT__MAX_WEIGHTS + w)));
    graft__plan_free(&m->plan);
    graft__plan_free(&m->plain_plan);
    return GRAFT_OK;
}
