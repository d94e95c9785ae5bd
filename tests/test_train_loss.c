/* Losses: values against hand-computed numbers, gradients against central finite
 * differences, extreme logits, argument checks.
 *
 * Constants came from this stdlib-only python3 script:
 *
 *   import math
 *   def lse(x):
 *       m = max(x); return m + math.log(sum(math.exp(v - m) for v in x))
 *   def xent(x, l, eps=0.0):
 *       C = len(x); t = [eps / C + (1 - eps if j == l else 0) for j in range(C)]
 *       L = lse(x); return sum(t[j] * (L - x[j]) for j in range(C))
 *   def sm(x):
 *       L = lse(x); return [math.exp(v - L) for v in x]
 *   xent([1,2,3], 2)                                   # 0.4076059644443806
 *   xent([1,2,3], 2, 0.1)                              # 0.5076059644443806
 *   sm([1,2,3])                  # 0.09003057317038043 0.24472847105479759 0.6652409557748217
 *   (2 * xent([1,2,3], 2) + 0.5 * xent([0,0,0], 0)) / 2  # 0.6822590366114081
 *   def bce(x, y): return max(x, 0) - x * y + math.log1p(math.exp(-abs(x)))
 *   xs = [0, 2, -1, 3]; ts = [1, 0, 0.5, 1]
 *   sum(bce(a, b) for a, b in zip(xs, ts)) / 4                 # 0.9204810576737208
 *   sum(bce(a, b * 0.8 + 0.1) for a, b in zip(xs, ts)) / 4     # 0.9454810576737207
 *   sig = lambda x: 1 / (1 + math.exp(-x))
 *   [(sig(a) - b) / 4 for a, b in zip(xs, ts)]
 *       # -0.125 0.22019926949447058 -0.057764644657501224 -0.011856468294391659
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "train/loss.h"

static void assert_close(double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("got %.10g, want %.10g (tolerance %g)", got, want, tol);
}

/* Deterministic uniform values in [lo, hi): a 64-bit LCG's top bits. */
static float uniform(uint64_t *state, float lo, float hi)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (float)((*state >> 40) * (1.0 / 16777216.0));
}

/* ---- softmax cross-entropy ------------------------------------------------ */

static void xent_hand_value(void **state)
{
    const float logits[3] = {1, 2, 3};
    const int32_t label[1] = {2};
    float probs[3], grad[3];
    double loss = -1;
    assert_int_equal(graft__softmax_xent(logits, label, 1, 3, 0.0f, NULL, &loss, probs, grad),
                     GRAFT_OK);
    /* log(e^1 + e^2 + e^3) - 3 */
    assert_close(loss, 0.4076059644443806, 1e-12);
    assert_close(probs[0], 0.09003057317038043, 1e-7);
    assert_close(probs[1], 0.24472847105479759, 1e-7);
    assert_close(probs[2], 0.6652409557748217, 1e-7);
    /* d/dx = p - onehot, batch 1 */
    assert_close(grad[0], 0.09003057317038043, 1e-7);
    assert_close(grad[1], 0.24472847105479759, 1e-7);
    assert_close(grad[2], 0.6652409557748217 - 1.0, 1e-7);
    /* probs and grad are optional */
    assert_int_equal(graft__softmax_xent(logits, label, 1, 3, 0.0f, NULL, &loss, NULL, NULL),
                     GRAFT_OK);
    assert_close(loss, 0.4076059644443806, 1e-12);
}

