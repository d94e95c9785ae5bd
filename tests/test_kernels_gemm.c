/* The fused-epilogue GEMM of 1x1 convolutions: the naive ref against hand-computed
 * values, the packed kernel against the ref over sizes below, at and above its
 * register tile (rows not a multiple of GRAFT_GEMM_MR, columns not a multiple of
 * the vector width), every activation, with and without a residual, with row
 * strides wider than the rows, and the residual in place. Then convolutions run
 * through im2col and that GEMM, against the naive convolution. */
#include "kernel_tester.h"

#include "kernels/gemm.h"

static void gemm_fused_ref_hand_computed_relu6_and_residual(void **state)
{
    /* A (2x2) @ B (2x3) + bias + R, then ReLU6. */
    const float a[4] = {1, 2, 3, 4}, b[6] = {1, 0, -1, 2, 1, 0};
    const float bias[3] = {0.5f, 0, 0}, res[6] = {0, 0, 0, 1, -20, 0};
    float c[6];
    graft_f32_gemm_fused__ref(2, 3, 2, a, 2, b, bias, GRAFT__ACT_RELU6, res, 3, c, 3);
    /* Rows of A@B: (5, 2, -1) and (11, 4, -3). */
    const float want[6] = {5.5f, 2, 0, 6, 0, 0};
    for (int i = 0; i < 6; i++)
        assert_float_equal(c[i], want[i], 0);
}

/* One case: packs B, runs both kernels on (m, n, k) with strides lda = k + pad,
 * ldc = ldr = n + pad, and checks every row and the floats between rows. */
static int gemm_case(int64_t m, int64_t n, int64_t k, int64_t pad, graft__activation act,
                     int residual, int in_place)
{
    const int64_t lda = k + pad, ldc = n + pad;
    float *a = rand_buf(m * lda, 1.0f), *b = rand_buf(k * n, 1.0f), *bias = rand_buf(n, 1.0f);
    /* Scale so relu6 clips at both ends: the values spread over about [-9, 9]. */
    for (int64_t i = 0; i < k * n; i++)
        b[i] *= 9.0f / sqrtf((float)k);
    float *res = residual ? rand_buf(m * ldc, 3.0f) : NULL;
    float *want = guarded_buf(m * ldc), *got = guarded_buf(m * ldc);
    float *packed = rand_buf(graft_f32_gemm_packed_floats(k, n), 1.0f);
    graft_f32_gemm_pack(k, n, b, bias, packed);
    graft_f32_gemm_fused__ref(m, n, k, a, lda, b, bias, act, res, ldc, want, ldc);
    if (in_place) {
        memcpy(got, res, sizeof(float) * (size_t)(m * ldc));
        graft_f32_gemm_fused__packed(m, n, k, a, lda, packed, act, got, ldc, got, ldc);
    } else {
        graft_f32_gemm_fused__packed(m, n, k, a, lda, packed, act, res, ldc, got, ldc);
    }
    /* The gaps between rows: the ref leaves them as SENTINEL, the kernel must too
     * (in place they hold the residual's random floats in both). */
    if (in_place)
        for (int64_t i = 0; i < m; i++)
            memcpy(want + i * ldc + n, res + i * ldc + n, sizeof(float) * (size_t)pad);
    char what[128];
    snprintf(what, sizeof what, "gemm m=%lld n=%lld k=%lld pad=%lld act=%d res=%d in_place=%d",
             (long long)m, (long long)n, (long long)k, (long long)pad, act, residual, in_place);
    int ok = close_enough(what, got, want, m * ldc);
    free(a), free(b), free(bias), free(res), free(want), free(got), free(packed);
    return ok;
}

static void gemm_fused_packed_matches_ref_over_shapes(void **state)
{
    const int64_t ms[] = {1, 2, 5, 6, 7, 12, 13, 50};
    const int64_t ns[] = {1, 3, 7, 8, 9, 15, 16, 17, 24, 31, 40};
    const int64_t ks[] = {1, 3, 16, 27, 100};
    const graft__activation acts[] = {GRAFT__ACT_LINEAR, GRAFT__ACT_RELU, GRAFT__ACT_RELU6};
    int failures = 0;
    for (size_t im = 0; im < sizeof ms / sizeof *ms; im++)
        for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
            for (size_t ik = 0; ik < sizeof ks / sizeof *ks; ik++)
                for (int r = 0; r < 2; r++) {
                    graft__activation act = acts[(im + in + ik + (size_t)r) % 3];
                    failures +=
                        !gemm_case(ms[im], ns[in], ks[ik], (int64_t)(in % 3) * 5, act, r, 0);
                }
    assert_int_equal(failures, 0);
}

