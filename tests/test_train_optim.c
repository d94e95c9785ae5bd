/* Optimisers: a few steps against values worked by hand (arithmetic in the
 * comments), L2-SP, global-norm clipping, and thread-count independence.
 *
 * The Adam constants came from this stdlib-only python3 script (double precision;
 * the kernels run in float32, hence tolerances of 1e-6 on values near 1):
 *
 *   import math
 *   def adam(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
 *       m = v = 0.0; out = []
 *       for t, g in enumerate(grads, 1):
 *           if decoupled: w = w * (1 - lr * wd)
 *           else: g = g + wd * w
 *           m = b1 * m + (1 - b1) * g
 *           v = b2 * v + (1 - b2) * g * g
 *           w = w - lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
 *           out.append(w)
 *       return out
 *   gs = [0.5, 0.25, -0.5]
 *   adam(1.0, gs, 0.01)                   # 0.9900000002 0.9806782040477462 0.9795703733601093
 *   adam(1.0, gs, 0.01, wd=0.1)           # 0.9900000001666667 0.980465827519045
 *                                         # 0.9772928152861048
 *   adam(1.0, gs, 0.01, wd=0.1, decoupled=True)
 *                                         # 0.9890000002 0.9786892040475462 0.9766026841558618
 *   adam(1.0, gs, 0.1, 0.5, 0.9, 0.1)     # 0.9166666666666666 0.8484994072061174
 *                                         # 0.8752878543055094
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "train/optim.h"

static void assert_close(double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("got %.10g, want %.10g (tolerance %g)", got, want, tol);
}

static const float grads3[3] = {0.5f, 0.25f, -0.5f};

/* ---- SGD ----------------------------------------------------------------- */

static void sgd_plain(void **state)
{
    graft__sgd_config cfg = {0};
    float w[2] = {1.0f, -2.0f};
    const float g[2] = {0.5f, 0.25f};
    assert_int_equal(graft__sgd_check(&cfg), GRAFT_OK);
    /* w - 0.1 * g = [1 - 0.05, -2 - 0.025]; no buffer needed */
    graft__sgd_step(&cfg, 0.1f, 1, w, g, NULL, 0, 2);
    assert_close(w[0], 0.95, 1e-7);
    assert_close(w[1], -2.025, 1e-7);
}

static void sgd_weight_decay(void **state)
{
    graft__sgd_config cfg = {.weight_decay = 0.01f};
    float w[2] = {1.0f, -2.0f};
    const float g[2] = {0.5f, 0.25f};
    /* g + 0.01 w = [0.51, 0.23]; w - 0.1 * that = [0.949, -2.023] */
    graft__sgd_step(&cfg, 0.1f, 1, w, g, NULL, 0, 2);
    assert_close(w[0], 0.949, 1e-7);
    assert_close(w[1], -2.023, 1e-7);
}

static void sgd_momentum(void **state)
{
    graft__sgd_config cfg = {.momentum = 0.9f};
    float w = 1.0f, buf = 1e30f; /* step 1 must ignore what the buffer held */
    /* step 1, g 0.5:  buf = 0.5;                   w = 1 - 0.05 = 0.95
     * step 2, g 0.25: buf = 0.45 + 0.25 = 0.7;     w = 0.95 - 0.07 = 0.88
     * step 3, g -0.5: buf = 0.63 - 0.5 = 0.13;     w = 0.88 - 0.013 = 0.867 */
    const double want[3] = {0.95, 0.88, 0.867};
    for (int t = 0; t < 3; t++) {
        graft__sgd_step(&cfg, 0.1f, t + 1, &w, &grads3[t], &buf, 0, 1);
        assert_close(w, want[t], 1e-6);
    }
    assert_close(buf, 0.13, 1e-6);
}

