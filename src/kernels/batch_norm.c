#include "kernels/batch_norm.h"

#include <omp.h>

#include "kernels/simd.h"

/* ReLU(6)'s derivative at pre-activation v, the clamp's comparisons on it. */
static inline float act_grad(graft__activation act, float v)
{
    if (act == GRAFT__ACT_RELU)
        return v > 0.0f ? 1.0f : 0.0f;
    if (act == GRAFT__ACT_RELU6)
        return v > 0.0f && v < 6.0f ? 1.0f : 0.0f;
    return 1.0f;
}

static inline float act_apply(graft__activation act, float v)
{
    if (act == GRAFT__ACT_LINEAR)
        return v;
    v = v > 0.0f ? v : 0.0f;
    return act == GRAFT__ACT_RELU6 && v > 6.0f ? 6.0f : v;
}

void graft_f32_channel_moments__ref(const float *x, int64_t rows, int64_t ch, double *mean,
                                    double *var)
{
    for (int64_t c = 0; c < ch; c++) {
        double s = 0.0, q = 0.0;
        for (int64_t r = 0; r < rows; r++)
            s += x[r * ch + c];
        mean[c] = s / (double)rows;
        for (int64_t r = 0; r < rows; r++) {
            double d = x[r * ch + c] - mean[c];
            q += d * d;
        }
        var[c] = q / (double)rows;
    }
}

void graft_f32_scale_shift_act__ref(const float *x, float *y, const float *mul, const float *add,
                                    int64_t rows, int64_t ch, graft__activation act)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ch; c++)
            y[r * ch + c] = act_apply(act, x[r * ch + c] * mul[c] + add[c]);
}

void graft_f32_bn_backward_sums__ref(const float *x, const float *dy, graft__activation act,
                                     const float *mul, const float *add, const float *mean,
                                     const float *inv, int64_t rows, int64_t ch, double *sum_g,
                                     double *sum_gx)
{
    for (int64_t c = 0; c < ch; c++) {
        double s = 0.0, sx = 0.0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = r * ch + c;
            double g = (double)dy[i] * act_grad(act, x[i] * mul[c] + add[c]);
            s += g;
            sx += g * (((double)x[i] - mean[c]) * inv[c]);
        }
        sum_g[c] = s;
        sum_gx[c] = sx;
    }
}

void graft_f32_bn_backward_input__ref(const float *x, const float *dy, graft__activation act,
                                      const float *mul, const float *add, const float *mean,
                                      const float *inv, const float *scale, const float *mg,
                                      const float *mgx, int64_t rows, int64_t ch, float *dx,
                                      int accumulate)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ch; c++) {
            int64_t i = r * ch + c;
            double g = (double)dy[i] * act_grad(act, x[i] * mul[c] + add[c]);
            double xhat = ((double)x[i] - mean[c]) * inv[c];
            float v = (float)(scale[c] * (g - mg[c] - xhat * mgx[c]));
            dx[i] = accumulate ? dx[i] + v : v;
        }
}

/* The rows split into at most PARTS parts of at least PART_MIN rows, each
 * summed into doubles of its own and the parts merged in order: the same
 * result on any number of threads. Within a part, float partial sums over
 * BLOCK rows of a TILE of channels (in L1) go into the doubles. Parts of 128
 * rows give a 7x7 batch of 32 twelve parts, which two threads share evenly (3
 * parts of 512 left one thread a third of the work idle). */
enum { PARTS = 64, PART_MIN = 128, BLOCK = 32, TILE = 256 };

static int64_t parts_of(int64_t rows)
{
    int64_t p = rows / PART_MIN;
    return p < 1 ? 1 : p > PARTS ? PARTS : p;
}

size_t graft_f32_bn_scratch_bytes(int64_t rows, int64_t ch)
{
    return sizeof(double) * 2 * (size_t)(parts_of(rows) * ch);
}

