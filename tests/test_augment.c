/* Per-image augmentation: every geometric operation on images whose correct
 * output is known (reflect fill written out by hand from the Keras definition
 * d c b a | a b c d | d c b a), colour operations on known pixels, erasing, and
 * the draw's determinism and distributions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/augment.h"
#include "graft.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static uint32_t lcg = 12345;
static float rnd255(void)
{
    lcg = lcg * 1664525u + 1013904223u;
    return (float)((lcg >> 8) % 25501) / 100.0f; /* 0.00 .. 255.00 on a 1/100 grid */
}

static float *image_alloc(int64_t h, int64_t w)
{
    float *img = malloc(sizeof(float) * (size_t)(h * w * 3));
    assert_non_null(img);
    return img;
}

static float *random_image(int64_t h, int64_t w)
{
    float *img = image_alloc(h, w);
    for (int64_t i = 0; i < h * w * 3; ++i)
        img[i] = rnd255();
    return img;
}

static float *copy_image(const float *src, int64_t h, int64_t w)
{
    float *img = image_alloc(h, w);
    memcpy(img, src, sizeof(float) * (size_t)(h * w * 3));
    return img;
}

#define AT(img, w, x, y, c) ((img)[(((y) * (w)) + (x)) * 3 + (c)])

static void assert_images_equal(const float *a, const float *b, int64_t h, int64_t w)
{
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                if (memcmp(&AT(a, w, x, y, c), &AT(b, w, x, y, c), sizeof(float)) != 0)
                    fail_msg("differ at (%lld,%lld,%d): %.9g vs %.9g", (long long)x,
                             (long long)y, c, AT(a, w, x, y, c), AT(b, w, x, y, c));
}

static graft__augment_params identity_params(void)
{
    graft__augment_params p;
    graft__augment_params_identity(&p);
    return p;
}

/* Applies p to a copy of src and returns it. */
static float *applied(const graft__augment_params *p, const float *src, int64_t h, int64_t w)
{
    float *out = copy_image(src, h, w);
    assert_int_equal(graft__augment_apply(p, out, h, w), GRAFT_OK);
    return out;
}

/* The Keras-reflect extension of a row of n values written out block by block:
 * [-3n, -2n) reversed, [-2n, -n) forward, [-n, 0) reversed, [0, n) forward, ... */
static double extended(const double *row, int64_t n, int64_t i)
{
    assert_true(i >= -3 * n && i < 3 * n);
    double ext[6 * 64];
    assert_true(n <= 64);
    for (int block = -3; block < 3; ++block)
        for (int64_t k = 0; k < n; ++k)
            ext[(block + 3) * n + k] = (block & 1) ? row[n - 1 - k] : row[k];
    return ext[i + 3 * n];
}

/* ---- validation and no-ops ------------------------------------------------- */

static void expect_bad(graft_augment aug, const char *field)
{
    assert_int_equal(graft__augment_check(&aug), GRAFT_E_INVALID_ARG);
    if (!strstr(graft_last_error(), field))
        fail_msg("message '%s' does not name %s", graft_last_error(), field);
    float img[2 * 2 * 3] = {0};
    assert_int_equal(graft__augment_image(&aug, 1, img, 2, 2), GRAFT_E_INVALID_ARG);
}

