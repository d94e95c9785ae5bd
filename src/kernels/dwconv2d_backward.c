#include <omp.h>
#include <string.h>

#include "kernels/conv.h"
#include "kernels/window.h"
#include "kernels/simd.h"
#include "kernels/split.h"

void graft_f32_dwconv2d_backward_input__ref(const graft_conv_geom *g, int64_t row_start,
                                            int64_t row_end, const float *dout,
                                            const float *kernel, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c, M = CO / C;
    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / H, iy = r % H;
        for (int64_t ix = 0; ix < W; ix++)
            for (int64_t c = 0; c < C; c++) {
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
                        for (int64_t m = 0; m < M; m++)
                            acc += (double)dout[((n * g->out_h + oy) * g->out_w + ox) * CO + c * M + m] *
                                   kernel[((ky * g->kernel_w + kx) * C + c) * M + m];
                    }
                }
                din[(r * W + ix) * C + c] += (float)acc;
            }
    }
}

void graft_f32_dwconv2d_backward_weight__ref(const graft_conv_geom *g, int64_t c_start,
                                             int64_t c_end, const float *in, const float *dout,
                                             float *dkernel)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c, M = CO / C;
    for (int64_t ky = 0; ky < g->kernel_h; ky++)
        for (int64_t kx = 0; kx < g->kernel_w; kx++)
            for (int64_t c = c_start; c < c_end; c++)
                for (int64_t m = 0; m < M; m++) {
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
                                acc += (double)in[((n * H + iy) * W + ix) * C + c] *
                                       dout[((n * g->out_h + oy) * g->out_w + ox) * CO + c * M + m];
                            }
                        }
                    dkernel[((ky * g->kernel_w + kx) * C + c) * M + m] += (float)acc;
                }
}

/* Kernel taps (at most) whose windows reach one input cell along an axis. */
enum { DWB_MAX_TAPS = 64 };

/* The taps k of one axis that put input cell i inside some window, with the
 * output index each lands on; returns how many. */
static int taps_reaching(int64_t i, int64_t k_count, int64_t pad, int64_t s, int64_t d, int64_t out,
                         int64_t *taps, int64_t *outs)
{
    int count = 0;
    for (int64_t k = 0; k < k_count; k++) {
        int64_t o = graft__window_out_index(i, k, pad, s, d, out);
        if (o >= 0) {
            taps[count] = k;
            outs[count] = o;
            count++;
        }
    }
    return count;
}

/* One input pixel, channels [c, c + NV vectors), M=1: the sum over the taps that
 * reach it stays in registers, NV independent FMA chains. */
