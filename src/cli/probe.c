/* graft probe: how well each candidate cut layer of a base transfers to DATA,
 * measured before training: globally pooled features from one forward pass,
 * scored by LogME (You et al. 2021) and by the cross-validated accuracy of a
 * regularised linear classifier. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "core/error.h"
#include "model/model.h"
#include "train/probe.h"

/* The linear probe's cross-validation is the slow part: it runs on the best
 * candidates by LogME only. */
enum { MAX_BASES = 8, LINEAR_TOP = 6, FOLDS = 3 };

static const char help[] =
    "usage: graft probe DATA [--base DIR]... [options]\n"
    "\n"
    "Scores candidate cut layers of each base on DATA before any training: each\n"
    "layer's output is globally average-pooled (all layers from one forward pass)\n"
    "and scored by LogME (log marginal evidence of a Bayesian linear model, per\n"
    "class, You et al. 2021) and, for the six best by LogME, by the 3-fold\n"
    "cross-validated accuracy of an L2-regularised softmax classifier (L-BFGS,\n"
    "penalty chosen by cross-validation). Prints a ranked table and a recommendation.\n"
    "\n"
    "  --base DIR              a base to probe (repeatable; default: the MobileNetV2)\n"
    "  --layers auto|L1,L2,... candidate layers (auto: block outputs, residual sums,\n"
    "                          expanded activations inside blocks, the final feature map)\n"
    "  --size S                image size (default: the base's input size)\n"
    "  --shots K               probe on K images per class drawn by --seed (default: all)\n"
    "  --seed N                (default 0)\n"
    "  --val-split F           probe only what graft train keeps for training after holding\n"
    "                          out F for validation with the same seed (default 0: all)\n"
    "  --preprocess MODE       (default mobilenet)\n"
    "  --threads N             (default: all cores)\n"
    "  --json                  one JSON object instead of the table\n";

#include "cli/probe.h"

static int is_kind(const graft__layer *l, const char *cls) { return !strcmp(l->ops->class_name, cls); }

/* Layers a transfer-learning cut is worth trying at. */
static int worth_cutting(const graft_model *m, int i, const char *default_cut)
{
    const graft__node *node = &m->nodes[i];
    if (node->shape.rank != 3 || node->shape.dim[0] < 2 || node->shape.dim[1] < 2)
        return 0;
    if (!strcmp(node->layer->name, default_cut))
        return 1;
    if (is_kind(node->layer, "Add") || is_kind(node->layer, "Concatenate"))
        return 1;
    for (int j = i + 1; j < m->n_nodes; j++)
        for (int k = 0; k < m->nodes[j].n_inputs; k++) {
            if (m->nodes[j].inputs[k] != i)
                continue;
            const graft__layer *next = m->nodes[j].layer;
            /* A block's output feeding the next block or a residual sum. */
            if (is_kind(node->layer, "BatchNormalization") &&
                (next->n_weights > 0 || is_kind(next, "Add")))
                return 1;
            /* The expanded activation inside an inverted-residual block. */
            if ((is_kind(node->layer, "ReLU") || is_kind(node->layer, "Activation")) &&
                (is_kind(next, "DepthwiseConv2D") || is_kind(next, "ZeroPadding2D")))
                return 1;
        }
    return 0;
}

int probe_candidates(const graft_model *m, const char *layers, candidate *out)
{
    int n = 0;
    if (layers && strcmp(layers, "auto") != 0) {
        char buf[4096];
        snprintf(buf, sizeof buf, "%s", layers);
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n < MAX_CANDIDATES;
             t = strtok_r(NULL, ",", &save)) {
            int idx = -1;
            for (int i = 0; i < m->n_nodes && idx < 0; i++)
                if (!strcmp(m->nodes[i].layer->name, t))
                    idx = i;
            if (idx < 0) {
                cli_error("probe: %s has no layer named '%s'", m->path, t);
                return -1;
            }
            out[n++] = (candidate){.node = idx, .layer = m->nodes[idx].layer->name};
        }
        return n;
    }
    char cut[128];
    if (graft_recipe_default_cut(m, cut, sizeof cut) != GRAFT_OK)
        cut[0] = '\0';
    int all[1024], k = 0;
    for (int i = 0; i < m->n_nodes && k < 1024; i++)
        if (worth_cutting(m, i, cut))
            all[k++] = i;
    /* Keep the deepest ones when there are too many. */
    for (int i = k > MAX_CANDIDATES ? k - MAX_CANDIDATES : 0; i < k; i++)
        out[n++] = (candidate){.node = all[i], .layer = m->nodes[all[i]].layer->name};
    return n;
}

