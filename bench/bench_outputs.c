/* Writes graft's outputs of named layers for a given input, so bench/compare
 * can check that its peers (the PyTorch port, the ONNX export) compute the same
 * network before it compares their speed.
 *
 *   build/bench_outputs --input X.bin --batch N --layers out_relu,dense_3 --out DIR
 *                       [--model models/mobilenet_v2] [--threads 2]
 *
 * X.bin holds (N,H,W,C) float32 values in the machine's byte order; each layer's
 * output goes to DIR/<layer>.bin, (N, layer shape) float32, NHWC. One JSON line
 * on stdout gives every layer's per-sample shape.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"

#define MAX_LAYERS 8

static float *read_input(const char *path, size_t count)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_outputs: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    float *x = malloc(sizeof(float) * count);
    size_t got = x ? fread(x, sizeof(float), count, f) : 0;
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != count || extra) {
        fprintf(stderr, "bench_outputs: %s: expected exactly %zu float32 values\n", path, count);
        free(x);
        return NULL;
    }
    return x;
}

static int write_output(const char *dir, const char *name, const float *y, size_t count)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(y, sizeof(float), count, f) == count;
    if (f)
        ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "bench_outputs: %s: cannot write (%s)\n", path, strerror(errno));
        remove(tmp);
        return 0;
    }
    return 1;
}

/* Splits "a,b,c" in place into names; returns how many, or -1 when too many. */
static int split_names(char *list, char **names)
{
    int n = 0;
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        if (n == MAX_LAYERS)
            return -1;
        names[n++] = tok;
    }
    return n;
}

static int64_t layer_count(const graft_model *m, const char *name, char *shape, size_t size)
{
    graft_layer_info info;
    int index = graft_model_find_layer(m, name);
    if (index < 0 || graft_model_layer_info(m, index, &info) != GRAFT_OK)
        return -1;
    int64_t count = 1;
    size_t used = (size_t)snprintf(shape, size, "[");
    for (int k = 0; k < info.rank; k++) {
        count *= info.shape[k];
        used += (size_t)snprintf(shape + used, used < size ? size - used : 0, "%s%lld", k ? "," : "",
                                 (long long)info.shape[k]);
    }
    snprintf(shape + used, used < size ? size - used : 0, "]");
    return count;
}

int main(int argc, char **argv)
{
    const char *model_path = "models/mobilenet_v2", *input_path = NULL, *out_dir = NULL;
    char *layer_list = NULL;
    long batch = 1, threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--input"))
            input_path = argv[i + 1];
        else if (!strcmp(argv[i], "--out"))
            out_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--layers"))
            layer_list = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else {
            fprintf(stderr, "bench_outputs: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    char *names[MAX_LAYERS];
    int n_layers = layer_list ? split_names(layer_list, names) : 0;
    if (!input_path || !out_dir || n_layers < 1 || batch < 1 || batch > 4096) {
        fprintf(stderr, "bench_outputs: needs --input, --out, --layers (1 to %d) and a batch in "
                        "1..4096\n", MAX_LAYERS);
        return 2;
    }
    graft_set_threads((int)threads);
    graft_model *m = NULL;
    if (graft_model_load(model_path, &m) != GRAFT_OK) {
        fprintf(stderr, "bench_outputs: %s\n", graft_last_error());
        return 1;
    }
    int64_t h, w, c;
    graft_model_input_size(m, &h, &w, &c);
    float *x = read_input(input_path, (size_t)(batch * h * w * c));
    float *outputs[MAX_LAYERS] = {0};
    int64_t counts[MAX_LAYERS];
    char shapes[MAX_LAYERS][128];
    int rc = x ? 0 : 1;
    for (int k = 0; k < n_layers && !rc; k++) {
        counts[k] = layer_count(m, names[k], shapes[k], sizeof shapes[k]);
        if (counts[k] < 0) {
            fprintf(stderr, "bench_outputs: %s: no layer '%s'\n", model_path, names[k]);
            rc = 1;
        } else if (!(outputs[k] = malloc(sizeof(float) * (size_t)(batch * counts[k])))) {
            fprintf(stderr, "bench_outputs: out of memory\n");
            rc = 1;
        }
    }
    if (!rc && graft_model_forward_layers(m, x, batch, n_layers, (const char *const *)names,
                                          outputs, NULL) != GRAFT_OK) {
        fprintf(stderr, "bench_outputs: %s\n", graft_last_error());
        rc = 1;
    }
    for (int k = 0; k < n_layers && !rc; k++)
        rc = !write_output(out_dir, names[k], outputs[k], (size_t)(batch * counts[k]));
    if (!rc) {
        printf("{\"batch\":%ld", batch);
        for (int k = 0; k < n_layers; k++)
            printf(",\"%s\":%s", names[k], shapes[k]);
        printf("}\n");
    }
    for (int k = 0; k < n_layers; k++)
        free(outputs[k]);
    free(x);
    graft_model_free(m);
    return rc;
}
