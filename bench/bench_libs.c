/* Which compute library for which kernel: graft's own kernels against OpenBLAS,
 * BLIS, oneDNN and XNNPACK on every 1x1 and depthwise 3x3 convolution shape of
 * MobileNetV2-224 at batch 32, NHWC float32, forward (bias + ReLU6 fused where
 * the library can) and backward (input and weight gradients, bias gradient
 * included), then the per-kind sums over the whole network, each shape counted
 * as often as it occurs.
 *
 *   bench_libs [--threads N] [--reps N] [--only fwd|bwd] [filter]
 *
 *   filter  only the shapes whose name contains it (totals are then partial)
 *
 * Every library's result is first held to graft's __ref kernels (double
 * accumulation): max |lib - ref| / max |ref| over the checked values, and the
 * program stops with status 1 above 1e-4. Forward and input-gradient outputs are
 * checked on the first and last sample of the batch (each sample's output
 * depends on that sample alone), weight and bias gradients whole.
 *
 * Times are of the compute call alone, median of --reps runs after a warm-up:
 * weight packing (graft, XNNPACK) and oneDNN's reorders into its preferred
 * layouts are done once outside the timing, as a network kept in those layouts
 * between layers would. Built only when libdnnl-dev, libxnnpack-dev and
 * libblis-openmp-dev are installed (scripts/setup --bench-deps). */
#define _GNU_SOURCE /* dladdr */
#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dnnl.h>
#include <xnnpack.h>

#include "core/alloc.h"
#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "libs/blis_sgemm.h"

enum { BATCH = 32, MAX_REPS = 31 };
static const double TOLERANCE = 1e-4;

/* ---- MobileNetV2's layers ------------------------------------------------- */

/* One 1x1 or depthwise 3x3 layer of Keras MobileNetV2 (alpha 1, 224x224): input
 * height (= width), channels in and out, stride, and the block it belongs to
 * (0 = expanded_conv, 17 = Conv_1), which decides what "train from block_11"
 * runs backward. Conv1 (3x3, 3->32) is neither kind and is left out. */
typedef struct layer {
    int dw;
    int64_t h, cin, cout, stride;
    int block;
} layer;

#define PW(h, ci, co, blk) {0, h, ci, co, 1, blk}
#define DW(h, c, s, blk) {1, h, c, c, s, blk}
static const layer NETWORK[] = {
    DW(112, 32, 1, 0),    PW(112, 32, 16, 0),
    PW(112, 16, 96, 1),   DW(112, 96, 2, 1),   PW(56, 96, 24, 1),
    PW(56, 24, 144, 2),   DW(56, 144, 1, 2),   PW(56, 144, 24, 2),
    PW(56, 24, 144, 3),   DW(56, 144, 2, 3),   PW(28, 144, 32, 3),
    PW(28, 32, 192, 4),   DW(28, 192, 1, 4),   PW(28, 192, 32, 4),
    PW(28, 32, 192, 5),   DW(28, 192, 1, 5),   PW(28, 192, 32, 5),
    PW(28, 32, 192, 6),   DW(28, 192, 2, 6),   PW(14, 192, 64, 6),
    PW(14, 64, 384, 7),   DW(14, 384, 1, 7),   PW(14, 384, 64, 7),
    PW(14, 64, 384, 8),   DW(14, 384, 1, 8),   PW(14, 384, 64, 8),
    PW(14, 64, 384, 9),   DW(14, 384, 1, 9),   PW(14, 384, 64, 9),
    PW(14, 64, 384, 10),  DW(14, 384, 1, 10),  PW(14, 384, 96, 10),
    PW(14, 96, 576, 11),  DW(14, 576, 1, 11),  PW(14, 576, 96, 11),
    PW(14, 96, 576, 12),  DW(14, 576, 1, 12),  PW(14, 576, 96, 12),
    PW(14, 96, 576, 13),  DW(14, 576, 2, 13),  PW(7, 576, 160, 13),
    PW(7, 160, 960, 14),  DW(7, 960, 1, 14),   PW(7, 960, 160, 14),
    PW(7, 160, 960, 15),  DW(7, 960, 1, 15),   PW(7, 960, 160, 15),
    PW(7, 160, 960, 16),  DW(7, 960, 1, 16),   PW(7, 960, 320, 16),
    PW(7, 320, 1280, 17),
};
enum { NLAYERS = (int)(sizeof NETWORK / sizeof NETWORK[0]), FIRST_TRAINED_BLOCK = 11 };

enum { FWD, BWD_DATA, BWD_W, NOPS };
static const char *const OP_NAMES[NOPS] = {"forward", "backward-data", "backward-weights"};

enum { L_GRAFT, L_OPENBLAS, L_BLIS, L_DNNL_NHWC, L_DNNL_ANY, L_XNNPACK, NLIBS };
static const char *const LIB_NAMES[NLIBS] = {"graft",       "OpenBLAS",   "BLIS",
                                             "oneDNN-nhwc", "oneDNN-any", "XNNPACK"};

/* A distinct layer shape, its count in the network and its results. */
typedef struct shape {
    int dw;
    int64_t h, cin, cout, stride;
    int count;
    char name[40];
    graft_conv_geom g;
    double ms[NOPS][NLIBS];     /* median; NAN: not run or not supported */
    double ms_min[NOPS][NLIBS]; /* fastest run: the least disturbed on a shared machine */
    double err[NOPS][NLIBS];
    char impl[NOPS][2][48]; /* oneDNN's implementation, nhwc and any */
} shape;

static int same_shape(const shape *s, const layer *l)
{
    return s->dw == l->dw && s->h == l->h && s->cin == l->cin && s->cout == l->cout &&
           s->stride == l->stride;
}

static int shape_of(const shape *shapes, int n, const layer *l)
{
    for (int i = 0; i < n; i++)
        if (same_shape(&shapes[i], l))
            return i;
    return -1;
}

static int collect_shapes(shape *shapes)
{
    int n = 0;
    for (int i = 0; i < NLAYERS; i++) {
        const layer *l = &NETWORK[i];
        int k = shape_of(shapes, n, l);
        if (k >= 0) {
            shapes[k].count++;
            continue;
        }
        shape *s = &shapes[n++];
        memset(s, 0, sizeof *s);
        *s = (shape){.dw = l->dw, .h = l->h, .cin = l->cin, .cout = l->cout, .stride = l->stride,
                     .count = 1};
        if (l->dw)
            snprintf(s->name, sizeof s->name, "dw s%lld %lldx%lldx%lld", (long long)l->stride,
                     (long long)l->h, (long long)l->h, (long long)l->cin);
        else
            snprintf(s->name, sizeof s->name, "1x1 %lldx%lld %lld->%lld", (long long)l->h,
                     (long long)l->h, (long long)l->cin, (long long)l->cout);
        s->g = (graft_conv_geom){.batch = BATCH, .in_h = l->h, .in_w = l->h, .in_c = l->cin,
                                 .out_c = l->cout, .kernel_h = l->dw ? 3 : 1,
                                 .kernel_w = l->dw ? 3 : 1, .stride_h = l->stride,
                                 .stride_w = l->stride, .dilation_h = 1, .dilation_w = 1};
        if (!graft_conv_geom_init(&s->g, 1)) {
            fprintf(stderr, "bench_libs: bad geometry for %s\n", s->name);
            exit(1);
        }
        for (int o = 0; o < NOPS; o++)
            for (int L = 0; L < NLIBS; L++)
                s->ms[o][L] = s->ms_min[o][L] = s->err[o][L] = NAN;
    }
    return n;
}

