/* Shapes, weight declaration and Keras-config reading shared by every layer kind. */
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "layers/layer.h"

int64_t graft__shape_elems(const graft__shape *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->rank; i++)
        n *= s->dim[i];
    return n;
}

int graft__shape_equal(const graft__shape *a, const graft__shape *b)
{
    if (a->rank != b->rank)
        return 0;
    for (int i = 0; i < a->rank; i++)
        if (a->dim[i] != b->dim[i])
            return 0;
    return 1;
}

const char *graft__shape_str(const graft__shape *s, char *buf, size_t size)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < s->rank && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ", %" PRId64 : "%" PRId64, s->dim[i]);
    if (used < size)
        snprintf(buf + used, size - used, s->rank == 1 ? ",)" : ")");
    return buf;
}

graft_status graft__shape_make(graft__shape *s, int rank, const int64_t *dims, const char *ctx)
{
    if (rank < 0 || rank > GRAFT_MAX_RANK)
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: rank %d is not supported (at most %d)", ctx,
                           rank, GRAFT_MAX_RANK);
    int64_t elems = 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 1 || dims[i] > GRAFT__MAX_DIM)
            return graft__fail(GRAFT_E_FORMAT, "%s: dimension %" PRId64 " is absurd", ctx, dims[i]);
        if (!graft__mul_i64(elems, dims[i], &elems) || elems > GRAFT__MAX_ELEMS)
            return graft__fail(GRAFT_E_FORMAT, "%s: shape with more than %" PRId64
                               " elements is absurd", ctx, GRAFT__MAX_ELEMS);
        s->dim[i] = dims[i];
    }
    s->rank = rank;
    return GRAFT_OK;
}

graft_status graft__layer_declare_weight(graft__layer *layer, int index, const char *name,
                                         const graft__shape *shape, int trainable)
{
    graft__weight *w = &layer->weights[index];
    if (index < layer->n_weights) {
        if (!graft__shape_equal(&w->shape, shape)) {
            char a[96], b[96];
            return graft__fail(GRAFT_E_SHAPE, "layer '%s': weight '%s' needs shape %s at one call "
                               "and %s at another", layer->name, name,
                               graft__shape_str(&w->shape, a, sizeof a),
                               graft__shape_str(shape, b, sizeof b));
        }
        return GRAFT_OK;
    }
    w->name = name;
    w->shape = *shape;
    w->trainable = trainable;
    w->offset = -1;
    w->data = NULL;
    w->loaded = 0;
    layer->n_weights = index + 1;
    return GRAFT_OK;
}

graft_status graft__config_pair(const json_t *config, const char *key, int64_t out[2],
                                int64_t fallback, const char *layer)
{
    const json_t *v = json_object_get(config, key);
    if (!v || json_is_null(v)) {
        out[0] = out[1] = fallback;
        return GRAFT_OK;
    }
    if (json_is_integer(v)) {
        out[0] = out[1] = json_integer_value(v);
        return GRAFT_OK;
    }
    if (json_is_array(v) && json_array_size(v) == 2 && json_is_integer(json_array_get(v, 0)) &&
        json_is_integer(json_array_get(v, 1))) {
        out[0] = json_integer_value(json_array_get(v, 0));
        out[1] = json_integer_value(json_array_get(v, 1));
        return GRAFT_OK;
    }
    return graft__fail(GRAFT_E_FORMAT, "layer '%s': '%s' must be an integer or a pair", layer, key);
}

graft_status graft__config_bool(const json_t *config, const char *key, int *out, int fallback,
                                const char *layer)
{
    const json_t *v = json_object_get(config, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return GRAFT_OK;
    }
    if (!json_is_boolean(v))
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': '%s' must be true or false", layer, key);
    *out = json_is_true(v);
    return GRAFT_OK;
}

graft_status graft__config_double(const json_t *config, const char *key, double *out,
                                  double fallback, const char *layer)
{
    const json_t *v = json_object_get(config, key);
    if (!v || json_is_null(v)) {
        *out = fallback;
        return GRAFT_OK;
    }
    if (!json_is_number(v))
        return graft__fail(GRAFT_E_FORMAT, "layer '%s': '%s' must be a number", layer, key);
    *out = json_number_value(v);
    return GRAFT_OK;
}

