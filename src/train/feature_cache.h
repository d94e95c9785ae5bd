/* Frozen-feature cache: when every layer up to a boundary node is frozen and
 * deterministic, its output for each image (and augmentation view) is computed
 * once and the layers above train from the cache, so a frozen base costs one
 * forward pass per view instead of one per epoch. */
#ifndef GRAFT_TRAIN_FEATURE_CACHE_H
#define GRAFT_TRAIN_FEATURE_CACHE_H

#include "graft.h"
#include "model/model.h"

typedef struct graft__feature_cache {
    int64_t count;       /* examples */
    int views;
    int64_t dim;         /* floats per example */
    int float16;         /* stored as IEEE half */
    unsigned char *data; /* (views, count, dim) */
    size_t bytes;
    int mapped;          /* data is a mapping of an unlinked temporary file */
    int32_t *labels;     /* (count) */
} graft__feature_cache;

/* Runs the model up to `boundary` (inference mode) over every example of src,
 * once per view: view v asks src for epoch v + 1 (augmented), or epoch 0 (not
 * augmented) when views is 1. Beyond ram_budget bytes the cache lives in a
 * memory-mapped temporary file. */
graft_status graft__feature_cache_build(graft__feature_cache *cache, graft_model *model,
                                        int boundary, const graft_batch_source *src, int views,
                                        int64_t batch, int float16, size_t ram_budget);
void graft__feature_cache_free(graft__feature_cache *cache);

/* Rows idx[0..n) of one view into out (n, dim) and their labels. */
void graft__feature_cache_get(const graft__feature_cache *cache, int view, const int64_t *idx,
                              int64_t n, float *out /* (n, dim) */, int32_t *labels /* (n) */);

#endif