static void xent_label_smoothing(void **state)
{
    const float logits[3] = {1, 2, 3};
    const int32_t label[1] = {2};
    float grad[3];
    double loss;
    /* targets [0.1/3, 0.1/3, 0.9 + 0.1/3]: loss = lse - (0.1/3 * (1 + 2 + 3) + 0.9 * 3)
     * = 3.40760596 - 2.9. The tolerance absorbs 0.1f != 0.1 (1.5e-9 * 3). */
    assert_int_equal(graft__softmax_xent(logits, label, 1, 3, 0.1f, NULL, &loss, NULL, grad),
                     GRAFT_OK);
    assert_close(loss, 0.5076059644443806, 1e-8);
    assert_close(grad[0], 0.09003057317038043 - 0.1 / 3, 1e-7);
    assert_close(grad[1], 0.24472847105479759 - 0.1 / 3, 1e-7);
    assert_close(grad[2], 0.6652409557748217 - (0.9 + 0.1 / 3), 1e-7);
    /* eps = 1 makes the target uniform whatever the label */
    assert_int_equal(graft__softmax_xent(logits, label, 1, 3, 1.0f, NULL, &loss, NULL, NULL),
                     GRAFT_OK);
    assert_close(loss, 3.4076059644443806 - 2.0, 1e-12);
}

static void xent_class_weights(void **state)
{
    const float logits[6] = {1, 2, 3, 0, 0, 0};
    const int32_t labels[2] = {2, 0};
    const float weights[3] = {0.5f, 1.0f, 2.0f};
    float grad[6];
    double loss;
    /* (2 * 0.40760596 + 0.5 * log 3) / 2: Keras divides by the batch, not by the
     * sum of the weights. */
    assert_int_equal(graft__softmax_xent(logits, labels, 2, 3, 0.0f, weights, &loss, NULL, grad),
                     GRAFT_OK);
    assert_close(loss, 0.6822590366114081, 1e-12);
    /* row 0: 2 * (p - onehot) / 2; row 1: 0.5 * ([1/3, 1/3, 1/3] - [1, 0, 0]) / 2 */
    assert_close(grad[0], 0.09003057317038043, 1e-7);
    assert_close(grad[2], 0.6652409557748217 - 1.0, 1e-7);
    assert_close(grad[3], 0.25 * (1.0 / 3 - 1.0), 1e-7);
    assert_close(grad[4], 0.25 / 3, 1e-7);
}

/* Central differences of the double loss; the perturbation actually applied is
 * read back from the float values, so rounding x +- h to float costs nothing. */
static void check_xent_gradient(int64_t batch, int64_t classes, float smoothing,
                                const float *weights, uint64_t seed)
{
    float x[64], grad[64];
    int32_t labels[8];
    uint64_t rng = seed;
    assert_true(batch * classes <= 64 && batch <= 8);
    for (int64_t i = 0; i < batch * classes; i++)
        x[i] = uniform(&rng, -3.0f, 3.0f);
    for (int64_t i = 0; i < batch; i++)
        labels[i] = (int32_t)(uniform(&rng, 0.0f, 1.0f) * (float)classes) % (int32_t)classes;
    double loss;
    assert_int_equal(graft__softmax_xent(x, labels, batch, classes, smoothing, weights, &loss,
                                         NULL, grad), GRAFT_OK);
    const double h = 1.0 / 1024;
    for (int64_t i = 0; i < batch * classes; i++) {
        const float saved = x[i];
        double lp, lm;
        x[i] = (float)(saved + h);
        const double xp = x[i];
        assert_int_equal(graft__softmax_xent(x, labels, batch, classes, smoothing, weights, &lp,
                                             NULL, NULL), GRAFT_OK);
        x[i] = (float)(saved - h);
        const double xm = x[i];
        assert_int_equal(graft__softmax_xent(x, labels, batch, classes, smoothing, weights, &lm,
                                             NULL, NULL), GRAFT_OK);
        x[i] = saved;
        const double fd = (lp - lm) / (xp - xm);
        /* relative 1e-3, with an absolute floor for gradients near zero */
        assert_close(grad[i], fd, 1e-3 * fabs(fd) + 1e-6);
    }
}

static void xent_gradient_matches_finite_differences(void **state)
{
    const float weights[5] = {1.0f, 0.25f, 3.0f, 0.0f, 1.5f};
    check_xent_gradient(1, 3, 0.0f, NULL, 1);
    check_xent_gradient(4, 5, 0.0f, NULL, 2);
    check_xent_gradient(4, 5, 0.1f, NULL, 3);
    check_xent_gradient(6, 5, 0.2f, weights, 4);
    check_xent_gradient(8, 2, 0.0f, NULL, 5);
}