static void gemm_fused_packed_residual_in_place(void **state)
{
    int failures = 0;
    failures += !gemm_case(13, 24, 144, 0, GRAFT__ACT_LINEAR, 1, 1);
    failures += !gemm_case(7, 17, 5, 3, GRAFT__ACT_RELU6, 1, 1);
    assert_int_equal(failures, 0);
}

/* Blocks of A rows: a k large enough that one block holds fewer rows than m. */
static void gemm_fused_packed_long_k_spans_row_blocks(void **state)
{
    assert_true(gemm_case(100, 20, 1000, 1, GRAFT__ACT_RELU, 1, 0));
}

/* MobileNetV2's own 1x1 shapes (expand, project) on a few rows. */
static void gemm_fused_packed_mobilenet_shapes(void **state)
{
    const int64_t kn[][2] = {{16, 96}, {96, 24}, {24, 144}, {144, 24}, {32, 192}, {960, 160},
                             {160, 960}, {320, 1280}, {27, 32}};
    int failures = 0;
    for (size_t i = 0; i < sizeof kn / sizeof *kn; i++)
        failures += !gemm_case(29, kn[i][1], kn[i][0], 0, GRAFT__ACT_RELU6, (int)(i % 2), 0);
    assert_int_equal(failures, 0);
}

/* Columns by panel ranges, as threads split a small image: the first range
 * alone leaves every later column as it was, and `parts` ranges (each a whole
 * number of panels, the last ending at n) together give the ref. */
static int gemm_cols_case(int64_t m, int64_t n, int64_t k, graft__activation act, int residual,
                          int parts)
{
    const int64_t nr = graft_f32_gemm_panel_cols(), panels = (n + nr - 1) / nr;
    float *a = rand_buf(m * k, 1.0f), *b = rand_buf(k * n, 3.0f / sqrtf((float)k));
    float *bias = rand_buf(n, 1.0f), *res = residual ? rand_buf(m * n, 3.0f) : NULL;
    float *want = guarded_buf(m * n), *got = guarded_buf(m * n);
    float *packed = rand_buf(graft_f32_gemm_packed_floats(k, n), 1.0f);
    graft_f32_gemm_pack(k, n, b, bias, packed);
    graft_f32_gemm_fused__ref(m, n, k, a, k, b, bias, act, res, n, want, n);
    char what[128];
    snprintf(what, sizeof what, "gemm cols m=%lld n=%lld k=%lld act=%d res=%d parts=%d",
             (long long)m, (long long)n, (long long)k, act, residual, parts);
    int ok = 1;
    for (int t = 0; t < parts; t++) {
        int64_t j_lo = panels * t / parts * nr, j_hi = panels * (t + 1) / parts * nr;
        j_hi = j_hi < n ? j_hi : n;
        if (j_lo >= j_hi)
            continue;
        graft_f32_gemm_fused_cols__packed(m, n, k, a, k, packed, j_lo, j_hi, act, res, n, got, n);
        for (int64_t i = 0; ok && t == 0 && i < m; i++)
            for (int64_t j = j_hi; j < n; j++)
                if (got[i * n + j] != SENTINEL) {
                    print_error("%s: columns [0, %lld) wrote column %lld\n", what,
                                (long long)j_hi, (long long)j);
                    ok = 0;
                    break;
                }
    }
    ok = ok && close_enough(what, got, want, m * n);
    free(a), free(b), free(bias), free(res), free(want), free(got), free(packed);
    return ok;
}

static void gemm_fused_cols_split_by_panels(void **state)
{
    const int64_t ns[] = {1, 9, 16, 17, 40, 96, 160, 576};
    int failures = 0;
    for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
        for (int parts = 1; parts <= 3; parts++)
            failures += !gemm_cols_case(13, ns[in], 24 + (int64_t)in, (graft__activation)(in % 3),
                                        parts == 2, parts);
    assert_int_equal(failures, 0);
}

/* ---- convolution through im2col and the fused GEMM --------------------------- */

static float clamp_act(graft__activation act, float x)
{
    if (act != GRAFT__ACT_LINEAR)
        x = x > 0.0f ? x : 0.0f;
    if (act == GRAFT__ACT_RELU6)
        x = x < 6.0f ? x : 6.0f;
    return x;
}

