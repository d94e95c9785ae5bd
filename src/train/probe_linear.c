/* The linear probe: standardise, L-BFGS on the penalised softmax cross-entropy
 * (Nocedal & Wright, Numerical Optimization, algorithms 7.4 and 7.5, with a
 * backtracking Armijo line search), fold the standardisation back into the weights;
 * and its stratified k-fold choice of the penalty. */
#include "train/probe.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"

#define LBFGS_MEMORY 10
#define LBFGS_GTOL 1e-9
#define CV_MAX_ITER 1000

typedef struct problem {
    const double *z; /* standardised features (n, d) */
    const int32_t *y;
    int64_t n, d, classes;
    double l2;
    double *logits; /* scratch (n, classes) */
} problem;

/* J(theta) and its gradient; theta = [V (d, classes) row-major, c (classes)]. */
static double loss_grad(const problem *p, const double *theta, double *grad)
{
    const int64_t n = p->n, d = p->d, k = p->classes;
    const double *v = theta, *c = theta + d * k;
    double *lg = p->logits;
    for (int64_t i = 0; i < n; i++)
        memcpy(lg + i * k, c, (size_t)k * sizeof(double));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n, (blasint)k, (blasint)d, 1.0,
                p->z, (blasint)d, v, (blasint)k, 1.0, lg, (blasint)k);
    double loss = 0;
    const double inv_n = 1.0 / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double *row = lg + i * k;
        double mx = row[0];
        for (int64_t j = 1; j < k; j++)
            mx = fmax(mx, row[j]);
        double sum = 0;
        for (int64_t j = 0; j < k; j++)
            sum += exp(row[j] - mx);
        const double lse = mx + log(sum);
        loss += lse - row[p->y[i]];
        if (grad) { /* row becomes (softmax - onehot) / n */
            for (int64_t j = 0; j < k; j++)
                row[j] = exp(row[j] - lse) * inv_n;
            row[p->y[i]] -= inv_n;
        }
    }
    double pen = 0;
    for (int64_t j = 0; j < d * k; j++)
        pen += v[j] * v[j];
    loss = loss * inv_n + 0.5 * p->l2 * pen;
    if (grad) {
        for (int64_t j = 0; j < d * k; j++)
            grad[j] = p->l2 * v[j];
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)d, (blasint)k, (blasint)n,
                    1.0, p->z, (blasint)d, lg, (blasint)k, 1.0, grad, (blasint)k);
        double *gc = grad + d * k;
        memset(gc, 0, (size_t)k * sizeof(double));
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < k; j++)
                gc[j] += lg[i * k + j];
    }
    return loss;
}

static double dot(const double *a, const double *b, int64_t m)
{
    double s = 0;
    for (int64_t i = 0; i < m; i++)
        s += a[i] * b[i];
    return s;
}

