/* Learning-rate schedules at known points, and layer-wise multipliers.
 *
 * One-cycle and a few other constants came from this stdlib-only python3 script,
 * a restatement of torch.optim.lr_scheduler.OneCycleLR's documented phases
 * (anneal_strategy "cos", three_phase False):
 *
 *   import math
 *   def anneal(a, b, pct): return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)
 *   def one_cycle(step, max_lr=0.1, total=100, pct_start=0.3, div=25.0, fdiv=1e4,
 *                 bm=0.85, mm=0.95):
 *       init = max_lr / div; final = init / fdiv
 *       e1 = pct_start * total - 1; e2 = total - 1
 *       if step <= e1:
 *           p = step / e1; return anneal(init, max_lr, p), anneal(mm, bm, p)
 *       p = (step - e1) / (e2 - e1); return anneal(max_lr, final, p), anneal(bm, mm, p)
 *   # step: (lr, momentum)
 *   #  0: 0.004                 0.95
 *   # 10: 0.029516394846410082  0.9234204220349895
 *   # 29: 0.1                   0.85
 *   # 30: 0.09994965352845243   0.8500503466729342
 *   # 64: 0.0500002             0.9
 *   # 99: 4e-07                 0.95
 *   0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2      # 0.8681980515339464
 *   0.1 * 0.5**0.5, 0.1 * 0.5**2.5                   # 0.07071067811865477 0.01767766952966369
 *   [1e-4 * (1e-2 / 1e-4)**(i / 3) / 1e-2 for i in range(4)]
 *       # 0.01 0.04641588833612778 0.21544346900318834 1.0
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>

#include "train/schedule.h"

static void assert_close(double got, double want, double tol)
{
    if (!(fabs(got - want) <= tol))
        fail_msg("got %.15g, want %.15g (tolerance %g)", got, want, tol);
}

static void constant_with_warmup(void **state)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_CONSTANT, .lr = 0.1};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_OK);
    assert_close(graft__lr_at(&s, 0), 0.1, 0);
    assert_close(graft__lr_at(&s, 123456), 0.1, 0);
    s.warmup_steps = 10;
    /* 0 at step 0, linear, the full rate from step 10 on */
    assert_close(graft__lr_at(&s, 0), 0.0, 0);
    assert_close(graft__lr_at(&s, 5), 0.05, 1e-15);
    assert_close(graft__lr_at(&s, 9), 0.09, 1e-15);
    assert_close(graft__lr_at(&s, 10), 0.1, 0);
    assert_close(graft__lr_at(&s, -3), 0.0, 0); /* negative steps count as 0 */
}

static void step_decay(void **state)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_STEP, .lr = 0.1, .gamma = 0.5, .step_size = 3};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_OK);
    /* 0.1 * 0.5^floor(t / 3) */
    assert_close(graft__lr_at(&s, 0), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 2), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 3), 0.05, 1e-15);
    assert_close(graft__lr_at(&s, 6), 0.025, 1e-15);
    assert_close(graft__lr_at(&s, 8), 0.025, 1e-15);
    /* after a warm-up the decay counts from its end */
    s.warmup_steps = 4;
    assert_close(graft__lr_at(&s, 2), 0.05, 1e-15);
    assert_close(graft__lr_at(&s, 6), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 7), 0.05, 1e-15);
}

static void exponential_decay(void **state)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_EXPONENTIAL, .lr = 0.1, .gamma = 0.5,
                            .decay_steps = 10};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_OK);
    /* 0.1 * 0.5^(t / 10) */
    assert_close(graft__lr_at(&s, 0), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 5), 0.07071067811865477, 1e-15);
    assert_close(graft__lr_at(&s, 10), 0.05, 1e-15);
    assert_close(graft__lr_at(&s, 25), 0.01767766952966369, 1e-15);
    s.staircase = 1; /* 0.1 * 0.5^floor(t / 10) */
    assert_close(graft__lr_at(&s, 5), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 10), 0.05, 1e-15);
    assert_close(graft__lr_at(&s, 25), 0.025, 1e-15);
}

