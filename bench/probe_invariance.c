/* How much does LogME's ranking of cut layers depend on the scale of the
 * features? On the demo's data (Fashion-MNIST, K images per class drawn by seed,
 * 96x96, the 80% graft demo trains on) each candidate layer's pooled features are
 * scored by LogME raw (as graft probe does), after a global scale (exactly
 * invariant in theory: alpha absorbs it), after dividing each column by its
 * standard deviation, after full standardisation (centred too), and after
 * multiplying each column by a random factor in [0.1, 10] (log-uniform). Prints
 * each variant's scores and Kendall's tau-b between its ranking of the layers and
 * the raw one; --csv appends one row per (shots, seed, layer).
 *
 *   build/probe_invariance [--model models/mobilenet_v2] [--data DIR] [--shots 10,100]
 *                          [--seeds 0,1,2] [--layers L1,L2,...] [--csv FILE] [--threads 2]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "graft.h"
#include "model/model.h"
#include "train/probe.h"

enum { MAX_LAYERS = 32, VARIANTS = 5, BATCH = 32 };

static const char *const variant_names[VARIANTS] = {"raw", "global_x1000", "column_std",
                                                    "standardized", "column_random"};

typedef struct layer_features {
    const char *name;
    int node;
    int64_t hw, dim;
    float *pooled; /* (n, dim) */
    double logme[VARIANTS];
} layer_features;

static int find_node(const graft_model *m, const char *name)
{
    for (int i = 0; i < m->n_nodes; i++)
        if (!strcmp(m->nodes[i].layer->name, name))
            return i;
    return -1;
}

/* Every layer's output for every image, averaged over H and W. */
static graft_status extract(graft_model *m, graft_dataset *ds, layer_features *lf, int nl,
                            int32_t *labels)
{
    int64_t n = graft_dataset_count(ds), h, w, ch, idx[BATCH];
    graft_model_input_size(m, &h, &w, &ch);
    const char *names[MAX_LAYERS];
    float *maps[MAX_LAYERS] = {0};
    float *x = malloc(sizeof(float) * (size_t)(BATCH * h * w * ch));
    graft_status rc = x ? GRAFT_OK : GRAFT_E_NOMEM;
    for (int l = 0; l < nl; l++) {
        const graft__shape *s = &m->nodes[lf[l].node].shape;
        lf[l].hw = s->dim[0] * s->dim[1];
        lf[l].dim = s->dim[2];
        names[l] = lf[l].name;
        maps[l] = malloc(sizeof(float) * (size_t)(BATCH * lf[l].hw * lf[l].dim));
        lf[l].pooled = malloc(sizeof(float) * (size_t)(n * lf[l].dim));
        if (!maps[l] || !lf[l].pooled)
            rc = GRAFT_E_NOMEM;
    }
    for (int64_t first = 0; !rc && first < n; first += BATCH) {
        int64_t k = n - first < BATCH ? n - first : BATCH;
        for (int64_t i = 0; i < k; i++)
            idx[i] = first + i;
        rc = graft_dataset_load(ds, idx, k, NULL, 0, x, labels + first);
        if (!rc)
            rc = graft_model_forward_layers(m, x, k, nl, names, maps, NULL);
        for (int l = 0; !rc && l < nl; l++)
            for (int64_t b = 0; b < k; b++)
                for (int64_t j = 0; j < lf[l].dim; j++) {
                    double sum = 0;
                    for (int64_t p = 0; p < lf[l].hw; p++)
                        sum += maps[l][(b * lf[l].hw + p) * lf[l].dim + j];
                    lf[l].pooled[(first + b) * lf[l].dim + j] = (float)(sum / (double)lf[l].hw);
                }
    }
    for (int l = 0; l < nl; l++)
        free(maps[l]);
    free(x);
    return rc;
}

/* out = f transformed per column: x * scale[j] - shift[j]. */
static void transform(const float *f, int64_t n, int64_t d, const double *scale,
                      const double *shift, float *out)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            out[i * d + j] = (float)((double)f[i * d + j] * scale[j] - shift[j]);
}

