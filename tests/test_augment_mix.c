/* Batch-level mixup and cutmix, and the Gamma/Beta sampler under them: pixels
 * and soft targets checked against the exposed draw (partner permutation,
 * lambda, box), sampler moments against the closed forms. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/augment.h"
#include "graft.h"

static uint32_t lcg = 4242;
static float rnd(void)
{
    lcg = lcg * 1664525u + 1013904223u;
    return (float)((lcg >> 8) % 20001) / 10000.0f - 1.0f; /* preprocessed: -1 .. 1 */
}

static float *random_batch(int64_t n, int64_t h, int64_t w)
{
    float *x = malloc(sizeof(float) * (size_t)(n * h * w * 3));
    assert_non_null(x);
    for (int64_t i = 0; i < n * h * w * 3; ++i)
        x[i] = rnd();
    return x;
}

static float *copy_floats(const float *src, int64_t count)
{
    float *x = malloc(sizeof(float) * (size_t)count);
    assert_non_null(x);
    memcpy(x, src, sizeof(float) * (size_t)count);
    return x;
}

static void moments(const double *v, int n, double *mean, double *var)
{
    double s = 0, s2 = 0;
    for (int i = 0; i < n; ++i)
        s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; ++i)
        s2 += (v[i] - *mean) * (v[i] - *mean);
    *var = s2 / (n - 1);
}

/* ---- sampler ------------------------------------------------------------------ */

static void test_gamma_moments(void **state)
{
    (void)state;
    enum { N = 4000 };
    static double v[N];
    const double shapes[] = {0.4, 1, 3.5};
    for (size_t k = 0; k < 3; ++k) {
        const double a = shapes[k];
        for (int i = 0; i < N; ++i) {
            v[i] = graft__gamma_sample(a, (uint64_t)i + 1000 * k);
            assert_true(v[i] > 0 && isfinite(v[i]));
        }
        double mean, var;
        moments(v, N, &mean, &var);
        /* mean a and variance a; five standard errors */
        assert_float_equal(mean, a, 5 * sqrt(a / N));
        assert_float_equal(var, a, 0.1 * a + 0.05);
    }
}

static void test_beta_moments(void **state)
{
    (void)state;
    enum { N = 4000 };
    static double v[N];
    const struct {
        double a, b;
    } cases[] = {{0.4, 0.4}, {2, 5}, {1, 1}};
    for (size_t k = 0; k < 3; ++k) {
        const double a = cases[k].a, b = cases[k].b;
        for (int i = 0; i < N; ++i) {
            v[i] = graft__beta_sample(a, b, (uint64_t)i * 31 + k);
            assert_true(v[i] >= 0 && v[i] <= 1);
        }
        double mean, var;
        moments(v, N, &mean, &var);
        const double want_mean = a / (a + b);
        const double want_var = a * b / ((a + b) * (a + b) * (a + b + 1));
        assert_float_equal(mean, want_mean, 5 * sqrt(want_var / N));
        assert_float_equal(var, want_var, 0.1 * want_var);
    }
    /* alpha = 0.4 is U-shaped: P(x < 0.1 or x > 0.9) = 0.4795 (numerical integral) */
    int tails = 0;
    for (int i = 0; i < N; ++i) {
        const double x = graft__beta_sample(0.4, 0.4, (uint64_t)i);
        tails += x < 0.1 || x > 0.9;
    }
    assert_float_equal((double)tails / N, 0.4795, 0.04);
    /* tiny shapes: no 0/0 */
    for (uint64_t s = 0; s < 200; ++s) {
        const double x = graft__beta_sample(0.005, 0.005, s);
        assert_true(x >= 0 && x <= 1);
    }
    /* deterministic per seed, different across seeds */
    assert_true(graft__beta_sample(0.4, 0.4, 77) == graft__beta_sample(0.4, 0.4, 77));
    assert_true(graft__beta_sample(0.4, 0.4, 77) != graft__beta_sample(0.4, 0.4, 78));
}