/* One pass over the data: every candidate's output, pooled over H and W. */
graft_status probe_extract(graft_model *m, graft_dataset *ds, candidate *c, int nc, int32_t *labels)
{
    int64_t n = graft_dataset_count(ds), h, w, ch, batch = 32, idx[32];
    graft_model_input_size(m, &h, &w, &ch);
    const char *names[MAX_CANDIDATES];
    float *maps[MAX_CANDIDATES];
    graft_status rc = GRAFT_OK;
    float *x = malloc(sizeof(float) * (size_t)(batch * h * w * ch));
    for (int i = 0; i < nc; i++) {
        const graft__shape *s = &m->nodes[c[i].node].shape;
        c[i].dim = s->dim[2];
        names[i] = c[i].layer;
        maps[i] = malloc(sizeof(float) * (size_t)(batch * graft__shape_elems(s)));
        c[i].features = malloc(sizeof(float) * (size_t)(n * c[i].dim));
        if (!maps[i] || !c[i].features)
            rc = graft__fail(GRAFT_E_NOMEM, "out of memory for probe features");
    }
    for (int64_t first = 0; !rc && first < n; first += batch) {
        int64_t k = n - first < batch ? n - first : batch;
        for (int64_t i = 0; i < k; i++)
            idx[i] = first + i;
        rc = graft_dataset_load(ds, idx, k, NULL, 0, x, labels + first);
        if (!rc)
            rc = graft_model_forward_layers(m, x, k, nc, names, maps, NULL);
        for (int i = 0; !rc && i < nc; i++) {
            const graft__shape *s = &m->nodes[c[i].node].shape;
            int64_t hw = s->dim[0] * s->dim[1], d = c[i].dim;
            for (int64_t b = 0; b < k; b++)
                for (int64_t j = 0; j < d; j++) {
                    double sum = 0.0;
                    for (int64_t p = 0; p < hw; p++)
                        sum += maps[i][(b * hw + p) * d + j];
                    c[i].features[(first + b) * d + j] = (float)(sum / (double)hw);
                }
        }
    }
    for (int i = 0; i < nc; i++)
        free(maps[i]);
    free(x);
    return rc;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

static int by_logme(const void *a, const void *b)
{
    double x = ((const candidate *)a)->logme, y = ((const candidate *)b)->logme;
    return (x < y) - (x > y);
}

static graft_status score(candidate *c, int nc, const int32_t *labels, int64_t n, int64_t classes,
                          uint64_t seed)
{
    static const double grid[] = {1e-2, 1e-1, 1.0, 10.0};
    for (int i = 0; i < nc; i++) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        graft_status rc = graft__logme(c[i].features, labels, n, c[i].dim, classes, &c[i].logme);
        if (rc)
            return rc;
        c[i].seconds = seconds_since(&t0);
    }
    qsort(c, (size_t)nc, sizeof *c, by_logme);
    for (int i = 0; i < nc && i < LINEAR_TOP; i++) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        graft_status rc = graft__linear_probe_cv(c[i].features, labels, n, c[i].dim, classes, FOLDS,
                                                 grid, 4, seed, &c[i].l2, &c[i].accuracy);
        if (rc)
            return rc;
        c[i].has_accuracy = 1;
        c[i].seconds += seconds_since(&t0);
    }
    return GRAFT_OK;
}

typedef struct probe_options {
    const char *data, *bases[MAX_BASES], *layers;
    int n_bases, json;
    long size, shots, seed, threads;
    double val_split;
    graft_preprocess preprocess;
} probe_options;

