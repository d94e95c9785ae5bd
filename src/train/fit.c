#include "train/fit.h"

#include <math.h>
#include <omp.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/error.h"
#include "core/random.h"
#include "data/augment.h"
#include "train/loss.h"
#include "train/optim.h"

void graft_train_config_defaults(graft_train_config *c)
{
    memset(c, 0, sizeof *c);
    c->epochs = 10;
    c->batch_size = 32;
    c->optimizer = GRAFT_OPTIMIZER_ADAM;
    c->learning_rate = 1e-3;
    c->momentum = 0.9;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->epsilon = 1e-7;
    c->schedule = GRAFT_SCHEDULE_CONSTANT;
    c->step_epochs = 10;
    c->gamma = 0.1;
    c->pct_start = 0.3;
    c->div_factor = 25;
    c->final_div_factor = 1e4;
    c->lr_low_ratio = 0.01;
    c->layer_decay = 0.75;
    c->restore_best = 1;
    c->plateau_factor = 0.1;
    c->cache_bytes = (size_t)2 << 30;
    c->prefetch = -1;
}

static graft_status cached_fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x,
                                int32_t *labels)
{
    const graft__feature_cache *c = user;
    int view = c->views == 1 || epoch < 1 ? 0 : (epoch - 1) % c->views;
    graft__feature_cache_get(c, view, idx, n, x, labels);
    return GRAFT_OK;
}

/* Builds the caches and points training at them; the graph then starts at the
 * boundary. Returns the sources training uses in *train and *val. */
static graft_status use_feature_cache(graft__fit *f, const graft_batch_source **train,
                                      const graft_batch_source **val)
{
    const graft_train_config *c = &f->cfg;
    /* CutMix pastes a box, so it needs a spatial tensor to cache: the last one
     * below the layers that train (e.g. the cut's feature map, not its pooling). */
    f->boundary = c->cutmix > 0.0 ? graft__cache_boundary_of_rank(f->model, c->bn_inference, 3)
                                  : graft__cache_boundary(f->model, c->bn_inference);
    if (f->boundary == f->model->input_node)
        return GRAFT_OK;
    graft_status rc = graft__feature_cache_build(&f->train_cache, f->model, f->boundary, *train,
                                                 c->cache_views, c->batch_size, c->cache_float16,
                                                 c->cache_bytes);
    if (!rc && *val && (*val)->count > 0)
        rc = graft__feature_cache_build(&f->val_cache, f->model, f->boundary, *val, 1,
                                        c->batch_size, c->cache_float16, c->cache_bytes);
    if (rc)
        return rc;
    f->cached_train = (graft_batch_source){f->train_cache.count, cached_fill, &f->train_cache};
    *train = &f->cached_train;
    if (*val && (*val)->count > 0) {
        f->cached_val = (graft_batch_source){f->val_cache.count, cached_fill, &f->val_cache};
        *val = &f->cached_val;
    }
    f->sample = f->train_cache.dim;
    return GRAFT_OK;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum { GRAFT__MAX_PREFETCH = 64 };


static graft_status check_config(const graft_train_config *c)
{
    if (c->epochs < 1 || c->batch_size < 1 || !(c->learning_rate > 0.0))
        return graft__fail(GRAFT_E_INVALID_ARG, "training needs epochs >= 1, batch_size >= 1 and "
                           "a positive learning rate");
    if (c->label_smoothing < 0.0 || c->label_smoothing >= 1.0)
        return graft__fail(GRAFT_E_INVALID_ARG, "label smoothing %g is outside [0, 1)",
                           c->label_smoothing);
    if (c->resume && !c->checkpoint)
        return graft__fail(GRAFT_E_INVALID_ARG, "resume needs a checkpoint path");
    if (!(c->mixup >= 0.0 && isfinite(c->mixup)) || !(c->cutmix >= 0.0 && isfinite(c->cutmix)))
        return graft__fail(GRAFT_E_INVALID_ARG, "mixup %g and cutmix %g must be finite and >= 0",
                           c->mixup, c->cutmix);
    if (c->prefetch < -1 || c->prefetch > GRAFT__MAX_PREFETCH)
        return graft__fail(GRAFT_E_INVALID_ARG, "prefetch %d is outside -1..%d", c->prefetch,
                           GRAFT__MAX_PREFETCH);
    return GRAFT_OK;
}

/* The loss fuses a final softmax; any other final activation is refused. */
static graft_status output_kind(graft__fit *f)
{
    const graft__layer *out = f->model->nodes[f->model->output_node].layer;
    graft__activation act = out->ops->output_activation ? out->ops->output_activation(out)
                                                        : GRAFT__ACT_LINEAR;
    if (act != GRAFT__ACT_SOFTMAX && act != GRAFT__ACT_LINEAR)
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': training needs a softmax or linear "
                           "(logits) output", out->name);
    f->logits_output = act == GRAFT__ACT_SOFTMAX;
    return GRAFT_OK;
}