static void test_partner_is_a_permutation(void **state)
{
    (void)state;
    int64_t partner[9], again[9];
    double lambda, lambda2;
    int first[4] = {0};
    int moved = 0;
    for (uint64_t s = 0; s < 4000; ++s) {
        assert_int_equal(graft__mixup_draw(9, 0.4, s, partner, &lambda), GRAFT_OK);
        int seen[9] = {0};
        for (int i = 0; i < 9; ++i) {
            assert_true(partner[i] >= 0 && partner[i] < 9);
            seen[partner[i]]++;
            moved += partner[i] != i;
        }
        for (int i = 0; i < 9; ++i)
            assert_int_equal(seen[i], 1);
        assert_true(lambda >= 0 && lambda <= 1);
        assert_int_equal(graft__mixup_draw(9, 0.4, s, again, &lambda2), GRAFT_OK);
        assert_memory_equal(partner, again, sizeof partner);
        assert_true(lambda == lambda2);
        int64_t four[4];
        assert_int_equal(graft__mixup_draw(4, 0.4, s, four, &lambda), GRAFT_OK);
        first[four[0]]++;
    }
    /* uniform: each of 4 first partners about 1000 times; 8 of 9 move on average */
    for (int k = 0; k < 4; ++k)
        assert_true(first[k] > 850 && first[k] < 1150);
    assert_float_equal((double)moved / 4000, 8, 0.15);
    /* alpha 0: lambda 1 */
    assert_int_equal(graft__mixup_draw(9, 0, 5, partner, &lambda), GRAFT_OK);
    assert_true(lambda == 1);
}

/* ---- mixup --------------------------------------------------------------------- */

static void check_targets_sum_to_one(const float *t, int64_t n, int64_t classes)
{
    for (int64_t i = 0; i < n; ++i) {
        double sum = 0;
        for (int64_t c = 0; c < classes; ++c) {
            assert_true(t[i * classes + c] >= 0);
            sum += t[i * classes + c];
        }
        assert_float_equal(sum, 1, 1e-6);
    }
}

static void test_mixup_pixels_and_targets(void **state)
{
    (void)state;
    enum { n = 7, h = 3, w = 5, classes = 6, image = h * w * 3 };
    const int32_t labels[n] = {0, 1, 2, 3, 4, 5, 2};
    for (uint64_t seed = 0; seed < 30; ++seed) {
        float *x = random_batch(n, h, w);
        float *orig = copy_floats(x, n * image);
        float t[n * classes];
        int64_t partner[n];
        double lambda;
        assert_int_equal(graft__mixup_draw(n, 0.4, seed, partner, &lambda), GRAFT_OK);
        assert_int_equal(graft__mixup_batch(x, labels, n, h, w, classes, 0.4, seed, t),
                         GRAFT_OK);
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t k = 0; k < image; ++k) {
                const double want =
                    lambda * orig[i * image + k] + (1 - lambda) * orig[partner[i] * image + k];
                assert_float_equal(x[i * image + k], want, 1e-6);
            }
            float want_t[classes] = {0};
            want_t[labels[i]] += (float)lambda;
            want_t[labels[partner[i]]] += (float)(1 - lambda);
            for (int64_t c = 0; c < classes; ++c)
                assert_float_equal(t[i * classes + c], want_t[c], 1e-6);
        }
        check_targets_sum_to_one(t, n, classes);
        free(x);
        free(orig);
    }
    /* alpha 0 is off: pixels untouched, one-hot targets */
    float *x = random_batch(n, h, w);
    float *orig = copy_floats(x, n * image);
    float t[n * classes];
    assert_int_equal(graft__mixup_batch(x, labels, n, h, w, classes, 0, 3, t), GRAFT_OK);
    assert_memory_equal(x, orig, sizeof(float) * n * image);
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < classes; ++c)
            assert_true(t[i * classes + c] == (c == labels[i] ? 1.0f : 0.0f));
    free(x);
    free(orig);
}

/* ---- cutmix -------------------------------------------------------------------- */

