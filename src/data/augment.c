/* Per-image random augmentation: draw the parameters from the seed, compose the
 * geometric ones into one inverse affine map, resample once, then colour and
 * erasing. Semantics follow the Keras preprocessing layers (RandomFlip,
 * RandomRotation, RandomZoom, RandomTranslation, RandomBrightness,
 * RandomContrast) and torchvision (RandomResizedCrop, RandomErasing). */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"
#include "data/augment.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

/* One stream per operation, so each draws the same whatever else is on. */
enum {
    STREAM_CROP = 1,
    STREAM_FLIP_H,
    STREAM_FLIP_V,
    STREAM_ROTATION,
    STREAM_ZOOM,
    STREAM_TRANSLATE,
    STREAM_BRIGHTNESS,
    STREAM_CONTRAST,
    STREAM_SATURATION,
    STREAM_HUE,
    STREAM_ERASE,
    STREAM_ERASE_NOISE
};

/* Tries before RandomResizedCrop falls back to a centre crop and RandomErasing gives up. */
#define TRIES 10

/* Uniform in (0, 1) with 53 random bits, from the counter generator. */
static double unit(uint64_t stream, uint64_t index)
{
    const uint64_t bits = graft__mix64(stream ^ graft__mix64(index)) >> 11;
    return ((double)bits + 0.5) * (1.0 / 9007199254740992.0);
}

/* Uniform in [-f, f]. */
static double symmetric(uint64_t stream, uint64_t index, double f)
{
    return (2 * unit(stream, index) - 1) * f;
}

/* Uniform integer in [0, n). */
static int64_t below(uint64_t stream, uint64_t index, int64_t n)
{
    const int64_t k = (int64_t)(unit(stream, index) * (double)n);
    return k < n ? k : n - 1;
}

/* ---- validation ---------------------------------------------------------- */

static graft_status check_range(const char *field, double v, double hi)
{
    if (v >= 0 && v <= hi)
        return GRAFT_OK;
    return graft__fail(GRAFT_E_INVALID_ARG, "augment: %s must be in [0, %g], got %g", field, hi,
                       v);
}

graft_status graft__augment_check(const graft_augment *aug)
{
    if (!aug)
        return GRAFT_OK;
    const struct {
        const char *field;
        double value, max;
    } fields[] = {
        {"rotation", aug->rotation, 1},     {"zoom", aug->zoom, 1},
        {"translate", aug->translate, 1},   {"crop_scale", aug->crop_scale, 1},
        {"brightness", aug->brightness, 1}, {"contrast", aug->contrast, 1},
        {"saturation", aug->saturation, 1}, {"hue", aug->hue, 0.5},
        {"erasing", aug->erasing, 1},       {"mixup", aug->mixup, HUGE_VAL},
        {"cutmix", aug->cutmix, HUGE_VAL},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; ++i) {
        graft_status rc = check_range(fields[i].field, fields[i].value, fields[i].max);
        if (rc != GRAFT_OK)
            return rc;
        if (isinf(fields[i].value))
            return graft__fail(GRAFT_E_INVALID_ARG, "augment: %s must be finite",
                               fields[i].field);
    }
    return GRAFT_OK;
}

int graft__augment_is_identity(const graft_augment *aug)
{
    return !aug || (!aug->flip_horizontal && !aug->flip_vertical && aug->rotation == 0 &&
                    aug->zoom == 0 && aug->translate == 0 && aug->crop_scale == 0 &&
                    aug->brightness == 0 && aug->contrast == 0 && aug->saturation == 0 &&
                    aug->hue == 0 && aug->erasing == 0);
}

/* ---- drawing --------------------------------------------------------------- */

void graft__augment_params_identity(graft__augment_params *p)
{
    memset(p, 0, sizeof *p);
    p->zoom = 1;
    p->contrast = 1;
    p->saturation = 1;
}

/* torchvision RandomResizedCrop.get_params: area fraction uniform in [scale, 1],
 * aspect (w/h) log-uniform in [3/4, 4/3], sides rounded; a try that does not fit
 * is redrawn, and after TRIES a centre crop clamped to that aspect range is taken. */
