/* Inference fusion (BatchNorm folded into the convolution before it, ReLU as its
 * epilogue, elementwise layers in place) changes nothing but rounding: the
 * fused plan and the plain one agree, and asking for a layer that fusion
 * overwrites (a convolution's raw output) still returns that layer's value. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "graft.h"

enum { BATCH = 3, SIDE = 96 };

static void fused_and_plain_plans_agree(void **state)
{
    char path[512];
    snprintf(path, sizeof path, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    graft_model *m = NULL;
    assert_int_equal(graft_model_load(path, &m), GRAFT_OK);
    assert_int_equal(graft_model_cut(m, "out_relu"), GRAFT_OK);
    assert_int_equal(graft_model_set_input_size(m, SIDE, SIDE), GRAFT_OK);
    int64_t n = (int64_t)BATCH * SIDE * SIDE * 3, out = BATCH * graft_model_output_size(m);
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        x[i] = sinf((float)i * 0.37f);
    float *fused = malloc(sizeof(float) * (size_t)out), *plain = malloc(sizeof(float) * (size_t)out);
    assert_int_equal(graft_model_forward(m, x, BATCH, fused), GRAFT_OK);
    /* Conv1 is the raw convolution that the fused plan folds bn_Conv1 into. */
    graft_layer_info info;
    graft_model_layer_info(m, graft_model_find_layer(m, "Conv1"), &info);
    int64_t conv_n = BATCH * info.shape[0] * info.shape[1] * info.shape[2];
    float *conv = malloc(sizeof(float) * (size_t)conv_n);
    const char *names[1] = {"Conv1"};
    float *outs[1] = {conv};
    assert_int_equal(graft_model_forward_layers(m, x, BATCH, 1, names, outs, plain), GRAFT_OK);
    double max_diff = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < out; i++) {
        max_diff = fmax(max_diff, fabs(fused[i] - plain[i]));
        max_ref = fmax(max_ref, fabs(plain[i]));
    }
    printf("    fused vs plain out_relu: max|diff| %.3g (max %.3g)\n", max_diff, max_ref);
    assert_true(max_diff <= 1e-4 * fmax(1.0, max_ref));
    /* The raw convolution is not a ReLU6 output: it has negative values. */
    int negative = 0;
    for (int64_t i = 0; i < conv_n; i++)
        negative |= conv[i] < 0.0f;
    assert_true(negative);
    free(x);
    free(fused);
    free(plain);
    free(conv);
    graft_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(fused_and_plain_plans_agree)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
