/* graft predict: classify images with a model, top-k as text or JSON lines. */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "graft.h"

static const char help[] =
    "usage: graft predict MODEL_DIR IMAGE|DIR... [options]\n"
    "\n"
    "Classifies JPEG and PNG images (folders are searched recursively for .jpg, .jpeg\n"
    "and .png) and prints the most probable classes of each.\n"
    "\n"
    "options:\n"
    "  --top K                 classes to show per image (default 3)\n"
    "  --csv                   CSV: a header, then file,rank,index,label,prob per class shown\n"
    "  --json                  one JSON object per line and image:\n"
    "                          {\"file\": ..., \"top\": [{\"index\": i, \"label\": ..., \"prob\": p}]}\n"
    "  --preprocess MODE       mobilenet (default), inception, torch, caffe or none, with\n"
    "                          the keras.applications meanings, or unit (x/255, as\n"
    "                          nsfwjs feeds the bundled models)\n"
    "  --resize MODE           stretch (default), crop or pad to the model's input size\n"
    "  --batch N               images per forward pass (default 16)\n"
    "  --threads N             compute threads (default: all cores)\n"
    "  -h, --help              show this help\n"
    "\n"
    "Labels come from labels.txt beside model.json; without it the class index is shown.\n"
    "A model whose output is not already a probability distribution gets a softmax.\n"
    "exit status: 0 success, 1 a model or image could not be read, 2 bad usage\n";

typedef struct predict_options {
    long top, batch, threads;
    int json, csv;
    graft_preprocess preprocess;
    graft_resize_mode resize;
    const char *model_path;
    char **images;
    int n_images, cap_images;
} predict_options;

static int add_image(predict_options *o, const char *path)
{
    if (o->n_images == o->cap_images) {
        int cap = o->cap_images ? 2 * o->cap_images : 64;
        char **grown = realloc(o->images, sizeof(char *) * (size_t)cap);
        if (!grown)
            return 0;
        o->images = grown;
        o->cap_images = cap;
    }
    return (o->images[o->n_images++] = strdup(path)) != NULL;
}

static int has_image_extension(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds the image files below dir in name order; returns 0 when dir cannot be read. */
static int add_directory(predict_options *o, const char *dir)
{
    struct dirent **entries = NULL;
    int n = scandir(dir, &entries, NULL, NULL);
    if (n < 0)
        return 0;
    char **names = calloc((size_t)n + 1, sizeof *names);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (names && entries[i]->d_name[0] != '.')
            names[k++] = strdup(entries[i]->d_name);
        free(entries[i]);
    }
    free(entries);
    if (!names)
        return 0;
    qsort(names, (size_t)k, sizeof *names, compare_names);
    int ok = 1;
    for (int i = 0; i < k; i++) {
        char path[4096];
        struct stat st;
        if (names[i] && snprintf(path, sizeof path, "%s/%s", dir, names[i]) < (int)sizeof path &&
            stat(path, &st) == 0) {
            if (S_ISDIR(st.st_mode))
                ok = add_directory(o, path) && ok;
            else if (has_image_extension(names[i]))
                ok = add_image(o, path) && ok;
        }
        free(names[i]);
    }
    free(names);
    return ok;
}

static int parse_args(int argc, char **argv, predict_options *o)
{
    *o = (predict_options){.top = 3, .batch = 16};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return -1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--csv")) {
            o->csv = 1;
        } else if (!strcmp(a, "--top")) {
            if (!cli_parse_positive(a, value, &o->top) || o->top < 1)
                return CLI_BAD_USAGE;
            i++;
        } else if (!strcmp(a, "--batch")) {
            if (!cli_parse_positive(a, value, &o->batch) || o->batch < 1)
                return CLI_BAD_USAGE;
            i++;
        } else if (!strcmp(a, "--threads")) {
            if (!cli_parse_positive(a, value, &o->threads))
                return CLI_BAD_USAGE;
            i++;
        } else if (!strcmp(a, "--preprocess")) {
            if (!value || graft_preprocess_parse(value, &o->preprocess) != GRAFT_OK) {
                cli_error("--preprocess: %s", value ? graft_last_error() : "needs a mode");
                return CLI_BAD_USAGE;
            }
            i++;
        } else if (!strcmp(a, "--resize")) {
            if (!value || graft_resize_mode_parse(value, &o->resize) != GRAFT_OK) {
                cli_error("--resize: %s", value ? graft_last_error() : "needs a mode");
                return CLI_BAD_USAGE;
            }
            i++;
        } else if (a[0] == '-' && a[1]) {
            cli_error("predict: unknown option '%s' (see graft predict --help)", a);
            return CLI_BAD_USAGE;
        } else if (!o->model_path) {
            o->model_path = a;
        } else {
            struct stat st;
            int ok = stat(a, &st) == 0 && S_ISDIR(st.st_mode) ? add_directory(o, a) : add_image(o, a);
            if (!ok) {
                cli_error("%s: cannot read the folder", a);
                return CLI_BAD_INPUT;
            }
        }
    }
    if (!o->model_path || (o->n_images == 0 && argc > 0)) {
        if (!o->model_path || o->n_images == 0)
            cli_error("predict: needs MODEL_DIR and at least one image (see graft predict --help)");
        return CLI_BAD_USAGE;
    }
    return CLI_OK;
}

/* Softmax in place unless the row already is a probability distribution. */
static void to_probabilities(float *row, int64_t n)
{
    double sum = 0.0;
    int distribution = 1;
    for (int64_t j = 0; j < n; j++) {
        distribution &= row[j] >= 0.0f && row[j] <= 1.0f;
        sum += row[j];
    }
    if (distribution && fabs(sum - 1.0) < 1e-3)
        return;
    float max = row[0];
    for (int64_t j = 1; j < n; j++)
        max = row[j] > max ? row[j] : max;
    sum = 0.0;
    for (int64_t j = 0; j < n; j++)
        sum += (row[j] = expf(row[j] - max));
    for (int64_t j = 0; j < n; j++)
        row[j] = (float)(row[j] / sum);
}