static double flops(const graft_conv_geom *g, int dw)
{
    double px = (double)g->batch * (double)(g->out_h * g->out_w);
    double macs = dw ? (double)(g->kernel_h * g->kernel_w * g->out_c)
                     : (double)(g->kernel_h * g->kernel_w * g->in_c * g->out_c);
    return 2.0 * px * macs;
}

/* ---- buffers ---------------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_floats(int64_t n)
{
    float *p = graft__malloc_aligned((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_libs: out of memory (%lld floats)\n", (long long)n);
        exit(1);
    }
    return p;
}

/* Uniform in [-scale, scale), from a seed of its own per buffer. */
static float *random_floats(int64_t n, uint32_t seed, float scale)
{
    float *p = alloc_floats(n);
    uint32_t s = seed * 2654435761u + 12345u;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = ((float)(s >> 8) * (1.0f / 8388608.0f) - 1.0f) * scale;
    }
    return p;
}

/* The tensors of one shape (Keras layouts: 1x1 kernel (1,1,cin,cout), depthwise
 * (3,3,C,1)) and the reference results the libraries are held to. */
typedef struct tensors {
    int64_t nx, ny, nw, cout;
    float *x, *w, *bias, *y, *dy, *dx, *dw, *db;
    float *y_ref, *dx_ref, *dw_ref, *db_ref; /* y_ref, dx_ref: samples 0 and N-1 */
} tensors;

static void tensors_init(tensors *t, const shape *s)
{
    const graft_conv_geom *g = &s->g;
    t->nx = g->batch * g->in_h * g->in_w * g->in_c;
    t->ny = g->batch * g->out_h * g->out_w * g->out_c;
    t->nw = g->kernel_h * g->kernel_w * (s->dw ? 1 : g->in_c) * g->out_c;
    t->cout = g->out_c;
    /* Weights scaled by fan-in so pre-activations spread over ReLU6's three parts. */
    float wscale = 3.0f / sqrtf((float)(g->kernel_h * g->kernel_w * (s->dw ? 1 : g->in_c)));
    t->x = random_floats(t->nx, 1, 1.0f);
    t->w = random_floats(t->nw, 2, wscale);
    t->bias = random_floats(t->cout, 3, 1.0f);
    t->dy = random_floats(t->ny, 4, 1.0f);
    t->y = alloc_floats(t->ny);
    t->dx = alloc_floats(t->nx);
    t->dw = alloc_floats(t->nw);
    t->db = alloc_floats(t->cout);
    t->y_ref = t->dx_ref = t->dw_ref = t->db_ref = NULL;
}

static void tensors_free(tensors *t)
{
    float *all[] = {t->x, t->w, t->bias, t->y, t->dy, t->dx, t->dw, t->db,
                    t->y_ref, t->dx_ref, t->dw_ref, t->db_ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        graft__free_aligned(all[i]);
}

/* ---- references (graft's __ref kernels) ---------------------------------- */

static float relu6(float v) { return v < 0.0f ? 0.0f : v > 6.0f ? 6.0f : v; }

/* Sample n's forward output into out (out_h, out_w, out_c). */
static void ref_forward_sample(const shape *s, const tensors *t, int64_t n, float *out)
{
    const graft_conv_geom *g = &s->g;
    const int64_t per_out = g->out_h * g->out_w * g->out_c;
    if (s->dw) {
        /* The dw ref writes rows of the whole batch: give it a one-sample batch. */
        graft_conv_geom one = *g;
        one.batch = 1;
        graft_f32_dwconv2d__ref(&one, 0, g->out_h, t->x + n * g->in_h * g->in_w * g->in_c, t->w,
                                t->bias, out);
    } else {
        graft_conv_geom one = *g;
        one.batch = 1;
        graft_f32_conv2d__ref(&one, t->x + n * g->in_h * g->in_w * g->in_c, t->w, t->bias, out);
    }
    for (int64_t i = 0; i < per_out; i++)
        out[i] = relu6(out[i]);
}

static void ref_backward_data_sample(const shape *s, const tensors *t, int64_t n, float *din)
{
    const graft_conv_geom *g = &s->g;
    graft_conv_geom one = *g;
    one.batch = 1;
    const float *dy = t->dy + n * g->out_h * g->out_w * g->out_c;
    memset(din, 0, sizeof(float) * (size_t)(g->in_h * g->in_w * g->in_c));
    if (s->dw)
        graft_f32_dwconv2d_backward_input__ref(&one, 0, g->in_h, dy, t->w, din);
    else
        graft_f32_conv2d_backward_input__ref(&one, dy, t->w, din);
}

/* Whole-batch weight and bias gradients, the batch (1x1) or the channels
 * (depthwise) split over the threads. */
static void ref_backward_weights(const shape *s, tensors *t, int threads)
{
    const graft_conv_geom *g = &s->g;
    t->dw_ref = alloc_floats(t->nw);
    t->db_ref = alloc_floats(t->cout);
    memset(t->dw_ref, 0, sizeof(float) * (size_t)t->nw);
    memset(t->db_ref, 0, sizeof(float) * (size_t)t->cout);
    float *priv = alloc_floats(t->nw * threads);
    memset(priv, 0, sizeof(float) * (size_t)(t->nw * threads));
#pragma omp parallel num_threads(threads)
    {
        int64_t i = omp_get_thread_num(), nt = omp_get_num_threads();
        if (s->dw) {
            graft_f32_dwconv2d_backward_weight__ref(g, g->in_c * i / nt, g->in_c * (i + 1) / nt,
                                                    t->x, t->dy, t->dw_ref);
        } else {
            int64_t n0 = g->batch * i / nt, n1 = g->batch * (i + 1) / nt;
            graft_conv_geom sub = *g;
            sub.batch = n1 - n0;
            if (sub.batch > 0)
                graft_f32_conv2d_backward_weight__ref(&sub, t->x + n0 * g->in_h * g->in_w * g->in_c,
                                                      t->dy + n0 * g->out_h * g->out_w * g->out_c,
                                                      priv + i * t->nw);
        }
        graft_f32_bias_backward__ref(g->batch * g->out_h * g->out_w, g->out_c,
                                     g->out_c * i / nt, g->out_c * (i + 1) / nt, t->dy, t->db_ref);
    }
    if (!s->dw)
        for (int i = 0; i < threads; i++)
            for (int64_t k = 0; k < t->nw; k++)
                t->dw_ref[k] += priv[i * t->nw + k];
    graft__free_aligned(priv);
}

static void ref_compute(const shape *s, tensors *t, int op, int threads)
{
    const graft_conv_geom *g = &s->g;
    const int64_t per_in = g->in_h * g->in_w * g->in_c, per_out = g->out_h * g->out_w * g->out_c;
    const int64_t samples[2] = {0, g->batch - 1};
    if (op == FWD) {
        t->y_ref = alloc_floats(2 * per_out);
#pragma omp parallel for num_threads(threads)
        for (int i = 0; i < 2; i++)
            ref_forward_sample(s, t, samples[i], t->y_ref + i * per_out);
    } else if (op == BWD_DATA) {
        t->dx_ref = alloc_floats(2 * per_in);
#pragma omp parallel for num_threads(threads)
        for (int i = 0; i < 2; i++)
            ref_backward_data_sample(s, t, samples[i], t->dx_ref + i * per_in);
    } else {
        ref_backward_weights(s, t, threads);
    }
}

/* max |a - ref| / max |ref| over n values. */
static double rel_err(const float *a, const float *ref, int64_t n)
{
    double md = 0.0, mr = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]), r = fabs((double)ref[i]);
        md = d > md ? d : md;
        mr = r > mr ? r : mr;
    }
    return mr > 0.0 ? md / mr : md;
}