static void sgd_nesterov(void **state)
{
    graft__sgd_config cfg = {.momentum = 0.9f, .nesterov = 1};
    float w = 1.0f, buf = 0.0f;
    /* step 1: buf = 0.5;  w -= 0.1 * (0.5 + 0.9 * 0.5)   = 0.095  -> 0.905
     * step 2: buf = 0.7;  w -= 0.1 * (0.25 + 0.9 * 0.7)  = 0.088  -> 0.817
     * step 3: buf = 0.13; w -= 0.1 * (-0.5 + 0.9 * 0.13) = -0.0383 -> 0.8553 */
    const double want[3] = {0.905, 0.817, 0.8553};
    for (int t = 0; t < 3; t++) {
        graft__sgd_step(&cfg, 0.1f, t + 1, &w, &grads3[t], &buf, 0, 1);
        assert_close(w, want[t], 1e-6);
    }
}

static void sgd_momentum_weight_decay(void **state)
{
    graft__sgd_config cfg = {.momentum = 0.9f, .weight_decay = 0.1f};
    float w = 1.0f, buf = 0.0f;
    /* step 1: g = 0.5 + 0.1 * 1 = 0.6;       buf = 0.6;               w = 1 - 0.06 = 0.94
     * step 2: g = 0.25 + 0.1 * 0.94 = 0.344; buf = 0.54 + 0.344 = 0.884; w = 0.94 - 0.0884
     *         = 0.8516 */
    graft__sgd_step(&cfg, 0.1f, 1, &w, &grads3[0], &buf, 0, 1);
    assert_close(w, 0.94, 1e-6);
    graft__sgd_step(&cfg, 0.1f, 2, &w, &grads3[1], &buf, 0, 1);
    assert_close(w, 0.8516, 1e-6);
    /* Nesterov with decay, step 1: g = 0.6, buf = 0.6, w -= 0.1 * (0.6 + 0.54) -> 0.886 */
    cfg.nesterov = 1;
    w = 1.0f;
    graft__sgd_step(&cfg, 0.1f, 1, &w, &grads3[0], &buf, 0, 1);
    assert_close(w, 0.886, 1e-6);
}

static void sgd_range_only(void **state)
{
    graft__sgd_config cfg = {.momentum = 0.5f};
    float w[4] = {1, 1, 1, 1}, g[4] = {1, 1, 1, 1}, buf[4] = {9, 9, 9, 9};
    graft__sgd_step(&cfg, 1.0f, 1, w, g, buf, 1, 3);
    assert_true(w[0] == 1.0f && w[3] == 1.0f && buf[0] == 9.0f && buf[3] == 9.0f);
    assert_true(w[1] == 0.0f && w[2] == 0.0f);
}

static void sgd_check_rejects(void **state)
{
    graft__sgd_config nesterov_no_mu = {.nesterov = 1};
    graft__sgd_config neg_mu = {.momentum = -0.1f};
    graft__sgd_config nan_wd = {.weight_decay = NAN};
    assert_int_equal(graft__sgd_check(&nesterov_no_mu), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__sgd_check(&neg_mu), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__sgd_check(&nan_wd), GRAFT_E_INVALID_ARG);
}

/* ---- Adam / AdamW -------------------------------------------------------- */

static void run_adam(const graft__adam_config *cfg, float lr, const double want[3])
{
    /* element 1 has a zero gradient throughout and must not move (m = v = 0 gives
     * 0 / (0 + eps)), unless decay pulls it */
    float w[2] = {1.0f, 1.0f}, m[2] = {0, 0}, v[2] = {0, 0};
    for (int t = 0; t < 3; t++) {
        float g[2] = {grads3[t], 0.0f};
        graft__adam_step(cfg, lr, t + 1, w, g, m, v, 0, 2);
        assert_close(w[0], want[t], 1e-6);
    }
    if (cfg->weight_decay == 0.0f)
        assert_true(w[1] == 1.0f);
}

static void adam_steps(void **state)
{
    graft__adam_config cfg = graft__adam_defaults();
    assert_int_equal(graft__adam_check(&cfg), GRAFT_OK);
    /* step 1: m = 0.05, v = 0.00025; m^ = 0.5, v^ = 0.25; w -= 0.01 * 0.5 / 0.5 -> 0.99
     * step 2: m = 0.045 + 0.025 = 0.07, v = 0.00024975 + 0.0000625 = 0.00031225;
     *         m^ = 0.07 / 0.19 = 0.368421, v^ = 0.00031225 / 0.001999 = 0.156203,
     *         w -= 0.01 * 0.368421 / 0.395225 = 0.0093218 -> 0.9806782 */
    const double want[3] = {0.9900000002, 0.9806782040477462, 0.9795703733601093};
    run_adam(&cfg, 0.01f, want);
}

