/* graft inspect: a Keras-style summary of a model. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "graft.h"

static const char help[] =
    "usage: graft inspect MODEL_DIR\n"
    "\n"
    "Prints each layer with its class, output shape (batch first), parameter count,\n"
    "trainable flag and inputs, then the totals, as Keras's model.summary() does.\n"
    "MODEL_DIR is a TF.js layers-model folder (model.json + weight shards) or its model.json.\n";

static void format_shape(const graft_layer_info *info, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "(None");
    for (int i = 0; i < info->rank && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, ", %" PRId64, info->shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, ")");
}

static void print_rule(char c)
{
    for (int i = 0; i < 122; i++)
        putchar(c);
    putchar('\n');
}

int cli_inspect(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(help, stdout);
            return CLI_OK;
        }
        if (argv[i][0] == '-' || path) {
            cli_error("inspect: unexpected argument '%s' (see graft inspect --help)", argv[i]);
            return CLI_BAD_USAGE;
        }
        path = argv[i];
    }
    if (!path) {
        fputs(help, stderr);
        return CLI_BAD_USAGE;
    }
    graft_model *model = NULL;
    if (graft_model_load(path, &model) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        return CLI_BAD_INPUT;
    }
    printf("Model: %s\n", path);
    print_rule('_');
    printf("%-52s %-22s %12s  %-9s  %s\n", "Layer (type)", "Output Shape", "Param #", "Trainable",
           "Connected to");
    print_rule('=');
    int64_t total = 0, trainable = 0;
    for (int i = 0; i < graft_model_layer_count(model); i++) {
        graft_layer_info info;
        graft_model_layer_info(model, i, &info);
        char name[256], shape[96];
        snprintf(name, sizeof name, "%s (%s)", info.name, info.class_name);
        format_shape(&info, shape, sizeof shape);
        printf("%-52s %-22s %12" PRId64 "  %-9s  %s", name, shape, info.params,
               info.trainable ? "yes" : "no", info.n_inputs ? info.inputs[0] : "");
        for (int k = 1; k < info.n_inputs && k < 8; k++)
            printf(", %s", info.inputs[k]);
        putchar('\n');
        total += info.params;
        trainable += info.trainable_params;
    }
    print_rule('=');
    printf("Total params: %" PRId64 "\nTrainable params: %" PRId64 "\nNon-trainable params: %" PRId64
           "\n", total, trainable, total - trainable);
    graft_model_free(model);
    return CLI_OK;
}
