#include <float.h>
#include <omp.h>
#include <string.h>

#include "kernels/conv.h"
#include "kernels/split.h"

void graft_f32_maxpool2d__ref(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                              const float *in, float *out)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / g->out_h, oy = r % g->out_h;
        for (int64_t ox = 0; ox < g->out_w; ox++)
            for (int64_t c = 0; c < C; c++) {
                float best = 0.0f;
                int any = 0;
                for (int64_t ky = 0; ky < g->kernel_h; ky++)
                    for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                        int64_t iy = oy * g->stride_h - g->pad_top + ky;
                        int64_t ix = ox * g->stride_w - g->pad_left + kx;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                            continue;
                        float x = in[((n * H + iy) * W + ix) * C + c];
                        if (!any || x > best)
                            best = x;
                        any = 1;
                    }
                out[(r * g->out_w + ox) * C + c] = best;
            }
    }
}

void graft_f32_avgpool2d__ref(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                              const float *in, float *out)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / g->out_h, oy = r % g->out_h;
        for (int64_t ox = 0; ox < g->out_w; ox++)
            for (int64_t c = 0; c < C; c++) {
                double sum = 0.0;
                int64_t count = 0;
                for (int64_t ky = 0; ky < g->kernel_h; ky++)
                    for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                        int64_t iy = oy * g->stride_h - g->pad_top + ky;
                        int64_t ix = ox * g->stride_w - g->pad_left + kx;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                            continue;
                        sum += in[((n * H + iy) * W + ix) * C + c];
                        count++;
                    }
                out[(r * g->out_w + ox) * C + c] = count ? (float)(sum / (double)count) : 0.0f;
            }
    }
}

/* Taps [lo, hi) of a k-wide window starting at `first` that fall inside [0, size). */
static void clip(int64_t first, int64_t k, int64_t size, int64_t *lo, int64_t *hi)
{
    int64_t a = first < 0 ? -first : 0, b = size - first < k ? size - first : k;
    if (a > k)
        a = k;
    *lo = a;
    *hi = b > a ? b : a;
}

/* Both pools walk the window's valid cells and fold each into the output pixel
 * over all channels: contiguous channel loops the compiler vectorises, and the
 * output pixel stays in L1 while the window is read. */
static void pool_rows(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                      const float *in, float *out, int is_max)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    for (int64_t r = row_start; r < row_end; r++) {
        int64_t n = r / g->out_h, oy = r % g->out_h;
        int64_t iy0 = oy * g->stride_h - g->pad_top, ky_lo, ky_hi;
        clip(iy0, g->kernel_h, H, &ky_lo, &ky_hi);
        for (int64_t ox = 0; ox < g->out_w; ox++) {
            int64_t ix0 = ox * g->stride_w - g->pad_left, kx_lo, kx_hi;
            clip(ix0, g->kernel_w, W, &kx_lo, &kx_hi);
            float *restrict o = out + (r * g->out_w + ox) * C;
            int64_t count = (ky_hi - ky_lo) * (kx_hi - kx_lo);
            if (count == 0) {
                memset(o, 0, (size_t)C * sizeof(float));
                continue;
            }
            const float *first = in + ((n * H + iy0 + ky_lo) * W + ix0 + kx_lo) * C;
            memcpy(o, first, (size_t)C * sizeof(float));
            for (int64_t ky = ky_lo; ky < ky_hi; ky++)
                for (int64_t kx = kx_lo; kx < kx_hi; kx++) {
                    if (ky == ky_lo && kx == kx_lo)
                        continue;
                    const float *restrict x = in + ((n * H + iy0 + ky) * W + ix0 + kx) * C;
                    if (is_max)
                        for (int64_t c = 0; c < C; c++)
                            o[c] = x[c] > o[c] ? x[c] : o[c];
                    else
                        for (int64_t c = 0; c < C; c++)
                            o[c] += x[c];
                }
            if (!is_max) {
                /* Divide rather than multiply by the reciprocal: TF divides. */
                float d = (float)count;
                for (int64_t c = 0; c < C; c++)
                    o[c] /= d;
            }
        }
    }
}