/* dy where act'(v) is 1, else 0; for the linear case dy itself. */
static inline graft_vf vgrad(graft__activation act, graft_vf v, graft_vf dy)
{
    if (act == GRAFT__ACT_LINEAR)
        return dy;
    graft_vi on = v > graft_vsplat(0.0f);
    if (act == GRAFT__ACT_RELU6)
        on &= v < graft_vsplat(6.0f);
    return (graft_vf)((graft_vi)dy & on);
}

/* Mean and squared deviations of rows [r0, r1) x channels [c0, c0 + w), merged
 * into the part's running (n, mean, m2). Deviations from the block's first row,
 * exact in float for nearby values, keep a mean far from zero from swamping them. */
static void moments_block(const float *x, int64_t ch, int64_t r0, int64_t r1, int64_t c0,
                          int64_t w, int64_t n_before, double *mean, double *m2)
{
    float s[TILE], q[TILE];
    const float *x0 = x + r0 * ch + c0;
    const int64_t nb = r1 - r0;
    for (int64_t j = 0; j < w; j++)
        s[j] = q[j] = 0.0f;
    for (int64_t r = r0 + 1; r < r1; r++) {
        const float *xr = x + r * ch + c0;
        int64_t j = 0;
        for (; j + GRAFT_VL <= w; j += GRAFT_VL)
            graft_vstore(s + j, graft_vload(s + j) + (graft_vload(xr + j) - graft_vload(x0 + j)));
        for (; j < w; j++)
            s[j] += xr[j] - x0[j];
    }
    const float inv_nb = 1.0f / (float)nb;
    for (int64_t j = 0; j < w; j++)
        s[j] *= inv_nb;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * ch + c0;
        int64_t j = 0;
        for (; j + GRAFT_VL <= w; j += GRAFT_VL) {
            graft_vf d = (graft_vload(xr + j) - graft_vload(x0 + j)) - graft_vload(s + j);
            graft_vstore(q + j, graft_vload(q + j) + d * d);
        }
        for (; j < w; j++) {
            float d = (xr[j] - x0[j]) - s[j];
            q[j] += d * d;
        }
    }
    const double n = (double)(n_before + nb), f = (double)nb / n,
                 g = (double)n_before * (double)nb / n;
    for (int64_t j = 0; j < w; j++) {
        double delta = ((double)x0[j] + (double)s[j]) - mean[j];
        mean[j] += delta * f;
        m2[j] += (double)q[j] + delta * delta * g;
    }
}

void graft_f32_channel_moments_add_rows(const float *x, int64_t rows, int64_t ch,
                                        int64_t n_before, double *mean, double *m2)
{
    if (n_before == 0)
        for (int64_t c = 0; c < ch; c++)
            mean[c] = m2[c] = 0.0;
    for (int64_t b = 0; b < rows; b += BLOCK) {
        int64_t b1 = rows - b < BLOCK ? rows : b + BLOCK;
        for (int64_t c0 = 0; c0 < ch; c0 += TILE)
            moments_block(x, ch, b, b1, c0, ch - c0 < TILE ? ch - c0 : TILE, n_before + b,
                          mean + c0, m2 + c0);
    }
}

void graft_f32_channel_moments_merge(const double *part_mean, const double *part_m2,
                                     int64_t parts, int64_t rows, int64_t ch, double *mean,
                                     double *var)
{
    for (int64_t c = 0; c < ch; c++) {
        double m = 0.0, q = 0.0;
        int64_t n = 0;
        for (int64_t p = 0; p < parts; p++) {
            int64_t np = rows * (p + 1) / parts - rows * p / parts;
            if (np == 0)
                continue;
            double delta = part_mean[p * ch + c] - m, total = (double)(n + np);
            m += delta * (double)np / total;
            q += part_m2[p * ch + c] + delta * delta * (double)n * (double)np / total;
            n += np;
        }
        mean[c] = m;
        var[c] = q / (double)rows;
    }
}

