/* Pooling kernels: TF semantics on hand-computed cases (max ignores padding, avg
 * divides by the valid cells), the direct variants against the refs on a sweep. */
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

/* ---- the refs against hand-computed values ----------------------------------- */

static void pool_same_2x2s2_on_3x3_windows_hang_off_bottom_right(void **state)
{
    const float in[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    float mx[4], av[4];
    graft_conv_geom g = pool_geom(1, 3, 3, 1, 2, 2, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_int_equal(g.out_h, 2);
    assert_int_equal(g.pad_top, 0);
    graft_f32_maxpool2d__ref(&g, 0, 2, in, mx);
    graft_f32_avgpool2d__ref(&g, 0, 2, in, av);
    assert_float_equal(mx[0], 5, 0);
    assert_float_equal(mx[1], 6, 0);
    assert_float_equal(mx[2], 8, 0);
    assert_float_equal(mx[3], 9, 0);
    /* Averages over the valid cells only: 4, 2, 2 and 1 of them. */
    assert_float_equal(av[0], 3.0f, 0);
    assert_float_equal(av[1], 4.5f, 0);
    assert_float_equal(av[2], 7.5f, 0);
    assert_float_equal(av[3], 9.0f, 0);
}

static void avgpool_same_edge_divides_by_valid_count(void **state)
{
    float in[9], out[9];
    for (int i = 0; i < 9; i++)
        in[i] = 1.0f;
    graft_conv_geom g = pool_geom(1, 3, 3, 1, 3, 3, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    graft_f32_avgpool2d__ref(&g, 0, 3, in, out);
    for (int i = 0; i < 9; i++)
        assert_float_equal(out[i], 1.0f, 0); /* not 4/9 or 6/9 at the edges */
    graft_f32_avgpool2d__direct(&g, 0, 3, in, out);
    for (int i = 0; i < 9; i++)
        assert_float_equal(out[i], 1.0f, 0);
}

static void maxpool_same_ignores_padding_for_negative_inputs(void **state)
{
    float in[9], out[9];
    for (int i = 0; i < 9; i++)
        in[i] = -(float)(i + 1);
    graft_conv_geom g = pool_geom(1, 3, 3, 1, 3, 3, 1, 1);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    const float want[9] = {-1, -1, -2, -1, -1, -2, -4, -4, -5};
    graft_f32_maxpool2d__ref(&g, 0, 3, in, out);
    for (int i = 0; i < 9; i++)
        assert_float_equal(out[i], want[i], 0);
    graft_f32_maxpool2d__direct(&g, 0, 3, in, out);
    for (int i = 0; i < 9; i++)
        assert_float_equal(out[i], want[i], 0);
}

static void pool_channels_are_independent(void **state)
{
    /* 2x2 valid over 2 channels: channel 1 holds the negated values. */
    const float in[8] = {1, -1, 7, -7, 3, -3, 5, -5};
    float mx[2], av[2];
    graft_conv_geom g = pool_geom(1, 2, 2, 2, 2, 2, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 0), 1);
    graft_f32_maxpool2d__ref(&g, 0, 1, in, mx);
    graft_f32_avgpool2d__ref(&g, 0, 1, in, av);
    assert_float_equal(mx[0], 7, 0);
    assert_float_equal(mx[1], -1, 0);
    assert_float_equal(av[0], 4, 0);
    assert_float_equal(av[1], -4, 0);
}

static void global_pools_hand_computed(void **state)
{
    /* (N=2, H*W=3, C=2) */
    const float in[12] = {1, -1, 2, -5, 6, 0, /* sample 1: */ 3, 3, 3, 3, 3, 4};
    float out[4];
    graft_f32_global_avgpool__ref(3, 2, 0, 2, in, out);
    assert_float_equal(out[0], 3, 0);
    assert_float_equal(out[1], -2, 0);
    assert_float_equal(out[2], 3, 0);
    assert_float_equal(out[3], 10.0f / 3, 1e-6);
    graft_f32_global_maxpool__ref(3, 2, 0, 2, in, out);
    assert_float_equal(out[0], 6, 0);
    assert_float_equal(out[1], 0, 0);
    assert_float_equal(out[2], 3, 0);
    assert_float_equal(out[3], 4, 0);
}

/* ---- direct against ref ------------------------------------------------------ */

typedef void (*pool_fn)(const graft_conv_geom *, int64_t, int64_t, const float *, float *);

static void max_parallel_all(const graft_conv_geom *g, int64_t s, int64_t e, const float *in, float *out)
{
    graft_f32_maxpool2d_parallel(g, in, out);
}

static void avg_parallel_all(const graft_conv_geom *g, int64_t s, int64_t e, const float *in, float *out)
{
    graft_f32_avgpool2d_parallel(g, in, out);
}

static int pool_matches_ref(graft_conv_geom g, pool_fn ref, pool_fn fast, const char *what)
{
    int64_t nin = g.batch * g.in_h * g.in_w * g.in_c;
    int64_t nout = g.batch * g.out_h * g.out_w * g.out_c;
    float *in = rand_buf(nin, 1.0f);
    float *want = guarded_buf(nout), *got = guarded_buf(nout);
    int64_t rows = g.batch * g.out_h;
    ref(&g, 0, rows, in, want);
    fast(&g, 0, rows / 3, in, got);
    fast(&g, rows / 3, rows, in, got);
    char name[256];
    snprintf(name, sizeof name, "%s n%lld %lldx%lldx%lld k%lldx%lld s%lldx%lld pad %lld,%lld out %lldx%lld",
             what, (long long)g.batch, (long long)g.in_h, (long long)g.in_w, (long long)g.in_c,
             (long long)g.kernel_h, (long long)g.kernel_w, (long long)g.stride_h,
             (long long)g.stride_w, (long long)g.pad_top, (long long)g.pad_left,
             (long long)g.out_h, (long long)g.out_w);
    int ok = close_enough(name, got, want, nout);
    free(in), free(want), free(got);
    return ok;
}

static void pool_direct_matches_ref_over_shape_sweep(void **state)
{
    static const int64_t shapes[][3] = {{1, 7, 7}, {3, 8, 6}, {1, 13, 12}};
    static const int64_t kernels[][2] = {{1, 1}, {2, 2}, {3, 3}, {5, 5}, {1, 7}, {7, 1}};
    static const int64_t chans[] = {1, 3, 15, 16, 17, 33};
    int cases = 0, bad = 0;
    for (size_t si = 0; si < 3; si++)
        for (size_t ki = 0; ki < 6; ki++)
            for (int64_t s = 1; s <= 3; s++)
                for (int same = 0; same <= 1; same++)
                    for (size_t ci = 0; ci < 6; ci++) {
                        graft_conv_geom g = pool_geom(shapes[si][0], shapes[si][1], shapes[si][2],
                                                      chans[ci], kernels[ki][0], kernels[ki][1], s, s);
                        if (!graft_conv_geom_init(&g, same))
                            continue;
                        cases++;
                        bad += !pool_matches_ref(g, graft_f32_maxpool2d__ref,
                                                 graft_f32_maxpool2d__direct, "max");
                        bad += !pool_matches_ref(g, graft_f32_avgpool2d__ref,
                                                 graft_f32_avgpool2d__direct, "avg");
                    }
    print_message("pool sweep: %d shapes, max and avg each\n", cases);
    assert_true(cases > 500);
    assert_int_equal(bad, 0);
}

static void pool_parallel_matches_ref(void **state)
{
    graft_conv_geom g = pool_geom(3, 17, 16, 35, 3, 3, 2, 2);
    assert_int_equal(graft_conv_geom_init(&g, 1), 1);
    assert_true(pool_matches_ref(g, graft_f32_maxpool2d__ref, max_parallel_all, "max parallel"));
    assert_true(pool_matches_ref(g, graft_f32_avgpool2d__ref, avg_parallel_all, "avg parallel"));
}

static void pool_window_entirely_in_hand_made_padding_gives_zero(void **state)
{
    graft_conv_geom g = pool_geom(1, 2, 2, 3, 2, 2, 1, 1);
    g.pad_top = 2; /* the first output row sees only padding */
    g.pad_left = 0;
    g.out_h = 4;
    g.out_w = 1;
    assert_true(pool_matches_ref(g, graft_f32_maxpool2d__ref, graft_f32_maxpool2d__direct, "max hand"));
    assert_true(pool_matches_ref(g, graft_f32_avgpool2d__ref, graft_f32_avgpool2d__direct, "avg hand"));
    float in[12], out[12];
    for (int i = 0; i < 12; i++)
        in[i] = -1.0f - (float)i;
    graft_f32_maxpool2d__direct(&g, 0, 1, in, out);
    for (int i = 0; i < 3; i++)
        assert_float_equal(out[i], 0.0f, 0);
}

static void global_pools_direct_match_ref(void **state)
{
    static const int64_t chans[] = {1, 3, 15, 16, 17, 33, 1280};
    static const int64_t hws[] = {1, 49, 50};
    int bad = 0;
    for (int ci = 0; ci < 7; ci++)
        for (int hi = 0; hi < 3; hi++)
            for (int64_t n = 1; n <= 3; n += 2) {
                int64_t c = chans[ci], hw = hws[hi];
                float *in = rand_buf(n * hw * c, 1.0f);
                float *want = guarded_buf(n * c), *got = guarded_buf(n * c);
                graft_f32_global_avgpool__ref(hw, c, 0, n, in, want);
                graft_f32_global_avgpool__direct(hw, c, 0, n, in, got);
                bad += !close_enough("global avg", got, want, n * c);
                graft_f32_global_maxpool__ref(hw, c, 0, n, in, want);
                graft_f32_global_maxpool__direct(hw, c, 0, n, in, got);
                bad += !close_enough("global max", got, want, n * c);
                /* Only [1, n) this time: sample 0 must stay untouched. */
                for (int64_t i = 0; i < c; i++)
                    got[i] = SENTINEL;
                graft_f32_global_avgpool__direct(hw, c, 1, n, in, got);
                for (int64_t i = 0; i < c; i++)
                    bad += got[i] != SENTINEL;
                free(in), free(want), free(got);
            }
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pool_same_2x2s2_on_3x3_windows_hang_off_bottom_right),
        cmocka_unit_test(avgpool_same_edge_divides_by_valid_count),
        cmocka_unit_test(maxpool_same_ignores_padding_for_negative_inputs),
        cmocka_unit_test(pool_channels_are_independent),
        cmocka_unit_test(global_pools_hand_computed),
        cmocka_unit_test(pool_direct_matches_ref_over_shape_sweep),
        cmocka_unit_test(pool_parallel_matches_ref),
        cmocka_unit_test(pool_window_entirely_in_hand_made_padding_gives_zero),
        cmocka_unit_test(global_pools_direct_match_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
