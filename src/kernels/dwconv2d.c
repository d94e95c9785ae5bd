#include <omp.h>
#include <string.h>

#include "kernels/batch_norm.h"
#include "kernels/conv.h"
#include "kernels/simd.h"
#include "kernels/split.h"

void graft_f32_dwconv2d__ref(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                             const float *in, const float *kernel, const float *bias, float *out)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c, M = CO / C;
    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / g->out_h, oy = r % g->out_h;
        for (int64_t ox = 0; ox < g->out_w; ox++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t m = 0; m < M; m++) {
                    double acc = bias ? bias[c * M + m] : 0.0;
                    for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                        int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                        if (iy < 0 || iy >= H)
                            continue;
                        for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                            int64_t ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                            if (ix < 0 || ix >= W)
                                continue;
                            acc += (double)in[((n * H + iy) * W + ix) * C + c] *
                                   kernel[((ky * g->kernel_w + kx) * C + c) * M + m];
                        }
                    }
                    out[(r * g->out_w + ox) * CO + c * M + m] = (float)acc;
                }
    }
}

/* Rows of the window inside the image: [lo, hi) of k taps starting at `first`
 * with step d over an axis of size `size`. */
static void valid_taps(int64_t first, int64_t k, int64_t d, int64_t size, int64_t *lo, int64_t *hi)
{
    int64_t a = first < 0 ? (-first + d - 1) / d : 0;
    int64_t b = k;
    if (first > size - 1)
        b = 0;
    else if (first + (k - 1) * d > size - 1)
        b = (size - 1 - first) / d + 1;
    if (a > k)
        a = k;
    *lo = a;
    *hi = b > a ? b : a;
}

/* One output pixel over channels [c_lo, c_hi), any M, accumulating in the output
 * itself: the path for borders, channel tails and depth multipliers above 1. */
static void pixel_generic(const graft_conv_geom *g, const float *img, const float *kernel,
                          const float *bias, float *o, int64_t iy0, int64_t ky_lo, int64_t ky_hi,
                          int64_t ox, int64_t c_lo, int64_t c_hi)
{
    const int64_t W = g->in_w, C = g->in_c, M = g->out_c / C, KW = g->kernel_w;
    int64_t ix0 = ox * g->stride_w - g->pad_left, kx_lo, kx_hi;
    valid_taps(ix0, KW, g->dilation_w, W, &kx_lo, &kx_hi);
    if (bias)
        memcpy(o + c_lo * M, bias + c_lo * M, (size_t)((c_hi - c_lo) * M) * sizeof(float));
    else
        memset(o + c_lo * M, 0, (size_t)((c_hi - c_lo) * M) * sizeof(float));
    for (int64_t ky = ky_lo; ky < ky_hi; ky++) {
        const float *xrow = img + (iy0 + ky * g->dilation_h) * W * C;
        for (int64_t kx = kx_lo; kx < kx_hi; kx++) {
            const float *x = xrow + (ix0 + kx * g->dilation_w) * C;
            const float *w = kernel + (ky * KW + kx) * C * M;
            if (M == 1) {
                for (int64_t c = c_lo; c < c_hi; c++)
                    o[c] += x[c] * w[c];
            } else {
                for (int64_t c = c_lo; c < c_hi; c++)
                    for (int64_t m = 0; m < M; m++)
                        o[c * M + m] += x[c] * w[c * M + m];
            }
        }
    }
}

/* Measured at batch 32 on MobileNetV2's shapes (bench_kernels): 2 pixels by 4
 * vectors beat 4x2 by 1.5x where the input comes from DRAM (wide channel runs
 * per pixel stream better) and lose nothing when it is cached. */
enum { DW_MAX_P = 2, DW_MAX_NV = 4 };
/* Prefetch distance in output pixels; 2..8 measured the same. */
enum { DW_PREFETCH_PIXELS = 4 };

/* P interior output pixels (every kx tap inside the image) by NV vectors of
 * channels, M=1. The P*NV accumulators stay in registers over all taps and each
 * weight vector is loaded once for the P pixels; P independent FMA chains hide
 * the FMA latency. */