void graft_f32_channel_moments(const float *x, int64_t rows, int64_t ch, double *mean,
                               double *var, void *scratch)
{
    const int64_t parts = parts_of(rows);
    double *pm = scratch, *pq = pm + parts * ch;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < parts; p++) {
        int64_t r0 = rows * p / parts, r1 = rows * (p + 1) / parts;
        graft_f32_channel_moments_add_rows(x + r0 * ch, r1 - r0, ch, 0, pm + p * ch, pq + p * ch);
    }
    graft_f32_channel_moments_merge(pm, pq, parts, rows, ch, mean, var);
}

static inline __attribute__((always_inline)) void
scale_shift_act_row(const float *xr, float *yr, const float *mul, const float *add, int64_t ch,
                    graft__activation act)
{
    int64_t c = 0;
    for (; c + GRAFT_VL <= ch; c += GRAFT_VL) {
        graft_vf v = graft_vload(xr + c) * graft_vload(mul + c) + graft_vload(add + c);
        if (act == GRAFT__ACT_RELU)
            v = graft_vrelu(v);
        else if (act == GRAFT__ACT_RELU6)
            v = graft_vrelu6(v);
        graft_vstore(yr + c, v);
    }
    for (; c < ch; c++)
        yr[c] = act_apply(act, xr[c] * mul[c] + add[c]);
}

void graft_f32_scale_shift_act(const float *x, float *y, const float *mul, const float *add,
                               int64_t rows, int64_t ch, graft__activation act)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        scale_shift_act_row(x + r * ch, y + r * ch, mul, add, ch, act);
}

void graft_f32_scale_shift_act_rows(const float *x, float *y, const graft_bn_grad_map *map,
                                    int64_t rows, int64_t ch)
{
    for (int64_t r = 0; r < rows; r++)
        scale_shift_act_row(x + r * ch, y + r * ch, map->mul, map->add, ch, map->act);
}

static void sums_block(const float *x, const float *dy, graft__activation act, const float *mul,
                       const float *add, const float *mean, const float *inv, int64_t ch,
                       int64_t r0, int64_t r1, int64_t c0, int64_t w, double *sum_g,
                       double *sum_gx)
{
    float s[TILE], sx[TILE];
    for (int64_t j = 0; j < w; j++)
        s[j] = sx[j] = 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t o = r * ch + c0;
        int64_t j = 0;
        for (; j + GRAFT_VL <= w; j += GRAFT_VL) {
            graft_vf xv = graft_vload(x + o + j);
            graft_vf g = vgrad(act, xv * graft_vload(mul + c0 + j) + graft_vload(add + c0 + j),
                               graft_vload(dy + o + j));
            graft_vf xhat = (xv - graft_vload(mean + c0 + j)) * graft_vload(inv + c0 + j);
            graft_vstore(s + j, graft_vload(s + j) + g);
            graft_vstore(sx + j, graft_vload(sx + j) + g * xhat);
        }
        for (; j < w; j++) {
            float g = dy[o + j] * act_grad(act, x[o + j] * mul[c0 + j] + add[c0 + j]);
            s[j] += g;
            sx[j] += g * ((x[o + j] - mean[c0 + j]) * inv[c0 + j]);
        }
    }
    for (int64_t j = 0; j < w; j++) {
        sum_g[j] += s[j];
        sum_gx[j] += sx[j];
    }
}

void graft_f32_bn_backward_sums(const float *x, const float *dy, graft__activation act,
                                const float *mul, const float *add, const float *mean,
                                const float *inv, int64_t rows, int64_t ch, double *sum_g,
                                double *sum_gx, void *scratch)
{
    const int64_t parts = parts_of(rows);
    double *ps = scratch, *psx = ps + parts * ch;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < parts; p++) {
        int64_t r0 = rows * p / parts, r1 = rows * (p + 1) / parts;
        double *s = ps + p * ch, *sx = psx + p * ch;
        for (int64_t c = 0; c < ch; c++)
            s[c] = sx[c] = 0.0;
        for (int64_t b = r0; b < r1; b += BLOCK) {
            int64_t b1 = r1 - b < BLOCK ? r1 : b + BLOCK;
            for (int64_t c0 = 0; c0 < ch; c0 += TILE)
                sums_block(x, dy, act, mul, add, mean, inv, ch, b, b1, c0,
                           ch - c0 < TILE ? ch - c0 : TILE, s + c0, sx + c0);
        }
    }
    for (int64_t c = 0; c < ch; c++) {
        double s = 0.0, sx = 0.0;
        for (int64_t p = 0; p < parts; p++) {
            s += ps[p * ch + c];
            sx += psx[p * ch + c];
        }
        sum_g[c] = s;
        sum_gx[c] = sx;
    }
}