static double check(const shape *s, const tensors *t, int op)
{
    const graft_conv_geom *g = &s->g;
    const int64_t per_in = g->in_h * g->in_w * g->in_c, per_out = g->out_h * g->out_w * g->out_c;
    const int64_t last = g->batch - 1;
    double e0, e1;
    if (op == FWD) {
        e0 = rel_err(t->y, t->y_ref, per_out);
        e1 = rel_err(t->y + last * per_out, t->y_ref + per_out, per_out);
    } else if (op == BWD_DATA) {
        e0 = rel_err(t->dx, t->dx_ref, per_in);
        e1 = rel_err(t->dx + last * per_in, t->dx_ref + per_in, per_in);
    } else {
        e0 = rel_err(t->dw, t->dw_ref, t->nw);
        e1 = rel_err(t->db, t->db_ref, t->cout);
    }
    return e0 > e1 ? e0 : e1;
}

/* ---- oneDNN --------------------------------------------------------------- */

static void dnnl_ok(dnnl_status_t st, const char *what)
{
    if (st != dnnl_success) {
        fprintf(stderr, "bench_libs: oneDNN %s failed (status %d)\n", what, (int)st);
        exit(1);
    }
}

/* One primitive argument: where the caller's buffer is and its layout. When the
 * primitive wants another layout, `lib` holds the data and `reorder` moves it
 * (caller -> lib for inputs, once at setup; lib -> caller for outputs, after
 * the checked run). */
typedef struct dnn_arg {
    int role, output;
    dnnl_memory_t user, lib;
    dnnl_primitive_t reorder;
} dnn_arg;

enum { DNN_MAX_ARGS = 5 };
typedef struct dnn_prim {
    dnnl_primitive_t prim;
    int nargs;
    dnn_arg a[DNN_MAX_ARGS];
    dnnl_exec_arg_t exec[DNN_MAX_ARGS];
} dnn_prim;

typedef struct dnn_ctx {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
} dnn_ctx;

static void dnn_exec(const dnn_ctx *c, dnnl_primitive_t p, int n, const dnnl_exec_arg_t *args)
{
    dnnl_ok(dnnl_primitive_execute(p, c->stream, n, args), "execute");
    dnnl_ok(dnnl_stream_wait(c->stream), "stream wait");
}

static void dnn_reorder(const dnn_ctx *c, dnnl_primitive_t r, dnnl_memory_t from, dnnl_memory_t to)
{
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    dnn_exec(c, r, 2, args);
}

static void dnn_add_arg(const dnn_ctx *c, dnn_prim *p, const_dnnl_primitive_desc_t pd, int role,
                        dnnl_query_t query, int index, const dnnl_memory_desc_t *user_md,
                        float *user, int output)
{
    dnn_arg *a = &p->a[p->nargs];
    memset(a, 0, sizeof *a);
    a->role = role;
    a->output = output;
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, query, index);
    dnnl_ok(dnnl_memory_create(&a->user, user_md, c->engine, user), "memory");
    dnnl_memory_t used = a->user;
    if (!dnnl_memory_desc_equal(want, user_md)) {
        dnnl_ok(dnnl_memory_create(&a->lib, want, c->engine, DNNL_MEMORY_ALLOCATE), "memory");
        dnnl_primitive_desc_t rpd;
        const dnnl_memory_desc_t *from = output ? want : user_md, *to = output ? user_md : want;
        dnnl_ok(dnnl_reorder_primitive_desc_create(&rpd, from, c->engine, to, c->engine, NULL),
                "reorder");
        dnnl_ok(dnnl_primitive_create(&a->reorder, rpd), "reorder primitive");
        dnnl_primitive_desc_destroy(rpd);
        if (!output)
            dnn_reorder(c, a->reorder, a->user, a->lib);
        used = a->lib;
    }
    p->exec[p->nargs] = (dnnl_exec_arg_t){role, used};
    p->nargs++;
}

static void dnn_fetch_outputs(const dnn_ctx *c, dnn_prim *p)
{
    for (int i = 0; i < p->nargs; i++)
        if (p->a[i].output && p->a[i].reorder)
            dnn_reorder(c, p->a[i].reorder, p->a[i].lib, p->a[i].user);
}

static void dnn_prim_free(dnn_prim *p)
{
    for (int i = 0; i < p->nargs; i++) {
        dnnl_memory_destroy(p->a[i].user);
        if (p->a[i].lib)
            dnnl_memory_destroy(p->a[i].lib);
        if (p->a[i].reorder)
            dnnl_primitive_destroy(p->a[i].reorder);
    }
    if (p->prim)
        dnnl_primitive_destroy(p->prim);
    memset(p, 0, sizeof *p);
}

/* The memory descriptors of a shape: the caller's (NHWC data, Keras weights)
 * and what the primitive is asked for: NHWC or (the "any" variant) its own
 * choice for the activations, its own choice for the weights, a plain bias. */
typedef struct dnn_mds {
    dnnl_memory_desc_t src, dst, wei, bias;   /* what the primitive is asked for */
    dnnl_memory_desc_t usrc, udst, uwei;      /* the caller's layouts */
    dnnl_dims_t strides, pad_l, pad_r;
} dnn_mds;

static void dnn_mds_init(dnn_mds *m, const shape *s, int any, dnnl_data_type_t dt)
{
    const graft_conv_geom *g = &s->g;
    dnnl_dims_t src = {g->batch, g->in_c, g->in_h, g->in_w};
    dnnl_dims_t dst = {g->batch, g->out_c, g->out_h, g->out_w};
    dnnl_dims_t bias = {g->out_c};
    dnnl_ok(dnnl_memory_desc_init_by_tag(&m->usrc, 4, src, dnnl_f32, dnnl_nhwc), "md");
    dnnl_ok(dnnl_memory_desc_init_by_tag(&m->udst, 4, dst, dnnl_f32, dnnl_nhwc), "md");
    dnnl_ok(dnnl_memory_desc_init_by_tag(&m->bias, 1, bias, dnnl_f32, dnnl_x), "md");
    int wnd;
    if (s->dw) {
        /* Groups = channels, one in and one out each; hwigo is Keras's (3,3,C,1). */
        dnnl_dims_t wei = {g->in_c, 1, 1, g->kernel_h, g->kernel_w};
        dnnl_ok(dnnl_memory_desc_init_by_tag(&m->uwei, 5, wei, dnnl_f32, dnnl_hwigo), "md");
        wnd = 5;
    } else {
        dnnl_dims_t wei = {g->out_c, g->in_c, g->kernel_h, g->kernel_w};
        dnnl_ok(dnnl_memory_desc_init_by_tag(&m->uwei, 4, wei, dnnl_f32, dnnl_hwio), "md");
        wnd = 4;
    }
    dnnl_format_tag_t act = any ? dnnl_format_tag_any : dnnl_nhwc;
    dnnl_ok(dnnl_memory_desc_init_by_tag(&m->src, 4, src, dt, act), "md");
    dnnl_ok(dnnl_memory_desc_init_by_tag(&m->dst, 4, dst, dt, act), "md");
    /* Weights always in the layout oneDNN picks: its depthwise kernels read
     * only blocked weights (with Keras's hwigo it falls back to a GEMM 20-60x
     * slower), and a network reorders weights once, not per batch. */
    dnnl_ok(dnnl_memory_desc_init_by_tag(&m->wei, wnd, m->uwei.dims, dt, dnnl_format_tag_any), "md");
    int64_t pad_bottom = (g->out_h - 1) * g->stride_h + g->kernel_h - g->in_h - g->pad_top;
    int64_t pad_right = (g->out_w - 1) * g->stride_w + g->kernel_w - g->in_w - g->pad_left;
    m->strides[0] = g->stride_h, m->strides[1] = g->stride_w;
    m->pad_l[0] = g->pad_top, m->pad_l[1] = g->pad_left;
    m->pad_r[0] = pad_bottom > 0 ? pad_bottom : 0, m->pad_r[1] = pad_right > 0 ? pad_right : 0;
}

