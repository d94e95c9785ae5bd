/* Conv2D backward kernels: the refs against finite differences of the forward
 * ref, the GEMM variants against the refs on a sweep; gradients accumulate. */
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
#include "kernels/gemm.h"
#include "kernel_tester.h"

/* ---- finite differences ---------------------------------------------------------- */

/* ---- refs against finite differences ---------------------------------------------- */

typedef struct conv_case {
    graft_conv_geom g;
    float *in, *kernel, *bias, *out, *r; /* r: dL/dout */
    int64_t nin, nk, nout;
} conv_case;

static conv_case conv_case_new(graft_conv_geom g)
{
    conv_case c = {.g = g};
    c.nin = g.batch * g.in_h * g.in_w * g.in_c;
    c.nk = g.kernel_h * g.kernel_w * g.in_c * g.out_c;
    c.nout = g.batch * g.out_h * g.out_w * g.out_c;
    c.in = rand_buf(c.nin, 1.0f);
    c.kernel = rand_buf(c.nk, 1.0f);
    c.bias = rand_buf(g.out_c, 1.0f);
    c.out = rand_buf(c.nout, 1.0f);
    c.r = rand_buf(c.nout, 1.0f);
    return c;
}

static void conv_case_free(conv_case *c)
{
    free(c->in), free(c->kernel), free(c->bias), free(c->out), free(c->r);
}

static double conv_loss(void *ctx)
{
    conv_case *c = ctx;
    graft_f32_conv2d__ref(&c->g, c->in, c->kernel, c->bias, c->out);
    return dot_double(c->out, c->r, c->nout);
}

static int conv_refs_match_finite_differences(graft_conv_geom g, const char *what)
{
    conv_case c = conv_case_new(g);
    float *din = calloc((size_t)c.nin, sizeof(float));
    float *dk = calloc((size_t)c.nk, sizeof(float));
    float *db = calloc((size_t)g.out_c, sizeof(float));
    graft_f32_conv2d_backward_input__ref(&c.g, c.r, c.kernel, din);
    graft_f32_conv2d_backward_weight__ref(&c.g, c.in, c.r, dk);
    graft_f32_bias_backward__ref(g.batch * g.out_h * g.out_w, g.out_c, 0, g.out_c, c.r, db);
    /* The loss is linear in each parameter, so a large step loses nothing. */
    int ok = matches_finite_differences(what, conv_loss, &c, c.in, din, c.nin, 0.25f);
    ok &= matches_finite_differences(what, conv_loss, &c, c.kernel, dk, c.nk, 0.25f);
    ok &= matches_finite_differences(what, conv_loss, &c, c.bias, db, g.out_c, 0.25f);
    conv_case_free(&c);
    free(din), free(dk), free(db);
    return ok;
}

