#include "train/loss.h"

#include <inttypes.h>
#include <math.h>

#include "core/alloc.h"
#include "core/error.h"

/* The losses are not parallelised: (batch, classes) is tiny next to the layer
 * below it, and a serial sum keeps the reported loss independent of the thread
 * count without any chunking machinery. */

/* A row's log-sum-exp pieces, shifted by the row maximum m: every exponent is
 * <= 0, so the sum lies in [1, classes] and its log neither overflows nor loses
 * the large logit. */
typedef struct row_stats {
    float m;
    double log_s, sum_z, inv_s;
} row_stats;

static row_stats row_stats_of(const float *x, int64_t classes)
{
    row_stats s;
    s.m = x[0];
    for (int64_t j = 1; j < classes; j++)
        if (x[j] > s.m)
            s.m = x[j];
    double sum_exp = 0.0;
    s.sum_z = 0.0;
    for (int64_t j = 0; j < classes; j++) {
        double z = (double)x[j] - (double)s.m;
        sum_exp += exp(z);
        s.sum_z += z;
    }
    s.log_s = log(sum_exp);
    s.inv_s = 1.0 / sum_exp;
    return s;
}

/* Smoothed cross-entropy of one row against `label`: loss = -sum_j t_j log p_j =
 * log_s - sum_j t_j z_j, as the targets sum to 1; with smoothing
 * sum_j t_j z_j = (1 - eps) z_label + (eps / classes) sum_j z_j. */
static double row_xent(const float *x, const row_stats *s, int32_t label, double eps, double off)
{
    const double z_label = (double)x[label] - (double)s->m;
    return s->log_s - ((1.0 - eps) * z_label + off * s->sum_z);
}

double graft__softmax_xent_rows(const float *logits, const int32_t *labels, int64_t classes,
                                float smoothing, const float *class_weights, double grad_scale,
                                float *probs, float *grad, int64_t row_start, int64_t row_end)
{
    const double eps = smoothing;
    const double off = eps / (double)classes;   /* smoothed target of a wrong class */
    const double on = 1.0 - eps + off;          /* smoothed target of the label */
    double total = 0.0;
    for (int64_t r = row_start; r < row_end; r++) {
        const float *x = logits + r * classes;
        const int32_t label = labels[r];
        const row_stats s = row_stats_of(x, classes);
        const double w = class_weights ? (double)class_weights[label] : 1.0;
        total += w * row_xent(x, &s, label, eps, off);
        if (!probs && !grad)
            continue;
        const double g_scale = grad_scale * w;
        float *p_row = probs ? probs + r * classes : NULL;
        float *g_row = grad ? grad + r * classes : NULL;
        for (int64_t j = 0; j < classes; j++) {
            double p = exp((double)x[j] - (double)s.m) * s.inv_s;
            if (p_row)
                p_row[j] = (float)p;
            if (g_row)
                g_row[j] = (float)(g_scale * (p - (j == label ? on : off)));
        }
    }
    return total;
}

double graft__softmax_xent_mixed_rows(const float *logits, const int32_t *labels_a,
                                      const int32_t *labels_b, const float *lambda,
                                      int64_t classes, float smoothing,
                                      const float *class_weights, double grad_scale, float *probs,
                                      float *grad, int64_t row_start, int64_t row_end)
{
    const double eps = smoothing;
    const double off = eps / (double)classes;
    double total = 0.0;
    for (int64_t r = row_start; r < row_end; r++) {
        const float *x = logits + r * classes;
        const int32_t a = labels_a[r], b = labels_b[r];
        const row_stats s = row_stats_of(x, classes);
        /* Each term carries its own label's class weight. */
        const double wa = (double)lambda[r] * (class_weights ? (double)class_weights[a] : 1.0);
        const double wb = (1.0 - (double)lambda[r]) *
                          (class_weights ? (double)class_weights[b] : 1.0);
        total += wa * row_xent(x, &s, a, eps, off) + wb * row_xent(x, &s, b, eps, off);
        if (!probs && !grad)
            continue;
        /* d/dz_j of wa CE(a) + wb CE(b) = (wa + wb) p_j - wa t^a_j - wb t^b_j, with
         * t^l_j = off + (1 - eps) [j == l]. */
        float *p_row = probs ? probs + r * classes : NULL;
        float *g_row = grad ? grad + r * classes : NULL;
        for (int64_t j = 0; j < classes; j++) {
            double p = exp((double)x[j] - (double)s.m) * s.inv_s;
            if (p_row)
                p_row[j] = (float)p;
            if (g_row) {
                double hard = (j == a ? wa : 0.0) + (j == b ? wb : 0.0);
                g_row[j] = (float)(grad_scale * ((wa + wb) * (p - off) - (1.0 - eps) * hard));
            }
        }
    }
    return total;
}

static graft_status check_sizes(const char *what, int64_t batch, int64_t classes,
                                float smoothing)
{
    int64_t total;
    if (batch < 1 || classes < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: batch %" PRId64 " and classes %" PRId64
                           " must both be at least 1", what, batch, classes);
    if (!graft__mul_i64(batch, classes, &total))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: batch %" PRId64 " x classes %" PRId64
                           " overflows", what, batch, classes);
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: label smoothing %g is outside [0, 1]",
                           what, (double)smoothing);
    return GRAFT_OK;
}