/* Minimises from theta = 0; returns J at the end. work holds 2 * LBFGS_MEMORY + 4 vectors. */
/* From theta as given when warm, else from 0. */
static double lbfgs(const problem *p, double *theta, int max_iter, double *work, int warm)
{
    const int64_t m = (p->d + 1) * p->classes;
    double *s_mem = work, *y_mem = work + LBFGS_MEMORY * m;
    double *g = y_mem + LBFGS_MEMORY * m, *dir = g + m, *x_new = dir + m, *g_new = x_new + m;
    double rho[LBFGS_MEMORY], a[LBFGS_MEMORY];
    int stored = 0, head = 0; /* ring buffer: newest pair at (head - 1) mod MEMORY */

    if (!warm)
        memset(theta, 0, (size_t)m * sizeof(double));
    double f = loss_grad(p, theta, g);
    for (int it = 0; it < max_iter; it++) {
        const double gnorm = sqrt(dot(g, g, m));
        if (gnorm <= LBFGS_GTOL)
            break;
        /* Two-loop recursion: dir = -H g. */
        for (int64_t i = 0; i < m; i++)
            dir[i] = -g[i];
        for (int j = 0; j < stored; j++) {
            const int slot = (head - 1 - j + 2 * LBFGS_MEMORY) % LBFGS_MEMORY;
            a[slot] = rho[slot] * dot(s_mem + slot * m, dir, m);
            cblas_daxpy((blasint)m, -a[slot], y_mem + slot * m, 1, dir, 1);
        }
        if (stored > 0) {
            const int last = (head - 1 + LBFGS_MEMORY) % LBFGS_MEMORY;
            const double *yl = y_mem + last * m;
            cblas_dscal((blasint)m, 1.0 / (rho[last] * dot(yl, yl, m)), dir, 1);
        } else {
            cblas_dscal((blasint)m, 1.0 / fmax(1.0, gnorm), dir, 1);
        }
        for (int j = stored - 1; j >= 0; j--) {
            const int slot = (head - 1 - j + 2 * LBFGS_MEMORY) % LBFGS_MEMORY;
            const double b = rho[slot] * dot(y_mem + slot * m, dir, m);
            cblas_daxpy((blasint)m, a[slot] - b, s_mem + slot * m, 1, dir, 1);
        }
        double slope = dot(g, dir, m);
        if (!(slope < 0)) { /* not a descent direction: forget the curvature pairs */
            stored = 0;
            for (int64_t i = 0; i < m; i++)
                dir[i] = -g[i] / fmax(1.0, gnorm);
            slope = dot(g, dir, m);
        }
        /* Backtracking Armijo. */
        double step = 1.0, f_new = f;
        int ok = 0;
        for (int ls = 0; ls < 60; ls++) {
            for (int64_t i = 0; i < m; i++)
                x_new[i] = theta[i] + step * dir[i];
            f_new = loss_grad(p, x_new, g_new);
            if (f_new <= f + 1e-4 * step * slope) {
                ok = 1;
                break;
            }
            step *= 0.5;
        }
        if (!ok)
            break; /* no decrease left at double precision */
        /* Curvature pair s = x_new - x, y = g_new - g, kept when s.y > 0. */
        double *sv = s_mem + head * m, *yv = y_mem + head * m;
        for (int64_t i = 0; i < m; i++) {
            sv[i] = x_new[i] - theta[i];
            yv[i] = g_new[i] - g[i];
        }
        const double sy = dot(sv, yv, m);
        if (sy > 1e-300) {
            rho[head] = 1.0 / sy;
            head = (head + 1) % LBFGS_MEMORY;
            if (stored < LBFGS_MEMORY)
                stored++;
        } else if (stored == LBFGS_MEMORY) {
            stored--; /* the oldest pair's slot was just overwritten */
        }
        memcpy(theta, x_new, (size_t)m * sizeof(double));
        memcpy(g, g_new, (size_t)m * sizeof(double));
        /* Converged to rounding: the decrease has sunk below J's own precision (the
         * Armijo test then accepts f_new == f forever). */
        const int stalled = f - f_new <= 1e-15 * fmax(1.0, fabs(f));
        f = f_new;
        if (stalled)
            break;
    }
    return f;
}

static graft_status check_probe_args(const float *x, const int32_t *y, int64_t n, int64_t d,
                                     int64_t classes)
{
    if (!x || !y)
        return graft__fail(GRAFT_E_INVALID_ARG, "linear probe: NULL features or labels");
    if (n < 1 || d < 1 || classes < 1)
        return graft__fail(GRAFT_E_INVALID_ARG,
                           "linear probe: n %lld, d %lld, classes %lld must be >= 1", (long long)n,
                           (long long)d, (long long)classes);
    int64_t nd, dk;
    if (!graft__mul_i64(n, d, &nd) || nd > INT32_MAX || !graft__mul_i64(d + 1, classes, &dk) ||
        dk > INT32_MAX / (2 * LBFGS_MEMORY + 4) || n * classes > INT32_MAX)
        return graft__fail(GRAFT_E_INVALID_ARG, "linear probe: problem %lld x %lld x %lld too large",
                           (long long)n, (long long)d, (long long)classes);
    for (int64_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= classes)
            return graft__fail(GRAFT_E_INVALID_ARG,
                               "linear probe: label %d of row %lld outside [0, %lld)", (int)y[i],
                               (long long)i, (long long)classes);
    return GRAFT_OK;
}