static void dnn_impl_name(const_dnnl_primitive_desc_t pd, char *out, size_t n)
{
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(out, n, "%s", impl ? impl : "?");
}

/* Forward-training descriptor: the hint the backward primitives need. */
static dnnl_primitive_desc_t dnn_forward_pd(const dnn_ctx *c, const dnn_mds *m,
                                            dnnl_prop_kind_t prop, const_dnnl_primitive_attr_t attr)
{
    dnnl_convolution_desc_t d;
    dnnl_ok(dnnl_convolution_forward_desc_init(&d, prop, dnnl_convolution_direct, &m->src, &m->wei,
                                               &m->bias, &m->dst, m->strides, m->pad_l, m->pad_r),
            "forward desc");
    dnnl_primitive_desc_t pd = NULL;
    if (dnnl_primitive_desc_create(&pd, &d, attr, c->engine, NULL) != dnnl_success)
        return NULL;
    return pd;
}

/* Builds the primitive of `op` for the shape, its arguments bound to t's
 * buffers. Returns 0 when oneDNN has no implementation. */
static int dnn_setup(const dnn_ctx *c, dnn_prim *p, const shape *s, tensors *t, int op, int any,
                     char *impl, size_t impl_n)
{
    memset(p, 0, sizeof *p);
    dnn_mds m;
    dnn_mds_init(&m, s, any, dnnl_f32);
    dnnl_primitive_desc_t pd = NULL;
    if (op == FWD) {
        dnnl_post_ops_t po;
        dnnl_primitive_attr_t attr;
        dnnl_ok(dnnl_post_ops_create(&po), "post-ops");
        dnnl_ok(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_clip, 0.0f, 6.0f), "eltwise");
        dnnl_ok(dnnl_primitive_attr_create(&attr), "attr");
        dnnl_ok(dnnl_primitive_attr_set_post_ops(attr, po), "attr post-ops");
        pd = dnn_forward_pd(c, &m, dnnl_forward_inference, attr);
        dnnl_primitive_attr_destroy(attr);
        dnnl_post_ops_destroy(po);
        if (!pd)
            return 0;
        dnn_add_arg(c, p, pd, DNNL_ARG_SRC, dnnl_query_src_md, 0, &m.usrc, t->x, 0);
        dnn_add_arg(c, p, pd, DNNL_ARG_WEIGHTS, dnnl_query_weights_md, 0, &m.uwei, t->w, 0);
        dnn_add_arg(c, p, pd, DNNL_ARG_BIAS, dnnl_query_weights_md, 1, &m.bias, t->bias, 0);
        dnn_add_arg(c, p, pd, DNNL_ARG_DST, dnnl_query_dst_md, 0, &m.udst, t->y, 1);
    } else {
        dnnl_primitive_desc_t hint = dnn_forward_pd(c, &m, dnnl_forward_training, NULL);
        if (!hint)
            return 0;
        dnnl_convolution_desc_t d;
        if (op == BWD_DATA)
            dnnl_ok(dnnl_convolution_backward_data_desc_init(&d, dnnl_convolution_direct, &m.src,
                                                             &m.wei, &m.dst, m.strides, m.pad_l,
                                                             m.pad_r),
                    "backward data desc");
        else
            dnnl_ok(dnnl_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, &m.src,
                                                                &m.wei, &m.bias, &m.dst, m.strides,
                                                                m.pad_l, m.pad_r),
                    "backward weights desc");
        dnnl_status_t st = dnnl_primitive_desc_create(&pd, &d, NULL, c->engine, hint);
        dnnl_primitive_desc_destroy(hint);
        if (st != dnnl_success)
            return 0;
        if (op == BWD_DATA) {
            dnn_add_arg(c, p, pd, DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, 0, &m.udst, t->dy, 0);
            dnn_add_arg(c, p, pd, DNNL_ARG_WEIGHTS, dnnl_query_weights_md, 0, &m.uwei, t->w, 0);
            dnn_add_arg(c, p, pd, DNNL_ARG_DIFF_SRC, dnnl_query_diff_src_md, 0, &m.usrc, t->dx, 1);
        } else {
            dnn_add_arg(c, p, pd, DNNL_ARG_SRC, dnnl_query_src_md, 0, &m.usrc, t->x, 0);
            dnn_add_arg(c, p, pd, DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, 0, &m.udst, t->dy, 0);
            dnn_add_arg(c, p, pd, DNNL_ARG_DIFF_WEIGHTS, dnnl_query_diff_weights_md, 0, &m.uwei,
                        t->dw, 1);
            dnn_add_arg(c, p, pd, DNNL_ARG_DIFF_BIAS, dnnl_query_diff_weights_md, 1, &m.bias,
                        t->db, 1);
        }
    }
    dnn_impl_name(pd, impl, impl_n);
    dnnl_ok(dnnl_primitive_create(&p->prim, pd), "primitive");
    dnnl_primitive_desc_destroy(pd);
    return 1;
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

/* ---- the libraries' calls --------------------------------------------------- */

typedef struct runner {
    const shape *s;
    tensors *t;
    int op, lib, threads;
    const dnn_ctx *dnn;
    dnn_prim prim;
    pthreadpool_t pool;
    xnn_operator_t xop;
    float *packed, *scratch; /* graft's packed kernel, its per-thread scratch */
    size_t scratch_stride;
} runner;

/* out[r, :] = relu6(out[r, :] + bias): the pass a plain sgemm needs after it. */
static void bias_relu6_rows(float *out, const float *bias, int64_t rows, int64_t cols, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *o = out + r * cols;
        for (int64_t j = 0; j < cols; j++)
            o[j] = relu6(o[j] + bias[j]);
    }
}

