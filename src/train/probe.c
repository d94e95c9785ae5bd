/* LogME: the spectrum of the features once, then a MacKay fixed point per class.
 * Formulas: You et al., "LogME: Practical Assessment of Pre-trained Models for
 * Transfer Learning", ICML 2021 (Algorithm 1), and Bishop, PRML section 3.5. */
#include "train/probe.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"

/* LAPACK's symmetric eigensolver (divide and conquer), exported by OpenBLAS. The two
 * trailing size_t are gfortran's hidden lengths of the CHARACTER arguments. */
extern void dsyevd_(const char *jobz, const char *uplo, const blasint *n, double *a,
                    const blasint *lda, double *w, double *work, const blasint *lwork,
                    blasint *iwork, const blasint *liwork, blasint *info, size_t jobz_len,
                    size_t uplo_len);

/* Eigenvalues (ascending) into w and eigenvectors of the symmetric m x m matrix a,
 * whose upper triangle (row-major) is filled; on return row j of a is the
 * eigenvector of w[j]. */
graft_status graft__sym_eigen(double *a, int64_t m, double *w)
{
    if (m > INT32_MAX)
        return graft__fail(GRAFT_E_UNSUPPORTED, "logme: eigenproblem of size %lld too large",
                           (long long)m);
    blasint bm = (blasint)m, lwork = -1, liwork = -1, info = 0, iwork_query = 0;
    double work_query = 0;
    /* Row-major upper triangle = column-major lower triangle. */
    dsyevd_("V", "L", &bm, a, &bm, w, &work_query, &lwork, &iwork_query, &liwork, &info, 1, 1);
    if (info != 0)
        return graft__fail(GRAFT_E_UNSUPPORTED, "logme: dsyevd workspace query failed (%d)",
                           (int)info);
    lwork = (blasint)work_query + 1;
    liwork = iwork_query + 1;
    double *work = graft__malloc((size_t)lwork * sizeof(double));
    blasint *iwork = graft__malloc((size_t)liwork * sizeof(blasint));
    if (!work || !iwork) {
        graft__free(work);
        graft__free(iwork);
        return graft__fail(GRAFT_E_NOMEM, "logme: out of memory for the eigensolver");
    }
    dsyevd_("V", "L", &bm, a, &bm, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    graft__free(work);
    graft__free(iwork);
    if (info != 0)
        return graft__fail(GRAFT_E_UNSUPPORTED, "logme: dsyevd failed to converge (%d)",
                           (int)info);
    return GRAFT_OK;
}

void graft__logme_spectrum_free(graft__logme_spectrum *spec)
{
    if (!spec)
        return;
    graft__free(spec->sigma);
    graft__free(spec->p2);
    graft__free(spec->y2);
    memset(spec, 0, sizeof(*spec));
}

static graft_status check_args(const float *features, const int32_t *labels, int64_t n,
                               int64_t d, int64_t classes)
{
    if (!features || !labels)
        return graft__fail(GRAFT_E_INVALID_ARG, "logme: NULL features or labels");
    if (n < 1 || d < 1 || classes < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "logme: n %lld, d %lld, classes %lld must be >= 1",
                           (long long)n, (long long)d, (long long)classes);
    int64_t nd;
    if (!graft__mul_i64(n, d, &nd) || nd > INT64_MAX / 8)
        return graft__fail(GRAFT_E_INVALID_ARG, "logme: %lld x %lld features overflow",
                           (long long)n, (long long)d);
    for (int64_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return graft__fail(GRAFT_E_INVALID_ARG, "logme: label %d of row %lld outside [0, %lld)",
                               (int)labels[i], (long long)i, (long long)classes);
    return GRAFT_OK;
}

graft_status graft__logme_spectrum_compute(const float *features, const int32_t *labels, int64_t n,
                                           int64_t d, int64_t classes, graft__logme_spectrum *out)
{
    if (!out)
        return graft__fail(GRAFT_E_INVALID_ARG, "logme: NULL output");
    memset(out, 0, sizeof(*out));
    graft_status rc = check_args(features, labels, n, d, classes);
    if (rc != GRAFT_OK)
        return rc;
    const int64_t m = n < d ? n : d; /* the side of the Gram matrix */
    double *f = graft__malloc((size_t)(n * d) * sizeof(double));
    double *gram = graft__calloc((size_t)m * (size_t)m, sizeof(double));
    double *w = graft__malloc((size_t)m * sizeof(double));
    double *t = NULL, *z = NULL;
    out->sigma = graft__malloc((size_t)m * sizeof(double));
    out->p2 = graft__calloc((size_t)classes * (size_t)m, sizeof(double));
    out->y2 = graft__calloc((size_t)classes, sizeof(double));
    if (!f || !gram || !w || !out->sigma || !out->p2 || !out->y2) {
        rc = graft__fail(GRAFT_E_NOMEM, "logme: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < n * d; i++)
        f[i] = features[i];
    for (int64_t i = 0; i < n; i++)
        out->y2[labels[i]] += 1.0;

    if (d <= n) /* F^T F (d, d) */
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (blasint)d, (blasint)n, 1.0, f,
                    (blasint)d, 0.0, gram, (blasint)d);
    else /* F F^T (n, n) */
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)n, (blasint)d, 1.0, f,
                    (blasint)d, 0.0, gram, (blasint)n);
    rc = graft__sym_eigen(gram, m, w);
    if (rc != GRAFT_OK)
        goto done;

    /* (u_j^T y_c) for every eigenpair j and class c, into z (classes, m). */
    z = graft__calloc((size_t)classes * (size_t)m, sizeof(double));
    if (!z) {
        rc = graft__fail(GRAFT_E_NOMEM, "logme: out of memory");
        goto done;
    }
    if (d <= n) {
        /* T = Y^T F (classes, d): per-class sums of rows; then v_j^T F^T y_c = (T V^T)[c, j]
         * and u_j^T y_c = that / sqrt(s_j). */
        t = graft__calloc((size_t)classes * (size_t)d, sizeof(double));
        if (!t) {
            rc = graft__fail(GRAFT_E_NOMEM, "logme: out of memory");
            goto done;
        }
        for (int64_t i = 0; i < n; i++) {
            double *row = t + (int64_t)labels[i] * d;
            for (int64_t j = 0; j < d; j++)
                row[j] += f[i * d + j];
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)classes, (blasint)d,
                    (blasint)d, 1.0, t, (blasint)d, gram, (blasint)d, 0.0, z, (blasint)d);
    } else {
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < n; i++)
                z[(int64_t)labels[i] * m + j] += gram[j * n + i];
    }

    /* Keep the eigenpairs above the noise floor; the rest count as exact zeros. */
    const double s_max = w[m - 1] > 0 ? w[m - 1] : 0.0;
    int64_t k = 0;
    for (int64_t j = 0; j < m; j++) {
        if (!(w[j] > 1e-10 * s_max) || w[j] <= 0)
            continue;
        out->sigma[k] = w[j];
        for (int64_t c = 0; c < classes; c++) {
            double u = z[c * m + j];
            if (d <= n)
                u /= sqrt(w[j]);
            out->p2[c * m + k] = u * u;
        }
        k++;
    }
    /* Compact p2 from stride m to stride k. */
    for (int64_t c = 1; c < classes; c++)
        memmove(out->p2 + c * k, out->p2 + c * m, (size_t)k * sizeof(double));
    out->n = n;
    out->d = d;
    out->k = k;
    out->classes = classes;

