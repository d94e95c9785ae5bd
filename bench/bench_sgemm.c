/* The machine's fp32 matrix-multiply rate: OpenBLAS sgemm (the build graft
 * links) of N x N by N x N, after one warm-up call. bench/compare divides each
 * workload's FLOP rate by it to say how close to the ceiling an engine runs.
 *
 *   build/bench_sgemm [--n 2048] [--threads 2] [--reps 5]
 *   build/bench_sgemm --serve [--n 2048] [--threads 2] [--per-round 2]
 *
 * Prints the best and median GFLOP/s and one JSON line; --serve is bench/compare's
 * worker mode (bench/serve.h), each round timing --per-round calls.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"
#include "serve.h"

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void time_sgemm(int n, const float *a, const float *b, float *c, double *seconds, long reps)
{
    for (long r = 0; r < reps; r++) {
        double t0 = serve_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        seconds[r] = serve_now() - t0;
    }
}

int main(int argc, char **argv)
{
    long n = 2048, threads = 2, reps = 5;
    int serve = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--serve")) {
            serve = 1;
            continue;
        }
        if (i + 1 == argc) {
            fprintf(stderr, "bench_sgemm: '%s' needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--n"))
            n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps") || !strcmp(argv[i], "--per-round"))
            reps = atol(argv[i + 1]);
        else {
            fprintf(stderr, "bench_sgemm: unknown option '%s'\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (n < 16 || n > 16384 || reps < 1 || reps > 1000) {
        fprintf(stderr, "bench_sgemm: bad --n or --reps\n");
        return 2;
    }
    graft_set_threads((int)threads);
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(sizeof(float) * count), *b = malloc(sizeof(float) * count);
    float *c = malloc(sizeof(float) * count);
    double *seconds = malloc(sizeof(double) * (size_t)reps);
    if (!a || !b || !c || !seconds) {
        fprintf(stderr, "bench_sgemm: out of memory for n = %ld\n", n);
        return 1;
    }
    for (size_t i = 0; i < count; i++) {
        a[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
        b[i] = (float)((i * 40503u) % 1999) / 1000.0f - 1.0f;
    }
    double flop = 2.0 * (double)n * (double)n * (double)n;
    time_sgemm((int)n, a, b, c, seconds, 1); /* warm-up: thread start, page faults */
    if (serve) {
        char extra[96];
        snprintf(extra, sizeof extra, "\"threads\":%d,\"flop\":%.0f", graft_threads(), flop);
        serve_ready(extra);
        while (serve_next_round()) {
            time_sgemm((int)n, a, b, c, seconds, reps);
            serve_report(seconds, reps);
        }
    } else {
        time_sgemm((int)n, a, b, c, seconds, reps);
        qsort(seconds, (size_t)reps, sizeof *seconds, compare_doubles);
        double best = flop / seconds[0] * 1e-9, median = flop / seconds[reps / 2] * 1e-9;
        printf("sgemm %ldx%ldx%ld, %d threads: best %.1f GFLOP/s, median %.1f over %ld calls\n", n,
               n, n, graft_threads(), best, median, reps);
        printf("{\"bench\":\"sgemm\",\"n\":%ld,\"threads\":%d,\"gflops_best\":%.2f,"
               "\"gflops_median\":%.2f}\n",
               n, graft_threads(), best, median);
    }
    free(a);
    free(b);
    free(c);
    free(seconds);
    return 0;
}
