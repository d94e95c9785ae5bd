#include "cli/run.h"

#include <dirent.h>
#include <signal.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/report.h"
#include "data/dataset.h"

enum { MAX_EPOCHS = 1024, MAX_WRONG = 12 };

typedef struct progress {
    const train_options *o;
    int phase;                          /* 1 or 2 */
    int n;
    graft_epoch_metrics history[MAX_EPOCHS];
    int phase2_first;                   /* index into history, -1 before phase 2 */
    int max_epochs[3];
    int tty;                            /* stdout is a terminal: draw progress bars */
    double epoch_start;
} progress;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* On a terminal, one bar per epoch, redrawn in place. */
static void on_step(int epoch, int64_t step, int64_t steps, double loss, void *user)
{
    progress *p = user;
    if (!p->tty || p->o->quiet || p->o->json)
        return;
    if (step == 1)
        p->epoch_start = now_seconds();
    double elapsed = now_seconds() - p->epoch_start;
    double eta = step > 0 ? elapsed * (double)(steps - step) / (double)step : 0.0;
    int width = 24, done = (int)(width * step / (steps > 0 ? steps : 1));
    char bar[32];
    for (int i = 0; i < width; i++)
        bar[i] = i < done ? '=' : i == done ? '>' : ' ';
    bar[width] = '\0';
    printf("\rphase %d epoch %d/%d [%s] %lld/%lld  loss %.4f  ETA %.0fs   ",
           p->phase == 1 && epoch == 1 && p->n > 0 ? 2 : p->phase, epoch,
           p->max_epochs[p->phase == 1 && epoch == 1 && p->n > 0 ? 2 : p->phase], bar,
           (long long)step, (long long)steps, loss, eta);
    fflush(stdout);
}

static int on_epoch(const graft_epoch_metrics *e, void *user)
{
    progress *p = user;
    if (p->tty && !p->o->quiet && !p->o->json)
        printf("\r%*s\r", 100, "");
    if (e->epoch == 1 && p->n > 0 && p->phase == 1) {
        p->phase = 2;
        p->phase2_first = p->n;
    }
    if (p->n < MAX_EPOCHS)
        p->history[p->n++] = *e;
    if (p->o->quiet)
        return 0;
    if (p->o->json) {
        printf("{\"event\":\"epoch\",\"phase\":%d,\"epoch\":%d,\"train_loss\":%.6g,"
               "\"train_accuracy\":%.6g,\"val_loss\":%.6g,\"val_accuracy\":%.6g,"
               "\"learning_rate\":%.6g,\"seconds\":%.3f,\"images_per_second\":%.1f,\"best\":%s}\n",
               p->phase, e->epoch, e->train_loss, e->train_accuracy,
               isnan(e->val_loss) ? -1.0 : e->val_loss, isnan(e->val_accuracy) ? -1.0 : e->val_accuracy,
               e->learning_rate, e->seconds, e->images_per_second, e->best ? "true" : "false");
    } else if (p->phase == 1 && p->o->recipe.linear_probe) {
        printf("phase 1 linear probe (L-BFGS)  loss %.4f  acc %.4f", e->train_loss,
               e->train_accuracy);
        if (!isnan(e->val_loss))
            printf("  val_loss %.4f  val_acc %.4f", e->val_loss, e->val_accuracy);
        printf("  %.1fs\n", e->seconds);
    } else {
        printf("phase %d epoch %2d/%d  loss %.4f  acc %.4f", p->phase, e->epoch,
               p->max_epochs[p->phase], e->train_loss, e->train_accuracy);
        if (!isnan(e->val_loss))
            printf("  val_loss %.4f  val_acc %.4f%s", e->val_loss, e->val_accuracy,
                   e->best ? " *" : "");
        printf("  lr %.2g  %.0f img/s  %.1fs\n", e->learning_rate, e->images_per_second,
               e->seconds);
    }
    fflush(stdout);
    return 0;
}

