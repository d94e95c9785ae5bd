/* Transferability math (train/probe.h): LogME against a brute-force maximisation of
 * the evidence computed directly as log N(y | 0, beta^-1 I + alpha^-1 F F^T) by a
 * Cholesky written here; its invariances (global scale, rotation, row order) that follow
 * from the model's algebra, the scale one checked on that direct evidence too; the linear
 * probe against a gradient and a gradient-descent run written here; cross-validation's
 * choice and determinism.
 *
 * Set GRAFT_PROBE_BENCH=1 to also time LogME and the probe on n=1000, d=576, 10 classes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train/probe.h"

static void assert_close(double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("got %.12g, want %.12g (tolerance %g)", got, want, tol);
}

/* Deterministic uniform values in [0, 1): a 64-bit LCG's top bits. */
static double uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) * (1.0 / 9007199254740992.0);
}

static double gaussian(uint64_t *state)
{
    double u = uniform(state), v = uniform(state);
    return sqrt(-2.0 * log(1.0 - u)) * cos(2.0 * M_PI * v);
}

/* Labels 0..classes-1 cycling (every class present), features: class mean (scaled by
 * signal; means drawn once) plus unit Gaussian noise, times scale plus offset per column. */
static void make_data(float *x, int32_t *y, int64_t n, int64_t d, int64_t classes, double signal,
                      uint64_t seed)
{
    uint64_t rng = seed;
    double *means = malloc((size_t)(classes * d) * sizeof(double));
    for (int64_t i = 0; i < classes * d; i++)
        means[i] = signal * gaussian(&rng);
    for (int64_t i = 0; i < n; i++) {
        y[i] = (int32_t)(i % classes);
        for (int64_t j = 0; j < d; j++)
            x[i * d + j] = (float)(means[y[i] * d + j] + gaussian(&rng));
    }
    free(means);
}

/* ---- direct evidence: log N(y | 0, C), C = beta^-1 I + alpha^-1 F F^T --------- */

typedef struct direct {
    int64_t n;
    double *gram; /* F F^T (n, n) */
    double *chol; /* scratch (n, n) */
    double *tmp;  /* scratch (n) */
    const double *y;
} direct;

static double direct_evidence(const direct *p, double log_alpha, double log_beta)
{
    const int64_t n = p->n;
    const double ia = exp(-log_alpha), ib = exp(-log_beta);
    double *l = p->chol;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j <= i; j++)
            l[i * n + j] = ia * p->gram[i * n + j] + (i == j ? ib : 0.0);
    double logdet = 0;
    for (int64_t j = 0; j < n; j++) { /* Cholesky-Banachiewicz, lower */
        double s = l[j * n + j];
        for (int64_t q = 0; q < j; q++)
            s -= l[j * n + q] * l[j * n + q];
        if (!(s > 0))
            return -INFINITY;
        const double ljj = sqrt(s);
        l[j * n + j] = ljj;
        logdet += 2.0 * log(ljj);
        for (int64_t i = j + 1; i < n; i++) {
            double t = l[i * n + j];
            for (int64_t q = 0; q < j; q++)
                t -= l[i * n + q] * l[j * n + q];
            l[i * n + j] = t / ljj;
        }
    }
    double quad = 0; /* |L^-1 y|^2 by forward substitution */
    for (int64_t i = 0; i < n; i++) {
        double t = p->y[i];
        for (int64_t q = 0; q < i; q++)
            t -= l[i * n + q] * p->tmp[q];
        p->tmp[i] = t / l[i * n + i];
        quad += p->tmp[i] * p->tmp[i];
    }
    return -0.5 * ((double)n * log(2.0 * M_PI) + logdet + quad);
}

static void direct_init(direct *p, const float *x, int64_t n, int64_t d, const double *y)
{
    p->n = n;
    p->gram = malloc((size_t)(n * n) * sizeof(double));
    p->chol = malloc((size_t)(n * n) * sizeof(double));
    p->tmp = malloc((size_t)n * sizeof(double));
    p->y = y;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t q = 0; q < d; q++)
                s += (double)x[i * d + q] * x[j * d + q];
            p->gram[i * n + j] = s;
        }
}

static void direct_free(direct *p)
{
    free(p->gram);
    free(p->chol);
    free(p->tmp);
}

/* Grid over (log alpha, log beta) in [-12, 12]^2 step 0.5, then a compass search from
 * the best grid point down to step 1e-9. */