void graft_f32_maxpool2d__direct(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                 const float *in, float *out)
{
    pool_rows(g, row_start, row_end, in, out, 1);
}

void graft_f32_avgpool2d__direct(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                 const float *in, float *out)
{
    pool_rows(g, row_start, row_end, in, out, 0);
}

void graft_f32_maxpool2d_parallel(const graft_conv_geom *g, const float *in, float *out)
{
    const int64_t rows = g->batch * g->out_h;
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(rows, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft_f32_maxpool2d__direct(g, s, e, in, out);
    }
}

void graft_f32_avgpool2d_parallel(const graft_conv_geom *g, const float *in, float *out)
{
    const int64_t rows = g->batch * g->out_h;
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(rows, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft_f32_avgpool2d__direct(g, s, e, in, out);
    }
}

void graft_f32_global_avgpool__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                   const float *in, float *out)
{
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t k = 0; k < c; k++) {
            double sum = 0.0;
            for (int64_t p = 0; p < hw; p++)
                sum += in[(n * hw + p) * c + k];
            out[n * c + k] = (float)(sum / (double)hw);
        }
}

void graft_f32_global_avgpool__direct(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                      const float *in, float *out)
{
    for (int64_t n = n_start; n < n_end; n++) {
        float *restrict o = out + n * c;
        memset(o, 0, (size_t)c * sizeof(float));
        for (int64_t p = 0; p < hw; p++) {
            const float *restrict x = in + (n * hw + p) * c;
            for (int64_t k = 0; k < c; k++)
                o[k] += x[k];
        }
        float d = (float)hw;
        for (int64_t k = 0; k < c; k++)
            o[k] /= d;
    }
}

void graft_f32_global_maxpool__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                   const float *in, float *out)
{
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t k = 0; k < c; k++) {
            float best = -FLT_MAX;
            for (int64_t p = 0; p < hw; p++)
                if (p == 0 || in[(n * hw + p) * c + k] > best)
                    best = in[(n * hw + p) * c + k];
            out[n * c + k] = best;
        }
}

void graft_f32_global_maxpool__direct(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                      const float *in, float *out)
{
    for (int64_t n = n_start; n < n_end; n++) {
        float *restrict o = out + n * c;
        memcpy(o, in + n * hw * c, (size_t)c * sizeof(float));
        for (int64_t p = 1; p < hw; p++) {
            const float *restrict x = in + (n * hw + p) * c;
            for (int64_t k = 0; k < c; k++)
                o[k] = x[k] > o[k] ? x[k] : o[k];
        }
    }
}

/* ---- backward ------------------------------------------------------------------ */

void graft_f32_maxpool2d_backward__ref(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                       const float *in, const float *dout, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t oy = 0; oy < g->out_h; oy++)
            for (int64_t ox = 0; ox < g->out_w; ox++)
                for (int64_t c = 0; c < C; c++) {
                    int64_t arg = -1;
                    float best = 0.0f;
                    for (int64_t ky = 0; ky < g->kernel_h; ky++)
                        for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                            int64_t iy = oy * g->stride_h - g->pad_top + ky;
                            int64_t ix = ox * g->stride_w - g->pad_left + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                continue;
                            int64_t i = ((n * H + iy) * W + ix) * C + c;
                            if (arg < 0 || in[i] > best) {
                                best = in[i];
                                arg = i;
                            }
                        }
                    if (arg >= 0)
                        din[arg] += dout[((n * g->out_h + oy) * g->out_w + ox) * C + c];
                }
}