void graft_f32_bn_backward_sums_add_rows(const float *x, const float *dy,
                                         const graft_bn_grad_map *map, int64_t rows, int64_t ch,
                                         double *sum_g, double *sum_gx)
{
    for (int64_t b = 0; b < rows; b += BLOCK) {
        int64_t b1 = rows - b < BLOCK ? rows : b + BLOCK;
        for (int64_t c0 = 0; c0 < ch; c0 += TILE)
            sums_block(x, dy, map->act, map->mul, map->add, map->mean, map->inv, ch, b, b1, c0,
                       ch - c0 < TILE ? ch - c0 : TILE, sum_g + c0, sum_gx + c0);
    }
}

void graft_f32_bn_backward_sums_merge(const graft_bn_sums_out *sums, int64_t ch, double *sum_g,
                                      double *sum_gx)
{
    for (int64_t c = 0; c < ch; c++) {
        double s = 0.0, sx = 0.0;
        for (int p = 0; p < GRAFT_BN_SUM_PARTS; p++) {
            s += sums->part_g[p * ch + c];
            sx += sums->part_gx[p * ch + c];
        }
        sum_g[c] = s;
        sum_gx[c] = sx;
    }
}

static inline __attribute__((always_inline)) void
backward_input_row(const float *x, const float *dy, graft__activation act, const float *mul,
                   const float *add, const float *mean, const float *inv, const float *scale,
                   const float *mg, const float *mgx, int64_t ch, float *dx, int accumulate)
{
    int64_t c = 0;
    for (; c + GRAFT_VL <= ch; c += GRAFT_VL) {
        graft_vf xv = graft_vload(x + c);
        graft_vf g = vgrad(act, xv * graft_vload(mul + c) + graft_vload(add + c),
                           graft_vload(dy + c));
        graft_vf xhat = (xv - graft_vload(mean + c)) * graft_vload(inv + c);
        graft_vf v = graft_vload(scale + c) * (g - graft_vload(mg + c) - xhat * graft_vload(mgx + c));
        graft_vstore(dx + c, accumulate ? graft_vload(dx + c) + v : v);
    }
    for (; c < ch; c++) {
        float g = dy[c] * act_grad(act, x[c] * mul[c] + add[c]);
        float xhat = (x[c] - mean[c]) * inv[c];
        float v = scale[c] * (g - mg[c] - xhat * mgx[c]);
        dx[c] = accumulate ? dx[c] + v : v;
    }
}

void graft_f32_bn_backward_input(const float *x, const float *dy, graft__activation act,
                                 const float *mul, const float *add, const float *mean,
                                 const float *inv, const float *scale, const float *mg,
                                 const float *mgx, int64_t rows, int64_t ch, float *dx,
                                 int accumulate)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        backward_input_row(x + r * ch, dy + r * ch, act, mul, add, mean, inv, scale, mg, mgx, ch,
                           dx + r * ch, accumulate);
}

void graft_f32_bn_backward_input_rows(const float *x, const float *dy,
                                      const graft_bn_grad_map *map, int64_t rows, int64_t ch,
                                      float *dx)
{
    for (int64_t r = 0; r < rows; r++)
        backward_input_row(x + r * ch, dy + r * ch, map->act, map->mul, map->add, map->mean,
                           map->inv, map->scale, map->mg, map->mgx, ch, dx + r * ch, 0);
}