static graft__lr_kind schedule_kind(graft_schedule s)
{
    switch (s) {
    case GRAFT_SCHEDULE_STEP: return GRAFT__LR_STEP;
    case GRAFT_SCHEDULE_EXPONENTIAL: return GRAFT__LR_EXPONENTIAL;
    case GRAFT_SCHEDULE_COSINE: return GRAFT__LR_COSINE;
    case GRAFT_SCHEDULE_ONE_CYCLE: return GRAFT__LR_ONE_CYCLE;
    default: return GRAFT__LR_CONSTANT;
    }
}

/* Epoch-based settings become step-based ones. */
static graft_status build_schedule(graft__fit *f)
{
    const graft_train_config *c = &f->cfg;
    int64_t spe = f->steps_per_epoch, total = spe * c->epochs;
    if (c->schedule == GRAFT_SCHEDULE_ONE_CYCLE) {
        f->schedule = graft__one_cycle_defaults(c->learning_rate, total);
        f->schedule.pct_start = c->pct_start;
        f->schedule.div_factor = c->div_factor;
        f->schedule.final_div_factor = c->final_div_factor;
    } else {
        graft__lr_schedule s = {0};
        s.kind = schedule_kind(c->schedule);
        s.lr = c->learning_rate;
        s.warmup_steps = (int64_t)llround(c->warmup_epochs * (double)spe);
        s.gamma = c->gamma;
        s.step_size = (int64_t)llround(c->step_epochs * (double)spe);
        if (s.step_size < 1)
            s.step_size = 1;
        s.decay_steps = spe;
        s.total_steps = total;
        s.min_lr = c->min_lr;
        f->schedule = s;
    }
    return graft__lr_schedule_check(&f->schedule);
}

/* Learning-rate multiplier of each layer: learning layers in graph order form the
 * groups, lowest first. */
static graft_status build_layer_multipliers(graft__fit *f)
{
    graft_model *m = f->model;
    int n = 0;
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++)
            if (graft__weight_learns(m->layers[i], w)) {
                n++;
                break;
            }
    double *group = graft__calloc((size_t)(n ? n : 1), sizeof(double));
    if (!group)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    graft_status rc = GRAFT_OK;
    if (f->cfg.layer_lr == GRAFT_LAYER_LR_DISCRIMINATIVE && n > 0)
        rc = graft__discriminative_lr(f->cfg.lr_low_ratio, 1.0, n, group);
    else if (f->cfg.layer_lr == GRAFT_LAYER_LR_DECAY && n > 0)
        rc = graft__layer_decay(f->cfg.layer_decay, n, group);
    else
        for (int g = 0; g < n; g++)
            group[g] = 1.0;
    for (int i = 0, g = 0; !rc && i < m->n_layers; i++) {
        f->layer_mult[i] = 0.0;
        for (int w = 0; w < m->layers[i]->n_weights; w++)
            if (graft__weight_learns(m->layers[i], w)) {
                f->layer_mult[i] = group[g++];
                break;
            }
    }
    graft__free(group);
    return rc;
}

static float *copy_params(const graft_model *m)
{
    float *p = graft__malloc_aligned(sizeof(float) * (size_t)(m->n_params ? m->n_params : 1));
    if (p)
        memcpy(p, m->params, sizeof(float) * (size_t)m->n_params);
    return p;
}

