/* BLIS's own sgemm, loaded at run time with RTLD_LOCAL. BLIS and OpenBLAS both
 * export cblas_sgemm (and sgemm_): linked side by side, the loader would hand
 * graft's kernels whichever came first on the link line. Kept out of the symbol
 * table, BLIS is reached only through bli_sgemm here, and blis.h (whose CBLAS
 * declarations clash with OpenBLAS's cblas.h) is included by this file's .c alone. */
#ifndef GRAFT_BENCH_BLIS_SGEMM_H
#define GRAFT_BENCH_BLIS_SGEMM_H

#include <stddef.h>
#include <stdint.h>

/* Loads BLIS from `path` and sets its thread count (its OpenMP build). Returns
 * 0, with the loader's message in err, when the library or a symbol is missing. */
int bench_blis_open(const char *path, int threads, char *err, size_t err_n);

/* Row-major C(m, n) = A(m, k) @ B(k, n). */
void bench_blis_sgemm(int64_t m, int64_t n, int64_t k, const float *a, const float *b, float *c);

/* BLIS's version and the kernel configuration it picked for this CPU. */
void bench_blis_info(char *s, size_t n);

#endif