static json_t *history_json(const progress *p)
{
    json_t *list = json_array();
    for (int i = 0; i < p->n; i++) {
        const graft_epoch_metrics *e = &p->history[i];
        json_t *row = json_pack("{s:i,s:i,s:f,s:f,s:f,s:f,s:f}", "phase",
                                p->phase2_first >= 0 && i >= p->phase2_first ? 2 : 1, "epoch",
                                e->epoch, "train_loss", e->train_loss, "train_accuracy",
                                e->train_accuracy, "learning_rate", e->learning_rate, "seconds",
                                e->seconds, "images_per_second", e->images_per_second);
        if (!isnan(e->val_loss)) {
            json_object_set_new(row, "val_loss", json_real(e->val_loss));
            json_object_set_new(row, "val_accuracy", json_real(e->val_accuracy));
        }
        json_array_append_new(list, row);
    }
    return list;
}

static json_t *evaluation_json(const graft_evaluation *ev, graft_dataset *ds)
{
    int64_t k = ev->classes;
    double *pr = calloc((size_t)k, sizeof(double)), *rc = calloc((size_t)k, sizeof(double));
    double *f1 = calloc((size_t)k, sizeof(double));
    int64_t *support = calloc((size_t)k, sizeof(int64_t));
    report_class_metrics(ev->confusion, k, pr, rc, f1, support);
    json_t *per_class = json_array(), *confusion = json_array();
    for (int64_t c = 0; c < k; c++) {
        const char *name = c < graft_dataset_class_count(ds) ? graft_dataset_class_name(ds, c) : "?";
        json_array_append_new(per_class,
                              json_pack("{s:s,s:f,s:f,s:f,s:I}", "class", name, "precision", pr[c],
                                        "recall", rc[c], "f1", f1[c], "support",
                                        (json_int_t)support[c]));
        json_t *row = json_array();
        for (int64_t j = 0; j < k; j++)
            json_array_append_new(row, json_integer(ev->confusion[c * k + j]));
        json_array_append_new(confusion, row);
    }
    free(pr);
    free(rc);
    free(f1);
    free(support);
    return json_pack("{s:I,s:f,s:f,s:f,s:o,s:o}", "count", (json_int_t)ev->count, "accuracy",
                     ev->accuracy, "top5_accuracy", ev->top5_accuracy, "loss", ev->loss,
                     "per_class", per_class, "confusion", confusion);
}

static int write_json_file(const char *dir, const char *name, json_t *j)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int ok = json_dump_file(j, tmp, JSON_INDENT(2)) == 0 && rename(tmp, path) == 0;
    if (!ok) {
        unlink(tmp);
        cli_error("%s: cannot write", path);
    }
    return ok;
}

/* The most confident wrong predictions, most confident first. */
static int pick_wrong(const graft_evaluation *ev, graft_dataset *ds, int64_t *out)
{
    int n = 0;
    for (int64_t i = 0; i < ev->count; i++) {
        if (ev->predicted[i] == graft_dataset_label(ds, i))
            continue;
        int at = n < MAX_WRONG ? n++ : MAX_WRONG;
        if (at == MAX_WRONG && ev->probability[i] <= ev->probability[out[MAX_WRONG - 1]])
            continue;
        if (at == MAX_WRONG)
            at = MAX_WRONG - 1;
        while (at > 0 && ev->probability[out[at - 1]] < ev->probability[i]) {
            out[at] = out[at - 1];
            at--;
        }
        out[at] = i;
    }
    return n;
}

static void write_report(const train_options *o, const char *dir, const progress *p,
                         const graft_evaluation *ev, graft_dataset *val, graft_dataset *thumbs,
                         const char *const *keys, const char *const *values, int n_summary)
{
    int64_t wrong_idx[MAX_WRONG];
    int n_wrong = pick_wrong(ev, val, wrong_idx);
    report_example wrong[MAX_WRONG];
    float *pixels = NULL;
    int64_t th = 0, tw = 0;
    if (thumbs && n_wrong > 0) {
        graft__dataset_size(thumbs, &th, &tw);
        pixels = malloc(sizeof(float) * (size_t)(n_wrong * th * tw * 3));
        if (pixels && graft_dataset_load(thumbs, wrong_idx, n_wrong, NULL, 0, pixels, NULL) != GRAFT_OK) {
            free(pixels);
            pixels = NULL;
        }
    }
    for (int i = 0; i < n_wrong; i++)
        wrong[i] = (report_example){pixels ? pixels + i * th * tw * 3 : NULL, th, tw,
                                    graft_dataset_label(val, wrong_idx[i]),
                                    ev->predicted[wrong_idx[i]], ev->probability[wrong_idx[i]],
                                    graft_dataset_path(val, wrong_idx[i])};
    const char *names[4096];
    int64_t k = graft_dataset_class_count(val);
    for (int64_t c = 0; c < k && c < 4096; c++)
        names[c] = graft_dataset_class_name(val, c);
    char title[512], path[4096];
    snprintf(title, sizeof title, "graft train -> %s", o->out);
    report_input in = {title, k, names, p->history, p->n, p->phase2_first, ev->confusion,
                       wrong, pixels ? n_wrong : 0, keys, values, n_summary};
    snprintf(path, sizeof path, "%s/report.html", dir);
    if (report_write_html(&in, path) != GRAFT_OK)
        cli_error("%s", graft_last_error());
    free(pixels);
}