/* prefetch + 1 batches: one being trained on while the others are prepared. */
static graft_status alloc_batches(graft__fit *f)
{
    int64_t b = f->cfg.batch_size;
    f->n_batches = f->cfg.prefetch + 1;
    f->batches = graft__calloc((size_t)f->n_batches, sizeof *f->batches);
    f->slots = graft__calloc((size_t)f->n_batches, sizeof *f->slots);
    if (!f->batches || !f->slots)
        return graft__fail(GRAFT_E_NOMEM, "out of memory preparing training");
    int mixing = f->cfg.mixup > 0.0 || f->cfg.cutmix > 0.0;
    for (int i = 0; i < f->n_batches; i++) {
        graft__batch *t = &f->batches[i];
        f->slots[i] = t;
        t->x = graft__malloc_aligned(sizeof(float) * (size_t)(b * f->sample));
        t->y = graft__calloc((size_t)b, sizeof(int32_t));
        if (mixing) {
            t->y_mix = graft__calloc((size_t)b, sizeof(int32_t));
            t->lambda = graft__calloc((size_t)b, sizeof(float));
        }
        if (!t->x || !t->y || (mixing && (!t->y_mix || !t->lambda)))
            return graft__fail(GRAFT_E_NOMEM, "out of memory for %d batches of %lld examples",
                               f->n_batches, (long long)b);
    }
    return GRAFT_OK;
}

static void free_batches(graft__fit *f)
{
    for (int i = 0; f->batches && i < f->n_batches; i++) {
        graft__free_aligned(f->batches[i].x);
        graft__free(f->batches[i].y);
        graft__free(f->batches[i].y_mix);
        graft__free(f->batches[i].lambda);
    }
    graft__free(f->batches);
    graft__free(f->slots);
}

static graft_status alloc_buffers(graft__fit *f)
{
    const graft_train_config *c = &f->cfg;
    size_t np = (size_t)(f->model->n_params ? f->model->n_params : 1);
    int64_t b = c->batch_size;
    graft_status rc = alloc_batches(f);
    if (rc)
        return rc;
    f->grad_out = graft__malloc_aligned(sizeof(float) * (size_t)(b * f->classes));
    f->probs = graft__malloc_aligned(sizeof(float) * (size_t)(b * f->classes));
    f->layer_mult = graft__calloc((size_t)f->model->n_layers + 1, sizeof(double));
    f->m1 = graft__calloc(np, sizeof(float));
    f->m2 = c->optimizer == GRAFT_OPTIMIZER_SGD ? NULL : graft__calloc(np, sizeof(float));
    f->w0 = c->l2_sp > 0.0 ? copy_params(f->model) : NULL;
    f->best = c->restore_best ? copy_params(f->model) : NULL;
    f->history = graft__calloc((size_t)c->epochs, sizeof *f->history);
    if (!f->grad_out || !f->probs || !f->layer_mult || !f->m1 || !f->history ||
        (c->optimizer != GRAFT_OPTIMIZER_SGD && !f->m2) || (c->l2_sp > 0.0 && !f->w0) ||
        (c->restore_best && !f->best))
        return graft__fail(GRAFT_E_NOMEM, "out of memory preparing training");
    return GRAFT_OK;
}

static void fit_free(graft__fit *f)
{
    graft__prefetch_stop(&f->prefetch);
    graft__train_graph_free(&f->tg);
    free_batches(f);
    graft__free_aligned(f->grad_out);
    graft__free_aligned(f->probs);
    graft__free(f->layer_mult);
    graft__free(f->m1);
    graft__free(f->m2);
    graft__free_aligned(f->w0);
    graft__free_aligned(f->best);
    graft__free(f->history);
    graft__free(f->order);
    graft__feature_cache_free(&f->train_cache);
    graft__feature_cache_free(&f->val_cache);
}

