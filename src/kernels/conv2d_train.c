/* Training's convolutions on graft's packed GEMM (the kernel packed at each
 * call, as it changes every step), the pixels split over up to PARTS threads:
 * OpenBLAS re-packed its operands on every call and ran MobileNetV2's
 * large-image layers at a third of that speed, forward and backward. The
 * weight gradient sums PARTS fixed pixel ranges in order, so it does not depend
 * on the thread count. */
#include <omp.h>
#include <string.h>

#include "kernels/batch_norm.h"
#include "kernels/conv.h"
#include "kernels/gemm.h"

enum { PARTS = GRAFT_CONV_TRAIN_PARTS };

static size_t round16(size_t floats) { return (floats + 15) / 16 * 16; }

/* Pixels per chunk of the moments-taking forward: a chunk's output (at most
 * 128 x out_c floats) is still in L2 when its moments are taken. */
enum { MOMENT_CHUNK = 128 };

/* Pixels per chunk of the pointwise backward: the chunk's dout rows (128 KiB)
 * are still in L2 when the input gradient reads them after the weight gradient
 * has. Against the two passes apart, call by call at batch 32 in one process:
 * 6-41% faster where the images are 14x14 to 112x112 with 16 to 192 output
 * channels, 5% at 112x112 32->16, where chunks of at most 256 pixels were 4-8%
 * slower than separate passes. */
static int64_t backward_chunk(int64_t out_c)
{
    int64_t chunk = 32768 / (out_c > 0 ? out_c : 1);
    return chunk < 32 ? 32 : chunk > 2048 ? 2048 : chunk;
}

size_t graft_f32_conv2d_train_scratch_floats(const graft_conv_geom *g)
{
    const int64_t K = g->kernel_h * g->kernel_w * g->in_c, N = g->out_c;
    size_t fwd = round16((size_t)graft_f32_gemm_packed_floats(K, N)) +
                 PARTS * round16(graft_f32_conv2d_fused_scratch_floats(g)) +
                 PARTS * round16((size_t)(MOMENT_CHUNK * K));
    size_t dw = PARTS * round16((size_t)(K * N)) +
                PARTS * round16(graft_f32_conv2d_backward_weight_scratch_floats(g));
    size_t most = fwd > dw ? fwd : dw;
    if (!graft_f32_conv2d_is_pointwise(g))
        return most;
    size_t dx = round16((size_t)(K * N)) + round16((size_t)graft_f32_gemm_packed_floats(N, K));
    /* The pointwise backward holds both at once, and a chunk of mapped dout
     * and one of mapped input per thread. */
    size_t both = PARTS * round16((size_t)(K * N)) + dx +
                  PARTS * round16((size_t)(backward_chunk(N) * N)) +
                  PARTS * round16((size_t)(backward_chunk(K > N ? K : N) * K));
    return most > both ? most : both;
}

static int threads_for(int64_t items)
{
    int t = omp_get_max_threads();
    t = t < PARTS ? t : PARTS;
    return items < t ? (int)(items > 0 ? items : 1) : t;
}

void graft_f32_conv2d_train_forward(const graft_conv_geom *g, const float *in, const float *kernel,
                                    const float *bias, graft__activation act, float *out,
                                    float *work)
{
    const int64_t K = g->kernel_h * g->kernel_w * g->in_c, pixels = g->batch * g->out_h * g->out_w;
    float *packed = work, *chunks = work + round16((size_t)graft_f32_gemm_packed_floats(K, g->out_c));
    const size_t stride = round16(graft_f32_conv2d_fused_scratch_floats(g));
    graft_f32_gemm_pack(K, g->out_c, kernel, bias, packed);
#pragma omp parallel num_threads(threads_for(pixels))
    {
        int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t p0 = pixels * t / nt, p1 = pixels * (t + 1) / nt;
        graft_f32_conv2d_fused__packed(g, p0, p1, in, packed, act, out + p0 * g->out_c,
                                       chunks + (size_t)t * stride);
    }
}