static void test_check_names_bad_field(void **state)
{
    (void)state;
    assert_int_equal(graft__augment_check(NULL), GRAFT_OK);
    graft_augment ok = {1, 1, 1, 1, 1, 1, 1, 1, 1, 0.5, 1, 4, 4};
    assert_int_equal(graft__augment_check(&ok), GRAFT_OK);
    graft_augment a;
    a = (graft_augment){.rotation = 1.5};
    expect_bad(a, "rotation");
    a = (graft_augment){.rotation = -0.1};
    expect_bad(a, "rotation");
    a = (graft_augment){.zoom = -0.2};
    expect_bad(a, "zoom");
    a = (graft_augment){.translate = NAN};
    expect_bad(a, "translate");
    a = (graft_augment){.crop_scale = 1.01};
    expect_bad(a, "crop_scale");
    a = (graft_augment){.brightness = -1};
    expect_bad(a, "brightness");
    a = (graft_augment){.contrast = 2};
    expect_bad(a, "contrast");
    a = (graft_augment){.saturation = -0.5};
    expect_bad(a, "saturation");
    a = (graft_augment){.hue = 0.6};
    expect_bad(a, "hue");
    a = (graft_augment){.erasing = 1.5};
    expect_bad(a, "erasing");
    a = (graft_augment){.mixup = -0.2};
    expect_bad(a, "mixup");
    a = (graft_augment){.cutmix = INFINITY};
    expect_bad(a, "cutmix");

    graft_augment good = {.rotation = 0.1};
    float img[2 * 2 * 3] = {0};
    assert_int_equal(graft__augment_image(&good, 1, img, 0, 2), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__augment_image(&good, 1, img, 2, -1), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__augment_image(&good, 1, NULL, 2, 2), GRAFT_E_INVALID_ARG);
}

static void test_null_and_zero_are_noops(void **state)
{
    (void)state;
    const int64_t h = 5, w = 6;
    float *img = random_image(h, w);
    img[0] = 300, img[1] = -5, img[2] = NAN; /* untouched, not even clamped */
    float *orig = copy_image(img, h, w);
    graft_augment zero = {0};
    assert_true(graft__augment_is_identity(NULL));
    assert_true(graft__augment_is_identity(&zero));
    assert_int_equal(graft__augment_image(NULL, 7, img, h, w), GRAFT_OK);
    assert_images_equal(img, orig, h, w);
    assert_int_equal(graft__augment_image(&zero, 7, img, h, w), GRAFT_OK);
    assert_images_equal(img, orig, h, w);
    /* batch-level fields are not per-image work */
    graft_augment batch = {.mixup = 0.2, .cutmix = 1};
    assert_true(graft__augment_is_identity(&batch));
    assert_int_equal(graft__augment_image(&batch, 7, img, h, w), GRAFT_OK);
    assert_images_equal(img, orig, h, w);

    graft_augment one[] = {{.flip_horizontal = 1}, {.flip_vertical = 1}, {.rotation = 0.1},
                           {.zoom = 0.1},          {.translate = 0.1},   {.crop_scale = 0.5},
                           {.brightness = 0.1},    {.contrast = 0.1},    {.saturation = 0.1},
                           {.hue = 0.1},           {.erasing = 0.5}};
    for (size_t i = 0; i < sizeof one / sizeof *one; ++i)
        assert_false(graft__augment_is_identity(&one[i]));
    free(img);
    free(orig);
}

/* ---- geometry ---------------------------------------------------------------- */

static void test_identity_transform_is_bit_exact(void **state)
{
    (void)state;
    const int64_t h = 7, w = 9;
    float *img = random_image(h, w);
    float *out = image_alloc(h, w);
    const double m[6] = {1, 0, 0, 0, 1, 0};
    graft__augment_apply_affine(img, h, w, m, out);
    assert_images_equal(out, img, h, w);
    graft__augment_params p = identity_params();
    double pm[6];
    graft__augment_matrix(&p, h, w, pm);
    assert_memory_equal(pm, m, sizeof m);
    float *same = applied(&p, img, h, w);
    assert_images_equal(same, img, h, w);
    free(img);
    free(out);
    free(same);
}

static void test_flips_mirror_exactly(void **state)
{
    (void)state;
    const int64_t h = 5, w = 8;
    float *img = image_alloc(h, w);
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                AT(img, w, x, y, c) = (float)(10 * x + 100 * y + c) + 0.25f;
    graft__augment_params p = identity_params();
    p.flip_horizontal = 1;
    float *hf = applied(&p, img, h, w);
    p.flip_horizontal = 0, p.flip_vertical = 1;
    float *vf = applied(&p, img, h, w);
    p.flip_horizontal = 1;
    float *both = applied(&p, img, h, w);
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) {
                assert_true(AT(hf, w, x, y, c) == AT(img, w, w - 1 - x, y, c));
                assert_true(AT(vf, w, x, y, c) == AT(img, w, x, h - 1 - y, c));
                assert_true(AT(both, w, x, y, c) == AT(img, w, w - 1 - x, h - 1 - y, c));
            }
    free(img);
    free(hf);
    free(vf);
    free(both);
}