static inline __attribute__((always_inline)) void
tile_m1(const graft_conv_geom *g, const float *x0, const float *w0, const float *b0, float *o0,
        int64_t nky, const int P, const int NV)
{
    const int64_t C = g->in_c, KW = g->kernel_w;
    const int64_t xstep = g->stride_w * C, kxstep = g->dilation_w * C;
    const int64_t kystep = g->dilation_h * g->in_w * C;
    graft_vf acc[DW_MAX_P][DW_MAX_NV]; /* fixed sizes: a VLA would live on the stack */
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        graft_vf b = b0 ? graft_vload(b0 + v * GRAFT_VL) : graft_vsplat(0.0f);
#pragma GCC unroll 8
        for (int p = 0; p < P; p++)
            acc[p][v] = b;
    }
    for (int64_t ky = 0; ky < nky; ky++) {
        const float *xr = x0 + ky * kystep;
        const float *wr = w0 + ky * KW * C;
        for (int64_t kx = 0; kx < KW; kx++) {
            graft_vf w[DW_MAX_NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                w[v] = graft_vload(wr + kx * C + v * GRAFT_VL);
#pragma GCC unroll 8
            for (int p = 0; p < P; p++)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[p][v] += graft_vload(xr + p * xstep + kx * kxstep + v * GRAFT_VL) * w[v];
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            graft_vstore(o0 + p * C + v * GRAFT_VL, acc[p][v]);
}

/* P interior pixels starting at ox, all channels: wide tiles, then a one-vector
 * tile, then the scalar tail through the generic path. */
static inline __attribute__((always_inline)) void
pixels_m1(const graft_conv_geom *g, const float *img, const float *kernel, const float *bias,
          float *orow, int64_t iy0, int64_t ky_lo, int64_t ky_hi, int64_t ox, const int P)
{
    const int64_t C = g->in_c;
    /* Start at the first valid kernel row so no pointer leaves the image. */
    const int64_t iy = iy0 + ky_lo * g->dilation_h;
    const float *x0 = img + (iy * g->in_w + ox * g->stride_w - g->pad_left) * C;
    const float *w0 = kernel + ky_lo * g->kernel_w * C;
    float *o0 = orow + ox * C;
    const int64_t nky = ky_hi - ky_lo;
    int64_t c = 0;
    for (; c + 4 * GRAFT_VL <= C; c += 4 * GRAFT_VL)
        tile_m1(g, x0 + c, w0 + c, bias ? bias + c : NULL, o0 + c, nky, P, 4);
    for (; c + 2 * GRAFT_VL <= C; c += 2 * GRAFT_VL)
        tile_m1(g, x0 + c, w0 + c, bias ? bias + c : NULL, o0 + c, nky, P, 2);
    for (; c + GRAFT_VL <= C; c += GRAFT_VL)
        tile_m1(g, x0 + c, w0 + c, bias ? bias + c : NULL, o0 + c, nky, P, 1);
    if (c < C)
        for (int p = 0; p < P; p++)
            pixel_generic(g, img, kernel, bias, orow + (ox + p) * C, iy0, ky_lo, ky_hi, ox + p, c, C);
}

/* Asks for the input columns [ix, ix+n) of the window's rows ahead of use. A
 * pixel tile walks its input in channel tiles, short runs at a pixel's stride
 * that the hardware prefetchers follow poorly, so once the batch outgrows the
 * L3 the kernel otherwise waits on DRAM. */
static inline void prefetch_cols(const graft_conv_geom *g, const float *img, int64_t iy0,
                                 int64_t ky_lo, int64_t ky_hi, int64_t ix, int64_t n)
{
    const int64_t W = g->in_w, C = g->in_c;
    if (ix + n > W)
        n = W - ix;
    if (n <= 0)
        return;
    for (int64_t ky = ky_lo; ky < ky_hi; ky++) {
        const char *p = (const char *)(img + ((iy0 + ky * g->dilation_h) * W + ix) * C);
        for (int64_t b = 0; b < n * C * (int64_t)sizeof(float); b += 64)
            __builtin_prefetch(p + b, 0, 3);
    }
}

void graft_f32_dwconv2d__direct(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                const float *in, const float *kernel, const float *bias, float *out)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c, OW = g->out_w;
    const int64_t sw = g->stride_w, KW = g->kernel_w, span_w = (KW - 1) * g->dilation_w;
    /* Output columns whose whole window lies inside the image: ox*sw - pad_left >= 0
     * and ox*sw - pad_left + span_w <= W-1. */
    int64_t ox_a = (g->pad_left + sw - 1) / sw;
    int64_t ox_b = W - 1 - span_w + g->pad_left >= 0 ? (W - 1 - span_w + g->pad_left) / sw + 1 : 0;
    if (ox_b > OW)
        ox_b = OW;
    if (ox_a > ox_b)
        ox_a = ox_b = OW < ox_a ? OW : ox_a;
    const int tiled = CO == C;

    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / g->out_h, oy = r % g->out_h;
        int64_t iy0 = oy * g->stride_h - g->pad_top, ky_lo, ky_hi;
        valid_taps(iy0, g->kernel_h, g->dilation_h, H, &ky_lo, &ky_hi);
        const float *img = in + n * H * W * C;
        float *orow = out + r * OW * CO;
        if (!tiled) {
            for (int64_t ox = 0; ox < OW; ox++)
                pixel_generic(g, img, kernel, bias, orow + ox * CO, iy0, ky_lo, ky_hi, ox, 0, C);
            continue;
        }
        for (int64_t ox = 0; ox < ox_a; ox++)
            pixel_generic(g, img, kernel, bias, orow + ox * C, iy0, ky_lo, ky_hi, ox, 0, C);
        int64_t ox = ox_a;
        for (; ox + 2 <= ox_b; ox += 2) {
            prefetch_cols(g, img, iy0, ky_lo, ky_hi, (ox + DW_PREFETCH_PIXELS) * sw - g->pad_left, 2 * sw);
            pixels_m1(g, img, kernel, bias, orow, iy0, ky_lo, ky_hi, ox, 2);
        }
        for (; ox < ox_b; ox++)
            pixels_m1(g, img, kernel, bias, orow, iy0, ky_lo, ky_hi, ox, 1);
        for (ox = ox_b; ox < OW; ox++)
            pixel_generic(g, img, kernel, bias, orow + ox * C, iy0, ky_lo, ky_hi, ox, 0, C);
    }
}

