/* Shared pieces of the kernel tests: seeded random buffers with guard floats
 * after them, the fast-versus-ref comparison (atol + rtol*|ref|, guards
 * untouched), geometry builders and the finite-difference check. */
#ifndef GRAFT_TESTS_KERNEL_TESTER_H
#define GRAFT_TESTS_KERNEL_TESTER_H

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

#define ATOL 1e-5
#define RTOL 1e-4
/* Floats after every buffer that a kernel must leave alone. */
#define GUARD 64
#define SENTINEL 12345.678f

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* The scalar the gradients are checked on: L = sum(out * R) for fixed random R,
 * so dL/dout = R is the `dout` fed to the backward kernels. */
typedef double (*loss_fn)(void *ctx);

static inline float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static inline float *rand_buf(int64_t n, float scale)
{
    float *p = malloc((size_t)(n + GUARD) * sizeof(float));
    assert_non_null(p);
    for (int64_t i = 0; i < n + GUARD; i++)
        p[i] = frand() * scale;
    return p;
}

static inline float *guarded_buf(int64_t n)
{
    float *p = malloc((size_t)(n + GUARD) * sizeof(float));
    assert_non_null(p);
    for (int64_t i = 0; i < n + GUARD; i++)
        p[i] = SENTINEL;
    return p;
}

/* |got-want| <= ATOL + RTOL*|want| everywhere, and the guard floats untouched. */
static inline int close_enough(const char *what, const float *got, const float *want, int64_t n)
{
    static int reported; /* a broken kernel fails hundreds of sweep cases: show a few */
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= ATOL + RTOL * fabs((double)want[i]))) {
            if (reported++ < 8)
                print_error("%s: element %lld: got %.8g want %.8g\n", what, (long long)i, got[i],
                            want[i]);
            return 0;
        }
    }
    for (int64_t i = n; i < n + GUARD; i++)
        if (got[i] != SENTINEL) {
            if (reported++ < 8)
                print_error("%s: wrote past the end (float %lld)\n", what, (long long)(i - n));
            return 0;
        }
    return 1;
}

static inline graft_conv_geom geom(int64_t n, int64_t h, int64_t w, int64_t c, int64_t co, int64_t kh,
                            int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw)
{
    graft_conv_geom g = {.batch = n, .in_h = h, .in_w = w, .in_c = c, .out_c = co,
                         .kernel_h = kh, .kernel_w = kw, .stride_h = sh, .stride_w = sw,
                         .dilation_h = dh, .dilation_w = dw};
    return g;
}

/* Moments taken by parts (GRAFT_CONV_TRAIN_PARTS of them, means then squared
 * deviations, as a training forward takes them), merged, against the
 * double-precision ref's moments of the output they were taken from. */
static inline void assert_part_moments_match_ref(const double *parts, const float *out,
                                                 int64_t pixels, int64_t ch)
{
    double *mean = malloc(sizeof(double) * 4 * (size_t)ch), *var = mean + ch, *rmean = var + ch,
           *rvar = rmean + ch;
    assert_non_null(mean);
    graft_f32_channel_moments_merge(parts, parts + GRAFT_CONV_TRAIN_PARTS * ch,
                                    GRAFT_CONV_TRAIN_PARTS, pixels, ch, mean, var);
    graft_f32_channel_moments__ref(out, pixels, ch, rmean, rvar);
    for (int64_t c = 0; c < ch; c++) {
        double spread = sqrt(rvar[c]) + 1e-6;
        assert_true(fabs(mean[c] - rmean[c]) <= 1e-5 * (fabs(rmean[c]) + spread));
        assert_true(fabs(var[c] - rvar[c]) <= 1e-4 * rvar[c] + 1e-9);
    }
    free(mean);
}

static inline double dot_double(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* Compares grad[i] with the central difference of loss() in param[i], for every i.
 * The denominator is the difference actually stored in float. */
static inline int matches_finite_differences(const char *what, loss_fn loss, void *ctx, float *param,
                                      const float *grad, int64_t n, float h)
{
    static int reported;
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        float keep = param[i];
        float up = keep + h, down = keep - h;
        param[i] = up;
        double lp = loss(ctx);
        param[i] = down;
        double lm = loss(ctx);
        param[i] = keep;
        double fd = (lp - lm) / ((double)up - (double)down);
        double an = grad[i];
        double scale = fabs(fd) > fabs(an) ? fabs(fd) : fabs(an);
        if (!(fabs(fd - an) <= 1e-3 * scale + 1e-6)) {
            if (reported++ < 8)
                print_error("%s: element %lld: analytic %.8g, finite difference %.8g\n", what,
                            (long long)i, an, fd);
            ok = 0;
        }
    }
    return ok;
}