static void brute_force_max(const direct *p, double *grid_best, double *refined)
{
    double best = -INFINITY, ba = 0, bb = 0;
    for (double la = -12; la <= 12; la += 0.5)
        for (double lb = -12; lb <= 12; lb += 0.5) {
            const double v = direct_evidence(p, la, lb);
            if (v > best) {
                best = v;
                ba = la;
                bb = lb;
            }
        }
    *grid_best = best;
    double f = best;
    for (double h = 0.25; h > 1e-9;) {
        int moved = 0;
        const double da[4] = {h, -h, 0, 0}, db[4] = {0, 0, h, -h};
        for (int k = 0; k < 4; k++) {
            const double v = direct_evidence(p, ba + da[k], bb + db[k]);
            if (v > f) {
                f = v;
                ba += da[k];
                bb += db[k];
                moved = 1;
                break;
            }
        }
        if (!moved)
            h *= 0.5;
    }
    *refined = f;
}

/* ---- LogME ------------------------------------------------------------------ */

static void check_evidence_formula(int64_t n, int64_t d, int64_t classes, uint64_t seed)
{
    float *x = malloc((size_t)(n * d) * sizeof(float));
    int32_t *lab = malloc((size_t)n * sizeof(int32_t));
    double *y = malloc((size_t)n * sizeof(double));
    make_data(x, lab, n, d, classes, 1.0, seed);
    graft__logme_spectrum spec;
    assert_int_equal(graft__logme_spectrum_compute(x, lab, n, d, classes, &spec), GRAFT_OK);
    assert_true(spec.k == (n < d ? n : d));
    const double points[4][2] = {{1.0, 1.0}, {0.01, 3.0}, {50.0, 0.2}, {1e-3, 1e3}};
    for (int64_t c = 0; c < classes; c++) {
        for (int64_t i = 0; i < n; i++)
            y[i] = lab[i] == c;
        direct dp;
        direct_init(&dp, x, n, d, y);
        for (int q = 0; q < 4; q++) {
            const double a = points[q][0], b = points[q][1];
            const double got = graft__logme_evidence(spec.sigma, spec.p2 + c * spec.k, spec.k, n, d,
                                                     spec.y2[c], a, b);
            const double want = direct_evidence(&dp, log(a), log(b));
            assert_close(got, want, 1e-9 * fabs(want));
        }
        direct_free(&dp);
    }
    graft__logme_spectrum_free(&spec);
    free(x);
    free(lab);
    free(y);
}

static void logme_evidence_matches_direct(void **state)
{
    check_evidence_formula(50, 5, 3, 11);  /* F^T F path */
    check_evidence_formula(20, 40, 3, 12); /* F F^T path */
    check_evidence_formula(30, 30, 2, 13);
}

static void check_against_grid(int64_t n, int64_t d, int64_t classes, double signal,
                               uint64_t seed)
{
    float *x = malloc((size_t)(n * d) * sizeof(float));
    int32_t *lab = malloc((size_t)n * sizeof(int32_t));
    double *y = malloc((size_t)n * sizeof(double));
    make_data(x, lab, n, d, classes, signal, seed);
    double score = 0;
    assert_int_equal(graft__logme(x, lab, n, d, classes, &score), GRAFT_OK);
    double grid_sum = 0, refined_sum = 0;
    for (int64_t c = 0; c < classes; c++) {
        for (int64_t i = 0; i < n; i++)
            y[i] = lab[i] == c;
        direct dp;
        direct_init(&dp, x, n, d, y);
        double g, r;
        brute_force_max(&dp, &g, &r);
        grid_sum += g;
        refined_sum += r;
        direct_free(&dp);
    }
    const double grid = grid_sum / (double)classes / (double)n;
    const double refined = refined_sum / (double)classes / (double)n;
    printf("logme n=%lld d=%lld: graft %.12f  grid %.12f  refined %.12f\n", (long long)n,
           (long long)d, score, grid, refined);
    assert_true(score >= grid - 1e-6);
    assert_close(score, refined, 1e-8);
    free(x);
    free(lab);
    free(y);
}

static void logme_maximises_evidence(void **state)
{
    check_against_grid(50, 5, 3, 1.0, 21);
    check_against_grid(20, 40, 3, 1.0, 22);
    check_against_grid(60, 8, 4, 0.3, 23);
}

