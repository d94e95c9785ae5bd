#include "train/schedule.h"

#include <math.h>

#include "core/error.h"

static const double PI = 3.14159265358979323846;

graft__lr_schedule graft__one_cycle_defaults(double max_lr, int64_t total_steps)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_ONE_CYCLE,
                            .lr = max_lr,
                            .total_steps = total_steps,
                            .pct_start = 0.3,
                            .div_factor = 25.0,
                            .final_div_factor = 1e4,
                            .base_momentum = 0.85,
                            .max_momentum = 0.95};
    return s;
}

static int positive(double x) { return x > 0.0 && isfinite(x); }
static int non_negative(double x) { return x >= 0.0 && isfinite(x); }

graft_status graft__lr_schedule_check(const graft__lr_schedule *s)
{
    if (!positive(s->lr))
        return graft__fail(GRAFT_E_INVALID_ARG, "learning rate %g must be finite and > 0", s->lr);
    if (s->warmup_steps < 0 || !non_negative(s->warmup_start))
        return graft__fail(GRAFT_E_INVALID_ARG, "warm-up of %lld steps from %g: steps and start "
                           "must be >= 0", (long long)s->warmup_steps, s->warmup_start);
    switch (s->kind) {
    case GRAFT__LR_CONSTANT:
        return GRAFT_OK;
    case GRAFT__LR_STEP:
        if (!positive(s->gamma) || s->step_size < 1)
            return graft__fail(GRAFT_E_INVALID_ARG, "step decay: gamma %g must be > 0 and "
                               "step size %lld >= 1", s->gamma, (long long)s->step_size);
        return GRAFT_OK;
    case GRAFT__LR_EXPONENTIAL:
        if (!positive(s->gamma) || s->decay_steps < 1)
            return graft__fail(GRAFT_E_INVALID_ARG, "exponential decay: gamma %g must be > 0 "
                               "and decay steps %lld >= 1", s->gamma, (long long)s->decay_steps);
        return GRAFT_OK;
    case GRAFT__LR_COSINE:
        if (s->total_steps <= s->warmup_steps)
            return graft__fail(GRAFT_E_INVALID_ARG, "cosine decay: total steps %lld must exceed "
                               "the %lld warm-up steps", (long long)s->total_steps,
                               (long long)s->warmup_steps);
        if (!non_negative(s->min_lr))
            return graft__fail(GRAFT_E_INVALID_ARG, "cosine decay: minimum rate %g must be "
                               "finite and >= 0", s->min_lr);
        return GRAFT_OK;
    case GRAFT__LR_ONE_CYCLE:
        if (s->warmup_steps != 0)
            return graft__fail(GRAFT_E_INVALID_ARG, "one-cycle has its own warm-up; "
                               "warmup_steps must be 0");
        if (s->total_steps < 1)
            return graft__fail(GRAFT_E_INVALID_ARG, "one-cycle: total steps %lld must be >= 1",
                               (long long)s->total_steps);
        if (!(s->pct_start > 0.0 && s->pct_start < 1.0))
            return graft__fail(GRAFT_E_INVALID_ARG, "one-cycle: pct_start %g is outside (0, 1)",
                               s->pct_start);
        if (!positive(s->div_factor) || !positive(s->final_div_factor))
            return graft__fail(GRAFT_E_INVALID_ARG, "one-cycle: div_factor %g and "
                               "final_div_factor %g must be finite and > 0", s->div_factor,
                               s->final_div_factor);
        if (!non_negative(s->base_momentum) || !non_negative(s->max_momentum))
            return graft__fail(GRAFT_E_INVALID_ARG, "one-cycle: momenta %g and %g must be "
                               "finite and >= 0", s->base_momentum, s->max_momentum);
        return GRAFT_OK;
    }
    return graft__fail(GRAFT_E_INVALID_ARG, "unknown learning-rate schedule %d", (int)s->kind);
}

/* PyTorch's _annealing_cos: from a (pct 0) to b (pct 1) along half a cosine. */
static double anneal_cos(double a, double b, double pct)
{
    return b + (a - b) / 2.0 * (cos(PI * pct) + 1.0);
}

