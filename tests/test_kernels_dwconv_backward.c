/* DepthwiseConv2D backward kernels: the refs against finite differences of the
 * forward ref, the direct variants against the refs on a sweep; gradients accumulate. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/conv.h"
#include "kernel_tester.h"

/* ---- finite differences ---------------------------------------------------------- */

/* ---- refs against finite differences ---------------------------------------------- */

typedef struct dw_case {
    graft_conv_geom g;
    float *in, *kernel, *bias, *out, *r; /* r: dL/dout */
    int64_t nin, nk, nout;
} dw_case;

static dw_case dw_case_new(graft_conv_geom g)
{
    dw_case c = {.g = g};
    c.nin = g.batch * g.in_h * g.in_w * g.in_c;
    c.nk = g.kernel_h * g.kernel_w * g.out_c;
    c.nout = g.batch * g.out_h * g.out_w * g.out_c;
    c.in = rand_buf(c.nin, 1.0f);
    c.kernel = rand_buf(c.nk, 1.0f);
    c.bias = rand_buf(g.out_c, 1.0f);
    c.out = rand_buf(c.nout, 1.0f);
    c.r = rand_buf(c.nout, 1.0f);
    return c;
}

static void dw_case_free(dw_case *c)
{
    free(c->in), free(c->kernel), free(c->bias), free(c->out), free(c->r);
}

static double dw_loss(void *ctx)
{
    dw_case *c = ctx;
    graft_f32_dwconv2d__ref(&c->g, 0, c->g.batch * c->g.out_h, c->in, c->kernel, c->bias, c->out);
    return dot_double(c->out, c->r, c->nout);
}

static int dw_refs_match_finite_differences(graft_conv_geom g, const char *what)
{
    dw_case c = dw_case_new(g);
    float *din = calloc((size_t)c.nin, sizeof(float));
    float *dk = calloc((size_t)c.nk, sizeof(float));
    float *db = calloc((size_t)g.out_c, sizeof(float));
    graft_f32_dwconv2d_backward_input__ref(&c.g, 0, g.batch * g.in_h, c.r, c.kernel, din);
    graft_f32_dwconv2d_backward_weight__ref(&c.g, 0, g.in_c, c.in, c.r, dk);
    graft_f32_bias_backward__ref(g.batch * g.out_h * g.out_w, g.out_c, 0, g.out_c, c.r, db);
    int ok = matches_finite_differences(what, dw_loss, &c, c.in, din, c.nin, 0.25f);
    ok &= matches_finite_differences(what, dw_loss, &c, c.kernel, dk, c.nk, 0.25f);
    ok &= matches_finite_differences(what, dw_loss, &c, c.bias, db, g.out_c, 0.25f);
    dw_case_free(&c);
    free(din), free(dk), free(db);
    return ok;
}