static void test_cutmix_pixels_and_lambda(void **state)
{
    (void)state;
    enum { n = 6, h = 16, w = 20, classes = 6, image = h * w * 3 };
    const int32_t labels[n] = {0, 1, 2, 3, 4, 5};
    int nonempty = 0;
    for (uint64_t seed = 0; seed < 60; ++seed) {
        float *x = random_batch(n, h, w);
        float *orig = copy_floats(x, n * image);
        float t[n * classes];
        int64_t partner[n];
        graft__cutmix_box box;
        const double alpha = seed % 2 ? 1.0 : 0.4;
        assert_int_equal(graft__cutmix_draw(n, h, w, alpha, seed, partner, &box), GRAFT_OK);
        assert_true(0 <= box.x0 && box.x0 <= box.x1 && box.x1 <= w);
        assert_true(0 <= box.y0 && box.y0 <= box.y1 && box.y1 <= h);
        const double area = (double)((box.x1 - box.x0) * (box.y1 - box.y0));
        assert_true(box.lambda == 1 - area / (h * w));
        nonempty += area > 0;
        assert_int_equal(graft__cutmix_batch(x, labels, n, h, w, classes, alpha, seed, t),
                         GRAFT_OK);
        for (int64_t i = 0; i < n; ++i) {
            const float *a = orig + i * image, *b = orig + partner[i] * image;
            int64_t kept = 0;
            for (int64_t y = 0; y < h; ++y)
                for (int64_t xx = 0; xx < w; ++xx) {
                    const int64_t k = (y * w + xx) * 3;
                    const int in_box = xx >= box.x0 && xx < box.x1 && y >= box.y0 && y < box.y1;
                    /* every pixel whole from exactly one image: b inside the box */
                    assert_memory_equal(x + i * image + k, in_box ? b + k : a + k,
                                        3 * sizeof(float));
                    kept += memcmp(x + i * image + k, a + k, 3 * sizeof(float)) == 0;
                }
            const double kept_fraction = (double)kept / (h * w);
            if (partner[i] != i) {
                /* random pixels never coincide: what is kept is exactly lambda */
                assert_float_equal(kept_fraction, box.lambda, 1e-12);
                assert_float_equal(t[i * classes + labels[i]], box.lambda, 1e-6);
                assert_float_equal(t[i * classes + labels[partner[i]]], 1 - box.lambda, 1e-6);
            } else {
                assert_int_equal(kept, h * w);
                assert_true(t[i * classes + labels[i]] == 1.0f);
            }
        }
        check_targets_sum_to_one(t, n, classes);
        free(x);
        free(orig);
    }
    assert_true(nonempty > 40);
}

/* The box sides are sqrt(1 - lambda) of the image's, truncated, and the box is
 * clipped at the border: it never covers more than 1 - lambda, so the adjusted
 * lambda is never below the drawn one (which mixup draws from the same seed). */
static void test_cutmix_lambda_follows_clipping(void **state)
{
    (void)state;
    const int64_t h = 10, w = 14;
    int64_t partner[3];
    graft__cutmix_box box;
    double raw_sum = 0, sum = 0;
    int clipped = 0;
    for (uint64_t seed = 0; seed < 2000; ++seed) {
        double lambda;
        assert_int_equal(graft__cutmix_draw(3, h, w, 1.0, seed, partner, &box), GRAFT_OK);
        assert_int_equal(graft__mixup_draw(3, 1.0, seed, partner, &lambda), GRAFT_OK);
        assert_true(box.lambda >= lambda - 1e-12);
        const int64_t bw = box.x1 - box.x0, bh = box.y1 - box.y0;
        assert_true(bw <= (int64_t)(w * sqrt(1 - lambda)) && bh <= (int64_t)(h * sqrt(1 - lambda)));
        clipped += box.x0 == 0 || box.y0 == 0 || box.x1 == w || box.y1 == h;
        raw_sum += lambda;
        sum += box.lambda;
    }
    /* Beta(1, 1): the drawn lambda is uniform, mean 1/2; clipping pushes it up */
    assert_float_equal(raw_sum / 2000, 0.5, 0.03);
    assert_true(clipped > 500 && sum / 2000 > raw_sum / 2000 + 0.05 && sum / 2000 < 0.9);
}

/* ---- any channel count, labels out (what training uses) ------------------------- */

/* Feature maps of c channels and vectors (h = w = 1): every value against the
 * exposed draw, the partners' labels, and lambda. */
