/* The two-phase transfer-learning recipe (graft_recipe_run) and its defaults. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "model/model.h"
#include "train/linear_head.h"

void graft_recipe_defaults(graft_recipe *r)
{
    memset(r, 0, sizeof *r);
    r->dropout = 0.2;
    r->augment.flip_horizontal = 1;
    r->augment.rotation = 0.05;
    r->augment.zoom = 0.1;
    r->cache_views = 4;
    graft_train_config_defaults(&r->phase1);
    /* Epochs from cached features cost almost nothing: let early stopping end it. */
    r->phase1.epochs = 100;
    r->phase1.learning_rate = 1e-3;
    r->phase1.patience = 10;
    r->phase1.label_smoothing = 0.1;
    r->fine_tune = 1;
    graft_train_config_defaults(&r->phase2);
    r->phase2.epochs = 20;
    r->phase2.learning_rate = 1e-4;
    r->phase2.patience = 5;
    r->phase2.label_smoothing = 0.1;
    r->phase2.bn_inference = 1;
}

static int is_pooling(const char *cls)
{
    return strstr(cls, "Pooling") != NULL;
}

graft_status graft_recipe_default_cut(const graft_model *m, char *buf, size_t size)
{
    for (int i = m->output_node; i >= 0; i--) {
        const graft__node *n = &m->nodes[i];
        if (n->shape.rank == 3 && (n->shape.dim[0] > 1 || n->shape.dim[1] > 1) &&
            !is_pooling(n->layer->ops->class_name) && i != m->input_node) {
            snprintf(buf, size, "%s", n->layer->name);
            return GRAFT_OK;
        }
    }
    return graft__fail(GRAFT_E_UNSUPPORTED, "%s: no layer with a spatial feature map to cut at",
                       m->path);
}

static int reads_merge(const graft_model *m, int node)
{
    for (int k = 0; k < m->nodes[node].n_inputs; k++) {
        const char *cls = m->nodes[m->nodes[node].inputs[k]].layer->ops->class_name;
        if (!strcmp(cls, "Add") || !strcmp(cls, "Concatenate"))
            return 1;
    }
    return 0;
}

/* About two thirds down the weighted layers, moved forward to the first layer
 * that reads a residual Add or a Concatenate: the start of a block. */
graft_status graft_recipe_default_fine_tune_at(const graft_model *m, char *buf, size_t size)
{
    int weighted = 0;
    for (int i = 0; i < m->n_nodes; i++)
        weighted += m->nodes[i].layer->n_weights > 0;
    int target = (2 * weighted) / 3, seen = 0, chosen = -1;
    for (int i = 0; i < m->n_nodes && chosen < 0; i++) {
        seen += m->nodes[i].layer->n_weights > 0;
        if (seen > target && m->nodes[i].layer->n_weights > 0 && reads_merge(m, i))
            chosen = i;
    }
    for (int i = 0; i < m->n_nodes && chosen < 0; i++)
        if (m->nodes[i].layer->n_weights > 0 && --target < 0)
            chosen = i;
    if (chosen < 0)
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: no layer with weights to fine-tune", m->path);
    snprintf(buf, size, "%s", m->nodes[chosen].layer->name);
    return GRAFT_OK;
}

/* Freezes the base: every layer up to and including the cut. */
static void freeze_base(graft_model *m, int n_base_layers)
{
    for (int i = 0; i < m->n_layers; i++)
        m->layers[i]->trainable = i >= n_base_layers;
}

static graft_status prepare_model(graft_model *m, graft_dataset *train, const graft_recipe *r,
                                  graft_recipe_result *res, int *n_base_layers)
{
    graft_status rc = GRAFT_OK;
    if (r->cut)
        snprintf(res->cut, sizeof res->cut, "%s", r->cut);
    else
        rc = graft_recipe_default_cut(m, res->cut, sizeof res->cut);
    if (!rc)
        rc = graft_model_cut(m, res->cut);
    int64_t h, w, c;
    if (!rc)
        rc = graft_model_input_size(m, &h, &w, &c);
    int64_t want_h = 0, want_w = 0;
    graft__dataset_size(train, &want_h, &want_w);
    if (!rc && (want_h != h || want_w != w))
        rc = graft_model_set_input_size(m, want_h, want_w);
    *n_base_layers = m->n_layers;
    if (!rc)
        rc = graft_model_add_grid_classifier(m, graft_dataset_class_count(train), r->dropout,
                                             r->head_grid, r->seed);
    if (!rc) {
        const char *names[4096];
        int64_t n = graft_dataset_class_count(train);
        for (int64_t i = 0; i < n && i < 4096; i++)
            names[i] = graft_dataset_class_name(train, i);
        rc = graft_model_set_labels(m, names, n < 4096 ? n : 4096);
    }
    return rc;
}

graft_status graft_recipe_run(graft_model *m, graft_dataset *train, graft_dataset *val,
                              const graft_recipe *r, graft_recipe_result *res)
{
    memset(res, 0, sizeof *res);
    int n_base_layers = 0;
    graft_status rc = prepare_model(m, train, r, res, &n_base_layers);
    if (rc)
        return rc;
    /* Mixup and cutmix act in graft_train, on the batch; they need no augmented
     * views of the frozen features. */
    int aug = !graft__augment_is_identity(&r->augment);
    graft_batch_source train_src = graft_dataset_source(train, aug ? &r->augment : NULL);
    graft_batch_source val_src = val ? graft_dataset_source(val, NULL) : train_src;

    graft_train_config p1 = r->phase1;
    p1.seed = r->seed;
    p1.cache_views = aug ? (r->cache_views > 0 ? r->cache_views : 1) : 1;
    p1.mixup = r->augment.mixup;
    p1.cutmix = r->augment.cutmix;
    freeze_base(m, n_base_layers);
    if (r->linear_probe)
        rc = graft__fit_linear_head(m, train, val, r->seed, &p1, &res->phase1, &res->head_l2);
    else
        rc = graft_train(m, &train_src, val ? &val_src : NULL, &p1, &res->phase1);
    if (rc || (r->on_phase_end && r->on_phase_end(1, m, r->user)) || !r->fine_tune)
        return rc;

    if (r->fine_tune_at)
        snprintf(res->fine_tune_at, sizeof res->fine_tune_at, "%s", r->fine_tune_at);
    else
        rc = graft_recipe_default_fine_tune_at(m, res->fine_tune_at, sizeof res->fine_tune_at);
    if (!rc)
        rc = graft_model_unfreeze_from(m, res->fine_tune_at);
    if (rc)
        return rc;
    graft_train_config p2 = r->phase2;
    p2.seed = r->seed + 1;
    p2.cache_views = aug ? (r->cache_views > 0 ? r->cache_views : 1) : 1;
    p2.mixup = r->augment.mixup;
    p2.cutmix = r->augment.cutmix;
    rc = graft_train(m, &train_src, val ? &val_src : NULL, &p2, &res->phase2);
    res->phase2_run = rc == GRAFT_OK;
    if (!rc && r->on_phase_end)
        r->on_phase_end(2, m, r->user);
    return rc;
}