/* The row space of z when d > n (see probe.h): z' = U L^(1/2) (n, r) and the map
 * back V = z^T U L^(-1/2) V'. */
typedef struct row_space {
    double *gram;   /* (n, n): rows are eigenvectors, ascending */
    double *lambda; /* (n) */
    double *zr;     /* (n, r) */
    int64_t r;
} row_space;

static void row_space_free(row_space *rs)
{
    graft__free(rs->gram);
    graft__free(rs->lambda);
    graft__free(rs->zr);
}

static graft_status row_space_make(const double *z, int64_t n, int64_t d, row_space *rs)
{
    rs->gram = graft__malloc((size_t)(n * n) * sizeof(double));
    rs->lambda = graft__malloc((size_t)n * sizeof(double));
    rs->zr = graft__malloc((size_t)(n * n) * sizeof(double));
    rs->r = 0;
    if (!rs->gram || !rs->lambda || !rs->zr)
        return graft__fail(GRAFT_E_NOMEM, "linear probe: out of memory");
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)n, (blasint)n, (blasint)d, 1.0,
                z, (blasint)d, z, (blasint)d, 0.0, rs->gram, (blasint)n);
    graft_status rc = graft__sym_eigen(rs->gram, n, rs->lambda);
    if (rc != GRAFT_OK)
        return rc;
    /* The eigenvectors above the cutoff, largest first, scaled by sqrt(lambda). */
    const double cutoff = 1e-12 * fmax(rs->lambda[n - 1], 0.0);
    int64_t r = 0;
    for (int64_t j = n - 1; j >= 0 && rs->lambda[j] > cutoff; j--)
        r++;
    for (int64_t i = 0; i < n; i++)
        for (int64_t q = 0; q < r; q++)
            rs->zr[i * r + q] = rs->gram[(n - 1 - q) * n + i] * sqrt(rs->lambda[n - 1 - q]);
    rs->r = r;
    return GRAFT_OK;
}

/* theta_r = [V' (r, classes), c] -> theta = [V (d, classes), c]; coef is (n, classes) scratch. */
static void row_space_map_back(const row_space *rs, const double *z, int64_t n, int64_t d,
                               int64_t classes, const double *theta_r, double *coef, double *theta)
{
    memset(coef, 0, (size_t)(n * classes) * sizeof(double));
    for (int64_t q = 0; q < rs->r; q++) {
        const double *u = rs->gram + (n - 1 - q) * n;
        const double inv = 1.0 / sqrt(rs->lambda[n - 1 - q]);
        for (int64_t i = 0; i < n; i++)
            for (int64_t k = 0; k < classes; k++)
                coef[i * classes + k] += u[i] * inv * theta_r[q * classes + k];
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)d, (blasint)classes, (blasint)n,
                1.0, z, (blasint)d, coef, (blasint)classes, 0.0, theta, (blasint)classes);
    memcpy(theta + d * classes, theta_r + rs->r * classes, (size_t)classes * sizeof(double));
}

static graft_status check_fit_args(const float *x, const int32_t *y, int64_t n, int64_t d,
                                   int64_t classes, const double *l2s, int n_l2, int max_iter,
                                   const float *weights, const float *bias)
{
    graft_status rc = check_probe_args(x, y, n, d, classes);
    if (rc != GRAFT_OK)
        return rc;
    if (!weights || !bias || !l2s || n_l2 < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "linear probe: NULL weights, bias or penalties");
    for (int g = 0; g < n_l2; g++)
        if (!(l2s[g] >= 0) || !isfinite(l2s[g]) || max_iter < 0)
            return graft__fail(GRAFT_E_INVALID_ARG, "linear probe: l2 %g or max_iter %d invalid",
                               l2s[g], max_iter);
    return GRAFT_OK;
}