static inline __attribute__((always_inline)) void
dwi_tile(float *d, const float *dyimg, const float *kernel, int64_t c, int64_t CO, int64_t OW,
         int64_t KW, int nky, const int64_t *kys, const int64_t *oys, int nkx, const int64_t *kxs,
         const int64_t *oxs, const int NV, int accumulate)
{
    graft_vf acc[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        acc[v] = accumulate ? graft_vload(d + c + v * GRAFT_VL) : graft_vsplat(0.0f);
    for (int a = 0; a < nky; a++)
        for (int b = 0; b < nkx; b++) {
            const float *dy = dyimg + (oys[a] * OW + oxs[b]) * CO + c;
            const float *w = kernel + (kys[a] * KW + kxs[b]) * CO + c;
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                acc[v] += graft_vload(dy + v * GRAFT_VL) * graft_vload(w + v * GRAFT_VL);
        }
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
        graft_vstore(d + c + v * GRAFT_VL, acc[v]);
}

static void backward_input_rows(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                const float *dout, const float *kernel, float *din, int accumulate)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c, M = CO / C;
    const int64_t KW = g->kernel_w, OW = g->out_w;
    if (g->kernel_h > DWB_MAX_TAPS || KW > DWB_MAX_TAPS) {
        if (!accumulate)
            memset(din + row_start * W * C, 0, sizeof(float) * (size_t)((row_end - row_start) * W * C));
        graft_f32_dwconv2d_backward_input__ref(g, row_start, row_end, dout, kernel, din);
        return;
    }
    int64_t kys[DWB_MAX_TAPS], oys[DWB_MAX_TAPS], kxs[DWB_MAX_TAPS], oxs[DWB_MAX_TAPS];
    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / H, iy = r % H;
        int nky = taps_reaching(iy, g->kernel_h, g->pad_top, g->stride_h, g->dilation_h, g->out_h,
                                kys, oys);
        const float *dyimg = dout + n * g->out_h * OW * CO;
        for (int64_t ix = 0; ix < W; ix++) {
            int nkx = taps_reaching(ix, KW, g->pad_left, g->stride_w, g->dilation_w, OW, kxs, oxs);
            float *restrict d = din + (r * W + ix) * C;
            int64_t c = 0;
            if (M == 1) {
                for (; c + 4 * GRAFT_VL <= C; c += 4 * GRAFT_VL)
                    dwi_tile(d, dyimg, kernel, c, CO, OW, KW, nky, kys, oys, nkx, kxs, oxs, 4,
                             accumulate);
                for (; c + GRAFT_VL <= C; c += GRAFT_VL)
                    dwi_tile(d, dyimg, kernel, c, CO, OW, KW, nky, kys, oys, nkx, kxs, oxs, 1,
                             accumulate);
            }
            /* Channel tail, and every channel when M > 1. */
            if (!accumulate)
                memset(d + c, 0, sizeof(float) * (size_t)(C - c));
            for (int a = 0; a < nky; a++)
                for (int b = 0; b < nkx; b++) {
                    const float *restrict dy = dyimg + (oys[a] * OW + oxs[b]) * CO;
                    const float *restrict w = kernel + (kys[a] * KW + kxs[b]) * CO;
                    for (int64_t k = c; k < C; k++) {
                        float sum = 0.0f;
                        for (int64_t m = 0; m < M; m++)
                            sum += dy[k * M + m] * w[k * M + m];
                        d[k] += sum;
                    }
                }
        }
    }
}

void graft_f32_dwconv2d_backward_input__direct(const graft_conv_geom *g, int64_t row_start,
                                               int64_t row_end, const float *dout,
                                               const float *kernel, float *din)
{
    backward_input_rows(g, row_start, row_end, dout, kernel, din, 1);
}

/* Floats of the per-row partial sums of the weight gradient (16 KiB of stack). */
enum { DWB_PARTIAL = 4096 };