static void xent_extreme_logits(void **state)
{
    const float logits[6] = {1e4f, -1e4f, 0.0f, -1e4f, -1e4f, -1e4f};
    const int32_t labels[2] = {1, 2};
    float probs[6], grad[6];
    double loss;
    assert_int_equal(graft__softmax_xent(logits, labels, 2, 3, 0.0f, NULL, &loss, probs, grad),
                     GRAFT_OK);
    /* row 0: lse = 1e4, loss = 1e4 - (-1e4) = 2e4; row 1: all equal, loss log 3 */
    assert_true(isfinite(loss));
    assert_close(loss, (2e4 + log(3.0)) / 2, 1e-9);
    for (int i = 0; i < 6; i++) {
        assert_true(isfinite(probs[i]));
        assert_true(isfinite(grad[i]));
    }
    assert_close(grad[0], 0.5, 1e-7);
    assert_close(grad[1], -0.5, 1e-7);
    assert_close(grad[2], 0.0, 1e-7);
    assert_close(grad[5], 0.5 * (1.0 / 3 - 1.0), 1e-7);
    /* smoothing with a hopeless label stays finite too */
    assert_int_equal(graft__softmax_xent(logits, labels, 2, 3, 0.1f, NULL, &loss, probs, grad),
                     GRAFT_OK);
    assert_true(isfinite(loss));
    for (int i = 0; i < 6; i++)
        assert_true(isfinite(grad[i]));
}

static void xent_rows_kernel_sums(void **state)
{
    /* the unchecked kernel over a sub-range returns the sum and touches only its rows */
    const float logits[6] = {1, 2, 3, 0, 0, 0};
    const int32_t labels[2] = {2, 0};
    float grad[6] = {7, 7, 7, 7, 7, 7};
    double sum = graft__softmax_xent_rows(logits, labels, 3, 0.0f, NULL, 1.0, NULL, grad, 1, 2);
    assert_close(sum, log(3.0), 1e-12);
    assert_true(grad[0] == 7.0f && grad[1] == 7.0f && grad[2] == 7.0f);
    assert_close(grad[3], 1.0 / 3 - 1.0, 1e-7);
}

