/* Elementwise activations and softmax, as Keras defines them. */
#ifndef GRAFT_KERNELS_ACTIVATION_H
#define GRAFT_KERNELS_ACTIVATION_H

#include <stdint.h>

/* Activation functions as Keras names them. */
typedef enum graft__activation {
    GRAFT__ACT_LINEAR = 0,
    GRAFT__ACT_RELU,
    GRAFT__ACT_RELU6,
    GRAFT__ACT_SIGMOID,
    GRAFT__ACT_TANH,
    GRAFT__ACT_SOFTMAX,
    GRAFT__ACT_SWISH,
    GRAFT__ACT_HARD_SIGMOID,
    GRAFT__ACT_ELU,
    GRAFT__ACT_GELU,
    GRAFT__ACT_GELU_TANH,
    GRAFT__ACT_SOFTPLUS,
    GRAFT__ACT_SELU
} graft__activation;

/* Applies an elementwise activation (not softmax) to x[start, end) in place. */
void graft_f32_activation(graft__activation act, float *x, int64_t start, int64_t end);

/* Softmax along rows of length cols, for rows [row_start, row_end), in place;
 * max-subtracted so large logits do not overflow. */
void graft_f32_softmax_rows(float *x /* (rows, cols) */, int64_t cols, int64_t row_start,
                            int64_t row_end);

/* Keras's ReLU layer: x >= max_value -> max_value; threshold <= x -> x;
 * otherwise negative_slope * (x - threshold). max_value < 0 means none. */
void graft_f32_relu_general(float *x, int64_t start, int64_t end, float max_value,
                            float negative_slope, float threshold);

/* dx[i] += dy[i] * f'(x[i]) for i in [start, end); x is the activation's input,
 * y its output (either may be what a derivative is cheapest from). Not softmax. */
void graft_f32_activation_backward(graft__activation act, const float *x, const float *y,
                                   const float *dy, float *dx, int64_t start, int64_t end);

/* Whether f' can be computed from the output alone (then layers with a fused
 * activation need not keep the pre-activation for backward). */
int graft__activation_derivative_from_output(graft__activation act);

/* dx += dy * f'(.) computed from the output y (see above). */
void graft_f32_activation_backward_from_output(graft__activation act, const float *y,
                                               const float *dy, float *dx, int64_t start,
                                               int64_t end);

/* Softmax rows: dx += y * (dy - sum_j dy_j y_j), rows [row_start, row_end). */
void graft_f32_softmax_rows_backward(const float *y /* (rows, cols) */, const float *dy,
                                     float *dx, int64_t cols, int64_t row_start, int64_t row_end);

/* Keras ReLU layer derivative: 0 above max_value, 1 in [threshold, max_value),
 * negative_slope below threshold; accumulates into dx. */
void graft_f32_relu_general_backward(const float *x, const float *dy, float *dx, int64_t start,
                                     int64_t end, float max_value, float negative_slope,
                                     float threshold);

#endif
