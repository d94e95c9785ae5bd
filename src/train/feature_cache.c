#include "train/feature_cache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"

/* Round-to-nearest-even float -> half, with overflow to infinity and subnormals. */
static uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, mant = x & 0x7fffffu;
    if (exp == 0xffu)
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t half = mant >> shift, rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (mant >> 13), rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
        half++;
    return (uint16_t)(sign | half);
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
    if (exp == 0) {
        if (!mant) {
            x = sign;
        } else {
            exp = 127 - 14;
            while (!(mant & 0x400u)) {
                mant <<= 1;
                exp--;
            }
            x = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

static graft_status alloc_storage(graft__feature_cache *c, size_t ram_budget)
{
    if (c->bytes <= ram_budget) {
        c->data = graft__malloc(c->bytes ? c->bytes : 1);
        return c->data ? GRAFT_OK
                       : graft__fail(GRAFT_E_NOMEM, "out of memory for a %zu-byte feature cache",
                                     c->bytes);
    }
    const char *dir = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/graft-features-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0)
        return graft__fail(GRAFT_E_IO, "%s: %s", path, strerror(errno));
    unlink(path); /* the mapping keeps it alive; nothing is left behind */
    if (ftruncate(fd, (off_t)c->bytes) != 0) {
        int err = errno;
        close(fd);
        return graft__fail(GRAFT_E_IO, "%s: cannot hold %zu bytes: %s", path, c->bytes,
                           strerror(err));
    }
    void *p = mmap(NULL, c->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return graft__fail(GRAFT_E_IO, "%s: cannot map: %s", path, strerror(errno));
    c->data = p;
    c->mapped = 1;
    return GRAFT_OK;
}

static void store_rows(graft__feature_cache *c, int view, int64_t first, int64_t n,
                       const float *rows)
{
    int64_t at = ((int64_t)view * c->count + first) * c->dim, total = n * c->dim;
    if (c->float16) {
        uint16_t *dst = (uint16_t *)c->data + at;
        for (int64_t i = 0; i < total; i++)
            dst[i] = float_to_half(rows[i]);
    } else {
        memcpy((float *)c->data + at, rows, sizeof(float) * (size_t)total);
    }
}

static graft_status fill_view(graft__feature_cache *c, graft_model *m, int boundary,
                              const graft_batch_source *src, int view, int64_t batch, float *x,
                              float *features, int32_t *labels)
{
    int64_t h, w, ch;
    graft_model_input_size(m, &h, &w, &ch);
    const char *name = m->nodes[boundary].layer->name;
    int64_t idx[4096];
    int epoch = c->views == 1 ? 0 : view + 1;
    for (int64_t first = 0; first < c->count; first += batch) {
        int64_t n = c->count - first < batch ? c->count - first : batch;
        for (int64_t i = 0; i < n; i++)
            idx[i] = first + i;
        graft_status rc = src->fill(src->user, idx, n, epoch, x, labels + first);
        if (!rc)
            rc = graft_model_forward_layers(m, x, n, 1, &name, &features, NULL);
        if (rc)
            return rc;
        store_rows(c, view, first, n, features);
    }
    return GRAFT_OK;
}

graft_status graft__feature_cache_build(graft__feature_cache *c, graft_model *m, int boundary,
                                        const graft_batch_source *src, int views, int64_t batch,
                                        int float16, size_t ram_budget)
{
    memset(c, 0, sizeof *c);
    if (views < 1 || batch < 1 || batch > 4096)
        return graft__fail(GRAFT_E_INVALID_ARG, "feature cache: views >= 1, batch 1..4096");
    int64_t h, w, ch;
    graft_status rc = graft_model_input_size(m, &h, &w, &ch);
    if (rc)
        return rc;
    c->count = src->count;
    c->views = views;
    c->dim = graft__shape_elems(&m->nodes[boundary].shape);
    c->float16 = float16;
    size_t elem = float16 ? 2 : 4;
    if (!graft__mul_size((size_t)views * (size_t)c->count, (size_t)c->dim * elem, &c->bytes))
        return graft__fail(GRAFT_E_NOMEM, "feature cache size overflows");
    c->labels = graft__calloc((size_t)c->count, sizeof(int32_t));
    float *x = graft__malloc_aligned(sizeof(float) * (size_t)(batch * h * w * ch));
    float *features = graft__malloc_aligned(sizeof(float) * (size_t)(batch * c->dim));
    rc = c->labels && x && features ? alloc_storage(c, ram_budget)
                                    : graft__fail(GRAFT_E_NOMEM, "out of memory");
    for (int v = 0; !rc && v < views; v++)
        rc = fill_view(c, m, boundary, src, v, batch, x, features, c->labels);
    graft__free_aligned(x);
    graft__free_aligned(features);
    if (rc)
        graft__feature_cache_free(c);
    return rc;
}

void graft__feature_cache_free(graft__feature_cache *c)
{
    if (c->mapped)
        munmap(c->data, c->bytes);
    else
        graft__free(c->data);
    graft__free(c->labels);
    memset(c, 0, sizeof *c);
}

void graft__feature_cache_get(const graft__feature_cache *c, int view, const int64_t *idx,
                              int64_t n, float *out, int32_t *labels)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t at = ((int64_t)view * c->count + idx[i]) * c->dim;
        float *dst = out + i * c->dim;
        if (c->float16) {
            const uint16_t *src = (const uint16_t *)c->data + at;
            for (int64_t j = 0; j < c->dim; j++)
                dst[j] = half_to_float(src[j]);
        } else {
            memcpy(dst, (const float *)c->data + at, sizeof(float) * (size_t)c->dim);
        }
        if (labels)
            labels[i] = c->labels[idx[i]];
    }
}