static void graft_forward(runner *r)
{
    const graft_conv_geom *g = &r->s->g;
    const tensors *t = r->t;
    if (!r->s->dw) {
        const int64_t pixels = g->batch * g->out_h * g->out_w;
#pragma omp parallel num_threads(r->threads)
        {
            int64_t i = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t p0 = pixels * i / nt, p1 = pixels * (i + 1) / nt;
            graft_f32_conv2d_fused__packed(g, p0, p1, t->x, r->packed, GRAFT__ACT_RELU6,
                                           t->y + p0 * g->out_c,
                                           r->scratch ? r->scratch + i * r->scratch_stride : NULL);
        }
        return;
    }
    /* Depthwise: the fused row kernel (bias + ReLU6 before the store) over rows. */
    const int64_t rows = g->batch * g->out_h, in_row = g->in_w * g->in_c;
#pragma omp parallel for num_threads(r->threads) schedule(static)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t n = row / g->out_h, oy = row % g->out_h;
        const float *in_rows[GRAFT_DW_ROW_MAX_KH];
        for (int64_t ky = 0; ky < g->kernel_h; ky++) {
            int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
            in_rows[ky] = iy >= 0 && iy < g->in_h ? t->x + (n * g->in_h + iy) * in_row : NULL;
        }
        graft_f32_dwconv2d_row__direct(g, in_rows, t->w, t->bias, GRAFT__ACT_RELU6,
                                       t->y + row * g->out_w * g->out_c);
    }
}

static void graft_bias_backward(const runner *r)
{
    const graft_conv_geom *g = &r->s->g;
#pragma omp parallel num_threads(r->threads)
    {
        int64_t i = omp_get_thread_num(), nt = omp_get_num_threads();
        graft_f32_bias_backward__direct(g->batch * g->out_h * g->out_w, g->out_c,
                                        g->out_c * i / nt, g->out_c * (i + 1) / nt, r->t->dy,
                                        r->t->db);
    }
}

static void run(runner *r)
{
    const graft_conv_geom *g = &r->s->g;
    tensors *t = r->t;
    const int64_t pixels = g->batch * g->out_h * g->out_w;
    switch (r->lib) {
    case L_GRAFT:
        if (r->op == FWD) {
            graft_forward(r);
        } else if (r->op == BWD_DATA) {
            /* what training runs (layers/conv2d.c, depthwise_conv2d.c) */
            if (r->s->dw)
                graft_f32_dwconv2d_backward_input_parallel(g, t->dy, t->w, t->dx);
            else
                graft_f32_conv2d_train_backward_input(g, t->dy, t->w, t->dx, 1, r->scratch);
        } else {
            if (r->s->dw)
                graft_f32_dwconv2d_backward_weight_parallel(g, t->x, t->dy, t->dw);
            else if (graft_f32_conv2d_train_weight_packed_pays(g))
                graft_f32_conv2d_train_backward_weight(g, t->x, t->dy, t->dw, r->scratch);
            else
                graft_f32_conv2d_backward_weight__gemm(g, t->x, t->dy, t->dw, NULL);
            graft_bias_backward(r);
        }
        break;
    case L_OPENBLAS:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)pixels, (int)g->out_c,
                    (int)g->in_c, 1.0f, t->x, (int)g->in_c, t->w, (int)g->out_c, 0.0f, t->y,
                    (int)g->out_c);
        bias_relu6_rows(t->y, t->bias, pixels, g->out_c, r->threads);
        break;
    case L_BLIS:
        bench_blis_sgemm(pixels, g->out_c, g->in_c, t->x, t->w, t->y);
        bias_relu6_rows(t->y, t->bias, pixels, g->out_c, r->threads);
        break;
    case L_DNNL_NHWC:
    case L_DNNL_ANY:
        dnn_exec(r->dnn, r->prim.prim, r->prim.nargs, r->prim.exec);
        break;
    case L_XNNPACK:
        if (xnn_run_operator(r->xop, r->pool) != xnn_status_success) {
            fprintf(stderr, "bench_libs: xnn_run_operator failed on %s\n", r->s->name);
            exit(1);
        }
        break;
    }
}

static int supported(int lib, int op, int dw)
{
    if (lib == L_OPENBLAS || lib == L_BLIS)
        return op == FWD && !dw;
    if (lib == L_XNNPACK)
        return op == FWD;
    return 1;
}

static int xnn_setup(runner *r)
{
    const shape *s = r->s;
    const graft_conv_geom *g = &s->g;
    tensors *t = r->t;
    enum xnn_status st;
    if (s->dw) {
        /* HWGo weights with the depthwise flag: Keras's (3,3,C,1) as it is. */
        st = xnn_create_convolution2d_nhwc_f32(
            0, 0, 0, 0, (uint32_t)g->kernel_h, (uint32_t)g->kernel_w, (uint32_t)g->stride_h,
            (uint32_t)g->stride_w, 1, 1, (uint32_t)g->in_c, 1, 1, (size_t)g->in_c,
            (size_t)g->out_c, t->w, t->bias, 0.0f, 6.0f,
            XNN_FLAG_DEPTHWISE_CONVOLUTION | XNN_FLAG_TENSORFLOW_SAME_PADDING, &r->xop);
    } else {
        /* XNNPACK wants (out, in) weights: transpose Keras's (in, out). */
        float *oi = alloc_floats(t->nw);
        for (int64_t i = 0; i < g->in_c; i++)
            for (int64_t o = 0; o < g->out_c; o++)
                oi[o * g->in_c + i] = t->w[i * g->out_c + o];
        st = xnn_create_convolution2d_nhwc_f32(0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, (size_t)g->in_c,
                                               (size_t)g->out_c, (size_t)g->in_c,
                                               (size_t)g->out_c, oi, t->bias, 0.0f, 6.0f, 0,
                                               &r->xop);
        graft__free_aligned(oi); /* packed at creation */
    }
    if (st != xnn_status_success)
        return 0;
    st = xnn_setup_convolution2d_nhwc_f32(r->xop, (size_t)g->batch, (size_t)g->in_h,
                                          (size_t)g->in_w, t->x, t->y, r->pool);
    return st == xnn_status_success;
}

/* Prepares lib for op on the shape: what a network does once (packing,
 * primitive creation, layout reorders). Returns 0 when unsupported. */
static int setup(runner *r, char *impl, size_t impl_n)
{
    const graft_conv_geom *g = &r->s->g;
    if (!supported(r->lib, r->op, r->s->dw))
        return 0;
    switch (r->lib) {
    case L_GRAFT:
        if (r->op == FWD && !r->s->dw) {
            const int64_t k = g->kernel_h * g->kernel_w * g->in_c;
            r->packed = alloc_floats(graft_f32_gemm_packed_floats(k, g->out_c));
            graft_f32_gemm_pack(k, g->out_c, r->t->w, r->t->bias, r->packed);
            r->scratch_stride = (graft_f32_conv2d_fused_scratch_floats(g) + 15) / 16 * 16;
            if (r->scratch_stride)
                r->scratch = alloc_floats((int64_t)r->scratch_stride * r->threads);
        }
        if (r->op != FWD && !r->s->dw) /* training's work area */
            r->scratch = alloc_floats((int64_t)graft_f32_conv2d_train_scratch_floats(g));
        return 1;
    case L_OPENBLAS:
    case L_BLIS:
        return 1;
    case L_DNNL_NHWC:
    case L_DNNL_ANY:
        return dnn_setup(r->dnn, &r->prim, r->s, r->t, r->op, r->lib == L_DNNL_ANY, impl, impl_n);
    case L_XNNPACK:
        return xnn_setup(r);
    }
    return 0;
}

