#include "kernels/conv.h"

void graft_f32_bias_backward__ref(int64_t rows, int64_t c, int64_t c_start, int64_t c_end,
                                  const float *dout, float *dbias)
{
    for (int64_t k = c_start; k < c_end; k++) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; r++)
            sum += dout[r * c + k];
        dbias[k] += (float)sum;
    }
}

/* Channels per pass: the double accumulators stay in L1 while the rows stream. */
enum { BIAS_BLOCK = 256 };

void graft_f32_bias_backward__direct(int64_t rows, int64_t c, int64_t c_start, int64_t c_end,
                                     const float *dout, float *dbias)
{
    /* Doubles: the sum runs over N*H*W rows (100k for a 56x56 batch of 32),
     * where a float running sum would lose several digits. */
    double acc[BIAS_BLOCK];
    for (int64_t k0 = c_start; k0 < c_end; k0 += BIAS_BLOCK) {
        int64_t nk = c_end - k0 < BIAS_BLOCK ? c_end - k0 : BIAS_BLOCK;
        for (int64_t j = 0; j < nk; j++)
            acc[j] = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict d = dout + r * c + k0;
            for (int64_t j = 0; j < nk; j++)
                acc[j] += d[j];
        }
        for (int64_t j = 0; j < nk; j++)
            dbias[k0 + j] += (float)acc[j];
    }
}
