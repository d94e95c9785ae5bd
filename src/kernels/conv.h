/* Convolution and pooling kernels over NHWC float32 tensors.
 *
 * Kernels are pure compute over raw pointers: no allocation (callers pass scratch),
 * no globals, no printing, no argument checks beyond what the geometry implies.
 * Each fast variant has a naive `__ref` beside it that the tests hold it to.
 *
 * Threading: a kernel that takes a [start, end) range runs single-threaded over
 * that slice, so callers split it over OpenMP threads and tests call it directly.
 * Forward kernels take rows of the flattened (batch * out_h) output; backward
 * kernels take whichever slice keeps threads' writes disjoint (input rows,
 * channels or samples, stated at each). The `_parallel` wrappers split the whole
 * range over graft_threads() OpenMP threads (inside another parallel region
 * they run on one thread, OpenMP nesting being off by default). GEMM-based kernels take no range:
 * they call cblas_sgemm, which OpenBLAS threads itself, and use no OpenMP: with
 * OpenBLAS's pthread build, OpenMP's workers keep spinning after a region and
 * take the cores from the GEMM that follows (an OpenMP im2col ran 2-20x slower;
 * a 56x56x24->144 pointwise GEMM right after a depthwise layer, 10.9 -> 15.7 ms).
 * OMP_WAIT_POLICY=passive, or OpenBLAS's OpenMP build, removes that.
 *
 * Buffers: no kernel here reads or writes outside the shapes documented at its
 * parameters (no SIMD over-read), so callers need no padding floats. Kernels use
 * at most about 17 KiB of stack (the depthwise weight gradient's row sums).
 */
#ifndef GRAFT_KERNELS_CONV_H
#define GRAFT_KERNELS_CONV_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/activation.h"
#include "kernels/batch_norm.h"

/* Geometry of a 2-D convolution or pooling window over NHWC data.
 * Padding follows TensorFlow: pad_top/pad_left given, bottom/right implied by
 * out_h/out_w (TF 'same' pads asymmetrically:
 * total = max((out-1)*stride + (k-1)*dilation + 1 - in, 0), top = total/2). */
typedef struct graft_conv_geom {
    int64_t batch, in_h, in_w, in_c;
    int64_t out_h, out_w, out_c; /* for depthwise: out_c = in_c * depth_multiplier */
    int64_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
    int64_t pad_top, pad_left;
} graft_conv_geom;

/* Fills out_h/out_w/pad_top/pad_left from the other fields for TF 'valid'
 * (same_padding=0) or 'same' (=1); the caller sets everything else (pooling sets
 * dilation 1, out_c = in_c). Returns 0, leaving *g untouched, if the output would
 * be empty or a size, kernel, stride or dilation is below 1; else 1. */
int graft_conv_geom_init(graft_conv_geom *g, int same_padding);

/* ---- Conv2D ----------------------------------------------------------------- */

/* out = conv(in, kernel) + bias over the whole batch. Naive: one double-precision
 * dot product per output value. */
void graft_f32_conv2d__ref(const graft_conv_geom *g,
                           const float *in,     /* (N, in_h, in_w, in_c) */
                           const float *kernel, /* (kernel_h, kernel_w, in_c, out_c), Keras layout */
                           const float *bias,   /* (out_c) or NULL */
                           float *out);         /* (N, out_h, out_w, out_c) */

/* Bytes of scratch graft_f32_conv2d__gemm needs: 0 for a 1x1 stride-1 unpadded conv
 * (a plain GEMM on the input), else an im2col buffer for a bounded chunk of output
 * pixels (GRAFT_CONV2D_IM2COL_BUDGET bytes, or one pixel's patch if that is larger). */
size_t graft_f32_conv2d_scratch_bytes(const graft_conv_geom *g);

/* Measured on MobileNetV2's convs at batch 32 (bench_kernels): 1 to 8 MiB run the
 * same, 256 KiB chunks make GEMMs too short for OpenBLAS; 2 MiB keeps scratch
 * small (a 3x3x64 conv on a 28x28 image needs 1.8 MB per image). */
