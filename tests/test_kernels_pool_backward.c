/* Pooling backward kernels: TF's gradient routing on hand-computed cases, the refs
 * against finite differences, the direct variants against the refs on a sweep. */
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

/* Distinct inputs 0.01 apart in random order: no window has a tie, and a
 * finite-difference step of 1e-3 never changes which cell is the maximum. */
static float *distinct_buf(int64_t n)
{
    float *p = rand_buf(n, 1.0f);
    for (int64_t i = 0; i < n; i++)
        p[i] = 0.01f * (float)i - 0.005f * (float)n;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)((frand() + 1.0f) * 0.5f * (float)(i + 1));
        if (j > i)
            j = i;
        float t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    return p;
}

/* ---- refs against hand-computed values and finite differences --------------------- */

static void maxpool_backward_routes_to_first_maximum_on_ties(void **state)
{
    /* One 2x2 window holding 5, 5, 1, 5: all the gradient goes to the first 5. */
    const float in[4] = {5, 5, 1, 5}, dy[1] = {3};
    float dx[4] = {1, 1, 1, 1}, dx2[4] = {1, 1, 1, 1};
    graft_conv_geom g = pool_geom(1, 2, 2, 1, 2, 2, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_maxpool2d_backward__ref(&g, 0, 1, in, dy, dx);
    graft_f32_maxpool2d_backward__direct(&g, 0, 1, in, dy, dx2);
    const float want[4] = {4, 1, 1, 1};
    for (int i = 0; i < 4; i++) {
        assert_float_equal(dx[i], want[i], 0);
        assert_float_equal(dx2[i], want[i], 0);
    }
}

static void avgpool_backward_same_edge_shares_among_valid_cells(void **state)
{
    /* 3x3 input, 2x2 s2 'same': windows of 4, 2, 2 and 1 valid cells. */
    const float dy[4] = {4, 2, 6, 5};
    float dx[9] = {0}, dx2[9] = {0};
    graft_conv_geom g = pool_geom(1, 3, 3, 1, 2, 2, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    graft_f32_avgpool2d_backward__ref(&g, 0, 1, dy, dx);
    graft_f32_avgpool2d_backward__direct(&g, 0, 1, dy, dx2);
    const float want[9] = {1, 1, 1, 1, 1, 1, 3, 3, 5};
    for (int i = 0; i < 9; i++) {
        assert_float_equal(dx[i], want[i], 0);
        assert_float_equal(dx2[i], want[i], 0);
    }
}

typedef struct pool_case {
    graft_conv_geom g;
    int is_max;
    float *in, *out, *r;
    int64_t nin, nout;
} pool_case;

static double pool_loss(void *ctx)
{
    pool_case *c = ctx;
    int64_t rows = c->g.batch * c->g.out_h;
    if (c->is_max)
        graft_f32_maxpool2d__ref(&c->g, 0, rows, c->in, c->out);
    else
        graft_f32_avgpool2d__ref(&c->g, 0, rows, c->in, c->out);
    return dot_double(c->out, c->r, c->nout);
}

static int pool_refs_match_finite_differences(graft_conv_geom g, const char *what)
{
    int ok = 1;
    for (int is_max = 0; is_max <= 1; is_max++) {
        pool_case c = {.g = g, .is_max = is_max};
        c.nin = g.batch * g.in_h * g.in_w * g.in_c;
        c.nout = g.batch * g.out_h * g.out_w * g.out_c;
        c.in = distinct_buf(c.nin);
        c.out = rand_buf(c.nout, 1.0f);
        c.r = rand_buf(c.nout, 1.0f);
        float *din = calloc((size_t)c.nin, sizeof(float));
        if (is_max)
            graft_f32_maxpool2d_backward__ref(&g, 0, g.batch, c.in, c.r, din);
        else
            graft_f32_avgpool2d_backward__ref(&g, 0, g.batch, c.r, din);
        /* Average pooling is linear: a large step keeps float rounding of the
         * outputs out of the difference. Max pooling outputs inputs exactly, and
         * its step stays below the 0.01 gap between inputs. */
        ok &= matches_finite_differences(what, pool_loss, &c, c.in, din, c.nin,
                                         is_max ? 1e-3f : 0.25f);
        free(c.in), free(c.out), free(c.r), free(din);
    }
    return ok;
}

static void pool_backward_refs_match_finite_differences(void **state)
{
    graft_conv_geom g = pool_geom(2, 5, 6, 3, 3, 3, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(pool_refs_match_finite_differences(g, "3x3 s2 same"));
    g = pool_geom(1, 7, 7, 2, 3, 3, 1, 1); /* overlapping windows */
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(pool_refs_match_finite_differences(g, "3x3 s1 same"));
    g = pool_geom(2, 6, 7, 2, 2, 3, 2, 3);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    assert_true(pool_refs_match_finite_differences(g, "2x3 s(2,3) valid"));
}

static void global_pool_backward_hand_computed(void **state)
{
    const float in[6] = {1, 9, 7, 9, 3, 2}; /* (1, hw 3, c 2): max of channel 1 ties */
    const float dy[2] = {6, 3};
    float dx[6] = {0}, dx2[6] = {0};
    graft_f32_global_avgpool_backward__ref(3, 2, 0, 1, dy, dx);
    graft_f32_global_avgpool_backward__direct(3, 2, 0, 1, dy, dx2);
    for (int i = 0; i < 6; i++) {
        assert_float_equal(dx[i], (i % 2 ? 1 : 2), 0);
        assert_float_equal(dx2[i], (i % 2 ? 1 : 2), 0);
    }
    float mx[6] = {0}, mx2[6] = {0};
    graft_f32_global_maxpool_backward__ref(3, 2, 0, 1, in, dy, mx);
    graft_f32_global_maxpool_backward__direct(3, 2, 0, 1, in, dy, mx2);
    const float want[6] = {0, 3, 6, 0, 0, 0};
    for (int i = 0; i < 6; i++) {
        assert_float_equal(mx[i], want[i], 0);
        assert_float_equal(mx2[i], want[i], 0);
    }
}

/* ---- direct against ref, gradients accumulating onto existing values ------------- */

typedef void (*max_bw_fn)(const graft_conv_geom *, int64_t, int64_t, const float *, const float *,
                          float *);
typedef void (*avg_bw_fn)(const graft_conv_geom *, int64_t, int64_t, const float *, float *);

static void max_bw_parallel(const graft_conv_geom *g, int64_t s, int64_t e, const float *in,
                            const float *dy, float *dx)
{
    if (s == 0) /* the whole batch, once: gradients accumulate */
        graft_f32_maxpool2d_backward_parallel(g, in, dy, dx);
}

static void avg_bw_parallel(const graft_conv_geom *g, int64_t s, int64_t e, const float *dy, float *dx)
{
    if (s == 0)
        graft_f32_avgpool2d_backward_parallel(g, dy, dx);
}

static int pool_backward_fast_matches_ref(graft_conv_geom g, max_bw_fn fmax, avg_bw_fn favg,
                                          int ties, const char *what)
{
    int64_t nin = g.batch * g.in_h * g.in_w * g.in_c;
    int64_t nout = g.batch * g.out_h * g.out_w * g.out_c;
    float *in = ties ? rand_buf(nin, 1.0f) : distinct_buf(nin);
    if (ties) /* few distinct values: many tied maxima */
        for (int64_t i = 0; i < nin; i++)
            in[i] = (float)(int)(in[i] * 2.0f);
    float *dy = rand_buf(nout, 1.0f);
    float *want = rand_buf(nin + GUARD, 1.0f), *got = guarded_buf(nin);
    for (int64_t i = 0; i < GUARD; i++)
        want[nin + i] = SENTINEL;
    char name[256];
    snprintf(name, sizeof name, "%s n%lld %lldx%lldx%lld k%lldx%lld s%lldx%lld pad %lld,%lld", what,
             (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)g.kernel_h, (long long)g.kernel_w, (long long)g.stride_h,
             (long long)g.stride_w, (long long)g.pad_top, (long long)g.pad_left);
    int64_t half = g.batch / 2;
    memcpy(got, want, (size_t)nin * sizeof(float));
    graft_f32_maxpool2d_backward__ref(&g, 0, g.batch, in, dy, want);
    fmax(&g, 0, half, in, dy, got);
    fmax(&g, half, g.batch, in, dy, got);
    int ok = close_enough(name, got, want, nin);
    memcpy(got, want, (size_t)nin * sizeof(float));
    graft_f32_avgpool2d_backward__ref(&g, 0, g.batch, dy, want);
    favg(&g, 0, half, dy, got);
    favg(&g, half, g.batch, dy, got);
    ok &= close_enough(name, got, want, nin);
    free(in), free(dy), free(want), free(got);
    return ok;
}

static void pool_backward_direct_matches_ref_over_shape_sweep(void **state)
{
    static const int64_t shapes[][3] = {{1, 7, 7}, {3, 8, 6}, {1, 13, 12}};
    static const int64_t kernels[][2] = {{1, 1}, {2, 2}, {3, 3}, {5, 5}, {1, 7}, {7, 1}};
    static const int64_t chans[] = {1, 3, 15, 16, 17, 33, 300};
    int cases = 0, bad = 0;
    for (size_t si = 0; si < 3; si++)
        for (size_t ki = 0; ki < 6; ki++)
            for (int64_t s = 1; s <= 3; s++)
                for (int same = 0; same <= 1; same++)
                    for (size_t ci = 0; ci < 7; ci++) {
                        graft_conv_geom g = pool_geom(shapes[si][0], shapes[si][1], shapes[si][2],
                                                      chans[ci], kernels[ki][0], kernels[ki][1], s, s);
                        if (!graft_conv_geom_init(&g, same))
                            continue;
                        cases++;
                        bad += !pool_backward_fast_matches_ref(
                            g, graft_f32_maxpool2d_backward__direct,
                            graft_f32_avgpool2d_backward__direct, (int)(ci & 1), "sweep");
                    }
    print_message("pool backward sweep: %d shapes\n", cases);
    assert_true(cases > 600);
    assert_int_equal(bad, 0);
}

static void pool_backward_parallel_matches_ref(void **state)
{
    graft_conv_geom g = pool_geom(5, 17, 16, 35, 3, 3, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(pool_backward_fast_matches_ref(g, max_bw_parallel, avg_bw_parallel, 1, "parallel"));
}

static void global_pool_backward_direct_matches_ref(void **state)
{
    static const int64_t chans[] = {1, 3, 16, 17, 300, 1280};
    static const int64_t hws[] = {1, 49, 50};
    int bad = 0;
    for (int ci = 0; ci < 6; ci++)
        for (int hi = 0; hi < 3; hi++) {
            int64_t n = 3, c = chans[ci], hw = hws[hi];
            float *in = rand_buf(n * hw * c, 1.0f);
            for (int64_t i = 0; i < n * hw * c; i += 3)
                in[i] = 0.5f; /* some ties */
            float *dy = rand_buf(n * c, 1.0f);
            float *want = rand_buf(n * hw * c + GUARD, 1.0f), *got = guarded_buf(n * hw * c);
            for (int64_t i = 0; i < GUARD; i++)
                want[n * hw * c + i] = SENTINEL;
            memcpy(got, want, (size_t)(n * hw * c) * sizeof(float));
            graft_f32_global_avgpool_backward__ref(hw, c, 0, n, dy, want);
            graft_f32_global_avgpool_backward__direct(hw, c, 0, 1, dy, got);
            graft_f32_global_avgpool_backward__direct(hw, c, 1, n, dy, got);
            bad += !close_enough("global avg backward", got, want, n * hw * c);
            graft_f32_global_maxpool_backward__ref(hw, c, 0, n, in, dy, want);
            graft_f32_global_maxpool_backward__direct(hw, c, 0, 2, in, dy, got);
            graft_f32_global_maxpool_backward__direct(hw, c, 2, n, in, dy, got);
            bad += !close_enough("global max backward", got, want, n * hw * c);
            free(in), free(dy), free(want), free(got);
        }
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(maxpool_backward_routes_to_first_maximum_on_ties),
        cmocka_unit_test(avgpool_backward_same_edge_shares_among_valid_cells),
        cmocka_unit_test(global_pool_backward_hand_computed),
        cmocka_unit_test(pool_backward_refs_match_finite_differences),
        cmocka_unit_test(pool_backward_direct_matches_ref_over_shape_sweep),
        cmocka_unit_test(pool_backward_parallel_matches_ref),
        cmocka_unit_test(global_pool_backward_direct_matches_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
