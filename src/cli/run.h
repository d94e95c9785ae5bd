/* The part of train and demo after parsing: datasets, the recipe with progress
 * output, evaluation, and everything written to OUT. */
#ifndef GRAFT_CLI_RUN_H
#define GRAFT_CLI_RUN_H

#include "cli/options.h"

/* Opens DATA (and --val or a split) at the base's size, then run_recipe. */
int run_training(train_options *o, const char *data, const char *unused);

/* Runs the recipe on opened datasets. thumbs is val opened with preprocessing
 * "none" (for report thumbnails; may be NULL). test, when given, is evaluated
 * too and reported as the headline accuracy (the demo's held-out set). Returns
 * a CLI exit status; test accuracy per phase goes to *phase_accuracy[2] when
 * not NULL. */
int run_recipe(train_options *o, graft_model *model, graft_dataset *train, graft_dataset *val,
               graft_dataset *test, graft_dataset *thumbs, double *phase_accuracy);

/* graft_dataset_split, or for a fraction of 0 the whole set as train (the same
 * handle: free it once) and no val. */
graft_status split_or_keep(graft_dataset *all, double val_fraction, uint64_t seed,
                           graft_dataset **train, graft_dataset **val);

/* OUT may be written: absent, or a graft folder and --force given. */
int out_check(const train_options *o);

#endif