graft_status graft__config_padding(const json_t *config, int *same, const char *layer)
{
    const char *p = json_string_value(json_object_get(config, "padding"));
    if (!p || strcmp(p, "valid") == 0) {
        *same = 0;
        return GRAFT_OK;
    }
    if (strcmp(p, "same") == 0) {
        *same = 1;
        return GRAFT_OK;
    }
    return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': padding '%s' is not supported", layer, p);
}

graft_status graft__config_channels_last(const json_t *config, const char *layer)
{
    const char *f = json_string_value(json_object_get(config, "data_format"));
    if (f && strcmp(f, "channels_last") != 0)
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': data_format '%s' is not supported "
                           "(graft runs channels_last)", layer, f);
    return GRAFT_OK;
}

static const struct {
    const char *name;
    graft__activation act;
} activation_names[] = {
    {"linear", GRAFT__ACT_LINEAR},   {"relu", GRAFT__ACT_RELU},
    {"relu6", GRAFT__ACT_RELU6},     {"sigmoid", GRAFT__ACT_SIGMOID},
    {"tanh", GRAFT__ACT_TANH},       {"softmax", GRAFT__ACT_SOFTMAX},
    {"swish", GRAFT__ACT_SWISH},     {"silu", GRAFT__ACT_SWISH},
    {"hard_sigmoid", GRAFT__ACT_HARD_SIGMOID}, {"hardSigmoid", GRAFT__ACT_HARD_SIGMOID},
    {"elu", GRAFT__ACT_ELU},         {"selu", GRAFT__ACT_SELU},
    {"gelu", GRAFT__ACT_GELU},       {"softplus", GRAFT__ACT_SOFTPLUS},
};

graft_status graft__config_activation(const json_t *config, graft__activation *out,
                                      const char *layer)
{
    const json_t *v = json_object_get(config, "activation");
    if (!v || json_is_null(v)) {
        *out = GRAFT__ACT_LINEAR;
        return GRAFT_OK;
    }
    const char *name = json_string_value(v);
    if (!name)
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': a serialised (custom) activation "
                           "is not supported", layer);
    for (size_t i = 0; i < sizeof activation_names / sizeof activation_names[0]; i++)
        if (strcmp(name, activation_names[i].name) == 0) {
            *out = activation_names[i].act;
            return GRAFT_OK;
        }
    return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': unknown activation '%s'", layer, name);
}

void graft__activation_apply(graft__activation act, float *x, int64_t rows, int64_t cols)
{
    if (act == GRAFT__ACT_LINEAR)
        return;
    if (act == GRAFT__ACT_SOFTMAX) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            graft_f32_softmax_rows(x, cols, r, r + 1);
        return;
    }
    int64_t n = rows * cols;
    /* Chunks of whole cache lines so threads never share one. */
    const int64_t chunk = 16384;
#pragma omp parallel for schedule(static)
    for (int64_t start = 0; start < n; start += chunk)
        graft_f32_activation(act, x, start, start + chunk < n ? start + chunk : n);
}

const float *graft__activation_grad(graft__activation act, const float *pre, const float *y,
                                    const float *dy, float *buf, int64_t rows, int64_t cols)
{
    if (act == GRAFT__ACT_LINEAR)
        return dy;
    int64_t n = rows * cols;
    memset(buf, 0, sizeof(float) * (size_t)n);
    if (act == GRAFT__ACT_SOFTMAX) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            graft_f32_softmax_rows_backward(y, dy, buf, cols, r, r + 1);
        return buf;
    }
    const int64_t chunk = 16384;
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < n; s += chunk) {
        int64_t e = s + chunk < n ? s + chunk : n;
        if (pre)
            graft_f32_activation_backward(act, pre, y, dy, buf, s, e);
        else
            graft_f32_activation_backward_from_output(act, y, dy, buf, s, e);
    }
    return buf;
}

void graft__accumulate(float *dst, const float *src, int64_t n)
{
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        dst[i] += src[i];
}

void graft__sum_rows(float *dst, const float *src, int64_t rows, int64_t cols)
{
    enum { TILE = 64 };
    /* Threads own disjoint column tiles and walk every row in order. */
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < cols; c0 += TILE) {
        int64_t width = cols - c0 < TILE ? cols - c0 : TILE;
        double acc[TILE] = {0};
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < width; j++)
                acc[j] += src[r * cols + c0 + j];
        for (int64_t j = 0; j < width; j++)
            dst[c0 + j] += (float)acc[j];
    }
}
