/* BatchNormalization over the last axis. At inference (and whenever the layer is
 * frozen, as Keras >= 2.1 does) it normalises with the moving statistics. */
#include <math.h>

#include "core/alloc.h"
#include "core/error.h"
#include "kernels/batch_norm.h"
#include "kernels/conv.h"
#include "layers/layer.h"

typedef struct batch_norm_config {
    double epsilon, momentum;
    int center, scale;
} batch_norm_config;

static graft_status batch_norm_parse(graft__layer *layer, const json_t *config)
{
    batch_norm_config *c = graft__calloc(1, sizeof *c);
    if (!c)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    layer->config = c;
    graft_status rc;
    if ((rc = graft__config_double(config, "epsilon", &c->epsilon, 1e-3, layer->name)) ||
        (rc = graft__config_double(config, "momentum", &c->momentum, 0.99, layer->name)) ||
        (rc = graft__config_bool(config, "center", &c->center, 1, layer->name)) ||
        (rc = graft__config_bool(config, "scale", &c->scale, 1, layer->name)))
        return rc;
    const json_t *axis = json_object_get(config, "axis");
    if (json_is_array(axis) && json_array_size(axis) == 1)
        axis = json_array_get(axis, 0);
    if (axis && !json_is_null(axis) &&
        !(json_is_integer(axis) && (json_integer_value(axis) == -1 || json_integer_value(axis) == 3)))
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': only the last (channel) axis is "
                           "supported", layer->name);
    return GRAFT_OK;
}

static graft_status batch_norm_infer(graft__layer *layer, int n_inputs, const graft__shape *in,
                                     graft__shape *out)
{
    const batch_norm_config *c = layer->config;
    graft__shape vec = {1, {in[0].dim[in[0].rank - 1]}};
    int index = 0;
    graft_status rc = GRAFT_OK;
    /* Keras's weight order: gamma, beta, moving_mean, moving_variance. */
    if (c->scale)
        rc = graft__layer_declare_weight(layer, index++, "gamma", &vec, 1);
    if (!rc && c->center)
        rc = graft__layer_declare_weight(layer, index++, "beta", &vec, 1);
    if (!rc)
        rc = graft__layer_declare_weight(layer, index++, "moving_mean", &vec, 0);
    if (!rc)
        rc = graft__layer_declare_weight(layer, index++, "moving_variance", &vec, 0);
    *out = in[0];
    return rc;
}

/* Three float vectors (forward: mul, add; backward: scale and the two means),
 * padded to 8 floats so what follows is 32-byte aligned; two double vectors;
 * then the kernels' per-part sums. */
static size_t floats_bytes(int64_t ch) { return sizeof(float) * (size_t)((3 * ch + 7) / 8 * 8); }

static size_t batch_norm_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                                 const graft__shape *out, int64_t batch)
{
    int64_t ch = in[0].dim[in[0].rank - 1];
    int64_t rows = batch * graft__shape_elems(&in[0]) / ch;
    return floats_bytes(ch) + 2 * sizeof(double) * (size_t)ch + graft_f32_bn_scratch_bytes(rows, ch);
}

/* The four per-channel vectors, absent ones NULL. */
typedef struct bn_weights {
    float *gamma, *beta, *mean, *var;
} bn_weights;

static bn_weights weights_of(const graft__layer *layer)
{
    const batch_norm_config *c = layer->config;
    bn_weights w = {0};
    int i = 0;
    w.gamma = c->scale ? layer->weights[i++].data : NULL;
    w.beta = c->center ? layer->weights[i++].data : NULL;
    w.mean = layer->weights[i++].data;
    w.var = layer->weights[i].data;
    return w;
}

extern const graft__layer_ops graft__batch_norm_layer_ops;

int graft__batch_norm_affine(const graft__layer *layer, float *mul, float *add)
{
    if (layer->ops != &graft__batch_norm_layer_ops)
        return 0;
    const batch_norm_config *c = layer->config;
    bn_weights w = weights_of(layer);
    int64_t ch = layer->weights[c->scale + c->center].shape.dim[0];
    for (int64_t j = 0; j < ch; j++) {
        double m = (w.gamma ? w.gamma[j] : 1.0) / sqrt((double)w.var[j] + c->epsilon);
        mul[j] = (float)m;
        add[j] = (float)((w.beta ? w.beta[j] : 0.0) - w.mean[j] * m);
    }
    return 1;
}

/* Saved for backward: the mean and 1/sqrt(var + eps) forward normalised with
 * (the batch's or the moving ones) and the affine map they gave, mul and add,
 * from which backward finds an absorbed ReLU's derivative exactly as forward
 * clamped. */
static size_t batch_norm_saved(const graft__layer *layer, const graft__shape *out, int64_t batch)
{
    return 4 * sizeof(float) * (size_t)out->dim[out->rank - 1];
}

/* y = x * mul + add with mul = gamma / sqrt(var + eps), add = beta - mean * mul,
 * from the moving statistics (inference, or a frozen layer as Keras >= 2.1 does)
 * or from the batch's (training a trainable layer), which then also move the
 * moving statistics by (1 - momentum); the moving variance takes the unbiased
 * batch variance, as TF's fused batch norm does. */
