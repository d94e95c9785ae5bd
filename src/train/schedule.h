/* Learning-rate schedules, as pure functions of the step, and layer-wise
 * learning-rate multipliers.
 *
 * `step` counts optimizer steps already taken, from 0: the rate for the first
 * update is graft__lr_at(s, 0). This matches PyTorch's schedulers (scheduler.step()
 * after each optimizer step) and Keras's LearningRateSchedule(iterations).
 *
 * The effective rate of parameter group g at step t is
 *     graft__lr_at(schedule, t) * multiplier[g]
 * with the multipliers from graft__discriminative_lr or graft__layer_decay. */
#ifndef GRAFT_TRAIN_SCHEDULE_H
#define GRAFT_TRAIN_SCHEDULE_H

#include <stdint.h>

#include "graft.h"

typedef enum graft__lr_kind {
    GRAFT__LR_CONSTANT = 0, /* lr */
    GRAFT__LR_STEP,         /* lr * gamma^floor(t / step_size)            (PyTorch StepLR) */
    GRAFT__LR_EXPONENTIAL,  /* lr * gamma^(t / decay_steps), floored if staircase
                             * (Keras ExponentialDecay) */
    GRAFT__LR_COSINE,       /* min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p going
                             * 0 -> 1 from the end of warm-up to total_steps, then held */
    GRAFT__LR_ONE_CYCLE     /* PyTorch OneCycleLR, anneal_strategy "cos", two phases */
} graft__lr_kind;

typedef struct graft__lr_schedule {
    graft__lr_kind kind;
    double lr;               /* base rate; the peak (max_lr) for one-cycle. > 0 */

    /* Linear warm-up, for every kind but one-cycle (which has its own): over steps
     * [0, warmup_steps) the rate climbs linearly from warmup_start (at step 0) to
     * lr (reached at step warmup_steps); the schedule proper then runs on
     * t = step - warmup_steps. 0 steps means no warm-up. */
    int64_t warmup_steps;
    double warmup_start;     /* >= 0, usually 0 */

    double gamma;            /* STEP and EXPONENTIAL: factor, > 0 */
    int64_t step_size;       /* STEP: steps between decays, >= 1 */
    int64_t decay_steps;     /* EXPONENTIAL: steps per factor of gamma, >= 1 */
    int staircase;           /* EXPONENTIAL: decay in whole multiples of decay_steps */

    int64_t total_steps;     /* COSINE and ONE_CYCLE: length of the run, warm-up
                              * included; COSINE needs > warmup_steps, ONE_CYCLE >= 1 */
    double min_lr;           /* COSINE: floor reached at total_steps, >= 0 */

    double pct_start;        /* ONE_CYCLE: fraction of the run spent rising, in (0, 1); 0.3 */
    double div_factor;       /* ONE_CYCLE: initial rate = lr / div_factor, > 0; 25 */
    double final_div_factor; /* ONE_CYCLE: final rate = initial / final_div_factor, > 0; 1e4 */
    double base_momentum;    /* ONE_CYCLE momentum (or Adam beta1) at the peak rate; 0.85 */
    double max_momentum;     /* ONE_CYCLE momentum at the start and end; 0.95 */
} graft__lr_schedule;

/* A one-cycle schedule with PyTorch's defaults for everything but max_lr and
 * total_steps. */
graft__lr_schedule graft__one_cycle_defaults(double max_lr, int64_t total_steps);

/* GRAFT_E_INVALID_ARG unless the fields the kind reads are in the ranges above. */
graft_status graft__lr_schedule_check(const graft__lr_schedule *s);

/* The learning rate for the update after `step` completed steps. Negative steps
 * count as 0. Past the end, COSINE holds min_lr and ONE_CYCLE holds its final
 * rate (PyTorch raises there instead). One-cycle, with
 *   initial = lr / div_factor, final = initial / final_div_factor,
 *   e1 = pct_start * total_steps - 1, e2 = total_steps - 1,
 *   anneal(a, b, p) = b + (a - b) / 2 * (1 + cos(pi * p)):
 * step <= e1 gives anneal(initial, lr, step / e1), later steps
 * anneal(lr, final, (step - e1) / (e2 - e1)); so step 0 is initial, the peak lr
 * falls at step e1 when that is whole, and step total_steps - 1 is final. */
double graft__lr_at(const graft__lr_schedule *s, int64_t step);

/* The momentum (SGD) or beta1 (Adam) that PyTorch's OneCycleLR pairs with the
 * rate: anneal(max_momentum, base_momentum) over the rise, then back to
 * max_momentum, with the same phases as graft__lr_at. For any other kind there is
 * no cycle and the result is max_momentum. */
double graft__momentum_at(const graft__lr_schedule *s, int64_t step);

/* ---- layer-wise multipliers ----------------------------------------------- */

/* fastai's slice(lo, hi): n parameter groups, ordered bottom (0, nearest the
 * input) to top (n - 1, the head), get rates spread geometrically from lo to hi,
 *   lr_i = lo * (hi / lo)^(i / (n - 1)),   n == 1: lr_0 = hi.
 * Writes MULTIPLIERS lr_i / hi, so mult[n - 1] == 1: run the schedule with
 * lr = hi and multiply. GRAFT_E_INVALID_ARG unless lo and hi are finite and
 * > 0 and n >= 1. */
graft_status graft__discriminative_lr(double lo, double hi, int n, double *mult /* (n) */);

/* timm's layer-wise decay: group i of n (0 = lowest) gets MULTIPLIER
 * decay^(n - 1 - i), so the top group (the head) trains at the full rate.
 * GRAFT_E_INVALID_ARG unless decay is finite and > 0 and n >= 1. */
graft_status graft__layer_decay(double decay, int n, double *mult /* (n) */);

#endif
