/* DepthwiseConv2D kernels: the naive ref against hand-computed values, the direct
 * variant against the ref over a sweep of shapes and depth multipliers, and the
 * training forward that takes its output's moments. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/batch_norm.h"
#include "kernels/conv.h"
#include "kernel_tester.h"

/* ---- the ref against hand-computed values ------------------------------------ */

static void dwconv_ref_3x3_input_2x2_kernel_valid_hand_computed(void **state)
{
    /* Two channels interleaved: channel 1 is channel 0 times -1 with kernel times 2. */
    float in[18], out[8];
    for (int i = 0; i < 9; i++)
        in[2 * i] = (float)(i + 1), in[2 * i + 1] = -(float)(i + 1);
    const float k[8] = {1, 2, 2, 4, 3, 6, 4, 8};
    const float b[2] = {0.5f, -0.5f};
    graft_conv_geom g = geom(1, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_dwconv2d__ref(&g, 0, g.out_h, in, k, b, out);
    const float want0[4] = {37, 47, 67, 77};
    for (int p = 0; p < 4; p++) {
        assert_float_equal(out[2 * p], want0[p] + 0.5f, 0);
        assert_float_equal(out[2 * p + 1], -2 * want0[p] - 0.5f, 0);
    }
}

static void dwconv_ref_same_stride2_even_input_pads_bottom_right_only(void **state)
{
    float in[16], k[9], out[4];
    for (int i = 0; i < 16; i++)
        in[i] = (float)(i + 1);
    for (int i = 0; i < 9; i++)
        k[i] = 1.0f;
    graft_conv_geom g = geom(1, 4, 4, 1, 1, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    graft_f32_dwconv2d__ref(&g, 0, 2, in, k, NULL, out);
    assert_float_equal(out[0], 54.0f, 0);
    assert_float_equal(out[1], 45.0f, 0);
    assert_float_equal(out[2], 72.0f, 0);
    assert_float_equal(out[3], 54.0f, 0);
}

static void dwconv_ref_output_channel_is_c_times_m_plus_m(void **state)
{
    const float in[2] = {1, 2};
    const float k[6] = {10, 20, 30, 40, 50, 60}; /* (1,1,C=2,M=3) */
    const float b[6] = {0, 0, 0, 1, 1, 1};
    float out[6];
    graft_conv_geom g = geom(1, 1, 1, 2, 6, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_dwconv2d__ref(&g, 0, 1, in, k, b, out);
    const float want[6] = {10, 20, 30, 81, 101, 121};
    for (int i = 0; i < 6; i++)
        assert_float_equal(out[i], want[i], 0);
}

/* ---- direct against ref ------------------------------------------------------ */

typedef void (*dw_fn)(const graft_conv_geom *, int64_t, int64_t, const float *, const float *,
                      const float *, float *);

static void dw_parallel_all(const graft_conv_geom *g, int64_t s, int64_t e, const float *in,
                            const float *k, const float *b, float *out)
{
    graft_f32_dwconv2d_parallel(g, in, k, b, out);
}

static int direct_matches_ref(graft_conv_geom g, int with_bias, dw_fn fast, const char *what)
{
    int64_t nin = g.batch * g.in_h * g.in_w * g.in_c;
    int64_t nk = g.kernel_h * g.kernel_w * g.out_c;
    int64_t nout = g.batch * g.out_h * g.out_w * g.out_c;
    float *in = rand_buf(nin, 1.0f);
    float *k = rand_buf(nk, 1.0f / sqrtf((float)(g.kernel_h * g.kernel_w)));
    float *b = with_bias ? rand_buf(g.out_c, 1.0f) : NULL;
    float *want = guarded_buf(nout), *got = guarded_buf(nout);
    int64_t rows = g.batch * g.out_h;
    graft_f32_dwconv2d__ref(&g, 0, rows, in, k, b, want);
    /* Two calls that split the rows, as threads would. */
    fast(&g, 0, rows / 2, in, k, b, got);
    fast(&g, rows / 2, rows, in, k, b, got);
    char name[256];
    snprintf(name, sizeof name,
             "%s n%lld %lldx%lldx%lld M%lld k%lldx%lld s%lldx%lld d%lldx%lld pad %lld,%lld out %lldx%lld",
             what, (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)(g.out_c / g.in_c), (long long)g.kernel_h, (long long)g.kernel_w,
             (long long)g.stride_h, (long long)g.stride_w, (long long)g.dilation_h,
             (long long)g.dilation_w, (long long)g.pad_top, (long long)g.pad_left,
             (long long)g.out_h, (long long)g.out_w);
    int ok = close_enough(name, got, want, nout);
    free(in), free(k), free(b), free(want), free(got);
    return ok;
}

static void dwconv_direct_matches_ref_over_shape_sweep(void **state)
{
    static const int64_t shapes[][3] = {{1, 7, 7}, {3, 8, 6}, {1, 13, 12}};
    static const int64_t kernels[][2] = {{1, 1}, {3, 3}, {5, 5}, {1, 7}, {7, 1}};
    static const int64_t chans[] = {1, 3, 15, 16, 17, 33, 48};
    int cases = 0, bad = 0;
    for (size_t si = 0; si < 3; si++)
        for (size_t ki = 0; ki < 5; ki++)
            for (int64_t s = 1; s <= 3; s++)
                for (int same = 0; same <= 1; same++)
                    for (int64_t d = 1; d <= 2; d++)
                        for (size_t ci = 0; ci < 7; ci++)
                            for (int64_t m = 1; m <= 3; m++) {
                                graft_conv_geom g =
                                    geom(shapes[si][0], shapes[si][1], shapes[si][2], chans[ci],
                                         chans[ci] * m, kernels[ki][0], kernels[ki][1], s, s, d, d);
                                if (!graft_conv_geom_init(&g, same))
                                    continue;
                                cases++;
                                bad += !direct_matches_ref(g, (int)((ci + m) & 1),
                                                           graft_f32_dwconv2d__direct, "sweep");
                            }
    print_message("dwconv sweep: %d shapes\n", cases);
    assert_true(cases > 3000);
    assert_int_equal(bad, 0);
}

static void dwconv_3x3s2_channels_not_multiple_of_tile(void **state)
{
    /* MobileNetV2's stride-2 depthwise: ZeroPadding2D'd odd input then 'valid'. */
    static const int64_t chans[] = {40, 57, 100};
    for (int i = 0; i < 3; i++) {
        graft_conv_geom g = geom(2, 29, 29, chans[i], chans[i], 3, 3, 2, 2, 1, 1);
        assert_int_equal(graft_conv_geom_init(&g, 0), 1);
        assert_true(direct_matches_ref(g, 1, graft_f32_dwconv2d__direct, "3x3s2 valid"));
    }
}

static void dwconv_3x3s1_same_mobilenet_widths(void **state)
{
    static const int64_t chans[] = {32, 144, 576, 960};
    static const int64_t sizes[] = {28, 14, 14, 7};
    for (int i = 0; i < 4; i++) {
        graft_conv_geom g = geom(1, sizes[i], sizes[i], chans[i], chans[i], 3, 3, 1, 1, 1, 1);
        assert_int_equal(graft_conv_geom_init(&g, 1), 1);
        assert_true(direct_matches_ref(g, 1, graft_f32_dwconv2d__direct, "3x3s1 same"));
    }
}

static void dwconv_direct_writes_only_its_row_range(void **state)
{
    graft_conv_geom g = geom(2, 9, 10, 20, 20, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    int64_t row = g.out_w * g.out_c, nout = g.batch * g.out_h * row;
    float *in = rand_buf(g.batch * g.in_h * g.in_w * g.in_c, 1.0f);
    float *k = rand_buf(9 * g.out_c, 1.0f);
    float *want = guarded_buf(nout), *got = guarded_buf(nout);
    graft_f32_dwconv2d__ref(&g, 7, 12, in, k, NULL, want);
    graft_f32_dwconv2d__direct(&g, 7, 12, in, k, NULL, got);
    for (int64_t i = 0; i < nout; i++)
        if (i < 7 * row || i >= 12 * row)
            assert_true(got[i] == SENTINEL && want[i] == SENTINEL);
    assert_true(close_enough("rows 7..12", got, want, nout));
    free(in), free(k), free(want), free(got);
}

static void dwconv_parallel_matches_ref(void **state)
{
    graft_conv_geom g = geom(3, 15, 15, 35, 35, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(direct_matches_ref(g, 1, dw_parallel_all, "parallel"));
    g = geom(2, 8, 8, 5, 10, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(direct_matches_ref(g, 0, dw_parallel_all, "parallel M2"));
}

static void dwconv_direct_handles_hand_made_asymmetric_padding(void **state)
{
    graft_conv_geom g = geom(1, 6, 9, 19, 19, 3, 3, 1, 1, 1, 1);
    g.pad_top = 2;
    g.pad_left = 0;
    g.out_h = 7;
    g.out_w = 8;
    assert_true(direct_matches_ref(g, 1, graft_f32_dwconv2d__direct, "hand padding"));
}

/* The depthwise forward that also takes its output's moments: the output as
 * the ref computes it, and the moments merged from their 8 parts as the
 * double-precision ref computes them from that output. Rows (batch * out_h)
 * a multiple of the parts take them chunk by chunk (rows of 5 pixels in
 * chunks of 25 rows; rows of 200 pixels one at a time); other counts, fewer
 * rows than parts among them, in a pass after; channels 17 and 33 leave
 * vector tails, and depth multiplier 2 doubles the output channels. */
static void dwconv_forward_moments_match_refs(void **state)
{
    graft_conv_geom gs[5];
    gs[0] = geom(8, 10, 10, 17, 17, 3, 3, 2, 2, 1, 1);  /* 40 rows of 5 */
    gs[1] = geom(4, 8, 200, 33, 33, 3, 3, 1, 1, 1, 1);  /* 32 rows of 200 */
    gs[2] = geom(3, 9, 7, 5, 10, 3, 3, 1, 1, 1, 1);     /* 27 rows, M 2 */
    gs[3] = geom(1, 3, 4, 9, 9, 3, 3, 1, 1, 1, 1);      /* 3 rows, 8 parts */
    gs[4] = geom(2, 28, 28, 16, 16, 3, 3, 1, 1, 1, 1);  /* 56 rows of 28 */
    for (int i = 0; i < 5; i++) {
        graft_conv_geom g = gs[i];
        assert_int_equal(graft_conv_geom_init(&g, 1), 1);
        const int64_t pixels = g.batch * g.out_h * g.out_w, co = g.out_c;
        float *in = rand_buf(g.batch * g.in_h * g.in_w * g.in_c, 1.0f);
        float *kernel = rand_buf(g.kernel_h * g.kernel_w * co, 1.0f);
        float *bias = rand_buf(co, 3.0f);
        float *want = guarded_buf(pixels * co), *got = guarded_buf(pixels * co);
        graft_f32_dwconv2d__ref(&g, 0, g.batch * g.out_h, in, kernel, bias, want);
        double *parts = malloc(sizeof(double) * 2 * GRAFT_CONV_TRAIN_PARTS * (size_t)co);
        graft_f32_dwconv2d_forward_moments(&g, in, kernel, bias, got, parts,
                                           parts + GRAFT_CONV_TRAIN_PARTS * co);
        char what[64];
        snprintf(what, sizeof what, "dw forward with moments, case %d", i);
        assert_true(close_enough(what, got, want, pixels * co));
        assert_part_moments_match_ref(parts, want, pixels, co);
        free(in), free(kernel), free(bias), free(want), free(got), free(parts);
    }
}

/* The same forward reading a BatchNorm's input and mapping it (ReLU6) band by
 * band: against the ref on the ref-mapped input. Bands of several rows with
 * halos (7 wide), one row (200 wide: a band's input is its window's reach),
 * stride 2 with one-sided padding, bands cut short by images and by parts, and
 * rows that are not a multiple of the parts (moments after). */
static void dwconv_forward_moments_mapped_match_refs(void **state)
{
    graft_conv_geom gs[5];
    gs[0] = geom(8, 10, 7, 17, 17, 3, 3, 1, 1, 1, 1);
    gs[1] = geom(4, 8, 200, 130, 130, 3, 3, 1, 1, 1, 1);
    gs[2] = geom(3, 9, 7, 5, 10, 3, 3, 2, 2, 1, 1);
    gs[3] = geom(1, 3, 4, 9, 9, 3, 3, 1, 1, 1, 1);
    gs[4] = geom(2, 29, 28, 16, 16, 3, 3, 2, 2, 1, 1);
    for (int i = 0; i < 5; i++) {
        graft_conv_geom g = gs[i];
        assert_int_equal(graft_conv_geom_init(&g, i != 4), 1);
        if (i == 4) /* a ZeroPadding2D's (0,1) taken into the window, as training does */
            g.in_h -= 1, g.in_w -= 1;
        const int64_t pixels = g.batch * g.out_h * g.out_w, co = g.out_c;
        const int64_t nin = g.batch * g.in_h * g.in_w * g.in_c;
        mapped_input mi = mapped_input_new(nin / g.in_c, g.in_c);
        float *kernel = rand_buf(g.kernel_h * g.kernel_w * co, 1.0f);
        float *bias = rand_buf(co, 3.0f);
        float *want = guarded_buf(pixels * co), *got = guarded_buf(pixels * co);
        float *work = guarded_buf((int64_t)graft_f32_dwconv2d_forward_mapped_scratch_floats(&g));
        graft_f32_dwconv2d__ref(&g, 0, g.batch * g.out_h, mi.y, kernel, bias, want);
        double *parts = malloc(sizeof(double) * 2 * GRAFT_CONV_TRAIN_PARTS * (size_t)co);
        graft_f32_dwconv2d_forward_moments_mapped(&g, mi.z, &mi.map, kernel, bias, got, parts,
                                                  parts + GRAFT_CONV_TRAIN_PARTS * co, work);
        char what[64];
        snprintf(what, sizeof what, "dw mapped forward with moments, case %d", i);
        assert_true(close_enough(what, got, want, pixels * co));
        assert_part_moments_match_ref(parts, want, pixels, co);
        mapped_input_free(&mi);
        free(kernel), free(bias), free(want), free(got), free(work), free(parts);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dwconv_ref_3x3_input_2x2_kernel_valid_hand_computed),
        cmocka_unit_test(dwconv_ref_same_stride2_even_input_pads_bottom_right_only),
        cmocka_unit_test(dwconv_ref_output_channel_is_c_times_m_plus_m),
        cmocka_unit_test(dwconv_direct_matches_ref_over_shape_sweep),
        cmocka_unit_test(dwconv_3x3s2_channels_not_multiple_of_tile),
        cmocka_unit_test(dwconv_3x3s1_same_mobilenet_widths),
        cmocka_unit_test(dwconv_direct_writes_only_its_row_range),
        cmocka_unit_test(dwconv_parallel_matches_ref),
        cmocka_unit_test(dwconv_forward_moments_match_refs),
        cmocka_unit_test(dwconv_forward_moments_mapped_match_refs),
        cmocka_unit_test(dwconv_direct_handles_hand_made_asymmetric_padding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