static void logme_ranks_good_over_bad_scale_free(void **state)
{
    enum { N = 200, D = 16, C = 4 };
    static float good[N * D], bad[N * D];
    static int32_t lab[N], lab_bad[N];
    make_data(good, lab, N, D, C, 1.5, 31);
    make_data(bad, lab_bad, N, D, C, 0.0, 32); /* pure noise, same cycling labels */
    double sg, sb, sg10, sb10;
    assert_int_equal(graft__logme(good, lab, N, D, C, &sg), GRAFT_OK);
    assert_int_equal(graft__logme(bad, lab, N, D, C, &sb), GRAFT_OK);
    for (int i = 0; i < N * D; i++) {
        good[i] *= 10.0f;
        bad[i] *= 10.0f;
    }
    assert_int_equal(graft__logme(good, lab, N, D, C, &sg10), GRAFT_OK);
    assert_int_equal(graft__logme(bad, lab, N, D, C, &sb10), GRAFT_OK);
    printf("logme good %.9f -> %.9f (x10, change %.3g), bad %.9f -> %.9f (change %.3g)\n", sg,
           sg10, sg10 - sg, sb, sb10, sb10 - sb);
    assert_true(sg > sb);
    assert_true(sg10 > sb10);
    /* The maximised evidence is exactly scale-invariant (alpha absorbs the scale). */
    assert_close(sg10, sg, 1e-7);
    assert_close(sb10, sb, 1e-7);
}

/* ---- LogME's invariances -----------------------------------------------------
 * The evidence is a density of y alone: N(y | 0, beta^-1 I + alpha^-1 F F^T). F -> c F
 * is undone by alpha -> c^2 alpha, and F -> F Q (Q orthogonal) leaves F F^T as it
 * is, so the maximum over (alpha, beta) cannot change; reordering rows with their
 * labels permutes y and F F^T together. Per-column scaling is NOT an invariance
 * (the prior on w is isotropic): bench/probe_invariance measures that on real cuts. */

/* The math first, on the direct evidence written here: L_cF(c^2 alpha, beta) = L_F(alpha, beta). */
static void direct_evidence_absorbs_global_scale(void **state)
{
    enum { N = 25, D = 6, C = 2 };
    float x[N * D], xs[N * D];
    int32_t lab[N];
    double y[N];
    make_data(x, lab, N, D, C, 1.0, 71);
    for (int i = 0; i < N; i++)
        y[i] = lab[i] == 1;
    const double scales[] = {8.0, 1.0 / 16.0};
    for (int s = 0; s < 2; s++) {
        const double c = scales[s];
        for (int i = 0; i < N * D; i++)
            xs[i] = (float)(x[i] * c); /* powers of two: exact in float */
        direct plain, scaled;
        direct_init(&plain, x, N, D, y);
        direct_init(&scaled, xs, N, D, y);
        const double la[3] = {-3.0, 0.0, 2.5}, lb[3] = {1.0, -2.0, 0.5};
        for (int q = 0; q < 3; q++) {
            const double want = direct_evidence(&plain, la[q], lb[q]);
            const double got = direct_evidence(&scaled, la[q] + 2.0 * log(c), lb[q]);
            assert_close(got, want, 1e-10 * fabs(want));
        }
        direct_free(&plain);
        direct_free(&scaled);
    }
}

static double logme_of(const float *x, const int32_t *lab, int64_t n, int64_t d, int64_t classes)
{
    double s = 0;
    assert_int_equal(graft__logme(x, lab, n, d, classes, &s), GRAFT_OK);
    return s;
}

/* Both spectrum paths (n > d, and n < d where y is fitted exactly and beta -> inf), scales
 * over 12 decades. Powers of two are exact in float and leave only double rounding (seen:
 * 2e-15; bound 1e-12); other factors round every feature by up to 6e-8 relative, which
 * moved the score by up to 3e-9 (bound 1e-7). */