static graft_status score_variants(layer_features *lf, const int32_t *labels, int64_t n,
                                   int64_t classes, uint64_t seed)
{
    const int64_t d = lf->dim;
    float *t = malloc(sizeof(float) * (size_t)(n * d));
    double *scale = malloc(sizeof(double) * (size_t)d), *shift = calloc((size_t)d, sizeof(double));
    double *mean = calloc((size_t)d, sizeof(double)), *sd = calloc((size_t)d, sizeof(double));
    graft_status rc = t && scale && shift && mean && sd ? GRAFT_OK : GRAFT_E_NOMEM;
    for (int64_t i = 0; !rc && i < n; i++)
        for (int64_t j = 0; j < d; j++)
            mean[j] += lf->pooled[i * d + j] / (double)n;
    for (int64_t i = 0; !rc && i < n; i++)
        for (int64_t j = 0; j < d; j++) {
            double e = lf->pooled[i * d + j] - mean[j];
            sd[j] += e * e / (double)n;
        }
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int v = 0; !rc && v < VARIANTS; v++) {
        for (int64_t j = 0; j < d; j++) {
            /* A constant column (block_11_expand_relu has one: 2.2855 on every image)
             * keeps its scale, as in the linear probe: its std is rounding noise. */
            const double s = sqrt(sd[j]) > 1e-12 * fmax(1.0, fabs(mean[j])) ? sqrt(sd[j]) : 1.0;
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            const double u = (double)(rng >> 11) / 9007199254740992.0;
            scale[j] = v == 0 ? 1.0 : v == 1 ? 1000.0 : v == 4 ? pow(10.0, 2.0 * u - 1.0) : 1.0 / s;
            shift[j] = v == 3 ? mean[j] / s : 0.0;
        }
        transform(lf->pooled, n, d, scale, shift, t);
        rc = graft__logme(t, labels, n, d, classes, &lf->logme[v]);
    }
    free(t);
    free(scale);
    free(shift);
    free(mean);
    free(sd);
    return rc;
}

static double kendall_tau_b(const double *x, const double *y, int n)
{
    long conc = 0, disc = 0, tx = 0, ty = 0, n0 = (long)n * (n - 1) / 2;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            const double dx = x[i] - x[j], dy = y[i] - y[j];
            tx += dx == 0;
            ty += dy == 0;
            conc += dx * dy > 0;
            disc += dx * dy < 0;
        }
    const double den = sqrt((double)(n0 - tx) * (double)(n0 - ty));
    return den > 0 ? (double)(conc - disc) / den : NAN;
}

typedef struct settings {
    const char *model, *data, *shots, *seeds, *layers, *csv;
    int threads;
} settings;