static void adam_coupled_l2(void **state)
{
    graft__adam_config cfg = graft__adam_defaults();
    cfg.weight_decay = 0.1f;
    /* step 1: g = 0.5 + 0.1 * 1 = 0.6, and step 1 moves by lr * sign(g) -> 0.99 */
    const double want[3] = {0.9900000001666667, 0.980465827519045, 0.9772928152861048};
    run_adam(&cfg, 0.01f, want);
}

static void adamw_decoupled(void **state)
{
    graft__adam_config cfg = graft__adam_defaults();
    cfg.weight_decay = 0.1f;
    cfg.decoupled = 1;
    assert_int_equal(graft__adam_check(&cfg), GRAFT_OK);
    /* step 1: w = 1 * (1 - 0.01 * 0.1) = 0.999, then the Adam move 0.01 -> 0.989 */
    const double want[3] = {0.9890000002, 0.9786892040475462, 0.9766026841558618};
    run_adam(&cfg, 0.01f, want);
}

static void adam_eps_after_bias_correction(void **state)
{
    /* A large eps tells where it goes. step 1: m = 0.25, v = 0.025, m^ = 0.5,
     * v^ = 0.25: w -= 0.1 * 0.5 / (0.5 + 0.1) = 0.083333 -> 0.916667. Adding eps
     * before the correction (Keras's epsilon-hat) would give another number. */
    graft__adam_config cfg = {.beta1 = 0.5f, .beta2 = 0.9f, .eps = 0.1f};
    const double want[3] = {0.9166666666666666, 0.8484994072061174, 0.8752878543055094};
    run_adam(&cfg, 0.1f, want);
}

static void adam_check_rejects(void **state)
{
    graft__adam_config c = graft__adam_defaults();
    c.beta1 = 1.0f;
    assert_int_equal(graft__adam_check(&c), GRAFT_E_INVALID_ARG);
    c = graft__adam_defaults();
    c.beta2 = -0.5f;
    assert_int_equal(graft__adam_check(&c), GRAFT_E_INVALID_ARG);
    c = graft__adam_defaults();
    c.eps = 0.0f;
    assert_int_equal(graft__adam_check(&c), GRAFT_E_INVALID_ARG);
    c = graft__adam_defaults();
    c.weight_decay = -1.0f;
    assert_int_equal(graft__adam_check(&c), GRAFT_E_INVALID_ARG);
}

/* The _parallel wrappers must give the same bits as one serial call, whatever the
 * thread count: run 0 is serial, run 1 uses 2 threads, run 2 one thread. The odd
 * length leaves every thread's share a different vector tail. */
static void parallel_steps_match_serial(void **state)
{
    const int64_t n = 200003;
    const size_t bytes = sizeof(float) * (size_t)n;
    float *g = malloc(bytes);
    float *w[3], *buf[3], *m[3], *v[3];
    for (int r = 0; r < 3; r++) {
        w[r] = malloc(bytes);
        buf[r] = malloc(bytes); /* step 1 overwrites it */
        m[r] = calloc((size_t)n, sizeof(float));
        v[r] = calloc((size_t)n, sizeof(float));
    }
    for (int64_t i = 0; i < n; i++) {
        g[i] = (float)sin((double)i);
        w[0][i] = w[1][i] = w[2][i] = (float)cos((double)i * 0.5);
    }
    const graft__sgd_config sgd = {.momentum = 0.9f, .nesterov = 1, .weight_decay = 1e-4f};
    graft__adam_config adam = graft__adam_defaults();
    adam.weight_decay = 0.01f;
    adam.decoupled = 1;
    for (int64_t t = 1; t <= 2; t++) {
        graft__sgd_step(&sgd, 0.1f, t, w[0], g, buf[0], 0, n);
        graft__adam_step(&adam, 0.01f, t, w[0], g, m[0], v[0], 0, n);
        for (int r = 1; r < 3; r++) {
            graft_set_threads(r == 1 ? 2 : 1);
            graft__sgd_step_parallel(&sgd, 0.1f, t, w[r], g, buf[r], n);
            graft__adam_step_parallel(&adam, 0.01f, t, w[r], g, m[r], v[r], n);
        }
    }
    graft_set_threads(0);
    for (int r = 1; r < 3; r++) {
        assert_memory_equal(w[0], w[r], bytes);
        assert_memory_equal(buf[0], buf[r], bytes);
        assert_memory_equal(m[0], m[r], bytes);
        assert_memory_equal(v[0], v[r], bytes);
    }
    free(g);
    for (int r = 0; r < 3; r++) {
        free(w[r]);
        free(buf[r]);
        free(m[r]);
        free(v[r]);
    }
}