#ifndef GRAFT_CONV2D_IM2COL_BUDGET
#define GRAFT_CONV2D_IM2COL_BUDGET ((size_t)2 << 20)
#endif

/* As the ref, via im2col + cblas_sgemm over chunks of output pixels; each output
 * chunk is first filled with the bias and the GEMM accumulates into it (beta=1).
 * Threaded by OpenBLAS only: the im2col fill is serial (see the threading note
 * above). Call it from outside any OpenMP parallel region. */
void graft_f32_conv2d__gemm(const graft_conv_geom *g,
                            const float *in,     /* (N, in_h, in_w, in_c) */
                            const float *kernel, /* (kernel_h, kernel_w, in_c, out_c) */
                            const float *bias,   /* (out_c) or NULL */
                            float *out,          /* (N, out_h, out_w, out_c) */
                            float *scratch);     /* graft_f32_conv2d_scratch_bytes(g) bytes, or NULL if 0 */

/* Inference: act(conv(in, kernel) + bias) for output pixels [p0, p1) of the
 * flattened (N, out_h, out_w), written from out on, with the kernel and bias packed for the fused
 * GEMM (graft_f32_gemm_pack of the (kernel_h*kernel_w*in_c, out_c) kernel) and
 * act linear, relu or relu6 applied before the one store. Chunks of pixels go
 * through im2col into scratch (graft_f32_conv2d_fused_scratch_floats floats;
 * none for an unpadded 1x1 with stride 1, which is a GEMM on the input). */
size_t graft_f32_conv2d_fused_scratch_floats(const graft_conv_geom *g);
void graft_f32_conv2d_fused__packed(const graft_conv_geom *g, int64_t p0, int64_t p1,
                                    const float *in,     /* (N, in_h, in_w, in_c) */
                                    const float *packed, /* packed kernel and bias */
                                    graft__activation act,
                                    float *out,          /* (p1 - p0, out_c) */
                                    float *scratch);

/* Training's pointwise (1x1, stride 1, unpadded) backward on graft's packed GEMM,
 * each call single-threaded over output pixels [p0, p1) (callers split them):
 * OpenBLAS re-packs its operands on every call and ran the large-image,
 * few-channel layers of MobileNetV2 at 20-60 GFLOP/s.
 *
 * Input gradient: din rows [p0, p1) = dout @ kernel^T, over din's old values
 * when accumulate, else in place of them; `packed_t` is graft_f32_gemm_pack of
 * the (out_c, in_c) transposed kernel (graft_f32_gemm_packed_floats(out_c, in_c)). */
void graft_f32_pw_backward_input__packed(int64_t p0, int64_t p1, int64_t in_c, int64_t out_c,
                                         const float *dout, const float *packed_t, float *din,
                                         int accumulate);
/* Weight gradient: dkernel (in_c, out_c) += in^T @ dout over pixels [p0, p1),
 * by register tiles over chunks of pixels that stay in cache. */
void graft_f32_pw_backward_weight__direct(int64_t p0, int64_t p1, int64_t in_c, int64_t out_c,
                                          const float *in, const float *dout, float *dkernel);

/* The weight gradient of any convolution the same way, over output pixels
 * [p0, p1): chunks of pixels through im2col, each chunk's patches then taken as a
 * pointwise layer's input. dkernel is (kernel_h, kernel_w, in_c, out_c), +=. */
size_t graft_f32_conv2d_backward_weight_scratch_floats(const graft_conv_geom *g);
void graft_f32_conv2d_backward_weight__tiled(const graft_conv_geom *g, int64_t p0, int64_t p1,
                                              const float *in, const float *dout, float *dkernel,
                                              float *scratch);