/* Any M, channels [c_start, c_end): the path for channel tails and M > 1. */
static void dww_generic(const graft_conv_geom *g, int64_t c_start, int64_t c_end, const float *in,
                        const float *dout, float *dkernel)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, CO = g->out_c, M = CO / C;
    const int64_t KW = g->kernel_w, taps = g->kernel_h * KW;
    /* Each output row's contribution is summed in `partial` (a few hundred terms)
     * and then added to dkernel once: over a batch of 100k pixels a running float
     * sum in dkernel would drift. Kernels too large for the buffer accumulate
     * straight into dkernel. */
    float partial[DWB_PARTIAL];
    const int direct = taps * M > DWB_PARTIAL;
    int64_t cw = direct ? c_end - c_start : DWB_PARTIAL / (taps * M);
    for (int64_t c0 = c_start; c0 < c_end; c0 += cw) {
        int64_t nc = c_end - c0 < cw ? c_end - c0 : cw, width = nc * M;
        float *acc = direct ? dkernel + c0 * M : partial;
        int64_t stride = direct ? CO : width; /* between taps in acc */
        for (int64_t r = 0; r < g->batch * g->out_h; r++) {
            int64_t n = r / g->out_h, oy = r % g->out_h;
            if (!direct)
                memset(partial, 0, (size_t)(taps * width) * sizeof(float));
            for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                int64_t iy = oy * g->stride_h - g->pad_top + ky * g->dilation_h;
                if (iy < 0 || iy >= H)
                    continue;
                const float *xrow = in + ((n * H + iy) * W) * C + c0;
                for (int64_t ox = 0; ox < g->out_w; ox++) {
                    const float *restrict dy = dout + (r * g->out_w + ox) * CO + c0 * M;
                    int64_t ix0 = ox * g->stride_w - g->pad_left;
                    for (int64_t kx = 0; kx < KW; kx++) {
                        int64_t ix = ix0 + kx * g->dilation_w;
                        if (ix < 0 || ix >= W)
                            continue;
                        const float *restrict x = xrow + ix * C;
                        float *restrict p = acc + (ky * KW + kx) * stride;
                        if (M == 1) {
                            for (int64_t j = 0; j < nc; j++)
                                p[j] += x[j] * dy[j];
                        } else {
                            for (int64_t j = 0; j < nc; j++)
                                for (int64_t m = 0; m < M; m++)
                                    p[j * M + m] += x[j] * dy[j * M + m];
                        }
                    }
                }
            }
            if (!direct)
                for (int64_t t = 0; t < taps; t++) {
                    float *restrict dk = dkernel + t * CO + c0 * M;
                    const float *restrict p = partial + t * width;
                    for (int64_t j = 0; j < width; j++)
                        dk[j] += p[j];
                }
        }
    }
}

/* Output columns [lo, hi) whose tap kx falls inside the image. */
static void cols_for_tap(const graft_conv_geom *g, int64_t kx, int64_t *lo, int64_t *hi)
{
    int64_t off = kx * g->dilation_w - g->pad_left; /* ix = ox*sw + off */
    int64_t a = off >= 0 ? 0 : (-off + g->stride_w - 1) / g->stride_w;
    int64_t top = g->in_w - 1 - off;
    int64_t b = top < 0 ? 0 : top / g->stride_w + 1;
    if (b > g->out_w)
        b = g->out_w;
    *lo = a;
    *hi = b > a ? b : a;
}

/* One output row's contribution to dW for channels [c, c + NV vectors), M=1:
 * for each tap, the sum over the row's pixels builds up in registers (two
 * interleaved sets of NV chains) and is added to dkernel once. That row sum is
 * also what keeps float error down over a batch of 100k pixels. */
static inline __attribute__((always_inline)) void
dww_tile(const graft_conv_geom *g, const float *img, const float *dyrow, float *dkernel, int64_t c,
         int64_t iy0, int64_t ky_lo, int64_t ky_hi, const int64_t *ox_lo, const int64_t *ox_hi,
         const int NV)
{
    const int64_t W = g->in_w, C = g->in_c, KW = g->kernel_w, sw = g->stride_w;
    for (int64_t ky = ky_lo; ky < ky_hi; ky++) {
        const float *xrow = img + (iy0 + ky * g->dilation_h) * W * C + c;
        for (int64_t kx = 0; kx < KW; kx++) {
            graft_vf a0[4], a1[4];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                a0[v] = a1[v] = graft_vsplat(0.0f);
            const float *x = xrow + (kx * g->dilation_w - g->pad_left) * C;
            int64_t ox = ox_lo[kx];
            for (; ox + 2 <= ox_hi[kx]; ox += 2) {
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) {
                    a0[v] += graft_vload(x + ox * sw * C + v * GRAFT_VL) *
                             graft_vload(dyrow + ox * C + c + v * GRAFT_VL);
                    a1[v] += graft_vload(x + (ox + 1) * sw * C + v * GRAFT_VL) *
                             graft_vload(dyrow + (ox + 1) * C + c + v * GRAFT_VL);
                }
            }
            if (ox < ox_hi[kx]) {
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    a0[v] += graft_vload(x + ox * sw * C + v * GRAFT_VL) *
                             graft_vload(dyrow + ox * C + c + v * GRAFT_VL);
            }
            float *dk = dkernel + (ky * KW + kx) * C + c;
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                graft_vstore(dk + v * GRAFT_VL, graft_vload(dk + v * GRAFT_VL) + (a0[v] + a1[v]));
        }
    }
}