graft_status graft__linear_probe_fit_path(const float *x, const int32_t *y, int64_t n, int64_t d,
                                          int64_t classes, const double *l2s, int n_l2,
                                          int max_iter, float *weights, float *bias,
                                          double *final_loss)
{
    graft_status rc = check_fit_args(x, y, n, d, classes, l2s, n_l2, max_iter, weights, bias);
    if (rc != GRAFT_OK)
        return rc;
    const int64_t m = (d + 1) * classes, dm = d > n ? n : d, mr = (dm + 1) * classes;
    double *z = graft__malloc((size_t)(n * d) * sizeof(double));
    double *mu = graft__calloc((size_t)d, sizeof(double));
    double *sd = graft__calloc((size_t)d, sizeof(double));
    double *logits = graft__malloc((size_t)(n * classes) * sizeof(double));
    double *theta = graft__malloc((size_t)m * sizeof(double));
    double *theta_r = graft__malloc((size_t)mr * sizeof(double));
    double *coef = graft__malloc((size_t)(n * classes) * sizeof(double));
    double *work = graft__malloc((size_t)mr * (2 * LBFGS_MEMORY + 4) * sizeof(double));
    row_space rs = {0};
    if (!z || !mu || !sd || !logits || !theta || !theta_r || !coef || !work) {
        rc = graft__fail(GRAFT_E_NOMEM, "linear probe: out of memory");
        goto done;
    }
    /* Column means, then population std by a second pass (no cancellation). */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            mu[j] += x[i * d + j];
    for (int64_t j = 0; j < d; j++)
        mu[j] /= (double)n;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) {
            const double c = x[i * d + j] - mu[j];
            sd[j] += c * c;
        }
    for (int64_t j = 0; j < d; j++) {
        sd[j] = sqrt(sd[j] / (double)n);
        if (!(sd[j] > 1e-12 * fmax(1.0, fabs(mu[j]))))
            sd[j] = 1.0; /* constant column: z = 0 whatever the scale */
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            z[i * d + j] = (x[i * d + j] - mu[j]) / sd[j];
    if (d > n && (rc = row_space_make(z, n, d, &rs)) != GRAFT_OK)
        goto done;

    for (int g = 0; g < n_l2; g++) {
        if (d > n) {
            const problem p = {rs.zr, y, n, rs.r, classes, l2s[g], logits};
            const double f = lbfgs(&p, theta_r, max_iter, work, g > 0);
            if (final_loss)
                final_loss[g] = f;
            row_space_map_back(&rs, z, n, d, classes, theta_r, coef, theta);
        } else {
            const problem p = {z, y, n, d, classes, l2s[g], logits};
            const double f = lbfgs(&p, theta, max_iter, work, g > 0);
            if (final_loss)
                final_loss[g] = f;
        }
        /* Fold: logits = ((x - mu) / sd) V + c = x (V / sd) + (c - mu/sd . V). */
        float *wg = weights + (int64_t)g * d * classes, *bg = bias + (int64_t)g * classes;
        for (int64_t k = 0; k < classes; k++) {
            double b = theta[d * classes + k];
            for (int64_t j = 0; j < d; j++) {
                const double wv = theta[j * classes + k] / sd[j];
                wg[j * classes + k] = (float)wv;
                b -= mu[j] * wv;
            }
            bg[k] = (float)b;
        }
    }

done:
    row_space_free(&rs);
    graft__free(z);
    graft__free(mu);
    graft__free(sd);
    graft__free(logits);
    graft__free(theta);
    graft__free(theta_r);
    graft__free(coef);
    graft__free(work);
    return rc;
}

graft_status graft__linear_probe_fit(const float *x, const int32_t *y, int64_t n, int64_t d,
                                     int64_t classes, double l2, int max_iter, float *weights,
                                     float *bias, double *final_loss)
{
    return graft__linear_probe_fit_path(x, y, n, d, classes, &l2, 1, max_iter, weights, bias,
                                        final_loss);
}

