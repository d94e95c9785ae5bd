/* Finite-difference gradient checks of every layer kind's backward, driving the
 * ops table directly: parse a Keras config, infer shapes, draw seeded inputs and
 * weights, forward in training mode, take L = sum(output * R) for a fixed random
 * R (so dL/doutput = R), run backward with d_output = R and compare every input
 * and trainable-weight gradient with a five-point central difference of L
 * (evaluated in double). Each case also checks that a NULL d_inputs[i] or
 * d_weights[w] is respected, that nothing is written past a gradient buffer,
 * that gradients accumulate, and that backward leaves its inputs alone.
 *
 * Kinks: values are drawn at least 3h away from an activation's kinks (relu at
 * 0, relu6 at 0 and 6, hard_sigmoid at +-2.5, ...), Dense+relu redraws until no
 * pre-activation is within 3h of 0, and max pooling draws distinct inputs 3h
 * apart, so no difference quotient straddles a kink or a tie.
 *
 * The convolution and pooling kinds have no backward yet; their cases run
 * parse/infer/forward at the geometries of interest and skip the gradient check
 * ("skipped: no backward") until ops->backward exists.
 *
 * The comparison criterion is in gradcheck.h. */
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

#include "core/alloc.h"
#include "core/random.h"
#include "layers/layer.h"

#include "gradcheck.h"

enum { GC_MAX_IN = 4, GC_MAX_SLOTS = GC_MAX_IN + GRAFT__MAX_WEIGHTS };
#define GC_H (1.0 / 64) /* default step: a power of two, see GC_GRID */
#define GC_FORWARD_SEED 0x9d2c5680a1b2c3d4ull

struct gc_run;

typedef struct gc_spec {
    const char *name;
    const char *kind;   /* Keras class name */
    const char *config; /* the Keras config object, as JSON */
    int n_inputs;       /* 0 means 1 */
    int rank;           /* of each input sample */
    int64_t dims[GC_MAX_IN][3];
    int64_t batch;
    int batch_stats;
    uint64_t seed;
    double h;           /* finite-difference step; 0 means GC_H */
    double lo, hi;      /* input range; both 0 means [-1, 1] */
    int n_kinks;        /* inputs stay 3h away from these */
    double kinks[3];
    int distinct;       /* inputs are distinct, 3h apart (max-pool ties) */
    int64_t zero_at;    /* > 0: element zero_at-1 of input 1 is exactly 0 */
    int out_rank;       /* > 0: the expected output shape */
    int64_t out_dims[3];
    int (*valid)(const struct gc_run *r); /* redraw until this accepts the values */
} gc_spec;

typedef struct gc_run {
    const gc_spec *s;
    graft__layer layer;
    int n_in, batch_stats;
    double h;
    graft__shape in[GC_MAX_IN], out;
    int64_t in_n[GC_MAX_IN], out_n, w_n[GRAFT__MAX_WEIGHTS];
    float *x[GC_MAX_IN], *y, *R;
    float *w_init[GRAFT__MAX_WEIGHTS]; /* as drawn; state weights are reset to it */
    void *scratch, *saved;
    size_t scratch_bytes, saved_bytes;
    /* gradient slots: the inputs, then the trainable weights */
    int n_slots;
    float *slot_param[GC_MAX_SLOTS];
    int64_t slot_n[GC_MAX_SLOTS];
    int slot_weight[GC_MAX_SLOTS]; /* weight index, or -1 for an input */
    char slot_name[GC_MAX_SLOTS][48];
} gc_run;

static int verbose(void) { return getenv("GC_VERBOSE") != NULL; }

/* ---- setting up a layer ---------------------------------------------------- */

static void gc_teardown(gc_run *r)
{
    for (int i = 0; i < GC_MAX_IN; i++)
        free(r->x[i]);
    gc_guarded_free(r->y);
    free(r->R);
    for (int w = 0; w < GRAFT__MAX_WEIGHTS; w++) {
        free(r->layer.weights[w].data);
        free(r->w_init[w]);
    }
    free(r->scratch);
    free(r->saved);
    graft__free(r->layer.config);
    memset(r, 0, sizeof *r);
}

static void gc_setup(gc_run *r, const gc_spec *s)
{
    memset(r, 0, sizeof *r);
    r->s = s;
    r->n_in = s->n_inputs ? s->n_inputs : 1;
    r->batch_stats = s->batch_stats;
    r->h = s->h ? s->h : GC_H;
    const graft__layer_ops *ops = graft__layer_ops_find(s->kind);
    if (!ops)
        fail_msg("%s: no layer kind '%s'", s->name, s->kind);
    r->layer.name = (char *)"gradcheck";
    r->layer.ops = ops;
    r->layer.trainable = 1;

    json_error_t jerr;
    json_t *cfg = json_loads(s->config, 0, &jerr);
    if (!cfg)
        fail_msg("%s: bad JSON in the test case: %s", s->name, jerr.text);
    graft_status rc = ops->parse(&r->layer, cfg);
    json_decref(cfg);
    if (rc)
        fail_msg("%s: parse: %s", s->name, graft_last_error());

    for (int i = 0; i < r->n_in; i++) {
        r->in[i].rank = s->rank;
        for (int d = 0; d < s->rank; d++)
            r->in[i].dim[d] = s->dims[i][d];
        r->in_n[i] = s->batch * graft__shape_elems(&r->in[i]);
    }
    if ((rc = ops->infer(&r->layer, r->n_in, r->in, &r->out)))
        fail_msg("%s: infer: %s", s->name, graft_last_error());
    if (s->out_rank) {
        graft__shape want = {.rank = s->out_rank};
        for (int d = 0; d < s->out_rank; d++)
            want.dim[d] = s->out_dims[d];
        char a[96], b[96];
        if (!graft__shape_equal(&want, &r->out))
            fail_msg("%s: output shape %s, expected %s", s->name,
                     graft__shape_str(&r->out, a, sizeof a), graft__shape_str(&want, b, sizeof b));
    }
    r->out_n = s->batch * graft__shape_elems(&r->out);

    for (int i = 0; i < r->n_in; i++)
        r->x[i] = gc_aligned(sizeof(float) * (size_t)r->in_n[i]);
    r->y = gc_guarded_new(r->out_n);
    r->R = gc_aligned(sizeof(float) * (size_t)r->out_n);
    for (int w = 0; w < r->layer.n_weights; w++) {
        r->w_n[w] = graft__shape_elems(&r->layer.weights[w].shape);
        r->layer.weights[w].data = gc_aligned(sizeof(float) * (size_t)r->w_n[w]);
        r->w_init[w] = gc_aligned(sizeof(float) * (size_t)r->w_n[w]);
    }
    if (ops->scratch_bytes)
        r->scratch_bytes = ops->scratch_bytes(&r->layer, r->n_in, r->in, &r->out, s->batch);
    if (r->scratch_bytes)
        r->scratch = gc_aligned(r->scratch_bytes);
    if (ops->saved_bytes)
        r->saved_bytes = ops->saved_bytes(&r->layer, &r->out, s->batch);
    if (r->saved_bytes)
        r->saved = gc_aligned(r->saved_bytes);

    for (int i = 0; i < r->n_in; i++) {
        int k = r->n_slots++;
        r->slot_param[k] = r->x[i];
        r->slot_n[k] = r->in_n[i];
        r->slot_weight[k] = -1;
        snprintf(r->slot_name[k], sizeof r->slot_name[k], "d_inputs[%d]", i);
    }
    for (int w = 0; w < r->layer.n_weights; w++)
        if (r->layer.weights[w].trainable) {
            int k = r->n_slots++;
            r->slot_param[k] = r->layer.weights[w].data;
            r->slot_n[k] = r->w_n[w];
            r->slot_weight[k] = w;
            snprintf(r->slot_name[k], sizeof r->slot_name[k], "d_weights[%d] (%s)", w,
                     r->layer.weights[w].name);
        }
}

