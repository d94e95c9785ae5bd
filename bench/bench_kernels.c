/* Times the conv/pool kernels on MobileNetV2's layer shapes (batch 32, 224 input)
 * against their refs and against this machine's sgemm rate.
 *
 *   bench_kernels [filter]   only the rows whose name contains `filter`
 *
 * Fast kernels run on all graft_threads() threads; the refs run on the same
 * threads (rows or samples split between them), so the speed-up is per core. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "graft.h"
#include "kernels/conv.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *buf(int64_t n)
{
    float *p = graft__malloc_aligned((size_t)n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    uint32_t s = 12345u + (uint32_t)n;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = (float)(s >> 8) * (1.0f / 8388608.0f) - 1.0f;
    }
    return p;
}

typedef struct bench_case {
    const char *name;
    int kind;
    graft_conv_geom g;
    float *in, *kernel, *bias, *out, *scratch;
    float *priv; /* backward-weight refs: one private dkernel per thread */
} bench_case;

/* Backward kinds read `out` as dY and write (+=) `in` (dX) or `kernel` (dW). */
enum { CONV, DW, MAXPOOL, AVGPOOL, GAP, CONV_BWI, CONV_BWW, DW_BWI, DW_BWW, BIAS_BW, MAXPOOL_BW };

static int is_conv(int kind) { return kind == CONV || kind == CONV_BWI || kind == CONV_BWW; }
static int is_dw(int kind) { return kind == DW || kind == DW_BWI || kind == DW_BWW; }

static void run_fast(bench_case *b)
{
    const graft_conv_geom *g = &b->g;
    switch (b->kind) {
    case CONV:
        graft_f32_conv2d__gemm(g, b->in, b->kernel, b->bias, b->out, b->scratch);
        break;
    case DW:
        graft_f32_dwconv2d_parallel(g, b->in, b->kernel, b->bias, b->out);
        break;
    case MAXPOOL:
        graft_f32_maxpool2d_parallel(g, b->in, b->out);
        break;
    case AVGPOOL:
        graft_f32_avgpool2d_parallel(g, b->in, b->out);
        break;
    case GAP:
#pragma omp parallel
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t s = g->batch * t / nt, e = g->batch * (t + 1) / nt;
            graft_f32_global_avgpool__direct(g->in_h * g->in_w, g->in_c, s, e, b->in, b->out);
        }
        break;
    case CONV_BWI:
        graft_f32_conv2d_backward_input__gemm(g, b->out, b->kernel, b->in, b->scratch);
        break;
    case CONV_BWW:
        graft_f32_conv2d_backward_weight__gemm(g, b->in, b->out, b->kernel, b->scratch);
        break;
    case DW_BWI:
        graft_f32_dwconv2d_backward_input_parallel(g, b->out, b->kernel, b->in);
        break;
    case DW_BWW:
        graft_f32_dwconv2d_backward_weight_parallel(g, b->in, b->out, b->kernel);
        break;
    case BIAS_BW:
#pragma omp parallel
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t s = g->out_c * t / nt, e = g->out_c * (t + 1) / nt;
            graft_f32_bias_backward__direct(g->batch * g->out_h * g->out_w, g->out_c, s, e, b->out,
                                            b->bias);
        }
        break;
    case MAXPOOL_BW:
        graft_f32_maxpool2d_backward_parallel(g, b->kernel, b->out, b->in);
        break;
    }
}