/* Training's whole-tensor convolution passes on the above, threaded here
 * (OpenMP, up to 8 threads) over `work` of graft_f32_conv2d_train_scratch_floats:
 * forward act(conv + bias) for act linear, relu or relu6; the weight gradient
 * (+=) as the ordered sum of 8 fixed pixel ranges, worth it when the patch and
 * output channels leave long chunks (train_weight_packed_pays; else the GEMM
 * variant above); the input gradient of pointwise convolutions only. */
int graft_f32_conv2d_is_pointwise(const graft_conv_geom *g);
size_t graft_f32_conv2d_train_scratch_floats(const graft_conv_geom *g);
void graft_f32_conv2d_train_forward(const graft_conv_geom *g, const float *in, const float *kernel,
                                    const float *bias, graft__activation act, float *out,
                                    float *work);
/* The linear forward that also takes the per-channel moments of its output
 * while each chunk of it is in cache, for the BatchNorm after it (one pass over
 * memory fewer): into part_mean and part_m2, each (GRAFT_CONV_TRAIN_PARTS,
 * out_c), part p covering pixels [pixels p / PARTS, pixels (p+1) / PARTS), to
 * be merged by graft_f32_channel_moments_merge. With in_map (pointwise only),
 * `in` is a BatchNorm's input and each chunk of this convolution's input is
 * mapped from it (scale_shift_act) into the scratch just before use. */
enum { GRAFT_CONV_TRAIN_PARTS = 8 };
/* dkernel[i] += the sum over the parts, in order, of parts[p * part_stride + i]
 * for i < floats: the fixed-part weight gradients' merge, as an `omp for`
 * inside the caller's parallel region. */
void graft_f32_add_train_parts(const float *parts, size_t part_stride, int64_t floats,
                               float *dkernel);
/* The pointwise and depthwise backwards sum a BatchNorm's parts in these. */
_Static_assert((int)GRAFT_CONV_TRAIN_PARTS == (int)GRAFT_BN_SUM_PARTS, "one part count");
void graft_f32_conv2d_train_forward_moments(const graft_conv_geom *g, const float *in,
                                            const graft_bn_grad_map *in_map, const float *kernel,
                                            const float *bias, float *out, float *work,
                                            double *part_mean, double *part_m2);
int graft_f32_conv2d_train_weight_packed_pays(const graft_conv_geom *g);
void graft_f32_conv2d_train_backward_weight(const graft_conv_geom *g, const float *in,
                                            const float *dout, float *dkernel, float *work);
void graft_f32_conv2d_train_backward_input(const graft_conv_geom *g, const float *dout,
                                           const float *kernel, float *din, int accumulate,
                                           float *work);
/* Both of a pointwise convolution's gradients (where train_weight_packed_pays)
 * in one pass over dout: each chunk of it is read for the weight gradient and
 * again from cache for the input gradient. Same results as the two calls above;
 * either of dkernel and din may be NULL (not wanted). With bn, dout is the
 * gradient of the BatchNorm after the convolution, and each chunk of this
 * convolution's own output gradient is mapped from it and from `out` (this
 * convolution's output) by bn into the scratch, never written to memory. With
 * sums (and din), the backward sums of the BatchNorm before the convolution
 * are taken from each chunk of din as it is written (parts: the 8 here). With
 * in_map, `in` is a BatchNorm's input, mapped chunk by chunk for dkernel. */
void graft_f32_conv2d_train_backward_pointwise(const graft_conv_geom *g, const float *in,
                                               const float *dout, const float *kernel,
                                               float *dkernel, float *din, int accumulate,
                                               const graft_bn_grad_map *bn, const float *out,
                                               const graft_bn_sums_out *sums,
                                               const graft_bn_grad_map *in_map, float *work);

/* ---- DepthwiseConv2D ------------------------------------------------------- */
/* Depth multiplier M = out_c / in_c; output channel c*M + m reads input channel c
 * with kernel[.., .., c, m]. Rows [row_start, row_end) index batch*out_h. */

