/* graft train end to end on a small image folder the test writes: the output
 * folder is complete and consistent, TF.js loads the saved model and reproduces
 * graft's predictions, and bad usage gets a clear message and exit status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "graft.h"

enum { CLASSES = 3, PER_CLASS = 10, SIDE = 48, NET = 64 };
static const char *const class_names[CLASSES] = {"circles", "squares", "stripes"};
static char root[64], data[128], out[128];

static void write_image(const char *path, int cls, int k)
{
    unsigned char px[SIDE * SIDE * 3];
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            int on = cls == 0   ? (x - 24) * (x - 24) + (y - 24) * (y - 24) < (10 + k) * (10 + k)
                     : cls == 1 ? abs(x - 24) < 8 + k && abs(y - 24) < 8 + k
                                : ((x + k) / 4) % 2;
            unsigned char *p = px + 3 * (y * SIDE + x);
            p[0] = (unsigned char)(on ? 220 - 5 * k : 20 + 3 * k);
            p[1] = (unsigned char)(on ? 60 + 10 * cls : 200);
            p[2] = (unsigned char)(40 * cls + 2 * k);
        }
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = img.height = SIDE;
    img.format = PNG_FORMAT_RGB;
    assert_true(png_image_write_to_file(&img, path, 0, px, 0, NULL));
}

static int run(const char *args, char *err, size_t size)
{
    char cmd[4096], err_path[256];
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", root);
    snprintf(cmd, sizeof cmd, "'%s' %s > '%s/stdout.txt' 2>'%s'", getenv("GRAFT_CLI"), args, root,
             err_path);
    int status = system(cmd);
    FILE *f = fopen(err_path, "r");
    size_t n = f ? fread(err, 1, size - 1, f) : 0;
    err[n] = '\0';
    if (f)
        fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static json_t *load_json(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        fail_msg("%s: %s", path, e.text);
    return j;
}

static const char *train_args(void)
{
    static char args[1024];
    snprintf(args, sizeof args,
             "train '%s' -o '%s' --size %d --epochs 4 --fine-tune-epochs 2 --batch 8 "
             "--mixup 0.2 --cutmix 0.5 --augment flip --cache-views 2 --seed 3 --threads 2",
             data, out, NET);
    return args;
}

/* The model's predictions on every image, through graft and through TF.js
 * (loading model_dir), agree within 1e-4. */
static void tfjs_reproduces(graft_model *m, const char *model_dir)
{
    /* The model's predictions on every image, through graft and through TF.js. */
    int n = CLASSES * PER_CLASS;
    float *x = malloc(sizeof(float) * (size_t)n * NET * NET * 3), probs[CLASSES * PER_CLASS * CLASSES];
    for (int c = 0, i = 0; c < CLASSES; c++)
        for (int k = 0; k < PER_CLASS; k++, i++) {
            char path[512];
            snprintf(path, sizeof path, "%s/%s/%d.png", data, class_names[c], k);
            assert_int_equal(graft_image_load(path, NET, NET, GRAFT_RESIZE_STRETCH,
                                              GRAFT_PREPROCESS_MOBILENET, x + (size_t)i * NET * NET * 3),
                             GRAFT_OK);
        }
    assert_int_equal(graft_model_forward(m, x, n, probs), GRAFT_OK);
    char input[256], cmd[2048], ref_path[256];
    snprintf(input, sizeof input, "%s/input.bin", root);
    FILE *f = fopen(input, "wb");
    fwrite(x, sizeof(float), (size_t)n * NET * NET * 3, f);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "node '%s/tests/node/tfjs_reference.js' --model '%s' --input '%s' --input-shape "
             "%d,%d,%d,3 --out '%s/tfjs' > '%s/tfjs.log' 2>&1",
             GRAFT_SOURCE_DIR, model_dir, input, n, NET, NET, root, root);
    if (system(cmd) != 0)
        fail_msg("TF.js failed on the trained model; see %s/tfjs.log", root);
    snprintf(ref_path, sizeof ref_path, "%s/tfjs/output.bin", root);
    f = fopen(ref_path, "rb");
    float ref[CLASSES * PER_CLASS * CLASSES];
    assert_int_equal(fread(ref, sizeof(float), (size_t)n * CLASSES, f), (size_t)n * CLASSES);
    fclose(f);
    double max_diff = 0.0;
    for (int i = 0; i < n * CLASSES; i++)
        max_diff = fmax(max_diff, fabs(ref[i] - probs[i]));
    printf("    trained model: graft vs TF.js max|diff| %.3g over %d images\n", max_diff, n);
    assert_true(max_diff <= 1e-4);
    free(x);
}