/* The same permutation for the same (seed, epoch), whatever happened before. */
static void shuffle(int64_t *order, int64_t n, uint64_t seed, int epoch)
{
    for (int64_t i = 0; i < n; i++)
        order[i] = i;
    uint64_t s = graft__seed_derive(seed, (uint64_t)epoch);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(graft__mix64(s + (uint64_t)i) % (uint64_t)(i + 1));
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* Regularisation gradients, then the optimiser, weight by weight. */
static void apply_update(graft__fit *f, double lr)
{
    graft_model *m = f->model;
    const graft_train_config *c = &f->cfg;
    int64_t t = f->state.step + 1;
    for (int i = 0; i < m->n_layers; i++) {
        graft__layer *layer = m->layers[i];
        for (int w = 0; w < layer->n_weights; w++) {
            if (!graft__weight_learns(layer, w))
                continue;
            graft__weight *wt = &layer->weights[w];
            int64_t off = wt->offset, n = graft__shape_elems(&wt->shape);
            float *g = f->tg.grads + off;
            if (wt->loaded && c->l2_sp > 0.0)
                graft__l2sp_grad((float)c->l2_sp, wt->data, f->w0 + off, g, 0, n);
            else if (!wt->loaded && c->l2_new > 0.0)
                graft__l2sp_grad((float)c->l2_new, wt->data, NULL, g, 0, n);
            float step_lr = (float)(lr * f->layer_mult[i]);
            if (c->optimizer == GRAFT_OPTIMIZER_SGD) {
                graft__sgd_config sc = {(float)c->momentum, c->nesterov, (float)c->weight_decay};
                graft__sgd_step_parallel(&sc, step_lr, t, wt->data, g, f->m1 + off, n);
            } else {
                graft__adam_config ac = {(float)c->beta1, (float)c->beta2, (float)c->epsilon,
                                         (float)c->weight_decay,
                                         c->optimizer == GRAFT_OPTIMIZER_ADAMW};
                graft__adam_step_parallel(&ac, step_lr, t, wt->data, g, f->m1 + off, f->m2 + off, n);
            }
        }
    }
}

static void zero_grads(graft__fit *f)
{
    graft_model *m = f->model;
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++)
            if (graft__weight_learns(m->layers[i], w))
                memset(f->tg.grads + m->layers[i]->weights[w].offset, 0,
                       sizeof(float) * (size_t)graft__shape_elems(&m->layers[i]->weights[w].shape));
}

static void clip_grads(graft__fit *f)
{
    graft_model *m = f->model;
    float *arrays[4096];
    int64_t counts[4096];
    int n = 0;
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights && n < 4096; w++)
            if (graft__weight_learns(m->layers[i], w)) {
                arrays[n] = f->tg.grads + m->layers[i]->weights[w].offset;
                counts[n++] = graft__shape_elems(&m->layers[i]->weights[w].shape);
            }
    double norm;
    graft__clip_global_norm(n, arrays, counts, f->cfg.clip_norm, &norm);
}

/* ---- preparing a batch (on the prefetch thread, or inline) ---------------- */

/* The batch's mixing: its own seed from (seed, epoch, batch), so it is the same
 * whatever the thread, the prefetch depth or an interruption before it. With
 * both mixup and cutmix on, each batch takes one of them with probability 1/2
 * (timm's switch_prob default). */
static graft_status mix_batch(const graft__fit *f, int epoch, int64_t index, graft__batch *b)
{
    const graft_train_config *c = &f->cfg;
    uint64_t seed = graft__seed_derive(graft__seed_derive(c->seed ^ 0x3a1c5eedull,
                                                          (uint64_t)epoch), (uint64_t)index);
    int cutmix = c->cutmix > 0.0 && (c->mixup <= 0.0 || graft__uniform(seed, 0) < 0.5f);
    double lambda = 1.0;
    graft_status rc = graft__mix_batch(cutmix ? GRAFT__MIX_CUTMIX : GRAFT__MIX_MIXUP, b->x, b->y,
                                       b->n, f->mix_h, f->mix_w, f->mix_c,
                                       cutmix ? c->cutmix : c->mixup, graft__seed_derive(seed, 1),
                                       b->y_mix, &lambda);
    for (int64_t i = 0; i < b->n; i++)
        b->lambda[i] = (float)lambda;
    b->mixed = 1;
    return rc;
}

/* Batch `index` of the current epoch's order: fill, check the labels, mix. Reads
 * only what stays fixed while an epoch runs, so it may run on another thread. */
static graft_status prepare_batch(void *user, int64_t index, void *slot)
{
    const graft__fit *f = user;
    const graft_batch_source *src = f->epoch_source;
    graft__batch *b = slot;
    int64_t start = index * f->cfg.batch_size;
    b->n = src->count - start < f->cfg.batch_size ? src->count - start : f->cfg.batch_size;
    b->mixed = 0;
    graft_status rc = src->fill(src->user, f->order + start, b->n, f->epoch_now, b->x, b->y);
    if (rc)
        return rc;
    for (int64_t i = 0; i < b->n; i++)
        if (b->y[i] < 0 || b->y[i] >= f->classes)
            return graft__fail(GRAFT_E_INVALID_ARG, "label %d is outside the model's %lld classes",
                               (int)b->y[i], (long long)f->classes);
    if (f->cfg.mixup > 0.0 || f->cfg.cutmix > 0.0)
        return mix_batch(f, f->epoch_now, index, b);
    return GRAFT_OK;
}