static void batch_norm_forward(const graft__layer *layer, const graft__forward_args *a)
{
    const batch_norm_config *c = layer->config;
    const graft__shape *s = a->out_shape;
    int64_t ch = s->dim[s->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(s) / ch;
    bn_weights w = weights_of(layer);
    float *mul = a->scratch, *add = mul + ch;
    double *bmean = (double *)((char *)a->scratch + floats_bytes(ch)), *bvar = bmean + ch;
    if (a->batch_stats && a->moments_in)
        graft_f32_channel_moments_merge(a->moments_in, a->moments_in + GRAFT_CONV_TRAIN_PARTS * ch,
                                        GRAFT_CONV_TRAIN_PARTS, rows, ch, bmean, bvar);
    else if (a->batch_stats)
        graft_f32_channel_moments(a->inputs[0], rows, ch, bmean, bvar, bvar + ch);
    for (int64_t j = 0; j < ch; j++) {
        double mean = a->batch_stats ? bmean[j] : w.mean[j];
        double var = a->batch_stats ? bvar[j] : w.var[j];
        double inv = 1.0 / sqrt(var + c->epsilon);
        double m = (w.gamma ? w.gamma[j] : 1.0) * inv;
        mul[j] = (float)m;
        add[j] = (float)((w.beta ? w.beta[j] : 0.0) - mean * m);
        if (a->saved) {
            float *saved = a->saved;
            saved[j] = (float)mean;
            saved[ch + j] = (float)inv;
            saved[2 * ch + j] = mul[j];
            saved[3 * ch + j] = add[j];
        }
        if (a->batch_stats) {
            double unbiased = rows > 1 ? bvar[j] * (double)rows / (double)(rows - 1) : bvar[j];
            w.mean[j] = (float)(w.mean[j] * c->momentum + mean * (1.0 - c->momentum));
            w.var[j] = (float)(w.var[j] * c->momentum + unbiased * (1.0 - c->momentum));
        }
    }
    if (!a->output_unused)
        graft_f32_scale_shift_act(a->inputs[0], a->output, mul, add, rows, ch, a->epilogue);
}

/* With g = dy (times the absorbed ReLU's derivative) and xhat = (x - mean) inv:
 * dgamma = sum g xhat, dbeta = sum g, and
 * dx = gamma inv (g - [batch stats] (sum g + xhat sum g xhat) / rows). */
static void batch_norm_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const batch_norm_config *c = layer->config;
    const graft__shape *s = a->out_shape;
    int64_t ch = s->dim[s->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(s) / ch;
    bn_weights w = weights_of(layer);
    const float *saved = a->saved, *mean = saved, *inv = saved + ch, *mul = saved + 2 * ch,
                *add = saved + 3 * ch;
    float *g = a->scratch, *mdy = g + ch, *mdx = mdy + ch;
    double *sum_dy = (double *)((char *)a->scratch + floats_bytes(ch)), *sum_dy_xhat = sum_dy + ch;
    int wi = 0;
    float *d_gamma = c->scale ? a->d_weights[wi++] : NULL;
    float *d_beta = c->center ? a->d_weights[wi++] : NULL;
    float *dx = a->d_inputs[0];
    const float *x = a->inputs[0];
    if (a->bn_sums_in)
        graft_f32_bn_backward_sums_merge(a->bn_sums_in, ch, sum_dy, sum_dy_xhat);
    else if (d_gamma || d_beta || ((dx || a->defer_input_grad) && a->batch_stats))
        graft_f32_bn_backward_sums(x, a->d_output, a->epilogue, mul, add, mean, inv, rows, ch,
                                   sum_dy, sum_dy_xhat, sum_dy_xhat + ch);
    for (int64_t j = 0; j < ch; j++) {
        if (d_gamma)
            d_gamma[j] += (float)sum_dy_xhat[j];
        if (d_beta)
            d_beta[j] += (float)sum_dy[j];
    }
    if (!dx && !a->defer_input_grad)
        return;
    if (a->defer_input_grad)
        g = a->defer_input_grad, mdy = g + ch, mdx = mdy + ch;
    for (int64_t j = 0; j < ch; j++) {
        g[j] = (w.gamma ? w.gamma[j] : 1.0f) * inv[j];
        mdy[j] = a->batch_stats ? (float)(sum_dy[j] / (double)rows) : 0.0f;
        mdx[j] = a->batch_stats ? (float)(sum_dy_xhat[j] / (double)rows) : 0.0f;
    }
    if (!a->defer_input_grad)
        graft_f32_bn_backward_input(x, a->d_output, a->epilogue, mul, add, mean, inv, g, mdy,
                                    mdx, rows, ch, dx, !(a->fresh & 1u));
}

const graft__layer_ops graft__batch_norm_layer_ops = {
    .class_name = "BatchNormalization",
    .parse = batch_norm_parse,
    .infer = batch_norm_infer,
    .scratch_bytes = batch_norm_scratch,
    .forward = batch_norm_forward,
    .saved_bytes = batch_norm_saved,
    .backward = batch_norm_backward,
    .absorbs_relu = 1,
    .writes_fresh_grads = 1,
    .backward_in_place = 1,
};