/* Removes a folder graft wrote (its files are flat). */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' || (e->d_name[1] && strcmp(e->d_name, "..")))
            if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
                unlink(path);
    if (d)
        closedir(d);
    rmdir(dir);
}

int out_is_graft_folder(const char *dir)
{
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/model.json", dir);
    snprintf(b, sizeof b, "%s/config.json", dir);
    return access(a, F_OK) == 0 && access(b, F_OK) == 0;
}

int out_check(const train_options *o)
{
    struct stat st;
    if (stat(o->out, &st) != 0)
        return CLI_OK;
    if (!S_ISDIR(st.st_mode) || !out_is_graft_folder(o->out)) {
        cli_error("%s exists and is not a graft output folder: choose another -o", o->out);
        return CLI_BAD_INPUT;
    }
    if (!o->force) {
        cli_error("%s exists: pass --force to replace it", o->out);
        return CLI_BAD_USAGE;
    }
    return CLI_OK;
}

/* Moves the finished temporary folder to OUT; an old OUT (checked to be graft's
 * and --force given) is moved aside first and removed only after. */
static int out_commit(const train_options *o, const char *tmp_dir)
{
    char old[4096];
    snprintf(old, sizeof old, "%s.old-%ld", o->out, (long)getpid());
    int had_old = access(o->out, F_OK) == 0;
    if (had_old && rename(o->out, old) != 0) {
        cli_error("%s: cannot move aside: %s", o->out, strerror(errno));
        return CLI_BAD_INPUT;
    }
    if (rename(tmp_dir, o->out) != 0) {
        cli_error("%s: cannot rename %s into place: %s", o->out, tmp_dir, strerror(errno));
        if (had_old)
            rename(old, o->out);
        return CLI_BAD_INPUT;
    }
    if (had_old)
        remove_tree(old);
    return CLI_OK;
}

static void print_choices(const train_options *o, const graft_recipe_result *res)
{
    if (o->quiet || o->json)
        return;
    printf("cut at %s%s; fine-tune from %s%s\n", res->cut, o->cut[0] ? "" : " (default)",
           res->phase2_run ? res->fine_tune_at : "(no phase 2)",
           o->fine_tune_at[0] || !res->phase2_run ? "" : " (picked by the recipe)");
}

/* SIGINT asks training to finish its step and stop; the handler only sets this. */
static volatile sig_atomic_t interrupted;
static volatile int stop_training;

static void on_sigint(int sig)
{
    interrupted = 1;
    stop_training = 1;
}

