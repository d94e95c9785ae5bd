#include <cblas.h>
#include <string.h>

#include "kernels/conv.h"
#include "kernels/gemm.h"
#include "kernels/simd.h"
#include "kernels/window.h"

void graft_f32_conv2d__ref(const graft_conv_geom *g, const float *in, const float *kernel,
                           const float *bias, float *out)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c;
    for (int64_t n = 0; n < g->batch; n++)
        for (int64_t oy = 0; oy < g->out_h; oy++)
            for (int64_t ox = 0; ox < g->out_w; ox++)
                for (int64_t co = 0; co < CO; co++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                        int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                        if (iy < 0 || iy >= H)
                            continue;
                        for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                            int64_t ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                            if (ix < 0 || ix >= W)
                                continue;
                            const float *x = in + ((n * H + iy) * W + ix) * C;
                            const float *w = kernel + (ky * g->kernel_w + kx) * C * CO + co;
                            for (int64_t ci = 0; ci < C; ci++)
                                acc += (double)x[ci] * w[ci * CO];
                        }
                    }
                    out[((n * g->out_h + oy) * g->out_w + ox) * CO + co] = (float)acc;
                }
}

/* A 1x1 stride-1 unpadded conv reads each input pixel as one GEMM row as it is. */
int graft_f32_conv2d_is_pointwise(const graft_conv_geom *g)
{
    return g->kernel_h == 1 && g->kernel_w == 1 && g->stride_h == 1 && g->stride_w == 1 &&
           g->pad_top == 0 && g->pad_left == 0 && g->out_h == g->in_h && g->out_w == g->in_w;
}

static int64_t chunk_pixels(const graft_conv_geom *g)
{
    int64_t patch = g->kernel_h * g->kernel_w * g->in_c;
    int64_t pixels = g->batch * g->out_h * g->out_w;
    int64_t chunk = (int64_t)(GRAFT_CONV2D_IM2COL_BUDGET / sizeof(float)) / patch;
    if (chunk < 1)
        chunk = 1;
    return chunk < pixels ? chunk : pixels;
}

size_t graft_f32_conv2d_scratch_bytes(const graft_conv_geom *g)
{
    if (graft_f32_conv2d_is_pointwise(g))
        return 0;
    return (size_t)chunk_pixels(g) * (size_t)(g->kernel_h * g->kernel_w * g->in_c) * sizeof(float);
}

/* One im2col row: the patch of output pixel p, ordered (ky, kx, ci) like the
 * kernel's rows, zeros where the window hangs over the padding. */
static void im2col_pixel(const graft_conv_geom *g, const float *in, int64_t p, float *row)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, KW = g->kernel_w;
    int64_t ox = p % g->out_w, t = p / g->out_w;
    int64_t oy = t % g->out_h, n = t / g->out_h;
    int64_t ix0 = ox * g->stride_w - g->pad_left;
    /* Valid kx are a contiguous run; with dilation 1 they are also contiguous in
     * memory, so each kernel row is one copy. */
    int64_t kx_lo = ix0 < 0 ? (-ix0 + g->dilation_w - 1) / g->dilation_w : 0;
    int64_t kx_hi = KW;
    if (ix0 > W - 1)
        kx_hi = 0;
    else if (ix0 + (KW - 1) * g->dilation_w > W - 1)
        kx_hi = (W - 1 - ix0) / g->dilation_w + 1;
    if (kx_lo > KW)
        kx_lo = KW;
    if (kx_hi < kx_lo)
        kx_hi = kx_lo;
    for (int64_t ky = 0; ky < g->kernel_h; ky++, row += KW * C) {
        int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
        if (iy < 0 || iy >= H) {
            memset(row, 0, (size_t)(KW * C) * sizeof(float));
            continue;
        }
        const float *src = in + ((n * H + iy) * W + ix0) * C;
        if (kx_lo > 0)
            memset(row, 0, (size_t)(kx_lo * C) * sizeof(float));
        if (g->dilation_w == 1) {
            int64_t len = (kx_hi - kx_lo) * C;
            if (len > 0)
                memcpy(row + kx_lo * C, src + kx_lo * C, (size_t)len * sizeof(float));
        } else {
            for (int64_t kx = kx_lo; kx < kx_hi; kx++)
                memcpy(row + kx * C, src + kx * g->dilation_w * C, (size_t)C * sizeof(float));
        }
        if (kx_hi < KW)
            memset(row + kx_hi * C, 0, (size_t)((KW - kx_hi) * C) * sizeof(float));
    }
}

