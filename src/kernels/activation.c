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