static void train_writes_a_consistent_folder_tfjs_reproduces(void **state)
{
    char err[4096];
    int status = run(train_args(), err, sizeof err);
    if (status != 0)
        fail_msg("graft train exited %d: %s", status, err);
    const char *files[] = {"model.json", "labels.txt", "metrics.json", "config.json", "report.html"};
    for (int i = 0; i < 5; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        assert_int_equal(access(path, F_OK), 0);
    }
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(out, &m), GRAFT_OK);
    assert_int_equal(graft_model_output_size(m), CLASSES);
    for (int c = 0; c < CLASSES; c++)
        assert_string_equal(graft_model_label(m, c), class_names[c]);
    json_t *metrics = load_json(out, "metrics.json"), *config = load_json(out, "config.json");
    json_t *history = json_object_get(metrics, "history");
    int first2 = (int)json_integer_value(json_object_get(metrics, "phase2_first_epoch"));
    assert_true(json_array_size(history) >= 2 && first2 >= 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(history, (size_t)first2),
                                                        "phase")), 2);
    json_t *val = json_object_get(metrics, "val");
    assert_int_equal(json_array_size(json_object_get(val, "confusion")), CLASSES);
    assert_int_equal(json_integer_value(json_object_get(config, "seed")), 3);
    /* set before --augment, still there after it */
    assert_true(json_real_value(json_object_get(config, "mixup")) == 0.2);
    assert_true(json_real_value(json_object_get(config, "cutmix")) == 0.5);
    assert_true(json_is_true(json_object_get(json_object_get(config, "augment"), "flip")));
    assert_string_equal(json_string_value(json_object_get(config, "cut")), "out_relu");

    tfjs_reproduces(m, out);
    json_decref(metrics);
    json_decref(config);
    graft_model_free(m);
}

static void read_stdout(char *text, size_t size)
{
    char path[256];
    snprintf(path, sizeof path, "%s/stdout.txt", root);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, size - 1, f);
    text[n] = '\0';
    fclose(f);
}

/* One of --auto's choices in config.json: its value's JSON type and a reason. */
static json_t *auto_choice(json_t *config, const char *key)
{
    json_t *choice = json_object_get(json_object_get(config, "auto_choices"), key);
    if (!choice)
        fail_msg("config.json has no auto_choices.%s", key);
    const char *reason = json_string_value(json_object_get(choice, "reason"));
    assert_non_null(reason);
    assert_true(strlen(reason) > 20);
    return json_object_get(choice, "value");
}

/* --auto on a tiny set: nothing is held out, the cut comes from LogME, the head is
 * the linear probe, fine-tuning is skipped; every choice is printed with its
 * reason and kept in config.json. With a holdout asked for, the set is too small
 * to fine-tune. */
