/* Class statistics, stratified splits and per-class samples. Every random choice
 * is a seeded Fisher-Yates shuffle of one class's images (in the view's order),
 * drawn from the counter-based generator: a result depends only on the view and
 * the seed. Subsets list their images in the parent's order. */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"
#include "data/dataset.h"

/* Distinct streams for the two uses, so a sample is not the split's val set. */
#define SALT_SPLIT 0x73706c6974ull
#define SALT_SAMPLE 0x73616d706c65ull

void graft_dataset_class_counts(const graft_dataset *ds, int64_t *counts)
{
    if (!ds || !counts)
        return;
    memset(counts, 0, (size_t)ds->store->n_classes * sizeof *counts);
    for (int64_t i = 0; i < ds->count; ++i)
        counts[ds->store->labels[graft__ds_item(ds, i)]]++;
}

graft_status graft_dataset_class_weights(const graft_dataset *ds, float *weights)
{
    if (!ds || !weights)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_class_weights: %s is NULL",
                           ds ? "weights" : "dataset");
    const int64_t k = ds->store->n_classes;
    int64_t *counts = graft__calloc((size_t)k, sizeof *counts);
    if (!counts)
        return graft__fail(GRAFT_E_NOMEM, "graft_dataset_class_weights: out of memory");
    graft_dataset_class_counts(ds, counts);
    int64_t present = 0;
    for (int64_t c = 0; c < k; ++c)
        present += counts[c] > 0;
    if (present == 0) {
        graft__free(counts);
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_class_weights: the dataset is "
                           "empty");
    }
    for (int64_t c = 0; c < k; ++c)
        weights[c] = counts[c] ? (float)((double)ds->count / ((double)present * (double)counts[c]))
                               : 0.0f;
    graft__free(counts);
    return GRAFT_OK;
}

int64_t graft_dataset_small_classes(const graft_dataset *ds, int64_t min_count, int64_t *classes)
{
    if (!ds)
        return 0;
    const int64_t k = ds->store->n_classes;
    int64_t *counts = graft__calloc((size_t)k, sizeof *counts);
    if (!counts)
        return 0;
    graft_dataset_class_counts(ds, counts);
    int64_t small = 0;
    for (int64_t c = 0; c < k; ++c)
        if (counts[c] < min_count) {
            if (classes)
                classes[small] = c;
            small++;
        }
    graft__free(counts);
    return small;
}

/* ---- shuffled classes ------------------------------------------------------------------ */