/* Patches of m consecutive output pixels from p, a row of K floats each: walks
 * (n, oy, ox) instead of dividing for every pixel, and copies a window wholly
 * inside the image with a plain loop. A memcpy call per kernel row (9 floats at
 * MobileNetV2's stem) had cost more than the stem's GEMM. */
static void im2col_range(const graft_conv_geom *g, const float *in, int64_t p, int64_t m,
                         float *rows)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, KH = g->kernel_h, KW = g->kernel_w;
    const int64_t K = KH * KW * C, run = KW * C;
    const int dense = g->dilation_h == 1 && g->dilation_w == 1;
    int64_t ox = p % g->out_w, t = p / g->out_w, oy = t % g->out_h, n = t / g->out_h;
    for (int64_t i = 0; i < m; i++, rows += K) {
        const int64_t ix0 = ox * g->stride_w - g->pad_left, iy0 = oy * g->stride_h - g->pad_top;
        if (dense && ix0 >= 0 && ix0 + KW <= W && iy0 >= 0 && iy0 + KH <= H) {
            const float *src = in + ((n * H + iy0) * W + ix0) * C;
            for (int64_t ky = 0; ky < KH; ky++)
                for (int64_t j = 0; j < run; j++)
                    rows[ky * run + j] = src[ky * W * C + j];
        } else {
            im2col_pixel(g, in, p + i, rows);
        }
        if (++ox == g->out_w) {
            ox = 0;
            if (++oy == g->out_h)
                oy = 0, n++;
        }
    }
}

static void fill_bias(float *out, int64_t rows, int64_t co, const float *bias)
{
    for (int64_t r = 0; r < rows; r++)
        memcpy(out + r * co, bias, (size_t)co * sizeof(float));
}

/* A pointwise conv runs as GEMMs over row blocks of this many bytes of input
 * plus output rows: the block's output, just seeded with the bias, is still in
 * cache when the GEMM reads it back, which halves the DRAM traffic of the
 * memory-bound early layers (56x56x24->144: 15 -> 9 ms at batch 32). The
 * backward GEMMs gain from the same blocks (dX: 13.7 -> 10.5 ms, dW: 14.8 ->
 * 12.7 ms there). */
#define PW_CHUNK_BYTES ((int64_t)4 << 20)

void graft_f32_conv2d__gemm(const graft_conv_geom *g, const float *in, const float *kernel,
                            const float *bias, float *out, float *scratch)
{
    const int64_t CO = g->out_c;
    const int64_t pixels = g->batch * g->out_h * g->out_w;
    /* Bias first and beta=1: OpenBLAS makes a pass over C for any beta != 1 anyway,
     * so seeding C with the bias costs no more than zeroing it, where adding it
     * afterwards is one more pass over the whole output. */
    const float beta = bias ? 1.0f : 0.0f;

    if (graft_f32_conv2d_is_pointwise(g)) {
        int64_t chunk = PW_CHUNK_BYTES / (int64_t)sizeof(float) / (g->in_c + CO);
        if (chunk < 256) /* keep each GEMM tall enough for OpenBLAS's threads */
            chunk = 256;
        for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
            int64_t m = pixels - p0 < chunk ? pixels - p0 : chunk;
            if (bias)
                fill_bias(out + p0 * CO, m, CO, bias);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)CO, (int)g->in_c,
                        1.0f, in + p0 * g->in_c, (int)g->in_c, kernel, (int)CO, beta, out + p0 * CO,
                        (int)CO);
        }
        return;
    }

    const int64_t K = g->kernel_h * g->kernel_w * g->in_c;
    const int64_t chunk = chunk_pixels(g);
    for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
        int64_t m = pixels - p0 < chunk ? pixels - p0 : chunk;
        /* Serial on purpose: OpenMP's workers spin on after a region and take
         * the cores from the GEMM that follows (2-20x slower here), while the
         * serial fill costs ~15% of the GEMM. */
        im2col_range(g, in, p0, m, scratch);
        if (bias)
            fill_bias(out + p0 * CO, m, CO, bias);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)CO, (int)K, 1.0f,
                    scratch, (int)K, kernel, (int)CO, beta, out + p0 * CO, (int)CO);
    }
}

/* Pixels per im2col chunk of the fused path: a multiple of the GEMM's row
 * tile, and small enough that the chunk (3x3x32 taps: 110 KiB) stays in L2. */
enum { FUSED_CHUNK = 96 };

