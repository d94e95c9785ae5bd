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