static void check_global_scale(int64_t n, int64_t d, int64_t classes, uint64_t seed)
{
    float *x = malloc((size_t)(n * d) * sizeof(float));
    float *xs = malloc((size_t)(n * d) * sizeof(float));
    int32_t *lab = malloc((size_t)n * sizeof(int32_t));
    make_data(x, lab, n, d, classes, 0.7, seed);
    const double base = logme_of(x, lab, n, d, classes);
    const double scales[] = {0x1p-20, 0x1p-3, 0x1p10, 0x1p20, 1e-6, 0.37, 3.0, 1e6};
    for (int s = 0; s < 8; s++) {
        for (int64_t i = 0; i < n * d; i++)
            xs[i] = (float)(x[i] * scales[s]);
        const double got = logme_of(xs, lab, n, d, classes);
        const int exact = frexp(scales[s], &(int){0}) == 0.5;
        printf("logme n=%lld d=%lld x%g: %.12f vs %.12f (change %.2g)\n", (long long)n,
               (long long)d, scales[s], got, base, got - base);
        assert_close(got, base, exact ? 1e-12 : 1e-7);
    }
    free(x);
    free(xs);
    free(lab);
}

static void logme_invariant_to_global_scale(void **state)
{
    check_global_scale(120, 10, 4, 72); /* F^T F path */
    check_global_scale(20, 40, 3, 73);  /* F F^T path, exact fit */
}

/* Feature sets of rising class signal keep their LogME order under one common scale. */
static void logme_ranking_survives_common_scale(void **state)
{
    enum { N = 150, D = 12, C = 3, SETS = 4 };
    static float x[SETS][N * D], xs[N * D];
    int32_t lab[N];
    const double signal[SETS] = {0.0, 0.3, 0.6, 1.2};
    double raw[SETS], scaled[SETS];
    for (int k = 0; k < SETS; k++) {
        make_data(x[k], lab, N, D, C, signal[k], 80 + (uint64_t)k);
        raw[k] = logme_of(x[k], lab, N, D, C);
    }
    for (int k = 1; k < SETS; k++)
        assert_true(raw[k] > raw[k - 1]);
    const double scales[] = {1e-4, 0.05, 7.0, 1e4};
    for (int s = 0; s < 4; s++) {
        for (int k = 0; k < SETS; k++) {
            for (int i = 0; i < N * D; i++)
                xs[i] = (float)(x[k][i] * scales[s]);
            scaled[k] = logme_of(xs, lab, N, D, C);
        }
        for (int k = 1; k < SETS; k++)
            assert_true(scaled[k] > scaled[k - 1]);
    }
}

/* F -> F Q with a random orthogonal Q (Gram-Schmidt of a Gaussian matrix, written here),
 * and the rows shuffled with their labels. F Q is rounded to float: the score moved by
 * 2e-9 (bound 1e-7). */
static void logme_invariant_to_rotation_and_row_order(void **state)
{
    enum { N = 80, D = 9, C = 3 };
    float x[N * D], xr[N * D];
    int32_t lab[N], lab_r[N];
    double q[D * D];
    make_data(x, lab, N, D, C, 0.8, 91);
    uint64_t rng = 92;
    for (int i = 0; i < D * D; i++)
        q[i] = gaussian(&rng);
    for (int j = 0; j < D; j++) { /* columns of q orthonormal (modified Gram-Schmidt) */
        for (int k = 0; k < j; k++) {
            double dot = 0;
            for (int i = 0; i < D; i++)
                dot += q[i * D + j] * q[i * D + k];
            for (int i = 0; i < D; i++)
                q[i * D + j] -= dot * q[i * D + k];
        }
        double norm = 0;
        for (int i = 0; i < D; i++)
            norm += q[i * D + j] * q[i * D + j];
        for (int i = 0; i < D; i++)
            q[i * D + j] /= sqrt(norm);
    }
    int perm[N];
    for (int i = 0; i < N; i++)
        perm[i] = i;
    for (int i = N - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)(uniform(&rng) * (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < N; i++) {
        lab_r[i] = lab[perm[i]];
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int k = 0; k < D; k++)
                s += (double)x[perm[i] * D + k] * q[k * D + j];
            xr[i * D + j] = (float)s;
        }
    }
    const double base = logme_of(x, lab, N, D, C), got = logme_of(xr, lab_r, N, D, C);
    printf("logme rotated and shuffled: %.12f vs %.12f (change %.2g)\n", got, base, got - base);
    assert_close(got, base, 1e-7);
}

static void logme_bad_arguments(void **state)
{
    const float x[6] = {1, 2, 3, 4, 5, 6};
    const int32_t lab[3] = {0, 1, 2}, missing[3] = {0, 0, 2};
    double s;
    assert_int_equal(graft__logme(x, lab, 3, 2, 2, &s), GRAFT_E_INVALID_ARG);     /* label 2 */
    assert_int_equal(graft__logme(x, missing, 3, 2, 3, &s), GRAFT_E_INVALID_ARG); /* no class 1 */
    assert_int_equal(graft__logme(NULL, lab, 3, 2, 3, &s), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__logme(x, lab, 0, 2, 3, &s), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__logme(x, lab, 3, 2, 3, &s), GRAFT_OK);
}

