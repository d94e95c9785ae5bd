/* The recipe's linear-probe fast path for phase 1: the new head's Dense layer
 * fitted by L-BFGS on the globally pooled features of the frozen base, instead
 * of epochs of SGD. */
#ifndef GRAFT_TRAIN_LINEAR_HEAD_H
#define GRAFT_TRAIN_LINEAR_HEAD_H

#include "graft.h"

/* The model must end in global pooling -> (dropout ->) Dense, as
 * graft_model_add_classifier makes it. The Dense kernel and bias are replaced by
 * graft__linear_probe_fit on the pooled features of the un-augmented training
 * images (augmented views gave the same test accuracy on the demo at 3x the time),
 * with the l2 of the grid that has the lowest held-out cross-entropy over a
 * stratified k-fold split (k = min(5, smallest class), at least 2; seeded), or 1.0
 * without cross-validation under two images per class on average. result gets one
 * "epoch": loss and accuracy on the training images and on val when given;
 * config->on_epoch, if set, is called with it; the l2 goes to *chosen_l2 (may be NULL). */
graft_status graft__fit_linear_head(graft_model *model, graft_dataset *train, graft_dataset *val,
                                    uint64_t seed,
                                    const graft_train_config *config, graft_train_result *result,
                                    double *chosen_l2);

#endif