static void auto_on_a_tiny_set_skips_fine_tuning_and_says_why(void **state)
{
    char err[4096], args[1024], auto_out[200], text[16384];
    snprintf(auto_out, sizeof auto_out, "%s/auto", root);
    snprintf(args, sizeof args, "train '%s' -o '%s' --size %d --auto", data, auto_out, NET);
    int status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft train --auto exited %d: %s", status, err);
    read_stdout(text, sizeof text);
    assert_non_null(strstr(text, "auto: no validation split: with 10 images per class"));
    assert_non_null(strstr(text, "auto: cut at "));
    assert_non_null(strstr(text, "best LogME"));
    assert_non_null(strstr(text, "auto: phase 1 fits the head by L-BFGS"));
    assert_non_null(strstr(text, "auto: head: "));
    assert_non_null(strstr(text, "auto: no fine-tuning: no validation images"));
    assert_non_null(strstr(text, "phase 1 linear probe (L-BFGS)"));
    json_t *config = load_json(auto_out, "config.json"), *metrics = load_json(auto_out, "metrics.json");
    assert_true(json_is_false(json_object_get(config, "fine_tune")));
    assert_true(json_is_true(json_object_get(config, "auto")));
    assert_true(json_is_true(json_object_get(config, "linear_probe")));
    assert_true(json_real_value(json_object_get(config, "linear_probe_l2")) > 0);
    assert_true(json_real_value(json_object_get(config, "val_split")) == 0.0);
    assert_true(json_real_value(auto_choice(config, "val_split")) == 0.0);
    assert_string_equal(json_string_value(auto_choice(config, "cut")),
                        json_string_value(json_object_get(config, "cut")));
    assert_true(json_is_true(auto_choice(config, "linear_probe")));
    assert_true(json_integer_value(auto_choice(config, "head_grid")) >= 1);
    assert_true(json_is_false(auto_choice(config, "fine_tune")));
    assert_int_equal(json_integer_value(json_object_get(metrics, "phase2_first_epoch")), -1);
    assert_int_equal(json_array_size(json_object_get(metrics, "history")), 1);
    json_decref(config);
    json_decref(metrics);

    snprintf(args, sizeof args, "train '%s' -o '%s' --size %d --auto --val-split 0.2 --force "
             "--head-grid 2", data, auto_out, NET);
    status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft train --auto --val-split 0.2 exited %d: %s", status, err);
    read_stdout(text, sizeof text);
    assert_null(strstr(text, "auto: no validation split"));
    assert_non_null(strstr(text, "auto: no fine-tuning: 8 images per class (median) is too few"));
    config = load_json(auto_out, "config.json");
    assert_true(json_real_value(json_object_get(config, "val_split")) == 0.2);
    assert_true(json_is_false(auto_choice(config, "fine_tune")));
    assert_int_equal(json_integer_value(json_object_get(config, "head_grid")), 2);
    assert_null(json_object_get(json_object_get(config, "auto_choices"), "head_grid"));
    json_decref(config);
    /* A --cut given with --auto is kept, or refused when it is no candidate. */
    snprintf(args, sizeof args, "train '%s' -o '%s' --size %d --auto --cut block_1_expand "
             "--force", data, auto_out, NET);
    assert_int_equal(run(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "--cut block_1_expand is not one of the"));
    /* The grid head (AveragePooling2D, Flatten) as TF.js reads it. */
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(auto_out, &m), GRAFT_OK);
    tfjs_reproduces(m, auto_out);
    graft_model_free(m);
}

/* --auto with a holdout and 25 images per class fine-tunes, from the first
 * convolution of the block below the cut's block (an *_expand layer, or the stem's
 * Conv1 below the first block; never the merge that ends a block), and says so. */
static void auto_with_validation_fine_tunes_from_a_block_start(void **state)
{
    char err[4096], args[1024], big[200], auto_out[200], text[16384];
    snprintf(big, sizeof big, "%s/big", root);
    mkdir(big, 0755);
    for (int c = 0; c < CLASSES; c++) {
        char dir[256], path[512];
        snprintf(dir, sizeof dir, "%s/%s", big, class_names[c]);
        mkdir(dir, 0755);
        for (int k = 0; k < 25; k++) {
            snprintf(path, sizeof path, "%s/%d.png", dir, k);
            write_image(path, c, k % 12);
        }
    }
    snprintf(auto_out, sizeof auto_out, "%s/auto_ft", root);
    snprintf(args, sizeof args, "train '%s' -o '%s' --size %d --auto --val-split 0.2 "
             "--fine-tune-epochs 1 --cache-views 1", big, auto_out, NET);
    int status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft train --auto --val-split 0.2 exited %d: %s", status, err);
    read_stdout(text, sizeof text);
    assert_non_null(strstr(text, "auto: fine-tune from "));
    json_t *config = load_json(auto_out, "config.json"), *metrics = load_json(auto_out, "metrics.json");
    const char *at = json_string_value(auto_choice(config, "fine_tune_at"));
    printf("    cut %s, fine-tune from %s\n", json_string_value(json_object_get(config, "cut")), at);
    assert_true(strstr(at, "_expand") || !strcmp(at, "Conv1")); /* Conv1: below block 1 */
    assert_null(strstr(at, "_add"));
    assert_true(json_is_true(json_object_get(config, "fine_tune")));
    assert_true(json_integer_value(json_object_get(metrics, "phase2_first_epoch")) >= 1);
    json_decref(config);
    json_decref(metrics);

    /* At a cut inside block 13, whose block below (12) is residual and ends in
     * block_12_add: fine-tuning starts at block_12_expand. */
    snprintf(args, sizeof args, "train '%s' -o '%s' --size %d --auto --val-split 0.2 --force "
             "--cut block_13_expand_relu --fine-tune-epochs 1 --cache-views 1", big, auto_out, NET);
    status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft train --auto --cut exited %d: %s", status, err);
    config = load_json(auto_out, "config.json");
    assert_string_equal(json_string_value(auto_choice(config, "fine_tune_at")), "block_12_expand");
    assert_string_equal(json_string_value(json_object_get(config, "cut")), "block_13_expand_relu");
    json_decref(config);
}