static void xent_rejects_bad_arguments(void **state)
{
    const float logits[3] = {1, 2, 3};
    float grad[3] = {5, 5, 5};
    double loss = 42;
    const int32_t bad_label[1] = {3}, neg_label[1] = {-1}, ok_label[1] = {0};
    assert_int_equal(graft__softmax_xent(logits, bad_label, 1, 3, 0.0f, NULL, &loss, NULL, grad),
                     GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "label 3"));
    assert_int_equal(graft__softmax_xent(logits, neg_label, 1, 3, 0.0f, NULL, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__softmax_xent(logits, ok_label, 1, 3, -0.1f, NULL, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__softmax_xent(logits, ok_label, 1, 3, NAN, NULL, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__softmax_xent(logits, ok_label, 0, 3, 0.0f, NULL, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    const float nan_weights[3] = {1, NAN, 1}, neg_weights[3] = {1, -1, 1};
    assert_int_equal(graft__softmax_xent(logits, ok_label, 1, 3, 0.0f, nan_weights, &loss, NULL,
                                         NULL), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__softmax_xent(logits, ok_label, 1, 3, 0.0f, neg_weights, &loss, NULL,
                                         NULL), GRAFT_E_INVALID_ARG);
    /* nothing written on failure */
    assert_true(loss == 42.0);
    assert_true(grad[0] == 5.0f);
}

static void top1_counts(void **state)
{
    const float scores[12] = {
        0.1f, 0.7f, 0.2f, /* argmax 1 */
        5.0f, 5.0f, 1.0f, /* tie: argmax 0 */
        -3.0f, -2.0f, -1.0f, /* argmax 2 */
        0.0f, 0.0f, 0.0f, /* all equal: argmax 0 */
    };
    const int32_t labels[4] = {1, 1, 2, 0};
    assert_int_equal(graft__count_top1(scores, labels, 4, 3), 3);
    const int32_t out_of_range[4] = {7, -1, 3, 0};
    assert_int_equal(graft__count_top1(scores, out_of_range, 4, 3), 1);
}

/* ---- mixed labels (mixup, cutmix) ----------------------------------------- */

/* The documented mixed loss written out naively: log-softmax, the smoothed
 * one-hot targets of both labels, each term times lambda or 1 - lambda and its
 * own label's class weight, summed and divided by the batch. */
static double naive_mixed_loss(const float *x, const int32_t *a, const int32_t *b,
                               const float *lambda, int64_t batch, int64_t classes, double eps,
                               const float *weights)
{
    double total = 0.0;
    for (int64_t r = 0; r < batch; r++) {
        const float *row = x + r * classes;
        double sum = 0.0;
        for (int64_t j = 0; j < classes; j++)
            sum += exp((double)row[j]);
        const double lse = log(sum);
        double ce_a = 0.0, ce_b = 0.0;
        for (int64_t j = 0; j < classes; j++) {
            const double logp = (double)row[j] - lse;
            ce_a -= (eps / (double)classes + (j == a[r] ? 1.0 - eps : 0.0)) * logp;
            ce_b -= (eps / (double)classes + (j == b[r] ? 1.0 - eps : 0.0)) * logp;
        }
        const double wa = weights ? weights[a[r]] : 1.0, wb = weights ? weights[b[r]] : 1.0;
        total += (double)lambda[r] * wa * ce_a + (1.0 - (double)lambda[r]) * wb * ce_b;
    }
    return total / (double)batch;
}

static void mixed_case(uint64_t seed, int64_t batch, int64_t classes, float *x, int32_t *a,
                       int32_t *b, float *lambda)
{
    uint64_t rng = seed;
    for (int64_t i = 0; i < batch * classes; i++)
        x[i] = uniform(&rng, -3.0f, 3.0f);
    for (int64_t i = 0; i < batch; i++) {
        a[i] = (int32_t)(uniform(&rng, 0.0f, 1.0f) * (float)classes) % (int32_t)classes;
        b[i] = (int32_t)(uniform(&rng, 0.0f, 1.0f) * (float)classes) % (int32_t)classes;
        lambda[i] = uniform(&rng, 0.0f, 1.0f);
    }
    lambda[0] = 1.0f; /* the ends of the range */
    if (batch > 1)
        lambda[1] = 0.0f;
    if (batch > 2)
        b[2] = a[2]; /* a sample mixed with its own class */
}

static void mixed_xent_matches_naive_loss_and_finite_differences(void **state)
{
    const float weights[5] = {1.0f, 0.25f, 3.0f, 0.0f, 1.5f};
    const struct {
        int64_t batch, classes;
        float eps;
        const float *weights;
    } cases[] = {{1, 3, 0.0f, NULL}, {4, 5, 0.0f, NULL}, {6, 5, 0.1f, NULL},
                 {8, 5, 0.2f, weights}, {5, 2, 0.0f, NULL}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const int64_t batch = cases[k].batch, classes = cases[k].classes;
        float x[64], grad[64], probs[64], lambda[8];
        int32_t a[8], b[8];
        mixed_case(100 + k, batch, classes, x, a, b, lambda);
        double loss;
        assert_int_equal(graft__softmax_xent_mixed(x, a, b, lambda, batch, classes, cases[k].eps,
                                                   cases[k].weights, &loss, probs, grad),
                         GRAFT_OK);
        const double want = naive_mixed_loss(x, a, b, lambda, batch, classes, cases[k].eps,
                                             cases[k].weights);
        assert_close(loss, want, 1e-12 * fabs(want) + 1e-12);
        for (int64_t r = 0; r < batch; r++) {
            double sum = 0.0;
            for (int64_t j = 0; j < classes; j++)
                sum += probs[r * classes + j];
            assert_close(sum, 1.0, 1e-6);
        }
        /* central differences of the naive loss, at the float points actually used */
        const double h = 1.0 / 1024;
        for (int64_t i = 0; i < batch * classes; i++) {
            const float saved = x[i];
            x[i] = (float)(saved + h);
            const double xp = x[i], lp = naive_mixed_loss(x, a, b, lambda, batch, classes,
                                                          cases[k].eps, cases[k].weights);
            x[i] = (float)(saved - h);
            const double xm = x[i], lm = naive_mixed_loss(x, a, b, lambda, batch, classes,
                                                          cases[k].eps, cases[k].weights);
            x[i] = saved;
            const double fd = (lp - lm) / (xp - xm);
            assert_close(grad[i], fd, 1e-3 * fabs(fd) + 1e-6);
        }
    }
}

static void mixed_xent_reduces_to_plain_one_label(void **state)
{
    /* lambda 1, or both labels equal: the plain loss and gradient (class weights
     * and smoothing included) */
    float x[40], lambda[8], g_mixed[40], g_plain[40];
    int32_t a[8], b[8];
    const float weights[5] = {0.5f, 2.0f, 1.0f, 3.0f, 0.25f};
    mixed_case(7, 8, 5, x, a, b, lambda);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < 8; i++) {
            if (pass == 0)
                lambda[i] = 1.0f;
            else
                b[i] = a[i];
        }
        double mixed, plain;
        assert_int_equal(graft__softmax_xent_mixed(x, a, b, lambda, 8, 5, 0.1f, weights, &mixed,
                                                   NULL, g_mixed), GRAFT_OK);
        assert_int_equal(graft__softmax_xent(x, a, 8, 5, 0.1f, weights, &plain, NULL, g_plain),
                         GRAFT_OK);
        assert_close(mixed, plain, 1e-12);
        for (int i = 0; i < 40; i++)
            assert_close(g_mixed[i], g_plain[i], 1e-7);
    }
    /* lambda 0 is the plain loss of the second label */
    mixed_case(8, 8, 5, x, a, b, lambda);
    for (int i = 0; i < 8; i++)
        lambda[i] = 0.0f;
    double mixed, plain;
    assert_int_equal(graft__softmax_xent_mixed(x, a, b, lambda, 8, 5, 0.0f, NULL, &mixed, NULL,
                                               NULL), GRAFT_OK);
    assert_int_equal(graft__softmax_xent(x, b, 8, 5, 0.0f, NULL, &plain, NULL, NULL), GRAFT_OK);
    assert_close(mixed, plain, 1e-12);
}

static void mixed_xent_hand_value(void **state)
{
    /* logits [1, 2, 3], 0.25 of label 0 and 0.75 of label 2:
     * 0.25 * (lse - 1) + 0.75 * (lse - 3), lse = 3.40760596444438 */
    const float logits[3] = {1, 2, 3}, lambda[1] = {0.25f};
    const int32_t a[1] = {0}, b[1] = {2};
    float grad[3];
    double loss;
    assert_int_equal(graft__softmax_xent_mixed(logits, a, b, lambda, 1, 3, 0.0f, NULL, &loss,
                                               NULL, grad), GRAFT_OK);
    assert_close(loss, 0.25 * 2.4076059644443806 + 0.75 * 0.4076059644443806, 1e-12);
    /* p - (0.25 onehot(0) + 0.75 onehot(2)) */
    assert_close(grad[0], 0.09003057317038043 - 0.25, 1e-7);
    assert_close(grad[1], 0.24472847105479759, 1e-7);
    assert_close(grad[2], 0.6652409557748217 - 0.75, 1e-7);
}

static void mixed_xent_rejects_bad_arguments(void **state)
{
    const float logits[3] = {1, 2, 3};
    float grad[3] = {5, 5, 5};
    double loss = 42;
    const int32_t ok[1] = {0}, bad[1] = {3};
    const float half[1] = {0.5f}, above[1] = {1.5f}, below[1] = {-0.1f}, nan[1] = {NAN};
    assert_int_equal(graft__softmax_xent_mixed(logits, ok, bad, half, 1, 3, 0.0f, NULL, &loss,
                                               NULL, grad), GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "label 3"));
    assert_int_equal(graft__softmax_xent_mixed(logits, bad, ok, half, 1, 3, 0.0f, NULL, &loss,
                                               NULL, grad), GRAFT_E_INVALID_ARG);
    const float *bad_lambdas[3] = {above, below, nan};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(graft__softmax_xent_mixed(logits, ok, ok, bad_lambdas[i], 1, 3, 0.0f,
                                                   NULL, &loss, NULL, grad),
                         GRAFT_E_INVALID_ARG);
        assert_non_null(strstr(graft_last_error(), "lambda"));
    }
    const float neg_weights[3] = {1, -1, 1};
    assert_int_equal(graft__softmax_xent_mixed(logits, ok, ok, half, 1, 3, 0.0f, neg_weights,
                                               &loss, NULL, grad), GRAFT_E_INVALID_ARG);
    assert_true(loss == 42.0);
    assert_true(grad[0] == 5.0f);
}