static int parse(int argc, char **argv, probe_options *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return -1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--base") && v && o->n_bases < MAX_BASES) {
            o->bases[o->n_bases++] = argv[++i];
        } else if (!strcmp(a, "--layers") && v) {
            o->layers = argv[++i];
        } else if (!strcmp(a, "--preprocess") && v) {
            if (graft_preprocess_parse(argv[++i], &o->preprocess) != GRAFT_OK) {
                cli_error("--preprocess: %s", graft_last_error());
                return CLI_BAD_USAGE;
            }
        } else if (!strcmp(a, "--val-split") && v) {
            char *end = NULL;
            o->val_split = strtod(argv[++i], &end);
            if (*end || !(o->val_split >= 0.0 && o->val_split < 1.0)) {
                cli_error("--val-split needs a fraction in [0, 1), got '%s'", argv[i]);
                return CLI_BAD_USAGE;
            }
        } else if (!strcmp(a, "--size") || !strcmp(a, "--shots") || !strcmp(a, "--seed") ||
                   !strcmp(a, "--threads")) {
            long *dst = !strcmp(a, "--size") ? &o->size : !strcmp(a, "--shots") ? &o->shots
                        : !strcmp(a, "--seed") ? &o->seed : &o->threads;
            if (!cli_parse_positive(a, v, dst))
                return CLI_BAD_USAGE;
            i++;
        } else if (a[0] == '-' || o->data) {
            cli_error("probe: unexpected argument '%s' (see graft probe --help)", a);
            return CLI_BAD_USAGE;
        } else {
            o->data = a;
        }
    }
    if (!o->data) {
        cli_error("probe: needs DATA (see graft probe --help)");
        return CLI_BAD_USAGE;
    }
    if (o->n_bases == 0)
        o->bases[o->n_bases++] = default_base();
    return CLI_OK;
}

/* The images graft train would train on: --shots sampled as the demo samples
 * them, less the --val-split it would hold out (same seed, same split). */
static graft_status open_data(const probe_options *o, int64_t side, graft_dataset **all,
                              graft_dataset **used)
{
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = opts.width = side;
    opts.preprocess = o->preprocess;
    graft_dataset *sampled = NULL, *held_out = NULL;
    graft_status rc = graft_dataset_open(o->data, &opts, all);
    if (!rc && o->shots > 0)
        rc = graft_dataset_sample_per_class(*all, o->shots, (uint64_t)o->seed, &sampled);
    else if (!rc)
        sampled = *all;
    if (!rc && o->val_split > 0)
        rc = graft_dataset_split(sampled, o->val_split, (uint64_t)o->seed, used, &held_out);
    else if (!rc)
        *used = sampled;
    graft_dataset_free(held_out);
    if (sampled != *all && sampled != *used)
        graft_dataset_free(sampled);
    return rc;
}