/* The whole batch's pixels split in three uneven ranges, against conv2d__ref
 * followed by the activation. */
static int conv_case(int64_t n, int64_t h, int64_t w, int64_t c, int64_t co, int64_t k,
                     int64_t s, int64_t d, int same, graft__activation act)
{
    graft_conv_geom g = geom(n, h, w, c, co, k, k, s, s, d, d);
    if (!graft_conv_geom_init(&g, same))
        return 1;
    const int64_t K = k * k * c, pixels = n * g.out_h * g.out_w;
    float *in = rand_buf(n * h * w * c, 2.0f), *kernel = rand_buf(K * co, 3.0f / sqrtf((float)K));
    float *bias = rand_buf(co, 1.0f), *want = guarded_buf(pixels * co);
    float *got = guarded_buf(pixels * co);
    float *packed = rand_buf(graft_f32_gemm_packed_floats(K, co), 1.0f);
    float *scratch = rand_buf((int64_t)graft_f32_conv2d_fused_scratch_floats(&g) + 1, 1.0f);
    graft_f32_gemm_pack(K, co, kernel, bias, packed);
    graft_f32_conv2d__ref(&g, in, kernel, bias, want);
    for (int64_t i = 0; i < pixels * co; i++)
        want[i] = clamp_act(act, want[i]);
    const int64_t cut[4] = {0, pixels / 3, pixels / 3 + 1 + pixels / 2, pixels};
    for (int part = 0; part < 3; part++)
        if (cut[part] < cut[part + 1])
            graft_f32_conv2d_fused__packed(&g, cut[part], cut[part + 1], in, packed, act,
                                           got + cut[part] * co, scratch);
    char what[160];
    snprintf(what, sizeof what, "conv fused n=%lld %lldx%lldx%lld->%lld k=%lld s=%lld d=%lld "
             "same=%d act=%d", (long long)n, (long long)h, (long long)w, (long long)c,
             (long long)co, (long long)k, (long long)s, (long long)d, same, act);
    int ok = close_enough(what, got, want, pixels * co);
    free(in), free(kernel), free(bias), free(want), free(got), free(packed), free(scratch);
    return ok;
}

static void conv2d_fused_matches_ref_strides_padding_channels(void **state)
{
    const int64_t channels[][2] = {{3, 32}, {1, 1}, {5, 9}, {8, 17}, {16, 24}};
    const graft__activation acts[] = {GRAFT__ACT_LINEAR, GRAFT__ACT_RELU, GRAFT__ACT_RELU6};
    int failures = 0, i = 0;
    for (size_t ch = 0; ch < sizeof channels / sizeof *channels; ch++)
        for (int64_t s = 1; s <= 3; s++)
            for (int same = 0; same <= 1; same++, i++)
                failures += !conv_case(2, 9, 11, channels[ch][0], channels[ch][1], 3, s, 1, same,
                                       acts[i % 3]);
    failures += !conv_case(3, 7, 6, 4, 10, 1, 1, 1, 0, GRAFT__ACT_RELU6); /* plain GEMM path */
    failures += !conv_case(2, 7, 6, 4, 10, 1, 2, 1, 1, GRAFT__ACT_RELU);  /* 1x1, stride 2 */
    failures += !conv_case(1, 12, 13, 3, 7, 5, 2, 1, 1, GRAFT__ACT_RELU6);
    failures += !conv_case(1, 12, 13, 3, 7, 3, 1, 2, 1, GRAFT__ACT_LINEAR);
    /* MobileNetV2's Conv1 on a small image: 3x3 stride 2, 3 -> 32. */
    failures += !conv_case(2, 30, 30, 3, 32, 3, 2, 1, 1, GRAFT__ACT_RELU6);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gemm_fused_ref_hand_computed_relu6_and_residual),
        cmocka_unit_test(gemm_fused_packed_matches_ref_over_shapes),
        cmocka_unit_test(gemm_fused_packed_residual_in_place),
        cmocka_unit_test(gemm_fused_packed_long_k_spans_row_blocks),
        cmocka_unit_test(gemm_fused_packed_mobilenet_shapes),
        cmocka_unit_test(gemm_fused_cols_split_by_panels),
        cmocka_unit_test(conv2d_fused_matches_ref_strides_padding_channels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
