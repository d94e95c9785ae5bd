/* Command-line options shared by train, demo and evaluate: the recipe's flags,
 * a --config JSON with the same names, and the resolved settings written back. */
#ifndef GRAFT_CLI_OPTIONS_H
#define GRAFT_CLI_OPTIONS_H

#include <jansson.h>

#include "graft.h"

typedef struct train_options {
    graft_recipe recipe;
    char cut[128], fine_tune_at[128], optimizer[16];
    const char *base, *val, *out;
    int64_t size;          /* 0: the base's input size */
    double val_split;
    long threads;
    int json, quiet, force, auto_recipe;
    int val_split_set;     /* --val-split was given: --auto leaves it alone */
    int fine_tune_lr_set, fine_tune_epochs_set, fine_tune_at_set, head_grid_set,
        cut_set; /* likewise */
    json_t *auto_choices;  /* --auto's choices with their reasons, for config.json */
    json_t *config_root;   /* a --config file, kept while its strings are in use */
    graft_preprocess preprocess;
    graft_resize_mode resize;
} train_options;

void train_options_defaults(train_options *o);
void train_options_free(train_options *o);

/* Consumes the option at argv[*i] (and its value) if it is a recipe option;
 * returns 1 if consumed, 0 if not one of them, -1 on a bad value (printed). */
int train_options_parse(train_options *o, int argc, char **argv, int *i);

/* Applies a --config file (keys as the long options without dashes). */
int train_options_load_json(train_options *o, const char *path);

/* The resolved settings as JSON (for OUT/config.json). */
json_t *train_options_to_json(const train_options *o, const graft_recipe_result *res);

extern const char train_options_help[];

/* Default base: models/mobilenet_v2 from the source tree set-up filled. */
const char *default_base(void);
/* --auto, before the split: holds nothing out of small sets (the choice and its
 * reason go into o->auto_choices). */
void auto_plan_split(train_options *o, graft_dataset *all);
/* --auto: picks the cut (and the fine-tuning) from the training data. */
int auto_choose(train_options *o, graft_dataset *train);
/* Loads --base; "random" is the default base's architecture with fresh weights. */
graft_status load_base(const train_options *o, graft_model **out);

#endif
