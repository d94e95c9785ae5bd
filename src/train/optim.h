/* Optimiser update steps, regularisers and gradient clipping over flat float
 * arrays: one call per parameter group (or per weight tensor), each given the
 * effective learning rate, already multiplied by the schedule and the group's
 * layer multiplier.
 *
 * The update rules are PyTorch's (torch.optim.SGD, Adam, AdamW), written out in
 * each function's comment. Step kernels work on [start, end) and are elementwise,
 * so any split of [0, n) over threads gives bit-identical results; the _parallel
 * wrappers do such a split with OpenMP. Reductions (norms, penalties) are summed
 * in double over fixed chunks whose bounds depend only on the array length, and
 * the chunks' partial sums are added in chunk order: the result does not depend
 * on the thread count. */
#ifndef GRAFT_TRAIN_OPTIM_H
#define GRAFT_TRAIN_OPTIM_H

#include <stdint.h>

#include "graft.h"

/* ---- SGD ----------------------------------------------------------------- */

typedef struct graft__sgd_config {
    float momentum;     /* mu >= 0; 0 is plain SGD and the buffer is not touched */
    int nesterov;       /* Nesterov momentum; needs momentum > 0 */
    float weight_decay; /* coupled L2 >= 0: g += weight_decay * w before momentum */
} graft__sgd_config;

/* GRAFT_E_INVALID_ARG unless momentum and weight_decay are finite and >= 0 and
 * nesterov has momentum (as torch.optim.SGD insists). */
graft_status graft__sgd_check(const graft__sgd_config *cfg);

/* One SGD step on elements [start, end). `step` counts this group's updates from 1.
 *   g   = grad + weight_decay * w
 *   buf = step == 1 ? g : momentum * buf + g        (only when momentum > 0)
 *   w  -= lr * (nesterov ? g + momentum * buf : buf)   (momentum > 0)
 *   w  -= lr * g                                        (momentum == 0)
 * Because step 1 overwrites buf, the buffer needs no initialisation. */
void graft__sgd_step(const graft__sgd_config *cfg, float lr, int64_t step,
                     float *w,          /* (n) parameters, updated */
                     const float *grad, /* (n) gradient of the loss */
                     float *buf,        /* (n) momentum buffer; NULL allowed when momentum == 0 */
                     int64_t start, int64_t end);

/* graft__sgd_step over [0, n), split over the OpenMP threads when n is large. */
void graft__sgd_step_parallel(const graft__sgd_config *cfg, float lr, int64_t step,
                              float *w,          /* (n) */
                              const float *grad, /* (n) */
                              float *buf,        /* (n) or NULL when momentum == 0 */
                              int64_t n);

/* ---- Adam / AdamW -------------------------------------------------------- */

typedef struct graft__adam_config {
    float beta1;        /* in [0, 1); PyTorch default 0.9 */
    float beta2;        /* in [0, 1); PyTorch default 0.999 */
    float eps;          /* > 0; PyTorch default 1e-8 (Keras uses 1e-7, in another place) */
    float weight_decay; /* >= 0: coupled L2 for Adam, decoupled decay for AdamW */
    int decoupled;      /* 0: Adam, 1: AdamW */
} graft__adam_config;

/* PyTorch's defaults: beta1 0.9, beta2 0.999, eps 1e-8, no weight decay, Adam. */
graft__adam_config graft__adam_defaults(void);

/* GRAFT_E_INVALID_ARG unless each field is in the range documented above. */
graft_status graft__adam_check(const graft__adam_config *cfg);

/* One Adam or AdamW step on elements [start, end). `step` (t) counts this group's
 * updates from 1; m and v must be zero before step 1.
 *   AdamW: w -= lr * weight_decay * w            (first, on the old w)
 *   Adam:  g  = grad + weight_decay * w          (coupled L2)
 *   m  = beta1 * m + (1 - beta1) * g
 *   v  = beta2 * v + (1 - beta2) * g^2
 *   w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
 * eps is added after the bias correction of v, as in PyTorch and the paper (Keras
 * adds its epsilon before). beta1 may change between steps (one-cycle momentum);
 * the bias correction then uses the current beta1, as PyTorch does. */
void graft__adam_step(const graft__adam_config *cfg, float lr, int64_t step,
                      float *w,          /* (n) parameters, updated */
                      const float *grad, /* (n) */
                      float *m,          /* (n) first moment */
                      float *v,          /* (n) second moment */
                      int64_t start, int64_t end);

/* graft__adam_step over [0, n), split over the OpenMP threads when n is large. */
void graft__adam_step_parallel(const graft__adam_config *cfg, float lr, int64_t step,
                               float *w,          /* (n) */
                               const float *grad, /* (n) */
                               float *m,          /* (n) */
                               float *v,          /* (n) */
                               int64_t n);

/* ---- L2-SP and L2 regularisation ------------------------------------------ */

/* Adds the gradient of (coef / 2) * ||w - w0||^2 to grad on [start, end):
 *   grad += coef * (w - w0)
 * With w0 the pretrained weights this is L2-SP's alpha term (Li et al. 2018,
 * "Explicit inductive bias for transfer learning"); with w0 == NULL it is plain
 * L2 towards zero, L2-SP's beta term for the new layers. */
void graft__l2sp_grad(float coef,
                      const float *w,  /* (n) current weights */
                      const float *w0, /* (n) pretrained weights, or NULL for 0 */
                      float *grad,     /* (n) updated */
                      int64_t start, int64_t end);

/* The matching penalty (coef / 2) * ||w - w0||^2 over [0, n) (w0 NULL: ||w||^2),
 * in double and independent of the thread count: for logging the regularised
 * loss. */
double graft__l2sp_penalty(float coef,
                           const float *w,  /* (n) */
                           const float *w0, /* (n) or NULL */
                           int64_t n);

/* ---- gradient clipping by global norm ------------------------------------- */

/* Sum of squares of x[0, n), in double, independent of the thread count. */
double graft__sum_squares(const float *x, /* (n) */ int64_t n);

/* sqrt of the sum of squares over all arrays, taken in array order. */
double graft__global_norm(int n_arrays,
                          const float *const *arrays, /* n_arrays pointers, array i (counts[i]) */
                          const int64_t *counts);     /* (n_arrays) */

/* torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)). */
double graft__clip_scale(double norm, double max_norm);

/* x *= scale on [start, end). */
void graft__scale(float *x, /* (n) */ float scale, int64_t start, int64_t end);

/* Clips the arrays together to global L2 norm max_norm: computes the norm, writes
 * it (before clipping) to *norm when norm is non-NULL, and multiplies every array
 * by graft__clip_scale(norm, max_norm) when that is below 1.
 * GRAFT_E_INVALID_ARG when n_arrays < 0, a count < 0, max_norm is not a finite
 * number > 0, or the norm is not finite (an inf or NaN gradient: the arrays are left
 * untouched and *norm still receives the value, so a caller may skip the step). */
graft_status graft__clip_global_norm(int n_arrays,
                                     float *const *arrays,   /* array i (counts[i]), scaled */
                                     const int64_t *counts,  /* (n_arrays) */
                                     double max_norm, double *norm);

#endif
