/* Per-layer tests. Each builds a tiny TF.js layers model in a temp folder
 * (tfjs_model_writer.h), runs it through graft on a seeded random batch of 3 and
 * compares with a naive reference written here from the Keras / TensorFlow
 * definitions: plain loops in double sharing no code with src/ (its own TF
 * padding arithmetic, its own direct convolutions). Tolerance per value:
 * |graft - reference| <= 1e-5 + 1e-4 * |reference|.
 *
 * Table-driven tests (convolutions, pooling, activations, ...) are registered
 * under the name of their case, so each case is its own cmocka test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"
#include "tfjs_model_writer.h"

enum { BATCH = 3, MAX_OWNED = 64 };

/* ---- seeded random numbers (splitmix64) ----------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static double rng_uniform(rng *r, double lo, double hi)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    return lo + (hi - lo) * ((double)(z >> 11) * 0x1.0p-53);
}

/* ---- shapes ----------------------------------------------------------------- */

typedef struct img { /* one sample of an image tensor */
    int64_t h, w, c;
} img;

/* A convolution or pooling window, as the Keras config states it. */
typedef struct win {
    int64_t kh, kw, sh, sw, dh, dw;
    int same;
} win;
#define WIN(kh, kw, sh, sw, dh, dw, same) {kh, kw, sh, sw, dh, dw, same}

typedef struct shp { /* one sample of any tensor */
    int rank;
    int64_t d[4];
} shp;
#define IMG_SHP(i) ((shp){3, {(i).h, (i).w, (i).c}})

static int64_t shp_count(shp s)
{
    int64_t n = 1;
    for (int i = 0; i < s.rank; i++)
        n *= s.d[i];
    return n;
}

static int64_t img_count(img i) { return i.h * i.w * i.c; }

/* Element (n, y, x, ch) of a batch of `s`-shaped images. */
#define AT(s, n, y, x, ch) ((((n) * (s).h + (y)) * (s).w + (x)) * (s).c + (ch))

/* ---- fixture: one temp model folder per test -------------------------------- */

typedef struct lt {
    const void *param; /* the case of a table-driven test */
    rng r;
    char dir[64];
    json_t *layers; /* the functional model's layers */
    tmw_weights w;
    graft_model *model;
    const char *known_bug; /* printed with a load failure the test expects until fixed */
    void *owned[MAX_OWNED];
    int n_owned;
} lt;

static int lt_setup(void **state)
{
    lt *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->param = *state;
    t->r.s = 20240611;
    strcpy(t->dir, "/tmp/graft-test-layers-XXXXXX");
    if (!mkdtemp(t->dir)) {
        free(t);
        return -1;
    }
    t->layers = json_array();
    tmw_weights_init(&t->w);
    *state = t;
    return 0;
}

static int lt_teardown(void **state)
{
    lt *t = *state;
    for (int i = 0; i < t->n_owned; i++)
        free(t->owned[i]);
    graft_model_free(t->model);
    json_decref(t->layers);
    tmw_weights_free(&t->w);
    tmw_remove(t->dir);
    free(t);
    return 0;
}

/* Frees p at teardown, so a failing test leaks nothing. */
static void *keep(lt *t, void *p)
{
    assert_non_null(p);
    assert_true(t->n_owned < MAX_OWNED);
    t->owned[t->n_owned++] = p;
    return p;
}

static double *new_doubles(lt *t, int64_t n) { return keep(t, calloc((size_t)n, sizeof(double))); }

static float *rand_floats(lt *t, int64_t n, double lo, double hi)
{
    float *x = keep(t, malloc(sizeof(float) * (size_t)n));
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)rng_uniform(&t->r, lo, hi);
    return x;
}

static double *widen(lt *t, const float *x, int64_t n)
{
    double *y = new_doubles(t, n);
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i];
    return y;
}

/* ---- building and running the model ------------------------------------------ */

static void lt_input(lt *t, shp s)
{
    json_array_append_new(t->layers, tmw_input_layer("input_1", s.rank, s.d));
}

static void lt_add(lt *t, const char *cls, const char *name, json_t *config,
                   const char *const *inputs)
{
    json_t *entry = tmw_layer(cls, name, config, inputs);
    assert_non_null(entry);
    json_array_append_new(t->layers, entry);
}

/* A random float32 weight, in the manifest and returned to the reference. */
static float *lt_weight(lt *t, const char *name, shp s, double lo, double hi)
{
    float *data = rand_floats(t, shp_count(s), lo, hi);
    assert_true(tmw_add_weight(&t->w, name, data, s.rank, s.d));
    return data;
}

/* Writes the model (model_config NULL: the functional model of t->layers from
 * input_1 to `output`) and loads it. */
static void lt_load(lt *t, json_t *model_config, int wrap, const char *output)
{
    if (!model_config) {
        model_config = tmw_functional("m", t->layers, "input_1", output);
        t->layers = NULL;
    }
    assert_true(tmw_write(t->dir, model_config, wrap, &t->w));
    if (graft_model_load(t->dir, &t->model) != GRAFT_OK)
        fail_msg("%s%sgraft_model_load: %s", t->known_bug ? "KNOWN GRAFT BUG: " : "",
                 t->known_bug ? t->known_bug : "", graft_last_error());
}

/* The shape graft infers for a layer's (first) output. */
static void expect_layer_shape(lt *t, const char *layer, shp want)
{
    int index = graft_model_find_layer(t->model, layer);
    if (index < 0)
        fail_msg("no layer '%s' in the loaded model", layer);
    graft_layer_info info;
    assert_int_equal(graft_model_layer_info(t->model, index, &info), GRAFT_OK);
    int same = info.rank == want.rank;
    for (int i = 0; same && i < want.rank; i++)
        same = info.shape[i] == want.d[i];
    if (!same)
        fail_msg("layer '%s': graft infers rank %d (%lld, %lld, %lld, ...), expected rank %d "
                 "(%lld, %lld, %lld, ...)", layer, info.rank, (long long)info.shape[0],
                 (long long)info.shape[1], (long long)info.shape[2], want.rank,
                 (long long)want.d[0], (long long)want.d[1], (long long)want.d[2]);
}

static float *lt_forward(lt *t, const float *x, int64_t out_count)
{
    assert_int_equal(graft_model_output_size(t->model), out_count);
    float *y = keep(t, malloc(sizeof(float) * (size_t)(BATCH * out_count)));
    if (graft_model_forward(t->model, x, BATCH, y) != GRAFT_OK)
        fail_msg("graft_model_forward: %s", graft_last_error());
    return y;
}

/* Loads the functional model ending at `output`, checks its output shape, runs x. */
static float *lt_run(lt *t, const char *output, const float *x, shp want)
{
    lt_load(t, NULL, 1, output);
    expect_layer_shape(t, output, want);
    return lt_forward(t, x, shp_count(want));
}

/* ---- comparison ------------------------------------------------------------------ */

static int64_t count_off(const float *got, const double *ref, int64_t n, int64_t *first)
{
    int64_t off = 0;
    *first = -1;
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - ref[i]) <= 1e-5 + 1e-4 * fabs(ref[i]))) {
            if (off++ == 0)
                *first = i;
        }
    return off;
}

static void check_close(const char *what, const float *got, const double *ref, int64_t n)
{
    int64_t first;
    int64_t off = count_off(got, ref, n, &first);
    if (off)
        fail_msg("%s: %lld of %lld values differ from the reference; first at flat index %lld: "
                 "graft %.9g, reference %.9g", what, (long long)off, (long long)n,
                 (long long)first, (double)got[first], ref[first]);
}

/* ---- naive references (double in, double out) --------------------------------- */

/* TensorFlow's window geometry: output size and padding along each axis. */
typedef struct geom {
    img in, out;
    int64_t pad_top, pad_left;   /* leading padding */
    int64_t pad_h, pad_w;        /* total padding */
} geom;

static geom make_geom(img in, win w, int64_t out_c)
{
    int64_t size[2] = {in.h, in.w}, k[2] = {w.kh, w.kw}, s[2] = {w.sh, w.sw}, d[2] = {w.dh, w.dw};
    int64_t out[2], total[2];
    for (int a = 0; a < 2; a++) {
        int64_t span = (k[a] - 1) * d[a] + 1; /* the dilated window */
        if (w.same) {
            out[a] = (size[a] + s[a] - 1) / s[a];
            total[a] = (out[a] - 1) * s[a] + span - size[a];
            if (total[a] < 0)
                total[a] = 0;
        } else {
            out[a] = (size[a] - span) / s[a] + 1;
            total[a] = 0;
        }
    }
    return (geom){in, {out[0], out[1], out_c}, total[0] / 2, total[1] / 2, total[0], total[1]};
}

/* Conv2D with kernel (kh, kw, cin, cout) and optional bias. */
static double *ref_conv2d(lt *t, const double *x, const geom *g, win w, const float *kernel,
                          const float *bias)
{
    img is = g->in, os = g->out;
    double *y = new_doubles(t, BATCH * img_count(os));
    for (int64_t n = 0; n < BATCH; n++)
        for (int64_t oy = 0; oy < os.h; oy++)
            for (int64_t ox = 0; ox < os.w; ox++)
                for (int64_t f = 0; f < os.c; f++) {
                    double sum = bias ? bias[f] : 0.0;
                    for (int64_t i = 0; i < w.kh; i++) {
                        int64_t iy = oy * w.sh - g->pad_top + i * w.dh;
                        if (iy < 0 || iy >= is.h)
                            continue;
                        for (int64_t j = 0; j < w.kw; j++) {
                            int64_t ix = ox * w.sw - g->pad_left + j * w.dw;
                            if (ix < 0 || ix >= is.w)
                                continue;
                            for (int64_t c = 0; c < is.c; c++)
                                sum += x[AT(is, n, iy, ix, c)] *
                                       kernel[((i * w.kw + j) * is.c + c) * os.c + f];
                        }
                    }
                    y[AT(os, n, oy, ox, f)] = sum;
                }
    return y;
}