/* Indices of the k largest values, largest first (ties: lower index first). */
static void top_k(const float *row, int64_t n, int64_t k, int64_t *out)
{
    for (int64_t t = 0; t < k; t++) {
        int64_t best = -1;
        for (int64_t j = 0; j < n; j++) {
            int taken = 0;
            for (int64_t u = 0; u < t; u++)
                taken |= out[u] == j;
            if (!taken && (best < 0 || row[j] > row[best]))
                best = j;
        }
        out[t] = best;
    }
}

/* RFC 4180: quote fields holding a comma, quote or line break; double quotes. */
static void csv_field(const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static void print_result(const graft_model *model, const predict_options *o, const char *file,
                         const float *row, int64_t n)
{
    int64_t k = o->top < n ? o->top : n, idx[64];
    if (k > 64)
        k = 64;
    top_k(row, n, k, idx);
    if (o->csv) {
        for (int64_t t = 0; t < k; t++) {
            const char *label = graft_model_label(model, idx[t]);
            csv_field(file);
            printf(",%lld,%lld,", (long long)(t + 1), (long long)idx[t]);
            if (label)
                csv_field(label);
            else
                printf("%lld", (long long)idx[t]);
            printf(",%.6f\n", row[idx[t]]);
        }
        return;
    }
    if (o->json) {
        json_t *top = json_array();
        for (int64_t t = 0; t < k; t++) {
            const char *label = graft_model_label(model, idx[t]);
            char index_text[32];
            snprintf(index_text, sizeof index_text, "%lld", (long long)idx[t]);
            json_array_append_new(top, json_pack("{s:I,s:s,s:f}", "index", (json_int_t)idx[t],
                                                 "label", label ? label : index_text, "prob",
                                                 (double)row[idx[t]]));
        }
        json_t *obj = json_pack("{s:s,s:o}", "file", file, "top", top);
        char *text = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(6));
        if (text)
            puts(text);
        free(text);
        json_decref(obj);
        return;
    }
    printf("%s\n", file);
    for (int64_t t = 0; t < k; t++) {
        const char *label = graft_model_label(model, idx[t]);
        if (label)
            printf("  %2lld. %-24s %7.4f\n", (long long)(t + 1), label, row[idx[t]]);
        else
            printf("  %2lld. class %-18lld %7.4f\n", (long long)(t + 1), (long long)idx[t],
                   row[idx[t]]);
    }
}

/* Loads, runs and prints images [first, first+count); returns the number that failed. */
static int run_batch(graft_model *model, const predict_options *o, int first, int count,
                     float *pixels, float *probs, int64_t sample, int64_t classes, int64_t h,
                     int64_t w)
{
    int failed = 0, ok[1024], n_ok = 0;
    for (int i = 0; i < count; i++) {
        const char *file = o->images[first + i];
        if (graft_image_load(file, h, w, o->resize, o->preprocess, pixels + n_ok * sample) != GRAFT_OK) {
            cli_error("%s", graft_last_error());
            failed++;
            continue;
        }
        ok[n_ok++] = first + i;
    }
    if (n_ok == 0)
        return failed;
    if (graft_model_forward(model, pixels, n_ok, probs) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        return failed + n_ok;
    }
    for (int i = 0; i < n_ok; i++) {
        to_probabilities(probs + i * classes, classes);
        print_result(model, o, o->images[ok[i]], probs + i * classes, classes);
    }
    fflush(stdout);
    return failed;
}

static int predict_all(graft_model *model, const predict_options *o)
{
    int64_t h, w, c;
    if (graft_model_input_size(model, &h, &w, &c) != GRAFT_OK || c != 3) {
        cli_error("%s", c != 3 ? "predict: the model does not take RGB images" : graft_last_error());
        return CLI_BAD_INPUT;
    }
    int64_t sample = h * w * c, classes = graft_model_output_size(model);
    if (o->csv)
        printf("file,rank,index,label,prob\n");
    long batch = o->batch < o->n_images ? o->batch : o->n_images;
    if (batch > 1024)
        batch = 1024;
    float *pixels = malloc(sizeof(float) * (size_t)(batch * sample));
    float *probs = malloc(sizeof(float) * (size_t)(batch * classes));
    int failed = 0;
    if (!pixels || !probs) {
        cli_error("out of memory for a batch of %ld images", batch);
        failed = 1;
    }
    for (int first = 0; pixels && probs && first < o->n_images; first += (int)batch) {
        int count = o->n_images - first < batch ? o->n_images - first : (int)batch;
        failed += run_batch(model, o, first, count, pixels, probs, sample, classes, h, w);
    }
    free(pixels);
    free(probs);
    return failed ? CLI_BAD_INPUT : CLI_OK;
}

int cli_predict(int argc, char **argv)
{
    predict_options o;
    int rc = parse_args(argc, argv, &o);
    if (rc == CLI_OK) {
        cli_set_threads(o.threads);
        graft_model *model = NULL;
        if (graft_model_load(o.model_path, &model) != GRAFT_OK) {
            cli_error("%s", graft_last_error());
            rc = CLI_BAD_INPUT;
        } else {
            rc = predict_all(model, &o);
        }
        graft_model_free(model);
    }
    for (int i = 0; i < o.n_images; i++)
        free(o.images[i]);
    free(o.images);
    return rc < 0 ? CLI_OK : rc;
}
