/* The training loop behind graft_train(): batches, loss, optimiser, schedule,
 * layer-wise learning rates, regularisation, validation, early stopping,
 * checkpoints and resume. */
#ifndef GRAFT_TRAIN_FIT_H
#define GRAFT_TRAIN_FIT_H

#include "graft.h"
#include "model/train_graph.h"
#include "train/feature_cache.h"
#include "train/schedule.h"

/* Everything a checkpoint must hold to continue exactly where a run stopped. */
typedef struct graft__fit_state {
    int epoch;               /* completed epochs */
    int64_t step;            /* optimiser steps taken */
    double best_score;       /* by the monitor, lower is better (accuracy negated) */
    int best_epoch;
    int wait, plateau_wait;
    double lr_scale;         /* from reduce-on-plateau */
    int64_t next_batch;      /* within the current epoch, after an interruption */
    double loss_sum;         /* of the current epoch's finished batches */
    int64_t correct_sum;
} graft__fit_state;

typedef struct graft__fit {
    graft_model *model;
    graft_train_config cfg;
    graft__train_graph tg;
    int64_t classes, sample;
    int logits_output;       /* output layer's softmax fused into the loss */
    float *x, *grad_out, *probs;
    int32_t *y;
    int64_t *order;
    float *m1, *m2, *w0, *best;  /* optimiser moments, pretrained copy, best weights */
    double *layer_mult;      /* per layer */
    graft__lr_schedule schedule;
    int64_t steps_per_epoch;
    graft__fit_state state;
    int n_history;
    graft_epoch_metrics *history;
    /* with a feature cache, training reads these instead of the caller's sources */
    graft__feature_cache train_cache, val_cache;
    graft_batch_source cached_train, cached_val;
    int boundary;
} graft__fit;

graft_status graft__checkpoint_write(const graft__fit *fit, const char *path);
/* Restores a checkpoint into fit; GRAFT_E_NOT_FOUND when the file does not exist. */
graft_status graft__checkpoint_read(graft__fit *fit, const char *path);

#endif