/* DepthwiseConv2D with kernel (kh, kw, cin, M): output channel c*M + m. */
static double *ref_depthwise(lt *t, const double *x, const geom *g, win w, const float *kernel,
                             const float *bias)
{
    img is = g->in, os = g->out;
    int64_t mult = os.c / is.c;
    double *y = new_doubles(t, BATCH * img_count(os));
    for (int64_t n = 0; n < BATCH; n++)
        for (int64_t oy = 0; oy < os.h; oy++)
            for (int64_t ox = 0; ox < os.w; ox++)
                for (int64_t c = 0; c < is.c; c++)
                    for (int64_t m = 0; m < mult; m++) {
                        double sum = bias ? bias[c * mult + m] : 0.0;
                        for (int64_t i = 0; i < w.kh; i++)
                            for (int64_t j = 0; j < w.kw; j++) {
                                int64_t iy = oy * w.sh - g->pad_top + i * w.dh;
                                int64_t ix = ox * w.sw - g->pad_left + j * w.dw;
                                if (iy >= 0 && iy < is.h && ix >= 0 && ix < is.w)
                                    sum += x[AT(is, n, iy, ix, c)] *
                                           kernel[((i * w.kw + j) * is.c + c) * mult + m];
                            }
                        y[AT(os, n, oy, ox, c * mult + m)] = sum;
                    }
    return y;
}

/* MaxPooling2D / AveragePooling2D: only cells inside the input take part; the
 * average divides by how many did (TensorFlow's 'same' pooling). */
static double *ref_pool(lt *t, const double *x, const geom *g, win w, int is_max)
{
    img is = g->in, os = g->out;
    double *y = new_doubles(t, BATCH * img_count(os));
    for (int64_t n = 0; n < BATCH; n++)
        for (int64_t oy = 0; oy < os.h; oy++)
            for (int64_t ox = 0; ox < os.w; ox++)
                for (int64_t c = 0; c < is.c; c++) {
                    double best = -INFINITY, sum = 0.0;
                    int cells = 0;
                    for (int64_t i = 0; i < w.kh; i++)
                        for (int64_t j = 0; j < w.kw; j++) {
                            int64_t iy = oy * w.sh - g->pad_top + i;
                            int64_t ix = ox * w.sw - g->pad_left + j;
                            if (iy < 0 || iy >= is.h || ix < 0 || ix >= is.w)
                                continue;
                            double v = x[AT(is, n, iy, ix, c)];
                            best = v > best ? v : best;
                            sum += v;
                            cells++;
                        }
                    y[AT(os, n, oy, ox, c)] = is_max ? best : sum / cells;
                }
    return y;
}

/* Dense over the last axis: rows of `in` values times kernel (in, units) plus bias. */
static double *ref_dense(lt *t, const double *x, int64_t rows, int64_t in, int64_t units,
                         const float *kernel, const float *bias)
{
    double *y = new_doubles(t, rows * units);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t u = 0; u < units; u++) {
            double sum = bias ? bias[u] : 0.0;
            for (int64_t k = 0; k < in; k++)
                sum += x[r * in + k] * kernel[k * units + u];
            y[r * units + u] = sum;
        }
    return y;
}

/* (x - mean) / sqrt(var + eps) * gamma + beta over the last axis; NULL gamma or beta
 * means scale or center is off. */
static double *ref_batch_norm(lt *t, const double *x, int64_t rows, int64_t ch, double eps,
                              const float *gamma, const float *beta, const float *mean,
                              const float *var)
{
    double *y = new_doubles(t, rows * ch);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ch; c++)
            y[r * ch + c] = (x[r * ch + c] - mean[c]) / sqrt(var[c] + eps) *
                                (gamma ? gamma[c] : 1.0) +
                            (beta ? beta[c] : 0.0);
    return y;
}

/* (N, H, W, C) -> (N, C) */
static double *ref_global_pool(lt *t, const double *x, img s, int is_max)
{
    double *y = new_doubles(t, BATCH * s.c);
    for (int64_t n = 0; n < BATCH; n++)
        for (int64_t c = 0; c < s.c; c++) {
            double best = -INFINITY, sum = 0.0;
            for (int64_t i = 0; i < s.h; i++)
                for (int64_t j = 0; j < s.w; j++) {
                    double v = x[AT(s, n, i, j, c)];
                    best = v > best ? v : best;
                    sum += v;
                }
            y[n * s.c + c] = is_max ? best : sum / (double)(s.h * s.w);
        }
    return y;
}

/* Keras's named activations, from their definitions. */
static double act1(const char *name, double v)
{
    if (!name || strcmp(name, "linear") == 0)
        return v;
    if (strcmp(name, "relu") == 0)
        return v > 0.0 ? v : 0.0;
    if (strcmp(name, "relu6") == 0)
        return v < 0.0 ? 0.0 : (v > 6.0 ? 6.0 : v);
    if (strcmp(name, "sigmoid") == 0)
        return 1.0 / (1.0 + exp(-v));
    if (strcmp(name, "tanh") == 0)
        return tanh(v);
    if (strcmp(name, "swish") == 0 || strcmp(name, "silu") == 0)
        return v / (1.0 + exp(-v));
    if (strcmp(name, "hard_sigmoid") == 0) /* Keras 2 and TF.js */
        return fmin(fmax(0.2 * v + 0.5, 0.0), 1.0);
    if (strcmp(name, "elu") == 0)
        return v > 0.0 ? v : exp(v) - 1.0;
    if (strcmp(name, "selu") == 0)
        return 1.0507009873554804934 * (v > 0.0 ? v : 1.6732632423543772848 * (exp(v) - 1.0));
    if (strcmp(name, "gelu") == 0) /* approximate=False */
        return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    if (strcmp(name, "softplus") == 0)
        return log(1.0 + exp(v));
    fail_msg("the test has no reference for activation '%s'", name);
    return 0.0;
}

/* Applies a named activation over (rows, cols); softmax normalises each row. */
static void ref_activate(const char *name, double *y, int64_t rows, int64_t cols)
{
    if (name && strcmp(name, "softmax") == 0) {
        for (int64_t r = 0; r < rows; r++) {
            double *row = y + r * cols, max = row[0], sum = 0.0;
            for (int64_t j = 1; j < cols; j++)
                max = fmax(max, row[j]);
            for (int64_t j = 0; j < cols; j++)
                sum += (row[j] = exp(row[j] - max));
            for (int64_t j = 0; j < cols; j++)
                row[j] /= sum;
        }
        return;
    }
    for (int64_t i = 0; i < rows * cols; i++)
        y[i] = act1(name, y[i]);
}

/* Keras's ReLU layer: max_value for x >= max_value, x for threshold <= x, else
 * negative_slope * (x - threshold). */
static double relu_layer1(double v, int has_max, double max_value, double slope, double threshold)
{
    if (has_max && v >= max_value)
        return max_value;
    return v >= threshold ? v : slope * (v - threshold);
}

/* Concatenation along the last axis of rows of ca and cb values. */
static double *ref_concat_last(lt *t, const double *a, int64_t ca, const double *b, int64_t cb,
                               int64_t rows)
{
    double *y = new_doubles(t, rows * (ca + cb));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < ca; c++)
            y[r * (ca + cb) + c] = a[r * ca + c];
        for (int64_t c = 0; c < cb; c++)
            y[r * (ca + cb) + ca + c] = b[r * cb + c];
    }
    return y;
}

/* ==== convolutions ================================================================ */

typedef struct conv_case {
    const char *cls;     /* Conv2D, DepthwiseConv2D or SeparableConv2D */
    img in;              /* in.c is the input channel count */
    win w;
    int64_t filters;     /* Conv2D, SeparableConv2D */
    int64_t multiplier;  /* DepthwiseConv2D, SeparableConv2D (0 means 1) */
    int no_bias;
    const char *act;     /* NULL writes "activation": null */
    int asymmetric;      /* TF pads more at the bottom/right: prove the check sees it */
} conv_case;

static json_t *conv_config(const conv_case *c)
{
    json_t *cfg = json_pack("{s:[i,i],s:[i,i],s:[i,i],s:s,s:s,s:b,s:s?,s:b}", "kernel_size",
                            (int)c->w.kh, (int)c->w.kw, "strides", (int)c->w.sh, (int)c->w.sw,
                            "dilation_rate", (int)c->w.dh, (int)c->w.dw, "padding",
                            c->w.same ? "same" : "valid", "data_format", "channels_last",
                            "use_bias", !c->no_bias, "activation", c->act, "trainable", 1);
    if (strcmp(c->cls, "DepthwiseConv2D") != 0)
        json_object_set_new(cfg, "filters", json_integer(c->filters));
    if (strcmp(c->cls, "Conv2D") != 0)
        json_object_set_new(cfg, "depth_multiplier",
                            json_integer(c->multiplier ? c->multiplier : 1));
    return cfg;
}

/* The case's reference for geometry g (g.out.c is the layer's output channels). */
static double *conv_reference(lt *t, const conv_case *c, const double *x, geom g,
                              const float *kernel, const float *pointwise, const float *bias)
{
    int64_t mult = c->multiplier ? c->multiplier : 1;
    double *y;
    if (strcmp(c->cls, "Conv2D") == 0) {
        y = ref_conv2d(t, x, &g, c->w, kernel, bias);
    } else if (strcmp(c->cls, "DepthwiseConv2D") == 0) {
        y = ref_depthwise(t, x, &g, c->w, kernel, bias);
    } else { /* depthwise without bias, then a 1x1 conv with the bias */
        geom mid = g;
        mid.out.c = c->in.c * mult;
        double *d = ref_depthwise(t, x, &mid, c->w, kernel, NULL);
        y = ref_dense(t, d, BATCH * g.out.h * g.out.w, mid.out.c, c->filters, pointwise, bias);
    }
    ref_activate(c->act, y, BATCH * g.out.h * g.out.w, g.out.c);
    return y;
}

