/* The training loop behind graft_train(): batches, loss, optimiser, schedule,
 * layer-wise learning rates, regularisation, validation, early stopping,
 * checkpoints and resume. */
#ifndef GRAFT_TRAIN_FIT_H
#define GRAFT_TRAIN_FIT_H

#include "graft.h"
#include "model/train_graph.h"
#include "train/feature_cache.h"
#include "train/prefetch.h"
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

/* One training batch, as prepare_batch leaves it in a prefetch slot. */
typedef struct graft__batch {
    float *x;                /* (batch_size, sample) */
    int32_t *y;              /* (batch_size) labels */
    int32_t *y_mix;          /* (batch_size) the mixing partners' labels */
    float *lambda;           /* (batch_size) weight of y against y_mix */
    int64_t n;               /* examples in this batch */
    int mixed;               /* y_mix and lambda are set */
} graft__batch;

typedef struct graft__fit {
    graft_model *model;
    graft_train_config cfg;
    graft__train_graph tg;
    int64_t classes, sample;
    int logits_output;       /* output layer's softmax fused into the loss */
    float *grad_out, *probs;
    int64_t *order;
    /* prefetch + 1 batch buffers; validation uses the first (no prefetch runs then) */
    int n_batches;
    graft__batch *batches;
    void **slots;            /* &batches[i], as the prefetcher takes them */
    graft__prefetch prefetch;
    const graft_batch_source *epoch_source; /* what prepare_batch fills from, */
    int epoch_now;                          /* and for which epoch */
    int64_t mix_h, mix_w, mix_c;            /* the mixed tensor: input or cached features */
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
