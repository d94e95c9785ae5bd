/* Resizing, fit modes and preprocessing, checked against naive double-precision
 * computations written here independently of src/data/resize.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "data/image.h"
#include "graft.h"

static uint32_t lcg = 777;
static unsigned rnd(unsigned n)
{
    lcg = lcg * 1664525u + 1013904223u;
    return (lcg >> 8) % n;
}

static graft__image random_image(int64_t w, int64_t h)
{
    graft__image img;
    assert_int_equal(graft__image_alloc(&img, w, h, "test"), GRAFT_OK);
    for (int64_t i = 0; i < w * h * 3; ++i)
        img.pixels[i] = (unsigned char)rnd(256);
    return img;
}

static double px(const graft__image *img, int64_t x, int64_t y, int c)
{
    return img->pixels[(y * img->width + x) * 3 + c];
}

/* Weight of source pixel j for output pixel i, resizing n -> m along one axis:
 * shrinking, the share of i's interval [i n/m, (i+1) n/m) that [j, j+1) covers;
 * enlarging, linear interpolation at i's centre (i+0.5) n/m - 0.5, clamped. */
static double naive_weight(int64_t n, int64_t m, int64_t i, int64_t j)
{
    const double scale = (double)n / (double)m;
    if (scale >= 1) {
        const double lo = i * scale, hi = (i + 1) * scale;
        const double overlap = fmin(hi, j + 1.0) - fmax(lo, (double)j);
        return overlap > 0 ? overlap / scale : 0;
    }
    double c = (i + 0.5) * scale - 0.5;
    c = fmin(fmax(c, 0), n - 1.0);
    const double d = fabs(c - (double)j);
    return d < 1 ? 1 - d : 0;
}

static double naive_pixel(const graft__image *img, int64_t out_h, int64_t out_w, int64_t ox,
                          int64_t oy, int c)
{
    double sum = 0;
    for (int64_t y = 0; y < img->height; ++y) {
        const double wy = naive_weight(img->height, out_h, oy, y);
        for (int64_t x = 0; wy > 0 && x < img->width; ++x)
            sum += wy * naive_weight(img->width, out_w, ox, x) * px(img, x, y, c);
    }
    return sum;
}

static void check_against_naive(int64_t w, int64_t h, int64_t out_w, int64_t out_h)
{
    graft__image img = random_image(w, h);
    float *out = malloc(sizeof(float) * out_w * out_h * 3);
    assert_non_null(out);
    assert_int_equal(graft__resize_f32(&img, out_h, out_w, out), GRAFT_OK);
    for (int64_t y = 0; y < out_h; ++y)
        for (int64_t x = 0; x < out_w; ++x)
            for (int c = 0; c < 3; ++c) {
                const double want = naive_pixel(&img, out_h, out_w, x, y, c);
                const float got = out[(y * out_w + x) * 3 + c];
                if (fabs(got - want) > 2e-3)
                    fail_msg("%lldx%lld -> %lldx%lld at (%lld,%lld,%d): %f, want %f",
                             (long long)w, (long long)h, (long long)out_w, (long long)out_h,
                             (long long)x, (long long)y, c, got, want);
            }
    free(out);
    graft__image_free(&img);
}

static void test_integer_shrink_is_block_mean(void **state)
{
    (void)state;
    graft__image img = random_image(12, 9);
    float out[4 * 3 * 3];
    assert_int_equal(graft__resize_f32(&img, 3, 4, out), GRAFT_OK);
    for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 4; ++x)
            for (int c = 0; c < 3; ++c) {
                double sum = 0;
                for (int dy = 0; dy < 3; ++dy)
                    for (int dx = 0; dx < 3; ++dx)
                        sum += px(&img, x * 3 + dx, y * 3 + dy, c);
                assert_float_equal(out[(y * 4 + x) * 3 + c], sum / 9, 1e-3);
            }
    graft__image_free(&img);
}

static void test_fractional_shrink(void **state)
{
    (void)state;
    check_against_naive(10, 7, 4, 3);
    check_against_naive(101, 67, 13, 29);
    check_against_naive(300, 200, 224, 150);
    check_against_naive(9, 9, 1, 1);
}

static void test_shrink_one_axis_enlarge_other(void **state)
{
    (void)state;
    check_against_naive(10, 3, 4, 5);
    check_against_naive(3, 17, 8, 5);
    check_against_naive(5, 4, 11, 9); /* enlarge both by non-integer factors */
}