void graft__stratified_folds(const int32_t *y, int64_t n, int64_t classes, int folds,
                             uint64_t seed, int64_t *order, int *fold_of)
{
    int64_t dealt = 0;
    for (int64_t c = 0; c < classes; c++) {
        int64_t count = 0;
        for (int64_t i = 0; i < n; i++)
            if (y[i] == c)
                order[count++] = i;
        const uint64_t cs = graft__seed_derive(seed, (uint64_t)c);
        for (int64_t i = count - 1; i > 0; i--) { /* Fisher-Yates */
            const int64_t j = (int64_t)(graft__mix64(cs ^ graft__mix64((uint64_t)i)) %
                                        (uint64_t)(i + 1));
            const int64_t tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        for (int64_t i = 0; i < count; i++)
            fold_of[order[i]] = (int)(dealt++ % folds);
    }
}

graft_status graft__linear_probe_cv(const float *x, const int32_t *y, int64_t n, int64_t d,
                                    int64_t classes, int folds, const double *l2_grid, int n_grid,
                                    uint64_t seed, double *best_l2, double *cv_accuracy)
{
    graft_status rc = check_probe_args(x, y, n, d, classes);
    if (rc != GRAFT_OK)
        return rc;
    if (!l2_grid || n_grid < 1 || !best_l2)
        return graft__fail(GRAFT_E_INVALID_ARG, "linear probe cv: empty grid or NULL output");
    if (folds < 2 || folds > n)
        return graft__fail(GRAFT_E_INVALID_ARG, "linear probe cv: %d folds for %lld rows", folds,
                           (long long)n);
    for (int g = 0; g < n_grid; g++)
        if (!(l2_grid[g] >= 0) || !isfinite(l2_grid[g]))
            return graft__fail(GRAFT_E_INVALID_ARG, "linear probe cv: l2 %g invalid", l2_grid[g]);

    int *fold_of = graft__malloc((size_t)n * sizeof(int));
    int64_t *order = graft__malloc((size_t)n * sizeof(int64_t));
    float *xt = graft__malloc((size_t)(n * d) * sizeof(float));
    int32_t *yt = graft__malloc((size_t)n * sizeof(int32_t));
    float *w = graft__malloc((size_t)(d * classes) * sizeof(float));
    float *b = graft__malloc((size_t)classes * sizeof(float));
    double *acc = graft__calloc((size_t)n_grid, sizeof(double));
    if (!fold_of || !order || !xt || !yt || !w || !b || !acc) {
        rc = graft__fail(GRAFT_E_NOMEM, "linear probe cv: out of memory");
        goto done;
    }
    graft__stratified_folds(y, n, classes, folds, seed, order, fold_of);

    for (int f = 0; f < folds; f++) {
        int64_t nt = 0;
        for (int64_t i = 0; i < n; i++)
            if (fold_of[i] != f) {
                memcpy(xt + nt * d, x + i * d, (size_t)d * sizeof(float));
                yt[nt++] = y[i];
            }
        const int64_t nv = n - nt;
        for (int g = 0; g < n_grid; g++) {
            rc = graft__linear_probe_fit(xt, yt, nt, d, classes, l2_grid[g], CV_MAX_ITER, w, b,
                                         NULL);
            if (rc != GRAFT_OK)
                goto done;
            int64_t right = 0;
            for (int64_t i = 0; i < n; i++) {
                if (fold_of[i] != f)
                    continue;
                int64_t arg = 0;
                double best = -INFINITY;
                for (int64_t k = 0; k < classes; k++) {
                    double s = b[k];
                    for (int64_t j = 0; j < d; j++)
                        s += (double)x[i * d + j] * w[j * classes + k];
                    if (s > best) {
                        best = s;
                        arg = k;
                    }
                }
                right += arg == y[i];
            }
            acc[g] += (double)right / (double)nv / (double)folds;
        }
    }
    int best = 0;
    for (int g = 1; g < n_grid; g++) {
        const double diff = acc[g] - acc[best];
        if (diff > 1e-12 || (fabs(diff) <= 1e-12 && l2_grid[g] > l2_grid[best]))
            best = g;
    }
    *best_l2 = l2_grid[best];
    if (cv_accuracy)
        *cv_accuracy = acc[best];

done:
    graft__free(fold_of);
    graft__free(order);
    graft__free(xt);
    graft__free(yt);
    graft__free(w);
    graft__free(b);
    graft__free(acc);
    return rc;
}
