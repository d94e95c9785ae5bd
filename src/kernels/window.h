/* Window arithmetic shared by the convolution kernels (private to kernels/). */
#ifndef GRAFT_KERNELS_WINDOW_H
#define GRAFT_KERNELS_WINDOW_H

#include <stdint.h>

/* Output index along one axis whose window puts tap k on input cell i, or -1. */
static inline int64_t graft__window_out_index(int64_t i, int64_t k, int64_t pad, int64_t s,
                                              int64_t d, int64_t out)
{
    int64_t num = i + pad - k * d;
    if (num < 0 || num % s != 0 || num / s >= out)
        return -1;
    return num / s;
}

#endif
