/* BatchNorm's training kernels (kernels/batch_norm.c) against their refs, over
 * row counts below, at and across the 32-row blocks and the parts the rows are
 * split into, channel counts below, at, not a multiple of the vector width and
 * across the 256-channel tile, each absorbed activation, and dx overwritten or
 * added to. The moments also on data far from zero, where one-pass sums of
 * squares cancel, and the sums on any thread count giving the same bits. */
#include <omp.h>

#include "kernel_tester.h"
#include "kernels/batch_norm.h"

static const int64_t ROWS[] = {1, 7, 32, 33, 515, 1100, 40007};
static const int64_t CHANNELS[] = {1, 3, 8, 17, 100, 300};
static const graft__activation ACTS[] = {GRAFT__ACT_LINEAR, GRAFT__ACT_RELU, GRAFT__ACT_RELU6};

/* |got - want| within rtol of scale (the size of what was summed). */
static int doubles_close(const char *what, const double *got, const double *want,
                         const double *scale, int64_t n, double rtol)
{
    for (int64_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= rtol * (scale ? scale[i] : fabs(want[i])) + 1e-12)) {
            print_error("%s: channel %lld: got %.10g want %.10g\n", what, (long long)i, got[i],
                        want[i]);
            return 0;
        }
    return 1;
}

static int moments_case(int64_t rows, int64_t ch, float offset, float spread)
{
    float *x = rand_buf(rows * ch, spread);
    for (int64_t i = 0; i < rows * ch; i++)
        x[i] += offset * (float)(1 + i % ch);
    double *m = malloc(sizeof(double) * (size_t)ch * 4), *v = m + ch, *rm = v + ch, *rv = rm + ch;
    void *scratch = malloc(graft_f32_bn_scratch_bytes(rows, ch));
    graft_f32_channel_moments__ref(x, rows, ch, rm, rv);
    graft_f32_channel_moments(x, rows, ch, m, v, scratch);
    char what[96];
    snprintf(what, sizeof what, "moments rows %lld ch %lld offset %g", (long long)rows,
             (long long)ch, offset);
    double *mean_scale = malloc(sizeof(double) * (size_t)ch);
    for (int64_t c = 0; c < ch; c++)
        mean_scale[c] = fabs(rm[c]) + sqrt(rv[c]);
    int ok = doubles_close(what, m, rm, mean_scale, ch, 1e-6) &&
             doubles_close(what, v, rv, NULL, ch, 1e-4);
    free(mean_scale);
    free(scratch);
    free(m);
    free(x);
    return ok;
}

static void moments_match_the_ref(void **state)
{
    for (size_t r = 0; r < sizeof ROWS / sizeof *ROWS; r++)
        for (size_t c = 0; c < sizeof CHANNELS / sizeof *CHANNELS; c++) {
            assert_true(moments_case(ROWS[r], CHANNELS[c], 0.0f, 3.0f));
            /* mean 1000s of times the spread */
            assert_true(moments_case(ROWS[r], CHANNELS[c], 500.0f, 0.5f));
        }
}

static void scale_shift_act_matches_the_ref(void **state)
{
    for (size_t r = 0; r < sizeof ROWS / sizeof *ROWS; r++)
        for (size_t c = 0; c < sizeof CHANNELS / sizeof *CHANNELS; c++)
            for (size_t a = 0; a < 3; a++) {
                int64_t rows = ROWS[r], ch = CHANNELS[c];
                float *x = rand_buf(rows * ch, 6.0f), *mul = rand_buf(ch, 2.0f);
                float *add = rand_buf(ch, 3.0f);
                float *want = guarded_buf(rows * ch), *got = guarded_buf(rows * ch);
                graft_f32_scale_shift_act__ref(x, want, mul, add, rows, ch, ACTS[a]);
                graft_f32_scale_shift_act(x, got, mul, add, rows, ch, ACTS[a]);
                char what[96];
                snprintf(what, sizeof what, "scale_shift rows %lld ch %lld act %d",
                         (long long)rows, (long long)ch, (int)ACTS[a]);
                assert_true(close_enough(what, got, want, rows * ch));
                /* in place, as BatchNorm may run over its own input */
                memcpy(got, x, sizeof(float) * (size_t)(rows * ch));
                graft_f32_scale_shift_act(got, got, mul, add, rows, ch, ACTS[a]);
                assert_true(close_enough(what, got, want, rows * ch));
                free(x), free(mul), free(add), free(want), free(got);
            }
}