static void draw_crop(uint64_t stream, double scale, int64_t h, int64_t w,
                      graft__augment_params *p)
{
    const double area = (double)h * (double)w;
    const double log_lo = log(3.0 / 4.0), log_hi = log(4.0 / 3.0);
    p->crop = 1;
    for (uint64_t t = 0; t < TRIES; ++t) {
        const double target = area * (scale + (1 - scale) * unit(stream, 4 * t));
        const double aspect = exp(log_lo + (log_hi - log_lo) * unit(stream, 4 * t + 1));
        const int64_t cw = (int64_t)nearbyint(sqrt(target * aspect));
        const int64_t ch = (int64_t)nearbyint(sqrt(target / aspect));
        if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
            p->crop_w = cw;
            p->crop_h = ch;
            p->crop_y = below(stream, 4 * t + 2, h - ch + 1);
            p->crop_x = below(stream, 4 * t + 3, w - cw + 1);
            return;
        }
    }
    const double ratio = (double)w / (double)h;
    p->crop_w = w;
    p->crop_h = h;
    if (ratio < 3.0 / 4.0)
        p->crop_h = (int64_t)nearbyint((double)w / (3.0 / 4.0));
    else if (ratio > 4.0 / 3.0)
        p->crop_w = (int64_t)nearbyint((double)h * (4.0 / 3.0));
    p->crop_h = p->crop_h < 1 ? 1 : p->crop_h > h ? h : p->crop_h;
    p->crop_w = p->crop_w < 1 ? 1 : p->crop_w > w ? w : p->crop_w;
    p->crop_y = (h - p->crop_h) / 2;
    p->crop_x = (w - p->crop_w) / 2;
}

/* torchvision RandomErasing.get_params with scale (0.02, 0.33) and ratio (0.3, 3.3):
 * area fraction uniform, aspect (h/w) log-uniform, sides rounded, the box strictly
 * smaller than the image on both axes; no erasing when TRIES all fail. */
static void draw_erase(uint64_t stream, int64_t h, int64_t w, graft__augment_params *p)
{
    const double area = (double)h * (double)w;
    const double log_lo = log(0.3), log_hi = log(3.3);
    for (uint64_t t = 0; t < TRIES; ++t) {
        /* index 0 is the apply-or-not draw */
        const uint64_t k = 1 + 4 * t;
        const double target = area * (0.02 + (0.33 - 0.02) * unit(stream, k));
        const double aspect = exp(log_lo + (log_hi - log_lo) * unit(stream, k + 1));
        const int64_t eh = (int64_t)nearbyint(sqrt(target * aspect));
        const int64_t ew = (int64_t)nearbyint(sqrt(target / aspect));
        if (eh > 0 && eh < h && ew > 0 && ew < w) {
            p->erase = 1;
            p->erase_h = eh;
            p->erase_w = ew;
            p->erase_y = below(stream, k + 2, h - eh + 1);
            p->erase_x = below(stream, k + 3, w - ew + 1);
            return;
        }
    }
}

static graft_status check_size(const char *what, int64_t h, int64_t w)
{
    int64_t n;
    if (h <= 0 || w <= 0 || !graft__mul_i64(h, w, &n) || !graft__mul_i64(n, 3, &n) ||
        (uint64_t)n > SIZE_MAX / sizeof(float))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: image size %lldx%lld is out of range", what,
                           (long long)w, (long long)h);
    return GRAFT_OK;
}