static void run_ref(bench_case *b)
{
    const graft_conv_geom *g = &b->g;
    int64_t rows = g->batch * g->out_h;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t s = rows * t / nt, e = rows * (t + 1) / nt;
        int64_t ns = g->batch * t / nt, ne = g->batch * (t + 1) / nt;
        switch (b->kind) {
        case CONV: {
            /* The conv ref takes no range: give each thread a slice of the batch. */
            graft_conv_geom sub = *g;
            sub.batch = ne - ns;
            if (sub.batch > 0)
                graft_f32_conv2d__ref(&sub, b->in + ns * g->in_h * g->in_w * g->in_c, b->kernel,
                                      b->bias, b->out + ns * g->out_h * g->out_w * g->out_c);
            break;
        }
        case DW:
            graft_f32_dwconv2d__ref(g, s, e, b->in, b->kernel, b->bias, b->out);
            break;
        case MAXPOOL:
            graft_f32_maxpool2d__ref(g, s, e, b->in, b->out);
            break;
        case AVGPOOL:
            graft_f32_avgpool2d__ref(g, s, e, b->in, b->out);
            break;
        case GAP:
            graft_f32_global_avgpool__ref(g->in_h * g->in_w, g->in_c, ns, ne, b->in, b->out);
            break;
        case CONV_BWI:
        case CONV_BWW: {
            graft_conv_geom sub = *g;
            sub.batch = ne - ns;
            const float *x = b->in + ns * g->in_h * g->in_w * g->in_c;
            const float *dy = b->out + ns * g->out_h * g->out_w * g->out_c;
            if (sub.batch > 0 && b->kind == CONV_BWI)
                graft_f32_conv2d_backward_input__ref(&sub, dy, b->kernel,
                                                     b->in + ns * g->in_h * g->in_w * g->in_c);
            else if (sub.batch > 0)
                graft_f32_conv2d_backward_weight__ref(
                    &sub, x, dy, b->priv + t * g->kernel_h * g->kernel_w * g->in_c * g->out_c);
            break;
        }
        case DW_BWI:
            graft_f32_dwconv2d_backward_input__ref(g, g->batch * g->in_h * t / nt,
                                                   g->batch * g->in_h * (t + 1) / nt, b->out,
                                                   b->kernel, b->in);
            break;
        case DW_BWW:
            graft_f32_dwconv2d_backward_weight__ref(g, g->in_c * t / nt, g->in_c * (t + 1) / nt,
                                                    b->in, b->out, b->kernel);
            break;
        case BIAS_BW:
            graft_f32_bias_backward__ref(g->batch * g->out_h * g->out_w, g->out_c,
                                         g->out_c * t / nt, g->out_c * (t + 1) / nt, b->out, b->bias);
            break;
        case MAXPOOL_BW:
            graft_f32_maxpool2d_backward__ref(g, ns, ne, b->kernel, b->out, b->in);
            break;
        }
    }
}

static double flops(const bench_case *b)
{
    const graft_conv_geom *g = &b->g;
    double px = (double)g->batch * (double)g->out_h * (double)g->out_w;
    switch (b->kind) {
    case CONV:
    case CONV_BWI:
    case CONV_BWW:
        return 2.0 * px * (double)(g->kernel_h * g->kernel_w * g->in_c) * (double)g->out_c;
    case DW:
    case DW_BWI:
    case DW_BWW:
        return 2.0 * px * (double)(g->kernel_h * g->kernel_w) * (double)g->out_c;
    case BIAS_BW:
        return px * (double)g->out_c;
    case GAP:
        return (double)g->batch * (double)(g->in_h * g->in_w * g->in_c);
    default: /* one compare or add per window cell */
        return px * (double)(g->kernel_h * g->kernel_w) * (double)g->out_c;
    }
}

/* Bytes that must cross memory at least once: input, weights, output. */
static double bytes(const bench_case *b)
{
    const graft_conv_geom *g = &b->g;
    double in = (double)g->batch * (double)(g->in_h * g->in_w * g->in_c);
    double out = (double)g->batch * (double)(g->out_h * g->out_w * g->out_c);
    if (b->kind == GAP)
        out = (double)(g->batch * g->in_c);
    double w = is_conv(b->kind) ? (double)(g->kernel_h * g->kernel_w * g->in_c * g->out_c)
               : is_dw(b->kind) ? (double)(g->kernel_h * g->kernel_w * g->out_c)
                                : 0.0;
    if (b->kind == BIAS_BW)
        in = 0.0;
    if (b->kind == MAXPOOL_BW)
        in *= 2.0; /* reads X, updates dX */
    return 4.0 * (in + out + w);
}

