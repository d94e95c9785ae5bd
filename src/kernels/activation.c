#include "kernels/activation.h"

#include <math.h>

/* Written as plain loops so gcc vectorises the relu family; the transcendental
 * ones call libm, whose accuracy the TF.js golden tests hold us to. */

static void relu(float *x, int64_t start, int64_t end)
{
    for (int64_t i = start; i < end; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void relu6(float *x, int64_t start, int64_t end)
{
    for (int64_t i = start; i < end; i++) {
        float v = x[i] > 0.0f ? x[i] : 0.0f;
        x[i] = v < 6.0f ? v : 6.0f;
    }
}

static float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

/* Keras 2 and TF.js define hard_sigmoid as clip(0.2 x + 0.5, 0, 1). */
static float hard_sigmoid(float v)
{
    float y = 0.2f * v + 0.5f;
    return y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
}

static float elu(float v) { return v > 0.0f ? v : expm1f(v); }

static float selu(float v)
{
    const float alpha = 1.6732632423543772f, scale = 1.0507009873554805f;
    return scale * (v > 0.0f ? v : alpha * expm1f(v));
}

static float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

static float gelu_tanh(float v)
{
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
}

/* log(1 + e^v) without overflow for large v. */
static float softplus(float v) { return v > 0.0f ? v + log1pf(expf(-v)) : log1pf(expf(v)); }

void graft_f32_activation(graft__activation act, float *x, int64_t start, int64_t end)
{
    switch (act) {
    case GRAFT__ACT_LINEAR:
    case GRAFT__ACT_SOFTMAX: /* handled by graft_f32_softmax_rows */
        return;
    case GRAFT__ACT_RELU: relu(x, start, end); return;
    case GRAFT__ACT_RELU6: relu6(x, start, end); return;
    default: break;
    }
    for (int64_t i = start; i < end; i++) {
        float v = x[i];
        switch (act) {
        case GRAFT__ACT_SIGMOID: v = sigmoid(v); break;
        case GRAFT__ACT_TANH: v = tanhf(v); break;
        case GRAFT__ACT_SWISH: v = v * sigmoid(v); break;
        case GRAFT__ACT_HARD_SIGMOID: v = hard_sigmoid(v); break;
        case GRAFT__ACT_ELU: v = elu(v); break;
        case GRAFT__ACT_SELU: v = selu(v); break;
        case GRAFT__ACT_GELU: v = gelu_erf(v); break;
        case GRAFT__ACT_GELU_TANH: v = gelu_tanh(v); break;
        case GRAFT__ACT_SOFTPLUS: v = softplus(v); break;
        default: break;
        }
        x[i] = v;
    }
}

void graft_f32_softmax_rows(float *x, int64_t cols, int64_t row_start, int64_t row_end)
{
    for (int64_t r = row_start; r < row_end; r++) {
        float *row = x + r * cols;
        float max = row[0];
        for (int64_t j = 1; j < cols; j++)
            max = row[j] > max ? row[j] : max;
        double sum = 0.0;
        for (int64_t j = 0; j < cols; j++) {
            row[j] = expf(row[j] - max);
            sum += row[j];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < cols; j++)
            row[j] *= inv;
    }
}

void graft_f32_relu_general(float *x, int64_t start, int64_t end, float max_value,
                            float negative_slope, float threshold)
{
    for (int64_t i = start; i < end; i++) {
        float v = x[i];
        if (max_value >= 0.0f && v >= max_value)
            v = max_value;
        else if (v < threshold)
            v = negative_slope * (v - threshold);
        x[i] = v;
    }
}

/* Derivatives at the kinks follow TF: relu'(0) = 0, relu6'(6) = 0. */
static float derivative(graft__activation act, float x, float y)
{
    switch (act) {
    case GRAFT__ACT_LINEAR: return 1.0f;
    case GRAFT__ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case GRAFT__ACT_RELU6: return x > 0.0f && x < 6.0f ? 1.0f : 0.0f;
    case GRAFT__ACT_SIGMOID: return y * (1.0f - y);
    case GRAFT__ACT_TANH: return 1.0f - y * y;
    case GRAFT__ACT_SWISH: {
        float s = sigmoid(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case GRAFT__ACT_HARD_SIGMOID: return x > -2.5f && x < 2.5f ? 0.2f : 0.0f;
    case GRAFT__ACT_ELU: return x > 0.0f ? 1.0f : y + 1.0f;
    case GRAFT__ACT_SELU: {
        const float alpha = 1.6732632423543772f, scale = 1.0507009873554805f;
        return x > 0.0f ? scale : y + scale * alpha;
    }
    case GRAFT__ACT_GELU: {
        const float inv_sqrt2pi = 0.3989422804014327f;
        return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * inv_sqrt2pi * expf(-0.5f * x * x);
    }
    case GRAFT__ACT_GELU_TANH: {
        const float c = 0.7978845608028654f;
        float u = c * (x + 0.044715f * x * x * x), t = tanhf(u);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case GRAFT__ACT_SOFTPLUS: return sigmoid(x);
    case GRAFT__ACT_SOFTMAX: return 0.0f; /* handled row-wise */
    }
    return 0.0f;
}

void graft_f32_activation_backward(graft__activation act, const float *x, const float *y,
                                   const float *dy, float *dx, int64_t start, int64_t end)
{
    for (int64_t i = start; i < end; i++)
        dx[i] += dy[i] * derivative(act, x ? x[i] : 0.0f, y ? y[i] : 0.0f);
}

void graft_f32_softmax_rows_backward(const float *y, const float *dy, float *dx, int64_t cols,
                                     int64_t row_start, int64_t row_end)
{
    for (int64_t r = row_start; r < row_end; r++) {
        const float *yr = y + r * cols, *dyr = dy + r * cols;
        double dot = 0.0;
        for (int64_t j = 0; j < cols; j++)
            dot += (double)dyr[j] * yr[j];
        for (int64_t j = 0; j < cols; j++)
            dx[r * cols + j] += yr[j] * (dyr[j] - (float)dot);
    }
}

void graft_f32_relu_general_backward(const float *x, const float *dy, float *dx, int64_t start,
                                     int64_t end, float max_value, float negative_slope,
                                     float threshold)
{
    for (int64_t i = start; i < end; i++) {
        float v = x[i], d;
        if (max_value >= 0.0f && v >= max_value)
            d = 0.0f;
        else if (v >= threshold)
            d = 1.0f;
        else
            d = negative_slope;
        dx[i] += dy[i] * d;
    }
}

int graft__activation_derivative_from_output(graft__activation act)
{
    return act != GRAFT__ACT_SWISH && act != GRAFT__ACT_GELU && act != GRAFT__ACT_GELU_TANH;
}

static float derivative_from_output(graft__activation act, float y)
{
    const float alpha = 1.6732632423543772f, scale = 1.0507009873554805f;
    switch (act) {
    case GRAFT__ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
    case GRAFT__ACT_RELU6: return y > 0.0f && y < 6.0f ? 1.0f : 0.0f;
    case GRAFT__ACT_SIGMOID: return y * (1.0f - y);
    case GRAFT__ACT_TANH: return 1.0f - y * y;
    case GRAFT__ACT_HARD_SIGMOID: return y > 0.0f && y < 1.0f ? 0.2f : 0.0f;
    case GRAFT__ACT_ELU: return y > 0.0f ? 1.0f : y + 1.0f;
    case GRAFT__ACT_SELU: return y > 0.0f ? scale : y + scale * alpha;
    case GRAFT__ACT_SOFTPLUS: return -expm1f(-y); /* sigmoid(x) = 1 - e^-softplus(x) */
    default: return 1.0f;
    }
}

void graft_f32_activation_backward_from_output(graft__activation act, const float *y,
                                               const float *dy, float *dx, int64_t start,
                                               int64_t end)
{
    for (int64_t i = start; i < end; i++)
        dx[i] += dy[i] * derivative_from_output(act, y[i]);
}