graft_status graft__augment_draw(const graft_augment *aug, uint64_t seed, int64_t h, int64_t w,
                                 graft__augment_params *p)
{
    graft__augment_params_identity(p);
    graft_status rc = graft__augment_check(aug);
    if (rc == GRAFT_OK)
        rc = check_size("augment", h, w);
    if (rc != GRAFT_OK || !aug)
        return rc;
#define STREAM(s) graft__seed_derive(seed, (s))
    if (aug->crop_scale > 0)
        draw_crop(STREAM(STREAM_CROP), aug->crop_scale, h, w, p);
    if (aug->flip_horizontal)
        p->flip_horizontal = unit(STREAM(STREAM_FLIP_H), 0) < 0.5;
    if (aug->flip_vertical)
        p->flip_vertical = unit(STREAM(STREAM_FLIP_V), 0) < 0.5;
    if (aug->rotation > 0)
        p->angle = symmetric(STREAM(STREAM_ROTATION), 0, aug->rotation * 2 * M_PI);
    if (aug->zoom > 0)
        p->zoom = 1 + symmetric(STREAM(STREAM_ZOOM), 0, aug->zoom);
    if (aug->translate > 0) {
        p->shift_x = symmetric(STREAM(STREAM_TRANSLATE), 0, aug->translate) * (double)w;
        p->shift_y = symmetric(STREAM(STREAM_TRANSLATE), 1, aug->translate) * (double)h;
    }
    if (aug->brightness > 0)
        p->brightness = symmetric(STREAM(STREAM_BRIGHTNESS), 0, aug->brightness) * 255;
    if (aug->contrast > 0)
        p->contrast = 1 + symmetric(STREAM(STREAM_CONTRAST), 0, aug->contrast);
    if (aug->saturation > 0)
        p->saturation = 1 + symmetric(STREAM(STREAM_SATURATION), 0, aug->saturation);
    if (aug->hue > 0)
        p->hue = symmetric(STREAM(STREAM_HUE), 0, aug->hue);
    if (aug->erasing > 0 && unit(STREAM(STREAM_ERASE), 0) < aug->erasing) {
        draw_erase(STREAM(STREAM_ERASE), h, w, p);
        p->erase_seed = STREAM(STREAM_ERASE_NOISE);
    }
#undef STREAM
    return GRAFT_OK;
}

/* ---- geometry -------------------------------------------------------------- */

/* r = outer(inner(.)) for maps src = (m0 X + m1 Y + m2, m3 X + m4 Y + m5). */
static void compose(const double outer[6], const double inner[6], double r[6])
{
    double t[6];
    t[0] = outer[0] * inner[0] + outer[1] * inner[3];
    t[1] = outer[0] * inner[1] + outer[1] * inner[4];
    t[2] = outer[0] * inner[2] + outer[1] * inner[5] + outer[2];
    t[3] = outer[3] * inner[0] + outer[4] * inner[3];
    t[4] = outer[3] * inner[1] + outer[4] * inner[4];
    t[5] = outer[3] * inner[2] + outer[4] * inner[5] + outer[5];
    memcpy(r, t, sizeof t);
}

void graft__augment_matrix(const graft__augment_params *p, int64_t h, int64_t w, double m[6])
{
    const double fw = (double)w, fh = (double)h, cx = fw / 2, cy = fh / 2;
    /* Built from the source side: each stage maps its output coordinates to its
     * input's, and m = crop o flip o rotate o zoom o translate. */
    m[0] = 1, m[1] = 0, m[2] = 0, m[3] = 0, m[4] = 1, m[5] = 0;
    if (p->crop) {
        const double sx = (double)p->crop_w / fw, sy = (double)p->crop_h / fh;
        const double c[6] = {sx, 0, (double)p->crop_x, 0, sy, (double)p->crop_y};
        memcpy(m, c, sizeof c);
    }
    if (p->flip_horizontal || p->flip_vertical) {
        const double f[6] = {p->flip_horizontal ? -1 : 1, 0, p->flip_horizontal ? fw : 0,
                             0, p->flip_vertical ? -1 : 1, p->flip_vertical ? fh : 0};
        compose(m, f, m);
    }
    if (p->angle != 0) {
        /* Counter-clockwise on screen (y down): the output at offset (u, v) from
         * the centre reads the source at (cos u - sin v, sin u + cos v). */
        const double c = cos(p->angle), s = sin(p->angle);
        const double r[6] = {c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy};
        compose(m, r, m);
    }
    if (p->zoom != 1) {
        const double z[6] = {p->zoom, 0, cx - p->zoom * cx, 0, p->zoom, cy - p->zoom * cy};
        compose(m, z, m);
    }
    if (p->shift_x != 0 || p->shift_y != 0) {
        const double t[6] = {1, 0, -p->shift_x, 0, 1, -p->shift_y};
        compose(m, t, m);
    }
}

/* Keras 'reflect' (d c b a | a b c d | d c b a) of an integer index into [0, n):
 * period 2n, the second half mirrored, so -1 -> 0 and n -> n - 1. */
static int64_t reflect(int64_t i, int64_t n)
{
    const int64_t period = 2 * n;
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - 1 - i;
}

