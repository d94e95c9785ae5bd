/* The worker side of bench/compare's protocol, shared by the bench programs'
 * --serve modes. A worker loads and warms up, prints one {"ready":...} line,
 * then answers each "round" line on stdin by timing one round and printing
 * {"seconds":[...]} (one entry per image batch or step), and stops at "quit" or
 * end of input. The driver alternates rounds between engines, so the worker
 * must do nothing between rounds: it blocks on stdin.
 */
#ifndef GRAFT_BENCH_SERVE_H
#define GRAFT_BENCH_SERVE_H

#include <stdio.h>
#include <string.h>
#include <time.h>

static inline double serve_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Announces that warm-up is done; extra is a JSON object body ("" for none). */
static inline void serve_ready(const char *extra)
{
    printf("{\"ready\":true%s%s}\n", extra[0] ? "," : "", extra);
    fflush(stdout);
}

/* Blocks for the next command: 1 for "round", 0 for "quit" or end of input. */
static inline int serve_next_round(void)
{
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 0;
    return strncmp(line, "round", 5) == 0;
}

static inline void serve_report(const double *seconds, long n)
{
    printf("{\"seconds\":[");
    for (long i = 0; i < n; i++)
        printf("%s%.6f", i ? "," : "", seconds[i]);
    printf("]}\n");
    fflush(stdout);
}

#endif