void graft_f32_dwconv2d_backward_weight__direct(const graft_conv_geom *g, int64_t c_start,
                                                int64_t c_end, const float *in, const float *dout,
                                                float *dkernel)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c, KW = g->kernel_w;
    if (g->out_c != C || KW > DWB_MAX_TAPS) {
        dww_generic(g, c_start, c_end, in, dout, dkernel);
        return;
    }
    int64_t ox_lo[DWB_MAX_TAPS], ox_hi[DWB_MAX_TAPS];
    for (int64_t kx = 0; kx < KW; kx++)
        cols_for_tap(g, kx, &ox_lo[kx], &ox_hi[kx]);
    int64_t c_vec = c_start + (c_end - c_start) / GRAFT_VL * GRAFT_VL;
    /* Rows outside, channel tiles inside: a tile's slice of the window rows
     * (3 x 56 pixels x 128 bytes at 56x56) stays in L1 across its taps, and the
     * whole rows stay in L2 for the next tile. */
    for (int64_t r = 0; r < g->batch * g->out_h; r++) {
        int64_t n = r / g->out_h, oy = r % g->out_h;
        int64_t iy0 = oy * g->stride_h - g->pad_top, ky_lo, ky_hi;
        ky_lo = iy0 < 0 ? (-iy0 + g->dilation_h - 1) / g->dilation_h : 0;
        ky_hi = g->kernel_h;
        while (ky_hi > ky_lo && iy0 + (ky_hi - 1) * g->dilation_h > H - 1)
            ky_hi--;
        if (ky_lo > ky_hi)
            ky_lo = ky_hi;
        const float *img = in + n * H * W * C;
        const float *dyrow = dout + r * g->out_w * C;
        int64_t c = c_start;
        for (; c + 4 * GRAFT_VL <= c_vec; c += 4 * GRAFT_VL)
            dww_tile(g, img, dyrow, dkernel, c, iy0, ky_lo, ky_hi, ox_lo, ox_hi, 4);
        for (; c + GRAFT_VL <= c_vec; c += GRAFT_VL)
            dww_tile(g, img, dyrow, dkernel, c, iy0, ky_lo, ky_hi, ox_lo, ox_hi, 1);
    }
    if (c_vec < c_end)
        dww_generic(g, c_vec, c_end, in, dout, dkernel);
}

static void backward_input_parallel(const graft_conv_geom *g, const float *dout,
                                    const float *kernel, float *din, int accumulate)
{
    const int64_t rows = g->batch * g->in_h;
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(rows, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        backward_input_rows(g, s, e, dout, kernel, din, accumulate);
    }
}

void graft_f32_dwconv2d_backward_input_parallel(const graft_conv_geom *g, const float *dout,
                                                const float *kernel, float *din)
{
    backward_input_parallel(g, dout, kernel, din, 1);
}

void graft_f32_dwconv2d_backward_input_parallel_overwrite(const graft_conv_geom *g,
                                                          const float *dout, const float *kernel,
                                                          float *din)
{
    backward_input_parallel(g, dout, kernel, din, 0);
}

void graft_f32_dwconv2d_backward_weight_parallel(const graft_conv_geom *g, const float *in,
                                                 const float *dout, float *dkernel)
{
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(g->in_c, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft_f32_dwconv2d_backward_weight__direct(g, s, e, in, dout, dkernel);
    }
}

/* Parts of the batch for training's depthwise backward: fixed, so the weight
 * gradient (summed part by part, in order) does not depend on the thread count. */