static void test_quarter_turns_are_exact(void **state)
{
    (void)state;
    for (int64_t n = 7; n <= 8; ++n) { /* odd and even sides */
        float *img = random_image(n, n);
        graft__augment_params p = identity_params();
        p.angle = M_PI / 2;
        float *ccw = applied(&p, img, n, n);
        p.angle = -M_PI / 2;
        float *cw = applied(&p, img, n, n);
        p.angle = M_PI;
        float *half = applied(&p, img, n, n);
        for (int64_t y = 0; y < n; ++y)
            for (int64_t x = 0; x < n; ++x)
                for (int c = 0; c < 3; ++c) {
                    /* counter-clockwise on screen: transpose, then flip vertically
                     * (the top-right pixel becomes the top-left one) */
                    assert_true(AT(ccw, n, x, y, c) == AT(img, n, n - 1 - y, x, c));
                    assert_true(AT(cw, n, x, y, c) == AT(img, n, y, n - 1 - x, c));
                    assert_true(AT(half, n, x, y, c) == AT(img, n, n - 1 - x, n - 1 - y, c));
                }
        free(img);
        free(ccw);
        free(cw);
        free(half);
    }
}

/* An image whose value depends on x only (per channel offsets), as a row. */
static float *row_image(int64_t h, int64_t w, double *row)
{
    float *img = image_alloc(h, w);
    for (int64_t x = 0; x < w; ++x)
        row[x] = 3.0 * (double)(x * x) + 1.5;
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                AT(img, w, x, y, c) = (float)(row[x] + c);
    return img;
}

static void test_integer_translation_reflects(void **state)
{
    (void)state;
    const int64_t h = 4, w = 8;
    double row[8], col[4];
    float *img = row_image(h, w, row);
    const double shifts[] = {3, -2, 8, -11, 0.0};
    for (size_t s = 0; s < sizeof shifts / sizeof *shifts; ++s) {
        graft__augment_params p = identity_params();
        p.shift_x = shifts[s];
        p.shift_y = 5; /* more than the height: two reflections deep */
        float *out = applied(&p, img, h, w);
        for (int64_t y = 0; y < h; ++y)
            for (int64_t x = 0; x < w; ++x)
                for (int c = 0; c < 3; ++c) {
                    const double want = extended(row, w, x - (int64_t)shifts[s]) + c;
                    assert_true(AT(out, w, x, y, c) == (float)want);
                }
        free(out);
    }
    /* by hand: shift right by 3 of a b c d e f g h is c b a a b c d e */
    graft__augment_params p = identity_params();
    p.shift_x = 3;
    float *out = applied(&p, img, h, w);
    const int from[8] = {2, 1, 0, 0, 1, 2, 3, 4};
    for (int64_t x = 0; x < w; ++x)
        assert_true(AT(out, w, x, 0, 0) == AT(img, w, from[x], 0, 0));
    free(out);
    free(img);

    /* vertically, on an image varying with y: shift down by 5 with h = 4 */
    float *tall = image_alloc(h, 3);
    for (int64_t y = 0; y < h; ++y) {
        col[y] = 7.0 * (double)y + 0.5;
        for (int64_t x = 0; x < 3; ++x)
            for (int c = 0; c < 3; ++c)
                AT(tall, 3, x, y, c) = (float)col[y];
    }
    p = identity_params();
    p.shift_y = 5;
    out = applied(&p, tall, h, 3);
    for (int64_t y = 0; y < h; ++y)
        assert_true(AT(out, 3, 1, y, 2) == (float)extended(col, h, y - 5));
    free(out);
    free(tall);
}