int run_recipe(train_options *o, graft_model *model, graft_dataset *train, graft_dataset *val,
               graft_dataset *test, graft_dataset *thumbs, double *phase_accuracy)
{
    if (o->auto_recipe && auto_choose(o, train) != CLI_OK)
        return CLI_BAD_INPUT;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    o->recipe.phase1.stop = o->recipe.phase2.stop = &stop_training;
    progress *p = calloc(1, sizeof *p);
    if (!p)
        return CLI_BAD_INPUT;
    p->o = o;
    p->phase = 1;
    p->phase2_first = -1;
    p->max_epochs[1] = o->recipe.phase1.epochs;
    p->max_epochs[2] = o->recipe.phase2.epochs;
    o->recipe.phase1.on_epoch = o->recipe.phase2.on_epoch = on_epoch;
    o->recipe.phase1.on_step = o->recipe.phase2.on_step = on_step;
    p->tty = isatty(STDOUT_FILENO);
    o->recipe.phase1.user = o->recipe.phase2.user = p;
    graft_recipe_result res;
    int status = CLI_OK;
    if (graft_recipe_run(model, train, val, &o->recipe, &res) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        free(p);
        if (interrupted)
            cli_error("interrupted: %s was not written", o->out);
        return interrupted ? 130 : CLI_BAD_INPUT;
    }
    print_choices(o, &res);
    graft_evaluation ev, tev;
    memset(&tev, 0, sizeof tev);
    graft_dataset *judge = val ? val : train;
    if (graft_evaluate(model, judge, o->recipe.phase1.batch_size, 0, &ev) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        free(p);
        return CLI_BAD_INPUT;
    }
    if (test && graft_evaluate(model, test, 64, 0, &tev) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        status = CLI_BAD_INPUT;
    }
    if (phase_accuracy && test)
        phase_accuracy[1] = tev.accuracy;
    /* Everything goes to a temporary folder renamed into place at the end, so an
     * existing OUT is never left half overwritten. */
    char tmp_dir[4096];
    snprintf(tmp_dir, sizeof tmp_dir, "%s.tmp-%ld", o->out, (long)getpid());
    if (mkdir(tmp_dir, 0755) != 0) {
        cli_error("%s: cannot create the output folder: %s", tmp_dir, strerror(errno));
        status = CLI_BAD_INPUT;
    }
    if (status == CLI_OK && graft_model_save(model, tmp_dir) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        status = CLI_BAD_INPUT;
    }
    json_t *config = train_options_to_json(o, &res);
    json_t *metrics = json_pack("{s:o,s:i,s:o}", "history", history_json(p), "phase2_first_epoch",
                                p->phase2_first, "val", evaluation_json(&ev, judge));
    if (test)
        json_object_set_new(metrics, "test", evaluation_json(&tev, test));
    if (status == CLI_OK && (!write_json_file(tmp_dir, "config.json", config) ||
                             !write_json_file(tmp_dir, "metrics.json", metrics)))
        status = CLI_BAD_INPUT;
    char acc[64], tacc[64], n_train[32];
    snprintf(acc, sizeof acc, "%.4f", ev.accuracy);
    snprintf(tacc, sizeof tacc, "%.4f", tev.accuracy);
    snprintf(n_train, sizeof n_train, "%lld", (long long)graft_dataset_count(train));
    const char *keys[] = {"base", "cut", "fine-tune from", "training images", "validation accuracy",
                          "test accuracy"};
    const char *values[] = {o->base, res.cut, res.phase2_run ? res.fine_tune_at : "(none)",
                            n_train, acc, tacc};
    if (status == CLI_OK)
        write_report(o, tmp_dir, p, &ev, judge, thumbs, keys, values, test ? 6 : 5);
    if (status == CLI_OK)
        status = out_commit(o, tmp_dir);
    else
        remove_tree(tmp_dir);
    if (!o->quiet) {
        if (o->json) {
            json_t *end = json_pack("{s:s,s:O,s:O}", "event", "done", "config", config, "val",
                                    json_object_get(metrics, "val"));
            if (test)
                json_object_set(end, "test", json_object_get(metrics, "test"));
            char *text = json_dumps(end, JSON_COMPACT);
            puts(text);
            free(text);
            json_decref(end);
        } else {
            printf("%s accuracy %.4f (%lld images)", val ? "validation" : "training", ev.accuracy,
                   (long long)ev.count);
            if (test)
                printf(", test accuracy %.4f (%lld images)", tev.accuracy, (long long)tev.count);
            printf("\nwrote %s/{model.json, labels.txt, metrics.json, config.json, report.html}\n",
                   o->out);
        }
    }
    json_decref(config);
    json_decref(metrics);
    graft_evaluation_free(&ev);
    graft_evaluation_free(&tev);
    free(p);
    return status;
}

static graft_status open_at(const char *path, const train_options *o, int64_t h, int64_t w,
                            graft_preprocess pre, graft_dataset **out)
{
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = h;
    opts.width = w;
    opts.resize = o->resize;
    opts.preprocess = pre;
    opts.threads = (int)o->threads;
    return graft_dataset_open(path, &opts, out);
}