void graft_f32_dwconv2d__ref(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                             const float *in,     /* (N, in_h, in_w, in_c) */
                             const float *kernel, /* (kernel_h, kernel_w, in_c, M) */
                             const float *bias,   /* (in_c*M) or NULL */
                             float *out);         /* (N, out_h, out_w, in_c*M) */

/* Vectorised over channels; M=1 runs a register-tiled path (several output pixels
 * per channel tile), channel tails and M>1 run a generic path. */
void graft_f32_dwconv2d__direct(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                const float *in,     /* (N, in_h, in_w, in_c) */
                                const float *kernel, /* (kernel_h, kernel_w, in_c, M) */
                                const float *bias,   /* (in_c*M) or NULL */
                                float *out);         /* (N, out_h, out_w, in_c*M) */

/* __direct over all rows, split over the OpenMP threads (graft_threads()). */
void graft_f32_dwconv2d_parallel(const graft_conv_geom *g,
                                 const float *in,     /* (N, in_h, in_w, in_c) */
                                 const float *kernel, /* (kernel_h, kernel_w, in_c, M) */
                                 const float *bias,   /* (in_c*M) or NULL */
                                 float *out);         /* (N, out_h, out_w, in_c*M) */

/* The same forward, linear, also taking the per-channel moments of its output
 * as graft_f32_conv2d_train_forward_moments does (parts of pixels, merged by
 * graft_f32_channel_moments_merge), each chunk of rows while it is in cache
 * when batch * out_h splits evenly into the parts; else in a pass after. */
void graft_f32_dwconv2d_forward_moments(const graft_conv_geom *g, const float *in,
                                        const float *kernel, const float *bias, float *out,
                                        double *part_mean /* (PARTS, out_c) */,
                                        double *part_m2 /* (PARTS, out_c) */);

/* One output row of a depthwise convolution with M = 1, from the kernel_h input
 * rows its windows cover: rows[ky] is input row oy*stride_h - pad_top +
 * ky*dilation_h, or NULL where that row is padding. The bias and act (linear,
 * relu or relu6) are applied before the single store. Reads of g: in_w, in_c,
 * out_w, kernel_h, kernel_w, stride_w, dilation_w, pad_left; out_c must equal
 * in_c and kernel_h be at most GRAFT_DW_ROW_MAX_KH. The rows may live anywhere
 * (a ring of rows computed just before), which is what lets an inverted-residual
 * block run row by row with its expanded rows in cache. */
enum { GRAFT_DW_ROW_MAX_KH = 7 };
void graft_f32_dwconv2d_row__ref(const graft_conv_geom *g,
                                 const float *const *rows, /* kernel_h rows (in_w, in_c) or NULL */
                                 const float *kernel,      /* (kernel_h, kernel_w, in_c) */
                                 const float *bias,        /* (in_c) or NULL */
                                 graft__activation act,
                                 float *out);              /* (out_w, in_c) */
void graft_f32_dwconv2d_row__direct(const graft_conv_geom *g,
                                    const float *const *rows, /* kernel_h rows (in_w, in_c) or NULL */
                                    const float *kernel,      /* (kernel_h, kernel_w, in_c) */
                                    const float *bias,        /* (in_c) or NULL */
                                    graft__activation act,
                                    float *out);              /* (out_w, in_c) */
/* Channels [c0, c1) of the same row, the rest of out untouched: threads that
 * split a small image by channels rather than by rows. */
void graft_f32_dwconv2d_row_channels__direct(const graft_conv_geom *g, const float *const *rows,
                                             const float *kernel, const float *bias,
                                             graft__activation act, int64_t c0, int64_t c1,
                                             float *out);

/* ---- pooling ------------------------------------------------------------------- */
/* Windows as for conv with out_c = in_c and dilation 1. TF semantics: max pooling
 * ignores padded cells; average pooling divides by the number of valid (unpadded)
 * cells of each window. A window with no valid cell (only possible with a
 * hand-made geometry whose padding reaches a whole kernel) gives 0. */

void graft_f32_maxpool2d__ref(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                              const float *in, /* (N, in_h, in_w, C) */
                              float *out);     /* (N, out_h, out_w, C) */