static int near_kink(const gc_spec *s, double v, double margin)
{
    for (int k = 0; k < s->n_kinks; k++)
        if (fabs(v - s->kinks[k]) < margin)
            return 1;
    return 0;
}

/* Draws inputs, weights and R from the case's seed and the attempt number. */
static void gc_fill(gc_run *r, uint64_t attempt)
{
    const gc_spec *s = r->s;
    uint64_t seed = graft__seed_derive(s->seed, attempt), stream = 0;
    double lo = s->lo, hi = s->hi;
    if (lo == 0 && hi == 0)
        lo = -1, hi = 1;
    for (int i = 0; i < r->n_in; i++) {
        int64_t n = r->in_n[i];
        if (s->distinct) {
            /* a random permutation of n values 3h apart, centred on 0 */
            int64_t *perm = malloc(sizeof(int64_t) * (size_t)n);
            assert_non_null(perm);
            for (int64_t e = 0; e < n; e++)
                perm[e] = e;
            for (int64_t e = n - 1; e > 0; e--) {
                int64_t j = (int64_t)(graft__uniform(seed, stream++) * (float)(e + 1));
                j = j > e ? e : j;
                int64_t t = perm[e];
                perm[e] = perm[j];
                perm[j] = t;
            }
            for (int64_t e = 0; e < n; e++)
                r->x[i][e] = (float)((double)(perm[e] - n / 2) * 3.0 * r->h);
            free(perm);
            continue;
        }
        for (int64_t e = 0; e < n; e++) {
            float v;
            do
                v = gc_uniform(seed, stream++, lo, hi);
            while (near_kink(s, v, 3.0 * r->h));
            r->x[i][e] = v;
        }
    }
    if (s->zero_at > 0)
        r->x[1][s->zero_at - 1] = 0.0f;
    for (int w = 0; w < r->layer.n_weights; w++) {
        int var = strcmp(r->layer.weights[w].name, "moving_variance") == 0;
        for (int64_t e = 0; e < r->w_n[w]; e++)
            r->w_init[w][e] = gc_uniform(seed, stream++, var ? 0.25 : -1.0, var ? 1.25 : 1.0);
        memcpy(r->layer.weights[w].data, r->w_init[w], sizeof(float) * (size_t)r->w_n[w]);
    }
    for (int64_t e = 0; e < r->out_n; e++)
        r->R[e] = gc_uniform(seed, stream++, -1.0, 1.0);
}

/* ---- forward, loss, backward ----------------------------------------------- */

/* Forward in training mode (unless training is 0). State weights (BatchNorm's
 * moving statistics, which batch-statistics mode moves in place) are reset to
 * their drawn values first, so every evaluation sees the same layer. Output,
 * scratch and saved are poisoned with NaN so a value left unwritten, or read
 * before it is written, shows. */
static void gc_forward(gc_run *r, int training)
{
    for (int w = 0; w < r->layer.n_weights; w++)
        if (!r->layer.weights[w].trainable)
            memcpy(r->layer.weights[w].data, r->w_init[w], sizeof(float) * (size_t)r->w_n[w]);
    if (r->scratch)
        memset(r->scratch, 0xff, r->scratch_bytes);
    if (r->saved)
        memset(r->saved, 0xff, r->saved_bytes);
    memset(r->y, 0xff, sizeof(float) * (size_t)r->out_n);
    graft__forward_args a = {
        .batch = r->s->batch,
        .n_inputs = r->n_in,
        .inputs = (const float *const *)r->x,
        .in_shapes = r->in,
        .output = r->y,
        .out_shape = &r->out,
        .scratch = r->scratch,
        .training = training,
        .batch_stats = r->batch_stats,
        .saved = r->saved,
        .seed = GC_FORWARD_SEED,
    };
    r->layer.ops->forward(&r->layer, &a);
}

static double gc_loss(const gc_run *r)
{
    double L = 0;
    for (int64_t i = 0; i < r->out_n; i++)
        L += (double)r->y[i] * r->R[i];
    return L;
}

