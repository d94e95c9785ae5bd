/* graft evaluate: accuracy, top-k, per-class metrics and the confusion matrix of
 * a model on labelled data. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/report.h"

static const char help[] =
    "usage: graft evaluate MODEL DATA [options]\n"
    "\n"
    "Predicts every image of DATA (a folder of class folders, a path,label CSV or an\n"
    "IDX file) with MODEL and prints accuracy, top-5 accuracy, per-class precision,\n"
    "recall and F1, and the confusion matrix. DATA's class names must match the\n"
    "model's labels.txt (they are matched by name).\n"
    "\n"
    "  --tta                   average each prediction with its horizontal mirror's\n"
    "  --json                  one JSON object instead of text\n"
    "  --preprocess MODE       as for predict (default mobilenet)\n"
    "  --resize MODE           stretch (default), crop or pad\n"
    "  --batch N               (default 32)\n"
    "  --threads N             (default: all cores)\n";

typedef struct eval_options {
    const char *model, *data;
    int tta, json;
    long batch, threads;
    graft_preprocess preprocess;
    graft_resize_mode resize;
} eval_options;

static int parse(int argc, char **argv, eval_options *o)
{
    *o = (eval_options){.batch = 32};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(help, stdout);
            return -1;
        } else if (!strcmp(a, "--tta")) {
            o->tta = 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--batch") || !strcmp(a, "--threads")) {
            if (!cli_parse_positive(a, v, !strcmp(a, "--batch") ? &o->batch : &o->threads))
                return CLI_BAD_USAGE;
            i++;
        } else if (!strcmp(a, "--preprocess") || !strcmp(a, "--resize")) {
            graft_status rc = !v ? GRAFT_E_INVALID_ARG
                              : !strcmp(a, "--preprocess") ? graft_preprocess_parse(v, &o->preprocess)
                                                           : graft_resize_mode_parse(v, &o->resize);
            if (rc) {
                cli_error("%s: %s", a, v ? graft_last_error() : "needs a value");
                return CLI_BAD_USAGE;
            }
            i++;
        } else if (a[0] == '-' || (o->model && o->data)) {
            cli_error("evaluate: unexpected argument '%s' (see graft evaluate --help)", a);
            return CLI_BAD_USAGE;
        } else if (!o->model) {
            o->model = a;
        } else {
            o->data = a;
        }
    }
    if (!o->model || !o->data) {
        cli_error("evaluate: needs MODEL and DATA (see graft evaluate --help)");
        return CLI_BAD_USAGE;
    }
    return CLI_OK;
}

/* The model's labels must name the dataset's classes in the same order. */
static int labels_match(const graft_model *m, graft_dataset *ds)
{
    for (int64_t c = 0; c < graft_dataset_class_count(ds); c++) {
        const char *label = graft_model_label(m, c);
        if (label && strcmp(label, graft_dataset_class_name(ds, c)) != 0) {
            cli_error("class %lld is '%s' in the data but '%s' in the model's labels",
                      (long long)c, graft_dataset_class_name(ds, c), label);
            return 0;
        }
    }
    return 1;
}

static void print_text(const graft_evaluation *ev, graft_dataset *ds)
{
    int64_t k = ev->classes;
    double *p = calloc((size_t)k, sizeof(double)), *r = calloc((size_t)k, sizeof(double));
    double *f = calloc((size_t)k, sizeof(double));
    int64_t *support = calloc((size_t)k, sizeof(int64_t));
    report_class_metrics(ev->confusion, k, p, r, f, support);
    printf("images %lld  accuracy %.4f  top-5 %.4f  loss %.4f\n\n", (long long)ev->count,
           ev->accuracy, ev->top5_accuracy, ev->loss);
    printf("%-24s %9s %9s %9s %8s\n", "class", "precision", "recall", "f1", "support");
    for (int64_t c = 0; c < k; c++)
        printf("%-24s %9.4f %9.4f %9.4f %8lld\n",
               c < graft_dataset_class_count(ds) ? graft_dataset_class_name(ds, c) : "?", p[c],
               r[c], f[c], (long long)support[c]);
    printf("\nconfusion matrix (rows: true, columns: predicted)\n");
    for (int64_t c = 0; c < k; c++) {
        for (int64_t j = 0; j < k; j++)
            printf("%6lld", (long long)ev->confusion[c * k + j]);
        printf("\n");
    }
    free(p);
    free(r);
    free(f);
    free(support);
}

static void print_json(const graft_evaluation *ev, graft_dataset *ds)
{
    int64_t k = ev->classes;
    double *p = calloc((size_t)k, sizeof(double)), *r = calloc((size_t)k, sizeof(double));
    double *f = calloc((size_t)k, sizeof(double));
    int64_t *support = calloc((size_t)k, sizeof(int64_t));
    report_class_metrics(ev->confusion, k, p, r, f, support);
    json_t *per_class = json_array(), *confusion = json_array();
    for (int64_t c = 0; c < k; c++) {
        json_array_append_new(per_class, json_pack("{s:s,s:f,s:f,s:f,s:I}", "class",
            c < graft_dataset_class_count(ds) ? graft_dataset_class_name(ds, c) : "?",
            "precision", p[c], "recall", r[c], "f1", f[c], "support", (json_int_t)support[c]));
        json_t *row = json_array();
        for (int64_t j = 0; j < k; j++)
            json_array_append_new(row, json_integer(ev->confusion[c * k + j]));
        json_array_append_new(confusion, row);
    }
    json_t *j = json_pack("{s:I,s:f,s:f,s:f,s:o,s:o}", "count", (json_int_t)ev->count, "accuracy",
                          ev->accuracy, "top5_accuracy", ev->top5_accuracy, "loss", ev->loss,
                          "per_class", per_class, "confusion", confusion);
    char *text = json_dumps(j, JSON_COMPACT);
    puts(text);
    free(text);
    json_decref(j);
    free(p);
    free(r);
    free(f);
    free(support);
}

int cli_evaluate(int argc, char **argv)
{
    eval_options o;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    cli_set_threads(o.threads);
    graft_model *m = NULL;
    graft_dataset *ds = NULL;
    graft_evaluation ev;
    int64_t h, w, c;
    if (graft_model_load(o.model, &m) != GRAFT_OK || graft_model_input_size(m, &h, &w, &c)) {
        cli_error("%s", graft_last_error());
        graft_model_free(m);
        return CLI_BAD_INPUT;
    }
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = h;
    opts.width = w;
    opts.preprocess = o.preprocess;
    opts.resize = o.resize;
    int status = CLI_OK;
    if (graft_dataset_open(o.data, &opts, &ds) != GRAFT_OK ||
        graft_evaluate(m, ds, o.batch, o.tta, &ev) != GRAFT_OK) {
        cli_error("%s", graft_last_error());
        status = CLI_BAD_INPUT;
    } else {
        if (!labels_match(m, ds))
            status = CLI_BAD_INPUT;
        else if (o.json)
            print_json(&ev, ds);
        else
            print_text(&ev, ds);
        graft_evaluation_free(&ev);
    }
    graft_dataset_free(ds);
    graft_model_free(m);
    return status;
}