/* Splits a sampling coordinate into a pixel index and a fraction in [0, 1),
 * snapping to the pixel within 1e-9. Far-off (or NaN) coordinates are clamped
 * first: reflection is periodic, so only the index's overflow matters. */
static int64_t split(double c, double *frac)
{
    if (!(c > -1e15))
        c = -1e15;
    if (c > 1e15)
        c = 1e15;
    double i = floor(c), f = c - i;
    if (f < 1e-9)
        f = 0;
    else if (f > 1 - 1e-9)
        f = 0, i += 1;
    *frac = f;
    return (int64_t)i;
}

void graft__augment_apply_affine(const float *src, int64_t h, int64_t w, const double m[6],
                                 float *out)
{
    for (int64_t y = 0; y < h; ++y) {
        const double Y = (double)y + 0.5;
        float *o = out + y * w * 3;
        for (int64_t x = 0; x < w; ++x, o += 3) {
            const double X = (double)x + 0.5;
            double fx, fy;
            const int64_t ix = split(m[0] * X + m[1] * Y + m[2] - 0.5, &fx);
            const int64_t iy = split(m[3] * X + m[4] * Y + m[5] - 0.5, &fy);
            const int64_t x0 = reflect(ix, w), y0 = reflect(iy, h);
            const float *p00 = src + (y0 * w + x0) * 3;
            if (fx == 0 && fy == 0) {
                o[0] = p00[0], o[1] = p00[1], o[2] = p00[2];
                continue;
            }
            const int64_t x1 = reflect(ix + 1, w), y1 = reflect(iy + 1, h);
            const float *p01 = src + (y0 * w + x1) * 3;
            const float *p10 = src + (y1 * w + x0) * 3;
            const float *p11 = src + (y1 * w + x1) * 3;
            for (int c = 0; c < 3; ++c) {
                const double top = p00[c] + fx * ((double)p01[c] - p00[c]);
                const double bottom = p10[c] + fx * ((double)p11[c] - p10[c]);
                o[c] = (float)(top + fy * (bottom - top));
            }
        }
    }
}

/* ---- colour ---------------------------------------------------------------- */

static float clamp255(double v)
{
    return v < 0 ? 0.0f : v > 255 ? 255.0f : (float)v;
}

/* Hue rotation in HSV (as torchvision's adjust_hue and tf.image.adjust_hue):
 * value and saturation stay, so pure red turned half a turn is pure cyan. */
static void rotate_hue(float *px, double turns)
{
    const double r = px[0], g = px[1], b = px[2];
    const double hi = fmax(r, fmax(g, b)), lo = fmin(r, fmin(g, b)), d = hi - lo;
    if (d <= 0)
        return; /* grey: no hue */
    double hue; /* in sixths of a turn, [0, 6) */
    if (hi == r)
        hue = (g - b) / d;
    else if (hi == g)
        hue = (b - r) / d + 2;
    else
        hue = (r - g) / d + 4;
    hue = fmod(hue + 6 * turns, 6);
    if (hue < 0)
        hue += 6;
    if (hue >= 6)
        hue -= 6;
    const int sector = (int)hue;
    const double f = hue - sector;
    const double up = lo + d * f, down = hi - d * f;
    double o[3];
    switch (sector) {
    case 0: o[0] = hi, o[1] = up, o[2] = lo; break;
    case 1: o[0] = down, o[1] = hi, o[2] = lo; break;
    case 2: o[0] = lo, o[1] = hi, o[2] = up; break;
    case 3: o[0] = lo, o[1] = down, o[2] = hi; break;
    case 4: o[0] = up, o[1] = lo, o[2] = hi; break;
    default: o[0] = hi, o[1] = lo, o[2] = down; break;
    }
    for (int c = 0; c < 3; ++c)
        px[c] = clamp255(o[c]);
}