/* 2x2 -> 4x4 by hand: centres fall at -0.25 (clamped to 0), 0.25, 0.75, 1.25
 * (clamped to 1), so each axis weighs (1,0) (.75,.25) (.25,.75) (0,1). With
 * top row 0, 100 and bottom row 200, 40: */
static void test_bilinear_enlarge_by_hand(void **state)
{
    (void)state;
    graft__image img;
    assert_int_equal(graft__image_alloc(&img, 2, 2, "test"), GRAFT_OK);
    const unsigned char v[4] = {0, 100, 200, 40};
    for (int i = 0; i < 4; ++i)
        memset(img.pixels + i * 3, v[i], 3);
    const float want[16] = {
        0,   25,     75,    100, /* */
        50,  58.75f, 76.25f, 85,  /* .75 top + .25 bottom */
        150, 126.25f, 78.75f, 55,  /* .25 top + .75 bottom */
        200, 160,    80,    40,
    };
    float out[16 * 3];
    assert_int_equal(graft__resize_f32(&img, 4, 4, out), GRAFT_OK);
    for (int i = 0; i < 16; ++i)
        for (int c = 0; c < 3; ++c)
            assert_float_equal(out[i * 3 + c], want[i], 1e-4);
    graft__image_free(&img);
}

static void test_identity_size(void **state)
{
    (void)state;
    graft__image img = random_image(31, 17), same;
    float out[31 * 17 * 3];
    assert_int_equal(graft__resize_f32(&img, 17, 31, out), GRAFT_OK);
    for (int i = 0; i < 31 * 17 * 3; ++i)
        assert_true(out[i] == (float)img.pixels[i]);
    assert_int_equal(graft__resize_u8(&img, 17, 31, &same), GRAFT_OK);
    assert_int_equal(same.width, 31);
    assert_int_equal(same.height, 17);
    assert_memory_equal(same.pixels, img.pixels, 31 * 17 * 3);
    graft__image_free(&same);
    graft__image_free(&img);
}

static void test_resize_u8_rounds(void **state)
{
    (void)state;
    graft__image img;
    assert_int_equal(graft__image_alloc(&img, 4, 1, "test"), GRAFT_OK);
    const unsigned char v[4] = {10, 11, 11, 11}; /* block of 4: mean 10.75 -> 11 */
    for (int i = 0; i < 4; ++i)
        memset(img.pixels + i * 3, v[i], 3);
    graft__image out;
    assert_int_equal(graft__resize_u8(&img, 1, 1, &out), GRAFT_OK);
    assert_int_equal(out.pixels[0], 11);
    graft__image_free(&out);
    graft__image_free(&img);
}

static void test_resize_bad_sizes(void **state)
{
    (void)state;
    graft__image img = random_image(4, 4), empty = {0};
    float out[3];
    assert_int_equal(graft__resize_f32(&img, 0, 1, out), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__resize_f32(&img, 1, -3, out), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__resize_f32(&empty, 1, 1, out), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__image_fit(&img, 1, 1, (graft_resize_mode)9, out),
                     GRAFT_E_INVALID_ARG);
    graft__image_free(&img);
}

/* Column x of the picture holds value 10x + row (in every channel), so where a
 * pixel came from can be read off its value. */
static graft__image columns(int64_t w, int64_t h)
{
    graft__image img;
    assert_int_equal(graft__image_alloc(&img, w, h, "test"), GRAFT_OK);
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
            memset(img.pixels + (y * w + x) * 3, (int)(10 * x + y), 3);
    return img;
}