static void conv_case_matches_reference(void **state)
{
    lt *t = *state;
    const conv_case *c = t->param;
    int64_t mult = c->multiplier ? c->multiplier : 1, cin = c->in.c;
    int depthwise = strcmp(c->cls, "DepthwiseConv2D") == 0;
    int separable = strcmp(c->cls, "SeparableConv2D") == 0;
    geom g = make_geom(c->in, c->w, depthwise ? cin * mult : c->filters);

    lt_input(t, IMG_SHP(c->in));
    lt_add(t, c->cls, "x", conv_config(c), TMW_INPUTS("input_1"));
    float *kernel, *pointwise = NULL, *bias = NULL;
    if (depthwise || separable)
        kernel = lt_weight(t, "x/depthwise_kernel", (shp){4, {c->w.kh, c->w.kw, cin, mult}}, -1, 1);
    else
        kernel = lt_weight(t, "x/kernel", (shp){4, {c->w.kh, c->w.kw, cin, c->filters}}, -1, 1);
    if (separable)
        pointwise = lt_weight(t, "x/pointwise_kernel", (shp){4, {1, 1, cin * mult, c->filters}},
                              -1, 1);
    if (!c->no_bias)
        bias = lt_weight(t, "x/bias", (shp){1, {g.out.c}}, -0.5, 0.5);
    float *x = rand_floats(t, BATCH * img_count(c->in), -1, 1);

    float *got = lt_run(t, "x", x, IMG_SHP(g.out));
    double *xd = widen(t, x, BATCH * img_count(c->in));
    check_close(c->cls, got, conv_reference(t, c, xd, g, kernel, pointwise, bias),
                BATCH * img_count(g.out));

    if (c->asymmetric) {
        /* The same padding split the other way round must not pass. */
        geom wrong = g;
        wrong.pad_top = g.pad_h - g.pad_top;
        wrong.pad_left = g.pad_w - g.pad_left;
        assert_true(wrong.pad_top != g.pad_top || wrong.pad_left != g.pad_left);
        int64_t first;
        assert_true(count_off(got, conv_reference(t, c, xd, wrong, kernel, pointwise, bias),
                              BATCH * img_count(g.out), &first) > 0);
    }
}

/* name: Conv2D in (H, W, C), window (kh, kw, sh, sw, dh, dw, same), filters, ... */
static const conv_case conv2d_valid_3x3_matches_reference = {
    "Conv2D", {6, 7, 3}, WIN(3, 3, 1, 1, 1, 1, 0), 4, 0, 0, "linear", 0};