static void gc_backward(gc_run *r, float *const *d_in, float *const *d_w)
{
    graft__backward_args a = {
        .batch = r->s->batch,
        .n_inputs = r->n_in,
        .inputs = (const float *const *)r->x,
        .in_shapes = r->in,
        .output = r->y,
        .out_shape = &r->out,
        .d_output = r->R,
        .d_inputs = d_in,
        .d_weights = d_w,
        .scratch = r->scratch,
        .batch_stats = r->batch_stats,
        .saved = r->saved,
        .seed = GC_FORWARD_SEED,
    };
    r->layer.ops->backward(&r->layer, &a);
}

/* Gradient buffers, one per slot (NULL where mask says so), spread into the
 * d_inputs / d_weights arrays backward takes (non-trainable weights NULL). */
typedef struct gc_grads {
    float *slot[GC_MAX_SLOTS];
    float *d_in[GC_MAX_IN];
    float *d_w[GRAFT__MAX_WEIGHTS];
} gc_grads;

static void gc_grads_new(const gc_run *r, gc_grads *g, unsigned wanted /* bit per slot */)
{
    memset(g, 0, sizeof *g);
    for (int k = 0; k < r->n_slots; k++) {
        if (!(wanted >> k & 1u))
            continue;
        g->slot[k] = gc_guarded_new(r->slot_n[k]);
        if (r->slot_weight[k] < 0)
            g->d_in[k] = g->slot[k];
        else
            g->d_w[r->slot_weight[k]] = g->slot[k];
    }
}

static void gc_grads_free(gc_grads *g)
{
    for (int k = 0; k < GC_MAX_SLOTS; k++)
        gc_guarded_free(g->slot[k]);
    memset(g, 0, sizeof *g);
}

/* 0 when every allocated buffer's guards are intact; else reports and returns 1. */
static int gc_grads_guards(const gc_run *r, const gc_grads *g, const char *when)
{
    int bad = 0;
    for (int k = 0; k < r->n_slots; k++)
        if (g->slot[k] && !gc_guard_ok(g->slot[k], r->slot_n[k])) {
            printf("FAIL %s: %s: written outside %s (%lld floats)\n", r->s->name, when,
                   r->slot_name[k], (long long)r->slot_n[k]);
            bad = 1;
        }
    return bad;
}

/* Five-point central difference of L in each element of p:
 * (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h, error O(h^4). */
static void gc_numeric(gc_run *r, float *p, int64_t n, double *grad)
{
    const double h = r->h, off[4] = {h, -h, 2 * h, -2 * h};
    for (int64_t i = 0; i < n; i++) {
        float v = p[i];
        double L[4];
        for (int k = 0; k < 4; k++) {
            float pv = (float)((double)v + off[k]);
            assert_true((double)pv == (double)v + off[k]); /* the grid keeps steps exact */
            p[i] = pv;
            gc_forward(r, 1);
            L[k] = gc_loss(r);
        }
        p[i] = v;
        grad[i] = (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h);
    }
}

/* 0 when b matches a within rel (of the tensor's largest magnitude, per element). */
static int gc_close(const float *a, const float *b, int64_t n, double rel, int64_t *at)
{
    double scale = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs((double)a[i]));
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= rel * (scale + fabs((double)a[i])) + 1e-30)) {
            *at = i;
            return 1;
        }
    return 0;
}

