#include "train/optim.h"

#include <math.h>
#include <omp.h>

#include "core/error.h"

/* Below this many elements a step is cheaper than waking the thread team. */
enum { PARALLEL_MIN = 1 << 15 };

/* Reductions are cut into chunks of CHUNK elements; BLOCK chunks' partial sums
 * are kept on the stack at a time. Both are constants, so chunk bounds depend on
 * the array length only, never on the thread count. */
enum { CHUNK = 1 << 15, BLOCK = 64 };

/* Contiguous, near-equal share of [0, n) for thread t of nt. */
static void split_range(int64_t n, int t, int nt, int64_t *start, int64_t *end)
{
    int64_t base = n / nt, extra = n % nt;
    *start = t * base + (t < extra ? t : extra);
    *end = *start + base + (t < extra ? 1 : 0);
}

/* ---- SGD ----------------------------------------------------------------- */

graft_status graft__sgd_check(const graft__sgd_config *cfg)
{
    if (!(cfg->momentum >= 0.0f && isfinite(cfg->momentum)))
        return graft__fail(GRAFT_E_INVALID_ARG, "SGD: momentum %g must be finite and >= 0",
                           (double)cfg->momentum);
    if (!(cfg->weight_decay >= 0.0f && isfinite(cfg->weight_decay)))
        return graft__fail(GRAFT_E_INVALID_ARG, "SGD: weight decay %g must be finite and >= 0",
                           (double)cfg->weight_decay);
    if (cfg->nesterov && cfg->momentum == 0.0f)
        return graft__fail(GRAFT_E_INVALID_ARG, "SGD: Nesterov momentum needs a momentum > 0");
    return GRAFT_OK;
}

void graft__sgd_step(const graft__sgd_config *cfg, float lr, int64_t step, float *w,
                     const float *grad, float *buf, int64_t start, int64_t end)
{
    const float mu = cfg->momentum, wd = cfg->weight_decay;
    /* The branches sit outside the loops so each loop is a plain vectorisable body. */
    if (mu == 0.0f) {
        for (int64_t i = start; i < end; i++)
            w[i] -= lr * (grad[i] + wd * w[i]);
        return;
    }
    if (step <= 1) {
        /* PyTorch starts the buffer as a copy of the first gradient, not as mu*0 + g
         * of whatever the buffer held: that lets buf arrive uninitialised. */
        for (int64_t i = start; i < end; i++)
            buf[i] = grad[i] + wd * w[i];
    } else {
        for (int64_t i = start; i < end; i++)
            buf[i] = mu * buf[i] + (grad[i] + wd * w[i]);
    }
    if (cfg->nesterov) {
        /* w still holds the old value here, so g is recomputed from the same w
         * the buffer update used. */
        for (int64_t i = start; i < end; i++)
            w[i] -= lr * ((grad[i] + wd * w[i]) + mu * buf[i]);
    } else {
        for (int64_t i = start; i < end; i++)
            w[i] -= lr * buf[i];
    }
}

void graft__sgd_step_parallel(const graft__sgd_config *cfg, float lr, int64_t step, float *w,
                              const float *grad, float *buf, int64_t n)
{
#pragma omp parallel if (n >= PARALLEL_MIN)
    {
        int64_t s, e;
        split_range(n, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft__sgd_step(cfg, lr, step, w, grad, buf, s, e);
    }
}

/* ---- Adam / AdamW -------------------------------------------------------- */

graft__adam_config graft__adam_defaults(void)
{
    graft__adam_config cfg = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                              .weight_decay = 0.0f, .decoupled = 0};
    return cfg;
}

graft_status graft__adam_check(const graft__adam_config *cfg)
{
    const char *name = cfg->decoupled ? "AdamW" : "Adam";
    if (!(cfg->beta1 >= 0.0f && cfg->beta1 < 1.0f))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: beta1 %g is outside [0, 1)", name,
                           (double)cfg->beta1);
    if (!(cfg->beta2 >= 0.0f && cfg->beta2 < 1.0f))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: beta2 %g is outside [0, 1)", name,
                           (double)cfg->beta2);
    if (!(cfg->eps > 0.0f && isfinite(cfg->eps)))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: eps %g must be finite and > 0", name,
                           (double)cfg->eps);
    if (!(cfg->weight_decay >= 0.0f && isfinite(cfg->weight_decay)))
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: weight decay %g must be finite and >= 0",
                           name, (double)cfg->weight_decay);
    return GRAFT_OK;
}

void graft__adam_step(const graft__adam_config *cfg, float lr, int64_t step, float *w,
                      const float *grad, float *m, float *v, int64_t start, int64_t end)
{
    /* Step 0 would divide by 1 - beta^0 = 0; treat it as the first step. */
    const double t = (double)(step < 1 ? 1 : step);
    const float b1 = cfg->beta1, b2 = cfg->beta2, eps = cfg->eps;
    const float c1 = 1.0f - b1, c2 = 1.0f - b2;
    /* Scalars in double as PyTorch computes them in Python floats; the per-element
     * arithmetic is float32 like PyTorch's:
     *   w -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),
     * which is the documented lr * (m / bc1) / (sqrt(v / bc2) + eps). */
    const double bc1 = 1.0 - pow((double)b1, t);
    const double bc2 = 1.0 - pow((double)b2, t);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    /* These loops stay scalar under the default -fmath-errno (sqrtf keeps a libm
     * path for errno); that costs a few ms per step for a few million parameters,
     * small next to the backward pass. -fno-math-errno would vectorise them. */
    if (cfg->decoupled) {
        const float keep = (float)(1.0 - (double)lr * (double)cfg->weight_decay);
        for (int64_t i = start; i < end; i++) {
            const float g = grad[i];
            const float mi = b1 * m[i] + c1 * g;
            const float vi = b2 * v[i] + c2 * g * g;
            m[i] = mi;
            v[i] = vi;
            w[i] = w[i] * keep - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        }
    } else {
        const float wd = cfg->weight_decay;
        for (int64_t i = start; i < end; i++) {
            const float g = grad[i] + wd * w[i];
            const float mi = b1 * m[i] + c1 * g;
            const float vi = b2 * v[i] + c2 * g * g;
            m[i] = mi;
            v[i] = vi;
            w[i] -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        }
    }
}