static void colour(const graft__augment_params *p, float *img, int64_t n)
{
    if (p->brightness != 0)
        for (int64_t i = 0; i < n * 3; ++i)
            img[i] = clamp255(img[i] + p->brightness);
    if (p->contrast != 1) {
        /* RandomContrast: about each channel's mean over the image */
        double mean[3] = {0, 0, 0};
        for (int64_t i = 0; i < n; ++i)
            for (int c = 0; c < 3; ++c)
                mean[c] += img[i * 3 + c];
        for (int c = 0; c < 3; ++c)
            mean[c] /= (double)n;
        for (int64_t i = 0; i < n; ++i)
            for (int c = 0; c < 3; ++c)
                img[i * 3 + c] = clamp255((img[i * 3 + c] - mean[c]) * p->contrast + mean[c]);
    }
    if (p->saturation != 1)
        for (int64_t i = 0; i < n; ++i) {
            float *px = img + i * 3;
            const double grey = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
            for (int c = 0; c < 3; ++c)
                px[c] = clamp255(grey + (px[c] - grey) * p->saturation);
        }
    if (p->hue != 0)
        for (int64_t i = 0; i < n; ++i)
            rotate_hue(img + i * 3, p->hue);
}

static void erase(const graft__augment_params *p, float *img, int64_t w)
{
    for (int64_t y = 0; y < p->erase_h; ++y) {
        float *row = img + ((p->erase_y + y) * w + p->erase_x) * 3;
        for (int64_t i = 0; i < p->erase_w * 3; ++i)
            row[i] = (float)(255 * unit(p->erase_seed, (uint64_t)(y * p->erase_w * 3 + i)));
    }
}

graft_status graft__augment_apply(const graft__augment_params *p, float *img, int64_t h,
                                  int64_t w)
{
    graft_status rc = check_size("augment", h, w);
    if (rc != GRAFT_OK)
        return rc;
    if (!img)
        return graft__fail(GRAFT_E_INVALID_ARG, "augment: image is NULL");
    if (p->crop && (p->crop_w <= 0 || p->crop_h <= 0 || p->crop_x < 0 || p->crop_y < 0 ||
                    p->crop_w > w - p->crop_x || p->crop_h > h - p->crop_y))
        return graft__fail(GRAFT_E_INVALID_ARG, "augment: crop is outside the image");
    if (p->erase && (p->erase_w <= 0 || p->erase_h <= 0 || p->erase_x < 0 || p->erase_y < 0 ||
                     p->erase_w > w - p->erase_x || p->erase_h > h - p->erase_y))
        return graft__fail(GRAFT_E_INVALID_ARG, "augment: erasing box is outside the image");
    double m[6];
    graft__augment_matrix(p, h, w, m);
    if (m[0] != 1 || m[1] != 0 || m[2] != 0 || m[3] != 0 || m[4] != 1 || m[5] != 0) {
        const size_t bytes = sizeof(float) * (size_t)(h * w * 3);
        float *tmp = graft__malloc(bytes);
        if (!tmp)
            return graft__fail(GRAFT_E_NOMEM, "augment: no memory for a %lldx%lld image",
                               (long long)w, (long long)h);
        graft__augment_apply_affine(img, h, w, m, tmp);
        memcpy(img, tmp, bytes);
        graft__free(tmp);
    }
    colour(p, img, h * w);
    if (p->erase)
        erase(p, img, w);
    return GRAFT_OK;
}

graft_status graft__augment_image(const graft_augment *aug, uint64_t seed, float *img, int64_t h,
                                  int64_t w)
{
    graft_status rc = graft__augment_check(aug);
    if (rc != GRAFT_OK || graft__augment_is_identity(aug))
        return rc;
    graft__augment_params p;
    rc = graft__augment_draw(aug, seed, h, w, &p);
    if (rc != GRAFT_OK)
        return rc;
    return graft__augment_apply(&p, img, h, w);
}

/* ---- Beta draws ------------------------------------------------------------ */

/* log of a Gamma(shape, 1) draw from one stream. Marsaglia-Tsang: with
 * d = shape - 1/3, c = 1 / sqrt(9 d), accept d (1 + c z)^3 for normal z when
 * log U < z^2 / 2 + d - d v + d log v; below shape 1 the draw for shape + 1 is
 * scaled by U^(1/shape). Each attempt reads three counters, so the result is a
 * function of (stream) alone. */