static void teardown(runner *r)
{
    graft__free_aligned(r->packed);
    graft__free_aligned(r->scratch);
    r->packed = r->scratch = NULL;
    if (r->lib == L_DNNL_NHWC || r->lib == L_DNNL_ANY)
        dnn_prim_free(&r->prim);
    if (r->xop) {
        xnn_delete_operator(r->xop);
        r->xop = NULL;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double time_median(runner *r, int reps, double *fastest)
{
    double t[MAX_REPS];
    run(r); /* warm-up: caches, thread pools spun up, oneDNN's JIT code paged in */
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        run(r);
        t[i] = (now() - t0) * 1e3;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    *fastest = t[0];
    return reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
}

/* Zeroes what op writes (graft's gradients accumulate), runs it once, brings
 * the result to the caller's layout and checks it. */
static double checked_run(runner *r)
{
    tensors *t = r->t;
    memset(t->y, 0, sizeof(float) * (size_t)t->ny);
    memset(t->dx, 0, sizeof(float) * (size_t)t->nx);
    memset(t->dw, 0, sizeof(float) * (size_t)t->nw);
    memset(t->db, 0, sizeof(float) * (size_t)t->cout);
    run(r);
    if (r->lib == L_DNNL_NHWC || r->lib == L_DNNL_ANY)
        dnn_fetch_outputs(r->dnn, &r->prim);
    return check(r->s, t, r->op);
}

/* ---- bf16 probe ------------------------------------------------------------------ */

/* Whether oneDNN runs a bf16 1x1 convolution on this CPU, with which
 * implementation, how fast and how far from f32. */
static void bf16_probe(const dnn_ctx *c, shape *s, int reps)
{
    tensors t;
    tensors_init(&t, s);
    dnn_mds m;
    dnn_mds_init(&m, s, 1, dnnl_bf16);
    dnnl_primitive_desc_t pd = dnn_forward_pd(c, &m, dnnl_forward_inference, NULL);
    printf("oneDNN bf16 forward on %s: ", s->name);
    if (!pd) {
        printf("no implementation (primitive descriptor refused)\n");
        tensors_free(&t);
        return;
    }
    char impl[48];
    dnn_impl_name(pd, impl, sizeof impl);
    dnn_prim p;
    memset(&p, 0, sizeof p);
    /* Reorders convert f32 <-> bf16 on the way in and out. */
    dnn_add_arg(c, &p, pd, DNNL_ARG_SRC, dnnl_query_src_md, 0, &m.usrc, t.x, 0);
    dnn_add_arg(c, &p, pd, DNNL_ARG_WEIGHTS, dnnl_query_weights_md, 0, &m.uwei, t.w, 0);
    dnn_add_arg(c, &p, pd, DNNL_ARG_BIAS, dnnl_query_weights_md, 1, &m.bias, t.bias, 0);
    dnn_add_arg(c, &p, pd, DNNL_ARG_DST, dnnl_query_dst_md, 0, &m.udst, t.y, 1);
    dnnl_ok(dnnl_primitive_create(&p.prim, pd), "bf16 primitive");
    dnnl_primitive_desc_destroy(pd);
    double ts[MAX_REPS];
    dnn_exec(c, p.prim, p.nargs, p.exec);
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        dnn_exec(c, p.prim, p.nargs, p.exec);
        ts[i] = (now() - t0) * 1e3;
    }
    qsort(ts, (size_t)reps, sizeof ts[0], cmp_double);
    dnn_fetch_outputs(c, &p);
    /* Without the ReLU6 post-op here: compare against the plain conv. */
    const graft_conv_geom *g = &s->g;
    const int64_t per_out = g->out_h * g->out_w * g->out_c;
    float *ref = alloc_floats(per_out);
    graft_conv_geom one = *g;
    one.batch = 1;
    graft_f32_conv2d__ref(&one, t.x, t.w, t.bias, ref);
    double ms = ts[reps / 2];
    printf("runs with '%s', %.2f ms (%.1f GFLOP/s), max rel err vs f32 ref %.1e (bf16 rounding)\n",
           impl, ms, flops(g, 0) / ms * 1e-6, rel_err(t.y, ref, per_out));
    graft__free_aligned(ref);
    dnn_prim_free(&p);
    tensors_free(&t);
}

/* ---- report ------------------------------------------------------------------ */

static void print_op_table(const shape *shapes, int nshapes, int op, int dw, const char *filter)
{
    printf("\n== %s, %s (ms per batch of %d; GFLOP/s in parentheses) ==\n", OP_NAMES[op],
           dw ? "depthwise 3x3" : "1x1", BATCH);
    printf("%-24s %2s", "shape", "n");
    for (int L = 0; L < NLIBS; L++)
        if (supported(L, op, dw))
            printf(" %15s", LIB_NAMES[L]);
    printf("  %s\n", "best");
    for (int i = 0; i < nshapes; i++) {
        const shape *s = &shapes[i];
        if (s->dw != dw || !strstr(s->name, filter))
            continue;
        printf("%-24s %2d", s->name, s->count);
        int best = -1;
        for (int L = 0; L < NLIBS; L++) {
            if (!supported(L, op, dw))
                continue;
            double ms = s->ms[op][L];
            if (isnan(ms)) {
                printf(" %15s", "-");
                continue;
            }
            char cell[32];
            snprintf(cell, sizeof cell, "%.2f (%.0f)", ms, flops(&s->g, dw) / ms * 1e-6);
            printf(" %15s", cell);
            if (best < 0 || ms < s->ms[op][best])
                best = L;
        }
        printf("  %s\n", best >= 0 ? LIB_NAMES[best] : "-");
    }
}

/* Sum over the network's layers of op's time with lib (fallback where lib has
 * no such kernel: -1 = none, give NAN); lib -2 = fastest per layer. Layers
 * with block < from_block are skipped; skip_first_data leaves out the input
 * gradient of the first trained layer, which nothing needs. */
static double network_ms(const shape *shapes, int nshapes, int op, int dw_kind, int lib,
                         int fallback, int from_block, int fastest)
{
    double sum = 0.0;
    int first = 1;
    for (int i = 0; i < NLAYERS; i++) {
        const layer *l = &NETWORK[i];
        if (l->dw != dw_kind || l->block < from_block)
            continue;
        int is_first = first;
        first = 0;
        if (op == BWD_DATA && from_block > 0 && is_first && !dw_kind)
            continue;
        const shape *s = &shapes[shape_of(shapes, nshapes, l)];
        const double *t = fastest ? s->ms_min[op] : s->ms[op];
        double ms = NAN;
        if (lib == -2) {
            for (int L = 0; L < NLIBS; L++)
                if (!isnan(t[L]) && (isnan(ms) || t[L] < ms))
                    ms = t[L];
        } else {
            ms = t[lib];
            if (isnan(ms) && fallback >= 0)
                ms = t[fallback];
        }
        sum += ms;
    }
    return sum;
}

static void print_totals(const shape *shapes, int nshapes, const char *only, int fastest)
{
    /* Columns: each library, then the fastest library per layer. */
    enum { NCOLS = NLIBS + 1 };
    const int do_fwd = strcmp(only, "bwd") != 0, do_bwd = strcmp(only, "fwd") != 0;
    printf("\n== whole network: MobileNetV2-224 1x1 + depthwise layers, batch %d, ms per batch, "
           "%s ==\n",
           BATCH, fastest ? "from each shape's fastest run" : "from each shape's median");
    printf("(each shape times its count; '*' = no such kernel in the library, graft's used; "
           "best = fastest library per layer)\n");
    printf("%-34s", "kind (layers)");
    for (int L = 0; L < NLIBS; L++)
        printf(" %11s", LIB_NAMES[L]);
    printf(" %11s\n", "best");
    struct row {
        const char *name;
        int op, dw;
    } rows[] = {
        {"fwd 1x1 + bias + ReLU6 (34)", FWD, 0},       {"fwd dw 3x3 + bias + ReLU6 (17)", FWD, 1},
        {"bwd-data 1x1 (34)", BWD_DATA, 0},            {"bwd-weights+bias 1x1 (34)", BWD_W, 0},
        {"bwd-data dw (17)", BWD_DATA, 1},             {"bwd-weights+bias dw (17)", BWD_W, 1},
    };
    double fwd[NCOLS] = {0}, bwd[NCOLS] = {0}, bwd11[NCOLS] = {0};
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        if ((rows[r].op == FWD && !do_fwd) || (rows[r].op != FWD && !do_bwd))
            continue;
        printf("%-34s", rows[r].name);
        for (int L = 0; L < NCOLS; L++) {
            int lib = L < NLIBS ? L : -2;
            double own = lib >= 0 ? network_ms(shapes, nshapes, rows[r].op, rows[r].dw, lib, -1, 0,
                                               fastest)
                                  : NAN;
            double v = network_ms(shapes, nshapes, rows[r].op, rows[r].dw, lib, L_GRAFT, 0, fastest);
            double v11 = network_ms(shapes, nshapes, rows[r].op, rows[r].dw, lib, L_GRAFT,
                                    FIRST_TRAINED_BLOCK, fastest);
            printf(" %10.1f%s", v, lib >= 0 && isnan(own) ? "*" : " ");
            if (rows[r].op == FWD)
                fwd[L] += v;
            else
                bwd[L] += v, bwd11[L] += v11;
        }
        printf("\n");
    }
    const char *names[] = {"forward total", "backward total", "(c) train block_11+: fwd + bwd",
                           "(d) full fine-tune: fwd + bwd"};
    for (int k = 0; k < 4; k++) {
        if ((k == 0 && !do_fwd) || (k == 1 && !do_bwd) || (k >= 2 && (!do_fwd || !do_bwd)))
            continue;
        printf("%-34s", names[k]);
        for (int L = 0; L < NCOLS; L++) {
            double v = k == 0 ? fwd[L] : k == 1 ? bwd[L] : k == 2 ? fwd[L] + bwd11[L] : fwd[L] + bwd[L];
            printf(" %10.1f ", v);
        }
        printf("\n");
    }
    printf("(c) runs every layer forward and backward from block_11_expand on (its input gradient "
           "excluded); XNNPACK and the BLASes have no backward: their (c)/(d) use graft's.\n");
}

