/* Training losses over a batch of logits, fused with their output activation.
 *
 * Softmax and sigmoid are folded into the loss so that the gradient with respect
 * to the logits is the short, well-conditioned (p - target) instead of the
 * product of two Jacobians, one of which divides by a probability that may have
 * underflowed to zero. Per-row arithmetic is in double: these run once per step
 * over (batch, classes) values, a negligible cost next to the network, and double
 * keeps the logged loss and the finite-difference tests exact to ~1e-12.
 *
 * Reductions follow Keras's default SUM_OVER_BATCH_SIZE: the batch's (weighted)
 * per-sample losses are summed and divided by the batch size, and every gradient
 * written here is of that reduced loss (it already includes the 1/batch). */
#ifndef GRAFT_TRAIN_LOSS_H
#define GRAFT_TRAIN_LOSS_H

#include <stdint.h>

#include "graft.h"

/* ---- softmax cross-entropy (one integer label per sample) ----------------- */

/* Mean softmax cross-entropy of `batch` samples.
 *   label smoothing, Keras meaning: target = onehot * (1 - smoothing) + smoothing / classes;
 *   class_weights, Keras class_weight meaning: sample i's loss is multiplied by
 *     class_weights[labels[i]] and the sum is divided by batch (not by the sum of
 *     the weights); NULL means all 1.
 * Writes the mean to *loss and, when non-NULL, the softmax probabilities and the
 * gradient of *loss with respect to the logits.
 * Fails (GRAFT_E_INVALID_ARG) on batch or classes < 1, smoothing outside [0, 1], a
 * label outside [0, classes), or a negative or non-finite class weight; nothing is
 * written then. */
graft_status graft__softmax_xent(const float *logits,        /* (batch, classes) */
                                 const int32_t *labels,      /* (batch) */
                                 int64_t batch, int64_t classes, float smoothing,
                                 const float *class_weights, /* (classes) or NULL */
                                 double *loss,
                                 float *probs,               /* (batch, classes) or NULL */
                                 float *grad);               /* (batch, classes) or NULL */

/* The unchecked kernel behind graft__softmax_xent, for rows [row_start, row_end):
 * returns the SUM of the rows' weighted losses (the caller divides by the batch)
 * and writes the rows' gradient multiplied by grad_scale (pass 1.0 / batch).
 * Labels must be valid. Pointers address row 0, not row_start. */
double graft__softmax_xent_rows(const float *logits,        /* (batch, classes) */
                                const int32_t *labels,      /* (batch) */
                                int64_t classes, float smoothing,
                                const float *class_weights, /* (classes) or NULL */
                                double grad_scale,
                                float *probs,               /* (batch, classes) or NULL */
                                float *grad,                /* (batch, classes) or NULL */
                                int64_t row_start, int64_t row_end);

/* ---- softmax cross-entropy against two mixed labels (mixup, cutmix) -------- */

/* Mean over the batch of lambda_i CE(a_i) + (1 - lambda_i) CE(b_i), where CE is
 * graft__softmax_xent's per-sample loss with the same label smoothing, so the
 * target is the lambda-mix of the two smoothed one-hot targets.
 *   class_weights: each term carries its own label's weight,
 *     lambda_i w[a_i] CE(a_i) + (1 - lambda_i) w[b_i] CE(b_i), divided by the batch
 *     as graft__softmax_xent does. The mixed loss is then the lambda-weighted
 *     average of the two unmixed weighted losses (what mixing the loss instead of
 *     the targets gives, as the mixup and CutMix reference code do), and a_i == b_i
 *     or lambda_i == 1 gives graft__softmax_xent's number.
 * Fails (GRAFT_E_INVALID_ARG) as graft__softmax_xent does, and on a lambda outside
 * [0, 1] (NaN included); nothing is written then. */
graft_status graft__softmax_xent_mixed(const float *logits,        /* (batch, classes) */
                                       const int32_t *labels_a,    /* (batch) */
                                       const int32_t *labels_b,    /* (batch) */
                                       const float *lambda,        /* (batch): weight of a */
                                       int64_t batch, int64_t classes, float smoothing,
                                       const float *class_weights, /* (classes) or NULL */
                                       double *loss,
                                       float *probs,               /* (batch, classes) or NULL */
                                       float *grad);               /* (batch, classes) or NULL */

/* The unchecked kernel behind graft__softmax_xent_mixed, as
 * graft__softmax_xent_rows is behind graft__softmax_xent. */
double graft__softmax_xent_mixed_rows(const float *logits, const int32_t *labels_a,
                                      const int32_t *labels_b, const float *lambda,
                                      int64_t classes, float smoothing,
                                      const float *class_weights, double grad_scale, float *probs,
                                      float *grad, int64_t row_start, int64_t row_end);

/* Number of samples whose largest score sits at their label (ties go to the
 * lowest index, as argmax does). Works on logits or probabilities alike, since
 * softmax keeps the order. Out-of-range labels never count as correct. */
int64_t graft__count_top1(const float *scores,   /* (batch, classes) */
                          const int32_t *labels, /* (batch) */
                          int64_t batch, int64_t classes);

/* ---- sigmoid binary cross-entropy (multi-label) --------------------------- */

/* Mean sigmoid binary cross-entropy over all batch * classes elements (Keras
 * binary_crossentropy(from_logits=True): mean over classes, then over the batch,
 * which is the same number). Each element, with y = target * (1 - smoothing) +
 * 0.5 * smoothing, costs max(x, 0) - x * y + log1p(exp(-|x|)), which equals
 * -y log(sigmoid(x)) - (1 - y) log(1 - sigmoid(x)) but never overflows.
 * Writes the mean to *loss and, when non-NULL, the sigmoid probabilities and the
 * gradient of *loss with respect to the logits: (sigmoid(x) - y) / (batch * classes).
 * Fails (GRAFT_E_INVALID_ARG) on batch or classes < 1, smoothing outside [0, 1] or
 * a target outside [0, 1] (NaN included); nothing is written then. */
graft_status graft__sigmoid_bce(const float *logits,  /* (batch, classes) */
                                const float *targets, /* (batch, classes), each in [0, 1] */
                                int64_t batch, int64_t classes, float smoothing,
                                double *loss,
                                float *probs,         /* (batch, classes) or NULL */
                                float *grad);         /* (batch, classes) or NULL */

/* The unchecked kernel behind graft__sigmoid_bce over elements [start, end) of the
 * flattened (batch, classes) arrays: returns the SUM of the elements' losses and
 * writes their gradient multiplied by grad_scale (pass 1.0 / (batch * classes)). */
double graft__sigmoid_bce_range(const float *logits,  /* (batch * classes) */
                                const float *targets, /* (batch * classes) */
                                float smoothing, double grad_scale,
                                float *probs,         /* (batch * classes) or NULL */
                                float *grad,          /* (batch * classes) or NULL */
                                int64_t start, int64_t end);

/* Number of elements where the thresholded prediction matches the thresholded
 * target: (logit > 0, i.e. sigmoid > 0.5) == (target > 0.5). Keras's
 * binary_accuracy on 0/1 targets; divide by `count` for the accuracy. */
int64_t graft__count_binary_correct(const float *logits,  /* (count) */
                                    const float *targets, /* (count) */
                                    int64_t count);

#endif