void graft_f32_avgpool2d_backward__ref(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                       const float *dout, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t oy = 0; oy < g->out_h; oy++)
            for (int64_t ox = 0; ox < g->out_w; ox++)
                for (int64_t c = 0; c < C; c++) {
                    int64_t count = 0;
                    for (int64_t pass = 0; pass < 2; pass++)
                        for (int64_t ky = 0; ky < g->kernel_h; ky++)
                            for (int64_t kx = 0; kx < g->kernel_w; kx++) {
                                int64_t iy = oy * g->stride_h - g->pad_top + ky;
                                int64_t ix = ox * g->stride_w - g->pad_left + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                    continue;
                                if (pass == 0)
                                    count++;
                                else
                                    din[((n * H + iy) * W + ix) * C + c] +=
                                        dout[((n * g->out_h + oy) * g->out_w + ox) * C + c] /
                                        (float)count;
                            }
                }
}

/* Channels handled per step of the max-pool gradient: its running maxima and
 * their positions live on the stack. */
enum { POOL_BLOCK = 256 };

void graft_f32_maxpool2d_backward__direct(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                          const float *in, const float *dout, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    float best[POOL_BLOCK];
    int32_t arg[POOL_BLOCK]; /* pixel index within the image, y*W + x */
    for (int64_t n = n_start; n < n_end; n++) {
        const float *img = in + n * H * W * C;
        float *dimg = din + n * H * W * C;
        for (int64_t oy = 0; oy < g->out_h; oy++) {
            int64_t iy0 = oy * g->stride_h - g->pad_top, ky_lo, ky_hi;
            clip(iy0, g->kernel_h, H, &ky_lo, &ky_hi);
            for (int64_t ox = 0; ox < g->out_w; ox++) {
                int64_t ix0 = ox * g->stride_w - g->pad_left, kx_lo, kx_hi;
                clip(ix0, g->kernel_w, W, &kx_lo, &kx_hi);
                if (ky_lo == ky_hi || kx_lo == kx_hi)
                    continue;
                const float *dy = dout + ((n * g->out_h + oy) * g->out_w + ox) * C;
                for (int64_t c0 = 0; c0 < C; c0 += POOL_BLOCK) {
                    int64_t nc = C - c0 < POOL_BLOCK ? C - c0 : POOL_BLOCK;
                    int32_t first = (int32_t)((iy0 + ky_lo) * W + ix0 + kx_lo);
                    const float *x0 = img + (int64_t)first * C + c0;
                    for (int64_t j = 0; j < nc; j++) {
                        best[j] = x0[j];
                        arg[j] = first;
                    }
                    /* Strictly greater replaces: ties keep the first cell in
                     * row-major window order, as the ref and TF do. */
                    for (int64_t ky = ky_lo; ky < ky_hi; ky++)
                        for (int64_t kx = kx_lo; kx < kx_hi; kx++) {
                            int32_t pix = (int32_t)((iy0 + ky) * W + ix0 + kx);
                            const float *restrict x = img + (int64_t)pix * C + c0;
                            for (int64_t j = 0; j < nc; j++) {
                                int gt = x[j] > best[j];
                                best[j] = gt ? x[j] : best[j];
                                arg[j] = gt ? pix : arg[j];
                            }
                        }
                    for (int64_t j = 0; j < nc; j++)
                        dimg[(int64_t)arg[j] * C + c0 + j] += dy[c0 + j];
                }
            }
        }
    }
}

void graft_f32_avgpool2d_backward__direct(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                          const float *dout, float *din)
{
    const int64_t H = g->in_h, W = g->in_w, C = g->in_c;
    float share[POOL_BLOCK];
    for (int64_t n = n_start; n < n_end; n++) {
        float *dimg = din + n * H * W * C;
        for (int64_t oy = 0; oy < g->out_h; oy++) {
            int64_t iy0 = oy * g->stride_h - g->pad_top, ky_lo, ky_hi;
            clip(iy0, g->kernel_h, H, &ky_lo, &ky_hi);
            for (int64_t ox = 0; ox < g->out_w; ox++) {
                int64_t ix0 = ox * g->stride_w - g->pad_left, kx_lo, kx_hi;
                clip(ix0, g->kernel_w, W, &kx_lo, &kx_hi);
                int64_t count = (ky_hi - ky_lo) * (kx_hi - kx_lo);
                if (count == 0)
                    continue;
                const float *dy = dout + ((n * g->out_h + oy) * g->out_w + ox) * C;
                float d = (float)count;
                for (int64_t c0 = 0; c0 < C; c0 += POOL_BLOCK) {
                    int64_t nc = C - c0 < POOL_BLOCK ? C - c0 : POOL_BLOCK;
                    for (int64_t j = 0; j < nc; j++)
                        share[j] = dy[c0 + j] / d;
                    for (int64_t ky = ky_lo; ky < ky_hi; ky++)
                        for (int64_t kx = kx_lo; kx < kx_hi; kx++) {
                            float *restrict o = dimg + ((iy0 + ky) * W + ix0 + kx) * C + c0;
                            for (int64_t j = 0; j < nc; j++)
                                o[j] += share[j];
                        }
                }
            }
        }
    }
}