static void test_crop_geometry(void **state)
{
    (void)state;
    float out[4 * 4 * 3];
    graft__image wide = columns(8, 4), tall = columns(4, 8), odd = columns(7, 4);
    /* 8x4 -> 4x4: no scaling, columns 2..5 */
    assert_int_equal(graft__image_fit(&wide, 4, 4, GRAFT_RESIZE_CROP, out), GRAFT_OK);
    for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 4; ++x)
            assert_float_equal(out[(y * 4 + x) * 3], 10 * (x + 2) + y, 1e-4);
    /* 8x4 -> 2x2: the centre 4x4 halved; pixel (0,0) averages columns 2,3 rows 0,1 */
    assert_int_equal(graft__image_fit(&wide, 2, 2, GRAFT_RESIZE_CROP, out), GRAFT_OK);
    assert_float_equal(out[0], 25 + 0.5, 1e-4);
    assert_float_equal(out[3], 45 + 0.5, 1e-4);
    assert_float_equal(out[6], 25 + 2.5, 1e-4);
    /* 4x8 -> 4x4: rows 2..5 */
    assert_int_equal(graft__image_fit(&tall, 4, 4, GRAFT_RESIZE_CROP, out), GRAFT_OK);
    for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 4; ++x)
            assert_float_equal(out[(y * 4 + x) * 3], 10 * x + y + 2, 1e-4);
    /* 7x4 -> 4x4: window [1.5, 5.5), each output half of two columns */
    assert_int_equal(graft__image_fit(&odd, 4, 4, GRAFT_RESIZE_CROP, out), GRAFT_OK);
    for (int x = 0; x < 4; ++x)
        assert_float_equal(out[x * 3], 10 * (x + 1) + 5, 1e-4);
    graft__image_free(&wide);
    graft__image_free(&tall);
    graft__image_free(&odd);
}

static void test_pad_geometry(void **state)
{
    (void)state;
    float out[8 * 8 * 3];
    graft__image wide = columns(8, 4), tall = columns(2, 4);
    /* 8x4 -> 8x8: no scaling, rows 2..5 hold the picture, the rest 0 */
    assert_int_equal(graft__image_fit(&wide, 8, 8, GRAFT_RESIZE_PAD, out), GRAFT_OK);
    for (int y = 0; y < 8; ++y)
        for (int x = 0; x < 8; ++x)
            for (int c = 0; c < 3; ++c)
                assert_float_equal(out[(y * 8 + x) * 3 + c],
                                   y >= 2 && y < 6 ? 10 * x + (y - 2) : 0, 1e-4);
    /* 8x4 -> 4x4: a 4x2 picture of 2x2 block means in rows 1..2 */
    assert_int_equal(graft__image_fit(&wide, 4, 4, GRAFT_RESIZE_PAD, out), GRAFT_OK);
    for (int x = 0; x < 4; ++x) {
        assert_float_equal(out[x * 3], 0, 0);
        assert_float_equal(out[(4 + x) * 3], 20 * x + 5 + 0.5, 1e-4);
        assert_float_equal(out[(8 + x) * 3], 20 * x + 5 + 2.5, 1e-4);
        assert_float_equal(out[(12 + x) * 3], 0, 0);
    }
    /* 2x4 -> 4x4: a 2x4 picture in columns 1..2 */
    assert_int_equal(graft__image_fit(&tall, 4, 4, GRAFT_RESIZE_PAD, out), GRAFT_OK);
    for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 4; ++x)
            assert_float_equal(out[(y * 4 + x) * 3], x == 1 || x == 2 ? 10 * (x - 1) + y : 0,
                               1e-4);
    graft__image_free(&wide);
    graft__image_free(&tall);
}

static void test_stretch_is_resize(void **state)
{
    (void)state;
    graft__image img = random_image(23, 11);
    float a[5 * 7 * 3], b[5 * 7 * 3];
    assert_int_equal(graft__image_fit(&img, 5, 7, GRAFT_RESIZE_STRETCH, a), GRAFT_OK);
    assert_int_equal(graft__resize_f32(&img, 5, 7, b), GRAFT_OK);
    assert_memory_equal(a, b, sizeof a);
    graft__image_free(&img);
}

static void test_fit_want(void **state)
{
    (void)state;
    graft__decode_want want;
    graft__fit_want(GRAFT_RESIZE_CROP, 224, 160, &want);
    assert_int_equal(want.min_width, 160);
    assert_int_equal(want.min_height, 224);
    assert_false(want.either);
    graft__fit_want(GRAFT_RESIZE_PAD, 224, 224, &want);
    assert_true(want.either);
    assert_true(graft__want_met(&want, 300, 100));
    assert_false(graft__want_met(&want, 200, 150));
    graft__fit_want(GRAFT_RESIZE_STRETCH, 224, 224, &want);
    assert_false(graft__want_met(&want, 300, 100));
    assert_true(graft__want_met(&want, 224, 224));
    const graft__decode_want full = {0, 0, 0};
    assert_false(graft__want_met(&full, 65535, 65535));
}