static void test_zoom_out(void **state)
{
    (void)state;
    /* a constant image stays constant: reflect never brings in anything else */
    const int64_t h = 9, w = 12;
    float *flat = image_alloc(h, w);
    for (int64_t i = 0; i < h * w * 3; ++i)
        flat[i] = 93.75f;
    graft__augment_params p = identity_params();
    p.zoom = 2;
    float *out = applied(&p, flat, h, w);
    for (int64_t i = 0; i < h * w * 3; ++i)
        assert_true(out[i] == 93.75f);
    free(out);
    free(flat);

    /* zoom 2 out of an 8-wide row: output x reads index 2x - 3.5 (the content
     * halves in size about the centre), the mean of two reflected neighbours */
    double row[8];
    float *img = row_image(4, 8, row);
    out = applied(&p, img, 4, 8);
    for (int64_t y = 0; y < 4; ++y)
        for (int64_t x = 0; x < 8; ++x) {
            const double want = (extended(row, 8, 2 * x - 4) + extended(row, 8, 2 * x - 3)) / 2;
            assert_float_equal(AT(out, 8, x, y, 0), want, 1e-4);
        }
    free(out);

    /* zoom 0.5 (in): output x reads 2 + (x + 0.5) / 2 - 0.5 */
    p.zoom = 0.5;
    out = applied(&p, img, 4, 8);
    for (int64_t x = 0; x < 8; ++x) {
        const double at = 1.75 + 0.5 * (double)x;
        const int64_t i = (int64_t)floor(at);
        const double want = row[i] + (at - (double)i) * (row[i + 1] - row[i]);
        assert_float_equal(AT(out, 8, x, 2, 0), want, 1e-4);
    }
    free(out);
    free(img);
}

static void test_crop_scales_back(void **state)
{
    (void)state;
    const int64_t h = 6, w = 8;
    double row[8];
    float *img = row_image(h, w, row);
    /* the whole image is the identity, bit-exact */
    graft__augment_params p = identity_params();
    p.crop = 1, p.crop_w = w, p.crop_h = h;
    float *out = applied(&p, img, h, w);
    assert_images_equal(out, img, h, w);
    free(out);
    /* columns 2..5 stretched to 8: output x reads 2 + (x + 0.5) / 2 - 0.5 */
    p.crop_x = 2, p.crop_y = 1, p.crop_w = 4, p.crop_h = 3;
    out = applied(&p, img, h, w);
    for (int64_t x = 0; x < w; ++x) {
        const double at = 1.75 + 0.5 * (double)x;
        const int64_t i = (int64_t)floor(at);
        const double want = row[i] + (at - (double)i) * (row[i + 1] - row[i]);
        assert_float_equal(AT(out, w, x, 3, 1), want + 1, 1e-4);
    }
    free(out);
    /* a box outside the image is refused */
    p.crop_x = 5;
    float *bad = copy_image(img, h, w);
    assert_int_equal(graft__augment_apply(&p, bad, h, w), GRAFT_E_INVALID_ARG);
    free(bad);

    /* crop_scale 1 on a square image always draws the whole image */
    graft_augment aug = {.crop_scale = 1};
    float *sq = random_image(16, 16);
    for (uint64_t seed = 0; seed < 50; ++seed) {
        assert_int_equal(graft__augment_draw(&aug, seed, 16, 16, &p), GRAFT_OK);
        assert_true(p.crop);
        assert_true(p.crop_x == 0 && p.crop_y == 0 && p.crop_w == 16 && p.crop_h == 16);
        float *same = copy_image(sq, 16, 16);
        assert_int_equal(graft__augment_image(&aug, seed, same, 16, 16), GRAFT_OK);
        assert_images_equal(same, sq, 16, 16);
        free(same);
    }
    free(sq);
    free(img);
}

/* One combined map equals the operations applied one after another in the
 * documented order (crop, flip, rotate, zoom, translate), on exact operations. */