static void test_mix_batch_feature_maps_and_vectors(void **state)
{
    (void)state;
    enum { n = 7 };
    const int32_t labels[n] = {4, 1, 2, 9, 0, 5, 2};
    const struct {
        int64_t h, w, c;
    } shapes[] = {{6, 5, 11}, {1, 1, 40}, {3, 4, 1}};
    for (size_t s = 0; s < 3; ++s) {
        const int64_t h = shapes[s].h, w = shapes[s].w, c = shapes[s].c, image = h * w * c;
        for (int kind = 0; kind < 2; ++kind) {
            if (kind == GRAFT__MIX_CUTMIX && h == 1)
                continue;
            for (uint64_t seed = 0; seed < 20; ++seed) {
                float *x = malloc(sizeof(float) * (size_t)(n * image));
                for (int64_t i = 0; i < n * image; ++i)
                    x[i] = rnd();
                float *orig = copy_floats(x, n * image);
                int64_t partner[n];
                int32_t partner_labels[n];
                double lambda = -1, want_lambda;
                graft__cutmix_box box = {0, 0, w, h, 0};
                if (kind == GRAFT__MIX_CUTMIX) {
                    assert_int_equal(graft__cutmix_draw(n, h, w, 1.0, seed, partner, &box),
                                     GRAFT_OK);
                    want_lambda = box.lambda;
                } else {
                    assert_int_equal(graft__mixup_draw(n, 0.4, seed, partner, &want_lambda),
                                     GRAFT_OK);
                }
                assert_int_equal(graft__mix_batch((graft__mix_kind)kind, x, labels, n, h, w, c,
                                                  kind ? 1.0 : 0.4, seed, partner_labels,
                                                  &lambda),
                                 GRAFT_OK);
                assert_true(lambda == want_lambda);
                for (int64_t i = 0; i < n; ++i) {
                    assert_int_equal(partner_labels[i], labels[partner[i]]);
                    const float *a = orig + i * image, *b = orig + partner[i] * image;
                    for (int64_t y = 0; y < h; ++y)
                        for (int64_t xx = 0; xx < w; ++xx)
                            for (int64_t ch = 0; ch < c; ++ch) {
                                const int64_t k = (y * w + xx) * c + ch;
                                const float got = x[i * image + k];
                                if (kind == GRAFT__MIX_MIXUP) {
                                    assert_float_equal(got, lambda * a[k] + (1 - lambda) * b[k],
                                                       1e-6);
                                } else {
                                    const int in_box = xx >= box.x0 && xx < box.x1 &&
                                                       y >= box.y0 && y < box.y1;
                                    assert_true(got == (in_box ? b[k] : a[k]));
                                }
                            }
                }
                free(x);
                free(orig);
            }
        }
    }
    /* three channels: the very same pixels as the soft-target functions give */
    enum { h = 4, w = 6, count = n * h * w * 3 };
    float *x = random_batch(n, h, w), *y = copy_floats(x, count), t[n * 10];
    int32_t partner_labels[n];
    double lambda;
    assert_int_equal(graft__mix_batch(GRAFT__MIX_CUTMIX, x, labels, n, h, w, 3, 1.0, 9,
                                      partner_labels, &lambda), GRAFT_OK);
    assert_int_equal(graft__cutmix_batch(y, labels, n, h, w, 10, 1.0, 9, t), GRAFT_OK);
    assert_memory_equal(x, y, sizeof(float) * count);
    free(x);
    free(y);
    /* bad arguments */
    float z[12] = {0};
    assert_int_equal(graft__mix_batch(GRAFT__MIX_MIXUP, z, labels, 2, 2, 1, 0, 0.4, 1,
                                      partner_labels, &lambda), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__mix_batch(GRAFT__MIX_MIXUP, z, labels, 2, 2, 1, 3, -1.0, 1,
                                      partner_labels, &lambda), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__mix_batch(GRAFT__MIX_MIXUP, z, labels, 2, 2, 1, 3, 0.4, 1, NULL,
                                      &lambda), GRAFT_E_INVALID_ARG);
}

/* ---- errors and memory ---------------------------------------------------------- */

static void test_mix_errors(void **state)
{
    (void)state;
    float x[2 * 2 * 2 * 3] = {0}, t[2 * 3];
    int32_t labels[2] = {0, 3};
    typedef graft_status (*mix_fn)(float *, const int32_t *, int64_t, int64_t, int64_t, int64_t,
                                   double, uint64_t, float *);
    const mix_fn fns[2] = {graft__mixup_batch, graft__cutmix_batch};
    for (int f = 0; f < 2; ++f) {
        assert_int_equal(fns[f](x, labels, 2, 2, 2, 3, 0.4, 1, t), GRAFT_E_INVALID_ARG);
        assert_non_null(strstr(graft_last_error(), "label 3"));
        labels[1] = 1;
        assert_int_equal(fns[f](x, labels, 2, 2, 2, 3, -0.4, 1, t), GRAFT_E_INVALID_ARG);
        assert_non_null(strstr(graft_last_error(), "alpha"));
        assert_int_equal(fns[f](x, labels, 2, 2, 2, 3, NAN, 1, t), GRAFT_E_INVALID_ARG);
        assert_int_equal(fns[f](x, labels, 2, 2, 2, 0, 0.4, 1, t), GRAFT_E_INVALID_ARG);
        assert_int_equal(fns[f](x, labels, 2, 0, 2, 3, 0.4, 1, t), GRAFT_E_INVALID_ARG);
        assert_int_equal(fns[f](NULL, labels, 2, 2, 2, 3, 0.4, 1, t), GRAFT_E_INVALID_ARG);
        assert_int_equal(fns[f](x, labels, 2, 2, 2, 3, 0.4, 1, NULL), GRAFT_E_INVALID_ARG);
        assert_int_equal(fns[f](x, labels, 0, 2, 2, 3, 0.4, 1, t), GRAFT_OK);
        assert_int_equal(fns[f](x, labels, 2, 2, 2, 3, 0.4, 1, t), GRAFT_OK);
        labels[1] = 3;
    }
}

