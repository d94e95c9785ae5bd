/* Row-major single-precision GEMM through OpenBLAS:
 * C(m,n) = alpha * op(A)(m,k) @ op(B)(k,n) + beta * C. */
#ifndef GRAFT_KERNELS_GEMM_H
#define GRAFT_KERNELS_GEMM_H

#include <stdint.h>

void graft_f32_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                    int64_t ldc);

/* The same product by a plain triple loop in double: the reference tests use. */
void graft_f32_gemm__ref(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                         float *c, int64_t ldc);

/* out[r, :] += bias for rows [0, rows). */
void graft_f32_add_bias_rows(float *out /* (rows, cols) */, const float *bias /* (cols) */,
                             int64_t rows, int64_t cols);

#endif