/* ---- linear probe ------------------------------------------------------------ */

enum { PN = 90, PD = 4, PC = 3 };

/* Separable-ish data with columns of different scales and offsets (tests the folding). */
static void probe_data(float *x, int32_t *y)
{
    const double scale[PD] = {1.0, 3.0, 0.5, 2.0}, offset[PD] = {0.5, -2.0, 1.0, 0.0};
    make_data(x, y, PN, PD, PC, 1.2, 41);
    for (int i = 0; i < PN; i++)
        for (int j = 0; j < PD; j++)
            x[i * PD + j] = (float)(x[i * PD + j] * scale[j] + offset[j]);
}

static void column_stats(const float *x, int64_t n, int64_t d, double *mu, double *sd)
{
    for (int64_t j = 0; j < d; j++) {
        double s = 0, q = 0;
        for (int64_t i = 0; i < n; i++)
            s += x[i * d + j];
        mu[j] = s / (double)n;
        for (int64_t i = 0; i < n; i++)
            q += (x[i * d + j] - mu[j]) * (x[i * d + j] - mu[j]);
        sd[j] = sqrt(q / (double)n);
    }
}

/* Gradient of 1/n sum CE(x W + b) + l2/2 sum_j (sd_j W_j)^2 in raw coordinates. */
static double raw_gradient_norm(const float *x, const int32_t *y, const float *w, const float *b,
                                const double *sd, double l2)
{
    double gw[PD * PC] = {0}, gb[PC] = {0};
    for (int i = 0; i < PN; i++) {
        double z[PC], mx = -INFINITY, sum = 0;
        for (int k = 0; k < PC; k++) {
            z[k] = b[k];
            for (int j = 0; j < PD; j++)
                z[k] += (double)x[i * PD + j] * w[j * PC + k];
            mx = fmax(mx, z[k]);
        }
        for (int k = 0; k < PC; k++)
            sum += exp(z[k] - mx);
        for (int k = 0; k < PC; k++) {
            const double r = (exp(z[k] - mx) / sum - (y[i] == k)) / PN;
            gb[k] += r;
            for (int j = 0; j < PD; j++)
                gw[j * PC + k] += x[i * PD + j] * r;
        }
    }
    double norm = 0;
    for (int j = 0; j < PD; j++)
        for (int k = 0; k < PC; k++) {
            const double g = gw[j * PC + k] + l2 * sd[j] * sd[j] * w[j * PC + k];
            norm += g * g;
        }
    for (int k = 0; k < PC; k++)
        norm += gb[k] * gb[k];
    return sqrt(norm);
}

static void probe_stationary_on_raw_features(void **state)
{
    float x[PN * PD], w[PD * PC], b[PC];
    int32_t y[PN];
    double mu[PD], sd[PD];
    probe_data(x, y);
    column_stats(x, PN, PD, mu, sd);
    const double l2s[3] = {1e-3, 0.05, 1.0};
    for (int q = 0; q < 3; q++) {
        double loss = -1;
        assert_int_equal(graft__linear_probe_fit(x, y, PN, PD, PC, l2s[q], 500, w, b, &loss),
                         GRAFT_OK);
        const double gn = raw_gradient_norm(x, y, w, b, sd, l2s[q]);
        printf("probe l2 %g: loss %.10f, raw gradient norm %.3g\n", l2s[q], loss, gn);
        assert_true(gn < 1e-5);
        assert_true(loss > 0 && loss < log((double)PC));
    }
}