static void test_composition_order(void **state)
{
    (void)state;
    const int64_t n = 8;
    float *img = random_image(n, n);
    graft__augment_params all = identity_params();
    all.crop = 1, all.crop_x = 0, all.crop_y = 0, all.crop_w = n, all.crop_h = n;
    all.flip_horizontal = 1;
    all.angle = M_PI / 2;
    all.shift_x = 2, all.shift_y = -3;
    float *once = applied(&all, img, n, n);

    graft__augment_params step = identity_params();
    step.flip_horizontal = 1;
    float *a = applied(&step, img, n, n);
    step = identity_params();
    step.angle = M_PI / 2;
    float *b = applied(&step, a, n, n);
    step = identity_params();
    step.shift_x = 2, step.shift_y = -3;
    float *c = applied(&step, b, n, n);
    /* the shift reaches past the edge, where reflect of the rotated image is the
     * rotation of the reflected one for quarter turns: still exact */
    assert_images_equal(once, c, n, n);

    /* and not the other order */
    step = identity_params();
    step.angle = M_PI / 2;
    float *d = applied(&step, img, n, n);
    step = identity_params();
    step.flip_horizontal = 1;
    float *e = applied(&step, d, n, n);
    all.shift_x = all.shift_y = 0;
    float *f = applied(&all, img, n, n);
    assert_memory_not_equal(e, f, sizeof(float) * (size_t)(n * n * 3));
    free(img), free(once), free(a), free(b), free(c), free(d), free(e), free(f);
}

/* ---- colour ------------------------------------------------------------------ */

static void pixel_op(const graft__augment_params *p, const float in[3], float out[3])
{
    memcpy(out, in, sizeof(float) * 3);
    assert_int_equal(graft__augment_apply(p, out, 1, 1), GRAFT_OK);
}

static void test_brightness(void **state)
{
    (void)state;
    graft__augment_params p = identity_params();
    p.brightness = 20;
    float out[3];
    pixel_op(&p, (float[3]){100, 250, 0}, out);
    assert_true(out[0] == 120 && out[1] == 255 && out[2] == 20);
    p.brightness = -30;
    pixel_op(&p, (float[3]){100, 250, 10}, out);
    assert_true(out[0] == 70 && out[1] == 220 && out[2] == 0);
}

static void test_contrast_uses_channel_means(void **state)
{
    (void)state;
    /* 1x2 image: R 100, 200 (mean 150), G 10, 30 (mean 20), B 250, 250 */
    float img[6] = {100, 10, 250, 200, 30, 250};
    graft__augment_params p = identity_params();
    p.contrast = 2;
    assert_int_equal(graft__augment_apply(&p, img, 1, 2), GRAFT_OK);
    const float want[6] = {50, 0, 250, 250, 40, 250};
    assert_memory_equal(img, want, sizeof want);
    p.contrast = 0.5;
    float img2[6] = {100, 10, 250, 200, 30, 250};
    assert_int_equal(graft__augment_apply(&p, img2, 1, 2), GRAFT_OK);
    const float want2[6] = {125, 15, 250, 175, 25, 250};
    assert_memory_equal(img2, want2, sizeof want2);
}

static void test_saturation(void **state)
{
    (void)state;
    graft__augment_params p = identity_params();
    p.saturation = 0; /* factor 1 + u with u = -1: grey */
    float out[3];
    pixel_op(&p, (float[3]){100, 150, 200}, out);
    const double grey = 0.299 * 100 + 0.587 * 150 + 0.114 * 200;
    for (int c = 0; c < 3; ++c)
        assert_float_equal(out[c], grey, 1e-4);
    p.saturation = 2;
    pixel_op(&p, (float[3]){100, 150, 200}, out);
    assert_float_equal(out[0], 2 * 100 - grey, 1e-4);
    assert_float_equal(out[1], 2 * 150 - grey, 1e-4);
    assert_true(out[2] == 255); /* 259.25 clamped */
}

