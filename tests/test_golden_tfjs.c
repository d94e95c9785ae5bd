/* Golden tests: graft's outputs of the shipped pretrained models against
 * TensorFlow.js (CPU backend) on the same pseudo-random inputs. The reference is
 * computed in the test run by tests/node/tfjs_reference.js, never stored. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"

static float *read_floats(const char *path, size_t count)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    float *data = malloc(sizeof(float) * count);
    assert_non_null(data);
    assert_int_equal(fread(data, sizeof(float), count, f), count);
    assert_int_equal(fgetc(f), EOF);
    fclose(f);
    return data;
}

static size_t shape_count(const json_t *shape)
{
    size_t n = 1, i;
    const json_t *d;
    json_array_foreach(shape, i, d) n *= (size_t)json_integer_value(d);
    return n;
}

/* Runs the TF.js reference for `layers` into out_dir and returns its manifest. */
static json_t *run_reference(const char *model, const char *layers, const char *out_dir)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "node '%s/tests/node/tfjs_reference.js' --model '%s/models/%s' --out '%s' "
             "--layers %s --batch 2 --seed 7 > '%s.log' 2>&1",
             GRAFT_SOURCE_DIR, GRAFT_SOURCE_DIR, model, out_dir, layers, out_dir);
    int status = system(cmd);
    if (status != 0)
        fail_msg("TF.js reference failed (status %d); see %s.log. Did scripts/setup --test-deps "
                 "run?", status, out_dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", out_dir);
    json_error_t err;
    json_t *manifest = json_load_file(path, 0, &err);
    if (!manifest)
        fail_msg("%s: %s", path, err.text);
    return manifest;
}

/* max |graft - tfjs| <= 1e-4 * max(1, max |tfjs|), printed for the record. */
static void compare(const char *what, const float *got, const float *ref, size_t n)
{
    double max_ref = 0.0, max_diff = 0.0;
    for (size_t i = 0; i < n; i++) {
        max_ref = fmax(max_ref, fabs(ref[i]));
        max_diff = fmax(max_diff, fabs((double)got[i] - ref[i]));
    }
    double tol = 1e-4 * fmax(1.0, max_ref);
    printf("    %-28s n=%-9zu max|ref|=%-10.4g max|diff|=%-10.3g tol=%.3g\n", what, n, max_ref,
           max_diff, tol);
    if (!(max_diff <= tol))
        fail_msg("%s: max|diff| %g exceeds %g", what, max_diff, tol);
}

static void check_model(const char *model_name, const char *layers)
{
    char out_dir[4096], path[4096];
    snprintf(out_dir, sizeof out_dir, "%s/golden-%s", GRAFT_BINARY_DIR, model_name);
    json_t *manifest = run_reference(model_name, layers, out_dir);
    snprintf(path, sizeof path, "%s/models/%s", GRAFT_SOURCE_DIR, model_name);
    graft_model *model = NULL;
    if (graft_model_load(path, &model) != GRAFT_OK)
        fail_msg("%s", graft_last_error());

    const json_t *input = json_object_get(manifest, "input");
    int64_t batch = json_integer_value(json_object_get(manifest, "batch"));
    snprintf(path, sizeof path, "%s/%s", out_dir,
             json_string_value(json_object_get(input, "file")));
    float *x = read_floats(path, shape_count(json_object_get(input, "shape")));

    const json_t *outputs = json_object_get(manifest, "outputs");
    size_t n_out = json_array_size(outputs);
    const char *names[16];
    float *got[16], *refs[16], *final_got = NULL, *final_ref = NULL;
    size_t counts[16], final_count = 0;
    int n_layers = 0;
    for (size_t i = 0; i < n_out && i < 16; i++) {
        const json_t *o = json_array_get(outputs, i);
        const char *name = json_string_value(json_object_get(o, "name"));
        size_t count = shape_count(json_object_get(o, "shape"));
        snprintf(path, sizeof path, "%s/%s", out_dir, json_string_value(json_object_get(o, "file")));
        if (strcmp(name, "__output__") == 0) {
            final_ref = read_floats(path, count);
            final_got = calloc(count, sizeof(float));
            final_count = count;
            continue;
        }
        names[n_layers] = name;
        counts[n_layers] = count;
        refs[n_layers] = read_floats(path, count);
        got[n_layers] = calloc(count, sizeof(float));
        n_layers++;
    }
    assert_non_null(final_ref);
    assert_int_equal(final_count, (size_t)batch * (size_t)graft_model_output_size(model));
    if (graft_model_forward_layers(model, x, batch, n_layers, names, got, final_got) != GRAFT_OK)
        fail_msg("%s", graft_last_error());
    printf("  %s (batch %lld)\n", model_name, (long long)batch);
    for (int i = 0; i < n_layers; i++) {
        compare(names[i], got[i], refs[i], counts[i]);
        free(got[i]);
        free(refs[i]);
    }
    compare("final output", final_got, final_ref, final_count);
    free(final_got);
    free(final_ref);
    free(x);
    graft_model_free(model);
    json_decref(manifest);
}

static void mobilenet_v2_matches_tfjs(void **state)
{
    check_model("mobilenet_v2", "block_10_project_BN,block_13_expand_relu,out_relu");
}

static void inception_v3_matches_tfjs(void **state)
{
    check_model("inception_v3", "mixed2,mixed9_0,mixed10");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mobilenet_v2_matches_tfjs),
        cmocka_unit_test(inception_v3_matches_tfjs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
