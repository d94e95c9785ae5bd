/* Cutting the pretrained base, adding a new head and saving: the saved folder
 * loads back into graft with identical outputs, and TF.js loads it unchanged and
 * computes the same outputs. */
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
#include "model/model.h"

enum { BATCH = 2, MAX_SIZE = 224 * 224 * 3, CLASSES = 10 };

static char dir[64];

static graft_model *load(const char *path)
{
    graft_model *m = NULL;
    if (graft_model_load(path, &m) != GRAFT_OK)
        fail_msg("%s", graft_last_error());
    return m;
}

static float *input_batch(void)
{
    float *x = malloc(sizeof(float) * BATCH * MAX_SIZE);
    uint32_t s = 12345;
    for (int i = 0; i < BATCH * MAX_SIZE; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)(s >> 8) / 8388608.0f - 1.0f;
    }
    return x;
}

static void check_cut_save(int side)
{
    char base[512];
    snprintf(base, sizeof base, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = load(base);
    assert_int_equal(graft_model_cut(m, "block_13_expand_relu"), GRAFT_OK);
    if (side != 224) {
        assert_int_equal(graft_model_set_input_size(m, side, side), GRAFT_OK);
        graft_layer_info info;
        graft_model_layer_info(m, graft_model_find_layer(m, "block_13_expand_relu"), &info);
        assert_int_equal(info.shape[0], (side + 15) / 16);
    }
    assert_int_equal(graft_model_find_layer(m, "out_relu"), -1);
    assert_int_equal(graft_model_find_layer(m, "block_13_depthwise"), -1);
    assert_true(graft_model_find_layer(m, "block_13_expand_relu") >= 0);
    assert_int_equal(graft_model_add_classifier(m, CLASSES, 0.2, 7), GRAFT_OK);
    assert_int_equal(graft_model_output_size(m), CLASSES);
    const char *labels[CLASSES] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
    assert_int_equal(graft_model_set_labels(m, labels, CLASSES), GRAFT_OK);
    assert_int_equal(graft_model_save(m, dir), GRAFT_OK);

    float *x = input_batch();
    float before[BATCH * CLASSES], after[BATCH * CLASSES];
    assert_int_equal(graft_model_forward(m, x, BATCH, before), GRAFT_OK);
    graft_model *reloaded = load(dir);
    assert_int_equal(graft_model_forward(reloaded, x, BATCH, after), GRAFT_OK);
    assert_memory_equal(before, after, sizeof before);
    assert_string_equal(graft_model_label(reloaded, 9), "j");
    assert_int_equal(graft_model_layer_count(reloaded), graft_model_layer_count(m));

    char path[512], cmd[2048];
    snprintf(path, sizeof path, "%s/input.bin", dir);
    FILE *f = fopen(path, "wb");
    size_t count = (size_t)BATCH * side * side * 3;
    assert_int_equal(fwrite(x, sizeof(float), count, f), count);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "node '%s/tests/node/tfjs_reference.js' --model '%s' --input '%s' --input-shape "
             "%d,%d,%d,3 --out '%s/tfjs' > '%s/tfjs.log' 2>&1",
             GRAFT_SOURCE_DIR, dir, path, BATCH, side, side, dir, dir);
    if (system(cmd) != 0)
        fail_msg("TF.js could not load or run the saved model; see %s/tfjs.log", dir);
    snprintf(path, sizeof path, "%s/tfjs/output.bin", dir);
    f = fopen(path, "rb");
    float ref[BATCH * CLASSES];
    assert_int_equal(fread(ref, sizeof(float), BATCH * CLASSES, f), BATCH * CLASSES);
    fclose(f);
    double max_diff = 0.0;
    for (int i = 0; i < BATCH * CLASSES; i++)
        max_diff = fmax(max_diff, fabs(ref[i] - after[i]));
    printf("    saved model at %dx%d: graft vs TF.js max|diff| %.3g\n", side, side, max_diff);
    assert_true(max_diff <= 1e-4);
    free(x);
    graft_model_free(m);
    graft_model_free(reloaded);
}

static void cut_add_head_save_reload_matches_graft_and_tfjs(void **state)
{
    check_cut_save(224);
}

static void base_at_96x96_saves_and_matches_tfjs(void **state)
{
    check_cut_save(96);
}