/* Where `step` falls in the one-cycle: phase 0 (rising rate) or 1 (falling), and
 * the fraction of that phase done. The phase bounds are PyTorch's, including the
 * float end step pct_start * total - 1. */
static int one_cycle_phase(const graft__lr_schedule *s, int64_t step, double *pct)
{
    const double e1 = s->pct_start * (double)s->total_steps - 1.0;
    const double e2 = (double)s->total_steps - 1.0;
    /* PyTorch raises past the end; holding the final value suits a caller that
     * rounds its step count up. */
    const double t = (double)(step < (int64_t)0 ? 0 : (step > s->total_steps - 1
                                                            ? s->total_steps - 1 : step));
    if (t <= e1) {
        /* e1 == 0 leaves phase 0 as the single step 0, where PyTorch would divide
         * 0 by 0: take it as the phase's end, the peak. */
        *pct = e1 > 0.0 ? t / e1 : 1.0;
        return 0;
    }
    /* e2 > e1 always, since pct_start < 1. */
    *pct = (t - e1) / (e2 - e1);
    return 1;
}

double graft__lr_at(const graft__lr_schedule *s, int64_t step)
{
    if (step < 0)
        step = 0;
    if (s->kind == GRAFT__LR_ONE_CYCLE) {
        const double initial = s->lr / s->div_factor;
        const double final = initial / s->final_div_factor;
        double pct;
        if (one_cycle_phase(s, step, &pct) == 0)
            return anneal_cos(initial, s->lr, pct);
        return anneal_cos(s->lr, final, pct);
    }
    if (step < s->warmup_steps)
        return s->warmup_start +
               (s->lr - s->warmup_start) * ((double)step / (double)s->warmup_steps);
    const int64_t t = step - s->warmup_steps;
    switch (s->kind) {
    case GRAFT__LR_STEP:
        return s->lr * pow(s->gamma, (double)(t / s->step_size));
    case GRAFT__LR_EXPONENTIAL: {
        double e = s->staircase ? (double)(t / s->decay_steps)
                                : (double)t / (double)s->decay_steps;
        return s->lr * pow(s->gamma, e);
    }
    case GRAFT__LR_COSINE: {
        double p = (double)t / (double)(s->total_steps - s->warmup_steps);
        if (p > 1.0)
            p = 1.0;
        return s->min_lr + (s->lr - s->min_lr) * 0.5 * (1.0 + cos(PI * p));
    }
    default:
        return s->lr;
    }
}

double graft__momentum_at(const graft__lr_schedule *s, int64_t step)
{
    if (s->kind != GRAFT__LR_ONE_CYCLE)
        return s->max_momentum;
    double pct;
    if (one_cycle_phase(s, step, &pct) == 0)
        return anneal_cos(s->max_momentum, s->base_momentum, pct);
    return anneal_cos(s->base_momentum, s->max_momentum, pct);
}

graft_status graft__discriminative_lr(double lo, double hi, int n, double *mult)
{
    if (!positive(lo) || !positive(hi) || n < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "discriminative rates: need lo %g and hi %g "
                           "finite and > 0, and %d groups >= 1", lo, hi, n);
    /* lo * (hi / lo)^(i / (n - 1)) / hi = (lo / hi)^((n - 1 - i) / (n - 1)): the
     * second form makes the head's multiplier exactly 1. */
    for (int i = 0; i < n; i++)
        mult[i] = i == n - 1 ? 1.0 : pow(lo / hi, (double)(n - 1 - i) / (double)(n - 1));
    return GRAFT_OK;
}

graft_status graft__layer_decay(double decay, int n, double *mult)
{
    if (!positive(decay) || n < 1)
        return graft__fail(GRAFT_E_INVALID_ARG, "layer decay: need decay %g finite and > 0, "
                           "and %d groups >= 1", decay, n);
    for (int i = 0; i < n; i++)
        mult[i] = pow(decay, (double)(n - 1 - i));
    return GRAFT_OK;
}