void graft_f32_maxpool2d__direct(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                 const float *in, /* (N, in_h, in_w, C) */
                                 float *out);     /* (N, out_h, out_w, C) */
void graft_f32_maxpool2d_parallel(const graft_conv_geom *g,
                                  const float *in, /* (N, in_h, in_w, C) */
                                  float *out);     /* (N, out_h, out_w, C) */

void graft_f32_avgpool2d__ref(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                              const float *in, /* (N, in_h, in_w, C) */
                              float *out);     /* (N, out_h, out_w, C) */
void graft_f32_avgpool2d__direct(const graft_conv_geom *g, int64_t row_start, int64_t row_end,
                                 const float *in, /* (N, in_h, in_w, C) */
                                 float *out);     /* (N, out_h, out_w, C) */
void graft_f32_avgpool2d_parallel(const graft_conv_geom *g,
                                  const float *in, /* (N, in_h, in_w, C) */
                                  float *out);     /* (N, out_h, out_w, C) */

/* Global pooling over H and W for samples [n_start, n_end): (N,H,W,C) -> (N,C).
 * Cheap enough (one pass over the input) that callers need not thread it. */
void graft_f32_global_avgpool__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                   const float *in, /* (N, hw, c) */
                                   float *out);     /* (N, c) */
void graft_f32_global_avgpool__direct(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                      const float *in, /* (N, hw, c) */
                                      float *out);     /* (N, c) */
void graft_f32_global_maxpool__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                   const float *in, /* (N, hw, c) */
                                   float *out);     /* (N, c) */
void graft_f32_global_maxpool__direct(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                      const float *in, /* (N, hw, c) */
                                      float *out);     /* (N, c) */

/* ---- backward (training) -------------------------------------------------------
 * Every gradient ACCUMULATES into its output (+=): the caller zeroes it first, and
 * a tensor feeding several layers, or a weight shared between calls, sums its
 * gradients without a temporary. `dout` is the gradient of the layer's output,
 * shaped like `out` above. Max pooling routes each window's gradient to its first
 * maximum in row-major window order, as TF's MaxPoolGrad does. */

/* dX += col2im(dY @ W^T). Same scratch as the forward (graft_f32_conv2d_scratch_bytes):
 * pointwise convs need none. Threaded by OpenBLAS; col2im is serial. */
void graft_f32_conv2d_backward_input__ref(const graft_conv_geom *g,
                                          const float *dout,   /* (N, out_h, out_w, out_c) */
                                          const float *kernel, /* (kernel_h, kernel_w, in_c, out_c) */
                                          float *din);         /* (N, in_h, in_w, in_c), += */
void graft_f32_conv2d_backward_input__gemm(const graft_conv_geom *g,
                                           const float *dout,   /* (N, out_h, out_w, out_c) */
                                           const float *kernel, /* (kernel_h, kernel_w, in_c, out_c) */
                                           float *din,          /* (N, in_h, in_w, in_c), += */
                                           float *scratch);     /* graft_f32_conv2d_scratch_bytes(g) bytes */

/* dW += im2col(X)^T @ dY. Same scratch as the forward. */
void graft_f32_conv2d_backward_weight__ref(const graft_conv_geom *g,
                                           const float *in,  /* (N, in_h, in_w, in_c) */
                                           const float *dout, /* (N, out_h, out_w, out_c) */
                                           float *dkernel);  /* (kernel_h, kernel_w, in_c, out_c), += */
void graft_f32_conv2d_backward_weight__gemm(const graft_conv_geom *g,
                                            const float *in,   /* (N, in_h, in_w, in_c) */
                                            const float *dout, /* (N, out_h, out_w, out_c) */
                                            float *dkernel,    /* (kernel_h, kernel_w, in_c, out_c), += */
                                            float *scratch);   /* graft_f32_conv2d_scratch_bytes(g) bytes */