/* Fastest of `reps` timed runs after one warm-up: the machine is shared (other
 * processes come and go), and the minimum is the least disturbed run. */
static double time_ms(void (*fn)(bench_case *), bench_case *b, int reps)
{
    double t[15];
    fn(b);
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        fn(b);
        t[i] = (now() - t0) * 1e3;
    }
    double best = t[0];
    for (int i = 1; i < reps; i++)
        best = t[i] < best ? t[i] : best;
    return best;
}

static double sgemm_gflops(void)
{
    const int n = 1024;
    float *a = buf((int64_t)n * n), *b = buf((int64_t)n * n), *c = buf((int64_t)n * n);
    double best = 1e30;
    for (int i = 0; i < 6; i++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = now() - t0;
        if (i > 0 && t < best)
            best = t;
    }
    graft__free_aligned(a), graft__free_aligned(b), graft__free_aligned(c);
    return 2.0 * n * n * n / best * 1e-9;
}

static bench_case make(const char *name, int kind, int64_t n, int64_t h, int64_t w, int64_t c,
                       int64_t co, int64_t k, int64_t s, int same)
{
    bench_case b = {.name = name, .kind = kind};
    b.g = (graft_conv_geom){.batch = n, .in_h = h, .in_w = w, .in_c = c, .out_c = co,
                            .kernel_h = k, .kernel_w = k, .stride_h = s, .stride_w = s,
                            .dilation_h = 1, .dilation_w = 1};
    if (kind == GAP) {
        b.g.out_h = b.g.out_w = 1;
        return b;
    }
    if (!graft_conv_geom_init(&b.g, same)) {
        fprintf(stderr, "bench_kernels: bad geometry for %s\n", name);
        exit(1);
    }
    return b;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : "";
    const int64_t N = 32;
    bench_case cases[] = {
        make("conv1 3x3s2 225x225x3->32", CONV, N, 225, 225, 3, 32, 3, 2, 0),
        make("pw 112x112x32->16", CONV, N, 112, 112, 32, 16, 1, 1, 1),
        make("pw 56x56x24->144", CONV, N, 56, 56, 24, 144, 1, 1, 1),
        make("pw 28x28x32->192", CONV, N, 28, 28, 32, 192, 1, 1, 1),
        make("pw 14x14x64->384", CONV, N, 14, 14, 64, 384, 1, 1, 1),
        make("pw 7x7x160->960", CONV, N, 7, 7, 160, 960, 1, 1, 1),
        make("pw 7x7x320->1280", CONV, N, 7, 7, 320, 1280, 1, 1, 1),
        make("conv 3x3s1 28x28x64->64", CONV, N, 28, 28, 64, 64, 3, 1, 1),
        make("dw 3x3s1 112x112x32", DW, N, 112, 112, 32, 32, 3, 1, 1),
        make("dw 3x3s2 113x113x96 valid", DW, N, 113, 113, 96, 96, 3, 2, 0),
        make("dw 3x3s1 56x56x144", DW, N, 56, 56, 144, 144, 3, 1, 1),
        make("dw 3x3s2 29x29x192 valid", DW, N, 29, 29, 192, 192, 3, 2, 0),
        make("dw 3x3s1 14x14x576", DW, N, 14, 14, 576, 576, 3, 1, 1),
        make("dw 3x3s1 7x7x960", DW, N, 7, 7, 960, 960, 3, 1, 1),
        make("maxpool 3x3s2 56x56x64 same", MAXPOOL, N, 56, 56, 64, 64, 3, 2, 1),
        make("avgpool 3x3s1 28x28x192 same", AVGPOOL, N, 28, 28, 192, 192, 3, 1, 1),
        make("global avg 7x7x1280", GAP, N, 7, 7, 1280, 1280, 7, 1, 0),
        make("bwd-in conv 3x3s1 28x28x64->64", CONV_BWI, N, 28, 28, 64, 64, 3, 1, 1),
        make("bwd-w conv 3x3s1 28x28x64->64", CONV_BWW, N, 28, 28, 64, 64, 3, 1, 1),
        make("bwd-in pw 56x56x24->144", CONV_BWI, N, 56, 56, 24, 144, 1, 1, 1),
        make("bwd-w pw 56x56x24->144", CONV_BWW, N, 56, 56, 24, 144, 1, 1, 1),
        make("bwd-in pw 7x7x320->1280", CONV_BWI, N, 7, 7, 320, 1280, 1, 1, 1),
        make("bwd-w pw 7x7x320->1280", CONV_BWW, N, 7, 7, 320, 1280, 1, 1, 1),
        make("bwd-bias 56x56x144", BIAS_BW, N, 56, 56, 144, 144, 1, 1, 1),
        make("bwd-in dw 3x3s1 56x56x144", DW_BWI, N, 56, 56, 144, 144, 3, 1, 1),
        make("bwd-w dw 3x3s1 56x56x144", DW_BWW, N, 56, 56, 144, 144, 3, 1, 1),
        make("bwd-in dw 3x3s2 113x113x96", DW_BWI, N, 113, 113, 96, 96, 3, 2, 0),
        make("bwd-w dw 3x3s2 113x113x96", DW_BWW, N, 113, 113, 96, 96, 3, 2, 0),
        make("bwd maxpool 3x3s2 56x56x64", MAXPOOL_BW, N, 56, 56, 64, 64, 3, 2, 1),
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);

    double peak = sgemm_gflops();
    printf("threads %d (OpenMP), sgemm 1024^3 %.1f GFLOP/s, batch %lld, im2col budget %zu KiB\n",
           graft_threads(), peak, (long long)N, GRAFT_CONV2D_IM2COL_BUDGET / 1024);
    printf("%-30s %9s %9s %8s %9s %8s %7s\n", "layer", "ms", "ref ms", "GFLOP/s", "speed-up",
           "of sgemm", "GB/s");
    for (int i = 0; i < ncases; i++) {
        bench_case *b = &cases[i];
        if (!strstr(b->name, filter))
            continue;
        const graft_conv_geom *g = &b->g;
        int64_t nin = g->batch * g->in_h * g->in_w * g->in_c;
        int64_t nout = b->kind == GAP ? g->batch * g->in_c : g->batch * g->out_h * g->out_w * g->out_c;
        b->in = buf(nin);
        b->out = buf(nout);
        int64_t nk = g->kernel_h * g->kernel_w * (is_conv(b->kind) ? g->in_c : 1) * g->out_c;
        if (is_conv(b->kind) || is_dw(b->kind) || b->kind == BIAS_BW) {
            b->kernel = buf(nk);
            b->bias = buf(g->out_c);
        }
        if (b->kind == MAXPOOL_BW)
            b->kernel = buf(nin); /* the forward input X */
        if (is_conv(b->kind)) {
            size_t sb = graft_f32_conv2d_scratch_bytes(g);
            b->scratch = sb ? graft__malloc_aligned(sb) : NULL;
        }
        if (b->kind == CONV_BWW)
            b->priv = buf(nk * graft_threads());
        double fast = time_ms(run_fast, b, 9);
        double ref = time_ms(run_ref, b, 1);
        double gf = flops(b) / fast * 1e-6;
        printf("%-30s %9.3f %9.1f %8.1f %8.1fx %7.1f%% %7.1f\n", b->name, fast, ref, gf, ref / fast,
               100.0 * gf / peak, bytes(b) / fast * 1e-6);
        fflush(stdout);
        graft__free_aligned(b->in), graft__free_aligned(b->out), graft__free_aligned(b->kernel);
        graft__free_aligned(b->bias), graft__free_aligned(b->scratch), graft__free_aligned(b->priv);
    }
    return 0;
}