/* ---- L2-SP --------------------------------------------------------------- */

static void l2sp_grad_and_penalty(void **state)
{
    const float w[2] = {1.0f, 2.0f}, w0[2] = {0.5f, 2.5f};
    float g[2] = {0.0f, 1.0f};
    /* alpha 0.1: g += 0.1 * (w - w0) = [0.05, -0.05]; penalty 0.05 * (0.25 + 0.25) */
    graft__l2sp_grad(0.1f, w, w0, g, 0, 2);
    assert_close(g[0], 0.05, 1e-8);
    assert_close(g[1], 0.95, 1e-7);
    assert_close(graft__l2sp_penalty(0.1f, w, w0, 2), 0.025, 1e-9);
    /* plain L2 (new layers), beta 0.2: g += 0.2 * w = [0.2, 0.4]; penalty 0.1 * (1 + 4) */
    float h[2] = {0.0f, 0.0f};
    graft__l2sp_grad(0.2f, w, NULL, h, 0, 2);
    assert_close(h[0], 0.2, 1e-7);
    assert_close(h[1], 0.4, 1e-7);
    assert_close(graft__l2sp_penalty(0.2f, w, NULL, 2), 0.5, 1e-8);
    assert_true(graft__l2sp_penalty(0.2f, w, NULL, 0) == 0.0);
}

static void l2sp_gradient_is_penalty_derivative(void **state)
{
    /* d/dw_i of (a / 2) ||w - w0||^2 by central differences, with odd lengths to
     * cover the 8-lane tail */
    float w[11], w0[11], g[11] = {0};
    for (int i = 0; i < 11; i++) {
        w[i] = (float)(i - 5) * 0.37f;
        w0[i] = (float)(i % 3) * 0.5f;
    }
    const float a = 0.3f;
    graft__l2sp_grad(a, w, w0, g, 0, 11);
    for (int i = 0; i < 11; i++) {
        /* the penalty is quadratic, so the difference is exact up to rounding;
         * dividing by the perturbation float actually applied keeps it so */
        float saved = w[i];
        w[i] = saved + 0.125f;
        const double wp = w[i], p = graft__l2sp_penalty(a, w, w0, 11);
        w[i] = saved - 0.125f;
        const double wm = w[i], m = graft__l2sp_penalty(a, w, w0, 11);
        w[i] = saved;
        assert_close(g[i], (p - m) / (wp - wm), 1e-6);
    }
}

/* ---- clipping ------------------------------------------------------------ */

static void clip_known_vector(void **state)
{
    float x[2] = {3.0f, 4.0f};
    float *arrays[1] = {x};
    const int64_t counts[1] = {2};
    double norm = 0;
    /* norm 5; scale 1 / (5 + 1e-6) */
    assert_int_equal(graft__clip_global_norm(1, arrays, counts, 1.0, &norm), GRAFT_OK);
    assert_close(norm, 5.0, 1e-12);
    assert_close(x[0], 0.6, 1e-6);
    assert_close(x[1], 0.8, 1e-6);
    assert_close(graft__clip_scale(5.0, 1.0), 1.0 / (5.0 + 1e-6), 1e-15);
    assert_true(graft__clip_scale(5.0, 10.0) == 1.0);
}