/* predict reads graft's own folder: labels by name, CSV with a header. */
static void predict_csv_names_the_classes(void **state)
{
    char err[4096], args[1024], path[256], line[512];
    snprintf(args, sizeof args, "predict '%s' '%s/circles/0.png' '%s/stripes/1.png' --csv --top 2",
             out, data, data);
    assert_int_equal(run(args, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/stdout.txt", root);
    FILE *f = fopen(path, "r");
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "file,rank,index,label,prob\n");
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        rows++;
        /* file,rank,index,label,prob: the label is the fourth field */
        char *field = line;
        for (int comma = 0; comma < 3; comma++)
            field = strchr(field, ',') + 1;
        *strchr(field, ',') = '\0';
        assert_true(!strcmp(field, "circles") || !strcmp(field, "squares") ||
                    !strcmp(field, "stripes"));
    }
    fclose(f);
    assert_int_equal(rows, 4);
}

/* OUT/config.json repeats the run: the same settings give the same weights. */
static void config_json_repeats_the_run_exactly(void **state)
{
    char err[4096], args[1024], again[256], a[512], b[512];
    snprintf(again, sizeof again, "%s/again", root);
    snprintf(args, sizeof args, "train '%s' -o '%s' --threads 2 --config '%s/config.json'", data,
             again, out);
    int status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft train --config exited %d: %s", status, err);
    snprintf(a, sizeof a, "cmp -s '%s/group1-shard1of3.bin' '%s/group1-shard1of3.bin' && "
             "cmp -s '%s/group1-shard3of3.bin' '%s/group1-shard3of3.bin'", out, again, out, again);
    assert_int_equal(system(a), 0);
    snprintf(b, sizeof b, "cmp -s '%s/config.json' '%s/config.json'", out, again);
    assert_int_equal(system(b), 0);
}

/* graft probe scores the named candidate layers and recommends one of them. */
static void probe_scores_named_layers(void **state)
{
    char err[4096], args[1024], path[256];
    snprintf(args, sizeof args,
             "probe '%s' --size %d --json --layers block_13_expand_relu,block_15_add,out_relu", data,
             NET);
    int status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft probe exited %d: %s", status, err);
    snprintf(path, sizeof path, "%s/stdout.txt", root);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    assert_non_null(j);
    json_t *rows = json_object_get(j, "candidates");
    assert_int_equal(json_array_size(rows), 3);
    for (size_t i = 1; i < 3; i++) /* ranked by LogME */
        assert_true(json_real_value(json_object_get(json_array_get(rows, i - 1), "logme")) >=
                    json_real_value(json_object_get(json_array_get(rows, i), "logme")));
    const char *best = json_string_value(json_object_get(j, "recommended_layer"));
    assert_true(!strcmp(best, "block_13_expand_relu") || !strcmp(best, "block_15_add") ||
                !strcmp(best, "out_relu"));
    double acc = json_real_value(json_object_get(j, "recommended_linear_accuracy"));
    printf("    probe recommends %s (linear probe %.3f)\n", best, acc);
    assert_true(acc > 0.5); /* three easy classes */
    json_decref(j);
    snprintf(args, sizeof args, "probe '%s' --layers no_such_layer", data);
    assert_int_equal(run(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "no_such_layer"));
}

/* --val-split leaves out what graft train would hold out: round(0.2 * 10) = 2 images
 * of each class, so 24 of the 30 are probed; a fraction outside [0, 1) is bad usage. */