static double log_gamma_draw(double shape, uint64_t stream)
{
    uint64_t k = 0;
    double boost = 0;
    if (shape < 1) {
        boost = log(unit(stream, k++)) / shape;
        shape += 1;
    }
    const double d = shape - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        const double u1 = unit(stream, k++), u2 = unit(stream, k++);
        const double z = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
        double v = 1 + c * z;
        const double u = unit(stream, k++);
        if (v <= 0)
            continue;
        v = v * v * v;
        if (log(u) < 0.5 * z * z + d - d * v + d * log(v))
            return log(d * v) + boost;
    }
}

double graft__gamma_sample(double shape, uint64_t seed)
{
    return exp(log_gamma_draw(shape, graft__seed_derive(seed, 1)));
}

double graft__beta_sample(double a, double b, uint64_t seed)
{
    const double lx = log_gamma_draw(a, graft__seed_derive(seed, 1));
    const double ly = log_gamma_draw(b, graft__seed_derive(seed, 2));
    return 1 / (1 + exp(ly - lx));
}

/* ---- mixup and cutmix ------------------------------------------------------- */

enum { MIX_LAMBDA = 1, MIX_PERMUTATION, MIX_BOX };

static graft_status check_alpha(const char *what, double alpha)
{
    if (alpha >= 0 && !isinf(alpha))
        return GRAFT_OK;
    return graft__fail(GRAFT_E_INVALID_ARG, "%s: alpha must be >= 0 and finite, got %g", what,
                       alpha);
}

/* Fisher-Yates from the counter generator: index i draws its swap. */
static void permutation(uint64_t stream, int64_t n, int64_t *partner)
{
    for (int64_t i = 0; i < n; ++i)
        partner[i] = i;
    for (int64_t i = n - 1; i > 0; --i) {
        const int64_t j = below(stream, (uint64_t)i, i + 1);
        const int64_t t = partner[i];
        partner[i] = partner[j];
        partner[j] = t;
    }
}

static graft_status mix_draw(const char *what, int64_t n, double alpha, uint64_t seed,
                             int64_t *partner, double *lambda)
{
    graft_status rc = check_alpha(what, alpha);
    if (rc != GRAFT_OK)
        return rc;
    if (n < 0 || (n > 0 && !partner))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: bad batch of %lld", what, (long long)n);
    *lambda = alpha > 0 ? graft__beta_sample(alpha, alpha, graft__seed_derive(seed, MIX_LAMBDA))
                        : 1.0;
    permutation(graft__seed_derive(seed, MIX_PERMUTATION), n, partner);
    return GRAFT_OK;
}

graft_status graft__mixup_draw(int64_t n, double alpha, uint64_t seed, int64_t *partner,
                               double *lambda)
{
    return mix_draw("mixup", n, alpha, seed, partner, lambda);
}

static int64_t clip(int64_t v, int64_t hi)
{
    return v < 0 ? 0 : v > hi ? hi : v;
}

graft_status graft__cutmix_draw(int64_t n, int64_t h, int64_t w, double alpha, uint64_t seed,
                                int64_t *partner, graft__cutmix_box *box)
{
    double lambda;
    graft_status rc = check_size("cutmix", h, w);
    if (rc == GRAFT_OK)
        rc = mix_draw("cutmix", n, alpha, seed, partner, &lambda);
    if (rc != GRAFT_OK)
        return rc;
    /* The CutMix reference: sides sqrt(1 - lambda) of the image's, truncated;
     * the centre uniform over the pixels; the box clipped to the image. */
    const double ratio = sqrt(1 - lambda);
    const int64_t cut_w = (int64_t)((double)w * ratio), cut_h = (int64_t)((double)h * ratio);
    const uint64_t stream = graft__seed_derive(seed, MIX_BOX);
    const int64_t cx = below(stream, 0, w), cy = below(stream, 1, h);
    box->x0 = clip(cx - cut_w / 2, w);
    box->x1 = clip(cx + cut_w / 2, w);
    box->y0 = clip(cy - cut_h / 2, h);
    box->y1 = clip(cy + cut_h / 2, h);
    box->lambda =
        1 - (double)((box->x1 - box->x0) * (box->y1 - box->y0)) / ((double)h * (double)w);
    return GRAFT_OK;
}