/* ---- sigmoid binary cross-entropy ----------------------------------------- */

static void bce_hand_value(void **state)
{
    const float logits[4] = {0, 2, -1, 3};
    const float targets[4] = {1, 0, 0.5f, 1};
    float probs[4], grad[4];
    double loss;
    /* elements: log 2; 2 + log1p(e^-2); 0.5 + log1p(e^-1); log1p(e^-3); mean of 4 */
    assert_int_equal(graft__sigmoid_bce(logits, targets, 2, 2, 0.0f, &loss, probs, grad),
                     GRAFT_OK);
    assert_close(loss, 0.9204810576737208, 1e-12);
    assert_close(probs[0], 0.5, 1e-7);
    assert_close(probs[2], 1.0 / (1.0 + exp(1.0)), 1e-7);
    assert_close(grad[0], -0.125, 1e-8);
    assert_close(grad[1], 0.22019926949447058, 1e-8);
    assert_close(grad[2], -0.057764644657501224, 1e-8);
    assert_close(grad[3], -0.011856468294391659, 1e-8);
}

static void bce_label_smoothing(void **state)
{
    const float logits[4] = {0, 2, -1, 3};
    const float targets[4] = {1, 0, 0.5f, 1};
    float grad[4];
    double loss;
    /* y = t * 0.8 + 0.1 = [0.9, 0.1, 0.5, 0.9]; the tolerance absorbs 0.2f != 0.2 */
    assert_int_equal(graft__sigmoid_bce(logits, targets, 1, 4, 0.2f, &loss, NULL, grad),
                     GRAFT_OK);
    assert_close(loss, 0.9454810576737207, 1e-8);
    assert_close(grad[0], (0.5 - 0.9) / 4, 1e-7);
}