static void dwconv_backward_refs_match_finite_differences(void **state)
{
    graft_conv_geom g = geom(2, 6, 5, 3, 3, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(dw_refs_match_finite_differences(g, "3x3 s2 same"));
    g = geom(1, 7, 6, 2, 6, 3, 3, 1, 1, 2, 2); /* M = 3, dilation 2 */
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(dw_refs_match_finite_differences(g, "3x3 d2 M3"));
    g = geom(2, 7, 7, 4, 8, 1, 7, 1, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_true(dw_refs_match_finite_differences(g, "1x7 s(1,2) valid M2"));
    g = geom(1, 5, 6, 3, 3, 3, 3, 1, 1, 1, 1);
    g.pad_top = 2, g.pad_left = 0, g.out_h = 6, g.out_w = 5;
    assert_true(dw_refs_match_finite_differences(g, "hand padding"));
}

static void dwconv_backward_ref_hand_computed(void **state)
{
    /* One channel, 1x3 input {3,5,7}, 1x2 kernel {1,10}, valid, dout {1,2}:
     * dx = {1, 12, 20}, dW = {3 + 10, 5 + 14}. */
    const float x[3] = {3, 5, 7}, w[2] = {1, 10}, dy[2] = {1, 2};
    float dx[3] = {0, 0, 0}, dw[2] = {0, 0};
    graft_conv_geom g = geom(1, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_dwconv2d_backward_input__ref(&g, 0, 1, dy, w, dx);
    graft_f32_dwconv2d_backward_weight__ref(&g, 0, 1, x, dy, dw);
    assert_float_equal(dx[0], 1, 0);
    assert_float_equal(dx[1], 12, 0);
    assert_float_equal(dx[2], 20, 0);
    assert_float_equal(dw[0], 13, 0);
    assert_float_equal(dw[1], 19, 0);
}

/* ---- direct against ref, gradients accumulating onto existing values ------------- */

typedef void (*bw_in_fn)(const graft_conv_geom *, int64_t, int64_t, const float *, const float *,
                         float *);
typedef void (*bw_w_fn)(const graft_conv_geom *, int64_t, int64_t, const float *, const float *,
                        float *);

static void bw_in_parallel(const graft_conv_geom *g, int64_t s, int64_t e, const float *dy,
                           const float *k, float *dx)
{
    if (s == 0) /* the whole tensor, once: gradients accumulate */
        graft_f32_dwconv2d_backward_input_parallel(g, dy, k, dx);
}

static void bw_w_parallel(const graft_conv_geom *g, int64_t s, int64_t e, const float *x,
                          const float *dy, float *dk)
{
    if (s == 0)
        graft_f32_dwconv2d_backward_weight_parallel(g, x, dy, dk);
}

static int dw_backward_fast_matches_ref(graft_conv_geom g, bw_in_fn fin, bw_w_fn fw, const char *what)
{
    dw_case c = dw_case_new(g);
    float *din_want = rand_buf(c.nin + GUARD, 1.0f), *din_got = guarded_buf(c.nin);
    float *dk_want = rand_buf(c.nk + GUARD, 1.0f), *dk_got = guarded_buf(c.nk);
    memcpy(din_got, din_want, (size_t)c.nin * sizeof(float));
    memcpy(dk_got, dk_want, (size_t)c.nk * sizeof(float));
    for (int64_t i = 0; i < GUARD; i++)
        din_want[c.nin + i] = dk_want[c.nk + i] = SENTINEL;
    int64_t rows = g.batch * g.in_h;
    graft_f32_dwconv2d_backward_input__ref(&g, 0, rows, c.r, c.kernel, din_want);
    fin(&g, 0, rows / 2, c.r, c.kernel, din_got);
    fin(&g, rows / 2, rows, c.r, c.kernel, din_got);
    graft_f32_dwconv2d_backward_weight__ref(&g, 0, g.in_c, c.in, c.r, dk_want);
    fw(&g, 0, g.in_c / 2, c.in, c.r, dk_got);
    fw(&g, g.in_c / 2, g.in_c, c.in, c.r, dk_got);
    char name[256];
    snprintf(name, sizeof name,
             "%s n%lld %lldx%lldx%lld M%lld k%lldx%lld s%lldx%lld d%lldx%lld pad %lld,%lld", what,
             (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)(g.out_c / g.in_c), (long long)g.kernel_h, (long long)g.kernel_w,
             (long long)g.stride_h, (long long)g.stride_w, (long long)g.dilation_h,
             (long long)g.dilation_w, (long long)g.pad_top, (long long)g.pad_left);
    int ok = close_enough(name, din_got, din_want, c.nin);
    ok &= close_enough(name, dk_got, dk_want, c.nk);
    dw_case_free(&c);
    free(din_want), free(din_got), free(dk_want), free(dk_got);
    return ok;
}

static void dwconv_backward_direct_matches_ref_over_shape_sweep(void **state)
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
                                bad += !dw_backward_fast_matches_ref(
                                    g, graft_f32_dwconv2d_backward_input__direct,
                                    graft_f32_dwconv2d_backward_weight__direct, "sweep");
                            }
    print_message("dwconv backward sweep: %d shapes\n", cases);
    assert_true(cases > 3000);
    assert_int_equal(bad, 0);
}

/* The overwriting variant on a buffer of NaNs equals the ref on zeros. */
static int overwrite_matches_ref(graft_conv_geom g, const char *what)
{
    dw_case c = dw_case_new(g);
    float *want = guarded_buf(c.nin), *got = guarded_buf(c.nin);
    memset(want, 0, sizeof(float) * (size_t)c.nin);
    for (int64_t i = 0; i < c.nin; i++)
        got[i] = NAN;
    graft_f32_dwconv2d_backward_input__ref(&g, 0, g.batch * g.in_h, c.r, c.kernel, want);
    graft_f32_dwconv2d_backward_input_parallel_overwrite(&g, c.r, c.kernel, got);
    int ok = close_enough(what, got, want, c.nin);
    dw_case_free(&c);
    free(want), free(got);
    return ok;
}

static void dwconv_backward_input_overwrite_ignores_old_values(void **state)
{
    static const int64_t strides[] = {1, 2};
    static const int64_t chans[] = {1, 7, 16, 33};
    for (size_t si = 0; si < 2; si++)
        for (size_t ci = 0; ci < 4; ci++)
            for (int same = 0; same <= 1; same++) {
                graft_conv_geom g = geom(2, 9, 8, chans[ci], chans[ci], 3, 3, strides[si],
                                         strides[si], 1, 1);
                assert_int_equal(graft_conv_geom_init(&g, same), 1);
                assert_true(overwrite_matches_ref(g, "dw backward input overwrite"));
            }
    /* a window taller than the direct kernel takes: the ref, rows cleared first */
    graft_conv_geom g = geom(1, 70, 4, 3, 3, 65, 1, 1, 1, 1, 1); /* 65 taps > 64 */
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(overwrite_matches_ref(g, "dw backward input overwrite, big window"));
}

static void dwconv_backward_weight_sums_large_batches_accurately(void **state)
{
    /* 4*56*56 = 12544 pixels per tap: the direct kernel's per-row partial sums
     * keep it within the sweep's tolerance of the double-precision ref. */
    graft_conv_geom g = geom(4, 56, 56, 24, 24, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(dw_backward_fast_matches_ref(g, graft_f32_dwconv2d_backward_input__direct,
                                             graft_f32_dwconv2d_backward_weight__direct, "big batch"));
}

static void dwconv_backward_kernel_larger_than_partial_buffer_matches_ref(void **state)
{
    /* 33x33 taps * M 4 = 4356 partial sums per channel: more than the 4096-float
     * stack buffer, so dW accumulates directly. */
    graft_conv_geom g = geom(1, 34, 34, 2, 8, 33, 33, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_true(dw_backward_fast_matches_ref(g, graft_f32_dwconv2d_backward_input__direct,
                                             graft_f32_dwconv2d_backward_weight__direct, "huge kernel"));
}

static void dwconv_backward_parallel_matches_ref(void **state)
{
    graft_conv_geom g = geom(3, 15, 15, 35, 35, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(dw_backward_fast_matches_ref(g, bw_in_parallel, bw_w_parallel, "parallel"));
    g = geom(2, 8, 8, 5, 10, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(dw_backward_fast_matches_ref(g, bw_in_parallel, bw_w_parallel, "parallel M2"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dwconv_backward_ref_hand_computed),
        cmocka_unit_test(dwconv_backward_refs_match_finite_differences),
        cmocka_unit_test(dwconv_backward_direct_matches_ref_over_shape_sweep),
        cmocka_unit_test(dwconv_backward_input_overwrite_ignores_old_values),
        cmocka_unit_test(dwconv_backward_weight_sums_large_batches_accurately),
        cmocka_unit_test(dwconv_backward_kernel_larger_than_partial_buffer_matches_ref),
        cmocka_unit_test(dwconv_backward_parallel_matches_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
