/* Depthwise convolution one output row at a time from row pointers, with the
 * bias and ReLU(6) fused: the depthwise stage of a fused inverted-residual block. */
#include "kernels/conv.h"
#include "kernels/simd.h"

static float act_scalar(graft__activation act, float x)
{
    if (act == GRAFT__ACT_RELU || act == GRAFT__ACT_RELU6)
        x = x > 0.0f ? x : 0.0f;
    if (act == GRAFT__ACT_RELU6)
        x = x < 6.0f ? x : 6.0f;
    return x;
}

void graft_f32_dwconv2d_row__ref(const graft_conv_geom *g, const float *const *rows,
                                 const float *kernel, const float *bias, graft__activation act,
                                 float *out)
{
    const int64_t W = g->in_w, C = g->in_c, KW = g->kernel_w;
    for (int64_t ox = 0; ox < g->out_w; ox++)
        for (int64_t c = 0; c < C; c++) {
            double acc = bias ? bias[c] : 0.0;
            for (int64_t ky = 0; ky < g->kernel_h; ky++) {
                if (!rows[ky])
                    continue;
                for (int64_t kx = 0; kx < KW; kx++) {
                    int64_t ix = ox * g->stride_w - g->pad_left + kx * g->dilation_w;
                    if (ix >= 0 && ix < W)
                        acc += (double)rows[ky][ix * C + c] * kernel[(ky * KW + kx) * C + c];
                }
            }
            out[ox * C + c] = act_scalar(act, (float)acc);
        }
}

/* The input rows that are not padding, with their kernel rows. */
typedef struct row_set {
    int n;
    const float *x[GRAFT_DW_ROW_MAX_KH];
    const float *w[GRAFT_DW_ROW_MAX_KH];
} row_set;

/* Window of output column ox: first input column and the taps inside the row. */
static void taps(const graft_conv_geom *g, int64_t ox, int64_t *ix0, int64_t *lo, int64_t *hi)
{
    const int64_t d = g->dilation_w;
    *ix0 = ox * g->stride_w - g->pad_left;
    *lo = 0;
    *hi = g->kernel_w;
    while (*lo < *hi && *ix0 + *lo * d < 0)
        (*lo)++;
    while (*hi > *lo && *ix0 + (*hi - 1) * d >= g->in_w)
        (*hi)--;
}

/* One pixel, channels [c0, c1), scalar: borders and channel tails. */
static void pixel_scalar(const graft_conv_geom *g, const row_set *rs, const float *bias,
                         graft__activation act, int64_t ox, int64_t c0, int64_t c1, float *o)
{
    const int64_t C = g->in_c;
    int64_t ix0, lo, hi;
    taps(g, ox, &ix0, &lo, &hi);
    for (int64_t c = c0; c < c1; c++) {
        float acc = bias ? bias[c] : 0.0f;
        for (int r = 0; r < rs->n; r++)
            for (int64_t kx = lo; kx < hi; kx++)
                acc += rs->x[r][(ix0 + kx * g->dilation_w) * C + c] * rs->w[r][kx * C + c];
        o[c] = act_scalar(act, acc);
    }
}

static inline __attribute__((always_inline)) graft_vf act_vec(graft__activation act, graft_vf x)
{
    if (act == GRAFT__ACT_RELU)
        return graft_vrelu(x);
    if (act == GRAFT__ACT_RELU6)
        return graft_vrelu6(x);
    return x;
}

/* P pixels whose taps lie between lo and hi, by NV vectors of channels from c:
 * P*NV accumulators in registers over all taps, each weight vector loaded once
 * for the P pixels (layout as the whole-tensor kernel's, dwconv2d.c). */
