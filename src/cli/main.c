/* graft command line: dispatches to one subcommand per file. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "graft.h"

static const char usage[] =
    "usage: graft COMMAND [options]\n"
    "\n"
    "Transfer learning for small image datasets, on a CPU.\n"
    "\n"
    "commands:\n"
    "  demo                        few-shot Fashion-MNIST on the default base, end to end\n"
    "  train DATA -o OUT           fit a classifier on labelled images by transfer learning\n"
    "  evaluate MODEL DATA         accuracy, per-class metrics and confusion matrix\n"
    "  probe DATA                  score candidate cut layers (LogME, linear probe) before training\n"
    "  predict MODEL_DIR IMAGE...  classify JPEG/PNG images (or folders of them)\n"
    "  inspect MODEL_DIR           print the model's layers, output shapes and parameters\n"
    "\n"
    "options:\n"
    "  -h, --help                  show this help; 'graft COMMAND --help' shows a command's\n"
    "  --version                   print the version\n"
    "\n"
    "exit status: 0 success, 1 bad input, 2 bad usage\n";

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("graft: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_parse_positive(const char *option, const char *text, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = text ? strtol(text, &end, 10) : 0;
    if (!text || errno || *end || v < 0 || v > 1000000) {
        cli_error("%s needs a non-negative integer, got '%s'", option, text ? text : "");
        return 0;
    }
    *out = v;
    return 1;
}

void cli_set_threads(long threads)
{
    if (threads > 0)
        graft_set_threads((int)threads);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return CLI_BAD_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage, stdout);
        return CLI_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("graft %d.%d.%d\n", GRAFT_VERSION_MAJOR, GRAFT_VERSION_MINOR, GRAFT_VERSION_PATCH);
        return CLI_OK;
    }
    if (strcmp(cmd, "inspect") == 0)
        return cli_inspect(argc - 1, argv + 1);
    if (strcmp(cmd, "predict") == 0)
        return cli_predict(argc - 1, argv + 1);
    if (strcmp(cmd, "train") == 0)
        return cli_train(argc - 1, argv + 1);
    if (strcmp(cmd, "evaluate") == 0)
        return cli_evaluate(argc - 1, argv + 1);
    if (strcmp(cmd, "demo") == 0)
        return cli_demo(argc - 1, argv + 1);
    if (strcmp(cmd, "probe") == 0)
        return cli_probe(argc - 1, argv + 1);
    cli_error("unknown command '%s' (see graft --help)", cmd);
    return CLI_BAD_USAGE;
}