enum { DWB_PARTS = GRAFT_CONV_TRAIN_PARTS };

static size_t round16(size_t floats) { return (floats + 15) / 16 * 16; }

size_t graft_f32_dwconv2d_train_backward_scratch_floats(const graft_conv_geom *g)
{
    return DWB_PARTS * round16((size_t)(g->kernel_h * g->kernel_w * g->out_c)) +
           DWB_PARTS * round16((size_t)(g->out_h * g->out_w * g->out_c)) +
           DWB_PARTS * round16((size_t)(g->in_h * g->in_w * g->in_c));
}

void graft_f32_dwconv2d_train_backward(const graft_conv_geom *g, const float *in,
                                       const float *dout, const float *kernel, float *dkernel,
                                       float *din, int accumulate, const graft_bn_grad_map *bn,
                                       const float *out, const graft_bn_sums_out *sums,
                                       const graft_bn_grad_map *in_map, float *work)
{
    const int64_t taps = g->kernel_h * g->kernel_w * g->out_c;
    const int64_t in_img = g->in_h * g->in_w * g->in_c, out_img = g->out_h * g->out_w * g->out_c;
    const size_t part_stride = round16((size_t)taps), img_stride = round16((size_t)out_img);
    float *parts = work, *mapped = work + DWB_PARTS * part_stride;
    float *inputs = mapped + DWB_PARTS * img_stride;
    graft_conv_geom one = *g;
    one.batch = 1;
    int threads = omp_get_max_threads();
    threads = threads < DWB_PARTS ? threads : DWB_PARTS;
#pragma omp parallel num_threads(threads)
    {
        float *dz = mapped + (size_t)omp_get_thread_num() * img_stride;
        float *x = inputs + (size_t)omp_get_thread_num() * round16((size_t)in_img);
#pragma omp for schedule(static)
        for (int p = 0; p < DWB_PARTS; p++) {
            float *acc = parts + (size_t)p * part_stride;
            if (dkernel)
                memset(acc, 0, sizeof(float) * (size_t)taps);
            const int64_t C = g->in_c;
            if (sums && din)
                for (int64_t i = 0; i < C; i++)
                    sums->part_g[p * C + i] = sums->part_gx[p * C + i] = 0.0;
            for (int64_t n = g->batch * p / DWB_PARTS; n < g->batch * (p + 1) / DWB_PARTS; n++) {
                const float *dy = dout + n * out_img;
                if (bn) {
                    graft_f32_bn_backward_input_rows(out + n * out_img, dy, bn,
                                                     g->out_h * g->out_w, g->out_c, dz);
                    dy = dz;
                }
                const float *img = in + n * in_img;
                if (dkernel && in_map) {
                    graft_f32_scale_shift_act_rows(img, x, in_map, g->in_h * g->in_w, g->in_c);
                    img = x;
                }
                if (dkernel)
                    graft_f32_dwconv2d_backward_weight__direct(&one, 0, g->in_c, img, dy, acc);
                /* With sums, din in bands of rows that the sums read while in L2. */
                const int64_t row = g->in_w * C;
                const int64_t band = !sums ? g->in_h : row < 32768 ? 32768 / row : 1;
                float *d = din ? din + n * in_img : NULL;
                for (int64_t r0 = 0; d && r0 < g->in_h; r0 += band) {
                    const int64_t r1 = g->in_h - r0 < band ? g->in_h : r0 + band;
                    backward_input_rows(&one, r0, r1, dy, kernel, d, accumulate);
                    if (sums)
                        graft_f32_bn_backward_sums_add_rows(sums->x + n * in_img + r0 * row,
                                                            d + r0 * row, &sums->map,
                                                            (r1 - r0) * g->in_w, C,
                                                            sums->part_g + p * C,
                                                            sums->part_gx + p * C);
                }
            }
        }
        if (dkernel)
            graft_f32_add_train_parts(parts, part_stride, taps, dkernel);
    }
}
