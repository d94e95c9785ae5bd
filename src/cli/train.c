/* graft train: the transfer-learning recipe as one command. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/run.h"

static const char help_head[] =
    "usage: graft train DATA -o OUT [options]\n"
    "\n"
    "Fits a classifier on the labelled images in DATA (a folder of class folders, a\n"
    "path,label CSV, or an IDX file) by transfer learning from a pretrained base:\n"
    "phase 1 trains a new head on the frozen base (from cached features), phase 2\n"
    "fine-tunes the top of the base at a lower learning rate. Writes OUT/model.json\n"
    "and weight shards (TF.js layers format), labels.txt, metrics.json, config.json\n"
    "and report.html.\n"
    "\n";

int cli_train(int argc, char **argv)
{
    train_options o;
    train_options_defaults(&o);
    const char *data = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(help_head, stdout);
            fputs(train_options_help, stdout);
            return CLI_OK;
        }
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
            if (i + 1 >= argc) {
                cli_error("%s needs a folder", argv[i]);
                return CLI_BAD_USAGE;
            }
            o.out = argv[++i];
            continue;
        }
        int r = train_options_parse(&o, argc, argv, &i);
        if (r < 0) {
            train_options_free(&o);
            return CLI_BAD_USAGE;
        }
        if (r > 0)
            continue;
        if (argv[i][0] == '-' || data) {
            cli_error("train: unexpected argument '%s' (see graft train --help)", argv[i]);
            train_options_free(&o);
            return CLI_BAD_USAGE;
        }
        data = argv[i];
    }
    if (!data || !o.out) {
        cli_error("train: needs DATA and -o OUT (see graft train --help)");
        train_options_free(&o);
        return CLI_BAD_USAGE;
    }
    cli_set_threads(o.threads);
    int status = run_training(&o, data, NULL);
    train_options_free(&o);
    return status;
}
