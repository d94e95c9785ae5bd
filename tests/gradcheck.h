/* Static helpers for finite-difference gradient checks: seeded values on an exact
 * grid, guarded gradient buffers and the comparison of analytic and numeric
 * gradients. Include after <cmocka.h>. */
#ifndef GRAFT_TESTS_GRADCHECK_H
#define GRAFT_TESTS_GRADCHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/random.h"

/* Every drawn value is a multiple of 2^-12, and steps are powers of two no
 * smaller than that, so x +- k*h is exact in float (|x| < 2^11): the step the
 * layer sees is exactly the step the difference quotient divides by. */
#define GC_GRID 4096.0

static inline float gc_uniform(uint64_t seed, uint64_t index, double lo, double hi)
{
    double u = graft__uniform(seed, index);
    return (float)(nearbyint((lo + (hi - lo) * u) * GC_GRID) / GC_GRID);
}

/* 64-byte aligned, size rounded up as aligned_alloc requires. */
static inline void *gc_aligned(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    assert_non_null(p);
    return p;
}

/* A float buffer of n with GC_GUARD floats of a sentinel on each side (64 bytes,
 * so the data stays 64-byte aligned); a write past either end shows up in
 * gc_guard_ok. */
enum { GC_GUARD = 16 };
#define GC_SENTINEL 0x7fa1b2c3u /* a quiet NaN no arithmetic produces */

static inline float *gc_guarded_new(int64_t n)
{
    size_t floats = (size_t)n + 2 * GC_GUARD;
    float *base = gc_aligned(sizeof(float) * floats);
    uint32_t s = GC_SENTINEL;
    for (size_t i = 0; i < floats; i++)
        memcpy(&base[i], &s, sizeof s);
    float *data = base + GC_GUARD;
    memset(data, 0, sizeof(float) * (size_t)n);
    return data;
}

static inline int gc_guard_ok(const float *data, int64_t n)
{
    uint32_t s = GC_SENTINEL, v;
    for (int64_t i = 0; i < GC_GUARD; i++) {
        memcpy(&v, data - GC_GUARD + i, sizeof v);
        if (v != s)
            return 0;
        memcpy(&v, data + n + i, sizeof v);
        if (v != s)
            return 0;
    }
    return 1;
}

static inline void gc_guarded_free(float *data)
{
    if (data)
        free(data - GC_GUARD);
}

/* The comparison of an analytic gradient a with a numeric one n over N values.
 * Criterion (both must hold):
 *   norm:    ||a - n||_2 <= GC_NORM_TOL * max(||a||_2, ||n||_2, sqrt(N) * 1e-3)
 *   element: |a_i - n_i| <= GC_ELEM_TOL * max(|a_i|, |n_i|, 0.1 * rms(n), 1e-3)
 * The norm bound is the tight one; the element bound (looser, floored at a tenth
 * of the tensor's RMS so float noise on near-zero entries does not count) catches
 * a single wrong entry that a large norm would hide. */
#define GC_NORM_TOL 1e-3
#define GC_ELEM_TOL 1e-2

typedef struct gc_cmp {
    double norm_ratio, worst_elem; /* each as a fraction of its tolerance's scale */
    int64_t worst_at;              /* element with the worst element error */
    double worst_a, worst_n;
    double norm_n;
    int pass;
} gc_cmp;

static inline gc_cmp gc_compare(const float *a, const double *n, int64_t count)
{
    gc_cmp c = {0};
    double d2 = 0, a2 = 0, n2 = 0;
    for (int64_t i = 0; i < count; i++) {
        double d = (double)a[i] - n[i];
        d2 += d * d;
        a2 += (double)a[i] * a[i];
        n2 += n[i] * n[i];
    }
    double rms = count ? sqrt(n2 / (double)count) : 0;
    double scale = fmax(fmax(sqrt(a2), sqrt(n2)), sqrt((double)count) * 1e-3);
    c.norm_ratio = sqrt(d2) / scale;
    c.norm_n = sqrt(n2);
    c.worst_elem = -1;
    for (int64_t i = 0; i < count; i++) {
        double floor_ = fmax(0.1 * rms, 1e-3);
        double e = fabs((double)a[i] - n[i]) / fmax(fmax(fabs((double)a[i]), fabs(n[i])), floor_);
        if (!(e <= c.worst_elem)) { /* NaN counts as worst */
            c.worst_elem = e;
            c.worst_at = i;
            c.worst_a = a[i];
            c.worst_n = n[i];
        }
    }
    if (count == 0)
        c.worst_elem = 0;
    c.pass = c.norm_ratio <= GC_NORM_TOL && c.worst_elem <= GC_ELEM_TOL;
    return c;
}

#endif