void graft_f32_conv2d_train_forward_moments(const graft_conv_geom *g, const float *in,
                                            const graft_bn_grad_map *in_map, const float *kernel,
                                            const float *bias, float *out, float *work,
                                            double *part_mean, double *part_m2)
{
    const int64_t K = g->kernel_h * g->kernel_w * g->in_c, CO = g->out_c;
    const int64_t pixels = g->batch * g->out_h * g->out_w;
    if (pixels < PARTS * 2 * MOMENT_CHUNK && !in_map) {
        /* Parts of a few chunks made the GEMM calls too short (7x7, 320->1280:
         * 9.0 ms against 8.5 for the forward and a moments pass apart). */
        graft_f32_conv2d_train_forward(g, in, kernel, bias, GRAFT__ACT_LINEAR, out, work);
#pragma omp parallel for num_threads(threads_for(PARTS)) schedule(static)
        for (int p = 0; p < PARTS; p++) {
            const int64_t p0 = pixels * p / PARTS, p1 = pixels * (p + 1) / PARTS;
            graft_f32_channel_moments_add_rows(out + p0 * CO, p1 - p0, CO, 0, part_mean + p * CO,
                                               part_m2 + p * CO);
        }
        return;
    }
    float *packed = work, *chunks = work + round16((size_t)graft_f32_gemm_packed_floats(K, CO));
    const size_t stride = round16(graft_f32_conv2d_fused_scratch_floats(g));
    float *inputs = chunks + PARTS * stride;
    graft_f32_gemm_pack(K, CO, kernel, bias, packed);
#pragma omp parallel num_threads(threads_for(PARTS))
    {
        float *scratch = chunks + (size_t)omp_get_thread_num() * stride;
        float *x = inputs + (size_t)omp_get_thread_num() * round16((size_t)(MOMENT_CHUNK * K));
#pragma omp for schedule(static)
        for (int p = 0; p < PARTS; p++) {
            const int64_t p0 = pixels * p / PARTS, p1 = pixels * (p + 1) / PARTS;
            for (int64_t c0 = p0; c0 < p1; c0 += MOMENT_CHUNK) {
                int64_t c1 = p1 - c0 < MOMENT_CHUNK ? p1 : c0 + MOMENT_CHUNK;
                if (in_map) { /* pointwise: the chunk's input rows, mapped */
                    graft_f32_scale_shift_act_rows(in + c0 * K, x, in_map, c1 - c0, K);
                    graft_f32_conv2d_fused__packed(g, 0, c1 - c0, x, packed, GRAFT__ACT_LINEAR,
                                                   out + c0 * CO, scratch);
                } else
                    graft_f32_conv2d_fused__packed(g, c0, c1, in, packed, GRAFT__ACT_LINEAR,
                                                   out + c0 * CO, scratch);
                graft_f32_channel_moments_add_rows(out + c0 * CO, c1 - c0, CO, c0 - p0,
                                                   part_mean + p * CO, part_m2 + p * CO);
            }
        }
    }
}

void graft_f32_add_train_parts(const float *parts, size_t part_stride, int64_t floats,
                               float *dkernel)
{
#pragma omp for schedule(static)
    for (int64_t i = 0; i < floats; i++) {
        float sum = 0.0f;
        for (int p = 0; p < PARTS; p++)
            sum += parts[(size_t)p * part_stride + (size_t)i];
        dkernel[i] += sum;
    }
}

/* The transposed kernel packed for the input gradient's GEMM, at work. */
static float *pack_transposed(int64_t CI, int64_t CO, const float *kernel, float *work)
{
    float *kt = work, *packed = work + round16((size_t)(CI * CO));
    for (int64_t i = 0; i < CI; i++)
        for (int64_t o = 0; o < CO; o++)
            kt[o * CI + i] = kernel[i * CO + o];
    graft_f32_gemm_pack(CO, CI, kt, NULL, packed);
    return packed;
}

int graft_f32_conv2d_train_weight_packed_pays(const graft_conv_geom *g)
{
    return g->kernel_h * g->kernel_w * g->in_c + g->out_c <= 496;
}

void graft_f32_conv2d_train_backward_weight(const graft_conv_geom *g, const float *in,
                                            const float *dout, float *dkernel, float *work)
{
    const int64_t CI = g->kernel_h * g->kernel_w * g->in_c, CO = g->out_c;
    const int64_t pixels = g->batch * g->out_h * g->out_w;
    const size_t part_stride = round16((size_t)(CI * CO));
    const size_t chunk_stride = round16(graft_f32_conv2d_backward_weight_scratch_floats(g));
    float *parts = work, *chunks = work + PARTS * part_stride;
#pragma omp parallel num_threads(threads_for(PARTS))
    {
        int t = omp_get_thread_num();
#pragma omp for schedule(static)
        for (int p = 0; p < PARTS; p++) {
            float *acc = parts + (size_t)p * part_stride;
            memset(acc, 0, sizeof(float) * (size_t)(CI * CO));
            graft_f32_conv2d_backward_weight__tiled(g, pixels * p / PARTS, pixels * (p + 1) / PARTS,
                                                     in, dout, acc, chunks + (size_t)t * chunk_stride);
        }
        graft_f32_add_train_parts(parts, part_stride, CI * CO, dkernel);
    }
}