/* ---- one step --------------------------------------------------------------- */

/* Top-1 hits against the label of larger weight (y on a tie): for a mixed batch
 * what Keras's categorical_accuracy reports on the mixed targets, up to ties. */
static int64_t count_correct(const graft__fit *f, const float *out, const graft__batch *b)
{
    if (!b->mixed)
        return graft__count_top1(out, b->y, b->n, f->classes);
    int64_t correct = 0;
    for (int64_t i = 0; i < b->n; i++) {
        int32_t dominant = b->lambda[i] >= 0.5f ? b->y[i] : b->y_mix[i];
        correct += graft__count_top1(out + i * f->classes, &dominant, 1, f->classes);
    }
    return correct;
}

/* Forward a filled batch; loss, gradient at the output, correct count. */
static graft_status batch_loss(graft__fit *f, const graft__batch *b, int training, uint64_t seed,
                               double *loss, int64_t *correct)
{
    graft__train_forward(&f->tg, b->x, b->n, training, seed, f->logits_output);
    const float *out = graft__train_output(&f->tg);
    float smoothing = (float)f->cfg.label_smoothing;
    float *grad = training ? f->grad_out : NULL;
    graft_status rc =
        b->mixed ? graft__softmax_xent_mixed(out, b->y, b->y_mix, b->lambda, b->n, f->classes,
                                             smoothing, f->cfg.class_weights, loss, f->probs, grad)
                 : graft__softmax_xent(out, b->y, b->n, f->classes, smoothing,
                                       f->cfg.class_weights, loss, f->probs, grad);
    *correct = count_correct(f, out, b);
    return rc;
}

static graft_status train_step(graft__fit *f, const graft__batch *b, double *loss,
                               int64_t *correct)
{
    uint64_t seed = graft__seed_derive(f->cfg.seed ^ 0x5eedull, (uint64_t)f->state.step);
    graft_status rc = batch_loss(f, b, 1, seed, loss, correct);
    if (rc)
        return rc;
    zero_grads(f);
    graft__train_backward(&f->tg, f->grad_out, b->n, seed, f->logits_output);
    if (f->cfg.clip_norm > 0.0)
        clip_grads(f);
    double lr = graft__lr_at(&f->schedule, f->state.step) * f->state.lr_scale;
    apply_update(f, lr);
    f->state.step++;
    return GRAFT_OK;
}

static graft_status evaluate(graft__fit *f, const graft_batch_source *val, double *loss,
                             double *accuracy)
{
    int64_t b = f->cfg.batch_size, total_correct = 0;
    double total_loss = 0.0;
    int64_t idx[4096];
    graft__batch *batch = &f->batches[0];
    for (int64_t start = 0; start < val->count; start += b) {
        int64_t n = val->count - start < b ? val->count - start : b;
        for (int64_t i = 0; i < n; i++)
            idx[i] = start + i;
        batch->n = n;
        batch->mixed = 0;
        graft_status rc = val->fill(val->user, idx, n, 0, batch->x, batch->y);
        double l = 0.0;
        int64_t correct = 0;
        if (!rc)
            rc = batch_loss(f, batch, 0, 0, &l, &correct);
        if (rc)
            return rc;
        total_loss += l * (double)n;
        total_correct += correct;
    }
    *loss = total_loss / (double)val->count;
    *accuracy = (double)total_correct / (double)val->count;
    return GRAFT_OK;
}

/* Lower is better: accuracy is negated. */
static double monitor_score(const graft_train_config *c, const graft_epoch_metrics *e)
{
    return c->monitor == GRAFT_MONITOR_VAL_ACCURACY ? -e->val_accuracy : e->val_loss;
}

