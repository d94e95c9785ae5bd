/* BatchNorm's training passes over an NHWC tensor seen as (rows, ch), with the
 * ReLU or ReLU6 after it folded in: batch moments, the normalising affine map
 * and the backward sums and input gradient. The fast variants split the rows
 * into a fixed number of parts, so their results do not depend on the thread
 * count; `act` is GRAFT__ACT_LINEAR, _RELU or _RELU6. */
#ifndef GRAFT_KERNELS_BATCH_NORM_H
#define GRAFT_KERNELS_BATCH_NORM_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/activation.h"

/* Per-channel mean and biased variance. */
void graft_f32_channel_moments__ref(const float *x, int64_t rows, int64_t ch, double *mean,
                                    double *var);
/* Bytes of scratch graft_f32_channel_moments and graft_f32_bn_backward_sums need. */
size_t graft_f32_bn_scratch_bytes(int64_t rows, int64_t ch);
/* One pass over x: each 32-row block's mean and squared deviations, merged into
 * the running ones (Chan et al.), so the variance does not cancel. */
void graft_f32_channel_moments(const float *x, int64_t rows, int64_t ch, double *mean,
                               double *var, void *scratch);

/* The pieces, for passes that see the rows a chunk at a time (a convolution
 * writing them): merges rows x (rows, ch) into the running moments (mean, m2 =
 * sum of squared deviations) of n_before rows (0: starts them); then merges
 * parts' moments in order, part p holding rows [rows p / parts, rows (p+1) / parts). */
void graft_f32_channel_moments_add_rows(const float *x, int64_t rows, int64_t ch,
                                        int64_t n_before, double *mean, double *m2);
void graft_f32_channel_moments_merge(const double *part_mean, const double *part_m2,
                                     int64_t parts, int64_t rows, int64_t ch, double *mean,
                                     double *var);

/* y = act(x * mul[c] + add[c]); y may be x. */
void graft_f32_scale_shift_act__ref(const float *x, float *y, const float *mul, const float *add,
                                    int64_t rows, int64_t ch, graft__activation act);
void graft_f32_scale_shift_act(const float *x, float *y, const float *mul, const float *add,
                               int64_t rows, int64_t ch, graft__activation act);

/* With g = dy * act'(x * mul + add) (the activation's derivative at the
 * pre-activation forward computed, found again from x rather than read from the
 * activation's output: two passes over memory fewer) and xhat = (x - mean) inv:
 * sum_g[c] = sum over rows of g, sum_gx[c] = sum of g * xhat. */
void graft_f32_bn_backward_sums__ref(const float *x, const float *dy, graft__activation act,
                                     const float *mul, const float *add, const float *mean,
                                     const float *inv, int64_t rows, int64_t ch, double *sum_g,
                                     double *sum_gx);
void graft_f32_bn_backward_sums(const float *x, const float *dy, graft__activation act,
                                const float *mul, const float *add, const float *mean,
                                const float *inv, int64_t rows, int64_t ch, double *sum_g,
                                double *sum_gx, void *scratch);

/* dx = scale[c] * (g - mg[c] - xhat * mgx[c]), added to dx when accumulate,
 * else written over it (dx's old contents unread). */
void graft_f32_bn_backward_input__ref(const float *x, const float *dy, graft__activation act,
                                      const float *mul, const float *add, const float *mean,
                                      const float *inv, const float *scale, const float *mg,
                                      const float *mgx, int64_t rows, int64_t ch, float *dx,
                                      int accumulate);
void graft_f32_bn_backward_input(const float *x, const float *dy, graft__activation act,
                                 const float *mul, const float *add, const float *mean,
                                 const float *inv, const float *scale, const float *mg,
                                 const float *mgx, int64_t rows, int64_t ch, float *dx,
                                 int accumulate);

/* The input gradient above as a map, for a convolution that reads its own
 * output's gradient a chunk at a time from the BatchNorm after it (without the
 * tensor being written between them): x is the BatchNorm's input. */
typedef struct graft_bn_grad_map {
    graft__activation act;
    const float *mul, *add, *mean, *inv, *scale, *mg, *mgx; /* per channel */
} graft_bn_grad_map;
/* A BatchNorm's backward sums taken by the layer after it (the reader of the
 * BatchNorm's output, writing its gradient dy) while each chunk of dy is still
 * in cache: x is the BatchNorm's input; of `map` only act, mul, add, mean and
 * inv are read. That layer's fixed parts p of rows (GRAFT_BN_SUM_PARTS) each
 * sum into part_g[p * ch ..] and part_gx[p * ch ..], merged in order by
 * graft_f32_bn_backward_sums_merge. */
enum { GRAFT_BN_SUM_PARTS = 8 };
typedef struct graft_bn_sums_out {
    graft_bn_grad_map map;
    const float *x;
    double *part_g, *part_gx;
} graft_bn_sums_out;
/* Adds rows of x and dy (each row ch wide) into sum_g and sum_gx, single-threaded. */
void graft_f32_bn_backward_sums_add_rows(const float *x, const float *dy,
                                         const graft_bn_grad_map *map, int64_t rows, int64_t ch,
                                         double *sum_g, double *sum_gx);
void graft_f32_bn_backward_sums_merge(const graft_bn_sums_out *sums, int64_t ch, double *sum_g,
                                      double *sum_gx);
/* dx (rows, ch) = the map at rows of x and dy, single-threaded; dx is written over. */
/* y = act(x * mul + add) with the map's act, mul and add, single-threaded: a
 * BatchNorm's output computed by the layer that reads it, a chunk at a time. */
void graft_f32_scale_shift_act_rows(const float *x, float *y, const graft_bn_grad_map *map,
                                    int64_t rows, int64_t ch);
void graft_f32_bn_backward_input_rows(const float *x, const float *dy,
                                      const graft_bn_grad_map *map, int64_t rows, int64_t ch,
                                      float *dx);

#endif