static void print_dataset(const train_options *o, const char *what, graft_dataset *ds)
{
    if (o->quiet || o->json)
        return;
    int64_t k = graft_dataset_class_count(ds), counts[4096];
    graft_dataset_class_counts(ds, counts);
    printf("%s: %lld images in %lld classes:", what, (long long)graft_dataset_count(ds), (long long)k);
    for (int64_t c = 0; c < k && c < 4096; c++)
        printf(" %s=%lld", graft_dataset_class_name(ds, c), (long long)counts[c]);
    printf("\n");
    const char *first = NULL;
    int64_t skipped = graft_dataset_skipped(ds, &first);
    if (skipped)
        printf("%s: skipped %lld unreadable files (first: %s)\n", what, (long long)skipped, first);
    for (int64_t c = 0; c < k && c < 4096; c++)
        if (counts[c] < 5)
            printf("warning: class '%s' has only %lld images\n", graft_dataset_class_name(ds, c),
                   (long long)counts[c]);
}

/* Labels are class indices in sorted-name order, so both sources must have
 * exactly the same classes. */
static int same_classes(graft_dataset *train, graft_dataset *val, const char *val_path)
{
    int64_t nt = graft_dataset_class_count(train), nv = graft_dataset_class_count(val);
    for (int64_t c = 0; c < nt; c++) {
        int found = 0;
        for (int64_t d = 0; d < nv && !found; d++)
            found = !strcmp(graft_dataset_class_name(train, c), graft_dataset_class_name(val, d));
        if (!found) {
            cli_error("%s: the validation data has no class '%s'", val_path,
                      graft_dataset_class_name(train, c));
            return 0;
        }
    }
    if (nv != nt) {
        cli_error("%s: the validation data has %lld classes, the training data %lld", val_path,
                  (long long)nv, (long long)nt);
        return 0;
    }
    return 1;
}

graft_status split_or_keep(graft_dataset *all, double val_fraction, uint64_t seed,
                           graft_dataset **train, graft_dataset **val)
{
    if (val_fraction > 0.0)
        return graft_dataset_split(all, val_fraction, seed, train, val);
    *train = all;
    *val = NULL;
    return GRAFT_OK;
}

int run_training(train_options *o, const char *data, const char *unused)
{
    int checked = out_check(o);
    if (checked != CLI_OK)
        return checked;
    graft_model *model = NULL;
    if (load_base(o, &model) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        return CLI_BAD_INPUT;
    }
    int64_t h, w, c;
    graft_model_input_size(model, &h, &w, &c);
    if (o->size > 0)
        h = w = o->size;
    graft_dataset *all = NULL, *train = NULL, *val = NULL, *thumbs_all = NULL, *thumbs = NULL,
                  *thumbs_train = NULL;
    int status = CLI_OK;
    graft_status rc = open_at(data, o, h, w, o->preprocess, &all);
    if (!rc && o->val) {
        train = all;
        rc = open_at(o->val, o, h, w, o->preprocess, &val);
        if (!rc)
            rc = open_at(o->val, o, 96, 96, GRAFT_PREPROCESS_NONE, &thumbs);
    } else if (!rc) {
        auto_plan_split(o, all);
        rc = split_or_keep(all, o->val_split, o->recipe.seed, &train, &val);
        if (!rc && open_at(data, o, 96, 96, GRAFT_PREPROCESS_NONE, &thumbs_all) == GRAFT_OK)
            split_or_keep(thumbs_all, o->val_split, o->recipe.seed, &thumbs_train, &thumbs);
    }
    if (rc) {
        cli_error("%s", graft_last_error());
        status = CLI_BAD_INPUT;
    } else if (o->val && !same_classes(train, val, o->val)) {
        status = CLI_BAD_INPUT;
    } else {
        print_dataset(o, "train", train);
        if (val)
            print_dataset(o, "val", val);
        else if (!o->quiet && !o->json)
            printf("val: none (--val-split 0): every image trains; no early stopping\n");
        status = run_recipe(o, model, train, val, NULL, thumbs, NULL);
    }
    graft_dataset_free(thumbs);
    if (thumbs_train != thumbs_all)
        graft_dataset_free(thumbs_train);
    graft_dataset_free(thumbs_all);
    if (train != all)
        graft_dataset_free(train);
    graft_dataset_free(val);
    graft_dataset_free(all);
    graft_model_free(model);
    return status;
}