static void clip_across_arrays(void **state)
{
    /* [3] and [4] in two arrays, with an empty one between: one global norm of 5 */
    float a[1] = {3.0f}, b[1] = {4.0f}, empty[1] = {99.0f};
    float *arrays[3] = {a, empty, b};
    const int64_t counts[3] = {1, 0, 1};
    double norm;
    assert_close(graft__global_norm(3, (const float *const *)arrays, counts), 5.0, 1e-12);
    assert_int_equal(graft__clip_global_norm(3, arrays, counts, 2.5, &norm), GRAFT_OK);
    assert_close(a[0], 1.5, 1e-6);
    assert_close(b[0], 2.0, 1e-6);
    assert_true(empty[0] == 99.0f);
    /* under the limit: left exactly as it was */
    assert_int_equal(graft__clip_global_norm(3, arrays, counts, 100.0, NULL), GRAFT_OK);
    assert_close(a[0], 1.5, 1e-6);
}

static void clip_rejects_non_finite(void **state)
{
    float x[2] = {INFINITY, 1.0f};
    float *arrays[1] = {x};
    const int64_t counts[1] = {2};
    double norm = 0;
    assert_int_equal(graft__clip_global_norm(1, arrays, counts, 1.0, &norm),
                     GRAFT_E_INVALID_ARG);
    assert_true(isinf(norm));
    assert_true(x[1] == 1.0f); /* untouched */
    float y[1] = {3.0f};
    float *ys[1] = {y};
    const int64_t one[1] = {1}, neg[1] = {-1};
    assert_int_equal(graft__clip_global_norm(1, ys, one, 0.0, NULL), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__clip_global_norm(1, ys, one, NAN, NULL), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__clip_global_norm(1, ys, neg, 1.0, NULL), GRAFT_E_INVALID_ARG);
}

/* More than BLOCK * CHUNK (64 * 32768) elements, so both the chunking and the
 * blocking run: the sum must agree with a plain double sum and have the same
 * bits with 1 and 2 threads. */
static void sum_squares_deterministic(void **state)
{
    const int64_t n = 64 * 32768 + 12345;
    float *x = malloc(sizeof(float) * (size_t)n);
    double naive = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float)sin((double)i * 0.001) * 0.01f;
        naive += (double)x[i] * (double)x[i];
    }
    graft_set_threads(1);
    double one = graft__sum_squares(x, n);
    double pen1 = graft__l2sp_penalty(2.0f, x, NULL, n);
    graft_set_threads(2);
    double two = graft__sum_squares(x, n);
    double pen2 = graft__l2sp_penalty(2.0f, x, NULL, n);
    graft_set_threads(0);
    assert_memory_equal(&one, &two, sizeof one);
    assert_memory_equal(&pen1, &pen2, sizeof pen1);
    assert_close(one, naive, 1e-12 * naive);
    assert_close(pen1, naive, 1e-12 * naive);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sgd_plain),
        cmocka_unit_test(sgd_weight_decay),
        cmocka_unit_test(sgd_momentum),
        cmocka_unit_test(sgd_nesterov),
        cmocka_unit_test(sgd_momentum_weight_decay),
        cmocka_unit_test(sgd_range_only),
        cmocka_unit_test(sgd_check_rejects),
        cmocka_unit_test(adam_steps),
        cmocka_unit_test(adam_coupled_l2),
        cmocka_unit_test(adamw_decoupled),
        cmocka_unit_test(adam_eps_after_bias_correction),
        cmocka_unit_test(adam_check_rejects),
        cmocka_unit_test(parallel_steps_match_serial),
        cmocka_unit_test(l2sp_grad_and_penalty),
        cmocka_unit_test(l2sp_gradient_is_penalty_derivative),
        cmocka_unit_test(clip_known_vector),
        cmocka_unit_test(clip_across_arrays),
        cmocka_unit_test(clip_rejects_non_finite),
        cmocka_unit_test(sum_squares_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
