/* Separable resampling. Each axis maps a span of source pixels onto its output
 * pixels and gets its own filter: a box over the exact fractional coverage when
 * shrinking (OpenCV INTER_AREA, PIL's box), a tent at half-pixel centres when
 * enlarging (PIL bilinear, TF half_pixel_centers). So one axis may shrink while
 * the other grows, and crops with fractional edges need no extra pass. */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/image.h"

/* The source interval [start, start + length) that one axis samples. */
typedef struct span {
    double start, length;
} span;

/* Per output pixel: the first source pixel read and up to max_taps weights. */
typedef struct taps {
    int64_t *first;
    int *count;
    float *weight; /* max_taps per output pixel */
    int max_taps;
} taps;

static void taps_free(taps *t)
{
    graft__free(t->first);
    graft__free(t->count);
    graft__free(t->weight);
}

static double coverage(double a, double b, int64_t j)
{
    return fmax(0.0, fmin(b, (double)j + 1) - fmax(a, (double)j));
}

/* Box filter: source pixel j weighs by how much of [j, j+1) the output pixel's
 * interval covers; normalised by the sum so rounding at the ends cannot bias. */
static void box_taps(span s, int64_t n, int64_t i, double step, taps *t)
{
    const double a = s.start + (double)i * step, b = s.start + (double)(i + 1) * step;
    int64_t j0 = (int64_t)floor(a), j1 = (int64_t)ceil(b);
    j0 = j0 < 0 ? 0 : j0 > n - 1 ? n - 1 : j0;
    j1 = j1 > n ? n : j1 <= j0 ? j0 + 1 : j1;
    if (j1 - j0 > t->max_taps)
        j1 = j0 + t->max_taps;
    double sum = 0;
    for (int64_t j = j0; j < j1; ++j)
        sum += coverage(a, b, j);
    float *w = t->weight + i * t->max_taps;
    for (int64_t j = j0; j < j1; ++j)
        w[j - j0] = sum > 0 ? (float)(coverage(a, b, j) / sum) : (float)(1.0 / (double)(j1 - j0));
    t->first[i] = j0;
    t->count[i] = (int)(j1 - j0);
}

/* Tent filter at the output pixel's centre, clamped to the edge pixels. */
static void tent_taps(span s, int64_t n, int64_t i, double step, taps *t)
{
    double c = s.start + ((double)i + 0.5) * step - 0.5;
    c = c < 0 ? 0 : c > (double)(n - 1) ? (double)(n - 1) : c;
    const int64_t j = (int64_t)floor(c);
    const double f = c - (double)j;
    float *w = t->weight + i * t->max_taps;
    w[0] = (float)(1.0 - f);
    w[1] = (float)f;
    t->first[i] = j;
    t->count[i] = f > 0 && j + 1 < n ? 2 : 1;
}

static graft_status taps_build(span s, int64_t n, int64_t out, taps *t)
{
    const double step = s.length / (double)out;
    const int shrink = step >= 1.0;
    *t = (taps){0};
    t->max_taps = shrink ? (int)ceil(step) + 2 : 2;
    size_t weights;
    t->first = graft__malloc((size_t)out * sizeof *t->first);
    t->count = graft__malloc((size_t)out * sizeof *t->count);
    if (graft__mul_size((size_t)out, (size_t)t->max_taps * sizeof(float), &weights))
        t->weight = graft__calloc(1, weights);
    if (!t->first || !t->count || !t->weight) {
        taps_free(t);
        return GRAFT_E_NOMEM;
    }
    for (int64_t i = 0; i < out; ++i) {
        if (shrink)
            box_taps(s, n, i, step, t);
        else
            tent_taps(s, n, i, step, t);
    }
    return GRAFT_OK;
}