/* ---- preprocessing -------------------------------------------------------------- */

static void test_preprocess_modes(void **state)
{
    (void)state;
    const float pixel[6] = {0, 127.5f, 255, 10, 20, 30};
    float x[6];

    memcpy(x, pixel, sizeof x);
    graft__preprocess(x, 2, GRAFT_PREPROCESS_MOBILENET);
    const float tf[6] = {-1, 0, 1, 10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1};
    for (int i = 0; i < 6; ++i)
        assert_float_equal(x[i], tf[i], 1e-6);
    memcpy(x, pixel, sizeof x);
    graft__preprocess(x, 2, GRAFT_PREPROCESS_INCEPTION);
    for (int i = 0; i < 6; ++i)
        assert_float_equal(x[i], tf[i], 1e-6);

    memcpy(x, pixel, sizeof x);
    graft__preprocess(x, 2, GRAFT_PREPROCESS_TORCH);
    const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
    for (int i = 0; i < 6; ++i)
        assert_float_equal(x[i], (pixel[i] / 255.0 - mean[i % 3]) / std[i % 3], 1e-5);

    memcpy(x, pixel, sizeof x);
    graft__preprocess(x, 2, GRAFT_PREPROCESS_CAFFE); /* BGR, minus the BGR mean */
    const float caffe[6] = {255 - 103.939f, 127.5f - 116.779f, 0 - 123.68f,
                            30 - 103.939f,  20 - 116.779f,     10 - 123.68f};
    for (int i = 0; i < 6; ++i)
        assert_float_equal(x[i], caffe[i], 1e-4);

    memcpy(x, pixel, sizeof x);
    graft__preprocess(x, 2, GRAFT_PREPROCESS_NONE);
    assert_memory_equal(x, pixel, sizeof x);

    memcpy(x, pixel, sizeof x);
    graft__preprocess(x, 2, GRAFT_PREPROCESS_UNIT);
    const float unit[6] = {0, 0.5f, 1, 10 / 255.0f, 20 / 255.0f, 30 / 255.0f};
    for (int i = 0; i < 6; ++i)
        assert_float_equal(x[i], unit[i], 1e-7);
}

static void test_parse_names(void **state)
{
    (void)state;
    const char *names[6] = {"mobilenet", "inception", "torch", "caffe", "none", "unit"};
    const graft_preprocess modes[6] = {GRAFT_PREPROCESS_MOBILENET, GRAFT_PREPROCESS_INCEPTION,
                                       GRAFT_PREPROCESS_TORCH, GRAFT_PREPROCESS_CAFFE,
                                       GRAFT_PREPROCESS_NONE, GRAFT_PREPROCESS_UNIT};
    for (int i = 0; i < 6; ++i) {
        graft_preprocess p = (graft_preprocess)-1;
        assert_int_equal(graft_preprocess_parse(names[i], &p), GRAFT_OK);
        assert_int_equal(p, modes[i]);
    }
    const char *resize[3] = {"stretch", "crop", "pad"};
    for (int i = 0; i < 3; ++i) {
        graft_resize_mode r = (graft_resize_mode)-1;
        assert_int_equal(graft_resize_mode_parse(resize[i], &r), GRAFT_OK);
        assert_int_equal(r, i);
    }
    graft_preprocess p;
    graft_resize_mode r;
    assert_int_equal(graft_preprocess_parse("vgg", &p), GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "'vgg'"));
    assert_int_equal(graft_preprocess_parse(NULL, &p), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft_resize_mode_parse("Crop ", &r), GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "'Crop '"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integer_shrink_is_block_mean),
        cmocka_unit_test(test_fractional_shrink),
        cmocka_unit_test(test_shrink_one_axis_enlarge_other),
        cmocka_unit_test(test_bilinear_enlarge_by_hand),
        cmocka_unit_test(test_identity_size),
        cmocka_unit_test(test_resize_u8_rounds),
        cmocka_unit_test(test_resize_bad_sizes),
        cmocka_unit_test(test_crop_geometry),
        cmocka_unit_test(test_pad_geometry),
        cmocka_unit_test(test_stretch_is_resize),
        cmocka_unit_test(test_fit_want),
        cmocka_unit_test(test_preprocess_modes),
        cmocka_unit_test(test_parse_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