typedef struct bwd_case {
    int64_t rows, ch;
    float *x, *dy, *mul, *add, *mean, *inv;
} bwd_case;

/* x * mul + add spread over [-9, 9]: below 0, inside, and above ReLU6's 6. */
static bwd_case bwd_make(int64_t rows, int64_t ch)
{
    bwd_case b = {rows, ch, rand_buf(rows * ch, 3.0f), rand_buf(rows * ch, 1.0f),
                  rand_buf(ch, 2.0f), rand_buf(ch, 3.0f), rand_buf(ch, 1.0f), rand_buf(ch, 1.0f)};
    for (int64_t c = 0; c < ch; c++)
        b.inv[c] = 0.5f + fabsf(b.inv[c]);
    return b;
}

static void bwd_free(bwd_case *b)
{
    free(b->x), free(b->dy), free(b->mul), free(b->add), free(b->mean), free(b->inv);
}

static void backward_sums_match_the_ref(void **state)
{
    for (size_t r = 0; r < sizeof ROWS / sizeof *ROWS; r++)
        for (size_t c = 0; c < sizeof CHANNELS / sizeof *CHANNELS; c++)
            for (size_t a = 0; a < 3; a++) {
                int64_t rows = ROWS[r], ch = CHANNELS[c];
                bwd_case b = bwd_make(rows, ch);
                double *s = malloc(sizeof(double) * (size_t)ch * 6), *sx = s + ch, *rs = sx + ch,
                       *rsx = rs + ch, *abs_g = rsx + ch, *abs_gx = abs_g + ch;
                void *scratch = malloc(graft_f32_bn_scratch_bytes(rows, ch));
                graft_f32_bn_backward_sums__ref(b.x, b.dy, ACTS[a], b.mul, b.add, b.mean, b.inv,
                                                rows, ch, rs, rsx);
                graft_f32_bn_backward_sums(b.x, b.dy, ACTS[a], b.mul, b.add, b.mean, b.inv, rows,
                                           ch, s, sx, scratch);
                /* the sums cancel: judge them against the sums of magnitudes */
                for (int64_t k = 0; k < ch; k++) {
                    abs_g[k] = abs_gx[k] = 0.0;
                    for (int64_t i = 0; i < rows; i++) {
                        double xhat = ((double)b.x[i * ch + k] - b.mean[k]) * b.inv[k];
                        abs_g[k] += fabs(b.dy[i * ch + k]);
                        abs_gx[k] += fabs(b.dy[i * ch + k] * xhat);
                    }
                }
                char what[96];
                snprintf(what, sizeof what, "bn sums rows %lld ch %lld act %d", (long long)rows,
                         (long long)ch, (int)ACTS[a]);
                assert_true(doubles_close(what, s, rs, abs_g, ch, 1e-6));
                assert_true(doubles_close(what, sx, rsx, abs_gx, ch, 1e-6));
                /* the same bits on one thread */
                double *one = malloc(sizeof(double) * (size_t)ch * 2);
                int threads = omp_get_max_threads();
                omp_set_num_threads(1);
                graft_f32_bn_backward_sums(b.x, b.dy, ACTS[a], b.mul, b.add, b.mean, b.inv, rows,
                                           ch, one, one + ch, scratch);
                omp_set_num_threads(threads);
                assert_memory_equal(one, s, sizeof(double) * (size_t)ch);
                assert_memory_equal(one + ch, sx, sizeof(double) * (size_t)ch);
                free(one);
                free(scratch);
                free(s);
                bwd_free(&b);
            }
}