static void probe_val_split_scores_the_training_part(void **state)
{
    char err[4096], args[1024], path[256], text[4096];
    snprintf(args, sizeof args, "probe '%s' --size %d --val-split 0.2 --seed 5 --layers "
             "block_3_project_BN", data, NET);
    int status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft probe --val-split exited %d: %s", status, err);
    snprintf(path, sizeof path, "%s/stdout.txt", root);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    assert_non_null(strstr(text, ": 24 images, 1 candidate layers"));
    snprintf(args, sizeof args, "probe '%s' --val-split 1", data);
    assert_int_equal(run(args, err, sizeof err), 2);
    assert_non_null(strstr(err, "--val-split"));
}

static void existing_out_needs_force_and_is_replaced_whole(void **state)
{
    char err[4096];
    assert_int_equal(run(train_args(), err, sizeof err), 2);
    assert_non_null(strstr(err, "--force"));
    char args[1200], marker[256];
    snprintf(marker, sizeof marker, "%s/stale-file", out);
    FILE *f = fopen(marker, "w");
    fclose(f);
    snprintf(args, sizeof args, "%s --force --no-fine-tune", train_args());
    int status = run(args, err, sizeof err);
    if (status != 0)
        fail_msg("graft train --force exited %d: %s", status, err);
    assert_int_equal(access(marker, F_OK), -1); /* a new folder, not a merge */
}

static void bad_usage_gets_message_and_status(void **state)
{
    char err[4096], args[1024], plain[256];
    assert_int_equal(run("train", err, sizeof err), 2);
    assert_non_null(strstr(err, "needs DATA"));
    snprintf(plain, sizeof plain, "%s/not-graft", root);
    mkdir(plain, 0755);
    snprintf(args, sizeof args, "train '%s' -o '%s'", data, plain);
    assert_int_equal(run(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "not a graft output folder"));
    snprintf(args, sizeof args, "train '%s' -o '%s/x' --size 64 --cut block_99_nothing", data, root);
    assert_int_equal(run(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "block_99_nothing"));
    const char *bad_mix[4] = {"--mixup -0.5", "--cutmix abc", "--mixup inf", "--cutmix"};
    for (int i = 0; i < 4; i++) {
        snprintf(args, sizeof args, "train '%s' -o '%s/m' %s", data, root, bad_mix[i]);
        assert_int_equal(run(args, err, sizeof err), 2);
        assert_non_null(strstr(err, strchr(bad_mix[i], ' ') ? "needs" : "needs a value"));
        assert_non_null(strstr(err, i % 2 ? "--cutmix" : "--mixup"));
    }
    snprintf(args, sizeof args, "train '%s/missing' -o '%s/y'", root, root);
    assert_int_equal(run(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "missing"));
    /* A validation source without one of the training classes. */
    char val[256], cmd[600];
    snprintf(val, sizeof val, "%s/val", root);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp -r '%s/circles' '%s/squares' '%s/'", val, data,
             data, val);
    assert_int_equal(system(cmd), 0);
    snprintf(args, sizeof args, "train '%s' -o '%s/z' --size 64 --val '%s'", data, root, val);
    assert_int_equal(run(args, err, sizeof err), 1);
    assert_non_null(strstr(err, "stripes"));
}

static int setup(void **state)
{
    snprintf(root, sizeof root, "/tmp/graft-cli-train-XXXXXX");
    if (!mkdtemp(root))
        return -1;
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(out, sizeof out, "%s/out", root);
    mkdir(data, 0755);
    for (int c = 0; c < CLASSES; c++) {
        char dir[256], path[512];
        snprintf(dir, sizeof dir, "%s/%s", data, class_names[c]);
        mkdir(dir, 0755);
        for (int k = 0; k < PER_CLASS; k++) {
            snprintf(path, sizeof path, "%s/%d.png", dir, k);
            write_image(path, c, k);
        }
    }
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(train_writes_a_consistent_folder_tfjs_reproduces),
        cmocka_unit_test(predict_csv_names_the_classes),
        cmocka_unit_test(auto_on_a_tiny_set_skips_fine_tuning_and_says_why),
        cmocka_unit_test(auto_with_validation_fine_tunes_from_a_block_start),
        cmocka_unit_test(config_json_repeats_the_run_exactly),
        cmocka_unit_test(probe_scores_named_layers),
        cmocka_unit_test(probe_val_split_scores_the_training_part),
        cmocka_unit_test(existing_out_needs_force_and_is_replaced_whole),
        cmocka_unit_test(bad_usage_gets_message_and_status),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