done:
    graft__free(f);
    graft__free(gram);
    graft__free(w);
    graft__free(t);
    graft__free(z);
    if (rc != GRAFT_OK)
        graft__logme_spectrum_free(out);
    return rc;
}

/* |y|^2 outside the column space of F: y2 - sum p2, which is exactly 0 when the
 * eigenvectors span R^n (full-rank F, n <= d). Rounding leaves +-1e-16 * y2 there, and
 * a spurious positive rest would cap beta at n / rest and shift the beta -> inf limit,
 * so anything below 1e-9 * y2 counts as 0. */
static double outside_part(double y2, double p2_sum)
{
    const double rest = y2 - p2_sum;
    return rest > 1e-9 * y2 ? rest : 0.0;
}

/* The pieces of L(alpha, beta): gamma, |m|^2, |F m - y|^2 and log det A. */
typedef struct terms {
    double gamma, mtm, res, logdet;
} terms;

static terms evidence_terms(const double *sigma, const double *p2, int64_t k, int64_t d, double y2,
                            double alpha, double beta)
{
    terms r = {0, 0, 0, 0};
    double p2_sum = 0;
    for (int64_t i = 0; i < k; i++) {
        const double den = alpha + beta * sigma[i];
        const double a = alpha / den;
        r.gamma += beta * sigma[i] / den;
        r.mtm += beta * beta * sigma[i] * p2[i] / (den * den);
        r.res += p2[i] * a * a;
        r.logdet += log(den);
        p2_sum += p2[i];
    }
    r.res += outside_part(y2, p2_sum);
    r.logdet += (double)(d - k) * log(alpha);
    return r;
}