static const conv_case conv2d_same_stride1_keeps_spatial_size = {
    "Conv2D", {5, 6, 3}, WIN(3, 3, 1, 1, 1, 1, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_same_stride2_even_input_pads_bottom_right_only = {
    "Conv2D", {8, 8, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 4, 0, 0, NULL, 1};
static const conv_case conv2d_same_stride2_odd_input_pads_both_sides_equally = {
    "Conv2D", {7, 7, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_same_stride2_odd_input_even_kernel_pads_extra_bottom_right = {
    "Conv2D", {7, 9, 2}, WIN(4, 2, 2, 2, 1, 1, 1), 3, 0, 0, NULL, 1};
static const conv_case conv2d_valid_stride2_drops_leftover_rows_and_columns = {
    "Conv2D", {8, 9, 3}, WIN(3, 3, 2, 2, 1, 1, 0), 4, 0, 0, NULL, 0};
static const conv_case conv2d_dilation2_same = {
    "Conv2D", {7, 8, 3}, WIN(3, 3, 1, 1, 2, 2, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_dilation2_valid_shrinks_by_dilated_span = {
    "Conv2D", {9, 8, 2}, WIN(3, 3, 1, 1, 2, 2, 0), 3, 0, 0, NULL, 0};
static const conv_case conv2d_1x1_with_17_channels = {
    "Conv2D", {5, 4, 17}, WIN(1, 1, 1, 1, 1, 1, 0), 5, 0, 0, NULL, 0};
static const conv_case conv2d_1x1_stride2_same_samples_every_other_pixel = {
    "Conv2D", {8, 7, 3}, WIN(1, 1, 2, 2, 1, 1, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_1x3_kernel_same = {
    "Conv2D", {5, 6, 3}, WIN(1, 3, 1, 1, 1, 1, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_3x1_kernel_same_stride2 = {
    "Conv2D", {7, 6, 3}, WIN(3, 1, 2, 2, 1, 1, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_2x5_kernel_strides_1x2_same = {
    "Conv2D", {6, 9, 3}, WIN(2, 5, 1, 2, 1, 1, 1), 4, 0, 0, NULL, 1};
static const conv_case conv2d_single_input_channel = {
    "Conv2D", {6, 6, 1}, WIN(3, 3, 1, 1, 1, 1, 1), 2, 0, 0, NULL, 0};
static const conv_case conv2d_17_to_17_channels_stride2_same = {
    "Conv2D", {5, 5, 17}, WIN(3, 3, 2, 2, 1, 1, 1), 17, 0, 0, NULL, 0};
static const conv_case conv2d_kernel_larger_than_input_same = {
    "Conv2D", {3, 2, 3}, WIN(5, 5, 1, 1, 1, 1, 1), 4, 0, 0, NULL, 0};
static const conv_case conv2d_use_bias_false = {
    "Conv2D", {5, 5, 3}, WIN(3, 3, 1, 1, 1, 1, 1), 4, 0, 1, NULL, 0};
static const conv_case conv2d_relu_activation_applies_after_bias = {
    "Conv2D", {5, 6, 3}, WIN(3, 3, 1, 1, 1, 1, 1), 4, 0, 0, "relu", 0};
static const conv_case conv2d_softmax_activation_normalises_channels = {
    "Conv2D", {5, 6, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 5, 0, 0, "softmax", 0};

static const conv_case depthwise_same_3x3 = {
    "DepthwiseConv2D", {6, 7, 3}, WIN(3, 3, 1, 1, 1, 1, 1), 0, 1, 0, NULL, 0};
static const conv_case depthwise_multiplier2_puts_channel_c_at_c_times_m_plus_m = {
    "DepthwiseConv2D", {5, 5, 3}, WIN(3, 3, 1, 1, 1, 1, 0), 0, 2, 0, NULL, 0};
static const conv_case depthwise_multiplier3_stride2_same_even_input = {
    "DepthwiseConv2D", {8, 6, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 0, 3, 0, NULL, 1};
static const conv_case depthwise_dilation2_same = {
    "DepthwiseConv2D", {7, 7, 4}, WIN(3, 3, 1, 1, 2, 2, 1), 0, 1, 0, NULL, 0};
static const conv_case depthwise_17_channels_odd_input_stride2_same = {
    "DepthwiseConv2D", {7, 9, 17}, WIN(3, 3, 2, 2, 1, 1, 1), 0, 1, 0, NULL, 0};
static const conv_case depthwise_2x5_kernel_no_bias_relu6 = {
    "DepthwiseConv2D", {6, 9, 5}, WIN(2, 5, 1, 1, 1, 1, 1), 0, 1, 1, "relu6", 1};
static const conv_case depthwise_1x3_kernel_single_channel_multiplier2 = {
    "DepthwiseConv2D", {5, 5, 1}, WIN(1, 3, 1, 1, 1, 1, 0), 0, 2, 0, NULL, 0};
static const conv_case depthwise_3x1_kernel_strides_2x1_same_8_channels = {
    "DepthwiseConv2D", {6, 5, 8}, WIN(3, 1, 2, 1, 1, 1, 1), 0, 1, 0, NULL, 0};

static const conv_case separable_same_3x3 = {
    "SeparableConv2D", {6, 6, 3}, WIN(3, 3, 1, 1, 1, 1, 1), 5, 1, 0, NULL, 0};
static const conv_case separable_multiplier2_stride2_odd_input = {
    "SeparableConv2D", {7, 7, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 4, 2, 0, NULL, 0};
static const conv_case separable_dilation2_use_bias_false = {
    "SeparableConv2D", {8, 8, 4}, WIN(3, 3, 1, 1, 2, 2, 1), 6, 1, 1, NULL, 0};
static const conv_case separable_valid_relu_17_channels = {
    "SeparableConv2D", {5, 6, 17}, WIN(3, 3, 1, 1, 1, 1, 0), 3, 1, 0, "relu", 0};
static const conv_case separable_multiplier3_2x5_kernel_swish = {
    "SeparableConv2D", {6, 7, 2}, WIN(2, 5, 1, 1, 1, 1, 1), 3, 3, 0, "swish", 0};

/* ==== pooling ======================================================================= */

typedef struct pool_case {
    const char *cls; /* MaxPooling2D or AveragePooling2D */
    img in;
    win w;           /* dilation 1 */
    int strides_null;
    double lo, hi;   /* input range: all-negative input exposes zero padding in max pooling */
} pool_case;

static void pool_case_matches_reference(void **state)
{
    lt *t = *state;
    const pool_case *c = t->param;
    geom g = make_geom(c->in, c->w, c->in.c);
    json_t *cfg = json_pack("{s:[i,i],s:s,s:s}", "pool_size", (int)c->w.kh, (int)c->w.kw,
                            "padding", c->w.same ? "same" : "valid", "data_format",
                            "channels_last");
    json_object_set_new(cfg, "strides", c->strides_null ? json_null()
                                                        : json_pack("[i,i]", (int)c->w.sh,
                                                                    (int)c->w.sw));
    lt_input(t, IMG_SHP(c->in));
    lt_add(t, c->cls, "x", cfg, TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(c->in), c->lo, c->hi);
    float *got = lt_run(t, "x", x, IMG_SHP(g.out));
    double *ref = ref_pool(t, widen(t, x, BATCH * img_count(c->in)), &g, c->w,
                           strcmp(c->cls, "MaxPooling2D") == 0);
    check_close(c->cls, got, ref, BATCH * img_count(g.out));
}

static const pool_case max_pooling_2x2_valid_odd_input_drops_last_row_and_column = {
    "MaxPooling2D", {5, 7, 3}, WIN(2, 2, 2, 2, 1, 1, 0), 0, -1, 1};
static const pool_case max_pooling_null_strides_default_to_pool_size = {
    "MaxPooling2D", {6, 6, 3}, WIN(3, 3, 3, 3, 1, 1, 0), 1, -1, 1};
static const pool_case max_pooling_same_stride2_even_input_ignores_padding = {
    "MaxPooling2D", {8, 8, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 0, -2, -1};
static const pool_case max_pooling_same_stride1_17_channels_ignores_padding = {
    "MaxPooling2D", {5, 6, 17}, WIN(3, 3, 1, 1, 1, 1, 1), 0, -2, -1};
static const pool_case max_pooling_2x3_window_strides_1x2_valid = {
    "MaxPooling2D", {6, 7, 3}, WIN(2, 3, 1, 2, 1, 1, 0), 0, -1, 1};
static const pool_case average_pooling_2x2_valid = {
    "AveragePooling2D", {6, 7, 3}, WIN(2, 2, 2, 2, 1, 1, 0), 0, -1, 1};
static const pool_case average_pooling_same_stride1_divides_by_valid_cells = {
    "AveragePooling2D", {5, 5, 3}, WIN(3, 3, 1, 1, 1, 1, 1), 0, 1, 2};
static const pool_case average_pooling_same_stride2_even_input_divides_by_valid_cells = {
    "AveragePooling2D", {8, 6, 3}, WIN(3, 3, 2, 2, 1, 1, 1), 0, 1, 2};
static const pool_case average_pooling_same_2x2_stride2_odd_input_pads_bottom_right = {
    "AveragePooling2D", {7, 7, 4}, WIN(2, 2, 2, 2, 1, 1, 1), 0, 1, 2};
static const pool_case average_pooling_3x1_same_17_channels = {
    "AveragePooling2D", {5, 4, 17}, WIN(3, 1, 1, 1, 1, 1, 1), 0, -1, 1};

/* ==== activations =================================================================== */

typedef struct act_case {
    const char *name;
    double lo, hi; /* input range */
    int large;     /* (40, 50, 5) input: more values than one of graft's thread chunks */
} act_case;

/* Activation layer on (3, 4, 5) input: elementwise, softmax over the 5 channels. */
static const img small_img = {3, 4, 5}, large_img = {40, 50, 5};

static void activation_case_matches_reference(void **state)
{
    lt *t = *state;
    const act_case *c = t->param;
    img s = c->large ? large_img : small_img;
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Activation", "x", json_pack("{s:s}", "activation", c->name), TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(s), c->lo, c->hi);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    double *ref = widen(t, x, BATCH * img_count(s));
    ref_activate(c->name, ref, BATCH * s.h * s.w, s.c);
    check_close(c->name, got, ref, BATCH * img_count(s));
}

static const act_case activation_linear_is_identity = {"linear", -4, 4, 0};
static const act_case activation_relu = {"relu", -4, 4, 0};
static const act_case activation_relu6_clips_at_zero_and_six = {"relu6", -8, 8, 0};
static const act_case activation_sigmoid = {"sigmoid", -8, 8, 0};
static const act_case activation_tanh = {"tanh", -4, 4, 0};
static const act_case activation_softmax_normalises_last_axis = {"softmax", -6, 6, 0};
static const act_case activation_swish_is_x_times_sigmoid = {"swish", -6, 6, 0};
static const act_case activation_silu_is_swish = {"silu", -6, 6, 0};
static const act_case activation_hard_sigmoid_is_clipped_0_2x_plus_0_5 = {"hard_sigmoid", -4, 4, 0};
static const act_case activation_elu = {"elu", -4, 4, 0};
static const act_case activation_selu = {"selu", -4, 4, 0};
static const act_case activation_gelu_uses_erf_form = {"gelu", -4, 4, 0};
static const act_case activation_softplus = {"softplus", -20, 20, 0};
static const act_case activation_elu_on_large_tensor_spans_thread_chunks = {"elu", -4, 4, 1};
static const act_case activation_softmax_on_large_tensor = {"softmax", -6, 6, 1};

typedef struct relu_case {
    int has_max; /* 0 writes "max_value": null */
    double max_value, negative_slope, threshold;
    int large; /* (40, 50, 5) input */
} relu_case;

static void relu_case_matches_reference(void **state)
{
    lt *t = *state;
    const relu_case *c = t->param;
    img s = c->large ? large_img : small_img;
    json_t *cfg = json_pack("{s:f,s:f}", "negative_slope", c->negative_slope, "threshold",
                            c->threshold);
    json_object_set_new(cfg, "max_value", c->has_max ? json_real(c->max_value) : json_null());
    lt_input(t, IMG_SHP(s));
    lt_add(t, "ReLU", "x", cfg, TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(s), -8, 8);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    double *ref = new_doubles(t, BATCH * img_count(s));
    for (int64_t i = 0; i < BATCH * img_count(s); i++)
        ref[i] = relu_layer1(x[i], c->has_max, c->max_value, c->negative_slope, c->threshold);
    check_close("ReLU", got, ref, BATCH * img_count(s));
}

static const relu_case relu_layer_defaults_are_plain_relu = {0, 0, 0, 0, 0};
static const relu_case relu_layer_max_value_6_is_relu6 = {1, 6, 0, 0, 0};
static const relu_case relu_layer_max_value_2_5_clips = {1, 2.5, 0, 0, 0};
static const relu_case relu_layer_negative_slope_leaks_below_zero = {0, 0, 0.1, 0, 0};
static const relu_case relu_layer_threshold_zeroes_values_below_it = {0, 0, 0, 0.5, 0};
static const relu_case relu_layer_max_slope_and_threshold_together = {1, 3, 0.2, 0.5, 0};
static const relu_case relu_layer_on_large_tensor_spans_thread_chunks = {1, 3, 0.2, 0.5, 1};

/* ==== BatchNormalization ============================================================ */

typedef struct bn_case {
    double epsilon; /* < 0: not in the config (Keras's default 1e-3 applies) */
    int center, scale;
    int64_t channels;
} bn_case;

static void batch_norm_case_matches_reference(void **state)
{
    lt *t = *state;
    const bn_case *c = t->param;
    img s = {4, 3, c->channels};
    shp vec = {1, {c->channels}};
    json_t *cfg = json_pack("{s:[i],s:f,s:b,s:b}", "axis", 3, "momentum", 0.99, "center",
                            c->center, "scale", c->scale);
    if (c->epsilon >= 0)
        json_object_set_new(cfg, "epsilon", json_real(c->epsilon));
    lt_input(t, IMG_SHP(s));
    lt_add(t, "BatchNormalization", "x", cfg, TMW_INPUTS("input_1"));
    /* The manifest lists moving statistics first: graft must match weights by name. */
    float *mean = lt_weight(t, "x/moving_mean", vec, -0.5, 0.5);
    /* Small variances make epsilon matter. */
    float *var = lt_weight(t, "x/moving_variance", vec, 0.001, 0.05);
    float *gamma = c->scale ? lt_weight(t, "x/gamma", vec, 0.5, 1.5) : NULL;
    float *beta = c->center ? lt_weight(t, "x/beta", vec, -0.5, 0.5) : NULL;
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    double *ref = ref_batch_norm(t, widen(t, x, BATCH * img_count(s)), BATCH * s.h * s.w, s.c,
                                 c->epsilon >= 0 ? c->epsilon : 1e-3, gamma, beta, mean, var);
    check_close("BatchNormalization", got, ref, BATCH * img_count(s));
}

static const bn_case batch_norm_uses_configured_epsilon = {0.1, 1, 1, 5};
static const bn_case batch_norm_missing_epsilon_defaults_to_1e_3 = {-1, 1, 1, 5};
static const bn_case batch_norm_center_false_has_no_beta = {1e-3, 0, 1, 3};
static const bn_case batch_norm_scale_false_has_no_gamma = {1e-3, 1, 0, 3};
static const bn_case batch_norm_center_and_scale_false_17_channels = {1e-3, 0, 0, 17};

/* ==== ZeroPadding2D ================================================================= */

typedef struct pad_case {
    const char *padding; /* the config value, as JSON */
    int64_t top, bottom, left, right;
} pad_case;

static void zero_padding_case_matches_reference(void **state)
{
    lt *t = *state;
    const pad_case *c = t->param;
    img s = {3, 4, 2};
    img o = {s.h + c->top + c->bottom, s.w + c->left + c->right, s.c};
    json_t *padding = json_loads(c->padding, JSON_DECODE_ANY, NULL);
    assert_non_null(padding);
    lt_input(t, IMG_SHP(s));
    lt_add(t, "ZeroPadding2D", "x",
           json_pack("{s:o,s:s}", "padding", padding, "data_format", "channels_last"),
           TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, IMG_SHP(o));
    double *ref = new_doubles(t, BATCH * img_count(o)); /* zeros */
    for (int64_t n = 0; n < BATCH; n++)
        for (int64_t i = 0; i < s.h; i++)
            for (int64_t j = 0; j < s.w; j++)
                for (int64_t ch = 0; ch < s.c; ch++)
                    ref[AT(o, n, i + c->top, j + c->left, ch)] = x[AT(s, n, i, j, ch)];
    check_close("ZeroPadding2D", got, ref, BATCH * img_count(o));
}

static const pad_case zero_padding_int_pads_every_side = {"2", 2, 2, 2, 2};
static const pad_case zero_padding_pair_pads_height_and_width_symmetrically = {
    "[1, 3]", 1, 1, 3, 3};
static const pad_case zero_padding_pair_of_pairs_pads_each_side = {"[[0, 2], [3, 1]]", 0, 2, 3, 1};

/* ==== global pooling ================================================================ */

typedef struct global_case {
    const char *cls;
    int keepdims;
} global_case;

static void global_pool_case_matches_reference(void **state)
{
    lt *t = *state;
    const global_case *c = t->param;
    img s = {5, 3, 17};
    lt_input(t, IMG_SHP(s));
    lt_add(t, c->cls, "x", json_pack("{s:s,s:b}", "data_format", "channels_last", "keepdims",
                                     c->keepdims), TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, c->keepdims ? (shp){3, {1, 1, s.c}} : (shp){1, {s.c}});
    double *ref = ref_global_pool(t, widen(t, x, BATCH * img_count(s)), s,
                                  strcmp(c->cls, "GlobalMaxPooling2D") == 0);
    check_close(c->cls, got, ref, BATCH * s.c);
}

static const global_case global_average_pooling_gives_vector = {"GlobalAveragePooling2D", 0};
static const global_case global_average_pooling_keepdims_gives_1x1xc = {
    "GlobalAveragePooling2D", 1};
static const global_case global_max_pooling_gives_vector = {"GlobalMaxPooling2D", 0};
static const global_case global_max_pooling_keepdims_gives_1x1xc = {"GlobalMaxPooling2D", 1};

/* ==== single tests ================================================================== */

static void input_layer_alone_passes_input_through(void **state)
{
    lt *t = *state;
    img s = {4, 5, 3};
    lt_input(t, IMG_SHP(s));
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "input_1", x, IMG_SHP(s));
    check_close("InputLayer", got, widen(t, x, BATCH * img_count(s)), BATCH * img_count(s));
    int64_t h, w, c;
    assert_int_equal(graft_model_input_size(t->model, &h, &w, &c), GRAFT_OK);
    assert_true(h == s.h && w == s.w && c == s.c);
}

static void add_sums_three_inputs(void **state)
{
    lt *t = *state;
    img s = {4, 5, 3};
    int64_t n = BATCH * img_count(s);
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Activation", "th", json_pack("{s:s}", "activation", "tanh"), TMW_INPUTS("input_1"));
    lt_add(t, "Activation", "sg", json_pack("{s:s}", "activation", "sigmoid"),
           TMW_INPUTS("input_1"));
    lt_add(t, "Add", "x", NULL, TMW_INPUTS("input_1", "th", "sg"));
    float *x = rand_floats(t, n, -2, 2);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    double *ref = new_doubles(t, n);
    for (int64_t i = 0; i < n; i++)
        ref[i] = x[i] + tanh(x[i]) + 1.0 / (1.0 + exp(-x[i]));
    check_close("Add", got, ref, n);
}

static void multiply_two_branches_elementwise(void **state)
{
    lt *t = *state;
    img s = {4, 5, 3};
    int64_t n = BATCH * img_count(s);
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Activation", "th", json_pack("{s:s}", "activation", "tanh"), TMW_INPUTS("input_1"));
    lt_add(t, "Multiply", "x", NULL, TMW_INPUTS("th", "input_1"));
    float *x = rand_floats(t, n, -2, 2);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    double *ref = new_doubles(t, n);
    for (int64_t i = 0; i < n; i++)
        ref[i] = tanh(x[i]) * x[i];
    check_close("Multiply", got, ref, n);
}

/* [input (3 ch), tanh(input) (3 ch), 1x1 conv (5 ch)] along the channels. */
static void concatenate_channel_axis_keeps_input_order(void **state)
{
    lt *t = *state;
    img s = {4, 5, 3};
    int64_t rows = BATCH * s.h * s.w;
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Activation", "th", json_pack("{s:s}", "activation", "tanh"), TMW_INPUTS("input_1"));
    lt_add(t, "Conv2D", "pw", json_pack("{s:i,s:[i,i],s:s}", "filters", 5, "kernel_size", 1, 1,
                                        "padding", "valid"), TMW_INPUTS("input_1"));
    lt_add(t, "Concatenate", "x", json_pack("{s:i}", "axis", -1),
           TMW_INPUTS("input_1", "th", "pw"));
    float *k = lt_weight(t, "pw/kernel", (shp){4, {1, 1, 3, 5}}, -1, 1);
    float *b = lt_weight(t, "pw/bias", (shp){1, {5}}, -1, 1);
    float *x = rand_floats(t, BATCH * img_count(s), -2, 2);
    float *got = lt_run(t, "x", x, (shp){3, {s.h, s.w, 11}});
    double *xd = widen(t, x, rows * 3), *th = widen(t, x, rows * 3);
    ref_activate("tanh", th, rows, 3);
    double *ref = ref_concat_last(t, ref_concat_last(t, xd, 3, th, 3, rows), 6,
                                  ref_dense(t, xd, rows, 3, 5, k, b), 5, rows);
    check_close("Concatenate", got, ref, rows * 11);
}

/* input (4, 5, 3) and its zero-padded (4, 8, 3) copy side by side: (4, 13, 3). */
static void concatenate_width_axis_stacks_columns(void **state)
{
    lt *t = *state;
    img s = {4, 5, 3}, o = {4, 13, 3};
    lt_input(t, IMG_SHP(s));
    lt_add(t, "ZeroPadding2D", "pad", json_pack("{s:[[i,i],[i,i]]}", "padding", 0, 0, 1, 2),
           TMW_INPUTS("input_1"));
    lt_add(t, "Concatenate", "x", json_pack("{s:i}", "axis", 2), TMW_INPUTS("input_1", "pad"));
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, IMG_SHP(o));
    double *ref = new_doubles(t, BATCH * img_count(o));
    for (int64_t n = 0; n < BATCH; n++)
        for (int64_t i = 0; i < s.h; i++)
            for (int64_t j = 0; j < s.w; j++)
                for (int64_t c = 0; c < s.c; c++) {
                    ref[AT(o, n, i, j, c)] = x[AT(s, n, i, j, c)];
                    /* the padded copy starts after 1 zero column */
                    ref[AT(o, n, i, s.w + 1 + j, c)] = x[AT(s, n, i, j, c)];
                }
    check_close("Concatenate axis 2", got, ref, BATCH * img_count(o));
}

/* Flatten keeps NHWC order, which a following Dense's kernel rows rely on. */
static void flatten_keeps_nhwc_order_for_following_dense(void **state)
{
    lt *t = *state;
    img s = {3, 4, 5};
    int64_t flat = img_count(s);
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Flatten", "flat", json_pack("{s:s}", "data_format", "channels_last"),
           TMW_INPUTS("input_1"));
    lt_add(t, "Dense", "x", json_pack("{s:i,s:s}", "units", 7, "activation", "linear"),
           TMW_INPUTS("flat"));
    float *k = lt_weight(t, "x/kernel", (shp){2, {flat, 7}}, -1, 1);
    float *b = lt_weight(t, "x/bias", (shp){1, {7}}, -1, 1);
    float *x = rand_floats(t, BATCH * flat, -1, 1);
    float *got = lt_run(t, "x", x, (shp){1, {7}});
    expect_layer_shape(t, "flat", (shp){1, {flat}});
    double *xd = widen(t, x, BATCH * flat);
    check_close("Flatten + Dense", got, ref_dense(t, xd, BATCH, flat, 7, k, b), BATCH * 7);
    float *flat_out = keep(t, malloc(sizeof(float) * (size_t)(BATCH * flat)));
    const char *names[] = {"flat"};
    assert_int_equal(graft_model_forward_layers(t->model, x, BATCH, 1, names, &flat_out, NULL),
                     GRAFT_OK);
    check_close("Flatten", flat_out, xd, BATCH * flat);
}

/* (4, 6, 2) -> target [2, -1, 4] = (2, 6, 4), the same floats in the same order. */
static void reshape_minus_one_infers_dimension(void **state)
{
    lt *t = *state;
    img s = {4, 6, 2};
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Reshape", "x", json_pack("{s:[i,i,i]}", "target_shape", 2, -1, 4),
           TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, (shp){3, {2, 6, 4}});
    check_close("Reshape", got, widen(t, x, BATCH * img_count(s)), BATCH * img_count(s));
}

/* Reshape to rank 2, then Dense on its last axis: (4, 6, 2) -> (16, 3) -> (16, 2). */
static void reshape_to_rank2_then_dense_on_last_axis(void **state)
{
    lt *t = *state;
    img s = {4, 6, 2};
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Reshape", "r", json_pack("{s:[i,i]}", "target_shape", -1, 3), TMW_INPUTS("input_1"));
    lt_add(t, "Dense", "x", json_pack("{s:i}", "units", 2), TMW_INPUTS("r"));
    float *k = lt_weight(t, "x/kernel", (shp){2, {3, 2}}, -1, 1);
    float *b = lt_weight(t, "x/bias", (shp){1, {2}}, -1, 1);
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, (shp){2, {16, 2}});
    expect_layer_shape(t, "r", (shp){2, {16, 3}});
    double *ref = ref_dense(t, widen(t, x, BATCH * 48), BATCH * 16, 3, 2, k, b);
    check_close("Reshape + Dense", got, ref, BATCH * 32);
}

static void dense_on_vector_with_relu(void **state)
{
    lt *t = *state;
    lt_input(t, (shp){1, {17}});
    lt_add(t, "Dense", "x", json_pack("{s:i,s:s,s:b}", "units", 5, "activation", "relu",
                                      "use_bias", 1), TMW_INPUTS("input_1"));
    float *k = lt_weight(t, "x/kernel", (shp){2, {17, 5}}, -1, 1);
    float *b = lt_weight(t, "x/bias", (shp){1, {5}}, -1, 1);
    float *x = rand_floats(t, BATCH * 17, -1, 1);
    float *got = lt_run(t, "x", x, (shp){1, {5}});
    double *ref = ref_dense(t, widen(t, x, BATCH * 17), BATCH, 17, 5, k, b);
    ref_activate("relu", ref, BATCH, 5);
    check_close("Dense", got, ref, BATCH * 5);
}

static void dense_use_bias_false(void **state)
{
    lt *t = *state;
    lt_input(t, (shp){1, {6}});
    lt_add(t, "Dense", "x", json_pack("{s:i,s:b}", "units", 3, "use_bias", 0),
           TMW_INPUTS("input_1"));
    float *k = lt_weight(t, "x/kernel", (shp){2, {6, 3}}, -1, 1);
    float *x = rand_floats(t, BATCH * 6, -1, 1);
    float *got = lt_run(t, "x", x, (shp){1, {3}});
    double *ref = ref_dense(t, widen(t, x, BATCH * 6), BATCH, 6, 3, k, NULL);
    check_close("Dense", got, ref, BATCH * 3);
}

/* Dense on (H, W, C) acts on the last axis: (3, 4, 5) -> (3, 4, 6), softmax per pixel. */
static void dense_on_image_acts_on_last_axis_with_softmax(void **state)
{
    lt *t = *state;
    img s = {3, 4, 5};
    int64_t rows = BATCH * s.h * s.w;
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Dense", "x", json_pack("{s:i,s:s}", "units", 6, "activation", "softmax"),
           TMW_INPUTS("input_1"));
    float *k = lt_weight(t, "x/kernel", (shp){2, {5, 6}}, -2, 2);
    float *b = lt_weight(t, "x/bias", (shp){1, {6}}, -1, 1);
    float *x = rand_floats(t, rows * 5, -1, 1);
    float *got = lt_run(t, "x", x, (shp){3, {3, 4, 6}});
    double *ref = ref_dense(t, widen(t, x, rows * 5), rows, 5, 6, k, b);
    ref_activate("softmax", ref, rows, 6);
    check_close("Dense", got, ref, rows * 6);
}

static void dropout_is_identity_at_inference(void **state)
{
    lt *t = *state;
    img s = {4, 4, 3};
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Dropout", "x", json_pack("{s:f}", "rate", 0.5), TMW_INPUTS("input_1"));
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    check_close("Dropout", got, widen(t, x, BATCH * img_count(s)), BATCH * img_count(s));
}

static void rescaling_multiplies_then_adds_offset(void **state)
{
    lt *t = *state;
    img s = {4, 4, 3};
    int64_t n = BATCH * img_count(s);
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Rescaling", "x", json_pack("{s:f,s:f}", "scale", 1.0 / 127.5, "offset", -1.0),
           TMW_INPUTS("input_1"));
    float *x = rand_floats(t, n, 0, 255);
    float *got = lt_run(t, "x", x, IMG_SHP(s));
    double *ref = new_doubles(t, n);
    for (int64_t i = 0; i < n; i++)
        ref[i] = x[i] / 127.5 - 1.0;
    check_close("Rescaling", got, ref, n);
}

/* ==== whole models ================================================================== */

/* A Sequential whose first layer carries batch_input_shape (no InputLayer):
 * Conv2D 3x3/2 same -> BatchNorm -> ReLU(6) -> Depthwise 3x3 -> GAP -> Dropout -> Dense softmax. */
static void sequential_model_takes_input_shape_from_first_layer(void **state)
{
    lt *t = *state;
    img s = {9, 9, 3};
    win w3s2 = WIN(3, 3, 2, 2, 1, 1, 1), w3 = WIN(3, 3, 1, 1, 1, 1, 1);
    geom g1 = make_geom(s, w3s2, 6), g2 = make_geom(g1.out, w3, 6);
    shp vec6 = {1, {6}};
    json_t *layers = json_array();
    json_array_append_new(layers, tmw_seq_layer("Conv2D", "conv",
        json_pack("{s:o,s:i,s:i,s:i,s:s}", "batch_input_shape", /* bare-int window */
                  tmw_batch_shape(3, (int64_t[]){9, 9, 3}), "filters", 6, "kernel_size", 3,
                  "strides", 2, "padding", "same")));
    json_array_append_new(layers, tmw_seq_layer("BatchNormalization", "bn",
        json_pack("{s:i,s:f}", "axis", -1, "epsilon", 1e-3)));
    json_array_append_new(layers, tmw_seq_layer("ReLU", "relu",
        json_pack("{s:f}", "max_value", 6.0)));
    json_array_append_new(layers, tmw_seq_layer("DepthwiseConv2D", "dw",
        json_pack("{s:[i,i],s:s,s:b}", "kernel_size", 3, 3, "padding", "same", "use_bias", 0)));
    json_array_append_new(layers, tmw_seq_layer("GlobalAveragePooling2D", "gap", NULL));
    json_array_append_new(layers, tmw_seq_layer("Dropout", "drop",
        json_pack("{s:f}", "rate", 0.2)));
    json_array_append_new(layers, tmw_seq_layer("Dense", "dense",
        json_pack("{s:i,s:s}", "units", 4, "activation", "softmax")));
    float *ck = lt_weight(t, "conv/kernel", (shp){4, {3, 3, 3, 6}}, -1, 1);
    float *cb = lt_weight(t, "conv/bias", vec6, -0.5, 0.5);
    float *gamma = lt_weight(t, "bn/gamma", vec6, 0.5, 1.5);
    float *beta = lt_weight(t, "bn/beta", vec6, -0.5, 0.5);
    float *mean = lt_weight(t, "bn/moving_mean", vec6, -0.5, 0.5);
    float *var = lt_weight(t, "bn/moving_variance", vec6, 0.5, 2);
    float *dk = lt_weight(t, "dw/depthwise_kernel", (shp){4, {3, 3, 6, 1}}, -1, 1);
    float *wk = lt_weight(t, "dense/kernel", (shp){2, {6, 4}}, -1, 1);
    float *wb = lt_weight(t, "dense/bias", (shp){1, {4}}, -0.5, 0.5);
    lt_load(t, tmw_sequential("seq", layers), 1, NULL);
    float *x = rand_floats(t, BATCH * img_count(s), -1, 1);
    float *got = lt_forward(t, x, 4);

    int64_t rows = BATCH * g1.out.h * g1.out.w;
    double *y = ref_conv2d(t, widen(t, x, BATCH * img_count(s)), &g1, w3s2, ck, cb);
    y = ref_batch_norm(t, y, rows, 6, 1e-3, gamma, beta, mean, var);
    ref_activate("relu6", y, rows, 6);
    y = ref_depthwise(t, y, &g2, w3, dk, NULL);
    y = ref_dense(t, ref_global_pool(t, y, g2.out, 0), BATCH, 6, 4, wk, wb);
    ref_activate("softmax", y, BATCH, 4);
    check_close("Sequential", got, y, BATCH * 4);
}

/* The functional part of the nested tests: input_1 (6, 6, 3) -> conv 3x3 same (4) -> relu.
 * Its weights are named "<scope>/conv/kernel", or "conv/kernel" when scope is NULL. */
static json_t *inner_model(lt *t, const char *name, const char *scope, float **k, float **b)
{
    json_t *layers = json_array();
    char wname[64];
    const char *sep = scope ? "/" : "";
    scope = scope ? scope : "";
    json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){6, 6, 3}));
    json_array_append_new(layers, tmw_layer("Conv2D", "conv",
        json_pack("{s:i,s:[i,i],s:s}", "filters", 4, "kernel_size", 3, 3, "padding", "same"),
        TMW_INPUTS("input_1")));
    json_array_append_new(layers, tmw_layer("Activation", "conv_relu",
                                            json_pack("{s:s}", "activation", "relu"),
                                            TMW_INPUTS("conv")));
    snprintf(wname, sizeof wname, "%s%sconv/kernel", scope, sep);
    *k = lt_weight(t, wname, (shp){4, {3, 3, 3, 4}}, -1, 1);
    snprintf(wname, sizeof wname, "%s%sconv/bias", scope, sep);
    *b = lt_weight(t, wname, (shp){1, {4}}, -0.5, 0.5);
    return tmw_functional(name, layers, "input_1", "conv_relu");
}

/* Reference of inner_model followed by global average pooling: (N, 4). */
static double *inner_model_pooled(lt *t, const float *x, const float *k, const float *b)
{
    img s = {6, 6, 3};
    win w = WIN(3, 3, 1, 1, 1, 1, 1);
    geom g = make_geom(s, w, 4);
    double *y = ref_conv2d(t, widen(t, x, BATCH * img_count(s)), &g, w, k, b);
    ref_activate("relu", y, BATCH * img_count(g.out) / 4, 4);
    return ref_global_pool(t, y, g.out, 0);
}

/* Sequential[(InputLayer,) Model(InputLayer, conv, relu), GAP, Dense softmax] with the
 * inner model's weights named with its scope ("model_1/conv/kernel"). */
static void check_sequential_wrapping_model(lt *t, int leading_input_layer)
{
    float *k, *b;
    json_t *layers = json_array();
    if (leading_input_layer) /* as Keras (Python) writes it */
        json_array_append_new(layers, tmw_seq_layer("InputLayer", "input_2",
            json_pack("{s:o,s:s}", "batch_input_shape", tmw_batch_shape(3, (int64_t[]){6, 6, 3}),
                      "dtype", "float32")));
    json_array_append_new(layers, inner_model(t, "model_1", "model_1", &k, &b));
    json_array_append_new(layers, tmw_seq_layer("GlobalAveragePooling2D", "gap", NULL));
    json_array_append_new(layers, tmw_seq_layer("Dense", "dense",
        json_pack("{s:i,s:s}", "units", 3, "activation", "softmax")));
    float *wk = lt_weight(t, "dense/kernel", (shp){2, {4, 3}}, -1, 1);
    float *wb = lt_weight(t, "dense/bias", (shp){1, {3}}, -0.5, 0.5);
    lt_load(t, tmw_sequential("sequential_1", layers), 1, NULL);
    expect_layer_shape(t, "conv", (shp){3, {6, 6, 4}});
    float *x = rand_floats(t, BATCH * 108, -1, 1);
    float *got = lt_forward(t, x, 3);
    double *y = ref_dense(t, inner_model_pooled(t, x, k, b), BATCH, 4, 3, wk, wb);
    ref_activate("softmax", y, BATCH, 3);
    check_close("nested Sequential(Model)", got, y, BATCH * 3);
}

static void sequential_with_input_layer_wrapping_functional_model_scoped_weights(void **state)
{
    check_sequential_wrapping_model(*state, 1);
}

#define NESTED_FIRST_BUG "a Sequential whose first layer is a nested model is refused. "

/* KNOWN GRAFT BUG (fails on purpose, see the report): the Sequential's first layer
 * is the nested model itself, with no batch_input_shape of its own; the input
 * shape is the nested model's InputLayer's. TF.js and Keras load this; graft says
 * "sequential model declares no input shape". */
static void sequential_wrapping_functional_model_with_scoped_weights(void **state)
{
    lt *t = *state;
    t->known_bug = NESTED_FIRST_BUG;
    check_sequential_wrapping_model(t, 0);
}

/* As Teachable Machine exports (TF.js's save form: modelTopology without model_config,
 * weights named without the nested model's scope, the form TF.js itself loads):
 * Sequential[Sequential[Model, GAP], Sequential[Dense(batch_input_shape) relu, Dense softmax]].
 * KNOWN GRAFT BUG (fails on purpose, see the report): as above, the first layer of
 * "sequential_1" is a nested model without batch_input_shape. TF.js 4.22 loads this
 * folder and its output matches this test's reference. */
static void teachable_machine_style_nested_sequentials(void **state)
{
    lt *t = *state;
    float *k, *b;
    json_t *base = json_array(), *head = json_array(), *outer = json_array();
    json_array_append_new(base, inner_model(t, "model1", NULL, &k, &b));
    json_array_append_new(base, tmw_seq_layer("GlobalAveragePooling2D", "gap", NULL));
    json_array_append_new(head, tmw_seq_layer("Dense", "dense_Dense1",
        json_pack("{s:o,s:i,s:s}", "batch_input_shape", tmw_batch_shape(1, (int64_t[]){4}),
                  "units", 5, "activation", "relu")));
    json_array_append_new(head, tmw_seq_layer("Dense", "dense_Dense2",
        json_pack("{s:i,s:s,s:b}", "units", 2, "activation", "softmax", "use_bias", 1)));
    json_array_append_new(outer, tmw_sequential("sequential_1", base));
    json_array_append_new(outer, tmw_sequential("sequential_3", head));
    float *k1 = lt_weight(t, "dense_Dense1/kernel", (shp){2, {4, 5}}, -1, 1);
    float *b1 = lt_weight(t, "dense_Dense1/bias", (shp){1, {5}}, -0.5, 0.5);
    float *k2 = lt_weight(t, "dense_Dense2/kernel", (shp){2, {5, 2}}, -1, 1);
    float *b2 = lt_weight(t, "dense_Dense2/bias", (shp){1, {2}}, -0.5, 0.5);
    t->known_bug = NESTED_FIRST_BUG;
    lt_load(t, tmw_sequential("sequential_4", outer), 0, NULL);
    float *x = rand_floats(t, BATCH * 108, -1, 1);
    float *got = lt_forward(t, x, 2);
    double *y = ref_dense(t, inner_model_pooled(t, x, k, b), BATCH, 4, 5, k1, b1);
    ref_activate("relu", y, BATCH, 5);
    y = ref_dense(t, y, BATCH, 5, 2, k2, b2);
    ref_activate("softmax", y, BATCH, 2);
    check_close("Teachable Machine layout", got, y, BATCH * 2);
}

/* One input, two branches both concatenated and added:
 *   a = relu(conv3x3 same (4)), b = conv1x1 (4), cat = [a, b], mix = conv1x1(cat) (4),
 *   sum = mix + a + b
 * listed out of order: sum, cat, b, mix, input_1, a. */
typedef struct branchy {
    float *x;
    double *a, *b, *cat, *sum; /* references */
} branchy;

static const img branchy_in = {6, 5, 3};

static branchy build_branchy(lt *t)
{
    img s = branchy_in;
    int64_t rows = BATCH * s.h * s.w;
    win w3 = WIN(3, 3, 1, 1, 1, 1, 1), w1 = WIN(1, 1, 1, 1, 1, 1, 0);
    json_t *conv3 = json_pack("{s:i,s:[i,i],s:s,s:s}", "filters", 4, "kernel_size", 3, 3,
                              "padding", "same", "activation", "relu");
    json_t *conv1 = json_pack("{s:i,s:[i,i]}", "filters", 4, "kernel_size", 1, 1);
    json_t *conv1m = json_deep_copy(conv1);
    lt_add(t, "Add", "sum", NULL, TMW_INPUTS("mix", "a", "b"));
    lt_add(t, "Concatenate", "cat", json_pack("{s:i}", "axis", -1), TMW_INPUTS("a", "b"));
    lt_add(t, "Conv2D", "b", conv1, TMW_INPUTS("input_1"));
    lt_add(t, "Conv2D", "mix", conv1m, TMW_INPUTS("cat"));
    lt_input(t, IMG_SHP(s));
    lt_add(t, "Conv2D", "a", conv3, TMW_INPUTS("input_1"));
    float *ka = lt_weight(t, "a/kernel", (shp){4, {3, 3, 3, 4}}, -1, 1);
    float *ba = lt_weight(t, "a/bias", (shp){1, {4}}, -0.5, 0.5);
    float *kb = lt_weight(t, "b/kernel", (shp){4, {1, 1, 3, 4}}, -1, 1);
    float *bb = lt_weight(t, "b/bias", (shp){1, {4}}, -0.5, 0.5);
    float *km = lt_weight(t, "mix/kernel", (shp){4, {1, 1, 8, 4}}, -1, 1);
    float *bm = lt_weight(t, "mix/bias", (shp){1, {4}}, -0.5, 0.5);

    branchy r;
    r.x = rand_floats(t, BATCH * img_count(s), -1, 1);
    double *xd = widen(t, r.x, BATCH * img_count(s));
    geom g3 = make_geom(s, w3, 4), g1 = make_geom(s, w1, 4);
    r.a = ref_conv2d(t, xd, &g3, w3, ka, ba);
    ref_activate("relu", r.a, rows, 4);
    r.b = ref_conv2d(t, xd, &g1, w1, kb, bb);
    r.cat = ref_concat_last(t, r.a, 4, r.b, 4, rows);
    double *mix = ref_dense(t, r.cat, rows, 8, 4, km, bm);
    r.sum = new_doubles(t, rows * 4);
    for (int64_t i = 0; i < rows * 4; i++)
        r.sum[i] = mix[i] + r.a[i] + r.b[i];
    return r;
}

/* Also runs one sample first, so the batch of 3 makes graft re-plan its memory. */
static void multi_branch_graph_listed_out_of_order(void **state)
{
    lt *t = *state;
    branchy r = build_branchy(t);
    int64_t per_sample = branchy_in.h * branchy_in.w * 4;
    lt_load(t, NULL, 1, "sum");
    expect_layer_shape(t, "sum", (shp){3, {branchy_in.h, branchy_in.w, 4}});
    float *one = keep(t, malloc(sizeof(float) * (size_t)per_sample));
    if (graft_model_forward(t->model, r.x, 1, one) != GRAFT_OK)
        fail_msg("graft_model_forward: %s", graft_last_error());
    check_close("sum, batch 1", one, r.sum, per_sample);
    check_close("sum", lt_forward(t, r.x, per_sample), r.sum, BATCH * per_sample);
}

static void forward_layers_returns_intermediate_and_final_outputs(void **state)
{
    lt *t = *state;
    branchy r = build_branchy(t);
    int64_t px = BATCH * branchy_in.h * branchy_in.w;
    lt_load(t, NULL, 1, "sum");
    const char *names[] = {"cat", "a"};
    float *outs[] = {keep(t, malloc(sizeof(float) * (size_t)(px * 8))),
                     keep(t, malloc(sizeof(float) * (size_t)(px * 4)))};
    float *final = keep(t, malloc(sizeof(float) * (size_t)(px * 4)));
    if (graft_model_forward_layers(t->model, r.x, BATCH, 2, names, outs, final) != GRAFT_OK)
        fail_msg("graft_model_forward_layers: %s", graft_last_error());
    check_close("cat", outs[0], r.cat, px * 8);
    check_close("a", outs[1], r.a, px * 4);
    check_close("sum", final, r.sum, px * 4);
}

static void forward_layers_with_null_final_output_returns_requested_layer(void **state)
{
    lt *t = *state;
    branchy r = build_branchy(t);
    int64_t px = BATCH * branchy_in.h * branchy_in.w;
    lt_load(t, NULL, 1, "sum");
    const char *names[] = {"b"};
    float *out = keep(t, malloc(sizeof(float) * (size_t)(px * 4)));
    if (graft_model_forward_layers(t->model, r.x, BATCH, 1, names, &out, NULL) != GRAFT_OK)
        fail_msg("graft_model_forward_layers: %s", graft_last_error());
    check_close("b", out, r.b, px * 4);
    const char *missing[] = {"no_such_layer"};
    assert_int_equal(graft_model_forward_layers(t->model, r.x, BATCH, 1, missing, &out, NULL),
                     GRAFT_E_NOT_FOUND);
}

/* One Conv2D applied twice (two inbound nodes): s0 = shared(x), r = relu(s0),
 * s1 = shared(r), out = s0 + s1 (refers to ["shared", 0, 0] and ["shared", 1, 0]). */
static void shared_layer_applied_twice_uses_one_set_of_weights(void **state)
{
    lt *t = *state;
    img s = {5, 5, 4};
    int64_t n = BATCH * img_count(s);
    win w = WIN(3, 3, 1, 1, 1, 1, 1);
    geom g = make_geom(s, w, 4);
    lt_input(t, IMG_SHP(s));
    json_t *shared = tmw_layer("Conv2D", "shared", json_pack("{s:i,s:[i,i],s:s}", "filters", 4,
                               "kernel_size", 3, 3, "padding", "same"), NULL);
    json_object_set_new(shared, "inbound_nodes",
                        json_pack("[[[s,i,i,{}]],[[s,i,i,{}]]]", "input_1", 0, 0, "r", 0, 0));
    json_array_append_new(t->layers, shared);
    lt_add(t, "ReLU", "r", NULL, TMW_INPUTS("shared"));
    json_t *out = tmw_layer("Add", "out", NULL, NULL);
    json_object_set_new(out, "inbound_nodes",
                        json_pack("[[[s,i,i,{}],[s,i,i,{}]]]", "shared", 0, 0, "shared", 1, 0));
    json_array_append_new(t->layers, out);
    float *k = lt_weight(t, "shared/kernel", (shp){4, {3, 3, 4, 4}}, -1, 1);
    float *b = lt_weight(t, "shared/bias", (shp){1, {4}}, -0.5, 0.5);
    float *x = rand_floats(t, n, -1, 1);
    float *got = lt_run(t, "out", x, IMG_SHP(s));
    double *s0 = ref_conv2d(t, widen(t, x, n), &g, w, k, b);
    double *r = new_doubles(t, n);
    for (int64_t i = 0; i < n; i++)
        r[i] = act1("relu", s0[i]);
    double *s1 = ref_conv2d(t, r, &g, w, k, b);
    for (int64_t i = 0; i < n; i++)
        s1[i] += s0[i];
    check_close("shared layer", got, s1, n);
}

/* ==== registration ================================================================== */

#define TEST(f) cmocka_unit_test_setup_teardown(f, lt_setup, lt_teardown)
#define CASE(runner, c) {#c, runner, lt_setup, lt_teardown, (void *)&c}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(input_layer_alone_passes_input_through),

        CASE(conv_case_matches_reference, conv2d_valid_3x3_matches_reference),
        CASE(conv_case_matches_reference, conv2d_same_stride1_keeps_spatial_size),
        CASE(conv_case_matches_reference, conv2d_same_stride2_even_input_pads_bottom_right_only),
        CASE(conv_case_matches_reference, conv2d_same_stride2_odd_input_pads_both_sides_equally),
        CASE(conv_case_matches_reference,
             conv2d_same_stride2_odd_input_even_kernel_pads_extra_bottom_right),
        CASE(conv_case_matches_reference, conv2d_valid_stride2_drops_leftover_rows_and_columns),
        CASE(conv_case_matches_reference, conv2d_dilation2_same),
        CASE(conv_case_matches_reference, conv2d_dilation2_valid_shrinks_by_dilated_span),
        CASE(conv_case_matches_reference, conv2d_1x1_with_17_channels),
        CASE(conv_case_matches_reference, conv2d_1x1_stride2_same_samples_every_other_pixel),
        CASE(conv_case_matches_reference, conv2d_1x3_kernel_same),
        CASE(conv_case_matches_reference, conv2d_3x1_kernel_same_stride2),
        CASE(conv_case_matches_reference, conv2d_2x5_kernel_strides_1x2_same),
        CASE(conv_case_matches_reference, conv2d_single_input_channel),
        CASE(conv_case_matches_reference, conv2d_17_to_17_channels_stride2_same),
        CASE(conv_case_matches_reference, conv2d_kernel_larger_than_input_same),
        CASE(conv_case_matches_reference, conv2d_use_bias_false),
        CASE(conv_case_matches_reference, conv2d_relu_activation_applies_after_bias),
        CASE(conv_case_matches_reference, conv2d_softmax_activation_normalises_channels),

        CASE(conv_case_matches_reference, depthwise_same_3x3),
        CASE(conv_case_matches_reference, depthwise_multiplier2_puts_channel_c_at_c_times_m_plus_m),
        CASE(conv_case_matches_reference, depthwise_multiplier3_stride2_same_even_input),
        CASE(conv_case_matches_reference, depthwise_dilation2_same),
        CASE(conv_case_matches_reference, depthwise_17_channels_odd_input_stride2_same),
        CASE(conv_case_matches_reference, depthwise_2x5_kernel_no_bias_relu6),
        CASE(conv_case_matches_reference, depthwise_1x3_kernel_single_channel_multiplier2),
        CASE(conv_case_matches_reference, depthwise_3x1_kernel_strides_2x1_same_8_channels),

        CASE(conv_case_matches_reference, separable_same_3x3),
        CASE(conv_case_matches_reference, separable_multiplier2_stride2_odd_input),
        CASE(conv_case_matches_reference, separable_dilation2_use_bias_false),
        CASE(conv_case_matches_reference, separable_valid_relu_17_channels),
        CASE(conv_case_matches_reference, separable_multiplier3_2x5_kernel_swish),

        CASE(batch_norm_case_matches_reference, batch_norm_uses_configured_epsilon),
        CASE(batch_norm_case_matches_reference, batch_norm_missing_epsilon_defaults_to_1e_3),
        CASE(batch_norm_case_matches_reference, batch_norm_center_false_has_no_beta),
        CASE(batch_norm_case_matches_reference, batch_norm_scale_false_has_no_gamma),
        CASE(batch_norm_case_matches_reference, batch_norm_center_and_scale_false_17_channels),

        CASE(relu_case_matches_reference, relu_layer_defaults_are_plain_relu),
        CASE(relu_case_matches_reference, relu_layer_max_value_6_is_relu6),
        CASE(relu_case_matches_reference, relu_layer_max_value_2_5_clips),
        CASE(relu_case_matches_reference, relu_layer_negative_slope_leaks_below_zero),
        CASE(relu_case_matches_reference, relu_layer_threshold_zeroes_values_below_it),
        CASE(relu_case_matches_reference, relu_layer_max_slope_and_threshold_together),
        CASE(relu_case_matches_reference, relu_layer_on_large_tensor_spans_thread_chunks),

        CASE(activation_case_matches_reference, activation_linear_is_identity),
        CASE(activation_case_matches_reference, activation_relu),
        CASE(activation_case_matches_reference, activation_relu6_clips_at_zero_and_six),
        CASE(activation_case_matches_reference, activation_sigmoid),
        CASE(activation_case_matches_reference, activation_tanh),
        CASE(activation_case_matches_reference, activation_softmax_normalises_last_axis),
        CASE(activation_case_matches_reference, activation_swish_is_x_times_sigmoid),
        CASE(activation_case_matches_reference, activation_silu_is_swish),
        CASE(activation_case_matches_reference, activation_hard_sigmoid_is_clipped_0_2x_plus_0_5),
        CASE(activation_case_matches_reference, activation_elu),
        CASE(activation_case_matches_reference, activation_selu),
        CASE(activation_case_matches_reference, activation_gelu_uses_erf_form),
        CASE(activation_case_matches_reference, activation_softplus),
        CASE(activation_case_matches_reference, activation_elu_on_large_tensor_spans_thread_chunks),
        CASE(activation_case_matches_reference, activation_softmax_on_large_tensor),

        CASE(zero_padding_case_matches_reference, zero_padding_int_pads_every_side),
        CASE(zero_padding_case_matches_reference,
             zero_padding_pair_pads_height_and_width_symmetrically),
        CASE(zero_padding_case_matches_reference, zero_padding_pair_of_pairs_pads_each_side),

        TEST(add_sums_three_inputs),
        TEST(multiply_two_branches_elementwise),
        TEST(concatenate_channel_axis_keeps_input_order),
        TEST(concatenate_width_axis_stacks_columns),

        CASE(pool_case_matches_reference,
             max_pooling_2x2_valid_odd_input_drops_last_row_and_column),
        CASE(pool_case_matches_reference, max_pooling_null_strides_default_to_pool_size),
        CASE(pool_case_matches_reference, max_pooling_same_stride2_even_input_ignores_padding),
        CASE(pool_case_matches_reference, max_pooling_same_stride1_17_channels_ignores_padding),
        CASE(pool_case_matches_reference, max_pooling_2x3_window_strides_1x2_valid),
        CASE(pool_case_matches_reference, average_pooling_2x2_valid),
        CASE(pool_case_matches_reference, average_pooling_same_stride1_divides_by_valid_cells),
        CASE(pool_case_matches_reference,
             average_pooling_same_stride2_even_input_divides_by_valid_cells),
        CASE(pool_case_matches_reference,
             average_pooling_same_2x2_stride2_odd_input_pads_bottom_right),
        CASE(pool_case_matches_reference, average_pooling_3x1_same_17_channels),

        CASE(global_pool_case_matches_reference, global_average_pooling_gives_vector),
        CASE(global_pool_case_matches_reference, global_average_pooling_keepdims_gives_1x1xc),
        CASE(global_pool_case_matches_reference, global_max_pooling_gives_vector),
        CASE(global_pool_case_matches_reference, global_max_pooling_keepdims_gives_1x1xc),

        TEST(flatten_keeps_nhwc_order_for_following_dense),
        TEST(reshape_minus_one_infers_dimension),
        TEST(reshape_to_rank2_then_dense_on_last_axis),
        TEST(dense_on_vector_with_relu),
        TEST(dense_use_bias_false),
        TEST(dense_on_image_acts_on_last_axis_with_softmax),
        TEST(dropout_is_identity_at_inference),
        TEST(rescaling_multiplies_then_adds_offset),

        TEST(sequential_model_takes_input_shape_from_first_layer),
        TEST(sequential_with_input_layer_wrapping_functional_model_scoped_weights),
        /* These two fail until graft takes a Sequential's input from a nested first model. */
        TEST(sequential_wrapping_functional_model_with_scoped_weights),
        TEST(teachable_machine_style_nested_sequentials),
        TEST(multi_branch_graph_listed_out_of_order),
        TEST(shared_layer_applied_twice_uses_one_set_of_weights),
        TEST(forward_layers_returns_intermediate_and_final_outputs),
        TEST(forward_layers_with_null_final_output_returns_requested_layer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