static void backward_input_matches_the_ref(void **state)
{
    for (size_t r = 0; r < sizeof ROWS / sizeof *ROWS; r++)
        for (size_t c = 0; c < sizeof CHANNELS / sizeof *CHANNELS; c++)
            for (size_t a = 0; a < 3; a++)
                for (int accumulate = 0; accumulate < 2; accumulate++) {
                    int64_t rows = ROWS[r], ch = CHANNELS[c];
                    bwd_case b = bwd_make(rows, ch);
                    float *scale = rand_buf(ch, 2.0f), *mg = rand_buf(ch, 0.5f);
                    float *mgx = rand_buf(ch, 0.5f);
                    float *want = rand_buf(rows * ch, 1.0f), *got = guarded_buf(rows * ch);
                    if (accumulate)
                        memcpy(got, want, sizeof(float) * (size_t)(rows * ch));
                    else
                        for (int64_t i = 0; i < rows * ch; i++)
                            got[i] = NAN; /* stale contents must not be read */
                    graft_f32_bn_backward_input__ref(b.x, b.dy, ACTS[a], b.mul, b.add, b.mean,
                                                     b.inv, scale, mg, mgx, rows, ch, want,
                                                     accumulate);
                    graft_f32_bn_backward_input(b.x, b.dy, ACTS[a], b.mul, b.add, b.mean, b.inv,
                                                scale, mg, mgx, rows, ch, got, accumulate);
                    char what[96];
                    snprintf(what, sizeof what, "bn dx rows %lld ch %lld act %d acc %d",
                             (long long)rows, (long long)ch, (int)ACTS[a], accumulate);
                    assert_true(close_enough(what, got, want, rows * ch));
                    free(scale), free(mg), free(mgx), free(want), free(got);
                    bwd_free(&b);
                }
}

/* The refs themselves against first principles on a tiny case: moments by
 * hand, and sums and dx from the definitions with the ReLU6 mask. */
static void refs_match_hand_computed_values(void **state)
{
    const float x[6] = {1, -2, 3, 4, 5, 8}; /* rows 3, ch 2: columns {1,3,5}, {-2,4,8} */
    double mean[2], var[2];
    graft_f32_channel_moments__ref(x, 3, 2, mean, var);
    assert_true(fabs(mean[0] - 3.0) < 1e-12 && fabs(var[0] - 8.0 / 3.0) < 1e-12);
    assert_true(fabs(mean[1] - 10.0 / 3.0) < 1e-12);
    assert_true(fabs(var[1] - ((16.0 / 3) * (16.0 / 3) + (2.0 / 3) * (2.0 / 3) + (14.0 / 3) * (14.0 / 3)) / 3.0) < 1e-12);
    /* pre-activations x * mul + add: channel 0 (mul 2, add -2): 0, 4, 8 -> only
     * row 1 inside (0, 6); channel 1 (mul 1, add 1): -1, 5, 9 -> only row 1 */
    const float dy[6] = {1, 1, 1, 2, 3, 4}, mul[2] = {2, 1}, add[2] = {-2, 1};
    const float m[2] = {3, 1}, inv[2] = {0.5f, 2};
    double s[2], sx[2];
    graft_f32_bn_backward_sums__ref(x, dy, GRAFT__ACT_RELU6, mul, add, m, inv, 3, 2, s, sx);
    /* row 1: channel 0 g = 1, xhat = 0; channel 1 g = 2, xhat = 6 */
    assert_true(s[0] == 1.0 && sx[0] == 0.0 && s[1] == 2.0 && sx[1] == 12.0);
    graft_f32_bn_backward_sums__ref(x, dy, GRAFT__ACT_RELU, mul, add, m, inv, 3, 2, s, sx);
    /* ReLU passes rows 1 and 2 of channel 0 (4, 8) and rows 1, 2 of channel 1 */
    assert_true(s[0] == 4.0 && sx[0] == 3.0 && s[1] == 6.0 && sx[1] == 12.0 + 4.0 * 14.0);
    float dx[6];
    const float scale[2] = {2, 1}, mg[2] = {1, 0}, mgx[2] = {0, 0.5f};
    graft_f32_bn_backward_input__ref(x, dy, GRAFT__ACT_RELU6, mul, add, m, inv, scale, mg, mgx, 3,
                                     2, dx, 0);
    /* dx = scale (g - mg - xhat mgx); xhat channel 0: -1, 0, 1; channel 1: -6, 6, 14 */
    const float want[6] = {2 * (0 - 1), 0 + 3, 2 * (1 - 1), 2 - 3, 2 * (0 - 1), 0 - 7};
    for (int i = 0; i < 6; i++)
        assert_true(fabsf(dx[i] - want[i]) < 1e-6f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refs_match_hand_computed_values),
        cmocka_unit_test(moments_match_the_ref),
        cmocka_unit_test(scale_shift_act_matches_the_ref),
        cmocka_unit_test(backward_sums_match_the_ref),
        cmocka_unit_test(backward_input_matches_the_ref),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
