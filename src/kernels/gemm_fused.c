/* GEMM with bias, activation and residual applied while each tile of C is in
 * registers: inference's 1x1 convolutions (and im2col convolutions) without the
 * passes over C that cblas_sgemm needs around it, and fast where OpenBLAS is
 * weak, at MobileNetV2's short K (16 to 32) and narrow N (16 to 32). */
#include <stddef.h>

#include "kernels/gemm.h"
#include "kernels/simd.h"

enum { NR = 2 * GRAFT_VL, MR = GRAFT_GEMM_MR };

/* Rows of A per block of the outer loop, while every panel of B passes over
 * the block. An A of at most 192 KiB is one block (in L2): each panel of B is
 * loaded once (the inference blocks' bands of 48 pixels). A taller A where B is
 * wider than deep (k <= n: expands forward, projects' input gradients) goes one
 * register tile of rows at a time: its rows stay in L1 over all the panels and C
 * is written row by row; where B is deeper, in blocks that fit L1 beside a
 * panel. Tall A in blocks of 192 KiB, as before, ran k <= n at 44-134 GFLOP/s
 * against 60-170 this way (batch 32, 2 threads, k 16-320, n 96-1280, measured
 * in one process alternating the two), and k > n 0-7% slower. */
enum { A_L2_BYTES = 192 << 10, A_L1_BYTES = 16 << 10 };

static int64_t rows_per_block(int64_t m, int64_t k, int64_t n)
{
    const int64_t row_bytes = (k > 0 ? k : 1) * (int64_t)sizeof(float);
    if (m * row_bytes <= A_L2_BYTES)
        return m > MR ? m : MR;
    if (k <= n)
        return MR;
    int64_t mc = A_L1_BYTES / row_bytes / MR * MR;
    return mc < MR ? MR : mc;
}

static int64_t padded_width(int64_t n)
{
    int64_t full = n / NR * NR, rest = n - full;
    return full + (rest == 0 ? 0 : rest <= GRAFT_VL ? GRAFT_VL : NR);
}

/* Width of the panel starting at column j0. */
static int64_t panel_width(int64_t n, int64_t j0)
{
    return n - j0 > GRAFT_VL ? NR : GRAFT_VL;
}

int64_t graft_f32_gemm_panel_cols(void) { return NR; }

int64_t graft_f32_gemm_packed_floats(int64_t k, int64_t n) { return padded_width(n) * (k + 1); }

void graft_f32_gemm_pack(int64_t k, int64_t n, const float *b, const float *bias, float *packed)
{
    const int64_t npad = padded_width(n);
    for (int64_t j = 0; j < npad; j++)
        packed[j] = bias && j < n ? bias[j] : 0.0f;
    float *p = packed + npad;
    for (int64_t j0 = 0; j0 < n; j0 += NR) {
        const int64_t w = panel_width(n, j0);
        for (int64_t kk = 0; kk < k; kk++)
            for (int64_t j = 0; j < w; j++)
                p[kk * w + j] = j0 + j < n ? b[kk * n + j0 + j] : 0.0f;
        p += k * w;
    }
}

static float act_scalar(graft__activation act, float x)
{
    if (act == GRAFT__ACT_RELU || act == GRAFT__ACT_RELU6)
        x = x > 0.0f ? x : 0.0f;
    if (act == GRAFT__ACT_RELU6)
        x = x < 6.0f ? x : 6.0f;
    return x;
}

void graft_f32_gemm_fused__ref(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                               const float *b, const float *bias, graft__activation act,
                               const float *res, int64_t ldr, float *c, int64_t ldc)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = bias ? bias[j] : 0.0;
            for (int64_t p = 0; p < k; p++)
                acc += (double)a[i * lda + p] * b[p * n + j];
            if (res)
                acc += res[i * ldr + j];
            c[i * ldc + j] = act_scalar(act, (float)acc);
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

/* mr rows of C by nv vectors of columns, w of them valid. The mr*nv
 * accumulators start at the bias and stay in registers over all of k; each
 * step loads nv vectors of the panel and broadcasts one value of each A row. */