/* Plain gradient descent on the standardised problem, folded like the library does. */
static void probe_matches_gradient_descent(void **state)
{
    float x[PN * PD], w[PD * PC], b[PC];
    int32_t y[PN];
    double mu[PD], sd[PD], z[PN * PD];
    double v[PD * PC] = {0}, c[PC] = {0};
    const double l2 = 0.05;
    probe_data(x, y);
    column_stats(x, PN, PD, mu, sd);
    for (int i = 0; i < PN; i++)
        for (int j = 0; j < PD; j++)
            z[i * PD + j] = (x[i * PD + j] - mu[j]) / sd[j];
    /* Lipschitz bound: softmax Hessian <= 1/2 times |[Z 1]|^2 / n <= (d + 1), plus l2. */
    const double step = 1.0 / (0.5 * (PD + 1) + l2);
    double loss = 0;
    for (int it = 0; it < 100000; it++) {
        double gv[PD * PC] = {0}, gc[PC] = {0};
        loss = 0;
        for (int i = 0; i < PN; i++) {
            double t[PC], mx = -INFINITY, sum = 0;
            for (int k = 0; k < PC; k++) {
                t[k] = c[k];
                for (int j = 0; j < PD; j++)
                    t[k] += z[i * PD + j] * v[j * PC + k];
                mx = fmax(mx, t[k]);
            }
            for (int k = 0; k < PC; k++)
                sum += exp(t[k] - mx);
            loss += mx + log(sum) - t[y[i]];
            for (int k = 0; k < PC; k++) {
                const double r = (exp(t[k] - mx) / sum - (y[i] == k)) / PN;
                gc[k] += r;
                for (int j = 0; j < PD; j++)
                    gv[j * PC + k] += z[i * PD + j] * r;
            }
        }
        loss /= PN;
        for (int j = 0; j < PD * PC; j++) {
            loss += 0.5 * l2 * v[j] * v[j];
            v[j] -= step * (gv[j] + l2 * v[j]);
        }
        for (int k = 0; k < PC; k++)
            c[k] -= step * gc[k];
    }
    double final_loss;
    assert_int_equal(graft__linear_probe_fit(x, y, PN, PD, PC, l2, 500, w, b, &final_loss),
                     GRAFT_OK);
    assert_close(final_loss, loss, 1e-9);
    for (int k = 0; k < PC; k++) {
        double bias = c[k];
        for (int j = 0; j < PD; j++) {
            const double wr = v[j * PC + k] / sd[j];
            assert_close(w[j * PC + k], wr, 1e-4);
            bias -= mu[j] * wr;
        }
        assert_close(b[k], bias, 1e-4);
    }
}

/* More features than rows (the fit's row-space path): the result must be stationary
 * for the full d-dimensional objective, checked in double on the standardised
 * features, so nothing was lost in the reduction. */
enum { WN = 14, WD = 40, WC = 3 };
static void probe_wide_features_reach_the_full_optimum(void **state)
{
    float x[WN * WD], w[WD * WC], b[WC];
    int32_t y[WN];
    double mu[WD], sd[WD];
    make_data(x, y, WN, WD, WC, 0.8, 7);
    column_stats(x, WN, WD, mu, sd);
    const double l2s[2] = {0.01, 1.0};
    for (int q = 0; q < 2; q++) {
        double loss = -1;
        assert_int_equal(graft__linear_probe_fit(x, y, WN, WD, WC, l2s[q], 2000, w, b, &loss),
                         GRAFT_OK);
        /* Back to standardised coordinates: V = W sd, c = b + mu . W. */
        double gv[WD * WC] = {0}, gc[WC] = {0}, objective = 0, pen = 0;
        for (int i = 0; i < WN; i++) {
            double t[WC], mx = -INFINITY, sum = 0;
            for (int k = 0; k < WC; k++) {
                t[k] = b[k];
                for (int j = 0; j < WD; j++)
                    t[k] += (double)x[i * WD + j] * w[j * WC + k];
                mx = fmax(mx, t[k]);
            }
            for (int k = 0; k < WC; k++)
                sum += exp(t[k] - mx);
            objective += mx + log(sum) - t[y[i]];
            for (int k = 0; k < WC; k++) {
                const double r = (exp(t[k] - mx) / sum - (y[i] == k)) / WN;
                gc[k] += r;
                for (int j = 0; j < WD; j++)
                    gv[j * WC + k] += (x[i * WD + j] - mu[j]) / sd[j] * r;
            }
        }
        double norm = 0;
        for (int j = 0; j < WD; j++)
            for (int k = 0; k < WC; k++) {
                const double v = (double)w[j * WC + k] * sd[j];
                pen += v * v;
                const double g = gv[j * WC + k] + l2s[q] * v;
                norm += g * g;
            }
        for (int k = 0; k < WC; k++)
            norm += gc[k] * gc[k];
        objective = objective / WN + 0.5 * l2s[q] * pen;
        printf("wide probe l2 %g: loss %.10f (recomputed %.10f), gradient norm %.3g\n", l2s[q],
               loss, objective, sqrt(norm));
        assert_true(sqrt(norm) < 1e-5);
        assert_close(objective, loss, 1e-6);
    }
}

