/* Transferability estimation on a feature matrix (the math behind `graft probe`):
 * LogME and a standardised, L2-penalised multinomial logistic-regression probe.
 * Pure functions: features in, numbers out; nothing here touches a model.
 *
 * Feature matrices are row-major float (n, d); labels are int32 in [0, classes).
 * All arithmetic is double inside. Results are deterministic (no randomness
 * except the seeded fold split of graft__linear_probe_cv; BLAS sums may differ
 * in the last bits between thread counts). */
#ifndef GRAFT_TRAIN_PROBE_H
#define GRAFT_TRAIN_PROBE_H

#include <stdint.h>

#include "graft.h"

/* ---- LogME (You, Liu, Wang, Long, ICML 2021) -------------------------------
 *
 * For each class c, y = the one-hot column c (n values in {0, 1}) and the model is
 * Bayesian linear regression y = F w + e, w ~ N(0, alpha^-1 I_d), e ~ N(0, beta^-1 I_n)
 * on the RAW features (no centring or scaling). The maximised evidence is exactly
 * invariant to a global scale of F (alpha absorbs it), to F -> F Q for orthogonal Q
 * and to the order of the rows, but not to per-column scaling or centring: the prior
 * on w is isotropic (bench/probe_invariance measures what that does to the ranking
 * of cut layers). Its log evidence
 *
 *   L(alpha, beta) = log N(y | 0, beta^-1 I_n + alpha^-1 F F^T)
 *
 * is maximised over (alpha, beta) (the paper's MacKay fixed point
 *   gamma = sum_i beta s_i / (alpha + beta s_i),
 *   alpha <- gamma / |m|^2,  beta <- (n - gamma) / |F m - y|^2,
 * with m = beta (alpha I + beta F^T F)^-1 F^T y the posterior mean, safeguarded: see
 * graft__logme_maximize), all evaluated in the eigenbasis of F^T F (or of F F^T when
 * n < d), computed once for every class.
 * The score is mean_c L_c(alpha_c, beta_c) / n (higher = more transferable). */

/* The spectrum LogME needs, shared by all classes. With F = sum_i sqrt(s_i) u_i v_i^T
 * (thin SVD; s_i the k = min(n, d) eigenvalues of F^T F, those <= 1e-10 * s_max
 * dropped, so k <= min(n, d)):
 *   sigma[i] = s_i,  p2[c * k + i] = (u_i^T y_c)^2,  y2[c] = |y_c|^2 = count of class c. */
typedef struct graft__logme_spectrum {
    int64_t n, d, k, classes;
    double *sigma;  /* (k) */
    double *p2;     /* (classes, k) */
    double *y2;     /* (classes) */
} graft__logme_spectrum;

/* Fills *out (free with graft__logme_spectrum_free). Uses LAPACK dsyevd_ from the
 * OpenBLAS the library already links (declared by hand: graft has no LAPACKE). */
graft_status graft__logme_spectrum_compute(const float *features /* (n, d) */,
                                           const int32_t *labels /* (n) */, int64_t n, int64_t d,
                                           int64_t classes, graft__logme_spectrum *out);
void graft__logme_spectrum_free(graft__logme_spectrum *spec);

/* L(alpha, beta) (NOT divided by n) from the spectrum of one class:
 *   n/2 log beta + d/2 log alpha - n/2 log 2 pi - beta/2 |F m - y|^2 - alpha/2 |m|^2
 *   - 1/2 log det(alpha I_d + beta F^T F), with
 *   |m|^2 = sum_i beta^2 s_i p2_i / (alpha + beta s_i)^2,
 *   |F m - y|^2 = sum_i p2_i (alpha / (alpha + beta s_i))^2 + rest, rest = y2 - sum_i p2_i
 *   (taken as 0 below 1e-9 * y2: rounding of an exact 0 when F has full row rank),
 *   log det = sum_i log(alpha + beta s_i) + (d - k) log alpha. */
double graft__logme_evidence(const double *sigma, const double *p2, int64_t k, int64_t n,
                             int64_t d, double y2, double alpha, double beta);

/* max over (alpha, beta) of L; the optimum in *alpha, *beta (either may be NULL).
 * The paper's fixed point alone, started at alpha = beta = 1, can run off to the
 * degenerate alpha -> inf end far below the maximum (seen on n < d problems), so the
 * search is on the exact profile: with t = alpha / beta the best beta is n / E(t),
 *   E(t) = (y2 - sum p2) + sum_i p2_i t / (t + s_i),
 *   L(t) = n/2 log(n / E(t)) - n/2 - n/2 log 2 pi - 1/2 sum_i log(1 + s_i / t),
 * scanned over log t in [log s_min - 30, log s_max + 30] and refined by golden section;
 * the fixed point then polishes, and the paper's plain run is kept if it is better.
 * When the supremum lies at beta -> inf (y fitted exactly, possible when n <= d) the
 * value is that limit to ~1e-12 and *beta is huge. */
