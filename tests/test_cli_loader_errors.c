/* Each way a model folder can be wrong gets exit status 1 from `graft inspect`
 * and one line on stderr naming the file and the problem. The bad models are
 * written by the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char root[256];

/* A one-Dense-layer functional model; the pieces a test wants wrong are parameters. */
static void write_model(const char *name, const char *layer_class, const char *units,
                        const char *manifest_shape, const char *shard_path, long shard_bytes,
                        int with_bias_weight)
{
    char dir[512], path[640];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/model.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"format\":\"layers-model\",\"modelTopology\":{\"model_config\":{\"class_name\":"
            "\"Model\",\"config\":{\"name\":\"m\",\"layers\":["
            "{\"name\":\"input_1\",\"class_name\":\"InputLayer\",\"config\":{\"batch_input_shape\":"
            "[null,4],\"name\":\"input_1\"},\"inbound_nodes\":[]},"
            "{\"name\":\"dense\",\"class_name\":\"%s\",\"config\":{\"name\":\"dense\",\"units\":%s,"
            "\"activation\":\"softmax\",\"use_bias\":true%s},\"inbound_nodes\":"
            "[[[\"input_1\",0,0,{}]]]}],"
            "\"input_layers\":[[\"input_1\",0,0]],\"output_layers\":[[\"dense\",0,0]]}}},"
            "\"weightsManifest\":[{\"paths\":[\"%s\"],\"weights\":["
            "{\"name\":\"dense/kernel\",\"shape\":%s,\"dtype\":\"float32\"}%s]}]}\n",
            layer_class, units,
            strcmp(layer_class, "Lambda") == 0 ? ",\"function\":\"lambda x: x\"" : "", shard_path,
            manifest_shape,
            with_bias_weight ? ",{\"name\":\"dense/bias\",\"shape\":[3],\"dtype\":\"float32\"}" : "");
    fclose(f);
    snprintf(path, sizeof path, "%s/w.bin", dir);
    f = fopen(path, "wb");
    assert_non_null(f);
    for (long i = 0; i < shard_bytes; i++)
        fputc((int)(i % 7), f);
    fclose(f);
}

/* Runs `graft inspect dir`, returns its exit status and its stderr in err. */
static int run_inspect(const char *dir, char *err, size_t size)
{
    const char *cli = getenv("GRAFT_CLI");
    assert_non_null(cli);
    char cmd[1024], err_path[512];
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", root);
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s' >/dev/null 2>'%s'", cli, dir, err_path);
    int status = system(cmd);
    FILE *f = fopen(err_path, "r");
    assert_non_null(f);
    size_t n = fread(err, 1, size - 1, f);
    err[n] = '\0';
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Exit 1, exactly one line, prefixed "graft: ", containing every expected piece. */
static void expect_refusal(const char *name, const char *piece1, const char *piece2)
{
    char dir[512], err[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    int status = run_inspect(dir, err, sizeof err);
    printf("    %s -> %s", name, err);
    assert_int_equal(status, 1);
    assert_true(strncmp(err, "graft: ", 7) == 0);
    char *newline = strchr(err, '\n');
    assert_non_null(newline);
    assert_true(newline[1] == '\0');
    assert_non_null(strstr(err, piece1));
    if (piece2)
        assert_non_null(strstr(err, piece2));
}

static int setup(void **state)
{
    snprintf(root, sizeof root, "/tmp/graft-loader-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

static void valid_model_loads(void **state)
{
    write_model("good", "Dense", "3", "[4,3]", "w.bin", 4 * 15, 1);
    char dir[512], err[4096];
    snprintf(dir, sizeof dir, "%s/good", root);
    assert_int_equal(run_inspect(dir, err, sizeof err), 0);
    assert_string_equal(err, "");
}

static void truncated_shard_is_refused(void **state)
{
    write_model("short_shard", "Dense", "3", "[4,3]", "w.bin", 4 * 15 - 5, 1);
    expect_refusal("short_shard", "short_shard/model.json", "shards hold 55 bytes but the manifest describes 60");
}

static void weight_shape_mismatch_is_refused(void **state)
{
    write_model("bad_shape", "Dense", "3", "[3,4]", "w.bin", 4 * 15, 1);
    expect_refusal("bad_shape", "bad_shape/model.json", "layer 'dense' weight 'kernel': the file has shape (3, 4), the layer needs (4, 3)");
}

static void missing_weight_is_refused(void **state)
{
    write_model("no_bias", "Dense", "3", "[4,3]", "w.bin", 4 * 12, 0);
    expect_refusal("no_bias", "no_bias/model.json", "missing weight 'dense/bias'");
}

static void unknown_layer_class_is_named(void **state)
{
    write_model("unknown", "FancyAttention", "3", "[4,3]", "w.bin", 4 * 15, 1);
    expect_refusal("unknown", "unknown/model.json", "unknown layer class 'FancyAttention'");
}

static void lambda_layer_is_refused(void **state)
{
    write_model("lambda", "Lambda", "3", "[4,3]", "w.bin", 4 * 15, 1);
    expect_refusal("lambda", "lambda/model.json", "never executes code from a model file");
}

static void shard_path_leaving_folder_is_refused(void **state)
{
    write_model("escape", "Dense", "3", "[4,3]", "../good/w.bin", 4 * 15, 1);
    expect_refusal("escape", "escape/model.json", "shard path '../good/w.bin' leaves the model folder");
}

static void absurd_shape_is_refused_before_allocating(void **state)
{
    write_model("absurd", "Dense", "3", "[4,3]", "w.bin", 4 * 15, 1);
    /* 2^40 units: refused while parsing, long before any weight is allocated. */
    char path[640];
    snprintf(path, sizeof path, "%s/absurd2", root);
    write_model("absurd2", "Dense", "1099511627776", "[4,1099511627776]", "w.bin", 4 * 15, 1);
    expect_refusal("absurd2", "absurd2/model.json", "units must be a positive integer");
    write_model("absurd3", "Dense", "3", "[4000000,3000000]", "w.bin", 4 * 15, 1);
    expect_refusal("absurd3", "absurd3/model.json", "absurd");
}

static void missing_folder_is_reported(void **state)
{
    char dir[512], err[4096];
    snprintf(dir, sizeof dir, "%s/does-not-exist", root);
    assert_int_equal(run_inspect(dir, err, sizeof err), 1);
    assert_non_null(strstr(err, "does-not-exist: No such file or directory"));
}

static void malformed_json_names_the_line(void **state)
{
    char dir[512], path[640];
    snprintf(dir, sizeof dir, "%s/broken_json", root);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/model.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"modelTopology\":\n  {\"model_config\": [1, 2,\n", f);
    fclose(f);
    expect_refusal("broken_json", "broken_json/model.json: line 3", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_model_loads),
        cmocka_unit_test(truncated_shard_is_refused),
        cmocka_unit_test(weight_shape_mismatch_is_refused),
        cmocka_unit_test(missing_weight_is_refused),
        cmocka_unit_test(unknown_layer_class_is_named),
        cmocka_unit_test(lambda_layer_is_refused),
        cmocka_unit_test(shard_path_leaving_folder_is_refused),
        cmocka_unit_test(absurd_shape_is_refused_before_allocating),
        cmocka_unit_test(missing_folder_is_reported),
        cmocka_unit_test(malformed_json_names_the_line),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