/* The warm-started path gives each penalty's own optimum, on both solver paths
 * (n > d and the row space). */
static void probe_path_matches_separate_fits(void **state)
{
    static float x[WN * WD], wp[3 * WD * WC], w1[WD * WC];
    float bp[3 * WC], b1[WC];
    int32_t y[WN];
    const double l2s[3] = {3.0, 0.3, 0.03};
    const int64_t dims[2] = {WD, 5}; /* d > n, then d < n on the first 5 columns */
    make_data(x, y, WN, WD, WC, 0.8, 11);
    for (int c = 0; c < 2; c++) {
        const int64_t d = dims[c];
        static float xd[WN * WD];
        for (int i = 0; i < WN; i++)
            memcpy(xd + i * d, x + i * WD, sizeof(float) * (size_t)d);
        double lp[3], l1;
        assert_int_equal(graft__linear_probe_fit_path(xd, y, WN, d, WC, l2s, 3, 2000, wp, bp, lp),
                         GRAFT_OK);
        for (int g = 0; g < 3; g++) {
            assert_int_equal(graft__linear_probe_fit(xd, y, WN, d, WC, l2s[g], 2000, w1, b1, &l1),
                             GRAFT_OK);
            assert_close(lp[g], l1, 1e-9);
            for (int64_t j = 0; j < d * WC; j++)
                assert_close(wp[g * d * WC + j], w1[j], 1e-4 * (1.0 + fabs(w1[j])));
            for (int k = 0; k < WC; k++)
                assert_close(bp[g * WC + k], b1[k], 1e-4 * (1.0 + fabs(b1[k])));
        }
    }
}