static inline __attribute__((always_inline)) void
tile(int64_t k, const float *a, int64_t lda, const float *pb, const float *bias,
     graft__activation act, const float *res, int64_t ldr, float *c, int64_t ldc, int64_t w,
     const int mr, const int nv)
{
    graft_vf acc[MR][2];
    const float *ar[MR];
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        ar[i] = a + i * lda;
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++)
            acc[i][v] = graft_vload(bias + v * GRAFT_VL);
    }
    for (int64_t p = 0; p < k; p++, pb += nv * GRAFT_VL) {
        graft_vf bv[2];
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++)
            bv[v] = graft_vload(pb + v * GRAFT_VL);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            graft_vf ai = graft_vsplat(ar[i][p]);
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++)
                acc[i][v] += ai * bv[v];
        }
    }
    if (w == nv * GRAFT_VL) {
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++)
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++) {
                graft_vf x = acc[i][v];
                if (res)
                    x += graft_vload(res + i * ldr + v * GRAFT_VL);
                graft_vstore(c + i * ldc + v * GRAFT_VL, act_vec(act, x));
            }
        return;
    }
    float row[NR] = {0};
    for (int i = 0; i < mr; i++) {
        for (int v = 0; v < nv; v++)
            graft_vstore(row + v * GRAFT_VL, acc[i][v]);
        for (int64_t j = 0; j < w; j++) {
            float x = row[j];
            if (res)
                x += res[i * ldr + j];
            c[i * ldc + j] = act_scalar(act, x);
        }
    }
}

#define TILE_CASE(MRV, NVV)                                                                    \
    case MRV * 4 + NVV:                                                                        \
        tile(k, a, lda, pb, bias, act, res, ldr, c, ldc, w, MRV, NVV);                         \
        return;

static void tile_any(int mr, int nv, int64_t k, const float *a, int64_t lda, const float *pb,
                     const float *bias, graft__activation act, const float *res, int64_t ldr,
                     float *c, int64_t ldc, int64_t w)
{
    switch (mr * 4 + nv) {
        TILE_CASE(1, 1) TILE_CASE(2, 1) TILE_CASE(3, 1) TILE_CASE(4, 1) TILE_CASE(5, 1)
        TILE_CASE(6, 1) TILE_CASE(1, 2) TILE_CASE(2, 2) TILE_CASE(3, 2) TILE_CASE(4, 2)
        TILE_CASE(5, 2) TILE_CASE(6, 2)
    default: return;
    }
}

void graft_f32_gemm_fused__packed(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                                  const float *packed, graft__activation act, const float *res,
                                  int64_t ldr, float *c, int64_t ldc)
{
    graft_f32_gemm_fused_cols__packed(m, n, k, a, lda, packed, 0, n, act, res, ldr, c, ldc);
}

void graft_f32_gemm_fused_cols__packed(int64_t m, int64_t n, int64_t k, const float *a,
                                       int64_t lda, const float *packed, int64_t j_lo,
                                       int64_t j_hi, graft__activation act, const float *res,
                                       int64_t ldr, float *c, int64_t ldc)
{
    const float *bias = packed, *panels = packed + padded_width(n);
    const int64_t mc = rows_per_block(m, k, n);
    for (int64_t i0 = 0; i0 < m; i0 += mc) {
        const int64_t rows = m - i0 < mc ? m - i0 : mc;
        /* Panel by panel: one panel of B stays in L1 while the block's rows pass. */
        for (int64_t j0 = j_lo; j0 < j_hi; j0 += NR) {
            const int64_t pw = panel_width(n, j0), w = n - j0 < pw ? n - j0 : pw;
            const int nv = (int)(pw / GRAFT_VL);
            const float *pb = panels + j0 * k;
            for (int64_t i = i0; i < i0 + rows; i += MR) {
                const int mr = (int)(i0 + rows - i < MR ? i0 + rows - i : MR);
                tile_any(mr, nv, k, a + i * lda, lda, pb, bias + j0, act,
                         res ? res + i * ldr + j0 : NULL, ldr, c + i * ldc + j0, ldc, w);
            }
        }
    }
}
