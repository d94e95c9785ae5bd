#include "train/loss.h"

#include <inttypes.h>
#include <math.h>

#include "core/alloc.h"
#include "core/error.h"

/* The losses are not parallelised: (batch, classes) is tiny next to the layer
 * below it, and a serial sum keeps the reported loss independent of the thread
 * count without any chunking machinery. */

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
        /* Shifting by the row maximum makes every exponent <= 0, so the sum lies
         * in [1, classes] and its log neither overflows nor loses the large logit. */
        float m = x[0];
        for (int64_t j = 1; j < classes; j++)
            if (x[j] > m)
                m = x[j];
        double sum_exp = 0.0, sum_z = 0.0;
        for (int64_t j = 0; j < classes; j++) {
            double z = (double)x[j] - (double)m;
            sum_exp += exp(z);
            sum_z += z;
        }
        const double log_s = log(sum_exp);
        const double z_label = (double)x[label] - (double)m;
        /* loss = -sum_j t_j log p_j = log_s - sum_j t_j z_j, as the targets sum to 1;
         * with smoothing sum_j t_j z_j = (1 - eps) z_label + (eps / classes) sum_j z_j. */
        const double row_loss = log_s - ((1.0 - eps) * z_label + off * sum_z);
        const double w = class_weights ? (double)class_weights[label] : 1.0;
        total += w * row_loss;
        if (!probs && !grad)
            continue;
        const double inv_s = 1.0 / sum_exp;
        const double g_scale = grad_scale * w;
        float *p_row = probs ? probs + r * classes : NULL;
        float *g_row = grad ? grad + r * classes : NULL;
        for (int64_t j = 0; j < classes; j++) {
            double p = exp((double)x[j] - (double)m) * inv_s;
            if (p_row)
                p_row[j] = (float)p;
            if (g_row)
                g_row[j] = (float)(g_scale * (p - (j == label ? on : off)));
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

graft_status graft__softmax_xent(const float *logits, const int32_t *labels, int64_t batch,
                                 int64_t classes, float smoothing, const float *class_weights,
                                 double *loss, float *probs, float *grad)
{
    static const char what[] = "softmax cross-entropy";
    graft_status rc = check_sizes(what, batch, classes, smoothing);
    if (rc != GRAFT_OK)
        return rc;
    for (int64_t i = 0; i < batch; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return graft__fail(GRAFT_E_INVALID_ARG, "%s: label %" PRId32 " of sample %" PRId64
                               " is outside [0, %" PRId64 ")", what, labels[i], i, classes);
    if (class_weights)
        for (int64_t j = 0; j < classes; j++)
            if (!(class_weights[j] >= 0.0f && isfinite(class_weights[j])))
                return graft__fail(GRAFT_E_INVALID_ARG, "%s: class weight %" PRId64 " is %g; "
                                   "weights must be finite and >= 0", what, j,
                                   (double)class_weights[j]);
    const double inv_batch = 1.0 / (double)batch;
    double sum = graft__softmax_xent_rows(logits, labels, classes, smoothing, class_weights,
                                          inv_batch, probs, grad, 0, batch);
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