/* One line per kernel kind when every shape got the same implementations. */
static void print_impls(const shape *shapes, int nshapes, int op, int dw)
{
    const shape *first = NULL;
    int uniform = 1;
    for (int i = 0; i < nshapes; i++) {
        const shape *s = &shapes[i];
        if (s->dw != dw || !s->impl[op][0][0])
            continue;
        if (!first)
            first = s;
        else if (strcmp(s->impl[op][0], first->impl[op][0]) ||
                 strcmp(s->impl[op][1], first->impl[op][1]))
            uniform = 0;
    }
    if (!first)
        return;
    const char *kind = dw ? "dw" : "1x1";
    if (uniform) {
        printf("  %-17s %-4s every shape: %s | %s\n", OP_NAMES[op], kind, first->impl[op][0],
               first->impl[op][1]);
        return;
    }
    for (int i = 0; i < nshapes; i++)
        if (shapes[i].dw == dw && shapes[i].impl[op][0][0])
            printf("  %-17s %-24s %s | %s\n", OP_NAMES[op], shapes[i].name, shapes[i].impl[op][0],
                   shapes[i].impl[op][1]);
}

/* ---- main ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_libs [--threads N] [--reps N (1-%d)] [--only fwd|bwd] [filter]\n",
            MAX_REPS);
    exit(2);
}

/* Libraries measured in one process each (both oneDNN layouts share one). */
enum { G_GRAFT, G_OPENBLAS, G_BLIS, G_DNNL, G_XNNPACK, NGROUPS };
static const char *const GROUP_NAMES[NGROUPS] = {"graft", "openblas", "blis", "onednn", "xnnpack"};

static int in_group(int lib, int group)
{
    static const int of[NLIBS] = {G_GRAFT, G_OPENBLAS, G_BLIS, G_DNNL, G_DNNL, G_XNNPACK};
    return of[lib] == group;
}

typedef struct options {
    int threads, reps, group; /* group -1: the parent, which runs one child per group */
    const char *filter, *only;
} options;

static int op_wanted(const options *o, int op)
{
    return !((op == FWD && !strcmp(o->only, "bwd")) || (op != FWD && !strcmp(o->only, "fwd")));
}

/* The child's work: check and time its libraries on every wanted shape, and
 * write one line per result to stdout for the parent:
 *   R shape op lib ms err impl      (impl '-' when none) */
static int run_group(const options *o, shape *shapes, int nshapes)
{
    dnn_ctx dnn = {0};
    pthreadpool_t pool = NULL;
    char msg[160];
    omp_set_num_threads(o->threads);
    openblas_set_num_threads(o->threads);
    if (o->group == G_BLIS && !bench_blis_open(GRAFT_BLIS_LIBRARY, o->threads, msg, sizeof msg)) {
        fprintf(stderr, "bench_libs: cannot load BLIS: %s\n", msg);
        return 1;
    }
    if (o->group == G_DNNL) {
        dnnl_ok(dnnl_engine_create(&dnn.engine, dnnl_cpu, 0), "engine");
        dnnl_ok(dnnl_stream_create(&dnn.stream, dnn.engine, dnnl_stream_default_flags), "stream");
    }
    if (o->group == G_XNNPACK) {
        if (xnn_initialize(NULL) != xnn_status_success) {
            fprintf(stderr, "bench_libs: xnn_initialize failed (CPU unsupported?)\n");
            return 1;
        }
        pool = pthreadpool_create((size_t)o->threads);
    }
    double t_start = now();
    for (int i = 0; i < nshapes; i++) {
        shape *s = &shapes[i];
        if (!strstr(s->name, o->filter))
            continue;
        tensors t;
        tensors_init(&t, s);
        for (int op = 0; op < NOPS; op++) {
            int any_lib = 0;
            for (int L = 0; L < NLIBS; L++)
                any_lib |= in_group(L, o->group) && supported(L, op, s->dw);
            if (!op_wanted(o, op) || !any_lib)
                continue;
            ref_compute(s, &t, op, o->threads);
            for (int L = 0; L < NLIBS; L++) {
                if (!in_group(L, o->group) || !supported(L, op, s->dw))
                    continue;
                runner r = {.s = s, .t = &t, .op = op, .lib = L, .threads = o->threads,
                            .dnn = &dnn, .pool = pool};
                char impl[48] = "-";
                if (!setup(&r, impl, sizeof impl)) {
                    fprintf(stderr, "bench_libs: %s has no %s for %s\n", LIB_NAMES[L],
                            OP_NAMES[op], s->name);
                    teardown(&r);
                    continue;
                }
                double err = checked_run(&r);
                if (!(err <= TOLERANCE)) {
                    fprintf(stderr,
                            "bench_libs: FAIL %s %s %s: max rel err %.2e above %.0e vs graft's "
                            "__ref\n",
                            LIB_NAMES[L], OP_NAMES[op], s->name, err, TOLERANCE);
                    return 1;
                }
                double fastest, ms = time_median(&r, o->reps, &fastest);
                teardown(&r);
                printf("R %d %d %d %.6f %.6f %.3e %s\n", i, op, L, ms, fastest, err,
                       impl[0] ? impl : "-");
                fflush(stdout);
            }
        }
        tensors_free(&t);
        fprintf(stderr, "bench_libs: %-8s %-24s done (%.0f s)\n", GROUP_NAMES[o->group], s->name,
                now() - t_start);
    }
    if (o->group == G_DNNL && op_wanted(o, FWD)) {
        shape probe = shapes[shape_of(shapes, nshapes, &(layer)PW(56, 24, 144, 2))];
        bf16_probe(&dnn, &probe, o->reps);
    }
    if (pool) {
        pthreadpool_destroy(pool);
        xnn_deinitialize();
    }
    if (dnn.engine) {
        dnnl_stream_destroy(dnn.stream);
        dnnl_engine_destroy(dnn.engine);
    }
    return 0;
}