void graft__adam_step_parallel(const graft__adam_config *cfg, float lr, int64_t step, float *w,
                               const float *grad, float *m, float *v, int64_t n)
{
#pragma omp parallel if (n >= PARALLEL_MIN)
    {
        int64_t s, e;
        split_range(n, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft__adam_step(cfg, lr, step, w, grad, m, v, s, e);
    }
}

/* ---- deterministic sums of squares ---------------------------------------- */

/* sum (x - y)^2 over [start, end) (y NULL: sum x^2), in double. Eight running
 * sums in a fixed lane pattern let the compiler vectorise without reordering
 * anything between runs; they are combined in a fixed tree at the end. */
static double sum_sq_diff_range(const float *x, const float *y, int64_t start, int64_t end)
{
    double acc[8] = {0};
    int64_t i = start;
    if (y) {
        for (; i + 8 <= end; i += 8)
            for (int k = 0; k < 8; k++) {
                double d = (double)x[i + k] - (double)y[i + k];
                acc[k] += d * d;
            }
    } else {
        for (; i + 8 <= end; i += 8)
            for (int k = 0; k < 8; k++) {
                double d = x[i + k];
                acc[k] += d * d;
            }
    }
    double tail = 0.0;
    for (; i < end; i++) {
        double d = (double)x[i] - (y ? (double)y[i] : 0.0);
        tail += d * d;
    }
    return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) +
           tail;
}

/* sum (x - y)^2 over [0, n): chunk partials in parallel, added in chunk order. */
static double sum_sq_diff(const float *x, const float *y, int64_t n)
{
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
    double total = 0.0;
    for (int64_t b = 0; b < chunks; b += BLOCK) {
        const int64_t nb = chunks - b < BLOCK ? chunks - b : BLOCK;
        double part[BLOCK];
#pragma omp parallel for schedule(static) if (nb > 1)
        for (int64_t c = 0; c < nb; c++) {
            int64_t s = (b + c) * CHUNK;
            int64_t e = s + CHUNK < n ? s + CHUNK : n;
            part[c] = sum_sq_diff_range(x, y, s, e);
        }
        for (int64_t c = 0; c < nb; c++)
            total += part[c];
    }
    return total;
}

double graft__sum_squares(const float *x, int64_t n) { return sum_sq_diff(x, NULL, n); }

double graft__global_norm(int n_arrays, const float *const *arrays, const int64_t *counts)
{
    double total = 0.0;
    for (int a = 0; a < n_arrays; a++)
        total += sum_sq_diff(arrays[a], NULL, counts[a]);
    return sqrt(total);
}

/* ---- L2-SP and L2 -------------------------------------------------------- */

void graft__l2sp_grad(float coef, const float *w, const float *w0, float *grad, int64_t start,
                      int64_t end)
{
    if (w0) {
        for (int64_t i = start; i < end; i++)
            grad[i] += coef * (w[i] - w0[i]);
    } else {
        for (int64_t i = start; i < end; i++)
            grad[i] += coef * w[i];
    }
}

double graft__l2sp_penalty(float coef, const float *w, const float *w0, int64_t n)
{
    return 0.5 * (double)coef * sum_sq_diff(w, w0, n);
}

/* ---- clipping ------------------------------------------------------------ */

double graft__clip_scale(double norm, double max_norm)
{
    /* The 1e-6 is torch.nn.utils.clip_grad_norm_'s guard against norm == 0. */
    double s = max_norm / (norm + 1e-6);
    return s < 1.0 ? s : 1.0;
}

void graft__scale(float *x, float scale, int64_t start, int64_t end)
{
    for (int64_t i = start; i < end; i++)
        x[i] *= scale;
}

graft_status graft__clip_global_norm(int n_arrays, float *const *arrays, const int64_t *counts,
                                     double max_norm, double *norm)
{
    if (n_arrays < 0)
        return graft__fail(GRAFT_E_INVALID_ARG, "gradient clipping: %d arrays", n_arrays);
    for (int a = 0; a < n_arrays; a++)
        if (counts[a] < 0)
            return graft__fail(GRAFT_E_INVALID_ARG, "gradient clipping: array %d has %lld "
                               "elements", a, (long long)counts[a]);
    if (!(max_norm > 0.0 && isfinite(max_norm)))
        return graft__fail(GRAFT_E_INVALID_ARG, "gradient clipping: max norm %g must be finite "
                           "and > 0", max_norm);
    const double total = graft__global_norm(n_arrays, (const float *const *)arrays, counts);
    if (norm)
        *norm = total;
    if (!isfinite(total))
        return graft__fail(GRAFT_E_INVALID_ARG, "gradient clipping: the gradient norm is %g",
                           total);
    const double s = graft__clip_scale(total, max_norm);
    if (s >= 1.0)
        return GRAFT_OK;
    const float scale = (float)s;
    for (int a = 0; a < n_arrays; a++) {
        const int64_t n = counts[a];
        float *x = arrays[a];
#pragma omp parallel if (n >= PARALLEL_MIN)
        {
            int64_t st, e;
            split_range(n, omp_get_thread_num(), omp_get_num_threads(), &st, &e);
            graft__scale(x, scale, st, e);
        }
    }
    return GRAFT_OK;
}