double graft__logme_evidence(const double *sigma, const double *p2, int64_t k, int64_t n,
                             int64_t d, double y2, double alpha, double beta)
{
    const terms t = evidence_terms(sigma, p2, k, d, y2, alpha, beta);
    return 0.5 * (double)n * log(beta) + 0.5 * (double)d * log(alpha) -
           0.5 * (double)n * log(2.0 * M_PI) - 0.5 * beta * t.res - 0.5 * alpha * t.mtm -
           0.5 * t.logdet;
}

/* The MacKay fixed point of the paper from (alpha, beta); returns the evidence there. */
static double fixed_point(const double *sigma, const double *p2, int64_t k, int64_t n, int64_t d,
                          double y2, double *alpha_io, double *beta_io)
{
    double alpha = *alpha_io, beta = *beta_io;
    for (int it = 0; it < 10000; it++) {
        const terms t = evidence_terms(sigma, p2, k, d, y2, alpha, beta);
        /* Degenerate ends: y orthogonal to F (alpha -> inf) or fitted exactly (beta -> inf).
         * Stop at a huge finite value; the evidence there is the limit to rounding. */
        const double a_new = t.mtm > 0 ? fmin(t.gamma / t.mtm, 1e300) : 1e300;
        const double b_new = t.res > 0 ? fmin(((double)n - t.gamma) / t.res, 1e300) : 1e300;
        if (!(a_new > 0) || !(b_new > 0))
            break;
        const double da = fabs(a_new - alpha) / alpha, db = fabs(b_new - beta) / beta;
        alpha = a_new;
        beta = b_new;
        if (da < 1e-12 && db < 1e-12)
            break;
    }
    *alpha_io = alpha;
    *beta_io = beta;
    return graft__logme_evidence(sigma, p2, k, n, d, y2, alpha, beta);
}

/* With t = alpha / beta, E(t) = (y2 - sum p2) + sum_i p2_i t / (t + s_i) and the best
 * beta for that t is n / E(t), leaving the profile (up to constants)
 *   g(log t) = -n/2 log E(t) - 1/2 sum_i log(1 + s_i / t). */
static double profile(const double *sigma, const double *p2, int64_t k, int64_t n, double y2,
                      double u, double *e_out)
{
    const double t = exp(u);
    double e = 0, p2_sum = 0, logs = 0;
    for (int64_t i = 0; i < k; i++) {
        e += p2[i] * t / (t + sigma[i]);
        p2_sum += p2[i];
        logs += log1p(sigma[i] / t);
    }
    e += outside_part(y2, p2_sum);
    e = fmax(e, 1e-300);
    if (e_out)
        *e_out = e;
    return -0.5 * (double)n * log(e) - 0.5 * logs;
}