static void check_bce_gradient(int64_t batch, int64_t classes, float smoothing, uint64_t seed)
{
    float x[64], t[64], grad[64];
    uint64_t rng = seed;
    assert_true(batch * classes <= 64);
    for (int64_t i = 0; i < batch * classes; i++) {
        x[i] = uniform(&rng, -4.0f, 4.0f);
        /* a mix of hard 0/1 and soft targets */
        t[i] = i % 3 == 0 ? uniform(&rng, 0.0f, 1.0f) : (float)(i % 2);
    }
    double loss;
    assert_int_equal(graft__sigmoid_bce(x, t, batch, classes, smoothing, &loss, NULL, grad),
                     GRAFT_OK);
    const double h = 1.0 / 1024;
    for (int64_t i = 0; i < batch * classes; i++) {
        const float saved = x[i];
        double lp, lm;
        x[i] = (float)(saved + h);
        const double xp = x[i];
        assert_int_equal(graft__sigmoid_bce(x, t, batch, classes, smoothing, &lp, NULL, NULL),
                         GRAFT_OK);
        x[i] = (float)(saved - h);
        const double xm = x[i];
        assert_int_equal(graft__sigmoid_bce(x, t, batch, classes, smoothing, &lm, NULL, NULL),
                         GRAFT_OK);
        x[i] = saved;
        const double fd = (lp - lm) / (xp - xm);
        assert_close(grad[i], fd, 1e-3 * fabs(fd) + 1e-6);
    }
}

