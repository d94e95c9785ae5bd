/* Row-major single-precision GEMM through OpenBLAS:
 * C(m,n) = alpha * op(A)(m,k) @ op(B)(k,n) + beta * C. */
#ifndef GRAFT_KERNELS_GEMM_H
#define GRAFT_KERNELS_GEMM_H

#include <stdint.h>

#include "kernels/activation.h"

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

/* ---- GEMM with a fused epilogue: inference's 1x1 convolutions ----------------
 * C(m, n) = act(A(m, k) @ B(k, n) + bias + R) for act linear, relu or relu6 and
 * an optional residual R (m, n), applied while each tile of C is in registers,
 * so C is written once and never read. Single-threaded: callers split the rows. */

/* Rows of C per register tile of the fast kernel. */
enum { GRAFT_GEMM_MR = 6 };
/* Columns of B per packed panel (two vectors: 16 with AVX2). */
int64_t graft_f32_gemm_panel_cols(void);

/* Floats of B and the bias packed for the fast kernel: panels of 2 vectors of
 * columns (the last one 1 or 2 vectors, zero-padded), the bias padded alike. */
int64_t graft_f32_gemm_packed_floats(int64_t k, int64_t n);
void graft_f32_gemm_pack(int64_t k, int64_t n, const float *b /* (k, n) */,
                         const float *bias /* (n) or NULL */,
                         float *packed /* graft_f32_gemm_packed_floats(k, n) */);

/* Naive: each value a double-precision dot product. */
void graft_f32_gemm_fused__ref(int64_t m, int64_t n, int64_t k, const float *a /* (m, lda) */,
                               int64_t lda, const float *b /* (k, n) */,
                               const float *bias /* (n) or NULL */, graft__activation act,
                               const float *res /* (m, ldr) or NULL */, int64_t ldr,
                               float *c /* (m, ldc) */, int64_t ldc);

/* Register tiles of GRAFT_GEMM_MR rows by one panel; reads and writes nothing
 * outside the (m, k), (m, n) views (the padding lives in `packed`). c must not
 * overlap a; it may be res (each value is read before it is written). */
void graft_f32_gemm_fused__packed(int64_t m, int64_t n, int64_t k, const float *a /* (m, lda) */,
                                  int64_t lda, const float *packed, graft__activation act,
                                  const float *res /* (m, ldr) or NULL */, int64_t ldr,
                                  float *c /* (m, ldc) */, int64_t ldc);

/* Columns [j_lo, j_hi) of the same product, for threads that split C by
 * columns: j_lo a multiple of graft_f32_gemm_panel_cols(), j_hi one too or n. */
void graft_f32_gemm_fused_cols__packed(int64_t m, int64_t n, int64_t k,
                                       const float *a /* (m, lda) */, int64_t lda,
                                       const float *packed, int64_t j_lo, int64_t j_hi,
                                       graft__activation act,
                                       const float *res /* (m, ldr) or NULL */, int64_t ldr,
                                       float *c /* (m, ldc) */, int64_t ldc);
#endif