static void test_hue(void **state)
{
    (void)state;
    graft__augment_params p = identity_params();
    float out[3];
    p.hue = 0.5;
    pixel_op(&p, (float[3]){255, 0, 0}, out);
    assert_true(out[0] == 0 && out[1] == 255 && out[2] == 255); /* red -> cyan */
    p.hue = -0.5;
    pixel_op(&p, (float[3]){255, 0, 0}, out);
    assert_true(out[0] == 0 && out[1] == 255 && out[2] == 255);
    p.hue = 1.0 / 3;
    pixel_op(&p, (float[3]){255, 0, 0}, out);
    assert_float_equal(out[0], 0, 1e-3);
    assert_float_equal(out[1], 255, 1e-3);
    assert_float_equal(out[2], 0, 1e-3); /* red -> green */
    p.hue = -1.0 / 3;
    pixel_op(&p, (float[3]){0, 200, 0}, out);
    assert_float_equal(out[0], 200, 1e-3); /* green, -120 degrees -> red */
    assert_float_equal(out[1], 0, 1e-3);
    assert_float_equal(out[2], 0, 1e-3);
    p.hue = 1.0 / 6;
    pixel_op(&p, (float[3]){255, 128, 0}, out); /* orange, +60 degrees */
    assert_float_equal(out[0], 255 - 128, 1e-3);
    assert_float_equal(out[1], 255, 1e-3);
    assert_float_equal(out[2], 0, 1e-3);
    p.hue = 0.37;
    pixel_op(&p, (float[3]){90, 90, 90}, out); /* grey has no hue */
    assert_true(out[0] == 90 && out[1] == 90 && out[2] == 90);
    /* HSV value (max) and min are kept, a full turn is the identity */
    for (int i = 0; i < 200; ++i) {
        const float in[3] = {rnd255(), rnd255(), rnd255()};
        p.hue = (i % 20) / 20.0 - 0.5;
        pixel_op(&p, in, out);
        assert_float_equal(fmaxf(out[0], fmaxf(out[1], out[2])),
                           fmaxf(in[0], fmaxf(in[1], in[2])), 1e-3);
        assert_float_equal(fminf(out[0], fminf(out[1], out[2])),
                           fminf(in[0], fminf(in[1], in[2])), 1e-3);
        p.hue = 1;
        pixel_op(&p, in, out);
        for (int c = 0; c < 3; ++c)
            assert_float_equal(out[c], in[c], 1e-3);
    }
}

/* ---- erasing ----------------------------------------------------------------- */

static void test_erasing_changes_one_box(void **state)
{
    (void)state;
    const int64_t h = 20, w = 30;
    graft_augment aug = {.erasing = 1};
    float *base = image_alloc(h, w);
    for (int64_t i = 0; i < h * w * 3; ++i)
        base[i] = -1; /* outside the noise's range: every erased value differs */
    int erased = 0;
    for (uint64_t seed = 0; seed < 300; ++seed) {
        graft__augment_params p;
        assert_int_equal(graft__augment_draw(&aug, seed, h, w, &p), GRAFT_OK);
        float *img = copy_image(base, h, w);
        assert_int_equal(graft__augment_image(&aug, seed, img, h, w), GRAFT_OK);
        int64_t x0 = w, y0 = h, x1 = -1, y1 = -1, changed = 0;
        for (int64_t y = 0; y < h; ++y)
            for (int64_t x = 0; x < w; ++x)
                for (int c = 0; c < 3; ++c)
                    if (AT(img, w, x, y, c) != -1) {
                        const float v = AT(img, w, x, y, c);
                        assert_true(v >= 0 && v <= 255);
                        changed++;
                        x0 = x < x0 ? x : x0, x1 = x > x1 ? x : x1;
                        y0 = y < y0 ? y : y0, y1 = y > y1 ? y : y1;
                    }
        if (!p.erase) {
            assert_int_equal(changed, 0);
            free(img);
            continue;
        }
        erased++;
        const int64_t bw = x1 - x0 + 1, bh = y1 - y0 + 1;
        assert_int_equal(changed, bw * bh * 3); /* a full rectangle */
        assert_true(x0 == p.erase_x && y0 == p.erase_y && bw == p.erase_w && bh == p.erase_h);
        assert_true(bw < w && bh < h);
        /* sides are rounded from sqrt(area * r), sqrt(area / r): the area fraction
         * in [0.02, 0.33] and aspect in [0.3, 3.3] hold up to half a pixel per side */
        const double area = (double)(h * w);
        assert_true((bw + 0.5) * (bh + 0.5) >= 0.02 * area);
        assert_true((bw - 0.5) * (bh - 0.5) <= 0.33 * area);
        assert_true((bh + 0.5) / (bw - 0.5) >= 0.3 && (bh - 0.5) / (bw + 0.5) <= 3.3);
        free(img);
    }
    assert_true(erased >= 290); /* p = 1: only ten failed tries can skip */
    free(base);
}