static void bce_gradient_matches_finite_differences(void **state)
{
    check_bce_gradient(1, 1, 0.0f, 11);
    check_bce_gradient(3, 4, 0.0f, 12);
    check_bce_gradient(4, 7, 0.1f, 13);
    check_bce_gradient(8, 8, 0.3f, 14);
}

static void bce_extreme_logits(void **state)
{
    const float logits[4] = {1e4f, -1e4f, 1e4f, -1e4f};
    const float targets[4] = {0, 1, 1, 0};
    float probs[4], grad[4];
    double loss;
    /* wrong-way elements cost |x| each, right-way ones ~0: (1e4 + 1e4) / 4 */
    assert_int_equal(graft__sigmoid_bce(logits, targets, 2, 2, 0.0f, &loss, probs, grad),
                     GRAFT_OK);
    assert_close(loss, 5e3, 1e-9);
    assert_close(grad[0], 0.25, 1e-7);
    assert_close(grad[1], -0.25, 1e-7);
    assert_close(grad[2], 0.0, 1e-7);
    assert_close(grad[3], 0.0, 1e-7);
    for (int i = 0; i < 4; i++)
        assert_true(isfinite(probs[i]) && probs[i] >= 0.0f && probs[i] <= 1.0f);
}

static void bce_rejects_bad_arguments(void **state)
{
    const float logits[2] = {0, 0};
    const float bad[2] = {0, 1.5f}, nan_t[2] = {NAN, 0}, ok[2] = {0, 1};
    double loss = 42;
    assert_int_equal(graft__sigmoid_bce(logits, bad, 1, 2, 0.0f, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "class 1"));
    assert_int_equal(graft__sigmoid_bce(logits, nan_t, 1, 2, 0.0f, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__sigmoid_bce(logits, ok, 1, 2, 1.5f, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__sigmoid_bce(logits, ok, 1, 0, 0.0f, &loss, NULL, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_true(loss == 42.0);
}

static void binary_correct_counts(void **state)
{
    const float logits[5] = {2.0f, -1.0f, 0.0f, 0.5f, -0.5f};
    const float targets[5] = {1.0f, 0.0f, 1.0f, 0.0f, 0.5f};
    /* preds 1,0,0,1,0 against targets 1,0,1,0,0 (0.5 is not > 0.5) */
    assert_int_equal(graft__count_binary_correct(logits, targets, 5), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(xent_hand_value),
        cmocka_unit_test(xent_label_smoothing),
        cmocka_unit_test(xent_class_weights),
        cmocka_unit_test(xent_gradient_matches_finite_differences),
        cmocka_unit_test(xent_extreme_logits),
        cmocka_unit_test(xent_rows_kernel_sums),
        cmocka_unit_test(xent_rejects_bad_arguments),
        cmocka_unit_test(top1_counts),
        cmocka_unit_test(mixed_xent_matches_naive_loss_and_finite_differences),
        cmocka_unit_test(mixed_xent_reduces_to_plain_one_label),
        cmocka_unit_test(mixed_xent_hand_value),
        cmocka_unit_test(mixed_xent_rejects_bad_arguments),
        cmocka_unit_test(bce_hand_value),
        cmocka_unit_test(bce_label_smoothing),
        cmocka_unit_test(bce_gradient_matches_finite_differences),
        cmocka_unit_test(bce_extreme_logits),
        cmocka_unit_test(bce_rejects_bad_arguments),
        cmocka_unit_test(binary_correct_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