void graft_f32_dwconv2d_parallel(const graft_conv_geom *g, const float *in, const float *kernel,
                                 const float *bias, float *out)
{
    const int64_t rows = g->batch * g->out_h;
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(rows, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft_f32_dwconv2d__direct(g, s, e, in, kernel, bias, out);
    }
}

/* Output pixels per chunk of the moments-taking forward, as the convolution's:
 * the chunk is still in L2 when its moments are taken. */
enum { DW_MOMENT_CHUNK = 128, DW_PARTS = GRAFT_CONV_TRAIN_PARTS };

void graft_f32_dwconv2d_forward_moments(const graft_conv_geom *g, const float *in,
                                        const float *kernel, const float *bias, float *out,
                                        double *part_mean, double *part_m2)
{
    const int64_t rows = g->batch * g->out_h, OW = g->out_w, CO = g->out_c;
    const int64_t pixels = rows * OW;
    int threads = omp_get_max_threads() < DW_PARTS ? omp_get_max_threads() : DW_PARTS;
    if (rows % DW_PARTS) {
        /* Parts of whole rows would not be the pixel parts the merge expects. */
        graft_f32_dwconv2d_parallel(g, in, kernel, bias, out);
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int p = 0; p < DW_PARTS; p++) {
            const int64_t p0 = pixels * p / DW_PARTS, p1 = pixels * (p + 1) / DW_PARTS;
            graft_f32_channel_moments_add_rows(out + p0 * CO, p1 - p0, CO, 0, part_mean + p * CO,
                                               part_m2 + p * CO);
        }
        return;
    }
    const int64_t chunk = OW < DW_MOMENT_CHUNK ? DW_MOMENT_CHUNK / OW : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int p = 0; p < DW_PARTS; p++) {
        const int64_t r0 = rows / DW_PARTS * p, r1 = r0 + rows / DW_PARTS;
        for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
            const int64_t c1 = r1 - c0 < chunk ? r1 : c0 + chunk;
            graft_f32_dwconv2d__direct(g, c0, c1, in, kernel, bias, out);
            graft_f32_channel_moments_add_rows(out + c0 * OW * CO, (c1 - c0) * OW, CO,
                                               (c0 - r0) * OW, part_mean + p * CO,
                                               part_m2 + p * CO);
        }
    }
}

