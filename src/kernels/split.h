/* Private to src/kernels: how the _parallel wrappers cut a row range. */
#ifndef GRAFT_KERNELS_SPLIT_H
#define GRAFT_KERNELS_SPLIT_H

#include <stdint.h>

/* Contiguous, near-equal share of [0, n) for thread t of nt: neighbouring output
 * rows read overlapping input rows, so contiguous shares keep those in one cache. */
static inline void graft__split_range(int64_t n, int t, int nt, int64_t *start, int64_t *end)
{
    int64_t base = n / nt, extra = n % nt;
    *start = t * base + (t < extra ? t : extra);
    *end = *start + base + (t < extra ? 1 : 0);
}

#endif