/* Early stopping and reduce-on-plateau bookkeeping; returns 1 to stop. */
static int after_validation(graft__fit *f, graft_epoch_metrics *e)
{
    const graft_train_config *c = &f->cfg;
    double score = monitor_score(c, e);
    if (f->state.best_epoch == 0 || score < f->state.best_score - c->min_delta) {
        f->state.best_score = score;
        f->state.best_epoch = e->epoch;
        f->state.wait = f->state.plateau_wait = 0;
        e->best = 1;
        if (f->best)
            memcpy(f->best, f->model->params, sizeof(float) * (size_t)f->model->n_params);
        return 0;
    }
    f->state.wait++;
    if (c->plateau_patience > 0 && ++f->state.plateau_wait >= c->plateau_patience) {
        f->state.lr_scale *= c->plateau_factor;
        f->state.plateau_wait = 0;
    }
    return c->patience > 0 && f->state.wait >= c->patience;
}

/* The epoch's remaining batches, each prepared by the prefetcher (ahead, on its
 * thread, when cfg.prefetch > 0) and trained on here. */
static graft_status train_batches(graft__fit *f, const graft_batch_source *train, int epoch)
{
    const graft_train_config *c = &f->cfg;
    f->epoch_source = train;
    f->epoch_now = epoch;
    /* The prefetch thread's own OpenMP regions (a dataset's decoding) get as many
     * threads as compute: on 2 cores a team of 2 beside compute's 2 beat a
     * single decoding thread (bench_data, prefetch section), the consumer's
     * waits for a late batch then ending sooner. */
    graft__prefetch_start(&f->prefetch, prepare_batch, f, f->slots, f->n_batches,
                          graft_threads(), f->state.next_batch, f->steps_per_epoch);
    graft_status rc = GRAFT_OK;
    while (!rc && f->state.next_batch < f->steps_per_epoch) {
        void *slot;
        double loss = 0.0;
        int64_t correct = 0;
        rc = graft__prefetch_get(&f->prefetch, &slot);
        if (!rc)
            rc = train_step(f, slot, &loss, &correct);
        if (rc)
            break;
        f->state.loss_sum += loss * (double)((const graft__batch *)slot)->n;
        f->state.correct_sum += correct;
        f->state.next_batch++;
        if (c->on_step)
            c->on_step(epoch, f->state.next_batch, f->steps_per_epoch, loss, c->user);
        if (c->stop && *c->stop && f->state.next_batch < f->steps_per_epoch)
            rc = GRAFT_E_INTERRUPTED; /* nothing more is prepared than already is */
        else
            graft__prefetch_release(&f->prefetch);
    }
    graft__prefetch_stop(&f->prefetch);
    return rc;
}

static graft_status run_epoch(graft__fit *f, const graft_batch_source *train,
                              const graft_batch_source *val, graft_epoch_metrics *e, int *stop)
{
    const graft_train_config *c = &f->cfg;
    int epoch = f->state.epoch + 1;
    double start = now_seconds();
    shuffle(f->order, train->count, c->seed, epoch);
    graft_status rc = train_batches(f, train, epoch);
    if (rc)
        return rc;
    double loss_sum = f->state.loss_sum;
    int64_t correct_sum = f->state.correct_sum;
    f->state.next_batch = 0;
    f->state.loss_sum = 0.0;
    f->state.correct_sum = 0;
    memset(e, 0, sizeof *e);
    e->epoch = epoch;
    e->train_loss = loss_sum / (double)train->count;
    e->train_accuracy = (double)correct_sum / (double)train->count;
    e->learning_rate = graft__lr_at(&f->schedule, f->state.step - 1) * f->state.lr_scale;
    e->val_loss = e->val_accuracy = NAN;
    if (val && val->count > 0) {
        rc = evaluate(f, val, &e->val_loss, &e->val_accuracy);
        if (rc)
            return rc;
        *stop = after_validation(f, e);
    }
    e->seconds = now_seconds() - start;
    e->images_per_second = (double)train->count / e->seconds;
    f->state.epoch = epoch;
    f->history[f->n_history++] = *e;
    return GRAFT_OK;
}

/* Mixing acts on what the trained layers start from: the input, or the cached
 * features at the boundary (a vector counts as one pixel of many channels). */
static graft_status mix_shape(graft__fit *f)
{
    const graft__shape *s = &f->model->nodes[f->boundary].shape;
    if (s->rank == 3) {
        f->mix_h = s->dim[0];
        f->mix_w = s->dim[1];
        f->mix_c = s->dim[2];
    } else {
        f->mix_h = f->mix_w = 1;
        f->mix_c = f->sample;
    }
    if (f->cfg.cutmix > 0.0 && s->rank != 3)
        return graft__fail(GRAFT_E_UNSUPPORTED, "cutmix needs an (H, W, C) input; layer '%s' "
                           "gives rank %d", f->model->nodes[f->boundary].layer->name, s->rank);
    return GRAFT_OK;
}

