#include <omp.h>

#include "graft.h"

/* OpenBLAS has its own pool; keep both at the same size so a GEMM and the
 * OpenMP kernels around it use the same cores. */
extern void openblas_set_num_threads(int threads);

void graft_set_threads(int threads)
{
    if (threads < 1)
        threads = omp_get_num_procs();
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
}

int graft_threads(void) { return omp_get_max_threads(); }