size_t graft_f32_conv2d_fused_scratch_floats(const graft_conv_geom *g)
{
    return graft_f32_conv2d_is_pointwise(g) ? 0 : (size_t)(FUSED_CHUNK * g->kernel_h * g->kernel_w * g->in_c);
}

void graft_f32_conv2d_fused__packed(const graft_conv_geom *g, int64_t p0, int64_t p1,
                                    const float *in, const float *packed, graft__activation act,
                                    float *out, float *scratch)
{
    const int64_t CO = g->out_c, K = g->kernel_h * g->kernel_w * g->in_c;
    if (graft_f32_conv2d_is_pointwise(g)) {
        graft_f32_gemm_fused__packed(p1 - p0, CO, K, in + p0 * K, K, packed, act, NULL, 0, out,
                                     CO);
        return;
    }
    for (int64_t c0 = p0; c0 < p1; c0 += FUSED_CHUNK) {
        int64_t m = p1 - c0 < FUSED_CHUNK ? p1 - c0 : FUSED_CHUNK;
        im2col_range(g, in, c0, m, scratch);
        graft_f32_gemm_fused__packed(m, CO, K, scratch, K, packed, act, NULL, 0,
                                     out + (c0 - p0) * CO, CO);
    }
}

/* ---- backward ------------------------------------------------------------------ */

void graft_f32_conv2d_backward_input__ref(const graft_conv_geom *g, const float *dout,
                                          const float *kernel, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c;
    for (int64_t n = 0; n < g->batch; n++)
        for (int64_t iy = 0; iy < H; iy++)
            for (int64_t ix = 0; ix < W; ix++)
                for (int64_t ci = 0; ci < C; ci++) {
                    double acc = 0.0;
                    for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                        int64_t oy = graft__window_out_index(iy, ky, g->pad_top, g->stride_h, g->dilation_h, g->out_h);
                        if (oy < 0)
                            continue;
                        for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                            int64_t ox = graft__window_out_index(ix, kx, g->pad_left, g->stride_w, g->dilation_w,
                                                   g->out_w);
                            if (ox < 0)
                                continue;
                            const float *dy = dout + ((n * g->out_h + oy) * g->out_w + ox) * CO;
                            const float *w = kernel + ((ky * g->kernel_w + kx) * C + ci) * CO;
                            for (int64_t co = 0; co < CO; co++)
                                acc += (double)dy[co] * w[co];
                        }
                    }
                    din[((n * H + iy) * W + ix) * C + ci] += (float)acc;
                }
}

void graft_f32_conv2d_backward_weight__ref(const graft_conv_geom *g, const float *in,
                                           const float *dout, float *dkernel)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c;
    for (int64_t ky = 0; ky < g->kernel_h; ky++)
        for (int64_t kx = 0; kx < g->kernel_w; kx++)
            for (int64_t ci = 0; ci < C; ci++)
                for (int64_t co = 0; co < CO; co++) {
                    double acc = 0.0;
                    for (int64_t n = 0; n < g->batch; n++)
                        for (int64_t oy = 0; oy < g->out_h; oy++) {
                            int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                            if (iy < 0 || iy >= H)
                                continue;
                            for (int64_t ox = 0; ox < g->out_w; ox++) {
                                int64_t ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                                if (ix < 0 || ix >= W)
                                    continue;
                                acc += (double)in[((n * H + iy) * W + ix) * C + ci] *
                                       dout[((n * g->out_h + oy) * g->out_w + ox) * CO + co];
                            }
                        }
                    dkernel[((ky * g->kernel_w + kx) * C + ci) * CO + co] += (float)acc;
                }
}

/* The adjoint of im2col_pixel: adds one patch row back into the input gradient,
 * skipping the cells that fell on padding. */
static void col2im_pixel(const graft_conv_geom *g, const float *row, int64_t p, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, KW = g->kernel_w;
    int64_t ox = p % g->out_w, t = p / g->out_w;
    int64_t oy = t % g->out_h, n = t / g->out_h;
    int64_t ix0 = ox * g->stride_w - g->pad_left;
    for (int64_t ky = 0; ky < g->kernel_h; ky++, row += KW * C) {
        int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
        if (iy < 0 || iy >= H)
            continue;
        float *dst = din + (n * H + iy) * W * C;
        for (int64_t kx = 0; kx < KW; kx++) {
            int64_t ix = ix0 + kx * g->dilation_w;
            if (ix < 0 || ix >= W)
                continue;
            float *restrict d = dst + ix * C;
            const float *restrict r = row + kx * C;
            for (int64_t c = 0; c < C; c++)
                d[c] += r[c];
        }
    }
}