static int mallocs_left;
static void *failing_malloc(size_t bytes)
{
    return mallocs_left-- > 0 ? malloc(bytes) : NULL;
}
static void *plain_realloc(void *p, size_t bytes)
{
    return realloc(p, bytes);
}

static void test_out_of_memory_leaves_batch(void **state)
{
    (void)state;
    enum { n = 5, h = 6, w = 6, classes = 3, count = n * h * w * 3 };
    const int32_t labels[n] = {0, 1, 2, 0, 1};
    float *x = random_batch(n, h, w);
    float *orig = copy_floats(x, count);
    float t[n * classes];
    const graft_allocator failing = {failing_malloc, plain_realloc, free};
    for (int f = 0; f < 2; ++f)
        for (int ok = 0;; ++ok) {
            mallocs_left = ok;
            graft_set_allocator(&failing);
            const graft_status rc =
                f ? graft__cutmix_batch(x, labels, n, h, w, classes, 1.0, 11, t)
                  : graft__mixup_batch(x, labels, n, h, w, classes, 1.0, 11, t);
            graft_set_allocator(NULL);
            if (rc == GRAFT_OK) {
                assert_true(ok >= 3); /* partner, saved region, cycle marks */
                memcpy(x, orig, sizeof(float) * count);
                break;
            }
            assert_int_equal(rc, GRAFT_E_NOMEM);
            assert_memory_equal(x, orig, sizeof(float) * count);
        }
    free(x);
    free(orig);
}

static void test_mix_deterministic(void **state)
{
    (void)state;
    enum { n = 8, h = 5, w = 7, classes = 4, count = n * h * w * 3 };
    const int32_t labels[n] = {0, 1, 2, 3, 0, 1, 2, 3};
    float *x = random_batch(n, h, w);
    float *a = copy_floats(x, count), *b = copy_floats(x, count), *c = copy_floats(x, count);
    float ta[n * classes], tb[n * classes], tc[n * classes];
    for (int f = 0; f < 2; ++f) {
        memcpy(a, x, sizeof(float) * count), memcpy(b, x, sizeof(float) * count);
        memcpy(c, x, sizeof(float) * count);
        graft_status (*fn)(float *, const int32_t *, int64_t, int64_t, int64_t, int64_t, double,
                           uint64_t, float *) = f ? graft__cutmix_batch : graft__mixup_batch;
        assert_int_equal(fn(a, labels, n, h, w, classes, 1.0, 5, ta), GRAFT_OK);
        assert_int_equal(fn(b, labels, n, h, w, classes, 1.0, 5, tb), GRAFT_OK);
        assert_int_equal(fn(c, labels, n, h, w, classes, 1.0, 6, tc), GRAFT_OK);
        assert_memory_equal(a, b, sizeof(float) * count);
        assert_memory_equal(ta, tb, sizeof ta);
        assert_memory_not_equal(a, c, sizeof(float) * count);
    }
    free(x), free(a), free(b), free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gamma_moments),
        cmocka_unit_test(test_beta_moments),
        cmocka_unit_test(test_partner_is_a_permutation),
        cmocka_unit_test(test_mixup_pixels_and_targets),
        cmocka_unit_test(test_cutmix_pixels_and_lambda),
        cmocka_unit_test(test_cutmix_lambda_follows_clipping),
        cmocka_unit_test(test_mix_batch_feature_maps_and_vectors),
        cmocka_unit_test(test_mix_errors),
        cmocka_unit_test(test_out_of_memory_leaves_batch),
        cmocka_unit_test(test_mix_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
