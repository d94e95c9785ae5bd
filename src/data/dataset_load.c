/* graft_dataset_load: decode (or take from the cache), fit to the model size,
 * augment, preprocess; one image per OpenMP iteration. Each image's result
 * depends only on (file, options, seed, store index), never on the thread that
 * ran it, so batches are identical for any thread count. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/image.h"

int graft__ds_threads(const graft__ds_store *s)
{
    return s->options.threads > 0 ? s->options.threads : omp_get_max_threads();
}

/* ---- the cache ----------------------------------------------------------------- */

/* Stores a fitted image (integers in 0..255) when the budget allows and the slot
 * is still empty. The budget is reserved before allocating, so the total never
 * exceeds it even while threads race. */
static void cache_put(graft__ds_store *s, int64_t item, const float *img)
{
    if (!s->cache || s->image_bytes > s->cache_budget ||
        __atomic_load_n(&s->cache[item], __ATOMIC_ACQUIRE))
        return;
    size_t used = __atomic_add_fetch(&s->cache_used, s->image_bytes, __ATOMIC_RELAXED);
    unsigned char *entry = used <= s->cache_budget ? graft__malloc(s->image_bytes) : NULL;
    if (!entry) {
        __atomic_sub_fetch(&s->cache_used, s->image_bytes, __ATOMIC_RELAXED);
        return;
    }
    for (size_t i = 0; i < s->image_bytes; ++i)
        entry[i] = (unsigned char)img[i];
    unsigned char *empty = NULL;
    if (!__atomic_compare_exchange_n(&s->cache[item], &empty, entry, 0, __ATOMIC_RELEASE,
                                     __ATOMIC_RELAXED)) {
        graft__free(entry); /* another thread filled it first, with the same bytes */
        __atomic_sub_fetch(&s->cache_used, s->image_bytes, __ATOMIC_RELAXED);
    }
}

/* ---- one image ----------------------------------------------------------------- */

/* An IDX image as an RGB graft__image. */
static graft_status idx_image(const graft__ds_store *s, int64_t item, graft__image *img)
{
    graft_status rc = graft__image_alloc(img, s->idx_w, s->idx_h, s->paths[item]);
    if (rc != GRAFT_OK)
        return rc;
    const int64_t pixels = s->idx_h * s->idx_w;
    const unsigned char *src = s->idx_pixels + (size_t)item * (size_t)(pixels * s->idx_c);
    if (s->idx_c == 3) {
        memcpy(img->pixels, src, (size_t)pixels * 3);
    } else {
        for (int64_t p = 0; p < pixels; ++p)
            img->pixels[3 * p] = img->pixels[3 * p + 1] = img->pixels[3 * p + 2] = src[p];
    }
    return GRAFT_OK;
}

graft_status graft__ds_fitted(graft__ds_store *s, int64_t item, float *out)
{
    const size_t n = s->image_bytes;
    const unsigned char *hit = s->cache ? __atomic_load_n(&s->cache[item], __ATOMIC_ACQUIRE)
                                        : NULL;
    if (hit) {
        for (size_t i = 0; i < n; ++i)
            out[i] = (float)hit[i];
        return GRAFT_OK;
    }
    const int64_t h = s->options.height, w = s->options.width;
    graft__image img;
    graft_status rc;
    if (s->idx_pixels) {
        rc = idx_image(s, item, &img);
    } else {
        /* JPEGs decode no larger than the fit needs (DCT scaling). */
        graft__decode_want want;
        graft__fit_want(s->options.resize, h, w, &want);
        rc = graft__image_decode_want(s->paths[item], &want, &img);
    }
    if (rc != GRAFT_OK)
        return rc;
    rc = graft__image_fit(&img, h, w, s->options.resize, out);
    graft__image_free(&img);
    if (rc != GRAFT_OK)
        return graft__fail_prefix(rc, "%s", s->paths[item]);
    /* Rounded as the cache stores it, so a cached and an uncached load agree. */
    for (size_t i = 0; i < n; ++i) {
        float v = out[i] < 0.0f ? 0.0f : out[i] > 255.0f ? 255.0f : out[i];
        out[i] = floorf(v + 0.5f);
    }
    cache_put(s, item, out);
    return GRAFT_OK;
}

/* ---- batches --------------------------------------------------------------------- */