/* Cuts at the deepest candidate so the base runs at any size, then probes. */
static int probe_base(const probe_options *o, const char *base, json_t *rows, candidate *best)
{
    graft_model *m = NULL;
    candidate c[MAX_CANDIDATES];
    memset(c, 0, sizeof c);
    int nc = 0, status = CLI_OK;
    graft_dataset *all = NULL, *ds = NULL;
    int32_t *labels = NULL;
    graft_status rc = graft_model_load(base, &m);
    if (!rc && (nc = probe_candidates(m, o->layers, c)) <= 0)
        rc = graft__fail(GRAFT_E_NOT_FOUND, "%s: no candidate layers", base);
    int deepest = 0;
    for (int i = 0; i < nc; i++)
        deepest = c[i].node > c[deepest].node ? i : deepest;
    char deep_name[256];
    if (!rc) {
        snprintf(deep_name, sizeof deep_name, "%s", c[deepest].layer);
        rc = graft_model_cut(m, deep_name);
    }
    if (!rc) /* node indices and names moved with the cut */
        nc = probe_candidates(m, o->layers, c);
    int64_t h = 0, w = 0, ch = 0;
    if (!rc)
        rc = graft_model_input_size(m, &h, &w, &ch);
    if (!rc && o->size > 0 && o->size != h)
        rc = graft_model_set_input_size(m, o->size, o->size);
    if (!rc)
        rc = open_data(o, o->size > 0 ? o->size : h, &all, &ds);
    int64_t n = rc ? 0 : graft_dataset_count(ds);
    if (!rc && !(labels = calloc((size_t)n, sizeof *labels)))
        rc = graft__fail(GRAFT_E_NOMEM, "out of memory");
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!rc)
        rc = probe_extract(m, ds, c, nc, labels);
    double extract_s = seconds_since(&t0);
    if (!rc)
        rc = score(c, nc, labels, n, graft_dataset_class_count(ds), (uint64_t)o->seed);
    if (rc) {
        cli_error("%s", graft_last_error());
        status = CLI_BAD_INPUT;
    } else {
        if (!o->json)
            printf("%s: %lld images, %d candidate layers, features in %.1f s\n", base,
                   (long long)n, nc, extract_s);
        for (int i = 0; i < nc; i++) {
            json_t *row = json_pack("{s:s,s:s,s:I,s:f,s:f}", "base", base, "layer", c[i].layer, "dim",
                                    (json_int_t)c[i].dim, "logme", c[i].logme, "seconds", c[i].seconds);
            if (c[i].has_accuracy) {
                json_object_set_new(row, "linear_accuracy", json_real(c[i].accuracy));
                json_object_set_new(row, "l2", json_real(c[i].l2));
                if (!best->layer || c[i].accuracy > best->accuracy) {
                    free((char *)best->layer);
                    *best = c[i];
                    best->features = NULL;
                    best->layer = strdup(c[i].layer);
                }
            }
            json_object_set_new(row, "features_seconds", json_real(extract_s));
            json_array_append_new(rows, row);
        }
    }
    for (int i = 0; i < nc; i++)
        free(c[i].features);
    free(labels);
    if (ds != all)
        graft_dataset_free(ds);
    graft_dataset_free(all);
    graft_model_free(m);
    return status;
}

static void print_table(json_t *rows)
{
    printf("%-30s %-28s %6s %10s %9s %8s\n", "base", "layer", "dim", "LogME", "linear", "seconds");
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        const char *base = json_string_value(json_object_get(r, "base"));
        const char *slash = strrchr(base, '/');
        printf("%-30s %-28s %6lld %10.4f ", slash ? slash + 1 : base,
               json_string_value(json_object_get(r, "layer")),
               (long long)json_integer_value(json_object_get(r, "dim")),
               json_real_value(json_object_get(r, "logme")));
        if (json_object_get(r, "linear_accuracy"))
            printf("%8.2f%% ", 100.0 * json_real_value(json_object_get(r, "linear_accuracy")));
        else
            printf("%9s ", "-");
        printf("%8.2f\n", json_real_value(json_object_get(r, "seconds")));
    }
}

int cli_probe(int argc, char **argv)
{
    probe_options o;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    if (o.threads > 0)
        graft_set_threads((int)o.threads);
    json_t *rows = json_array();
    candidate best = {0};
    int status = CLI_OK;
    for (int b = 0; b < o.n_bases && status == CLI_OK; b++)
        status = probe_base(&o, o.bases[b], rows, &best);
    if (status == CLI_OK) {
        if (o.json) {
            json_t *j = json_pack("{s:O,s:s,s:f}", "candidates", rows, "recommended_layer",
                                  best.layer ? best.layer : "", "recommended_linear_accuracy",
                                  best.accuracy);
            char *text = json_dumps(j, JSON_COMPACT);
            puts(text);
            free(text);
            json_decref(j);
        } else {
            print_table(rows);
            if (best.layer)
                printf("recommendation: cut at %s (linear probe %.2f%%, LogME %.4f): "
                       "graft train DATA --cut %s\n", best.layer, 100.0 * best.accuracy,
                       best.logme, best.layer);
        }
    }
    free((char *)best.layer);
    json_decref(rows);
    return status;
}