static void cosine_with_warmup(void **state)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_COSINE, .lr = 1.0, .min_lr = 0.1,
                            .total_steps = 110, .warmup_steps = 10};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_OK);
    /* warm-up 0 -> 1 over steps 0..10 */
    assert_close(graft__lr_at(&s, 0), 0.0, 0);
    assert_close(graft__lr_at(&s, 5), 0.5, 1e-15);
    assert_close(graft__lr_at(&s, 10), 1.0, 1e-15);
    /* cosine over steps 10..110: the midpoint (step 60) is (lr + min) / 2 */
    assert_close(graft__lr_at(&s, 60), 0.55, 1e-15);
    /* a quarter in (step 35): 0.1 + 0.9 * (1 + cos(pi / 4)) / 2 */
    assert_close(graft__lr_at(&s, 35), 0.8681980515339464, 1e-15);
    assert_close(graft__lr_at(&s, 110), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 500), 0.1, 1e-15); /* held past the end */
    /* warm-up from a non-zero start: 0.01 + (1 - 0.01) * 5 / 10 */
    s.warmup_start = 0.01;
    assert_close(graft__lr_at(&s, 0), 0.01, 1e-15);
    assert_close(graft__lr_at(&s, 5), 0.505, 1e-15);
    /* no warm-up: the cosine starts at step 0 */
    s.warmup_steps = 0;
    s.total_steps = 100;
    assert_close(graft__lr_at(&s, 0), 1.0, 1e-15);
    assert_close(graft__lr_at(&s, 50), 0.55, 1e-15);
}

static void one_cycle_points(void **state)
{
    graft__lr_schedule s = graft__one_cycle_defaults(0.1, 100);
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_OK);
    /* start max_lr / 25, peak at step 0.3 * 100 - 1 = 29, end (max_lr / 25) / 1e4 */
    assert_close(graft__lr_at(&s, 0), 0.004, 1e-15);
    assert_close(graft__lr_at(&s, 10), 0.029516394846410082, 1e-15);
    assert_close(graft__lr_at(&s, 29), 0.1, 1e-15);
    assert_close(graft__lr_at(&s, 30), 0.09994965352845243, 1e-15);
    assert_close(graft__lr_at(&s, 64), 0.0500002, 1e-15);
    assert_close(graft__lr_at(&s, 99), 4e-7, 1e-18);
    assert_close(graft__lr_at(&s, 150), 4e-7, 1e-18); /* held past the end */
    /* momentum runs the other way: 0.95 -> 0.85 at the peak -> 0.95 */
    assert_close(graft__momentum_at(&s, 0), 0.95, 1e-15);
    assert_close(graft__momentum_at(&s, 10), 0.9234204220349895, 1e-15);
    assert_close(graft__momentum_at(&s, 29), 0.85, 1e-15);
    assert_close(graft__momentum_at(&s, 30), 0.8500503466729342, 1e-15);
    assert_close(graft__momentum_at(&s, 64), 0.9, 1e-15);
    assert_close(graft__momentum_at(&s, 99), 0.95, 1e-15);
}

static void one_cycle_tiny_runs(void **state)
{
    /* pct_start * total - 1 <= 0: no division by zero, and still a finite rate
     * between the start and the peak, ending at the final rate */
    for (int64_t total = 1; total <= 4; total++) {
        graft__lr_schedule s = graft__one_cycle_defaults(1.0, total);
        s.pct_start = 1.0 / (double)total; /* e1 == 0 exactly */
        if (s.pct_start >= 1.0)
            s.pct_start = 0.5;
        assert_int_equal(graft__lr_schedule_check(&s), GRAFT_OK);
        for (int64_t t = 0; t < total; t++) {
            double lr = graft__lr_at(&s, t);
            assert_true(isfinite(lr) && lr > 0.0 && lr <= 1.0);
            assert_true(isfinite(graft__momentum_at(&s, t)));
        }
        assert_close(graft__lr_at(&s, total - 1), 1e-4 / 25.0, 1e-15);
    }
}