/* Whether any per-image augmentation is on (mixup and cutmix are batch-level
 * and mix labels, which a batch of class indices cannot carry). */
static int augment_active(const graft_augment *a)
{
    return a && (a->flip_horizontal || a->flip_vertical || a->rotation != 0.0 || a->zoom != 0.0 ||
                 a->translate != 0.0 || a->crop_scale != 0.0 || a->brightness != 0.0 ||
                 a->contrast != 0.0 || a->saturation != 0.0 || a->hue != 0.0 ||
                 a->erasing != 0.0);
}

graft_status graft_dataset_load(graft_dataset *ds, const int64_t *indices, int64_t n,
                                const graft_augment *aug, uint64_t seed, float *x,
                                int32_t *labels)
{
    if (!ds)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_load: dataset is NULL");
    if (n < 0 || (n > 0 && (!indices || !x)))
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_load: %s",
                           n < 0 ? "negative count" : indices ? "x is NULL" : "indices is NULL");
    for (int64_t k = 0; k < n; ++k)
        if (indices[k] < 0 || indices[k] >= ds->count)
            return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_load: index %lld is outside "
                               "the dataset's %lld images", (long long)indices[k],
                               (long long)ds->count);
    const int augment = augment_active(aug);
    graft__ds_store *s = ds->store;
    const int64_t h = s->options.height, w = s->options.width;
    const size_t per = s->image_bytes;
    int threads = graft__ds_threads(s);
    if (threads > n)
        threads = n > 0 ? (int)n : 1;

    /* The error reported is that of the first failing image in `indices`, so it
     * too is independent of the thread count: images past it are skipped, those
     * before it all run. */
    int64_t fail_k = n;
    graft_status fail_rc = GRAFT_OK;
    char fail_msg[1024] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t k = 0; k < n; ++k) {
        if (k > __atomic_load_n(&fail_k, __ATOMIC_RELAXED))
            continue;
        const int64_t item = graft__ds_item(ds, indices[k]);
        float *img = x + (size_t)k * per;
        graft_status rc = graft__ds_fitted(s, item, img);
        if (rc == GRAFT_OK && augment) {
            rc = graft__augment_image(aug, graft__seed_derive(seed, (uint64_t)item), img, h, w);
            if (rc != GRAFT_OK)
                graft__fail_prefix(rc, "%s", s->paths[item]);
        }
        if (rc == GRAFT_OK) {
            graft__preprocess(img, h * w, s->options.preprocess);
            continue;
        }
#pragma omp critical(graft_dataset_load_error)
        if (k < __atomic_load_n(&fail_k, __ATOMIC_RELAXED)) {
            __atomic_store_n(&fail_k, k, __ATOMIC_RELAXED);
            fail_rc = rc;
            snprintf(fail_msg, sizeof fail_msg, "%s", graft_last_error());
        }
    }
    if (fail_rc != GRAFT_OK)
        return graft__fail(fail_rc, "%s", fail_msg);
    if (labels)
        for (int64_t k = 0; k < n; ++k)
            labels[k] = s->labels[graft__ds_item(ds, indices[k])];
    return GRAFT_OK;
}

/* ---- batch source ------------------------------------------------------------------ */

static graft_status source_fill(void *user, const int64_t *indices, int64_t n, int epoch,
                                float *x, int32_t *labels)
{
    graft__ds_source *src = user;
    return graft_dataset_load(src->dataset, indices, n, src->augment ? &src->aug : NULL,
                              (uint64_t)epoch, x, labels);
}

graft_batch_source graft_dataset_source(graft_dataset *ds, const graft_augment *aug)
{
    graft_batch_source b = {0, NULL, NULL};
    if (!ds) {
        graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_source: dataset is NULL");
        return b;
    }
    graft__ds_source *src = graft__calloc(1, sizeof *src);
    if (!src) {
        graft__fail(GRAFT_E_NOMEM, "graft_dataset_source: out of memory");
        return b;
    }
    src->dataset = ds;
    if (aug) {
        src->aug = *aug;
        src->augment = 1;
    }
    src->next = ds->sources;
    ds->sources = src;
    b.count = ds->count;
    b.fill = source_fill;
    b.user = src;
    return b;
}

void graft__dataset_size(const graft_dataset *ds, int64_t *height, int64_t *width)
{
    *height = ds->store->options.height;
    *width = ds->store->options.width;
}