/* Uniform in [0, n): the high half of a 64x64-bit product (Lemire), bias < n/2^64. */
static uint64_t below(uint64_t seed, uint64_t counter, uint64_t n)
{
    uint64_t r = graft__mix64(seed ^ graft__mix64(counter));
    return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

typedef struct by_class {
    int64_t *order;   /* (count) view positions grouped by class, each group shuffled */
    int64_t *start;   /* (classes + 1) where each group begins */
} by_class;

static void by_class_free(by_class *g)
{
    graft__free(g->order);
    graft__free(g->start);
}

static graft_status shuffle_classes(const graft_dataset *ds, uint64_t seed, const char *who,
                                    by_class *g)
{
    const int64_t k = ds->store->n_classes, n = ds->count;
    g->order = graft__calloc(n ? (size_t)n : 1, sizeof *g->order);
    g->start = graft__calloc((size_t)k + 1, sizeof *g->start);
    int64_t *fill = graft__calloc((size_t)k + 1, sizeof *fill);
    if (!g->order || !g->start || !fill) {
        graft__free(fill);
        by_class_free(g);
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory", who);
    }
    for (int64_t i = 0; i < n; ++i)
        g->start[ds->store->labels[graft__ds_item(ds, i)] + 1]++;
    for (int64_t c = 0; c < k; ++c)
        g->start[c + 1] += g->start[c];
    memcpy(fill, g->start, (size_t)k * sizeof *fill);
    for (int64_t i = 0; i < n; ++i)
        g->order[fill[ds->store->labels[graft__ds_item(ds, i)]]++] = i;
    graft__free(fill);
    for (int64_t c = 0; c < k; ++c) {
        int64_t *v = g->order + g->start[c];
        const int64_t len = g->start[c + 1] - g->start[c];
        const uint64_t sc = graft__seed_derive(seed, (uint64_t)c);
        for (int64_t j = len - 1; j > 0; --j) {
            int64_t r = (int64_t)below(sc, (uint64_t)j, (uint64_t)j + 1);
            int64_t t = v[j];
            v[j] = v[r];
            v[r] = t;
        }
    }
    return GRAFT_OK;
}

/* The view of the positions marked (want = 1) or unmarked (want = 0), in order. */
static graft_status marked_view(const graft_dataset *ds, const unsigned char *mark, int want,
                                int64_t *scratch, graft_dataset **out)
{
    int64_t m = 0;
    for (int64_t i = 0; i < ds->count; ++i)
        if (mark[i] == want)
            scratch[m++] = graft__ds_item(ds, i);
    return graft__ds_view(ds->store, scratch, m, out);
}

/* ---- split and sample ------------------------------------------------------------------- */

graft_status graft_dataset_split(const graft_dataset *ds, double val_fraction, uint64_t seed,
                                 graft_dataset **train, graft_dataset **val)
{
    if (train)
        *train = NULL;
    if (val)
        *val = NULL;
    if (!ds || !train || !val)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_split: %s is NULL",
                           !ds ? "dataset" : !train ? "train" : "val");
    if (!(val_fraction > 0.0 && val_fraction < 1.0))
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_split: validation fraction %g is "
                           "outside (0, 1)", val_fraction);
    by_class g;
    graft_status rc = shuffle_classes(ds, graft__seed_derive(seed, SALT_SPLIT),
                                      "graft_dataset_split", &g);
    if (rc != GRAFT_OK)
        return rc;
    const size_t slots = ds->count ? (size_t)ds->count : 1;
    unsigned char *mark = graft__calloc(slots, 1);
    int64_t *scratch = graft__calloc(slots, sizeof *scratch);
    if (!mark || !scratch)
        rc = graft__fail(GRAFT_E_NOMEM, "graft_dataset_split: out of memory");
    for (int64_t c = 0; rc == GRAFT_OK && c < ds->store->n_classes; ++c) {
        const int64_t len = g.start[c + 1] - g.start[c];
        /* round half up (with slack for 0.15 * 10 = 1.4999...); one or more
         * for a class of two or more, never the whole class */
        int64_t nv = (int64_t)floor(val_fraction * (double)len + 0.5 + 1e-9);
        if (len < 2)
            nv = 0;
        else if (nv < 1)
            nv = 1;
        else if (nv > len - 1)
            nv = len - 1;
        for (int64_t j = 0; j < nv; ++j)
            mark[g.order[g.start[c] + j]] = 1;
    }
    if (rc == GRAFT_OK)
        rc = marked_view(ds, mark, 1, scratch, val);
    if (rc == GRAFT_OK && (rc = marked_view(ds, mark, 0, scratch, train)) != GRAFT_OK) {
        graft_dataset_free(*val);
        *val = NULL;
    }
    graft__free(mark);
    graft__free(scratch);
    by_class_free(&g);
    return rc;
}

graft_status graft_dataset_sample_per_class(const graft_dataset *ds, int64_t k, uint64_t seed,
                                            graft_dataset **out)
{
    if (out)
        *out = NULL;
    if (!ds || !out)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_sample_per_class: %s is NULL",
                           ds ? "out" : "dataset");
    if (k < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_sample_per_class: k = %lld, "
                           "expected at least 1", (long long)k);
    by_class g;
    graft_status rc = shuffle_classes(ds, graft__seed_derive(seed, SALT_SAMPLE),
                                      "graft_dataset_sample_per_class", &g);
    if (rc != GRAFT_OK)
        return rc;
    const size_t slots = ds->count ? (size_t)ds->count : 1;
    unsigned char *mark = graft__calloc(slots, 1);
    int64_t *scratch = graft__calloc(slots, sizeof *scratch);
    if (!mark || !scratch)
        rc = graft__fail(GRAFT_E_NOMEM, "graft_dataset_sample_per_class: out of memory");
    for (int64_t c = 0; rc == GRAFT_OK && c < ds->store->n_classes; ++c) {
        const int64_t len = g.start[c + 1] - g.start[c];
        for (int64_t j = 0; j < (k < len ? k : len); ++j)
            mark[g.order[g.start[c] + j]] = 1;
    }
    if (rc == GRAFT_OK)
        rc = marked_view(ds, mark, 1, scratch, out);
    graft__free(mark);
    graft__free(scratch);
    by_class_free(&g);
    return rc;
}