/* Filters each needed source row along x into rows of out_w pixels. */
static void pass_x(const graft__image *src, const taps *tx, int64_t out_w, int64_t y0,
                   int64_t y1, float *tmp)
{
    for (int64_t y = y0; y < y1; ++y) {
        const unsigned char *row = src->pixels + y * src->width * 3;
        float *out = tmp + (y - y0) * out_w * 3;
        for (int64_t x = 0; x < out_w; ++x, out += 3) {
            const unsigned char *in = row + tx->first[x] * 3;
            const float *w = tx->weight + x * tx->max_taps;
            float r = 0, g = 0, b = 0;
            for (int k = 0; k < tx->count[x]; ++k, in += 3) {
                r += w[k] * in[0];
                g += w[k] * in[1];
                b += w[k] * in[2];
            }
            out[0] = r;
            out[1] = g;
            out[2] = b;
        }
    }
}

/* Filters along y, a whole row of taps at a time (contiguous, vectorisable). */
static void pass_y(const float *tmp, const taps *ty, int64_t y0, int64_t out_h, int64_t out_w,
                   float *out, int64_t stride)
{
    const int64_t n = out_w * 3;
    for (int64_t y = 0; y < out_h; ++y, out += stride) {
        memset(out, 0, (size_t)n * sizeof *out);
        const float *w = ty->weight + y * ty->max_taps;
        for (int k = 0; k < ty->count[y]; ++k) {
            const float *in = tmp + (ty->first[y] + k - y0) * n;
            for (int64_t i = 0; i < n; ++i)
                out[i] += w[k] * in[i];
        }
    }
}

/* Samples the window (sx, sy) of src into out_h x out_w pixels of 0..255
 * floats, rows `stride` floats apart. */
static graft_status resample(const graft__image *src, span sx, span sy, int64_t out_h,
                             int64_t out_w, float *out, int64_t stride)
{
    taps tx, ty;
    graft_status rc = taps_build(sx, src->width, out_w, &tx);
    if (rc != GRAFT_OK)
        return rc;
    rc = taps_build(sy, src->height, out_h, &ty);
    if (rc != GRAFT_OK) {
        taps_free(&tx);
        return rc;
    }
    /* Only source rows some output row reads go through the x pass. */
    const int64_t y0 = ty.first[0], y1 = ty.first[out_h - 1] + ty.count[out_h - 1];
    size_t bytes;
    float *tmp = NULL;
    if (graft__mul_size((size_t)(y1 - y0) * (size_t)out_w, 3 * sizeof(float), &bytes))
        tmp = graft__malloc(bytes);
    if (tmp) {
        pass_x(src, &tx, out_w, y0, y1, tmp);
        pass_y(tmp, &ty, y0, out_h, out_w, out, stride);
    }
    graft__free(tmp);
    taps_free(&tx);
    taps_free(&ty);
    return tmp ? GRAFT_OK : GRAFT_E_NOMEM;
}

static graft_status check_sizes(const graft__image *src, int64_t out_h, int64_t out_w)
{
    if (!src || !src->pixels || src->width <= 0 || src->height <= 0 || src->channels != 3)
        return graft__fail(GRAFT_E_INVALID_ARG, "resize: source image is empty");
    if (out_h <= 0 || out_w <= 0 || out_h > GRAFT__IMAGE_MAX_SIDE ||
        out_w > GRAFT__IMAGE_MAX_SIDE)
        return graft__fail(GRAFT_E_INVALID_ARG, "resize: target size %lldx%lld is out of range",
                           (long long)out_w, (long long)out_h);
    return GRAFT_OK;
}

static graft_status no_memory(const graft__image *src, int64_t out_h, int64_t out_w)
{
    return graft__fail(GRAFT_E_NOMEM, "out of memory resizing %lldx%lld to %lldx%lld",
                       (long long)src->width, (long long)src->height, (long long)out_w,
                       (long long)out_h);
}

static graft_status resample_checked(const graft__image *src, span sx, span sy, int64_t out_h,
                                     int64_t out_w, float *out, int64_t stride)
{
    graft_status rc = resample(src, sx, sy, out_h, out_w, out, stride);
    return rc == GRAFT_OK ? rc : no_memory(src, out_h, out_w);
}

graft_status graft__resize_f32(const graft__image *src, int64_t out_h, int64_t out_w, float *out)
{
    graft_status rc = check_sizes(src, out_h, out_w);
    if (rc != GRAFT_OK)
        return rc;
    span sx = {0, (double)src->width}, sy = {0, (double)src->height};
    return resample_checked(src, sx, sy, out_h, out_w, out, out_w * 3);
}