/* Bias gradient of any layer whose output is `rows` rows of c channels (conv:
 * rows = N*out_h*out_w): dbias[k] += sum over rows of dout[., k], for channels
 * [c_start, c_end) so threads can split the channels. Sums in double. */
void graft_f32_bias_backward__ref(int64_t rows, int64_t c, int64_t c_start, int64_t c_end,
                                  const float *dout, /* (rows, c) */
                                  float *dbias);     /* (c), += */
void graft_f32_bias_backward__direct(int64_t rows, int64_t c, int64_t c_start, int64_t c_end,
                                     const float *dout, /* (rows, c) */
                                     float *dbias);     /* (c), += */

/* Depthwise dX for input rows [row_start, row_end) of batch*in_h: each input
 * row gathers from the output rows its windows reach, so threads splitting the
 * input rows write disjoint memory. */
void graft_f32_dwconv2d_backward_input__ref(const graft_conv_geom *g, int64_t row_start,
                                            int64_t row_end,
                                            const float *dout,   /* (N, out_h, out_w, in_c*M) */
                                            const float *kernel, /* (kernel_h, kernel_w, in_c, M) */
                                            float *din);         /* (N, in_h, in_w, in_c), += */
void graft_f32_dwconv2d_backward_input__direct(const graft_conv_geom *g, int64_t row_start,
                                               int64_t row_end,
                                               const float *dout,   /* (N, out_h, out_w, in_c*M) */
                                               const float *kernel, /* (kernel_h, kernel_w, in_c, M) */
                                               float *din);         /* (N, in_h, in_w, in_c), += */
void graft_f32_dwconv2d_backward_input_parallel(const graft_conv_geom *g,
                                                const float *dout,   /* (N, out_h, out_w, in_c*M) */
                                                const float *kernel, /* (kernel_h, kernel_w, in_c, M) */
                                                float *din);
/* The same writing din instead of adding to it (its old contents unread), so
 * the tensor needs no zeroing pass of its own beforehand. */
void graft_f32_dwconv2d_backward_input_parallel_overwrite(const graft_conv_geom *g,
                                                          const float *dout, const float *kernel,
                                                          float *din);         /* (N, in_h, in_w, in_c), += */

/* Depthwise dW for input channels [c_start, c_end) (their M outputs each), over
 * the whole batch: channels are independent, so threads split them and need no
 * reduction. The direct variant sums each output row in a stack buffer before
 * adding it to dkernel, keeping float error at the level of a blocked sum. */
void graft_f32_dwconv2d_backward_weight__ref(const graft_conv_geom *g, int64_t c_start,
                                             int64_t c_end,
                                             const float *in,   /* (N, in_h, in_w, in_c) */
                                             const float *dout, /* (N, out_h, out_w, in_c*M) */
                                             float *dkernel);   /* (kernel_h, kernel_w, in_c, M), += */
void graft_f32_dwconv2d_backward_weight__direct(const graft_conv_geom *g, int64_t c_start,
                                                int64_t c_end,
                                                const float *in,   /* (N, in_h, in_w, in_c) */
                                                const float *dout, /* (N, out_h, out_w, in_c*M) */
                                                float *dkernel);   /* (kernel_h, kernel_w, in_c, M), += */
void graft_f32_dwconv2d_backward_weight_parallel(const graft_conv_geom *g,
                                                 const float *in,   /* (N, in_h, in_w, in_c) */
                                                 const float *dout, /* (N, out_h, out_w, in_c*M) */
                                                 float *dkernel);   /* (kernel_h, kernel_w, in_c, M), += */

/* The moments-taking forward reading a BatchNorm's input instead of its output
 * (`in` is then the BatchNorm's input, and its output is map's scale_shift_act
 * of it): each band of input rows is mapped into the scratch (L2) just before
 * the convolution reads it, so the BatchNorm's output is never written. */