double graft__logme_maximize(const double *sigma, const double *p2, int64_t k, int64_t n,
                             int64_t d, double y2, double *alpha, double *beta);

/* The LogME score. Every class in [0, classes) must occur at least once
 * (GRAFT_E_INVALID_ARG otherwise: an absent class has no evidence to speak of). */
graft_status graft__logme(const float *features /* (n, d) */, const int32_t *labels /* (n) */,
                          int64_t n, int64_t d, int64_t classes, double *score);

/* Eigenvalues (ascending) into w and eigenvectors of the symmetric m x m matrix a
 * (row-major, upper triangle filled); on return row j of a is the eigenvector of
 * w[j]. LAPACK dsyevd. */
graft_status graft__sym_eigen(double *a, int64_t m, double *w);

/* ---- linear probe ------------------------------------------------------------
 *
 * Multinomial logistic regression on standardised features
 *   z_ij = (x_ij - mu_j) / s_j   (mu, s: per-column mean and population std of the
 *                                 n training rows; s_j = 1 where a column is constant),
 * minimising the penalised mean cross-entropy
 *   J(V, c) = 1/n sum_i [logsumexp(z_i V + c) - (z_i V + c)_{y_i}] + l2/2 |V|_F^2
 * (bias c not penalised) by L-BFGS (memory 10, backtracking Armijo line search,
 * c1 = 1e-4) from V = 0, c = 0, stopping when |grad J|_2 <= 1e-9, when a step lowers J
 * by no more than 1e-15 * max(1, J) (rounding level), or after max_iter iterations.
 *
 * The returned weights/bias apply to RAW features: the standardisation is folded in,
 *   weights[j, k] = V[j, k] / s_j,  bias[k] = c[k] - sum_j mu_j V[j, k] / s_j,
 * so logits = x @ weights + bias, ready for a Dense layer's kernel (d, classes) and bias.
 * When d > n the problem is solved exactly in the row space of z (the penalised
 * optimum is V = z^T A, and L-BFGS from 0 stays there): with z z^T = U L U^T, the
 * rows z' = U L^(1/2) (n, r) carry the same logits and the same penalty, so the fit
 * costs r <= n columns instead of d (eigen-directions under 1e-12 of the largest
 * are dropped).
 * *final_loss (may be NULL) is J at the solution (penalty included). l2 >= 0; with
 * l2 = 0 on separable data the weights grow until max_iter. */
graft_status graft__linear_probe_fit(const float *x /* (n, d) */, const int32_t *y /* (n) */,
                                     int64_t n, int64_t d, int64_t classes, double l2, int max_iter,
                                     float *weights /* (d, classes) */, float *bias /* (classes) */,
                                     double *final_loss);

/* The fit for each of l2s[0..n_l2) in that order, standardising (and reducing to
 * the row space) once, each solve warm-started from the previous optimum (the
 * objective is strictly convex for l2 > 0, so only the iterations change; order the
 * penalties from large to small for the fewest). weights (n_l2, d, classes), bias
 * (n_l2, classes), final_loss (n_l2) or NULL. */
graft_status graft__linear_probe_fit_path(const float *x, const int32_t *y, int64_t n, int64_t d,
                                          int64_t classes, const double *l2s, int n_l2,
                                          int max_iter, float *weights, float *bias,
                                          double *final_loss);

/* The fold of each row (fold_of, n): each class's rows shuffled (seeded;
 * SplitMix64) and dealt round-robin to the folds, the count carried across classes
 * so fold sizes differ by at most one. order is scratch of n entries. */
void graft__stratified_folds(const int32_t *y, int64_t n, int64_t classes, int folds,
                             uint64_t seed, int64_t *order, int *fold_of);

/* Stratified k-fold cross-validation over l2_grid (graft__stratified_folds): each class's rows are shuffled
 * (seeded; SplitMix64) and dealt round-robin to the folds, continuing the count
 * across classes so fold sizes differ by at most one. Every (l2, fold) pair is fitted
 * with graft__linear_probe_fit (max_iter 1000) on the other folds and scored by
 * held-out accuracy; *best_l2 is the grid value with the best mean fold accuracy
 * (ties go to the larger l2), *cv_accuracy that mean. 2 <= folds <= n. */
graft_status graft__linear_probe_cv(const float *x, const int32_t *y, int64_t n, int64_t d,
                                    int64_t classes, int folds, const double *l2_grid, int n_grid,
                                    uint64_t seed, double *best_l2, double *cv_accuracy);

#endif