void graft_f32_maxpool2d_backward_parallel(const graft_conv_geom *g, const float *in,
                                           const float *dout, float *din)
{
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(g->batch, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft_f32_maxpool2d_backward__direct(g, s, e, in, dout, din);
    }
}

void graft_f32_avgpool2d_backward_parallel(const graft_conv_geom *g, const float *dout, float *din)
{
#pragma omp parallel
    {
        int64_t s, e;
        graft__split_range(g->batch, omp_get_thread_num(), omp_get_num_threads(), &s, &e);
        graft_f32_avgpool2d_backward__direct(g, s, e, dout, din);
    }
}

void graft_f32_global_avgpool_backward__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                            const float *dout, float *din)
{
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t p = 0; p < hw; p++)
            for (int64_t k = 0; k < c; k++)
                din[(n * hw + p) * c + k] += dout[n * c + k] / (float)hw;
}

void graft_f32_global_avgpool_backward__direct(int64_t hw, int64_t c, int64_t n_start,
                                               int64_t n_end, const float *dout, float *din)
{
    float share[POOL_BLOCK];
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t k0 = 0; k0 < c; k0 += POOL_BLOCK) {
            int64_t nk = c - k0 < POOL_BLOCK ? c - k0 : POOL_BLOCK;
            for (int64_t j = 0; j < nk; j++)
                share[j] = dout[n * c + k0 + j] / (float)hw;
            for (int64_t p = 0; p < hw; p++) {
                float *restrict o = din + (n * hw + p) * c + k0;
                for (int64_t j = 0; j < nk; j++)
                    o[j] += share[j];
            }
        }
}

void graft_f32_global_maxpool_backward__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                            const float *in, const float *dout, float *din)
{
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t k = 0; k < c; k++) {
            int64_t arg = 0;
            for (int64_t p = 1; p < hw; p++)
                if (in[(n * hw + p) * c + k] > in[(n * hw + arg) * c + k])
                    arg = p;
            din[(n * hw + arg) * c + k] += dout[n * c + k];
        }
}

void graft_f32_global_maxpool_backward__direct(int64_t hw, int64_t c, int64_t n_start,
                                               int64_t n_end, const float *in, const float *dout,
                                               float *din)
{
    float best[POOL_BLOCK];
    int32_t arg[POOL_BLOCK];
    for (int64_t n = n_start; n < n_end; n++)
        for (int64_t k0 = 0; k0 < c; k0 += POOL_BLOCK) {
            int64_t nk = c - k0 < POOL_BLOCK ? c - k0 : POOL_BLOCK;
            const float *x0 = in + n * hw * c + k0;
            for (int64_t j = 0; j < nk; j++) {
                best[j] = x0[j];
                arg[j] = 0;
            }
            for (int32_t p = 1; p < hw; p++) {
                const float *restrict x = x0 + (int64_t)p * c;
                for (int64_t j = 0; j < nk; j++) {
                    int gt = x[j] > best[j];
                    best[j] = gt ? x[j] : best[j];
                    arg[j] = gt ? p : arg[j];
                }
            }
            for (int64_t j = 0; j < nk; j++)
                din[(n * hw + arg[j]) * c + k0 + j] += dout[n * c + k0 + j];
        }
}
