/* BatchNormalization over the last axis. At inference (and whenever the layer is
 * frozen, as Keras >= 2.1 does) it normalises with the moving statistics. */
#include <math.h>

#include "core/alloc.h"
#include "core/error.h"
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

static size_t batch_norm_scratch(const graft__layer *layer, int n_inputs, const graft__shape *in,
                                 const graft__shape *out, int64_t batch)
{
    /* two float vectors (8-byte aligned end: 2*ch floats), two double vectors,
     * then backward's three float vectors */
    size_t ch = (size_t)in[0].dim[in[0].rank - 1];
    return 5 * ch * sizeof(float) + 2 * ch * sizeof(double);
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

/* Per-channel mean and biased variance over rows, in double, column tiles per
 * thread so the sums do not depend on the thread count. */
static void channel_moments(const float *x, int64_t rows, int64_t ch, double *mean, double *var)
{
    enum { TILE = 64 };
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < ch; c0 += TILE) {
        int64_t width = ch - c0 < TILE ? ch - c0 : TILE;
        double sum[TILE] = {0}, sq[TILE] = {0};
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < width; j++)
                sum[j] += x[r * ch + c0 + j];
        for (int64_t j = 0; j < width; j++)
            mean[c0 + j] = sum[j] / (double)rows;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < width; j++) {
                double d = x[r * ch + c0 + j] - mean[c0 + j];
                sq[j] += d * d;
            }
        for (int64_t j = 0; j < width; j++)
            var[c0 + j] = sq[j] / (double)rows;
    }
}

static void apply_affine(const float *x, float *y, const float *mul, const float *add,
                         int64_t rows, int64_t ch)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < ch; j++)
            y[r * ch + j] = x[r * ch + j] * mul[j] + add[j];
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

/* Saved for backward in batch-statistics mode: mean and 1/sqrt(var + eps). */
static size_t batch_norm_saved(const graft__layer *layer, const graft__shape *out, int64_t batch)
{
    return 2 * sizeof(float) * (size_t)out->dim[out->rank - 1];
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
    double *bmean = (double *)(add + ch), *bvar = bmean + ch;
    if (a->batch_stats)
        channel_moments(a->inputs[0], rows, ch, bmean, bvar);
    for (int64_t j = 0; j < ch; j++) {
        double mean = a->batch_stats ? bmean[j] : w.mean[j];
        double var = a->batch_stats ? bvar[j] : w.var[j];
        double inv = 1.0 / sqrt(var + c->epsilon);
        double m = (w.gamma ? w.gamma[j] : 1.0) * inv;
        mul[j] = (float)m;
        add[j] = (float)((w.beta ? w.beta[j] : 0.0) - mean * m);
        if (a->batch_stats) {
            double unbiased = rows > 1 ? bvar[j] * (double)rows / (double)(rows - 1) : bvar[j];
            w.mean[j] = (float)(w.mean[j] * c->momentum + mean * (1.0 - c->momentum));
            w.var[j] = (float)(w.var[j] * c->momentum + unbiased * (1.0 - c->momentum));
            if (a->saved) {
                ((float *)a->saved)[j] = (float)mean;
                ((float *)a->saved)[ch + j] = (float)inv;
            }
        }
    }
    apply_affine(a->inputs[0], a->output, mul, add, rows, ch);
}

/* With xhat = (x - mean) * inv:  dgamma = sum dy xhat, dbeta = sum dy, and
 * dx = gamma inv (dy - [batch stats] (sum dy + xhat sum dy xhat) / rows). */
static void batch_norm_backward(const graft__layer *layer, const graft__backward_args *a)
{
    const batch_norm_config *c = layer->config;
    const graft__shape *s = a->out_shape;
    int64_t ch = s->dim[s->rank - 1];
    int64_t rows = a->batch * graft__shape_elems(s) / ch;
    bn_weights w = weights_of(layer);
    float *mean = a->scratch, *inv = mean + ch;
    double *sum_dy = (double *)(inv + ch), *sum_dy_xhat = sum_dy + ch;
    for (int64_t j = 0; j < ch; j++) {
        mean[j] = a->batch_stats ? ((const float *)a->saved)[j] : w.mean[j];
        inv[j] = a->batch_stats ? ((const float *)a->saved)[ch + j]
                                : (float)(1.0 / sqrt((double)w.var[j] + c->epsilon));
    }
    const float *x = a->inputs[0], *dy = a->d_output;
    /* Sums per channel tile, so they do not depend on the thread count; float
     * partial sums over ROWS rows (vectorised), added into doubles between. */
    enum { TILE = 64, ROWS = 32 };
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < ch; c0 += TILE) {
        int64_t width = ch - c0 < TILE ? ch - c0 : TILE;
        double s1[TILE] = {0}, s2[TILE] = {0};
        for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
            float p1[TILE] = {0}, p2[TILE] = {0};
            int64_t r1 = rows - r0 < ROWS ? rows : r0 + ROWS;
            for (int64_t r = r0; r < r1; r++) {
                const float *dyr = dy + r * ch + c0, *xr = x + r * ch + c0;
                for (int64_t j = 0; j < width; j++) {
                    p1[j] += dyr[j];
                    p2[j] += dyr[j] * ((xr[j] - mean[c0 + j]) * inv[c0 + j]);
                }
            }
            for (int64_t j = 0; j < width; j++) {
                s1[j] += p1[j];
                s2[j] += p2[j];
            }
        }
        for (int64_t j = 0; j < width; j++) {
            sum_dy[c0 + j] = s1[j];
            sum_dy_xhat[c0 + j] = s2[j];
        }
    }
    int wi = 0;
    float *d_gamma = c->scale ? a->d_weights[wi++] : NULL;
    float *d_beta = c->center ? a->d_weights[wi++] : NULL;
    for (int64_t j = 0; j < ch; j++) {
        if (d_gamma)
            d_gamma[j] += (float)sum_dy_xhat[j];
        if (d_beta)
            d_beta[j] += (float)sum_dy[j];
    }
    float *dx = a->d_inputs[0];
    if (!dx)
        return;
    /* Per channel: dx += g * (dy - mean_dy - xhat * mean_dy_xhat), the two means
     * zero without batch statistics; in float per element, so it vectorises. */
    float *g = (float *)(sum_dy_xhat + ch), *mdy = g + ch, *mdx = mdy + ch;
    for (int64_t j = 0; j < ch; j++) {
        g[j] = (w.gamma ? w.gamma[j] : 1.0f) * inv[j];
        mdy[j] = a->batch_stats ? (float)(sum_dy[j] / (double)rows) : 0.0f;
        mdx[j] = a->batch_stats ? (float)(sum_dy_xhat[j] / (double)rows) : 0.0f;
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *dyr = dy + r * ch, *xr = x + r * ch;
        float *dxr = dx + r * ch;
        for (int64_t j = 0; j < ch; j++) {
            float xhat = (xr[j] - mean[j]) * inv[j];
            dxr[j] += g[j] * (dyr[j] - mdy[j] - xhat * mdx[j]);
        }
    }
}

const graft__layer_ops graft__batch_norm_layer_ops = {
    .class_name = "BatchNormalization",
    .parse = batch_norm_parse,
    .infer = batch_norm_infer,
    .scratch_bytes = batch_norm_scratch,
    .forward = batch_norm_forward,
    .saved_bytes = batch_norm_saved,
    .backward = batch_norm_backward,
};