static void conv2d_backward_refs_match_finite_differences(void **state)
{
    graft_conv_geom g = geom(2, 5, 6, 3, 4, 3, 3, 2, 2, 1, 1); /* 'same' s2: pads bottom/right */
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(conv_refs_match_finite_differences(g, "3x3 s2 same"));
    g = geom(1, 7, 7, 2, 3, 3, 3, 1, 1, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(conv_refs_match_finite_differences(g, "3x3 d2 same"));
    g = geom(2, 4, 9, 3, 2, 1, 7, 1, 3, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(conv_refs_match_finite_differences(g, "1x7 s(1,3) same"));
    g = geom(1, 8, 5, 2, 2, 3, 2, 3, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_true(conv_refs_match_finite_differences(g, "3x2 s(3,1) valid"));
    g = geom(1, 4, 4, 3, 5, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_true(conv_refs_match_finite_differences(g, "pointwise"));
    g = geom(1, 4, 5, 2, 2, 3, 3, 1, 1, 1, 1);
    g.pad_top = 2, g.pad_left = 0, g.out_h = 5, g.out_w = 4;
    assert_true(conv_refs_match_finite_differences(g, "hand padding"));
}

/* ---- fast against ref, gradients accumulating onto existing values --------------- */

static int conv_backward_fast_matches_ref(graft_conv_geom g, const char *what)
{
    conv_case c = conv_case_new(g);
    float *din_want = rand_buf(c.nin + GUARD, 1.0f), *din_got = guarded_buf(c.nin);
    float *dk_want = rand_buf(c.nk + GUARD, 1.0f), *dk_got = guarded_buf(c.nk);
    memcpy(din_got, din_want, (size_t)c.nin * sizeof(float));
    memcpy(dk_got, dk_want, (size_t)c.nk * sizeof(float));
    for (int64_t i = 0; i < GUARD; i++)
        din_want[c.nin + i] = dk_want[c.nk + i] = SENTINEL;
    size_t sb = graft_f32_conv2d_scratch_bytes(&g);
    float *scratch = sb ? malloc(sb) : NULL;
    graft_f32_conv2d_backward_input__ref(&g, c.r, c.kernel, din_want);
    graft_f32_conv2d_backward_input__gemm(&g, c.r, c.kernel, din_got, scratch);
    graft_f32_conv2d_backward_weight__ref(&g, c.in, c.r, dk_want);
    graft_f32_conv2d_backward_weight__gemm(&g, c.in, c.r, dk_got, scratch);
    char name[256];
    snprintf(name, sizeof name,
             "%s n%lld %lldx%lldx%lld->%lld k%lldx%lld s%lldx%lld d%lldx%lld pad %lld,%lld",
             what, (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)g.out_c, (long long)g.kernel_h, (long long)g.kernel_w,
             (long long)g.stride_h, (long long)g.stride_w, (long long)g.dilation_h,
             (long long)g.dilation_w, (long long)g.pad_top, (long long)g.pad_left);
    int ok = close_enough(name, din_got, din_want, c.nin);
    ok &= close_enough(name, dk_got, dk_want, c.nk);
    conv_case_free(&c);
    free(din_want), free(din_got), free(dk_want), free(dk_got), free(scratch);
    return ok;
}

static void conv2d_backward_gemm_matches_ref_over_shape_sweep(void **state)
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
                                continue;
                            cases++;
                            bad += !conv_backward_fast_matches_ref(g, "sweep");
                        }
    print_message("conv2d backward sweep: %d shapes\n", cases);
    assert_true(cases > 900);
    assert_int_equal(bad, 0);
}

static void conv2d_backward_gemm_chunks_and_pointwise_blocks_match_ref(void **state)
{
    graft_conv_geom g = geom(3, 20, 20, 64, 20, 3, 3, 1, 1, 1, 1); /* several im2col chunks */
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(graft_f32_conv2d_scratch_bytes(&g) < (size_t)(3 * 400) * 9 * 64 * sizeof(float));
    assert_true(conv_backward_fast_matches_ref(g, "chunked"));
    g = geom(3, 80, 80, 24, 40, 1, 1, 1, 1, 1, 1); /* more than one 4 MiB row block */
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(conv_backward_fast_matches_ref(g, "pointwise"));
    g = geom(2, 9, 9, 17, 5, 1, 1, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(conv_backward_fast_matches_ref(g, "pointwise stride 2"));
    g = geom(2, 6, 5, 3, 4, 3, 2, 1, 2, 1, 1);
    g.pad_top = 2, g.pad_left = 0, g.out_h = 7, g.out_w = 3;
    assert_true(conv_backward_fast_matches_ref(g, "hand padding"));
}

/* Training's pointwise kernels on graft's packed GEMM against the refs: channel
 * counts below, at and off the vector width, pixel ranges split unevenly (and
 * longer than one weight-gradient chunk), input gradient overwritten (old
 * values NaN) or added to. */
static void pointwise_packed_backward_matches_ref(void **state)
{
    static const int64_t chans[] = {1, 3, 8, 17, 40};
    static const int64_t sizes[][3] = {{1, 1, 1}, {2, 3, 5}, {3, 21, 23}};
    for (size_t si = 0; si < 3; si++)
        for (size_t a = 0; a < 5; a++)
            for (size_t b = 0; b < 5; b++)
                for (int accumulate = 0; accumulate < 2; accumulate++) {
                    int64_t ci = chans[a], co = chans[b];
                    graft_conv_geom g = geom(sizes[si][0], sizes[si][1], sizes[si][2], ci, co, 1,
                                             1, 1, 1, 1, 1);
                    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
                    conv_case c = conv_case_new(g);
                    const int64_t px = g.batch * g.in_h * g.in_w, cut = px / 3;
                    float *din_want = rand_buf(c.nin, 1.0f), *din_got = guarded_buf(c.nin);
                    for (int64_t i = 0; i < c.nin; i++)
                        din_got[i] = accumulate ? din_want[i] : NAN;
                    if (!accumulate)
                        memset(din_want, 0, sizeof(float) * (size_t)c.nin);
                    graft_f32_conv2d_backward_input__ref(&g, c.r, c.kernel, din_want);
                    float *kt = malloc(sizeof(float) * (size_t)(ci * co));
                    for (int64_t i = 0; i < ci; i++)
                        for (int64_t o = 0; o < co; o++)
                            kt[o * ci + i] = c.kernel[i * co + o];
                    float *packed = malloc(sizeof(float) * (size_t)graft_f32_gemm_packed_floats(co, ci));
                    graft_f32_gemm_pack(co, ci, kt, NULL, packed);
                    graft_f32_pw_backward_input__packed(0, cut, ci, co, c.r, packed, din_got, accumulate);
                    graft_f32_pw_backward_input__packed(cut, px, ci, co, c.r, packed, din_got, accumulate);
                    char what[96];
                    snprintf(what, sizeof what, "pw packed dX %lld px %lld->%lld acc %d",
                             (long long)px, (long long)ci, (long long)co, accumulate);
                    assert_true(close_enough(what, din_got, din_want, c.nin));

                    float *dk_want = rand_buf(c.nk, 1.0f), *dk_got = guarded_buf(c.nk);
                    memcpy(dk_got, dk_want, sizeof(float) * (size_t)c.nk);
                    graft_f32_conv2d_backward_weight__ref(&g, c.in, c.r, dk_want);
                    graft_f32_pw_backward_weight__direct(0, cut, ci, co, c.in, c.r, dk_got);
                    graft_f32_pw_backward_weight__direct(cut, px, ci, co, c.in, c.r, dk_got);
                    snprintf(what, sizeof what, "pw packed dW %lld px %lld->%lld", (long long)px,
                             (long long)ci, (long long)co);
                    assert_true(close_enough(what, dk_got, dk_want, c.nk));
                    free(kt), free(packed);
                    free(din_want), free(din_got), free(dk_want), free(dk_got);
                    conv_case_free(&c);
                }
}

/* The threaded pointwise backward (both gradients in one pass over dout) against
 * the refs: pixel counts that leave a short last chunk and parts of unequal
 * size, fewer pixels than parts, channel counts off the vector width, both
 * accumulation modes, threads 1 and 3 (results must not depend on them), only
 * one of the two gradients wanted, and dout mapped through a following
 * BatchNorm's input gradient (with ReLU6, against the BatchNorm ref). */
typedef struct bn_case {
    float *mul, *add, *mean, *inv, *scale, *mg, *mgx;
} bn_case;

/* A mapped dout or input differs from the ref's by an ulp here and
 * there, and the weight gradient sums thousands of such products that largely
 * cancel: each element is held to 1e-5 of the sum of its terms' magnitudes. */
static int weight_grad_close(const char *what, const graft_conv_geom *g, const float *in,
                             const float *dz, const float *got, const float *want)
{
    const int64_t ci = g->in_c, co = g->out_c, px = g->batch * g->out_h * g->out_w;
    for (int64_t i = 0; i < ci; i++)
        for (int64_t o = 0; o < co; o++) {
            double mass = 0.0;
            for (int64_t p = 0; p < px; p++)
                mass += fabs((double)in[p * ci + i] * dz[p * co + o]);
            double d = fabs((double)got[i * co + o] - want[i * co + o]);
            if (!(d <= 1e-5 * mass + 1e-6)) {
                print_error("%s: element %lld: got %.8g want %.8g (terms' mass %.3g)\n", what,
                            (long long)(i * co + o), got[i * co + o], want[i * co + o], mass);
                return 0;
            }
        }
    return 1;
}

static void pointwise_train_backward_case(const int64_t shape[4], int accumulate, int threads,
                                          int want, int with_bn, int with_map)
{
    graft_conv_geom g = geom(shape[0], shape[1], shape[1] + 2, shape[2], shape[3], 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    conv_case c = conv_case_new(g);
    /* With a map, the kernel reads z and the refs its map, c.in. */
    mapped_input mi = mapped_input_new(c.nin / g.in_c, g.in_c);
    if (with_map)
        memcpy(c.in, mi.y, sizeof(float) * (size_t)c.nin);
    const int64_t co = g.out_c, rows = c.nout / co;
    bn_case b = {rand_buf(co, 1.0f), rand_buf(co, 1.0f), rand_buf(co, 1.0f), rand_buf(co, 1.0f),
                 rand_buf(co, 1.0f), rand_buf(co, 1.0f), rand_buf(co, 1.0f)};
    graft_bn_grad_map map = {GRAFT__ACT_RELU6, b.mul, b.add, b.mean, b.inv, b.scale, b.mg, b.mgx};
    /* The convolution's output: scaled so that x * mul + add crosses 0 and 6. */
    float *out = rand_buf(c.nout, 8.0f), *dz = c.r;
    if (with_bn) {
        dz = malloc(sizeof(float) * (size_t)c.nout);
        graft_f32_bn_backward_input__ref(out, c.r, map.act, b.mul, b.add, b.mean, b.inv, b.scale,
                                         b.mg, b.mgx, rows, co, dz, 0);
    }
    float *din_want = rand_buf(c.nin, 1.0f), *din_got = guarded_buf(c.nin);
    for (int64_t i = 0; i < c.nin; i++)
        din_got[i] = accumulate ? din_want[i] : NAN;
    if (!accumulate)
        memset(din_want, 0, sizeof(float) * (size_t)c.nin);
    float *dk_want = rand_buf(c.nk, 1.0f), *dk_got = guarded_buf(c.nk);
    memcpy(dk_got, dk_want, sizeof(float) * (size_t)c.nk);
    if (want & 1) /* else dk_got must stay as it was */
        graft_f32_conv2d_backward_weight__ref(&g, c.in, dz, dk_want);
    if (want & 2) /* else din_got must stay as it was */
        graft_f32_conv2d_backward_input__ref(&g, dz, c.kernel, din_want);
    float *work = guarded_buf((int64_t)graft_f32_conv2d_train_scratch_floats(&g));
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(threads);
    /* The sums of a BatchNorm before (input c.in), taken from din as it is
     * written, when din is. */
    bn_sums_case sums = bn_sums_case_new(c.in, g.in_c);
    graft_f32_conv2d_train_backward_pointwise(&g, with_map ? mi.z : c.in, c.r, c.kernel,
                                              want & 1 ? dk_got : NULL, want & 2 ? din_got : NULL,
                                              accumulate, with_bn ? &map : NULL, out,
                                              want & 2 ? &sums.out : NULL,
                                              with_map ? &mi.map : NULL, work);
    omp_set_num_threads(saved_threads);
    char what[128];
    snprintf(what, sizeof what, "pw train dX %lldx%lld %lld->%lld acc %d threads %d bn %d map %d",
             (long long)g.batch, (long long)g.in_h, (long long)g.in_c, (long long)co, accumulate,
             threads, with_bn, with_map);
    if (want & 2) {
        assert_true(close_enough(what, din_got, din_want, c.nin));
        assert_true(bn_sums_close(what, c.in, din_got, &sums.out, c.nin / g.in_c, g.in_c));
    } else /* untouched */
        for (int64_t i = 0; i < c.nin; i++)
            assert_true(accumulate ? din_got[i] == din_want[i] : isnan(din_got[i]));
    what[10] = 'W';
    if (want & 1 && (with_bn || with_map))
        assert_true(weight_grad_close(what, &g, c.in, dz, dk_got, dk_want));
    else if (want & 1)
        assert_true(close_enough(what, dk_got, dk_want, c.nk));
    else
        assert_memory_equal(dk_got, dk_want, sizeof(float) * (size_t)c.nk);
    if (with_bn)
        free(dz);
    free(b.mul), free(b.add), free(b.mean), free(b.inv), free(b.scale), free(b.mg), free(b.mgx);
    free(out), free(work), free(din_want), free(din_got), free(dk_want), free(dk_got);
    bn_sums_case_free(&sums);
    mapped_input_free(&mi);
    conv_case_free(&c);
}

static void pointwise_train_backward_both_gradients_match_ref(void **state)
{
    static const int64_t shapes[][4] = {
        {1, 1, 5, 13}, {1, 2, 3, 1}, {2, 37, 17, 24}, {3, 29, 24, 9}, {1, 41, 8, 96},
        {1, 30, 300, 150}}; /* the last: two chunks a part, sized by din's wider rows */
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int accumulate = 0; accumulate < 2; accumulate++)
            for (int threads = 1; threads <= 3; threads += 2)
                for (int with_bn = 0; with_bn < 2; with_bn++)
                    pointwise_train_backward_case(shapes[s], accumulate, threads, 3, with_bn,
                                                  with_bn);
    /* One gradient only; a map alone. */
    pointwise_train_backward_case(shapes[2], 1, 3, 1, 1, 1);
    pointwise_train_backward_case(shapes[3], 0, 3, 2, 1, 1);
    pointwise_train_backward_case(shapes[5], 0, 3, 3, 0, 1);
}

/* The packed weight gradient of windowed convolutions (im2col chunks taken as
 * a pointwise input) against the ref: strides, padding on one side only (as an
 * absorbed ZeroPadding2D leaves it), more pixels than one chunk, uneven split. */
/* Wide dout rows make short pixel chunks (32 at 1100 channels). */
static void pointwise_weight_gradient_wide_output_matches_ref(void **state)
{
    graft_conv_geom g = geom(1, 10, 11, 3, 1100, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    conv_case c = conv_case_new(g);
    float *want = rand_buf(c.nk, 1.0f), *got = guarded_buf(c.nk);
    memcpy(got, want, sizeof(float) * (size_t)c.nk);
    graft_f32_conv2d_backward_weight__ref(&g, c.in, c.r, want);
    graft_f32_pw_backward_weight__direct(0, 110, 3, 1100, c.in, c.r, got);
    assert_true(close_enough("pw dW 1100 channels", got, want, c.nk));
    free(want), free(got);
    conv_case_free(&c);
}

static void conv2d_packed_weight_gradient_matches_ref(void **state)
{
    graft_conv_geom gs[4];
    gs[0] = geom(2, 9, 7, 3, 5, 3, 3, 2, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&gs[0], 1), 1);
    gs[1] = geom(3, 30, 31, 3, 32, 3, 3, 2, 2, 1, 1); /* the stem, 1 chunk and a bit */
    assert_int_equal(graft_conv_geom_init(&gs[1], 0), 1);
    gs[1].in_h -= 1, gs[1].in_w -= 1; /* its padding (0,1),(0,1) taken into the window */
    gs[2] = geom(1, 6, 5, 17, 9, 2, 3, 1, 2, 1, 1);
    assert_int_equal(graft_conv_geom_init(&gs[2], 1), 1);
    gs[3] = geom(2, 11, 4, 8, 16, 1, 1, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&gs[3], 0), 1);
    for (int i = 0; i < 4; i++) {
        graft_conv_geom g = gs[i];
        conv_case c = conv_case_new(g);
        const int64_t px = g.batch * g.out_h * g.out_w, cut = px / 3 + 1;
        float *want = rand_buf(c.nk, 1.0f), *got = guarded_buf(c.nk);
        memcpy(got, want, sizeof(float) * (size_t)c.nk);
        graft_f32_conv2d_backward_weight__ref(&g, c.in, c.r, want);
        float *scratch = malloc(sizeof(float) * (graft_f32_conv2d_backward_weight_scratch_floats(&g) + 1));
        graft_f32_conv2d_backward_weight__tiled(&g, 0, cut, c.in, c.r, got, scratch);
        graft_f32_conv2d_backward_weight__tiled(&g, cut, px, c.in, c.r, got, scratch);
        char what[64];
        snprintf(what, sizeof what, "packed conv dW case %d", i);
        assert_true(close_enough(what, got, want, c.nk));
        free(scratch), free(want), free(got);
        conv_case_free(&c);
    }
}

static void bias_backward_direct_matches_ref_and_keeps_to_its_channels(void **state)
{
    static const int64_t chans[] = {1, 3, 16, 17, 300, 1280};
    for (int i = 0; i < 6; i++) {
        int64_t c = chans[i], rows = 1000;
        float *dy = rand_buf(rows * c, 1.0f);
        float *want = rand_buf(c + GUARD, 1.0f), *got = guarded_buf(c);
        memcpy(got, want, (size_t)c * sizeof(float));
        for (int64_t k = 0; k < GUARD; k++)
            want[c + k] = SENTINEL;
        int64_t mid = c / 3;
        graft_f32_bias_backward__ref(rows, c, 0, c, dy, want);
        graft_f32_bias_backward__direct(rows, c, 0, mid, dy, got);
        graft_f32_bias_backward__direct(rows, c, mid, c, dy, got);
        assert_true(close_enough("bias", got, want, c));
        /* A channel range leaves the others alone. */
        float before = got[0];
        graft_f32_bias_backward__direct(rows, c, c > 1 ? 1 : 0, c > 1 ? c : 0, dy, got);
        assert_true(got[0] == before);
        free(dy), free(want), free(got);
    }
}

static void bias_backward_hand_computed(void **state)
{
    const float dy[6] = {1, 10, 2, 20, 3, 30}; /* 3 rows, 2 channels */
    float db[2] = {100, 200};
    graft_f32_bias_backward__direct(3, 2, 0, 2, dy, db);
    assert_float_equal(db[0], 106, 0);
    assert_float_equal(db[1], 260, 0);
    graft_f32_bias_backward__ref(3, 2, 0, 2, dy, db);
    assert_float_equal(db[0], 112, 0);
    assert_float_equal(db[1], 320, 0);
}

static void conv2d_backward_input_ref_hand_computed(void **state)
{
    /* 1x3 input, 1x2 kernel {1, 10}, valid: out0 = x0 + 10 x1, out1 = x1 + 10 x2.
     * With dout = {1, 2}: dx = {1, 10 + 2, 20}; dW = {x0 + 2 x1, x1 + 2 x2}. */
    const float x[3] = {3, 5, 7}, w[2] = {1, 10}, dy[2] = {1, 2};
    float dx[3] = {0, 0, 0}, dw[2] = {0, 0};
    graft_conv_geom g = geom(1, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_conv2d_backward_input__ref(&g, dy, w, dx);
    graft_f32_conv2d_backward_weight__ref(&g, x, dy, dw);
    assert_float_equal(dx[0], 1, 0);
    assert_float_equal(dx[1], 12, 0);
    assert_float_equal(dx[2], 20, 0);
    assert_float_equal(dw[0], 13, 0);
    assert_float_equal(dw[1], 19, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conv2d_backward_input_ref_hand_computed),
        cmocka_unit_test(bias_backward_hand_computed),
        cmocka_unit_test(conv2d_backward_refs_match_finite_differences),
        cmocka_unit_test(conv2d_backward_gemm_matches_ref_over_shape_sweep),
        cmocka_unit_test(conv2d_backward_gemm_chunks_and_pointwise_blocks_match_ref),
        cmocka_unit_test(bias_backward_direct_matches_ref_and_keeps_to_its_channels),
        cmocka_unit_test(pointwise_packed_backward_matches_ref),
        cmocka_unit_test(pointwise_train_backward_both_gradients_match_ref),
        cmocka_unit_test(conv2d_packed_weight_gradient_matches_ref),
        cmocka_unit_test(pointwise_weight_gradient_wide_output_matches_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