void graft_f32_conv2d_backward_input__gemm(const graft_conv_geom *g, const float *dout,
                                           const float *kernel, float *din, float *scratch)
{
    const int64_t CO = g->out_c, CI = g->in_c;
    const int64_t pixels = g->batch * g->out_h * g->out_w;
    if (graft_f32_conv2d_is_pointwise(g)) {
        int64_t chunk = PW_CHUNK_BYTES / (int64_t)sizeof(float) / (CI + CO);
        if (chunk < 256)
            chunk = 256;
        for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
            int64_t m = pixels - p0 < chunk ? pixels - p0 : chunk;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)CI, (int)CO, 1.0f,
                        dout + p0 * CO, (int)CO, kernel, (int)CO, 1.0f, din + p0 * CI, (int)CI);
        }
        return;
    }
    const int64_t K = g->kernel_h * g->kernel_w * CI;
    const int64_t chunk = chunk_pixels(g);
    for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
        int64_t m = pixels - p0 < chunk ? pixels - p0 : chunk;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)K, (int)CO, 1.0f,
                    dout + p0 * CO, (int)CO, kernel, (int)CO, 0.0f, scratch, (int)K);
        /* Serial for the same reason as the forward's im2col; neighbouring
         * patches overlap, so a parallel scatter would need atomics anyway. */
        for (int64_t i = 0; i < m; i++)
            col2im_pixel(g, scratch + i * K, p0 + i, din);
    }
}

void graft_f32_conv2d_backward_weight__gemm(const graft_conv_geom *g, const float *in,
                                            const float *dout, float *dkernel, float *scratch)
{
    const int64_t CO = g->out_c, CI = g->in_c;
    const int64_t pixels = g->batch * g->out_h * g->out_w;
    if (graft_f32_conv2d_is_pointwise(g)) {
        int64_t chunk = PW_CHUNK_BYTES / (int64_t)sizeof(float) / (CI + CO);
        if (chunk < 256)
            chunk = 256;
        for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
            int64_t m = pixels - p0 < chunk ? pixels - p0 : chunk;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CI, (int)CO, (int)m, 1.0f,
                        in + p0 * CI, (int)CI, dout + p0 * CO, (int)CO, 1.0f, dkernel, (int)CO);
        }
        return;
    }
    const int64_t K = g->kernel_h * g->kernel_w * CI;
    const int64_t chunk = chunk_pixels(g);
    for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
        int64_t m = pixels - p0 < chunk ? pixels - p0 : chunk;
        im2col_range(g, in, p0, m, scratch);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)CO, (int)m, 1.0f,
                    scratch, (int)K, dout + p0 * CO, (int)CO, 1.0f, dkernel, (int)CO);
    }
}

/* ---- pointwise backward on the packed GEMM ------------------------------------ */

void graft_f32_pw_backward_input__packed(int64_t p0, int64_t p1, int64_t in_c, int64_t out_c,
                                         const float *dout, const float *packed_t, float *din,
                                         int accumulate)
{
    float *c = din + p0 * in_c;
    graft_f32_gemm_fused__packed(p1 - p0, in_c, out_c, dout + p0 * out_c, out_c, packed_t,
                                 GRAFT__ACT_LINEAR, accumulate ? c : NULL, in_c, c, in_c);
}

/* A register tile of the weight gradient: rows [i0, i0 + MI) of dkernel by NV
 * vectors of columns from j0, summed over n pixels, then added to dkernel. The
 * input values are broadcast from their rows and dout's read in place, so
 * neither needs packing (which had cost as much as the multiplications). */