static void probe_constant_column_and_args(void **state)
{
    float x[PN * PD], w[PD * PC], b[PC];
    int32_t y[PN];
    double loss;
    probe_data(x, y);
    for (int i = 0; i < PN; i++)
        x[i * PD + 2] = 7.0f; /* constant: gets weight 0 */
    assert_int_equal(graft__linear_probe_fit(x, y, PN, PD, PC, 0.1, 500, w, b, &loss), GRAFT_OK);
    for (int k = 0; k < PC; k++)
        assert_close(w[2 * PC + k], 0.0, 1e-12);
    y[3] = PC;
    assert_int_equal(graft__linear_probe_fit(x, y, PN, PD, PC, 0.1, 500, w, b, &loss),
                     GRAFT_E_INVALID_ARG);
    y[3] = 0;
    assert_int_equal(graft__linear_probe_fit(x, y, PN, PD, PC, -1.0, 500, w, b, &loss),
                     GRAFT_E_INVALID_ARG);
    const double grid[2] = {0.1, 1.0};
    double best;
    assert_int_equal(graft__linear_probe_cv(x, y, PN, PD, PC, 1, grid, 2, 1, &best, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__linear_probe_cv(x, y, PN, PD, PC, 3, grid, 0, 1, &best, NULL),
                     GRAFT_E_INVALID_ARG);
}

/* Few rows, many pure-noise columns: only heavy shrinkage generalises. Many rows, few
 * informative columns: little penalty is needed. */
static void probe_cv_choice_and_determinism(void **state)
{
    const double grid[6] = {1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0};
    enum { NA = 300, DA = 3, NB = 40, DB = 200 };
    static float xa[NA * DA], xb[NB * DB];
    static int32_t ya[NA], yb[NB];
    make_data(xa, ya, NA, DA, 3, 1.5, 51);
    uint64_t rng = 52;
    for (int i = 0; i < NB; i++) {
        yb[i] = i % 2;
        for (int j = 0; j < DB; j++)
            xb[i * DB + j] = (float)(gaussian(&rng) + (j < 2 ? (yb[i] ? 1.2 : -1.2) : 0.0));
    }
    double best_a, acc_a, best_b, acc_b, best_b2, acc_b2;
    assert_int_equal(graft__linear_probe_cv(xa, ya, NA, DA, 3, 5, grid, 6, 7, &best_a, &acc_a),
                     GRAFT_OK);
    assert_int_equal(graft__linear_probe_cv(xb, yb, NB, DB, 2, 5, grid, 6, 7, &best_b, &acc_b),
                     GRAFT_OK);
    assert_int_equal(graft__linear_probe_cv(xb, yb, NB, DB, 2, 5, grid, 6, 7, &best_b2, &acc_b2),
                     GRAFT_OK);
    printf("cv: n=%d d=%d -> l2 %g (acc %.3f); n=%d d=%d -> l2 %g (acc %.3f)\n", NA, DA, best_a,
           acc_a, NB, DB, best_b, acc_b);
    assert_true(best_b > best_a);
    assert_true(best_b >= 1.0);
    assert_true(acc_a > 0.7);
    assert_true(best_b == best_b2 && acc_b == acc_b2);
}

/* ---- out of memory -------------------------------------------------------------- */

static int mallocs_left, live_blocks;
static void *failing_malloc(size_t bytes)
{
    if (mallocs_left-- <= 0)
        return NULL;
    void *p = malloc(bytes);
    live_blocks += p != NULL;
    return p;
}
static void *plain_realloc(void *p, size_t bytes)
{
    return realloc(p, bytes);
}
static void counting_free(void *p)
{
    live_blocks -= p != NULL;
    free(p);
}

/* Failing the k-th allocation gives GRAFT_E_NOMEM and frees everything, for every k
 * until the calls succeed. */
static void probe_out_of_memory(void **state)
{
    float x[PN * PD];
    int32_t y[PN];
    const double grid[2] = {0.1, 1.0};
    probe_data(x, y);
    const graft_allocator failing = {failing_malloc, plain_realloc, counting_free};
    for (int which = 0; which < 3; which++) {
        int k = 0;
        for (;; k++) {
            double out = 0, out2 = 0;
            mallocs_left = k;
            live_blocks = 0;
            graft_set_allocator(&failing);
            graft_status rc;
            if (which == 0)
                rc = graft__logme(x, y, PN, PD, PC, &out);
            else if (which == 1)
                rc = graft__logme(x, y, 3, PD, PC, &out); /* the n < d path */
            else
                rc = graft__linear_probe_cv(x, y, PN, PD, PC, 3, grid, 2, 5, &out, &out2);
            graft_set_allocator(NULL);
            assert_int_equal(live_blocks, 0);
            if (rc == GRAFT_OK)
                break;
            assert_int_equal(rc, GRAFT_E_NOMEM);
        }
        assert_true(k > 2);
    }
}

/* ---- optional timing ---------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void probe_bench(void **state)
{
    if (!getenv("GRAFT_PROBE_BENCH"))
        skip();
    enum { N = 1000, D = 576, C = 10 };
    float *x = malloc((size_t)N * D * sizeof(float));
    float *w = malloc((size_t)D * C * sizeof(float));
    float b[C];
    int32_t y[N];
    make_data(x, y, N, D, C, 0.3, 61);
    for (int i = 0; i < N * D; i++)
        x[i] = fmaxf(x[i], 0.0f); /* ReLU-like features */
    double score, loss, t0 = now();
    assert_int_equal(graft__logme(x, y, N, D, C, &score), GRAFT_OK);
    double t1 = now();
    assert_int_equal(graft__linear_probe_fit(x, y, N, D, C, 1e-2, 1000, w, b, &loss), GRAFT_OK);
    double t2 = now();
    printf("bench n=%d d=%d c=%d: logme %.3f s (score %.6f), probe fit l2=1e-2 %.3f s (loss %.6f)\n",
           N, D, C, t1 - t0, score, t2 - t1, loss);
    free(x);
    free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(logme_evidence_matches_direct),
        cmocka_unit_test(logme_maximises_evidence),
        cmocka_unit_test(logme_ranks_good_over_bad_scale_free),
        cmocka_unit_test(direct_evidence_absorbs_global_scale),
        cmocka_unit_test(logme_invariant_to_global_scale),
        cmocka_unit_test(logme_ranking_survives_common_scale),
        cmocka_unit_test(logme_invariant_to_rotation_and_row_order),
        cmocka_unit_test(logme_bad_arguments),
        cmocka_unit_test(probe_stationary_on_raw_features),
        cmocka_unit_test(probe_matches_gradient_descent),
        cmocka_unit_test(probe_wide_features_reach_the_full_optimum),
        cmocka_unit_test(probe_path_matches_separate_fits),
        cmocka_unit_test(probe_constant_column_and_args),
        cmocka_unit_test(probe_cv_choice_and_determinism),
        cmocka_unit_test(probe_out_of_memory),
        cmocka_unit_test(probe_bench),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
