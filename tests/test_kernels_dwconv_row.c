/* The row-at-a-time depthwise kernel of fused inverted-residual blocks: its ref
 * against the whole-tensor depthwise ref (linear, then clamped by hand), and the
 * direct variant against its ref over widths, channel counts below, at and not
 * a multiple of the vector width, strides, dilations, kernel sizes, padding,
 * every activation, and rows missing at the top and bottom. */
#include "kernel_tester.h"

/* Row pointers of output row oy of image img (NULL on padding rows). */
static void window_rows(const graft_conv_geom *g, const float *img, int64_t oy,
                        const float **rows)
{
    for (int64_t ky = 0; ky < g->kernel_h; ky++) {
        int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
        rows[ky] = iy >= 0 && iy < g->in_h ? img + iy * g->in_w * g->in_c : NULL;
    }
}

static float clamp_act(graft__activation act, float x)
{
    if (act != GRAFT__ACT_LINEAR)
        x = x > 0.0f ? x : 0.0f;
    if (act == GRAFT__ACT_RELU6)
        x = x < 6.0f ? x : 6.0f;
    return x;
}

/* The row by channel ranges [0, m) then [m, c), m odd where it can be: the
 * first call leaves channels m and up alone, and the two together give ref. */
static int channel_split_case(const graft_conv_geom *g, const float *const *rows,
                              const float *kernel, const float *bias, graft__activation act,
                              const float *ref, const char *what)
{
    const int64_t c = g->in_c, m = c / 2 | 1, n = g->out_w * c;
    float *got = guarded_buf(n);
    int ok = 1;
    graft_f32_dwconv2d_row_channels__direct(g, rows, kernel, bias, act, 0, m < c ? m : c, got);
    for (int64_t ox = 0; ok && ox < g->out_w; ox++)
        for (int64_t ch = m; ch < c; ch++)
            if (got[ox * c + ch] != SENTINEL) {
                print_error("%s: channels [0, %lld) wrote channel %lld\n", what, (long long)m,
                            (long long)ch);
                ok = 0;
                break;
            }
    if (m < c)
        graft_f32_dwconv2d_row_channels__direct(g, rows, kernel, bias, act, m, c, got);
    ok = ok && close_enough(what, got, ref, n);
    free(got);
    return ok;
}

/* Every row of one image, the row kernels against the whole-tensor ref. */
static int row_case(int64_t h, int64_t w, int64_t c, int64_t k, int64_t s, int64_t d, int same,
                    graft__activation act)
{
    graft_conv_geom g = geom(1, h, w, c, c, k, k, s, s, d, d);
    if (!graft_conv_geom_init(&g, same))
        return 1; /* window larger than the image: nothing to test */
    float *in = rand_buf(h * w * c, 4.0f), *kernel = rand_buf(k * k * c, 1.0f);
    float *bias = rand_buf(c, 1.0f), *whole = guarded_buf(g.out_h * g.out_w * c);
    graft_f32_dwconv2d__ref(&g, 0, g.out_h, in, kernel, bias, whole);
    for (int64_t i = 0; i < g.out_h * g.out_w * c; i++)
        whole[i] = clamp_act(act, whole[i]);
    float *ref = guarded_buf(g.out_w * c), *got = guarded_buf(g.out_w * c);
    char what[160];
    int ok = 1;
    for (int64_t oy = 0; ok && oy < g.out_h; oy++) {
        const float *rows[GRAFT_DW_ROW_MAX_KH];
        window_rows(&g, in, oy, rows);
        graft_f32_dwconv2d_row__ref(&g, rows, kernel, bias, act, ref);
        graft_f32_dwconv2d_row__direct(&g, rows, kernel, bias, act, got);
        snprintf(what, sizeof what, "dw row h=%lld w=%lld c=%lld k=%lld s=%lld d=%lld same=%d "
                 "act=%d row %lld", (long long)h, (long long)w, (long long)c, (long long)k,
                 (long long)s, (long long)d, same, act, (long long)oy);
        ok = close_enough(what, ref, whole + oy * g.out_w * c, g.out_w * c) &&
             close_enough(what, got, ref, g.out_w * c) && channel_split_case(&g, rows, kernel,
                                                                           bias, act, ref, what);
    }
    free(in), free(kernel), free(bias), free(whole), free(ref), free(got);
    return ok;
}

static void dwconv_row_matches_whole_tensor_ref_over_shapes(void **state)
{
    const int64_t widths[] = {1, 2, 3, 5, 7, 14, 15};
    const int64_t channels[] = {1, 3, 7, 8, 9, 16, 31, 32, 33, 40, 96};
    const graft__activation acts[] = {GRAFT__ACT_LINEAR, GRAFT__ACT_RELU, GRAFT__ACT_RELU6};
    int failures = 0, n = 0;
    for (size_t iw = 0; iw < sizeof widths / sizeof *widths; iw++)
        for (size_t ic = 0; ic < sizeof channels / sizeof *channels; ic++)
            for (int64_t s = 1; s <= 2; s++)
                for (int same = 0; same <= 1; same++, n++)
                    failures += !row_case(5, widths[iw], channels[ic], 3, s, 1, same, acts[n % 3]);
    assert_int_equal(failures, 0);
}

static void dwconv_row_other_kernels_strides_dilations(void **state)
{
    int failures = 0;
    failures += !row_case(9, 11, 19, 5, 1, 1, 1, GRAFT__ACT_RELU6);
    failures += !row_case(9, 11, 19, 5, 3, 1, 1, GRAFT__ACT_LINEAR);
    failures += !row_case(9, 13, 33, 3, 1, 2, 1, GRAFT__ACT_RELU);
    failures += !row_case(8, 12, 24, 7, 2, 1, 1, GRAFT__ACT_RELU6);
    failures += !row_case(6, 9, 17, 1, 1, 1, 0, GRAFT__ACT_RELU6);
    failures += !row_case(3, 3, 8, 3, 1, 1, 0, GRAFT__ACT_LINEAR);
    assert_int_equal(failures, 0);
}

/* MobileNetV2's depthwise rows: 112 wide by 96 channels at stride 2 with
 * Keras's one-sided padding (pad_left 0), 14 wide by 576 at stride 1. */
static void dwconv_row_mobilenet_shapes(void **state)
{
    int failures = 0;
    failures += !row_case(4, 112, 96, 3, 2, 1, 1, GRAFT__ACT_RELU6);
    failures += !row_case(4, 56, 144, 3, 1, 1, 1, GRAFT__ACT_RELU6);
    failures += !row_case(3, 14, 576, 3, 1, 1, 1, GRAFT__ACT_RELU6);
    failures += !row_case(3, 7, 960, 3, 1, 1, 1, GRAFT__ACT_RELU6);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dwconv_row_matches_whole_tensor_ref_over_shapes),
        cmocka_unit_test(dwconv_row_other_kernels_strides_dilations),
        cmocka_unit_test(dwconv_row_mobilenet_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
