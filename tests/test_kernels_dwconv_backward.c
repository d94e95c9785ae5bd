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
#include <omp.h>

#include "kernels/batch_norm.h"
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

/* Training's depthwise backward (both gradients an image at a time, parts of
 * the batch) against the refs: strides, padding, depth multiplier 2, channel
 * counts off the vector width, batches smaller and larger than the 8 parts,
 * both accumulation modes, threads 1 and 3, one gradient only, and dout mapped
 * through a following BatchNorm's input gradient (ReLU6), against its ref. */
static void dw_train_backward_case(graft_conv_geom g, int accumulate, int threads, int want,
                                   int with_bn, int with_map)
{
    dw_case c = dw_case_new(g);
    /* With a map, the kernel reads z and the refs its map, c.in. */
    mapped_input mi = mapped_input_new(c.nin / g.in_c, g.in_c);
    if (with_map)
        memcpy(c.in, mi.y, sizeof(float) * (size_t)c.nin);
    const int64_t co = g.out_c, rows = c.nout / co;
    float *v[7];
    for (int i = 0; i < 7; i++)
        v[i] = rand_buf(co, 1.0f);
    graft_bn_grad_map map = {GRAFT__ACT_RELU6, v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
    float *out = rand_buf(c.nout, 8.0f), *dz = c.r; /* x * mul + add crosses 0 and 6 */
    if (with_bn) {
        dz = malloc(sizeof(float) * (size_t)c.nout);
        graft_f32_bn_backward_input__ref(out, c.r, map.act, v[0], v[1], v[2], v[3], v[4], v[5],
                                         v[6], rows, co, dz, 0);
    }
    float *din_want = rand_buf(c.nin, 1.0f), *din_got = guarded_buf(c.nin);
    for (int64_t i = 0; i < c.nin; i++)
        din_got[i] = accumulate ? din_want[i] : NAN;
    if (!accumulate)
        memset(din_want, 0, sizeof(float) * (size_t)c.nin);
    if (want & 2)
        graft_f32_dwconv2d_backward_input__ref(&g, 0, g.batch * g.in_h, dz, c.kernel, din_want);
    float *dk_want = rand_buf(c.nk, 1.0f), *dk_got = guarded_buf(c.nk), *mass = calloc((size_t)c.nk, sizeof(float));
    memcpy(dk_got, dk_want, sizeof(float) * (size_t)c.nk);
    if (want & 1)
        graft_f32_dwconv2d_backward_weight__ref(&g, 0, g.in_c, c.in, dz, dk_want);
    /* Each weight gradient is a sum of many products that may cancel; a mapped
     * dout is off the ref's by an ulp here and there: each element is held to
     * 1e-5 of the sum of its terms' magnitudes, the ref over |in| and |dz|. */
    float *abs_in = malloc(sizeof(float) * (size_t)c.nin), *abs_dz = malloc(sizeof(float) * (size_t)c.nout);
    for (int64_t i = 0; i < c.nin; i++)
        abs_in[i] = fabsf(c.in[i]);
    for (int64_t i = 0; i < c.nout; i++)
        abs_dz[i] = fabsf(dz[i]);
    graft_f32_dwconv2d_backward_weight__ref(&g, 0, g.in_c, abs_in, abs_dz, mass);
    float *work = guarded_buf((int64_t)graft_f32_dwconv2d_train_backward_scratch_floats(&g));
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(threads);
    /* The sums of a BatchNorm before (input c.in), taken from din as it is
     * written, when din is. */
    bn_sums_case sums = bn_sums_case_new(c.in, g.in_c);
    graft_f32_dwconv2d_train_backward(&g, with_map ? mi.z : c.in, c.r, c.kernel,
                                      want & 1 ? dk_got : NULL, want & 2 ? din_got : NULL,
                                      accumulate, with_bn ? &map : NULL, out,
                                      want & 2 ? &sums.out : NULL, with_map ? &mi.map : NULL,
                                      work);
    omp_set_num_threads(saved_threads);
    char what[128];
    snprintf(what, sizeof what,
             "dw train dX %lldx%lldx%lld %lld->%lld s%lld acc %d threads %d bn %d map %d",
             (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)co, (long long)g.stride_h, accumulate, threads, with_bn, with_map);
    if (want & 2) {
        assert_true(close_enough(what, din_got, din_want, c.nin));
        assert_true(bn_sums_close(what, c.in, din_got, &sums.out, c.nin / g.in_c, g.in_c));
    } else
        for (int64_t i = 0; i < c.nin; i++)
            assert_true(accumulate ? din_got[i] == din_want[i] : isnan(din_got[i]));
    what[10] = 'W';
    for (int64_t i = 0; i < c.nk; i++) {
        double d = fabs((double)dk_got[i] - dk_want[i]);
        if (!(d <= 1e-5 * mass[i] + 1e-6))
            fail_msg("%s: element %lld: got %.8g want %.8g (terms' mass %.3g)", what,
                     (long long)i, dk_got[i], dk_want[i], mass[i]);
    }
    if (with_bn)
        free(dz);
    for (int i = 0; i < 7; i++)
        free(v[i]);
    free(out), free(work), free(din_want), free(din_got), free(dk_want), free(dk_got), free(mass);
    free(abs_in), free(abs_dz);
    bn_sums_case_free(&sums);
    mapped_input_free(&mi);
    dw_case_free(&c);
}

static void dwconv_train_backward_matches_ref(void **state)
{
    graft_conv_geom gs[6];
    gs[0] = geom(3, 9, 8, 7, 7, 3, 3, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&gs[0], 1), 1);
    gs[1] = geom(2, 9, 9, 17, 17, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&gs[1], 0), 1);
    gs[2] = geom(1, 6, 5, 5, 10, 3, 3, 1, 1, 1, 1); /* depth multiplier 2 */
    assert_int_equal(graft_conv_geom_init(&gs[2], 1), 1);
    gs[3] = geom(11, 5, 4, 16, 16, 3, 3, 1, 1, 1, 1); /* more images than parts */
    assert_int_equal(graft_conv_geom_init(&gs[3], 1), 1);
    gs[4] = geom(5, 7, 7, 33, 33, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&gs[4], 1), 1);
    gs[5] = geom(2, 50, 40, 33, 33, 3, 3, 1, 1, 1, 1); /* din in bands of 24 rows */
    assert_int_equal(graft_conv_geom_init(&gs[5], 1), 1);
    for (int i = 0; i < 6; i++)
        for (int accumulate = 0; accumulate < 2; accumulate++)
            for (int threads = 1; threads <= 3; threads += 2)
                for (int with_bn = 0; with_bn < 2; with_bn++)
                    dw_train_backward_case(gs[i], accumulate, threads, 3, with_bn, with_bn);
    dw_train_backward_case(gs[4], 1, 3, 1, 1, 1); /* weight gradient only */
    dw_train_backward_case(gs[1], 0, 3, 2, 1, 1); /* input gradient only */
    dw_train_backward_case(gs[2], 0, 3, 3, 0, 1); /* a map alone, multiplier 2 */
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
        cmocka_unit_test(dwconv_train_backward_matches_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
