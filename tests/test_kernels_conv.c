/* Conv2D kernels: geometry helper, the naive ref against hand-computed values,
 * and the GEMM variant against the ref over a sweep of shapes. */
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

/* ---- geometry ---------------------------------------------------------------- */

static void geom_same_stride2_even_input_pads_zero_top_one_bottom(void **state)
{
    graft_conv_geom g = geom(1, 4, 6, 1, 1, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_int_equal(g.out_h, 2);
    assert_int_equal(g.out_w, 3);
    /* total = (out-1)*s + k - in = 1: TF puts it at the bottom/right. */
    assert_int_equal(g.pad_top, 0);
    assert_int_equal(g.pad_left, 0);
    int64_t bottom = (g.out_h - 1) * g.stride_h + g.kernel_h - g.in_h - g.pad_top;
    assert_int_equal(bottom, 1);
}

static void geom_same_stride2_odd_input_pads_one_each_side(void **state)
{
    graft_conv_geom g = geom(1, 5, 5, 1, 1, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_int_equal(g.out_h, 3);
    assert_int_equal(g.pad_top, 1);
    assert_int_equal(g.pad_left, 1);
}

static void geom_same_stride1_odd_total_puts_extra_at_bottom(void **state)
{
    /* 2x2 kernel, stride 1: total padding 1 -> top 0, bottom 1. 4x4 kernel: 3 -> 1, 2. */
    graft_conv_geom g = geom(1, 5, 5, 1, 1, 2, 4, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_int_equal(g.out_h, 5);
    assert_int_equal(g.out_w, 5);
    assert_int_equal(g.pad_top, 0);
    assert_int_equal(g.pad_left, 1);
}

static void geom_same_uses_dilated_span(void **state)
{
    /* 3x3 dilation 2 spans 5: total 4 -> 2 each side. */
    graft_conv_geom g = geom(1, 7, 7, 1, 1, 3, 3, 1, 1, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_int_equal(g.out_h, 7);
    assert_int_equal(g.pad_top, 2);
}

static void geom_valid_is_ceil_of_remaining_over_stride(void **state)
{
    graft_conv_geom g = geom(2, 7, 8, 3, 4, 3, 3, 2, 3, 2, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_int_equal(g.out_h, 2); /* span 5: ceil((7-4)/2) */
    assert_int_equal(g.out_w, 2); /* span 3: ceil((8-2)/3) */
    assert_int_equal(g.pad_top, 0);
    assert_int_equal(g.pad_left, 0);
    g = geom(1, 225, 225, 3, 32, 3, 3, 2, 2, 1, 1); /* MobileNetV2 Conv1 after ZeroPadding2D */
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_int_equal(g.out_h, 112);
}

static void geom_rejects_empty_output_and_bad_fields(void **state)
{
    graft_conv_geom g = geom(1, 2, 5, 1, 1, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 0);
    assert_int_equal(g.out_h, 0); /* left untouched */
    g = geom(1, 5, 5, 1, 1, 3, 3, 0, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 0);
    g = geom(1, 5, 5, 1, 1, 3, 3, 1, 1, 0, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 0);
    g = geom(0, 5, 5, 1, 1, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 0);
}

/* ---- the ref against hand-computed values ------------------------------------ */

static void conv2d_ref_3x3_input_2x2_kernel_valid_hand_computed(void **state)
{
    const float in[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const float k[4] = {1, 2, 3, 4};
    const float b[1] = {0.5f};
    float out[4];
    graft_conv_geom g = geom(1, 3, 3, 1, 1, 2, 2, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_conv2d__ref(&g, in, k, b, out);
    assert_float_equal(out[0], 37.5f, 0);
    assert_float_equal(out[1], 47.5f, 0);
    assert_float_equal(out[2], 67.5f, 0);
    assert_float_equal(out[3], 77.5f, 0);
}

static void conv2d_ref_same_stride2_even_input_pads_bottom_right_only(void **state)
{
    float in[16], k[9], out[4];
    for (int i = 0; i < 16; i++)
        in[i] = (float)(i + 1);
    for (int i = 0; i < 9; i++)
        k[i] = 1.0f;
    graft_conv_geom g = geom(1, 4, 4, 1, 1, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    graft_f32_conv2d__ref(&g, in, k, NULL, out);
    /* Windows start at rows/cols 0 and 2; the second one hangs one cell over. */
    assert_float_equal(out[0], 54.0f, 0); /* rows 0-2, cols 0-2 */
    assert_float_equal(out[1], 45.0f, 0); /* rows 0-2, cols 2-3 */
    assert_float_equal(out[2], 72.0f, 0); /* rows 2-3, cols 0-2 */
    assert_float_equal(out[3], 54.0f, 0); /* rows 2-3, cols 2-3 */
}

static void conv2d_ref_kernel_is_keras_cin_by_cout(void **state)
{
    const float in[2] = {1, 2};
    const float k[4] = {1, 2, 3, 4}; /* [ci][co] */
    const float b[2] = {100, 200};
    float out[2];
    graft_conv_geom g = geom(1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_conv2d__ref(&g, in, k, b, out);
    assert_float_equal(out[0], 107.0f, 0);
    assert_float_equal(out[1], 210.0f, 0);
}

static void conv2d_ref_dilation2_skips_cells(void **state)
{
    float in[25], out[9];
    for (int i = 0; i < 25; i++)
        in[i] = (float)i;
    const float k[4] = {1, 10, 100, 1000};
    graft_conv_geom g = geom(1, 5, 5, 1, 1, 2, 2, 1, 1, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_int_equal(g.out_h, 3);
    graft_f32_conv2d__ref(&g, in, k, NULL, out);
    /* out(0,0) = in(0,0) + 10 in(0,2) + 100 in(2,0) + 1000 in(2,2) */
    assert_float_equal(out[0], 0 + 10 * 2 + 100 * 10 + 1000 * 12, 0);
    assert_float_equal(out[8], 12 + 10 * 14 + 100 * 22 + 1000 * 24, 0);
}

/* ---- gemm against ref -------------------------------------------------------- */

/* Runs both on g (already initialised) with random data; returns 1 on a match. */
static int gemm_matches_ref(graft_conv_geom g, int with_bias, const char *what)
{
    int64_t nin = g.batch * g.in_h * g.in_w * g.in_c;
    int64_t kk = g.kernel_h * g.kernel_w * g.in_c;
    int64_t nk = kk * g.out_c;
    int64_t nout = g.batch * g.out_h * g.out_w * g.out_c;
    float *in = rand_buf(nin, 1.0f);
    float *k = rand_buf(nk, 1.0f / sqrtf((float)kk));
    float *b = with_bias ? rand_buf(g.out_c, 1.0f) : NULL;
    float *want = guarded_buf(nout), *got = guarded_buf(nout);
    size_t sb = graft_f32_conv2d_scratch_bytes(&g);
    float *scratch = sb ? malloc(sb) : NULL;
    graft_f32_conv2d__ref(&g, in, k, b, want);
    graft_f32_conv2d__gemm(&g, in, k, b, got, scratch);
    char name[256];
    snprintf(name, sizeof name,
             "%s n%lld %lldx%lldx%lld->%lld k%lldx%lld s%lldx%lld d%lldx%lld pad %lld,%lld out %lldx%lld",
             what, (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)g.out_c, (long long)g.kernel_h, (long long)g.kernel_w,
             (long long)g.stride_h, (long long)g.stride_w, (long long)g.dilation_h,
             (long long)g.dilation_w, (long long)g.pad_top, (long long)g.pad_left,
             (long long)g.out_h, (long long)g.out_w);
    int ok = close_enough(name, got, want, nout);
    free(in), free(k), free(b), free(want), free(got), free(scratch);
    return ok;
}

static void conv2d_gemm_matches_ref_over_shape_sweep(void **state)
{
    static const int64_t shapes[][3] = {{1, 7, 7}, {3, 8, 6}, {1, 13, 12}};
    static const int64_t kernels[][2] = {{1, 1}, {3, 3}, {5, 5}, {1, 7}, {7, 1}};
    static const int64_t chans[][2] = {{1, 1}, {3, 16}, {15, 17}, {16, 33}, {17, 3}, {33, 15}};
    int cases = 0, bad = 0;
    for (size_t si = 0; si < 3; si++)
        for (size_t ki = 0; ki < 5; ki++)
            for (int64_t s = 1; s <= 3; s++)
                for (int same = 0; same <= 1; same++)
                    for (int64_t d = 1; d <= 2; d++)
                        for (size_t ci = 0; ci < 6; ci++) {
                            graft_conv_geom g =
                                geom(shapes[si][0], shapes[si][1], shapes[si][2], chans[ci][0],
                                     chans[ci][1], kernels[ki][0], kernels[ki][1], s, s, d, d);
                            if (!graft_conv_geom_init(&g, same))
                                continue; /* valid window larger than the input */
                            cases++;
                            bad += !gemm_matches_ref(g, (int)(ci & 1), "sweep");
                        }
    print_message("conv2d sweep: %d shapes\n", cases);
    assert_true(cases > 900);
    assert_int_equal(bad, 0);
}

static void conv2d_gemm_pointwise_needs_no_scratch(void **state)
{
    graft_conv_geom g = geom(3, 5, 7, 24, 40, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_int_equal(graft_f32_conv2d_scratch_bytes(&g), 0);
    assert_true(gemm_matches_ref(g, 1, "pointwise"));
    assert_true(gemm_matches_ref(g, 0, "pointwise no bias"));
    /* A strided 1x1 conv must gather, so it takes the im2col path. */
    g = geom(2, 9, 9, 17, 5, 1, 1, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(graft_f32_conv2d_scratch_bytes(&g) > 0);
    assert_true(gemm_matches_ref(g, 1, "pointwise stride 2"));
}

static void conv2d_gemm_im2col_chunks_cross_image_boundaries(void **state)
{
    /* 3x3x64 patches are 2304 bytes: the 2 MiB budget holds 910 of 3*20*20
     * pixels, so the first chunk ends inside the third image. */
    graft_conv_geom g = geom(3, 20, 20, 64, 20, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    size_t full = (size_t)(3 * 20 * 20) * 9 * 64 * sizeof(float);
    size_t sb = graft_f32_conv2d_scratch_bytes(&g);
    assert_true(sb <= GRAFT_CONV2D_IM2COL_BUDGET);
    assert_true(sb < full);
    assert_true(gemm_matches_ref(g, 1, "chunked"));
    assert_true(gemm_matches_ref(g, 0, "chunked no bias"));
}

static void conv2d_gemm_pointwise_runs_in_row_blocks(void **state)
{
    /* 3*80*80 = 19200 pixels of 24+40 floats: more than one 4 MiB row block. */
    graft_conv_geom g = geom(3, 80, 80, 24, 40, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(gemm_matches_ref(g, 1, "pointwise blocks"));
}

static void conv2d_gemm_scratch_holds_one_patch_when_patch_exceeds_budget(void **state)
{
    /* 7x7x11000 floats > 2 MiB: one pixel per chunk. */
    graft_conv_geom g = geom(1, 3, 3, 11000, 2, 7, 7, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    size_t patch = (size_t)7 * 7 * 11000 * sizeof(float);
    assert_true(patch > GRAFT_CONV2D_IM2COL_BUDGET);
    assert_int_equal(graft_f32_conv2d_scratch_bytes(&g), patch);
    assert_true(gemm_matches_ref(g, 1, "huge patch"));
}

static void conv2d_gemm_handles_hand_made_asymmetric_padding(void **state)
{
    /* Padding not from 'same': 2 on top, 0 left, windows hanging off bottom/right. */
    graft_conv_geom g = geom(2, 6, 5, 3, 4, 3, 2, 1, 2, 1, 1);
    g.pad_top = 2;
    g.pad_left = 0;
    g.out_h = 7;
    g.out_w = 3;
    assert_true(gemm_matches_ref(g, 1, "hand padding"));
}

static void conv2d_gemm_mobilenet_conv1_stride2_matches_ref(void **state)
{
    /* Conv1 of MobileNetV2 on a smaller image: ZeroPadding2D'd odd input, 3x3 s2 valid. */
    graft_conv_geom g = geom(2, 33, 33, 3, 32, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_int_equal(g.out_h, 16);
    assert_true(gemm_matches_ref(g, 0, "conv1"));
}

/* Training's forward that also takes its output's moments: the output as the
 * ref computes it, and the moments, merged from their 8 parts, as the
 * double-precision ref computes them from that output; including fewer pixels
 * than parts (empty parts), a windowed convolution, small outputs (moments
 * after the forward) and a large one (moments chunk by chunk inside it). */
static void conv2d_train_forward_moments_match_refs(void **state)
{
    graft_conv_geom gs[4];
    gs[0] = geom(2, 9, 7, 5, 17, 1, 1, 1, 1, 1, 1);
    gs[1] = geom(1, 2, 3, 4, 9, 1, 1, 1, 1, 1, 1); /* 6 pixels, 8 parts */
    gs[2] = geom(3, 25, 23, 3, 8, 3, 3, 2, 2, 1, 1);
    gs[3] = geom(2, 40, 40, 16, 40, 1, 1, 1, 1, 1, 1); /* 3200 pixels: parts of 400 in chunks of 128 */
    for (int i = 0; i < 4; i++) {
        graft_conv_geom g = gs[i];
        assert_int_equal(graft_conv_geom_init(&g, 1), 1);
        const int64_t pixels = g.batch * g.out_h * g.out_w, co = g.out_c;
        float *in = rand_buf(g.batch * g.in_h * g.in_w * g.in_c, 1.0f);
        float *kernel = rand_buf(g.kernel_h * g.kernel_w * g.in_c * co, 1.0f);
        float *bias = rand_buf(co, 3.0f);
        float *want = guarded_buf(pixels * co), *got = guarded_buf(pixels * co);
        graft_f32_conv2d__ref(&g, in, kernel, bias, want);
        float *work = malloc(sizeof(float) * graft_f32_conv2d_train_scratch_floats(&g));
        double *parts = malloc(sizeof(double) * 2 * GRAFT_CONV_TRAIN_PARTS * (size_t)co);
        graft_f32_conv2d_train_forward_moments(&g, in, NULL, kernel, bias, got, work, parts,
                                               parts + GRAFT_CONV_TRAIN_PARTS * co);
        char what[64];
        snprintf(what, sizeof what, "train forward with moments, case %d", i);
        assert_true(close_enough(what, got, want, pixels * co));
        assert_part_moments_match_ref(parts, want, pixels, co);
        free(in), free(kernel), free(bias), free(want), free(got), free(work), free(parts);
    }
}

/* The pointwise forward reading a BatchNorm's input and mapping it (ReLU6)
 * chunk by chunk: against the ref on the ref-mapped input; small (which
 * otherwise takes the whole-tensor path), fewer pixels than parts, and parts
 * of several chunks with a short last one. */
static void conv2d_train_forward_moments_mapped_match_refs(void **state)
{
    static const int64_t shapes[][5] = {{2, 9, 7, 5, 17}, {1, 2, 3, 4, 9}, {2, 40, 41, 19, 24}};
    for (int i = 0; i < 3; i++) {
        graft_conv_geom g = geom(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3],
                                 shapes[i][4], 1, 1, 1, 1, 1, 1);
        assert_int_equal(graft_conv_geom_init(&g, 1), 1);
        const int64_t pixels = g.batch * g.out_h * g.out_w, co = g.out_c, ci = g.in_c;
        mapped_input mi = mapped_input_new(pixels, ci);
        float *kernel = rand_buf(ci * co, 1.0f), *bias = rand_buf(co, 3.0f);
        float *want = guarded_buf(pixels * co), *got = guarded_buf(pixels * co);
        graft_f32_conv2d__ref(&g, mi.y, kernel, bias, want);
        float *work = guarded_buf((int64_t)graft_f32_conv2d_train_scratch_floats(&g));
        double *parts = malloc(sizeof(double) * 2 * GRAFT_CONV_TRAIN_PARTS * (size_t)co);
        graft_f32_conv2d_train_forward_moments(&g, mi.z, &mi.map, kernel, bias, got, work, parts,
                                               parts + GRAFT_CONV_TRAIN_PARTS * co);
        char what[64];
        snprintf(what, sizeof what, "mapped train forward with moments, case %d", i);
        assert_true(close_enough(what, got, want, pixels * co));
        assert_part_moments_match_ref(parts, want, pixels, co);
        mapped_input_free(&mi);
        free(kernel), free(bias), free(want), free(got), free(work), free(parts);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conv2d_train_forward_moments_match_refs),
        cmocka_unit_test(conv2d_train_forward_moments_mapped_match_refs),
        cmocka_unit_test(geom_same_stride2_even_input_pads_zero_top_one_bottom),
        cmocka_unit_test(geom_same_stride2_odd_input_pads_one_each_side),
        cmocka_unit_test(geom_same_stride1_odd_total_puts_extra_at_bottom),
        cmocka_unit_test(geom_same_uses_dilated_span),
        cmocka_unit_test(geom_valid_is_ceil_of_remaining_over_stride),
        cmocka_unit_test(geom_rejects_empty_output_and_bad_fields),
        cmocka_unit_test(conv2d_ref_3x3_input_2x2_kernel_valid_hand_computed),
        cmocka_unit_test(conv2d_ref_same_stride2_even_input_pads_bottom_right_only),
        cmocka_unit_test(conv2d_ref_kernel_is_keras_cin_by_cout),
        cmocka_unit_test(conv2d_ref_dilation2_skips_cells),
        cmocka_unit_test(conv2d_gemm_matches_ref_over_shape_sweep),
        cmocka_unit_test(conv2d_gemm_pointwise_needs_no_scratch),
        cmocka_unit_test(conv2d_gemm_im2col_chunks_cross_image_boundaries),
        cmocka_unit_test(conv2d_gemm_pointwise_runs_in_row_blocks),
        cmocka_unit_test(conv2d_gemm_scratch_holds_one_patch_when_patch_exceeds_budget),
        cmocka_unit_test(conv2d_gemm_handles_hand_made_asymmetric_padding),
        cmocka_unit_test(conv2d_gemm_mobilenet_conv1_stride2_matches_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