static graft_status fit_init(graft__fit *f, graft_model *model, const graft_batch_source **train,
                             const graft_batch_source **val, const graft_train_config *config)
{
    memset(f, 0, sizeof *f);
    f->model = model;
    f->cfg = *config;
    if (f->cfg.prefetch < 0)
        f->cfg.prefetch = omp_get_num_procs() > graft_threads() ? 1 : 0;
    f->state.lr_scale = 1.0;
    int64_t h, w, ch;
    graft_status rc = check_config(config);
    if (!rc && (!*train || !(*train)->fill || (*train)->count < 1))
        rc = graft__fail(GRAFT_E_INVALID_ARG, "training needs at least one example");
    if (!rc)
        rc = graft_model_input_size(model, &h, &w, &ch);
    if (rc)
        return rc;
    f->sample = h * w * ch;
    f->classes = graft_model_output_size(model);
    f->boundary = model->input_node;
    if ((rc = output_kind(f)))
        return rc;
    if (config->cache_views > 0 && (rc = use_feature_cache(f, train, val)))
        return rc;
    if ((rc = mix_shape(f)))
        return rc;
    f->steps_per_epoch = ((*train)->count + config->batch_size - 1) / config->batch_size;
    f->order = graft__calloc((size_t)(*train)->count, sizeof(int64_t));
    if (!f->order)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    if ((rc = alloc_buffers(f)) || (rc = build_schedule(f)) || (rc = build_layer_multipliers(f)) ||
        (rc = graft__train_graph_init(&f->tg, model, config->batch_size, config->bn_inference)))
        return rc;
    graft__train_graph_start_at(&f->tg, f->boundary);
    return GRAFT_OK;
}

static void fill_result(const graft__fit *f, graft_train_result *r)
{
    memset(r, 0, sizeof *r);
    r->epochs_run = f->state.epoch;
    r->best_epoch = f->state.best_epoch;
    if (f->n_history > 0) {
        r->last = f->history[f->n_history - 1];
        r->best = f->state.best_epoch > 0 ? f->history[f->state.best_epoch - 1] : r->last;
    }
}

graft_status graft_train(graft_model *model, const graft_batch_source *train,
                         const graft_batch_source *val, const graft_train_config *config,
                         graft_train_result *result)
{
    if (!model || !config)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_train: model and config are required");
    graft__fit f;
    graft_status rc = fit_init(&f, model, &train, &val, config);
    if (!rc && config->resume) {
        rc = graft__checkpoint_read(&f, config->checkpoint);
        if (rc == GRAFT_E_NOT_FOUND)
            rc = GRAFT_OK;
    }
    int stop = 0;
    while (!rc && !stop && f.state.epoch < config->epochs) {
        graft_epoch_metrics e;
        rc = run_epoch(&f, train, val, &e, &stop);
        if (!rc && config->checkpoint)
            rc = graft__checkpoint_write(&f, config->checkpoint);
        if (!rc && config->on_epoch && config->on_epoch(&e, config->user))
            stop = 1;
        if (!rc && config->stop && *config->stop)
            rc = graft__fail(GRAFT_E_INTERRUPTED, "training interrupted after epoch %d",
                             f.state.epoch);
    }
    if (rc == GRAFT_E_INTERRUPTED && config->checkpoint && f.state.next_batch > 0) {
        graft_status wrc = graft__checkpoint_write(&f, config->checkpoint);
        rc = wrc ? wrc : graft__fail(GRAFT_E_INTERRUPTED, "training interrupted in epoch %d "
                                     "(checkpoint written)", f.state.epoch + 1);
    }
    if (!rc && f.best && f.state.best_epoch > 0 && config->restore_best)
        memcpy(model->params, f.best, sizeof(float) * (size_t)model->n_params);
    if (result)
        fill_result(&f, result);
    fit_free(&f);
    /* Inference plans fold BatchNorm into the weights they were built from. */
    graft__plan_free(&model->plan);
    graft__plan_free(&model->plain_plan);
    return rc;
}