/* Runs `self --lib GROUP ...` and reads its result lines into shapes; other
 * lines (the bf16 probe) are appended to notes. Returns the child's status. */
static int run_child(const char *self, const options *o, int group, shape *shapes, int nshapes,
                     char *notes, size_t notes_n)
{
    char threads[16], reps[16];
    snprintf(threads, sizeof threads, "%d", o->threads);
    snprintf(reps, sizeof reps, "%d", o->reps);
    char *args[] = {(char *)self, "--lib", (char *)GROUP_NAMES[group], "--threads", threads,
                    "--reps", reps, "--only", (char *)(*o->only ? o->only : "all"), "--",
                    (char *)o->filter, NULL};
    int fd[2];
    if (pipe(fd) != 0) {
        perror("bench_libs: pipe");
        return 1;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("bench_libs: fork");
        return 1;
    }
    if (pid == 0) {
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        close(fd[1]);
        execv(self, args);
        perror("bench_libs: execv");
        _exit(127);
    }
    close(fd[1]);
    FILE *in = fdopen(fd[0], "r");
    char line[512];
    while (in && fgets(line, sizeof line, in)) {
        int i, op, L;
        double ms, fastest, err;
        char impl[48];
        if (sscanf(line, "R %d %d %d %lf %lf %lf %47s", &i, &op, &L, &ms, &fastest, &err, impl) ==
                7 &&
            i >= 0 &&
            i < nshapes && op >= 0 && op < NOPS && L >= 0 && L < NLIBS) {
            shapes[i].ms[op][L] = ms;
            shapes[i].ms_min[op][L] = fastest;
            shapes[i].err[op][L] = err;
            if (L == L_DNNL_NHWC || L == L_DNNL_ANY)
                snprintf(shapes[i].impl[op][L == L_DNNL_ANY], sizeof shapes[i].impl[op][0], "%s",
                         strcmp(impl, "-") ? impl : "");
        } else {
            size_t used = strlen(notes);
            snprintf(notes + used, notes_n - used, "%s", line);
        }
    }
    if (in)
        fclose(in);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
    options o = {.threads = 2, .reps = 5, .group = -1, .filter = "", .only = ""};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            o.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            o.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            o.only = !strcmp(argv[i + 1], "all") ? (i++, "") : argv[++i];
        else if (!strcmp(argv[i], "--lib") && i + 1 < argc) {
            const char *g = argv[++i];
            for (int k = 0; k < NGROUPS; k++)
                if (!strcmp(g, GROUP_NAMES[k]))
                    o.group = k;
            if (o.group < 0)
                usage();
        } else if (!strcmp(argv[i], "--") && i + 1 < argc)
            o.filter = argv[++i];
        else if (argv[i][0] == '-')
            usage();
        else
            o.filter = argv[i];
    }
    if (o.threads < 1 || o.reps < 1 || o.reps > MAX_REPS ||
        (*o.only && strcmp(o.only, "fwd") != 0 && strcmp(o.only, "bwd") != 0))
        usage();

    shape shapes[NLAYERS];
    const int nshapes = collect_shapes(shapes);
    if (o.group >= 0)
        return run_group(&o, shapes, nshapes);

    char blis[160];
    if (!bench_blis_open(GRAFT_BLIS_LIBRARY, o.threads, blis, sizeof blis)) {
        fprintf(stderr, "bench_libs: cannot load BLIS: %s\n", blis);
        return 1;
    }
    bench_blis_info(blis, sizeof blis);
    Dl_info where;
    const dnnl_version_t *dv = dnnl_version();
    printf("bench_libs: MobileNetV2-224 1x1 and depthwise 3x3 layers, NHWC f32, batch %d, %d "
           "threads, median of %d runs after a warm-up; each library in a process of its own\n",
           BATCH, o.threads, o.reps);
    printf("cblas_sgemm from %s (%s); %s; oneDNN %d.%d.%d (cpu runtime %s), effective ISA %s; "
           "XNNPACK (Debian git 2022-02-16 snapshot) on pthreadpool(%d)\n",
           dladdr((void *)cblas_sgemm, &where) ? where.dli_fname : "?", openblas_get_config(), blis,
           dv->major, dv->minor, dv->patch,
           dv->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other",
           isa_name(dnnl_get_effective_cpu_isa()), o.threads);
    double t_start = now();
    char notes[1024] = "";
    for (int gi = 0; gi < NGROUPS; gi++) {
        int rc = run_child("/proc/self/exe", &o, gi, shapes, nshapes, notes, sizeof notes);
        if (rc != 0) {
            fprintf(stderr, "bench_libs: the %s run failed (status %d)\n", GROUP_NAMES[gi], rc);
            return 1;
        }
    }

    for (int op = 0; op < NOPS; op++)
        for (int dw = 0; dw < 2; dw++)
            if (op_wanted(&o, op))
                print_op_table(shapes, nshapes, op, dw, o.filter);
    if (!*o.filter) {
        print_totals(shapes, nshapes, o.only, 0);
        print_totals(shapes, nshapes, o.only, 1);
    }

    double worst = 0.0;
    printf("\nchecks vs graft's __ref (max |lib - ref| / max |ref|, worst over shapes):\n");
    for (int op = 0; op < NOPS; op++) {
        if (!op_wanted(&o, op))
            continue;
        printf("  %-17s", OP_NAMES[op]);
        for (int L = 0; L < NLIBS; L++) {
            double e = -1.0;
            for (int i = 0; i < nshapes; i++)
                if (!isnan(shapes[i].err[op][L]) && shapes[i].err[op][L] > e)
                    e = shapes[i].err[op][L];
            if (e >= 0.0)
                printf(" %s %.1e", LIB_NAMES[L], e);
            worst = e > worst ? e : worst;
        }
        printf("\n");
    }
    printf("all within %.0e (worst %.1e)\n", TOLERANCE, worst);

    printf("\noneDNN implementations (nhwc | any):\n");
    for (int op = 0; op < NOPS; op++)
        for (int dw = 0; dw < 2; dw++)
            print_impls(shapes, nshapes, op, dw);
    printf("\n%stotal %.0f s\n", notes, now() - t_start);
    return 0;
}