void graft_f32_conv2d_train_backward_pointwise(const graft_conv_geom *g, const float *in,
                                               const float *dout, const float *kernel,
                                               float *dkernel, float *din, int accumulate,
                                               const graft_bn_grad_map *bn, const float *out,
                                               const graft_bn_sums_out *sums,
                                               const graft_bn_grad_map *in_map, float *work)
{
    const int64_t CI = g->in_c, CO = g->out_c, pixels = g->batch * g->out_h * g->out_w;
    const size_t part_stride = round16((size_t)(CI * CO));
    float *parts = work;
    float *after_parts = work + PARTS * part_stride;
    const float *packed = din ? pack_transposed(CI, CO, kernel, after_parts) : NULL;
    float *mapped = after_parts + round16((size_t)(CI * CO)) +
                    round16((size_t)graft_f32_gemm_packed_floats(CO, CI));
    /* With sums or a map, din's or the input's chunk too is to be in L2. */
    const int64_t chunk = backward_chunk(((sums && din) || in_map) && CI > CO ? CI : CO);
    const size_t dz_stride = round16((size_t)(backward_chunk(CO) * CO));
    const size_t in_stride = round16((size_t)(backward_chunk(CI > CO ? CI : CO) * CI));
    float *inputs = mapped + PARTS * dz_stride;
#pragma omp parallel num_threads(threads_for(PARTS))
    {
        float *dz = mapped + (size_t)omp_get_thread_num() * dz_stride;
        float *x = inputs + (size_t)omp_get_thread_num() * in_stride;
#pragma omp for schedule(static)
        for (int p = 0; p < PARTS; p++) {
            const int64_t p0 = pixels * p / PARTS, p1 = pixels * (p + 1) / PARTS;
            float *acc = parts + (size_t)p * part_stride;
            if (dkernel)
                memset(acc, 0, sizeof(float) * (size_t)(CI * CO));
            if (sums && din)
                for (int64_t i = 0; i < CI; i++)
                    sums->part_g[p * CI + i] = sums->part_gx[p * CI + i] = 0.0;
            for (int64_t c0 = p0; c0 < p1; c0 += chunk) {
                const int64_t n = p1 - c0 < chunk ? p1 - c0 : chunk;
                const float *dy = dout + c0 * CO;
                if (bn) {
                    graft_f32_bn_backward_input_rows(out + c0 * CO, dy, bn, n, CO, dz);
                    dy = dz;
                }
                const float *xs = in + c0 * CI;
                if (dkernel && in_map) {
                    graft_f32_scale_shift_act_rows(xs, x, in_map, n, CI);
                    xs = x;
                }
                if (dkernel)
                    graft_f32_pw_backward_weight__direct(0, n, CI, CO, xs, dy, acc);
                if (din)
                    graft_f32_pw_backward_input__packed(0, n, CI, CO, dy, packed, din + c0 * CI,
                                                        accumulate);
                if (sums && din)
                    graft_f32_bn_backward_sums_add_rows(sums->x + c0 * CI, din + c0 * CI,
                                                        &sums->map, n, CI, sums->part_g + p * CI,
                                                        sums->part_gx + p * CI);
            }
        }
        if (dkernel)
            graft_f32_add_train_parts(parts, part_stride, CI * CO, dkernel);
    }
}

void graft_f32_conv2d_train_backward_input(const graft_conv_geom *g, const float *dout,
                                           const float *kernel, float *din, int accumulate,
                                           float *work)
{
    const int64_t CI = g->in_c, CO = g->out_c, pixels = g->batch * g->out_h * g->out_w;
    const float *packed = pack_transposed(CI, CO, kernel, work);
#pragma omp parallel num_threads(threads_for(pixels))
    {
        int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        graft_f32_pw_backward_input__packed(pixels * t / nt, pixels * (t + 1) / nt, CI, CO, dout,
                                            packed, din, accumulate);
    }
}