static inline __attribute__((always_inline)) void
tile(const graft_conv_geom *g, const row_set *rs, const float *bias, graft__activation act,
     int64_t ix0, int64_t lo, int64_t hi, int64_t c, float *o, const int P, const int NV)
{
    const int64_t C = g->in_c, xstep = g->stride_w * C, kxstep = g->dilation_w * C;
    graft_vf acc[2][4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        graft_vf b = bias ? graft_vload(bias + c + v * GRAFT_VL) : graft_vsplat(0.0f);
#pragma GCC unroll 2
        for (int p = 0; p < P; p++)
            acc[p][v] = b;
    }
    /* Pointers start at the first tap inside the row, so none leaves it. */
    for (int r = 0; r < rs->n; r++) {
        const float *x = rs->x[r] + (ix0 + lo * g->dilation_w) * C + c;
        const float *w = rs->w[r] + lo * C + c;
        for (int64_t t = 0; t < hi - lo; t++) {
            graft_vf wv[4];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                wv[v] = graft_vload(w + t * C + v * GRAFT_VL);
#pragma GCC unroll 2
            for (int p = 0; p < P; p++)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[p][v] += graft_vload(x + p * xstep + t * kxstep + v * GRAFT_VL) * wv[v];
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            graft_vstore(o + p * C + c + v * GRAFT_VL, act_vec(act, acc[p][v]));
}

/* P interior pixels of a 3-tap row with stride S (dilation 1), by NV vectors
 * of channels: the (P-1)*S+3 input columns under the P windows are each loaded
 * once and feed every window they fall in, where the generic tile loads 3P.
 * Loads per row: 4*2+2 inputs and 3 weights for 12 FMAs at P=4, S=2 (the
 * generic P=2 tile: 6 and 3 for 6), so the kernel stops waiting on L1. */
static inline __attribute__((always_inline)) void
tile3(const graft_conv_geom *g, const row_set *rs, const float *bias, graft__activation act,
      int64_t ix0, int64_t c, float *o, const int P, const int S, const int NV)
{
    const int64_t C = g->in_c;
    graft_vf acc[4][2];
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
        graft_vf b = bias ? graft_vload(bias + c + v * GRAFT_VL) : graft_vsplat(0.0f);
#pragma GCC unroll 4
        for (int p = 0; p < P; p++)
            acc[p][v] = b;
    }
    /* Pointers step by C: offsets j*C would each need a register (C is not
     * known here), which the compiler spilled to the stack. */
    for (int r = 0; r < rs->n; r++) {
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++) {
            const float *w = rs->w[r] + c + v * GRAFT_VL;
            const float *x = rs->x[r] + ix0 * C + c + v * GRAFT_VL;
            graft_vf w0 = graft_vload(w);
            graft_vf w1 = graft_vload(w + C);
            graft_vf w2 = graft_vload(w + 2 * C);
#pragma GCC unroll 16
            for (int j = 0; j < (P - 1) * S + 3; j++, x += C) {
                graft_vf xj = graft_vload(x);
#pragma GCC unroll 4
                for (int p = 0; p < P; p++) {
                    const int t = j - p * S;
                    if (t == 0)
                        acc[p][v] += xj * w0;
                    else if (t == 1)
                        acc[p][v] += xj * w1;
                    else if (t == 2)
                        acc[p][v] += xj * w2;
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; p++)
#pragma GCC unroll 2
        for (int v = 0; v < NV; v++)
            graft_vstore(o + p * C + c + v * GRAFT_VL, act_vec(act, acc[p][v]));
}

/* Four interior pixels of a 3-tap row from ox, channels [c0, c1). */
static inline __attribute__((always_inline)) void
pixels3(const graft_conv_geom *g, const row_set *rs, const float *bias, graft__activation act,
        int64_t ox, int64_t c0, int64_t c1, float *orow, const int S)
{
    const int64_t C = g->in_c, ix0 = ox * S - g->pad_left;
    float *o = orow + ox * C;
    int64_t c = c0;
    for (; c + 2 * GRAFT_VL <= c1; c += 2 * GRAFT_VL)
        tile3(g, rs, bias, act, ix0, c, o, 4, S, 2);
    for (; c + GRAFT_VL <= c1; c += GRAFT_VL)
        tile3(g, rs, bias, act, ix0, c, o, 4, S, 1);
    if (c < c1)
        for (int p = 0; p < 4; p++)
            pixel_scalar(g, rs, bias, act, ox + p, c, c1, o + p * C);
}

/* P neighbouring pixels from ox, channels [c0, c1) (their taps are the same span). */
static inline __attribute__((always_inline)) void
pixels(const graft_conv_geom *g, const row_set *rs, const float *bias, graft__activation act,
       int64_t ox, int64_t c0, int64_t c1, float *orow, const int P)
{
    const int64_t C = g->in_c;
    int64_t ix0, lo, hi;
    taps(g, ox, &ix0, &lo, &hi);
    float *o = orow + ox * C;
    int64_t c = c0;
    for (; c + 4 * GRAFT_VL <= c1; c += 4 * GRAFT_VL)
        tile(g, rs, bias, act, ix0, lo, hi, c, o, P, 4);
    for (; c + GRAFT_VL <= c1; c += GRAFT_VL)
        tile(g, rs, bias, act, ix0, lo, hi, c, o, P, 1);
    if (c < c1)
        for (int p = 0; p < P; p++)
            pixel_scalar(g, rs, bias, act, ox + p, c, c1, o + p * C);
}

void graft_f32_dwconv2d_row__direct(const graft_conv_geom *g, const float *const *rows,
                                    const float *kernel, const float *bias,
                                    graft__activation act, float *out)
{
    graft_f32_dwconv2d_row_channels__direct(g, rows, kernel, bias, act, 0, g->in_c, out);
}

void graft_f32_dwconv2d_row_channels__direct(const graft_conv_geom *g, const float *const *rows,
                                             const float *kernel, const float *bias,
                                             graft__activation act, int64_t c0, int64_t c1,
                                             float *out)
{
    const int64_t C = g->in_c, KW = g->kernel_w, W = g->in_w, sw = g->stride_w;
    const int64_t span = (KW - 1) * g->dilation_w;
    row_set rs = {0};
    for (int64_t ky = 0; ky < g->kernel_h; ky++)
        if (rows[ky]) {
            rs.x[rs.n] = rows[ky];
            rs.w[rs.n++] = kernel + ky * KW * C;
        }
    /* Columns whose window lies inside the row: ox*sw - pad_left >= 0 and
     * ox*sw - pad_left + span <= W - 1. */
    int64_t a = (g->pad_left + sw - 1) / sw;
    int64_t b = W - 1 - span + g->pad_left >= 0 ? (W - 1 - span + g->pad_left) / sw + 1 : 0;
    if (b > g->out_w)
        b = g->out_w;
    if (a > b)
        a = b;
    int64_t ox = 0;
    for (; ox < a; ox++)
        pixels(g, &rs, bias, act, ox, c0, c1, out, 1);
    if (KW == 3 && g->dilation_w == 1 && (sw == 1 || sw == 2)) {
        for (; ox + 4 <= b; ox += 4)
            if (sw == 1)
                pixels3(g, &rs, bias, act, ox, c0, c1, out, 1);
            else
                pixels3(g, &rs, bias, act, ox, c0, c1, out, 2);
    }
    for (; ox + 2 <= b; ox += 2)
        pixels(g, &rs, bias, act, ox, c0, c1, out, 2);
    for (; ox < g->out_w; ox++)
        pixels(g, &rs, bias, act, ox, c0, c1, out, 1);
}