static graft_status check_labels(const char *what, const int32_t *labels, int64_t batch,
                                 int64_t classes)
{
    for (int64_t i = 0; i < batch; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return graft__fail(GRAFT_E_INVALID_ARG, "%s: label %" PRId32 " of sample %" PRId64
                               " is outside [0, %" PRId64 ")", what, labels[i], i, classes);
    return GRAFT_OK;
}

static graft_status check_class_weights(const char *what, const float *class_weights,
                                        int64_t classes)
{
    if (class_weights)
        for (int64_t j = 0; j < classes; j++)
            if (!(class_weights[j] >= 0.0f && isfinite(class_weights[j])))
                return graft__fail(GRAFT_E_INVALID_ARG, "%s: class weight %" PRId64 " is %g; "
                                   "weights must be finite and >= 0", what, j,
                                   (double)class_weights[j]);
    return GRAFT_OK;
}

graft_status graft__softmax_xent(const float *logits, const int32_t *labels, int64_t batch,
                                 int64_t classes, float smoothing, const float *class_weights,
                                 double *loss, float *probs, float *grad)
{
    static const char what[] = "softmax cross-entropy";
    graft_status rc = check_sizes(what, batch, classes, smoothing);
    if (!rc)
        rc = check_labels(what, labels, batch, classes);
    if (!rc)
        rc = check_class_weights(what, class_weights, classes);
    if (rc != GRAFT_OK)
        return rc;
    const double inv_batch = 1.0 / (double)batch;
    double sum = graft__softmax_xent_rows(logits, labels, classes, smoothing, class_weights,
                                          inv_batch, probs, grad, 0, batch);
    *loss = sum * inv_batch;
    return GRAFT_OK;
}

graft_status graft__softmax_xent_mixed(const float *logits, const int32_t *labels_a,
                                       const int32_t *labels_b, const float *lambda,
                                       int64_t batch, int64_t classes, float smoothing,
                                       const float *class_weights, double *loss, float *probs,
                                       float *grad)
{
    static const char what[] = "mixed softmax cross-entropy";
    graft_status rc = check_sizes(what, batch, classes, smoothing);
    if (!rc)
        rc = check_labels(what, labels_a, batch, classes);
    if (!rc)
        rc = check_labels(what, labels_b, batch, classes);
    if (!rc)
        rc = check_class_weights(what, class_weights, classes);
    if (rc != GRAFT_OK)
        return rc;
    for (int64_t i = 0; i < batch; i++)
        if (!(lambda[i] >= 0.0f && lambda[i] <= 1.0f))
            return graft__fail(GRAFT_E_INVALID_ARG, "%s: lambda %g of sample %" PRId64
                               " is outside [0, 1]", what, (double)lambda[i], i);
    const double inv_batch = 1.0 / (double)batch;
    double sum = graft__softmax_xent_mixed_rows(logits, labels_a, labels_b, lambda, classes,
                                                smoothing, class_weights, inv_batch, probs, grad,
                                                0, batch);
    *loss = sum * inv_batch;
    return GRAFT_OK;
}

int64_t graft__count_top1(const float *scores, const int32_t *labels, int64_t batch,
                          int64_t classes)
{
    int64_t correct = 0;
    for (int64_t r = 0; r < batch; r++) {
        const float *x = scores + r * classes;
        int64_t best = 0;
        for (int64_t j = 1; j < classes; j++)
            if (x[j] > x[best])
                best = j;
        correct += best == labels[r];
    }
    return correct;
}

double graft__sigmoid_bce_range(const float *logits, const float *targets, float smoothing,
                                double grad_scale, float *probs, float *grad, int64_t start,
                                int64_t end)
{
    const double eps = smoothing;
    double total = 0.0;
    for (int64_t i = start; i < end; i++) {
        const double x = logits[i];
        const double y = (double)targets[i] * (1.0 - eps) + 0.5 * eps;
        /* e = exp(-|x|) <= 1 serves both the loss and the sigmoid, so neither
         * branch ever exponentiates a large positive number. */
        const double e = exp(-fabs(x));
        total += (x > 0.0 ? x : 0.0) - x * y + log1p(e);
        if (!probs && !grad)
            continue;
        const double p = x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        if (probs)
            probs[i] = (float)p;
        if (grad)
            grad[i] = (float)(grad_scale * (p - y));
    }
    return total;
}

graft_status graft__sigmoid_bce(const float *logits, const float *targets, int64_t batch,
                                int64_t classes, float smoothing, double *loss, float *probs,
                                float *grad)
{
    static const char what[] = "sigmoid binary cross-entropy";
    graft_status rc = check_sizes(what, batch, classes, smoothing);
    if (rc != GRAFT_OK)
        return rc;
    const int64_t n = batch * classes; /* checked above */
    for (int64_t i = 0; i < n; i++)
        if (!(targets[i] >= 0.0f && targets[i] <= 1.0f))
            return graft__fail(GRAFT_E_INVALID_ARG, "%s: target %g of sample %" PRId64
                               ", class %" PRId64 " is outside [0, 1]", what,
                               (double)targets[i], i / classes, i % classes);
    const double inv_n = 1.0 / (double)n;
    double sum = graft__sigmoid_bce_range(logits, targets, smoothing, inv_n, probs, grad, 0, n);
    *loss = sum * inv_n;
    return GRAFT_OK;
}

int64_t graft__count_binary_correct(const float *logits, const float *targets, int64_t count)
{
    int64_t correct = 0;
    for (int64_t i = 0; i < count; i++)
        correct += (logits[i] > 0.0f) == (targets[i] > 0.5f);
    return correct;
}