static graft_status check_batch(const char *what, const float *x, const int32_t *labels,
                                int64_t n, int64_t h, int64_t w, int64_t classes,
                                const float *soft_targets)
{
    int64_t pixels, targets;
    graft_status rc = check_size(what, h, w);
    if (rc != GRAFT_OK)
        return rc;
    if (n < 0 || classes <= 0 || !graft__mul_i64(n, h * w * 3, &pixels) ||
        !graft__mul_i64(n, classes, &targets) || (uint64_t)pixels > SIZE_MAX / sizeof(float) ||
        (uint64_t)targets > SIZE_MAX / sizeof(float))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: bad batch of %lld with %lld classes", what,
                           (long long)n, (long long)classes);
    if (n > 0 && (!x || !labels || !soft_targets))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: %s is NULL", what,
                           !x ? "x" : !labels ? "labels" : "soft_targets");
    for (int64_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= classes)
            return graft__fail(GRAFT_E_INVALID_ARG,
                               "%s: label %ld of sample %lld is outside [0, %lld)", what,
                               (long)labels[i], (long long)i, (long long)classes);
    return GRAFT_OK;
}

static void soft_targets_fill(const int32_t *labels, const int64_t *partner, int64_t n,
                              int64_t classes, double lambda, float *t)
{
    memset(t, 0, sizeof(float) * (size_t)(n * classes));
    for (int64_t i = 0; i < n; ++i) {
        t[i * classes + labels[i]] += (float)lambda;
        t[i * classes + labels[partner[i]]] += (float)(1 - lambda);
    }
}

/* Rows [y0, y1) and columns [x0, x1) of every image: the whole image for mixup,
 * the box for cutmix; keep is the weight an image keeps of itself (0: paste). */
typedef struct region {
    int64_t x0, y0, x1, y1;
    double keep;
} region;

/* dst's region r = keep dst + (1 - keep) src, src read from (src_x0, src_y0) of
 * an image src_w wide; c channels per pixel. */
static void blend(float *dst, const float *src, int64_t w, int64_t c, const region *r,
                  int64_t src_w, int64_t src_x0, int64_t src_y0)
{
    const int64_t row = (r->x1 - r->x0) * c;
    for (int64_t y = r->y0; y < r->y1; ++y) {
        float *d = dst + (y * w + r->x0) * c;
        const float *s = src + ((y - r->y0 + src_y0) * src_w + src_x0) * c;
        if (r->keep == 0)
            memcpy(d, s, sizeof(float) * (size_t)row);
        else
            for (int64_t i = 0; i < row; ++i)
                d[i] = (float)(r->keep * d[i] + (1 - r->keep) * s[i]);
    }
}

/* Mixes every image i's region with partner[i]'s original region, following
 * the permutation's cycles so only one region needs saving: along a cycle
 * i -> partner[i] -> ..., each partner is still untouched when read, except the
 * cycle's start, read from the saved copy at the end. */
static graft_status mix_regions(float *x, int64_t n, int64_t h, int64_t w, int64_t c,
                                const int64_t *partner, const region *r)
{
    const int64_t rw = r->x1 - r->x0, rh = r->y1 - r->y0, image = h * w * c;
    if (rw <= 0 || rh <= 0 || r->keep == 1)
        return GRAFT_OK;
    float *saved = graft__malloc(sizeof(float) * (size_t)(rw * rh * c));
    unsigned char *done = graft__calloc((size_t)n, 1);
    if (!saved || !done) {
        graft__free(saved);
        graft__free(done);
        return graft__fail(GRAFT_E_NOMEM, "mixing a batch: out of memory");
    }
    for (int64_t start = 0; start < n; ++start) {
        if (done[start] || partner[start] == start)
            continue;
        /* saved = start's region */
        for (int64_t y = 0; y < rh; ++y)
            memcpy(saved + y * rw * c, x + start * image + ((r->y0 + y) * w + r->x0) * c,
                   sizeof(float) * (size_t)(rw * c));
        int64_t i = start;
        do {
            const int64_t j = partner[i];
            done[i] = 1;
            if (j == start)
                blend(x + i * image, saved, w, c, r, rw, 0, 0);
            else
                blend(x + i * image, x + j * image, w, c, r, w, r->x0, r->y0);
            i = j;
        } while (i != start);
    }
    graft__free(saved);
    graft__free(done);
    return GRAFT_OK;
}

