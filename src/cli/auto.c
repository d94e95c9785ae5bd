/* --auto: the recipe chosen from the data. The cut is the candidate layer with
 * the best LogME on the training images; fine-tuning starts at the beginning of
 * the cut's block, and is skipped for very small sets (BiT-HyperRule style),
 * where it did not help in our measurements. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/probe.h"
#include "core/error.h"
#include "data/dataset.h"
#include "train/probe.h"

enum { SMALL_PER_CLASS = 20 };

static int is_kind(const graft__layer *l, const char *cls) { return !strcmp(l->ops->class_name, cls); }

/* A node reading a block's output (a merge, or a BatchNorm that feeds weights). */
static int starts_block(const graft_model *m, int i)
{
    for (int k = 0; k < m->nodes[i].n_inputs; k++) {
        int src = m->nodes[i].inputs[k];
        const graft__layer *l = m->nodes[src].layer;
        if (is_kind(l, "Add") || is_kind(l, "Concatenate"))
            return 1;
        if (is_kind(l, "BatchNormalization") && m->nodes[i].layer->n_weights > 0)
            return 1;
    }
    return 0;
}

static void block_start(const graft_model *m, int cut, char *buf, size_t size)
{
    int i = cut;
    while (i > 0 && !starts_block(m, i))
        i--;
    snprintf(buf, size, "%s", m->nodes[i].layer->name);
}

static int median_class_count(graft_dataset *ds)
{
    int64_t k = graft_dataset_class_count(ds), counts[4096];
    graft_dataset_class_counts(ds, counts);
    int64_t lo = 0;
    for (int64_t c = 0; c < k; c++) {
        int64_t below = 0;
        for (int64_t d = 0; d < k; d++)
            below += counts[d] < counts[c];
        if (below <= k / 2)
            lo = lo == 0 || counts[c] < lo ? counts[c] : lo;
    }
    return (int)lo;
}

int auto_choose(train_options *o, graft_dataset *train)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    graft_model *m = NULL;
    candidate c[MAX_CANDIDATES];
    memset(c, 0, sizeof c);
    int64_t h, w;
    graft__dataset_size(train, &h, &w);
    graft_status rc = load_base(o, &m);
    int nc = rc ? 0 : probe_candidates(m, "auto", c);
    if (!rc && nc <= 0)
        rc = graft__fail(GRAFT_E_NOT_FOUND, "%s: no candidate layers to choose from", o->base);
    int deepest = 0;
    for (int i = 0; i < nc; i++)
        deepest = c[i].node > c[deepest].node ? i : deepest;
    char name[256];
    if (!rc) {
        snprintf(name, sizeof name, "%s", c[deepest].layer);
        rc = graft_model_cut(m, name);
    }
    if (!rc)
        nc = probe_candidates(m, "auto", c);
    if (!rc)
        rc = graft_model_set_input_size(m, h, w);
    int64_t n = graft_dataset_count(train);
    int32_t *labels = calloc((size_t)n, sizeof *labels);
    if (!rc)
        rc = labels ? probe_extract(m, train, c, nc, labels) : graft__fail(GRAFT_E_NOMEM, "out of memory");
    int best = -1;
    for (int i = 0; !rc && i < nc; i++) {
        rc = graft__logme(c[i].features, labels, n, c[i].dim, graft_dataset_class_count(train),
                          &c[i].logme);
        if (!rc && (best < 0 || c[i].logme > c[best].logme))
            best = i;
    }
    int status = CLI_OK;
    if (rc) {
        cli_error("--auto: %s", graft_last_error());
        status = CLI_BAD_INPUT;
    } else {
        snprintf(o->cut, sizeof o->cut, "%s", c[best].layer);
        o->recipe.cut = o->cut;
        block_start(m, c[best].node, o->fine_tune_at, sizeof o->fine_tune_at);
        o->recipe.fine_tune_at = o->fine_tune_at;
        int per_class = median_class_count(train);
        if (per_class < SMALL_PER_CLASS)
            o->recipe.fine_tune = 0;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (!o->quiet && !o->json) {
            printf("auto: cut at %s: best LogME (%.4f) of %d candidate layers on the training "
                   "images (%.1f s)\n", o->cut, c[best].logme, nc, s);
            if (o->recipe.fine_tune)
                printf("auto: fine-tune from %s: the start of the cut's block\n", o->fine_tune_at);
            else
                printf("auto: no fine-tuning: %d images per class is too few (< %d)\n", per_class,
                       SMALL_PER_CLASS);
        }
    }
    for (int i = 0; i < MAX_CANDIDATES; i++)
        free(c[i].features);
    free(labels);
    graft_model_free(m);
    return status;
}