static void dense_after_flatten_refuses_a_new_size(void **state)
{
    char base[512];
    snprintf(base, sizeof base, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = load(base);
    assert_int_equal(graft_model_set_input_size(m, 96, 96), GRAFT_E_SHAPE);
    assert_non_null(strstr(graft_last_error(), "96x96"));
    int64_t h, w, c;
    graft_model_input_size(m, &h, &w, &c);
    assert_int_equal(h, 224);
    assert_int_equal(graft_model_output_size(m), 5);
    graft_model_free(m);
}

static int trainable(graft_model *m, const char *name)
{
    graft_layer_info info;
    assert_int_equal(graft_model_layer_info(m, graft_model_find_layer(m, name), &info), GRAFT_OK);
    return info.trainable;
}

static void freezing_by_name_layers_and_blocks(void **state)
{
    char base[512];
    snprintf(base, sizeof base, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = load(base);
    assert_int_equal(graft_model_cut(m, "out_relu"), GRAFT_OK);
    /* Last block: after block_15_add, so block_16 and the final 1x1 conv. */
    assert_int_equal(graft_model_unfreeze_last_blocks(m, 1), GRAFT_OK);
    assert_true(trainable(m, "block_16_expand") && trainable(m, "Conv_1"));
    assert_false(trainable(m, "block_15_add") || trainable(m, "block_15_expand"));
    assert_int_equal(graft_model_unfreeze_last_blocks(m, 2), GRAFT_OK);
    assert_true(trainable(m, "block_15_expand") && trainable(m, "block_15_add"));
    assert_false(trainable(m, "block_14_add"));
    assert_int_equal(graft_model_unfreeze_last(m, 2), GRAFT_OK); /* Conv_1 and its BN */
    assert_true(trainable(m, "Conv_1") && trainable(m, "Conv_1_bn"));
    assert_false(trainable(m, "block_16_project_BN"));
    assert_int_equal(graft_model_unfreeze_from(m, "block_11_expand"), GRAFT_OK);
    assert_true(trainable(m, "block_11_expand") && trainable(m, "out_relu"));
    assert_false(trainable(m, "block_10_project_BN"));
    assert_int_equal(graft_model_unfreeze_from(m, "nope"), GRAFT_E_NOT_FOUND);
    graft_model_free(m);
}

/* --base random: Glorot-uniform kernels within their limit, identity BatchNorm. */
static void reinitialize_gives_keras_default_weights(void **state)
{
    char base[512];
    snprintf(base, sizeof base, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = load(base);
    float *x = input_batch(), before[BATCH * 5], after[BATCH * 5];
    assert_int_equal(graft_model_forward(m, x, BATCH, before), GRAFT_OK);
    assert_int_equal(graft_model_reinitialize(m, 1), GRAFT_OK);
    assert_int_equal(graft_model_forward(m, x, BATCH, after), GRAFT_OK);
    assert_true(memcmp(before, after, sizeof before) != 0);
    /* Conv_1: 1x1, 320 -> 1280: limit sqrt(6 / (320 + 1280)); uniform, so the
     * mean square is limit^2 / 3. */
    graft__layer *conv = graft__graph_find_layer(m, "Conv_1"), *bn = graft__graph_find_layer(m, "Conv_1_bn");
    double limit = sqrt(6.0 / (320 + 1280)), sq = 0.0;
    int64_t n = 320 * 1280;
    for (int64_t i = 0; i < n; i++) {
        assert_true(fabs(conv->weights[0].data[i]) <= limit);
        sq += (double)conv->weights[0].data[i] * conv->weights[0].data[i];
    }
    printf("    Conv_1 mean square %.4g, expected %.4g\n", sq / n, limit * limit / 3);
    assert_true(fabs(sq / n - limit * limit / 3) < 0.02 * limit * limit);
    for (int w = 0; w < bn->n_weights; w++)
        for (int64_t i = 0; i < 1280; i++)
            assert_true(bn->weights[w].data[i] ==
                        (!strcmp(bn->weights[w].name, "gamma") || !strcmp(bn->weights[w].name, "moving_variance") ? 1.0f : 0.0f));
    free(x);
    graft_model_free(m);
}

static void cut_at_unknown_layer_names_it(void **state)
{
    char base[512];
    snprintf(base, sizeof base, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = load(base);
    assert_int_equal(graft_model_cut(m, "block_99_nothing"), GRAFT_E_NOT_FOUND);
    assert_non_null(strstr(graft_last_error(), "block_99_nothing"));
    graft_model_free(m);
}

static void save_into_a_file_path_fails_cleanly(void **state)
{
    char base[512], file[128];
    snprintf(base, sizeof base, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    snprintf(file, sizeof file, "%s/plain-file", dir);
    FILE *f = fopen(file, "w");
    fclose(f);
    graft_model *m = load(base);
    assert_int_equal(graft_model_save(m, file), GRAFT_E_IO);
    assert_non_null(strstr(graft_last_error(), "plain-file"));
    graft_model_free(m);
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/graft-save-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cut_add_head_save_reload_matches_graft_and_tfjs),
        cmocka_unit_test(base_at_96x96_saves_and_matches_tfjs),
        cmocka_unit_test(dense_after_flatten_refuses_a_new_size),
        cmocka_unit_test(freezing_by_name_layers_and_blocks),
        cmocka_unit_test(reinitialize_gives_keras_default_weights),
        cmocka_unit_test(cut_at_unknown_layer_names_it),
        cmocka_unit_test(save_into_a_file_path_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
