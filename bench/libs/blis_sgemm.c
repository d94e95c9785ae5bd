#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

#include <blis.h>

#include "blis_sgemm.h"

/* The entry points, resolved once by bench_blis_open (a benchmark program's
 * single library handle, not library state). */
static struct {
    __typeof__(bli_sgemm) *sgemm;
    __typeof__(bli_thread_set_num_threads) *set_threads;
    __typeof__(bli_info_get_version_str) *version;
    __typeof__(bli_arch_query_id) *arch_id;
    __typeof__(bli_arch_string) *arch_string;
} blis;

int bench_blis_open(const char *path, int threads, char *err, size_t err_n)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, err_n, "%s", dlerror());
        return 0;
    }
    const char *names[] = {"bli_sgemm", "bli_thread_set_num_threads", "bli_info_get_version_str",
                           "bli_arch_query_id", "bli_arch_string"};
    void *syms[5];
    for (int i = 0; i < 5; i++)
        if (!(syms[i] = dlsym(h, names[i]))) {
            snprintf(err, err_n, "%s: no symbol %s", path, names[i]);
            return 0;
        }
    /* POSIX guarantees data and function pointers convert through dlsym. */
    *(void **)&blis.sgemm = syms[0];
    *(void **)&blis.set_threads = syms[1];
    *(void **)&blis.version = syms[2];
    *(void **)&blis.arch_id = syms[3];
    *(void **)&blis.arch_string = syms[4];
    blis.set_threads(threads);
    return 1;
}

void bench_blis_sgemm(int64_t m, int64_t n, int64_t k, const float *a, const float *b, float *c)
{
    float one = 1.0f, zero = 0.0f;
    /* BLIS takes non-const operands it does not write. */
    blis.sgemm(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, (float *)a, k, 1, (float *)b, n,
               1, &zero, c, n, 1);
}

void bench_blis_info(char *s, size_t n)
{
    snprintf(s, n, "BLIS %s, config %s", blis.version(), blis.arch_string(blis.arch_id()));
}