static int all_finite(const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

/* ---- the check ------------------------------------------------------------- */

static float *gc_copy(const float *src, int64_t n)
{
    float *dst = gc_aligned(sizeof(float) * (size_t)n);
    memcpy(dst, src, sizeof(float) * (size_t)n);
    return dst;
}

/* Backward leaves inputs, output, d_output and weights as they were. */
static int gc_check_unchanged(gc_run *r, void (*run)(gc_run *))
{
    float *keep_x[GC_MAX_IN] = {0}, *keep_w[GRAFT__MAX_WEIGHTS] = {0};
    for (int i = 0; i < r->n_in; i++)
        keep_x[i] = gc_copy(r->x[i], r->in_n[i]);
    for (int w = 0; w < r->layer.n_weights; w++)
        keep_w[w] = gc_copy(r->layer.weights[w].data, r->w_n[w]);
    float *keep_y = gc_copy(r->y, r->out_n), *keep_R = gc_copy(r->R, r->out_n);
    run(r);
    int bad = 0;
    for (int i = 0; i < r->n_in; i++) {
        if (memcmp(keep_x[i], r->x[i], sizeof(float) * (size_t)r->in_n[i])) {
            printf("FAIL %s: backward changed input %d\n", r->s->name, i);
            bad = 1;
        }
        free(keep_x[i]);
    }
    for (int w = 0; w < r->layer.n_weights; w++) {
        if (memcmp(keep_w[w], r->layer.weights[w].data, sizeof(float) * (size_t)r->w_n[w])) {
            printf("FAIL %s: backward changed weight %s\n", r->s->name, r->layer.weights[w].name);
            bad = 1;
        }
        free(keep_w[w]);
    }
    if (memcmp(keep_y, r->y, sizeof(float) * (size_t)r->out_n) ||
        memcmp(keep_R, r->R, sizeof(float) * (size_t)r->out_n)) {
        printf("FAIL %s: backward changed the output or d_output\n", r->s->name);
        bad = 1;
    }
    free(keep_y);
    free(keep_R);
    return bad;
}

static gc_grads *g_current; /* the buffers gc_check_unchanged's callback fills */

static void run_backward_current(gc_run *r) { gc_backward(r, g_current->d_in, g_current->d_w); }

/* Backward with some gradients NULL: the others come out as in the full run,
 * nothing lands outside them. wanted has a bit per slot. */
static int gc_check_subset(gc_run *r, unsigned wanted, float *const *full, const char *what)
{
    gc_grads g;
    gc_grads_new(r, &g, wanted);
    gc_forward(r, 1);
    gc_backward(r, g.d_in, g.d_w);
    int bad = gc_grads_guards(r, &g, what);
    for (int k = 0; k < r->n_slots; k++) {
        int64_t at;
        if (g.slot[k] && gc_close(full[k], g.slot[k], r->slot_n[k], 1e-6, &at)) {
            printf("FAIL %s: %s: %s[%lld] = %.9g, %.9g with every gradient wanted\n", r->s->name,
                   what, r->slot_name[k], (long long)at, g.slot[k][at], full[k][at]);
            bad = 1;
        }
    }
    gc_grads_free(&g);
    return bad;
}

static void gc_case(void **state)
{
    const gc_spec *s = *state;
    gc_run r;
    gc_setup(&r, s);

    if (!r.layer.ops->backward) {
        /* Exercise the forward at this geometry so the case is ready for backward. */
        gc_fill(&r, 0);
        gc_forward(&r, 1);
        int ok = all_finite(r.y, r.out_n) && gc_guard_ok(r.y, r.out_n);
        gc_teardown(&r);
        assert_true(ok);
        printf("  %s: skipped: no backward\n", s->name);
        skip();
        return;
    }

    for (uint64_t attempt = 0; gc_fill(&r, attempt), s->valid && !s->valid(&r); attempt++)
        if (attempt >= 10000)
            fail_msg("%s: no valid draw in 10000 attempts", s->name);

    int failures = 0;
    unsigned all = (1u << r.n_slots) - 1;

    /* analytic gradients from zeroed buffers */
    gc_grads ga;
    gc_grads_new(&r, &ga, all);
    gc_forward(&r, 1);
    if (!all_finite(r.y, r.out_n) || !gc_guard_ok(r.y, r.out_n)) {
        printf("FAIL %s: forward left a value unwritten, non-finite or out of bounds\n", s->name);
        failures++;
    }
    g_current = &ga;
    failures += gc_check_unchanged(&r, run_backward_current);
    failures += gc_grads_guards(&r, &ga, "backward");

    /* numeric gradients and the comparison */
    double worst_norm = 0, worst_elem = 0;
    for (int k = 0; k < r.n_slots; k++) {
        double *num = malloc(sizeof(double) * (size_t)r.slot_n[k]);
        assert_non_null(num);
        gc_numeric(&r, r.slot_param[k], r.slot_n[k], num);
        gc_cmp c = gc_compare(ga.slot[k], num, r.slot_n[k]);
        worst_norm = fmax(worst_norm, c.norm_ratio);
        worst_elem = fmax(worst_elem, c.worst_elem);
        if (!c.pass || verbose())
            printf("%s %s %s (%lld values, ||numeric|| %.4g): norm ratio %.3g, worst element "
                   "%lld: analytic %.9g numeric %.9g (rel %.3g)\n",
                   c.pass ? "    " : "FAIL", s->name, r.slot_name[k], (long long)r.slot_n[k],
                   c.norm_n, c.norm_ratio, (long long)c.worst_at, c.worst_a, c.worst_n,
                   c.worst_elem);
        if (!c.pass) {
            failures++;
            if (verbose())
                for (int64_t i = 0; i < r.slot_n[k]; i++)
                    printf("      [%lld] analytic %.9g numeric %.9g\n", (long long)i,
                           ga.slot[k][i], num[i]);
        }
        free(num);
    }

    /* NULL gradients: each one alone, each one the only one wanted, none */
    if (r.n_slots > 1)
        for (int k = 0; k < r.n_slots; k++) {
            char what[96];
            snprintf(what, sizeof what, "%s NULL", r.slot_name[k]);
            failures += gc_check_subset(&r, all & ~(1u << k), ga.slot, what);
            snprintf(what, sizeof what, "only %s wanted", r.slot_name[k]);
            failures += gc_check_subset(&r, 1u << k, ga.slot, what);
        }
    failures += gc_check_subset(&r, 0, ga.slot, "every gradient NULL");

    /* accumulation: twice from zero doubles, once onto G0 adds */
    {
        gc_grads g2, g0;
        gc_grads_new(&r, &g2, all);
        gc_grads_new(&r, &g0, all);
        float *g0_init[GC_MAX_SLOTS] = {0};
        for (int k = 0; k < r.n_slots; k++) {
            for (int64_t i = 0; i < r.slot_n[k]; i++)
                g0.slot[k][i] = gc_uniform(0xacc, (uint64_t)(k * 100000 + i), -1.0, 1.0);
            g0_init[k] = gc_copy(g0.slot[k], r.slot_n[k]);
        }
        gc_forward(&r, 1);
        gc_backward(&r, g2.d_in, g2.d_w);
        gc_backward(&r, g2.d_in, g2.d_w);
        gc_backward(&r, g0.d_in, g0.d_w);
        failures += gc_grads_guards(&r, &g2, "backward twice");
        failures += gc_grads_guards(&r, &g0, "backward onto nonzero gradients");
        for (int k = 0; k < r.n_slots; k++) {
            int64_t n = r.slot_n[k], at;
            float *want = gc_aligned(sizeof(float) * (size_t)n);
            for (int64_t i = 0; i < n; i++)
                want[i] = 2.0f * ga.slot[k][i];
            if (gc_close(want, g2.slot[k], n, 1e-5, &at)) {
                printf("FAIL %s: backward twice: %s[%lld] = %.9g, expected 2 x %.9g\n", s->name,
                       r.slot_name[k], (long long)at, g2.slot[k][at], ga.slot[k][at]);
                failures++;
            }
            for (int64_t i = 0; i < n; i++)
                want[i] = g0_init[k][i] + ga.slot[k][i];
            if (gc_close(want, g0.slot[k], n, 1e-5, &at)) {
                printf("FAIL %s: backward onto %.9g: %s[%lld] = %.9g, expected %.9g\n", s->name,
                       g0_init[k][at], r.slot_name[k], (long long)at, g0.slot[k][at], want[at]);
                failures++;
            }
            free(want);
            free(g0_init[k]);
        }
        gc_grads_free(&g2);
        gc_grads_free(&g0);
    }

    printf("  %s: %d gradient%s, worst norm ratio %.2g, worst element %.2g%s\n", s->name,
           r.n_slots, r.n_slots == 1 ? "" : "s", worst_norm, worst_elem,
           failures ? " -- FAILED" : "");
    gc_grads_free(&ga);
    gc_teardown(&r);
    if (failures)
        fail_msg("%s: %d check%s failed (see above)", s->name, failures, failures == 1 ? "" : "s");
}

/* Dense + relu: no pre-activation within 3h of 0, where any step of 2h in one
 * input, kernel or bias value (all within [-1, 1]) could carry it across. */
static int dense_relu_valid(const gc_run *r)
{
    const graft__shape *is = &r->in[0];
    int64_t in_dim = is->dim[is->rank - 1], units = r->out.dim[r->out.rank - 1];
    int64_t rows = r->in_n[0] / in_dim;
    const float *k = r->layer.weights[0].data;
    const float *b = r->layer.n_weights > 1 ? r->layer.weights[1].data : NULL;
    for (int64_t row = 0; row < rows; row++)
        for (int64_t u = 0; u < units; u++) {
            double z = b ? b[u] : 0.0;
            for (int64_t i = 0; i < in_dim; i++)
                z += (double)r->x[0][row * in_dim + i] * k[i * units + u];
            if (fabs(z) < 3.0 * r->h)
                return 0;
        }
    return 1;
}

/* ---- the cases --------------------------------------------------------------- */

#define IMG345 .rank = 3, .dims = {{3, 4, 5}}, .batch = 2
#define ACT(name_, lo_, hi_, ...)                                                             \
    {.name = "Activation " name_, .kind = "Activation",                                       \
     .config = "{\"activation\": \"" name_ "\"}", IMG345, .seed = __LINE__, .lo = lo_,        \
     .hi = hi_, __VA_ARGS__}
#define DENSE(name_, act_, ...)                                                               \
    {.name = "Dense " name_, .kind = "Dense",                                                 \
     .config = "{\"units\": 4, \"activation\": \"" act_ "\"}", .seed = __LINE__, __VA_ARGS__}
#define VEC6 .rank = 1, .dims = {{6}}, .batch = 3, .out_rank = 1, .out_dims = {4}
#define BN(name_, cfg_, bs_)                                                                  \
    {.name = "BatchNormalization " name_, .kind = "BatchNormalization", .config = cfg_,      \
     IMG345, .batch_stats = bs_, .seed = __LINE__}

static const gc_spec cases[] = {
    /* Dense */
    DENSE("vector linear", "linear", VEC6),
    DENSE("vector relu", "relu", VEC6, .h = 1.0 / 256, .valid = dense_relu_valid),
    DENSE("vector softmax", "softmax", VEC6),
    DENSE("vector swish", "swish", VEC6),
    DENSE("vector tanh", "tanh", VEC6),
    DENSE("vector sigmoid", "sigmoid", VEC6),
    DENSE("(H,W,C) linear", "linear", .rank = 3, .dims = {{2, 3, 5}}, .batch = 2, .out_rank = 3,
          .out_dims = {2, 3, 4}),
    DENSE("(H,W,C) relu", "relu", .rank = 3, .dims = {{2, 3, 5}}, .batch = 2, .h = 1.0 / 256,
          .valid = dense_relu_valid),
    DENSE("(H,W,C) softmax", "softmax", .rank = 3, .dims = {{2, 3, 5}}, .batch = 2),
    DENSE("(H,W,C) swish", "swish", .rank = 3, .dims = {{2, 3, 5}}, .batch = 2),
    DENSE("(H,W,C) tanh", "tanh", .rank = 3, .dims = {{2, 3, 5}}, .batch = 2),
    DENSE("(H,W,C) sigmoid", "sigmoid", .rank = 3, .dims = {{2, 3, 5}}, .batch = 2),
    {.name = "Dense vector no bias", .kind = "Dense",
     .config = "{\"units\": 3, \"use_bias\": false, \"activation\": \"tanh\"}", .rank = 1,
     .dims = {{5}}, .batch = 3, .seed = __LINE__},

    /* ReLU layer */
    {.name = "ReLU max_value 6", .kind = "ReLU", .config = "{\"max_value\": 6.0}", IMG345,
     .seed = __LINE__, .lo = -2, .hi = 8, .n_kinks = 2, .kinks = {0, 6}},
    {.name = "ReLU negative_slope 0.1 threshold 0.5", .kind = "ReLU",
     .config = "{\"negative_slope\": 0.1, \"threshold\": 0.5}", IMG345, .seed = __LINE__,
     .lo = -2, .hi = 2, .n_kinks = 1, .kinks = {0.5}},
    {.name = "ReLU max_value 4 negative_slope 0.2 threshold -1", .kind = "ReLU",
     .config = "{\"max_value\": 4.0, \"negative_slope\": 0.2, \"threshold\": -1.0}", IMG345,
     .seed = __LINE__, .lo = -3, .hi = 6, .n_kinks = 2, .kinks = {-1, 4}},

    /* Activation layer */
    ACT("linear", -3, 3, .n_kinks = 0),
    ACT("relu", -2, 2, .n_kinks = 1, .kinks = {0}),
    ACT("relu6", -2, 8, .n_kinks = 2, .kinks = {0, 6}),
    ACT("sigmoid", -4, 4, .n_kinks = 0),
    ACT("tanh", -3, 3, .n_kinks = 0),
    ACT("softmax", -3, 3, .n_kinks = 0),
    ACT("swish", -4, 4, .n_kinks = 0),
    ACT("hard_sigmoid", -4, 4, .n_kinks = 2, .kinks = {-2.5, 2.5}),
    ACT("elu", -3, 2, .n_kinks = 1, .kinks = {0}),
    ACT("selu", -3, 2, .n_kinks = 1, .kinks = {0}),
    ACT("gelu", -3, 3, .n_kinks = 0),
    ACT("softplus", -4, 4, .n_kinks = 0),

    /* BatchNormalization: batch statistics and moving statistics, center/scale on and off */
    BN("batch stats, center+scale", "{\"momentum\": 0.9, \"epsilon\": 0.001}", 1),
    BN("batch stats, scale only", "{\"center\": false}", 1),
    BN("batch stats, center only", "{\"scale\": false}", 1),
    BN("batch stats, neither", "{\"center\": false, \"scale\": false}", 1),
    BN("moving stats, center+scale", "{\"momentum\": 0.9, \"epsilon\": 0.001}", 0),
    BN("moving stats, scale only", "{\"center\": false}", 0),
    BN("moving stats, center only", "{\"scale\": false}", 0),
    BN("moving stats, neither", "{\"center\": false, \"scale\": false}", 0),
    {.name = "BatchNormalization batch stats, vector input", .kind = "BatchNormalization",
     .config = "{\"axis\": -1}", .rank = 1, .dims = {{6}}, .batch = 4, .batch_stats = 1,
     .seed = __LINE__},

    /* merges */
    {.name = "Add 3 inputs", .kind = "Add", .config = "{}", .n_inputs = 3, .rank = 3,
     .dims = {{3, 4, 5}, {3, 4, 5}, {3, 4, 5}}, .batch = 2, .seed = __LINE__},
    {.name = "Multiply 2 inputs, a zero", .kind = "Multiply", .config = "{}", .n_inputs = 2,
     .rank = 3, .dims = {{3, 4, 5}, {3, 4, 5}}, .batch = 2, .seed = __LINE__, .zero_at = 7},
    {.name = "Multiply 3 inputs, a zero", .kind = "Multiply", .config = "{}", .n_inputs = 3,
     .rank = 3, .dims = {{3, 4, 5}, {3, 4, 5}, {3, 4, 5}}, .batch = 2, .seed = __LINE__,
     .zero_at = 30},
    {.name = "Concatenate channels (axis -1)", .kind = "Concatenate", .config = "{\"axis\": -1}",
     .n_inputs = 3, .rank = 3, .dims = {{3, 4, 2}, {3, 4, 3}, {3, 4, 1}}, .batch = 2,
     .seed = __LINE__, .out_rank = 3, .out_dims = {3, 4, 6}},
    {.name = "Concatenate axis 1", .kind = "Concatenate", .config = "{\"axis\": 1}",
     .n_inputs = 2, .rank = 3, .dims = {{2, 4, 3}, {3, 4, 3}}, .batch = 2, .seed = __LINE__,
     .out_rank = 3, .out_dims = {5, 4, 3}},
    {.name = "Concatenate axis 2", .kind = "Concatenate", .config = "{\"axis\": 2}",
     .n_inputs = 2, .rank = 3, .dims = {{3, 2, 2}, {3, 3, 2}}, .batch = 3, .seed = __LINE__,
     .out_rank = 3, .out_dims = {3, 5, 2}},

    /* shape and elementwise kinds */
    {.name = "ZeroPadding2D ((1,2),(0,3))", .kind = "ZeroPadding2D",
     .config = "{\"padding\": [[1, 2], [0, 3]]}", .rank = 3, .dims = {{3, 4, 2}}, .batch = 2,
     .seed = __LINE__, .out_rank = 3, .out_dims = {6, 7, 2}},
    {.name = "Flatten", .kind = "Flatten", .config = "{}", IMG345, .seed = __LINE__,
     .out_rank = 1, .out_dims = {60}},
    {.name = "Reshape (4,-1)", .kind = "Reshape", .config = "{\"target_shape\": [4, -1]}",
     IMG345, .seed = __LINE__, .out_rank = 2, .out_dims = {4, 15}},
    {.name = "Rescaling 1/127.5 - 1", .kind = "Rescaling",
     .config = "{\"scale\": 0.00784313725490196, \"offset\": -1.0}", IMG345, .seed = __LINE__},
    {.name = "Dropout rate 0.3", .kind = "Dropout", .config = "{\"rate\": 0.3}", IMG345,
     .seed = __LINE__},
    {.name = "Dropout rate 0", .kind = "Dropout", .config = "{\"rate\": 0.0}", IMG345,
     .seed = __LINE__},
    {.name = "GlobalAveragePooling2D", .kind = "GlobalAveragePooling2D", .config = "{}", IMG345,
     .seed = __LINE__, .out_rank = 1, .out_dims = {5}},
    {.name = "GlobalAveragePooling2D keepdims", .kind = "GlobalAveragePooling2D",
     .config = "{\"keepdims\": true}", IMG345, .seed = __LINE__, .out_rank = 3,
     .out_dims = {1, 1, 5}},
    {.name = "GlobalMaxPooling2D", .kind = "GlobalMaxPooling2D", .config = "{}", IMG345,
     .seed = __LINE__, .distinct = 1, .h = 1.0 / 256, .out_rank = 1, .out_dims = {5}},
    {.name = "GlobalMaxPooling2D keepdims", .kind = "GlobalMaxPooling2D",
     .config = "{\"keepdims\": true}", IMG345, .seed = __LINE__, .distinct = 1, .h = 1.0 / 256,
     .out_rank = 3, .out_dims = {1, 1, 5}},

    /* Convolutions and pooling: checked once their backward exists. */
    {.name = "Conv2D 3x3 same stride 1", .kind = "Conv2D",
     .config = "{\"filters\": 4, \"kernel_size\": [3, 3], \"padding\": \"same\"}", .rank = 3,
     .dims = {{5, 6, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3, .out_dims = {5, 6, 4}},
    {.name = "Conv2D 3x3 same stride 2, odd input", .kind = "Conv2D",
     .config = "{\"filters\": 3, \"kernel_size\": 3, \"strides\": 2, \"padding\": \"same\"}",
     .rank = 3, .dims = {{5, 7, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {3, 4, 3}},
    {.name = "Conv2D 3x3 same stride 2, even input", .kind = "Conv2D",
     .config = "{\"filters\": 3, \"kernel_size\": 3, \"strides\": 2, \"padding\": \"same\"}",
     .rank = 3, .dims = {{6, 4, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {3, 2, 3}},
    {.name = "Conv2D 2x2 valid stride 2", .kind = "Conv2D",
     .config = "{\"filters\": 2, \"kernel_size\": 2, \"strides\": 2, \"padding\": \"valid\"}",
     .rank = 3, .dims = {{5, 6, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {2, 3, 2}},
    {.name = "Conv2D 3x3 dilation 2 valid", .kind = "Conv2D",
     .config = "{\"filters\": 3, \"kernel_size\": 3, \"dilation_rate\": 2}", .rank = 3,
     .dims = {{7, 6, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3, .out_dims = {3, 2, 3}},
    {.name = "Conv2D 3x3 dilation 2 same", .kind = "Conv2D",
     .config = "{\"filters\": 3, \"kernel_size\": 3, \"dilation_rate\": 2, "
               "\"padding\": \"same\"}",
     .rank = 3, .dims = {{5, 6, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {5, 6, 3}},
    {.name = "Conv2D 1x1 no bias, swish", .kind = "Conv2D",
     .config = "{\"filters\": 5, \"kernel_size\": 1, \"use_bias\": false, "
               "\"activation\": \"swish\"}",
     .rank = 3, .dims = {{4, 4, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {4, 4, 5}},
    {.name = "DepthwiseConv2D 3x3 same, depth_multiplier 2", .kind = "DepthwiseConv2D",
     .config = "{\"kernel_size\": 3, \"padding\": \"same\", \"depth_multiplier\": 2}",
     .rank = 3, .dims = {{5, 6, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {5, 6, 6}},
    {.name = "DepthwiseConv2D 3x3 same stride 2, odd input", .kind = "DepthwiseConv2D",
     .config = "{\"kernel_size\": 3, \"strides\": 2, \"padding\": \"same\"}", .rank = 3,
     .dims = {{5, 5, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3, .out_dims = {3, 3, 3}},
    {.name = "DepthwiseConv2D 3x3 same stride 2, even input, depth_multiplier 2",
     .kind = "DepthwiseConv2D",
     .config = "{\"kernel_size\": 3, \"strides\": 2, \"padding\": \"same\", "
               "\"depth_multiplier\": 2}",
     .rank = 3, .dims = {{6, 6, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {3, 3, 6}},
    {.name = "DepthwiseConv2D 3x3 dilation 2 same, depth_multiplier 2",
     .kind = "DepthwiseConv2D",
     .config = "{\"kernel_size\": 3, \"dilation_rate\": 2, \"padding\": \"same\", "
               "\"depth_multiplier\": 2, \"activation\": \"tanh\"}",
     .rank = 3, .dims = {{6, 5, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {6, 5, 4}},
    {.name = "SeparableConv2D 3x3 same stride 2, depth_multiplier 2", .kind = "SeparableConv2D",
     .config = "{\"filters\": 4, \"kernel_size\": 3, \"strides\": 2, \"padding\": \"same\", "
               "\"depth_multiplier\": 2}",
     .rank = 3, .dims = {{5, 6, 3}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {3, 3, 4}},
    {.name = "SeparableConv2D 3x3 dilation 2 same", .kind = "SeparableConv2D",
     .config = "{\"filters\": 3, \"kernel_size\": 3, \"dilation_rate\": 2, "
               "\"padding\": \"same\"}",
     .rank = 3, .dims = {{5, 5, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3,
     .out_dims = {5, 5, 3}},
    {.name = "MaxPooling2D 2x2 valid", .kind = "MaxPooling2D", .config = "{\"pool_size\": 2}",
     .rank = 3, .dims = {{4, 6, 3}}, .batch = 2, .seed = __LINE__, .distinct = 1,
     .h = 1.0 / 256, .out_rank = 3, .out_dims = {2, 3, 3}},
    {.name = "MaxPooling2D 3x3 same stride 2, odd input", .kind = "MaxPooling2D",
     .config = "{\"pool_size\": 3, \"strides\": 2, \"padding\": \"same\"}", .rank = 3,
     .dims = {{5, 5, 2}}, .batch = 2, .seed = __LINE__, .distinct = 1, .h = 1.0 / 256,
     .out_rank = 3, .out_dims = {3, 3, 2}},
    {.name = "MaxPooling2D 3x3 same stride 2, even input", .kind = "MaxPooling2D",
     .config = "{\"pool_size\": 3, \"strides\": 2, \"padding\": \"same\"}", .rank = 3,
     .dims = {{6, 6, 2}}, .batch = 2, .seed = __LINE__, .distinct = 1, .h = 1.0 / 256,
     .out_rank = 3, .out_dims = {3, 3, 2}},
    {.name = "AveragePooling2D 2x2 valid", .kind = "AveragePooling2D",
     .config = "{\"pool_size\": 2}", .rank = 3, .dims = {{4, 6, 3}}, .batch = 2,
     .seed = __LINE__, .out_rank = 3, .out_dims = {2, 3, 3}},
    {.name = "AveragePooling2D 3x3 same stride 2, odd input", .kind = "AveragePooling2D",
     .config = "{\"pool_size\": 3, \"strides\": 2, \"padding\": \"same\"}", .rank = 3,
     .dims = {{5, 5, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3, .out_dims = {3, 3, 2}},
    {.name = "AveragePooling2D 3x3 same stride 2, even input", .kind = "AveragePooling2D",
     .config = "{\"pool_size\": 3, \"strides\": 2, \"padding\": \"same\"}", .rank = 3,
     .dims = {{6, 6, 2}}, .batch = 2, .seed = __LINE__, .out_rank = 3, .out_dims = {3, 3, 2}},
};

/* ---- BatchNormalization's moving statistics -------------------------------- */

/* Batch-statistics mode normalises with the batch's mean and biased variance and
 * moves the moving statistics: new = old * momentum + batch * (1 - momentum), the
 * variance taking the unbiased batch variance; moving-statistics mode normalises
 * with them and leaves them alone. */
static void test_batch_norm_moving_statistics(void **state)
{
    static const struct {
        const char *config;
        double momentum, epsilon;
    } variants[] = {
        {"{\"momentum\": 0.9, \"epsilon\": 0.001}", 0.9, 1e-3},
        {"{}", 0.99, 1e-3}, /* Keras's defaults */
        {"{\"momentum\": 0.5, \"epsilon\": 0.01}", 0.5, 1e-2},
    };
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        gc_spec s = {.name = "BatchNormalization moving statistics",
                     .kind = "BatchNormalization", .config = variants[v].config, IMG345,
                     .seed = 77 + v, .lo = -1, .hi = 3};
        gc_run r;
        gc_setup(&r, &s);
        gc_fill(&r, 0);
        assert_int_equal(r.layer.n_weights, 4);
        int64_t ch = r.out.dim[r.out.rank - 1], rows = r.out_n / ch;
        const float *gamma = r.w_init[0], *beta = r.w_init[1], *mm0 = r.w_init[2],
                    *mv0 = r.w_init[3];
        const float *mm = r.layer.weights[2].data, *mv = r.layer.weights[3].data;
        const double mo = variants[v].momentum, eps = variants[v].epsilon;
        for (int bs = 1; bs >= 0; bs--) {
            r.batch_stats = bs;
            gc_forward(&r, 1);
            for (int64_t j = 0; j < ch; j++) {
                double mean = 0, var = 0;
                for (int64_t i = 0; i < rows; i++)
                    mean += r.x[0][i * ch + j];
                mean /= (double)rows;
                for (int64_t i = 0; i < rows; i++)
                    var += (r.x[0][i * ch + j] - mean) * (r.x[0][i * ch + j] - mean);
                var /= (double)rows;
                double want_mm = bs ? mm0[j] * mo + mean * (1 - mo) : mm0[j];
                double want_mv = bs ? mv0[j] * mo + var * rows / (rows - 1) * (1 - mo) : mv0[j];
                if (fabs(mm[j] - want_mm) > 2e-6 * fmax(1, fabs(want_mm)) ||
                    fabs(mv[j] - want_mv) > 2e-6 * fmax(1, fabs(want_mv)))
                    fail_msg("%s, batch_stats %d, channel %lld: moving mean %.9g variance %.9g, "
                             "expected %.9g %.9g (old %.9g %.9g, batch mean %.9g, biased "
                             "variance %.9g)",
                             variants[v].config, bs, (long long)j, mm[j], mv[j], want_mm,
                             want_mv, mm0[j], mv0[j], mean, var);
                double use_mean = bs ? mean : mm0[j], use_var = bs ? var : mv0[j];
                for (int64_t i = 0; i < rows; i++) {
                    double want = gamma[j] * (r.x[0][i * ch + j] - use_mean) /
                                      sqrt(use_var + eps) + beta[j];
                    double got = r.y[i * ch + j];
                    if (fabs(got - want) > 1e-5 * (1 + fabs(want)))
                        fail_msg("%s, batch_stats %d: output [%lld, %lld] %.9g, expected %.9g",
                                 variants[v].config, bs, (long long)i, (long long)j, got, want);
                }
            }
        }
        gc_teardown(&r);
    }
}

/* ---- Dropout ------------------------------------------------------------------- */

/* rate 0.5 keeps about half and scales the kept values by 2, backward applies the
 * same mask, another seed draws another mask, and outside training (or at rate 0)
 * Dropout is the identity. */
static void test_dropout_mask(void **state)
{
    gc_spec s = {.name = "Dropout rate 0.5", .kind = "Dropout", .config = "{\"rate\": 0.5}",
                 .rank = 3, .dims = {{10, 10, 10}}, .batch = 4, .seed = 5, .lo = 0.5, .hi = 1.5};
    gc_run r;
    gc_setup(&r, &s);
    gc_fill(&r, 0);
    int64_t n = r.out_n, kept = 0;
    gc_forward(&r, 1);
    assert_true(gc_guard_ok(r.y, n));
    for (int64_t i = 0; i < n; i++) {
        if (r.y[i] != 0.0f) {
            kept++;
            if (r.y[i] != 2.0f * r.x[0][i])
                fail_msg("kept value %lld is %.9g, expected 2 * %.9g", (long long)i, r.y[i],
                         r.x[0][i]);
        }
    }
    double fraction = (double)kept / (double)n;
    printf("  Dropout rate 0.5 kept %lld of %lld (%.4f)\n", (long long)kept, (long long)n,
           fraction);
    assert_true(fraction > 0.45 && fraction < 0.55); /* 4000 draws: sd 0.008 */

    float *dx = gc_guarded_new(n);
    float *d_in[1] = {dx};
    gc_backward(&r, d_in, NULL);
    assert_true(gc_guard_ok(dx, n));
    for (int64_t i = 0; i < n; i++)
        if (dx[i] != (r.y[i] != 0.0f ? 2.0f * r.R[i] : 0.0f))
            fail_msg("d_input %lld is %.9g with output %.9g and d_output %.9g", (long long)i,
                     dx[i], r.y[i], r.R[i]);
    gc_guarded_free(dx);

    /* another seed, another mask */
    float *first = gc_copy(r.y, n);
    graft__forward_args a = {.batch = s.batch, .n_inputs = 1,
                             .inputs = (const float *const *)r.x, .in_shapes = r.in,
                             .output = r.y, .out_shape = &r.out, .training = 1,
                             .seed = GC_FORWARD_SEED + 1};
    r.layer.ops->forward(&r.layer, &a);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++)
        differ += (first[i] != 0.0f) != (r.y[i] != 0.0f);
    free(first);
    assert_true(differ > n / 4); /* independent masks differ in half the places */

    /* inference: the identity, bit for bit */
    gc_forward(&r, 0);
    assert_memory_equal(r.y, r.x[0], sizeof(float) * (size_t)n);
    gc_teardown(&r);

    /* rate 0 in training: the identity too */
    s.config = "{\"rate\": 0.0}";
    gc_setup(&r, &s);
    gc_fill(&r, 0);
    gc_forward(&r, 1);
    assert_memory_equal(r.y, r.x[0], sizeof(float) * (size_t)n);
    gc_teardown(&r);
}

int main(void)
{
    enum { N_CASES = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[N_CASES + 2];
    for (int i = 0; i < N_CASES; i++)
        tests[i] = (struct CMUnitTest){.name = cases[i].name, .test_func = gc_case,
                                       .initial_state = (void *)&cases[i]};
    tests[N_CASES] = (struct CMUnitTest)cmocka_unit_test(test_batch_norm_moving_statistics);
    tests[N_CASES + 1] = (struct CMUnitTest)cmocka_unit_test(test_dropout_mask);
    return _cmocka_run_group_tests("layer_gradients", tests, N_CASES + 2, NULL, NULL);
}