/* Output rows per band of the mapped forward: the band's input rows, mapped,
 * take at most 256 KiB (L2) but never fewer rows than one window's reach. */
static int64_t mapped_band_rows(const graft_conv_geom *g, int64_t *in_rows)
{
    const int64_t row = g->in_w * g->in_c > 0 ? g->in_w * g->in_c : 1;
    const int64_t reach = (g->kernel_h - 1) * g->dilation_h + 1;
    int64_t rows_in = 65536 / row;
    if (rows_in < reach)
        rows_in = reach;
    const int64_t band = (rows_in - reach) / g->stride_h + 1;
    *in_rows = (band - 1) * g->stride_h + reach;
    return band;
}

size_t graft_f32_dwconv2d_forward_mapped_scratch_floats(const graft_conv_geom *g)
{
    int64_t in_rows;
    mapped_band_rows(g, &in_rows);
    return DW_PARTS * (size_t)((in_rows * g->in_w * g->in_c + 15) / 16 * 16);
}

void graft_f32_dwconv2d_forward_moments_mapped(const graft_conv_geom *g, const float *in,
                                               const graft_bn_grad_map *map, const float *kernel,
                                               const float *bias, float *out, double *part_mean,
                                               double *part_m2, float *work)
{
    const int64_t rows = g->batch * g->out_h, OW = g->out_w, CO = g->out_c;
    const int64_t W = g->in_w, C = g->in_c, sh = g->stride_h, pixels = rows * OW;
    const int64_t reach = (g->kernel_h - 1) * g->dilation_h + 1;
    int64_t in_rows;
    const int64_t band = mapped_band_rows(g, &in_rows);
    const size_t stride = (size_t)((in_rows * W * C + 15) / 16 * 16);
    /* Parts of whole rows are the pixel parts the merge expects only then. */
    const int whole_rows = rows % DW_PARTS == 0;
    int threads = omp_get_max_threads() < DW_PARTS ? omp_get_max_threads() : DW_PARTS;
#pragma omp parallel num_threads(threads)
    {
        float *mapped = work + (size_t)omp_get_thread_num() * stride;
#pragma omp for schedule(static)
        for (int p = 0; p < DW_PARTS; p++) {
            const int64_t r0 = rows * p / DW_PARTS, r1 = rows * (p + 1) / DW_PARTS;
            for (int64_t c0 = r0; c0 < r1;) {
                const int64_t n = c0 / g->out_h, oy0 = c0 % g->out_h;
                int64_t oy1 = oy0 + band < g->out_h ? oy0 + band : g->out_h;
                if (oy1 - oy0 > r1 - c0)
                    oy1 = oy0 + (r1 - c0);
                int64_t iy_lo = oy0 * sh - g->pad_top, iy_hi = (oy1 - 1) * sh - g->pad_top + reach;
                iy_lo = iy_lo < 0 ? 0 : iy_lo;
                iy_hi = iy_hi > g->in_h ? g->in_h : iy_hi;
                iy_hi = iy_hi < iy_lo ? iy_lo : iy_hi;
                graft_f32_scale_shift_act_rows(in + (n * g->in_h + iy_lo) * W * C, mapped, map,
                                               (iy_hi - iy_lo) * W, C);
                graft_conv_geom b = *g;
                b.batch = 1;
                b.in_h = iy_hi - iy_lo;
                b.out_h = oy1 - oy0;
                b.pad_top = g->pad_top + iy_lo - oy0 * sh;
                graft_f32_dwconv2d__direct(&b, 0, oy1 - oy0, mapped, kernel, bias,
                                           out + c0 * OW * CO);
                if (whole_rows)
                    graft_f32_channel_moments_add_rows(out + c0 * OW * CO, (oy1 - oy0) * OW, CO,
                                                       (c0 - r0) * OW, part_mean + p * CO,
                                                       part_m2 + p * CO);
                c0 += oy1 - oy0;
            }
        }
        if (!whole_rows) {
#pragma omp for schedule(static)
            for (int p = 0; p < DW_PARTS; p++) {
                const int64_t p0 = pixels * p / DW_PARTS, p1 = pixels * (p + 1) / DW_PARTS;
                graft_f32_channel_moments_add_rows(out + p0 * CO, p1 - p0, CO, 0,
                                                   part_mean + p * CO, part_m2 + p * CO);
            }
        }
    }
}