static void momentum_without_cycle(void **state)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_COSINE, .lr = 1.0, .total_steps = 10,
                            .max_momentum = 0.9};
    assert_close(graft__momentum_at(&s, 3), 0.9, 0);
}

static void check_rejects(void **state)
{
    graft__lr_schedule s = {.kind = GRAFT__LR_CONSTANT, .lr = 0.0};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = (graft__lr_schedule){.kind = GRAFT__LR_CONSTANT, .lr = 0.1, .warmup_steps = -1};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = (graft__lr_schedule){.kind = GRAFT__LR_STEP, .lr = 0.1, .gamma = 0.5, .step_size = 0};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = (graft__lr_schedule){.kind = GRAFT__LR_EXPONENTIAL, .lr = 0.1, .gamma = 0.0,
                             .decay_steps = 5};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = (graft__lr_schedule){.kind = GRAFT__LR_COSINE, .lr = 0.1, .total_steps = 10,
                             .warmup_steps = 10};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = graft__one_cycle_defaults(0.1, 100);
    s.pct_start = 1.0;
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = graft__one_cycle_defaults(0.1, 0);
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = graft__one_cycle_defaults(0.1, 100);
    s.warmup_steps = 5;
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
    s = (graft__lr_schedule){.kind = (graft__lr_kind)42, .lr = 0.1};
    assert_int_equal(graft__lr_schedule_check(&s), GRAFT_E_INVALID_ARG);
}

static void discriminative_multipliers(void **state)
{
    double m[4];
    /* n = 1: the single group trains at hi */
    assert_int_equal(graft__discriminative_lr(1e-4, 1e-2, 1, m), GRAFT_OK);
    assert_true(m[0] == 1.0);
    /* n = 2: lo and hi, as multipliers of hi */
    assert_int_equal(graft__discriminative_lr(1e-4, 1e-2, 2, m), GRAFT_OK);
    assert_close(m[0], 0.01, 1e-15);
    assert_true(m[1] == 1.0);
    /* n = 4: lo * (hi / lo)^(i / 3) / hi, ratio 100^(1/3) between neighbours */
    assert_int_equal(graft__discriminative_lr(1e-4, 1e-2, 4, m), GRAFT_OK);
    assert_close(m[0], 0.01, 1e-15);
    assert_close(m[1], 0.04641588833612778, 1e-15);
    assert_close(m[2], 0.21544346900318834, 1e-15);
    assert_true(m[3] == 1.0);
    assert_int_equal(graft__discriminative_lr(0.0, 1e-2, 4, m), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__discriminative_lr(1e-4, 1e-2, 0, m), GRAFT_E_INVALID_ARG);
}

static void layer_decay_multipliers(void **state)
{
    double m[4];
    assert_int_equal(graft__layer_decay(0.75, 1, m), GRAFT_OK);
    assert_true(m[0] == 1.0);
    assert_int_equal(graft__layer_decay(0.75, 2, m), GRAFT_OK);
    assert_close(m[0], 0.75, 0);
    assert_true(m[1] == 1.0);
    /* 0.75^3, 0.75^2, 0.75, 1 */
    assert_int_equal(graft__layer_decay(0.75, 4, m), GRAFT_OK);
    assert_close(m[0], 0.421875, 1e-15);
    assert_close(m[1], 0.5625, 1e-15);
    assert_close(m[2], 0.75, 1e-15);
    assert_true(m[3] == 1.0);
    assert_int_equal(graft__layer_decay(-0.5, 4, m), GRAFT_E_INVALID_ARG);
    assert_int_equal(graft__layer_decay(0.5, 0, m), GRAFT_E_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(constant_with_warmup),
        cmocka_unit_test(step_decay),
        cmocka_unit_test(exponential_decay),
        cmocka_unit_test(cosine_with_warmup),
        cmocka_unit_test(one_cycle_points),
        cmocka_unit_test(one_cycle_tiny_runs),
        cmocka_unit_test(momentum_without_cycle),
        cmocka_unit_test(check_rejects),
        cmocka_unit_test(discriminative_multipliers),
        cmocka_unit_test(layer_decay_multipliers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