static inline __attribute__((always_inline)) void pw_weight_tile(
    const float *in, int64_t in_c, const float *dout, int64_t out_c, int64_t n, int64_t i0,
    int64_t j0, float *dkernel, const int MI, const int NV)
{
    graft_vf acc[6][2];
    for (int r = 0; r < MI; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = graft_vsplat(0.0f);
    for (int64_t p = 0; p < n; p++) {
        const float *x = in + p * in_c + i0, *dy = dout + p * out_c + j0;
        graft_vf b[2];
        for (int v = 0; v < NV; v++)
            b[v] = graft_vload(dy + v * GRAFT_VL);
        for (int r = 0; r < MI; r++) {
            graft_vf xs = graft_vsplat(x[r]);
            for (int v = 0; v < NV; v++)
                acc[r][v] += xs * b[v];
        }
    }
    for (int r = 0; r < MI; r++)
        for (int v = 0; v < NV; v++) {
            float *d = dkernel + (i0 + r) * out_c + j0 + v * GRAFT_VL;
            graft_vstore(d, graft_vload(d) + acc[r][v]);
        }
}

static void pw_weight_rows(const float *in, int64_t in_c, const float *dout, int64_t out_c,
                           int64_t n, int64_t i0, int mi, float *dkernel)
{
    int64_t j0 = 0;
#define TILE_CASES(NV)                                                                            \
    switch (mi) {                                                                                 \
    case 6: pw_weight_tile(in, in_c, dout, out_c, n, i0, j0, dkernel, 6, NV); break;             \
    case 5: pw_weight_tile(in, in_c, dout, out_c, n, i0, j0, dkernel, 5, NV); break;             \
    case 4: pw_weight_tile(in, in_c, dout, out_c, n, i0, j0, dkernel, 4, NV); break;             \
    case 3: pw_weight_tile(in, in_c, dout, out_c, n, i0, j0, dkernel, 3, NV); break;             \
    case 2: pw_weight_tile(in, in_c, dout, out_c, n, i0, j0, dkernel, 2, NV); break;             \
    default: pw_weight_tile(in, in_c, dout, out_c, n, i0, j0, dkernel, 1, NV); break;            \
    }
    for (; j0 + 2 * GRAFT_VL <= out_c; j0 += 2 * GRAFT_VL)
        TILE_CASES(2)
    for (; j0 + GRAFT_VL <= out_c; j0 += GRAFT_VL)
        TILE_CASES(1)
#undef TILE_CASES
    for (int r = 0; r < mi; r++)
        for (int64_t j = j0; j < out_c; j++) {
            float sum = 0.0f;
            for (int64_t p = 0; p < n; p++)
                sum += in[p * in_c + i0 + r] * dout[p * out_c + j];
            dkernel[(i0 + r) * out_c + j] += sum;
        }
}

/* Pixels per chunk: its dout rows (128 KiB at most) and input rows stay in L2
 * while every tile streams them. */
static int64_t pw_weight_chunk(int64_t out_c)
{
    int64_t chunk = 32768 / (out_c > 0 ? out_c : 1);
    return chunk < 32 ? 32 : chunk > 256 ? 256 : chunk;
}

void graft_f32_pw_backward_weight__direct(int64_t p0, int64_t p1, int64_t in_c, int64_t out_c,
                                          const float *in, const float *dout, float *dkernel)
{
    const int64_t chunk = pw_weight_chunk(out_c);
    for (int64_t c0 = p0; c0 < p1; c0 += chunk) {
        int64_t n = p1 - c0 < chunk ? p1 - c0 : chunk;
        for (int64_t i0 = 0; i0 < in_c; i0 += 6)
            pw_weight_rows(in + c0 * in_c, in_c, dout + c0 * out_c, out_c, n, i0,
                           in_c - i0 < 6 ? (int)(in_c - i0) : 6, dkernel);
    }
}

/* Pixels per im2col chunk of the tiled weight gradient. */
enum { PATCH_CHUNK = 512 };

size_t graft_f32_conv2d_backward_weight_scratch_floats(const graft_conv_geom *g)
{
    return graft_f32_conv2d_is_pointwise(g) ? 0 : (size_t)(PATCH_CHUNK * g->kernel_h * g->kernel_w * g->in_c);
}

void graft_f32_conv2d_backward_weight__tiled(const graft_conv_geom *g, int64_t p0, int64_t p1,
                                              const float *in, const float *dout, float *dkernel,
                                              float *scratch)
{
    const int64_t K = g->kernel_h * g->kernel_w * g->in_c, CO = g->out_c;
    if (graft_f32_conv2d_is_pointwise(g)) {
        graft_f32_pw_backward_weight__direct(p0, p1, K, CO, in, dout, dkernel);
        return;
    }
    float *patches = scratch;
    for (int64_t c0 = p0; c0 < p1; c0 += PATCH_CHUNK) {
        int64_t m = p1 - c0 < PATCH_CHUNK ? p1 - c0 : PATCH_CHUNK;
        im2col_range(g, in, c0, m, patches);
        graft_f32_pw_backward_weight__direct(0, m, K, CO, patches, dout + c0 * CO, dkernel);
    }
}