static int run_one(const settings *s, long shots, long seed, double tau_sum[VARIANTS])
{
    char layer_buf[4096];
    snprintf(layer_buf, sizeof layer_buf, "%s", s->layers);
    layer_features lf[MAX_LAYERS];
    memset(lf, 0, sizeof lf);
    int nl = 0;
    graft_model *m = NULL;
    graft_dataset *pool = NULL, *sampled = NULL, *train = NULL, *val = NULL;
    int32_t *labels = NULL;
    graft_status rc = graft_model_load(s->model, &m);
    for (char *save = NULL, *t = strtok_r(layer_buf, ",", &save); !rc && t && nl < MAX_LAYERS;
         t = strtok_r(NULL, ",", &save))
        lf[nl++].name = t;
    int deepest = -1;
    for (int l = 0; !rc && l < nl; l++) {
        int node = find_node(m, lf[l].name);
        if (node < 0) {
            fprintf(stderr, "probe_invariance: %s has no layer '%s'\n", s->model, lf[l].name);
            graft_model_free(m);
            return 1;
        }
        deepest = deepest < 0 || node > find_node(m, lf[deepest].name) ? l : deepest;
    }
    /* Cut at the deepest layer so the base runs at 96x96 whatever its head. */
    if (!rc)
        rc = graft_model_cut(m, lf[deepest].name);
    if (!rc)
        rc = graft_model_set_input_size(m, 96, 96);
    for (int l = 0; !rc && l < nl; l++)
        lf[l].node = find_node(m, lf[l].name);
    char path[4096];
    snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", s->data);
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = opts.width = 96;
    if (!rc)
        rc = graft_dataset_open(path, &opts, &pool);
    if (!rc)
        rc = graft_dataset_sample_per_class(pool, shots, (uint64_t)seed, &sampled);
    if (!rc) /* graft demo's default --val-split */
        rc = graft_dataset_split(sampled, 0.2, (uint64_t)seed, &train, &val);
    int64_t n = rc ? 0 : graft_dataset_count(train), classes = rc ? 0 : graft_dataset_class_count(train);
    if (!rc && !(labels = malloc(sizeof(int32_t) * (size_t)n)))
        rc = GRAFT_E_NOMEM;
    if (!rc)
        rc = extract(m, train, lf, nl, labels);
    for (int l = 0; !rc && l < nl; l++)
        rc = score_variants(&lf[l], labels, n, classes, (uint64_t)seed);
    if (!rc) {
        FILE *csv = s->csv ? fopen(s->csv, "a") : NULL;
        if (csv && ftell(csv) == 0) {
            fprintf(csv, "shots,seed,layer,dim");
            for (int v = 0; v < VARIANTS; v++)
                fprintf(csv, ",logme_%s", variant_names[v]);
            fprintf(csv, "\n");
        }
        printf("K=%ld seed %ld (%lld images)\n%-22s %5s", shots, seed, (long long)n, "layer", "dim");
        for (int v = 0; v < VARIANTS; v++)
            printf(" %14s", variant_names[v]);
        printf("\n");
        for (int l = 0; l < nl; l++) {
            printf("%-22s %5lld", lf[l].name, (long long)lf[l].dim);
            if (csv)
                fprintf(csv, "%ld,%ld,%s,%lld", shots, seed, lf[l].name, (long long)lf[l].dim);
            for (int v = 0; v < VARIANTS; v++) {
                printf(" %14.6f", lf[l].logme[v]);
                if (csv)
                    fprintf(csv, ",%.9f", lf[l].logme[v]);
            }
            printf("\n");
            if (csv)
                fprintf(csv, "\n");
        }
        if (csv)
            fclose(csv);
        double raw[MAX_LAYERS], var[MAX_LAYERS], max_global = 0;
        printf("%-28s", "tau-b vs raw ranking:");
        for (int v = 1; v < VARIANTS; v++) {
            for (int l = 0; l < nl; l++) {
                raw[l] = lf[l].logme[0];
                var[l] = lf[l].logme[v];
                if (v == 1)
                    max_global = fmax(max_global, fabs(var[l] - raw[l]));
            }
            const double tau = kendall_tau_b(raw, var, nl);
            tau_sum[v] += tau;
            printf(" %s %.3f", variant_names[v], tau);
        }
        printf("\nmax |LogME(1000 F) - LogME(F)| = %.3g\n\n", max_global);
    } else {
        fprintf(stderr, "probe_invariance: %s: %s\n", graft_status_str(rc), graft_last_error());
    }
    for (int l = 0; l < nl; l++)
        free(lf[l].pooled);
    free(labels);
    graft_dataset_free(train);
    graft_dataset_free(val);
    graft_dataset_free(sampled);
    graft_dataset_free(pool);
    graft_model_free(m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    settings s = {"models/mobilenet_v2", "/usr/share/datasets/fashion-mnist", "10,100", "0,1,2",
                  "block_3_project_BN,block_6_expand_relu,block_6_project_BN,block_8_add,"
                  "block_10_project_BN,block_11_expand_relu,block_12_add,block_13_expand_relu,"
                  "block_14_add,block_16_project_BN,out_relu",
                  NULL, 2};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--model")) s.model = v;
        else if (!strcmp(a, "--data")) s.data = v;
        else if (!strcmp(a, "--shots")) s.shots = v;
        else if (!strcmp(a, "--seeds")) s.seeds = v;
        else if (!strcmp(a, "--layers")) s.layers = v;
        else if (!strcmp(a, "--csv")) s.csv = v;
        else if (!strcmp(a, "--threads")) s.threads = atoi(v);
        else {
            fprintf(stderr, "probe_invariance: unknown option %s\n", a);
            return 2;
        }
    }
    graft_set_threads(s.threads);
    double tau_sum[VARIANTS] = {0};
    int runs = 0;
    char shots_buf[256], seeds_buf[256];
    snprintf(shots_buf, sizeof shots_buf, "%s", s.shots);
    for (char *sv = NULL, *k = strtok_r(shots_buf, ",", &sv); k; k = strtok_r(NULL, ",", &sv)) {
        snprintf(seeds_buf, sizeof seeds_buf, "%s", s.seeds);
        for (char *sv2 = NULL, *e = strtok_r(seeds_buf, ",", &sv2); e; e = strtok_r(NULL, ",", &sv2)) {
            if (run_one(&s, atol(k), atol(e), tau_sum))
                return 1;
            runs++;
        }
    }
    printf("mean tau-b vs raw over %d runs:", runs);
    for (int v = 1; v < VARIANTS; v++)
        printf(" %s %.3f", variant_names[v], tau_sum[v] / runs);
    printf("\n");
    return 0;
}