graft_status graft__resize_u8(const graft__image *src, int64_t out_h, int64_t out_w,
                              graft__image *out)
{
    *out = (graft__image){0};
    graft_status rc = check_sizes(src, out_h, out_w);
    if (rc != GRAFT_OK)
        return rc;
    const size_t n = (size_t)out_h * (size_t)out_w * 3;
    float *tmp = graft__calloc(n, sizeof *tmp);
    if (!tmp || graft__image_alloc(out, out_w, out_h, "resize") != GRAFT_OK) {
        graft__free(tmp);
        return no_memory(src, out_h, out_w);
    }
    rc = graft__resize_f32(src, out_h, out_w, tmp);
    for (size_t i = 0; rc == GRAFT_OK && i < n; ++i) {
        const float v = tmp[i] < 0 ? 0 : tmp[i] > 255 ? 255 : tmp[i];
        out->pixels[i] = (unsigned char)lrintf(v);
    }
    graft__free(tmp);
    if (rc != GRAFT_OK)
        graft__image_free(out);
    return rc;
}

/* CROP: the window of the source with the target's aspect, as large as fits,
 * centred. Integer cross-multiplication picks the binding side exactly. */
static graft_status fit_crop(const graft__image *src, int64_t out_h, int64_t out_w, float *out)
{
    const int64_t w = src->width, h = src->height;
    span sx = {0, (double)w}, sy = {0, (double)h};
    if (out_w * h >= out_h * w) /* target relatively wider: keep the full width */
        sy.length = (double)out_h * (double)w / (double)out_w;
    else
        sx.length = (double)out_w * (double)h / (double)out_h;
    sx.start = ((double)w - sx.length) / 2;
    sy.start = ((double)h - sy.length) / 2;
    return resample_checked(src, sx, sy, out_h, out_w, out, out_w * 3);
}

/* PAD: the whole source scaled to fit, rounded to whole pixels, centred on 0. */
static graft_status fit_pad(const graft__image *src, int64_t out_h, int64_t out_w, float *out)
{
    const int64_t w = src->width, h = src->height;
    int64_t cw = out_w, ch = out_h;
    if (out_w * h <= out_h * w) /* target relatively taller: the width binds */
        ch = (2 * h * out_w + w) / (2 * w);
    else
        cw = (2 * w * out_h + h) / (2 * h);
    ch = ch < 1 ? 1 : ch;
    cw = cw < 1 ? 1 : cw;
    memset(out, 0, (size_t)(out_h * out_w * 3) * sizeof *out);
    const int64_t top = (out_h - ch) / 2, left = (out_w - cw) / 2;
    span sx = {0, (double)w}, sy = {0, (double)h};
    return resample_checked(src, sx, sy, ch, cw, out + (top * out_w + left) * 3, out_w * 3);
}

graft_status graft__image_fit(const graft__image *src, int64_t out_h, int64_t out_w,
                              graft_resize_mode mode, float *out)
{
    graft_status rc = check_sizes(src, out_h, out_w);
    if (rc != GRAFT_OK)
        return rc;
    switch (mode) {
    case GRAFT_RESIZE_STRETCH: return graft__resize_f32(src, out_h, out_w, out);
    case GRAFT_RESIZE_CROP: return fit_crop(src, out_h, out_w, out);
    case GRAFT_RESIZE_PAD: return fit_pad(src, out_h, out_w, out);
    }
    return graft__fail(GRAFT_E_INVALID_ARG, "resize: unknown resize mode %d", (int)mode);
}

/* STRETCH and CROP shrink only if both sides of the decode reach the target; PAD
 * is scaled by its binding side, so one side reaching it is enough. */
void graft__fit_want(graft_resize_mode mode, int64_t out_h, int64_t out_w,
                     graft__decode_want *want)
{
    *want = (graft__decode_want){out_w, out_h, mode == GRAFT_RESIZE_PAD};
}