static int mallocs_left;
static void *failing_malloc(size_t bytes)
{
    return mallocs_left-- > 0 ? malloc(bytes) : NULL;
}
static void *plain_realloc(void *p, size_t bytes)
{
    return realloc(p, bytes);
}

static void test_out_of_memory_leaves_image(void **state)
{
    (void)state;
    const int64_t h = 6, w = 5;
    float *img = random_image(h, w);
    float *orig = copy_image(img, h, w);
    const graft_allocator failing = {failing_malloc, plain_realloc, free};
    graft_augment aug = {.rotation = 0.2, .brightness = 0.5};
    mallocs_left = 0;
    graft_set_allocator(&failing);
    const graft_status rc = graft__augment_image(&aug, 3, img, h, w);
    graft_set_allocator(NULL);
    assert_int_equal(rc, GRAFT_E_NOMEM);
    assert_images_equal(img, orig, h, w);
    free(img);
    free(orig);
}

/* ---- draws --------------------------------------------------------------------- */

static const graft_augment everything = {
    .flip_horizontal = 1, .flip_vertical = 1, .rotation = 0.1, .zoom = 0.2, .translate = 0.1,
    .crop_scale = 0.5,    .brightness = 0.2,  .contrast = 0.3, .saturation = 0.4, .hue = 0.05,
    .erasing = 0.5};

static void test_draw_is_deterministic(void **state)
{
    (void)state;
    const int64_t h = 24, w = 32;
    float *img = random_image(h, w);
    graft__augment_params p1, p2;
    assert_int_equal(graft__augment_draw(&everything, 99, h, w, &p1), GRAFT_OK);
    assert_int_equal(graft__augment_draw(&everything, 99, h, w, &p2), GRAFT_OK);
    assert_memory_equal(&p1, &p2, sizeof p1);
    float *a = copy_image(img, h, w), *b = copy_image(img, h, w), *c = copy_image(img, h, w);
    assert_int_equal(graft__augment_image(&everything, 99, a, h, w), GRAFT_OK);
    assert_int_equal(graft__augment_image(&everything, 99, b, h, w), GRAFT_OK);
    assert_int_equal(graft__augment_image(&everything, 100, c, h, w), GRAFT_OK);
    assert_images_equal(a, b, h, w);
    assert_memory_not_equal(a, c, sizeof(float) * (size_t)(h * w * 3));
    /* graft__augment_image is draw then apply */
    float *d = applied(&p1, img, h, w);
    assert_images_equal(a, d, h, w);
    for (uint64_t s = 1; s < 20; ++s) {
        assert_int_equal(graft__augment_draw(&everything, s, h, w, &p2), GRAFT_OK);
        assert_true(p2.angle != p1.angle && p2.zoom != p1.zoom && p2.hue != p1.hue);
    }
    /* each operation has its own stream: turning others on changes nothing */
    graft_augment rot = {.rotation = 0.1}, flip = {.flip_horizontal = 1};
    for (uint64_t s = 0; s < 50; ++s) {
        graft__augment_params only, with;
        assert_int_equal(graft__augment_draw(&rot, s, h, w, &only), GRAFT_OK);
        assert_int_equal(graft__augment_draw(&everything, s, h, w, &with), GRAFT_OK);
        assert_true(only.angle == with.angle);
        assert_int_equal(graft__augment_draw(&flip, s, h, w, &only), GRAFT_OK);
        assert_int_equal(only.flip_horizontal, with.flip_horizontal);
    }
    free(img), free(a), free(b), free(c), free(d);
}