double graft__logme_maximize(const double *sigma, const double *p2, int64_t k, int64_t n,
                             int64_t d, double y2, double *alpha_out, double *beta_out)
{
    /* The paper's fixed point from alpha = beta = 1 can run off to a degenerate end
     * (alpha -> inf: an evidence far below the maximum on n < d problems), so the
     * maximum is located on the exact one-dimensional profile in log(alpha / beta):
     * a scan over the spectrum's range (+- 30 in log), golden section around the best
     * scan point, then the fixed point polishes; the better of that and the paper's
     * plain run wins. */
    double best_u = 0;
    if (k > 0) {
        double s_lo = sigma[0], s_hi = sigma[0];
        for (int64_t i = 1; i < k; i++) {
            s_lo = fmin(s_lo, sigma[i]);
            s_hi = fmax(s_hi, sigma[i]);
        }
        enum { SCAN = 240 };
        const double lo = log(s_lo) - 30.0, hi = log(s_hi) + 30.0, h = (hi - lo) / SCAN;
        double best_g = -INFINITY;
        int best_i = 0;
        for (int i = 0; i <= SCAN; i++) {
            const double g = profile(sigma, p2, k, n, y2, lo + h * i, NULL);
            if (g > best_g) {
                best_g = g;
                best_i = i;
            }
        }
        double a = lo + h * (best_i > 0 ? best_i - 1 : 0);
        double b = lo + h * (best_i < SCAN ? best_i + 1 : SCAN);
        const double r = 0.5 * (sqrt(5.0) - 1.0);
        double c = b - r * (b - a), e = a + r * (b - a);
        double gc = profile(sigma, p2, k, n, y2, c, NULL), ge = profile(sigma, p2, k, n, y2, e, NULL);
        for (int it = 0; it < 200 && b - a > 1e-12 * fmax(1.0, fabs(a)); it++) {
            if (gc >= ge) {
                b = e;
                e = c;
                ge = gc;
                c = b - r * (b - a);
                gc = profile(sigma, p2, k, n, y2, c, NULL);
            } else {
                a = c;
                c = e;
                gc = ge;
                e = a + r * (b - a);
                ge = profile(sigma, p2, k, n, y2, e, NULL);
            }
        }
        best_u = gc >= ge ? c : e;
    }
    double e_best;
    profile(sigma, p2, k, n, y2, best_u, &e_best);
    double beta = (double)n / e_best, alpha = exp(best_u) * beta;
    double best = graft__logme_evidence(sigma, p2, k, n, d, y2, alpha, beta);
    double a1 = alpha, b1 = beta;
    const double polished = fixed_point(sigma, p2, k, n, d, y2, &a1, &b1);
    if (polished > best) {
        best = polished;
        alpha = a1;
        beta = b1;
    }
    double a2 = 1.0, b2 = 1.0;
    const double paper = fixed_point(sigma, p2, k, n, d, y2, &a2, &b2);
    if (paper > best) {
        best = paper;
        alpha = a2;
        beta = b2;
    }
    if (alpha_out)
        *alpha_out = alpha;
    if (beta_out)
        *beta_out = beta;
    return best;
}

graft_status graft__logme(const float *features, const int32_t *labels, int64_t n, int64_t d,
                          int64_t classes, double *score)
{
    if (!score)
        return graft__fail(GRAFT_E_INVALID_ARG, "logme: NULL score");
    graft__logme_spectrum spec;
    graft_status rc = graft__logme_spectrum_compute(features, labels, n, d, classes, &spec);
    if (rc != GRAFT_OK)
        return rc;
    double total = 0;
    for (int64_t c = 0; c < classes; c++) {
        if (spec.y2[c] == 0) {
            graft__logme_spectrum_free(&spec);
            return graft__fail(GRAFT_E_INVALID_ARG, "logme: class %lld has no rows",
                               (long long)c);
        }
        total += graft__logme_maximize(spec.sigma, spec.p2 + c * spec.k, spec.k, n, d, spec.y2[c],
                                       NULL, NULL);
    }
    graft__logme_spectrum_free(&spec);
    *score = total / (double)classes / (double)n;
    return GRAFT_OK;
}