static inline graft_conv_geom pool_geom(int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                                 int64_t sh, int64_t sw)
{
    return geom(n, h, w, c, c, kh, kw, sh, sw, 1, 1);
}

/* A BatchNorm's output as a layer maps it from the BatchNorm's input: z (n rows
 * of ch, scaled so that z * mul + add crosses ReLU6's 0 and 6), the map, and
 * y = the ref's map of z, for the refs to read. */
typedef struct mapped_input {
    float *z, *y, *mul, *add;
    graft_bn_grad_map map;
} mapped_input;

static inline mapped_input mapped_input_new(int64_t rows, int64_t ch)
{
    mapped_input m = {rand_buf(rows * ch, 4.0f), malloc(sizeof(float) * (size_t)(rows * ch)),
                      rand_buf(ch, 2.0f), rand_buf(ch, 3.0f),
                      {GRAFT__ACT_RELU6, NULL, NULL, NULL, NULL, NULL, NULL, NULL}};
    assert_non_null(m.y);
    m.map.mul = m.mul, m.map.add = m.add;
    graft_f32_scale_shift_act__ref(m.z, m.y, m.mul, m.add, rows, ch, GRAFT__ACT_RELU6);
    return m;
}

static inline void mapped_input_free(mapped_input *m)
{
    free(m->z), free(m->y), free(m->mul), free(m->add);
}

/* Where a layer puts the backward sums of a BatchNorm before it (input x, ch
 * channels, a ReLU6 map of its own), for bn_sums_close. */
typedef struct bn_sums_case {
    float *v[4];
    double *parts;
    graft_bn_sums_out out;
} bn_sums_case;

static inline bn_sums_case bn_sums_case_new(const float *x, int64_t ch)
{
    bn_sums_case b;
    for (int i = 0; i < 4; i++)
        b.v[i] = rand_buf(ch, 1.0f);
    b.parts = malloc(sizeof(double) * 2 * GRAFT_BN_SUM_PARTS * (size_t)ch);
    assert_non_null(b.parts);
    b.out = (graft_bn_sums_out){{GRAFT__ACT_RELU6, b.v[0], b.v[1], b.v[2], b.v[3], NULL, NULL, NULL},
                                x, b.parts, b.parts + GRAFT_BN_SUM_PARTS * ch};
    return b;
}

static inline void bn_sums_case_free(bn_sums_case *b)
{
    for (int i = 0; i < 4; i++)
        free(b->v[i]);
    free(b->parts);
}

/* A layer's take of the BatchNorm before it's backward sums (its parts merged)
 * against the ref over x and the final dy, each sum held to 1e-5 of the sum of
 * its terms' magnitudes (it may cancel). The map's act is ReLU6 or linear. */
static inline int bn_sums_close(const char *what, const float *x, const float *dy,
                                const graft_bn_sums_out *got, int64_t rows, int64_t ch)
{
    double *want_g = malloc(sizeof(double) * 2 * (size_t)ch), *want_gx = want_g + ch;
    double *sum_g = malloc(sizeof(double) * 2 * (size_t)ch), *sum_gx = sum_g + ch;
    const graft_bn_grad_map *m = &got->map;
    graft_f32_bn_backward_sums__ref(x, dy, m->act, m->mul, m->add, m->mean, m->inv, rows, ch,
                                    want_g, want_gx);
    graft_f32_bn_backward_sums_merge(got, ch, sum_g, sum_gx);
    int ok = 1;
    for (int64_t c = 0; c < ch && ok; c++) {
        double mass_g = 0.0, mass_gx = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            float v = x[r * ch + c] * m->mul[c] + m->add[c];
            int on = m->act == GRAFT__ACT_LINEAR || (v > 0.0f && v < 6.0f);
            double g = on ? fabs((double)dy[r * ch + c]) : 0.0;
            mass_g += g;
            mass_gx += g * fabs(((double)x[r * ch + c] - m->mean[c]) * m->inv[c]);
        }
        if (!(fabs(sum_g[c] - want_g[c]) <= 1e-5 * mass_g + 1e-9) ||
            !(fabs(sum_gx[c] - want_gx[c]) <= 1e-5 * mass_gx + 1e-9)) {
            print_error("%s: BatchNorm sums of channel %lld: got %.9g %.9g want %.9g %.9g\n",
                        what, (long long)c, sum_g[c], sum_gx[c], want_g[c], want_gx[c]);
            ok = 0;
        }
    }
    free(want_g);
    free(sum_g);
    return ok;
}

#endif