static void test_draw_distributions(void **state)
{
    (void)state;
    const int64_t h = 40, w = 60;
    const int n = 2000;
    const graft_augment *a = &everything;
    double angle_sum = 0, angle_min = 1e9, angle_max = -1e9, zoom_sum = 0, shift_sum = 0;
    double area_sum = 0;
    int flips_h = 0, flips_v = 0, flips_both = 0, erases = 0;
    for (int s = 0; s < n; ++s) {
        graft__augment_params p;
        assert_int_equal(graft__augment_draw(a, (uint64_t)s * 7919u, h, w, &p), GRAFT_OK);
        assert_true(fabs(p.angle) <= a->rotation * 2 * M_PI);
        angle_sum += p.angle;
        angle_min = fmin(angle_min, p.angle), angle_max = fmax(angle_max, p.angle);
        flips_h += p.flip_horizontal, flips_v += p.flip_vertical;
        flips_both += p.flip_horizontal && p.flip_vertical;
        assert_true(p.zoom >= 1 - a->zoom && p.zoom <= 1 + a->zoom);
        zoom_sum += p.zoom;
        assert_true(fabs(p.shift_x) <= a->translate * w && fabs(p.shift_y) <= a->translate * h);
        shift_sum += p.shift_x / (double)w + p.shift_y / (double)h;
        assert_true(fabs(p.brightness) <= a->brightness * 255);
        assert_true(fabs(p.contrast - 1) <= a->contrast);
        assert_true(fabs(p.saturation - 1) <= a->saturation);
        assert_true(fabs(p.hue) <= a->hue);
        /* crop: inside the image, area and aspect within range up to rounding */
        assert_true(p.crop && p.crop_x >= 0 && p.crop_y >= 0 && p.crop_x + p.crop_w <= w &&
                    p.crop_y + p.crop_h <= h);
        const double cw = (double)p.crop_w, ch = (double)p.crop_h;
        assert_true((cw + 0.5) * (ch + 0.5) >= a->crop_scale * (double)(h * w));
        assert_true((cw + 0.5) / (ch - 0.5) >= 0.75 && (cw - 0.5) / (ch + 0.5) <= 4.0 / 3);
        area_sum += cw * ch / (double)(h * w);
        if (p.erase) {
            erases++;
            assert_true(p.erase_x >= 0 && p.erase_x + p.erase_w <= w);
            assert_true(p.erase_y >= 0 && p.erase_y + p.erase_h <= h);
        }
    }
    const double bound = a->rotation * 2 * M_PI;
    assert_float_equal(angle_sum / n, 0, 0.03 * bound); /* sd of the mean ~0.013 bound */
    assert_true(angle_min < -0.95 * bound && angle_max > 0.95 * bound);
    assert_float_equal((double)flips_h / n, 0.5, 0.04);
    assert_float_equal((double)flips_v / n, 0.5, 0.04);
    assert_float_equal((double)flips_both / n, 0.25, 0.04);
    assert_float_equal(zoom_sum / n, 1, 0.01);
    assert_float_equal(shift_sum / n, 0, 0.01);
    /* area fraction uniform in [0.5, 1] before the retries, which reject more of
     * the large areas (they overflow the height at narrow aspects) */
    assert_true(area_sum / n > 0.6 && area_sum / n < 0.8);
    assert_float_equal((double)erases / n, 0.5, 0.04);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_names_bad_field),
        cmocka_unit_test(test_null_and_zero_are_noops),
        cmocka_unit_test(test_identity_transform_is_bit_exact),
        cmocka_unit_test(test_flips_mirror_exactly),
        cmocka_unit_test(test_quarter_turns_are_exact),
        cmocka_unit_test(test_integer_translation_reflects),
        cmocka_unit_test(test_zoom_out),
        cmocka_unit_test(test_crop_scales_back),
        cmocka_unit_test(test_composition_order),
        cmocka_unit_test(test_brightness),
        cmocka_unit_test(test_contrast_uses_channel_means),
        cmocka_unit_test(test_saturation),
        cmocka_unit_test(test_hue),
        cmocka_unit_test(test_erasing_changes_one_box),
        cmocka_unit_test(test_out_of_memory_leaves_image),
        cmocka_unit_test(test_draw_is_deterministic),
        cmocka_unit_test(test_draw_distributions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