size_t graft_f32_dwconv2d_forward_mapped_scratch_floats(const graft_conv_geom *g);
void graft_f32_dwconv2d_forward_moments_mapped(const graft_conv_geom *g, const float *in,
                                               const graft_bn_grad_map *map, const float *kernel,
                                               const float *bias, float *out, double *part_mean,
                                               double *part_m2, float *work);

/* Training's depthwise backward: both gradients an image at a time (its output
 * gradient read from cache by the second), images in fixed parts whose weight
 * gradients are summed in order, so results do not depend on the thread count.
 * dkernel (+=) and din (+= when accumulate, else written over) may each be NULL.
 * With bn, dout is the gradient of the BatchNorm after the convolution and each
 * image of this convolution's own is mapped from it and `out` (this
 * convolution's output) by bn into the scratch, never written to memory. With
 * sums (and din), the backward sums of the BatchNorm before the convolution
 * are taken from each image of din as it is written (parts: the 8 here). With
 * in_map, `in` is that BatchNorm's input and each image of its output (this
 * convolution's input) is mapped into the scratch for the weight gradient. */
size_t graft_f32_dwconv2d_train_backward_scratch_floats(const graft_conv_geom *g);
void graft_f32_dwconv2d_train_backward(const graft_conv_geom *g, const float *in,
                                       const float *dout, const float *kernel, float *dkernel,
                                       float *din, int accumulate, const graft_bn_grad_map *bn,
                                       const float *out, const graft_bn_sums_out *sums,
                                       const graft_bn_grad_map *in_map, float *work);

/* Pooling dX for samples [n_start, n_end): windows overlap when stride < kernel,
 * so each sample is scattered by one thread and threads split the batch. */
void graft_f32_maxpool2d_backward__ref(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                       const float *in,   /* (N, in_h, in_w, C) */
                                       const float *dout, /* (N, out_h, out_w, C) */
                                       float *din);       /* (N, in_h, in_w, C), += */
void graft_f32_maxpool2d_backward__direct(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                          const float *in,   /* (N, in_h, in_w, C) */
                                          const float *dout, /* (N, out_h, out_w, C) */
                                          float *din);       /* (N, in_h, in_w, C), += */
void graft_f32_maxpool2d_backward_parallel(const graft_conv_geom *g,
                                           const float *in,   /* (N, in_h, in_w, C) */
                                           const float *dout, /* (N, out_h, out_w, C) */
                                           float *din);       /* (N, in_h, in_w, C), += */
void graft_f32_avgpool2d_backward__ref(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                       const float *dout, /* (N, out_h, out_w, C) */
                                       float *din);       /* (N, in_h, in_w, C), += */
void graft_f32_avgpool2d_backward__direct(const graft_conv_geom *g, int64_t n_start, int64_t n_end,
                                          const float *dout, /* (N, out_h, out_w, C) */
                                          float *din);       /* (N, in_h, in_w, C), += */
void graft_f32_avgpool2d_backward_parallel(const graft_conv_geom *g,
                                           const float *dout, /* (N, out_h, out_w, C) */
                                           float *din);       /* (N, in_h, in_w, C), += */

/* Global pooling dX for samples [n_start, n_end). */
void graft_f32_global_avgpool_backward__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                            const float *dout, /* (N, c) */
                                            float *din);       /* (N, hw, c), += */
void graft_f32_global_avgpool_backward__direct(int64_t hw, int64_t c, int64_t n_start,
                                               int64_t n_end,
                                               const float *dout, /* (N, c) */
                                               float *din);       /* (N, hw, c), += */
void graft_f32_global_maxpool_backward__ref(int64_t hw, int64_t c, int64_t n_start, int64_t n_end,
                                            const float *in,   /* (N, hw, c) */
                                            const float *dout, /* (N, c) */
                                            float *din);       /* (N, hw, c), += */
void graft_f32_global_maxpool_backward__direct(int64_t hw, int64_t c, int64_t n_start,
                                               int64_t n_end,
                                               const float *in,   /* (N, hw, c) */
                                               const float *dout, /* (N, c) */
                                               float *din);       /* (N, hw, c), += */

#endif