/* Draws and mixes x (n, h, w, c) in place; partner and lambda receive the draw
 * (lambda: the weight each sample keeps of its own label). Arguments checked. */
static graft_status mix(graft__mix_kind kind, float *x, int64_t n, int64_t h, int64_t w,
                        int64_t c, double alpha, uint64_t seed, int64_t *partner, double *lambda)
{
    region r = {0, 0, w, h, 1};
    graft_status rc;
    if (kind == GRAFT__MIX_CUTMIX) {
        graft__cutmix_box box;
        rc = graft__cutmix_draw(n, h, w, alpha, seed, partner, &box);
        r = (region){box.x0, box.y0, box.x1, box.y1, 0};
        *lambda = box.lambda;
    } else {
        rc = graft__mixup_draw(n, alpha, seed, partner, lambda);
        r.keep = *lambda;
    }
    return rc == GRAFT_OK ? mix_regions(x, n, h, w, c, partner, &r) : rc;
}

static graft_status mix_with_soft_targets(graft__mix_kind kind, float *x, const int32_t *labels,
                                          int64_t n, int64_t h, int64_t w, int64_t classes,
                                          double alpha, uint64_t seed, float *soft_targets)
{
    const char *what = kind == GRAFT__MIX_CUTMIX ? "cutmix" : "mixup";
    graft_status rc = check_batch(what, x, labels, n, h, w, classes, soft_targets);
    if (rc != GRAFT_OK || n == 0)
        return rc == GRAFT_OK ? check_alpha(what, alpha) : rc;
    int64_t *partner = graft__malloc(sizeof(int64_t) * (size_t)n);
    if (!partner)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory", what);
    double lambda;
    rc = mix(kind, x, n, h, w, 3, alpha, seed, partner, &lambda);
    if (rc == GRAFT_OK)
        soft_targets_fill(labels, partner, n, classes, lambda, soft_targets);
    graft__free(partner);
    return rc;
}

graft_status graft__mixup_batch(float *x, const int32_t *labels, int64_t n, int64_t h, int64_t w,
                                int64_t classes, double alpha, uint64_t seed,
                                float *soft_targets)
{
    return mix_with_soft_targets(GRAFT__MIX_MIXUP, x, labels, n, h, w, classes, alpha, seed,
                                 soft_targets);
}

graft_status graft__cutmix_batch(float *x, const int32_t *labels, int64_t n, int64_t h,
                                 int64_t w, int64_t classes, double alpha, uint64_t seed,
                                 float *soft_targets)
{
    return mix_with_soft_targets(GRAFT__MIX_CUTMIX, x, labels, n, h, w, classes, alpha, seed,
                                 soft_targets);
}

graft_status graft__mix_batch(graft__mix_kind kind, float *x, const int32_t *labels, int64_t n,
                              int64_t h, int64_t w, int64_t c, double alpha, uint64_t seed,
                              int32_t *partner_labels, double *lambda)
{
    const char *what = kind == GRAFT__MIX_CUTMIX ? "cutmix" : "mixup";
    int64_t elems;
    if (n < 0 || h <= 0 || w <= 0 || c <= 0 || !graft__mul_i64(h, w, &elems) ||
        !graft__mul_i64(elems, c, &elems) || !graft__mul_i64(elems, n > 0 ? n : 1, &elems) ||
        (uint64_t)elems > SIZE_MAX / sizeof(float))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: bad batch of %lld of %lldx%lldx%lld", what,
                           (long long)n, (long long)h, (long long)w, (long long)c);
    if (n > 0 && (!x || !labels || !partner_labels || !lambda))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: %s is NULL", what,
                           !x ? "x" : !labels ? "labels" : !partner_labels ? "partner_labels"
                                                                            : "lambda");
    if (n == 0)
        return check_alpha(what, alpha);
    int64_t *partner = graft__malloc(sizeof(int64_t) * (size_t)n);
    if (!partner)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory", what);
    graft_status rc = mix(kind, x, n, h, w, c, alpha, seed, partner, lambda);
    if (rc == GRAFT_OK)
        for (int64_t i = 0; i < n; ++i)
            partner_labels[i] = labels[partner[i]];
    graft__free(partner);
    return rc;
}
