/* graft demo: the embedded default. Few-shot Fashion-MNIST (Debian package
 * dataset-fashion-mnist) on the default base, judged on the full test set. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/run.h"

#ifndef GRAFT_FASHION_MNIST
#define GRAFT_FASHION_MNIST "/usr/share/datasets/fashion-mnist"
#endif

static const char help[] =
    "usage: graft demo [--shots K] [--size S] [--seed N] [-o OUT] [train options]\n"
    "\n"
    "Few-shot transfer learning on Fashion-MNIST: K training images per class\n"
    "(default 100) drawn from the training set by seed, upscaled from 28x28 grey to\n"
    "SxS RGB (default 96), trained with graft train's recipe on the default base,\n"
    "then judged on all 10,000 test images. Prints the test accuracy after each\n"
    "phase and writes OUT (default graft-demo/) with the model and report.html.\n"
    "\n"
    "  --shots K               training images per class (default 100)\n"
    "  --data DIR              Fashion-MNIST folder (default " GRAFT_FASHION_MNIST ")\n"
    "\n";

static const char *const class_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

typedef struct demo_state {
    graft_dataset *test;
    double accuracy[3];
    int quiet;
} demo_state;

static int measure_test(int phase, graft_model *model, void *user)
{
    demo_state *d = user;
    graft_evaluation ev;
    if (graft_evaluate(model, d->test, 64, 0, &ev) != GRAFT_OK)
        return 0;
    d->accuracy[phase] = ev.accuracy;
    if (!d->quiet)
        printf("test accuracy after phase %d: %.4f (%lld images)\n", phase, ev.accuracy,
               (long long)ev.count);
    fflush(stdout);
    graft_evaluation_free(&ev);
    return 0;
}

static graft_status open_idx(const char *dir, const char *split, int64_t side,
                             graft_preprocess pre, graft_dataset **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", dir, split);
    graft_dataset_options opts;
    graft_dataset_options_defaults(&opts);
    opts.height = opts.width = side;
    opts.preprocess = pre;
    graft_status rc = graft_dataset_open(path, &opts, out);
    if (!rc)
        rc = graft_dataset_set_class_names(*out, class_names, 10);
    return rc;
}

int cli_demo(int argc, char **argv)
{
    train_options o;
    train_options_defaults(&o);
    o.size = 96;
    o.out = "graft-demo";
    o.force = 1; /* a rerun replaces the previous demo's folder (only if graft wrote it) */
    o.auto_recipe = 1;
    long shots = 100;
    const char *data = GRAFT_FASHION_MNIST;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(help, stdout);
            fputs(train_options_help, stdout);
            return CLI_OK;
        }
        if (!strcmp(argv[i], "--shots") || !strcmp(argv[i], "--data") || !strcmp(argv[i], "-o")) {
            if (i + 1 >= argc) {
                cli_error("%s needs a value", argv[i]);
                return CLI_BAD_USAGE;
            }
            const char *v = argv[++i];
            if (!strcmp(argv[i - 1], "--data"))
                data = v;
            else if (!strcmp(argv[i - 1], "-o"))
                o.out = v;
            else if (!cli_parse_positive("--shots", v, &shots) || shots < 1)
                return CLI_BAD_USAGE;
            continue;
        }
        int r = train_options_parse(&o, argc, argv, &i);
        if (r == 0)
            cli_error("demo: unexpected argument '%s' (see graft demo --help)", argv[i]);
        if (r <= 0) {
            train_options_free(&o);
            return CLI_BAD_USAGE;
        }
    }
    cli_set_threads(o.threads);
    int checked = out_check(&o);
    if (checked != CLI_OK) {
        train_options_free(&o);
        return checked;
    }
    graft_model *model = NULL;
    graft_dataset *pool = NULL, *shots_ds = NULL, *train = NULL, *val = NULL, *test = NULL;
    graft_dataset *thumb_pool = NULL, *thumb_shots = NULL, *thumb_train = NULL, *thumbs = NULL;
    demo_state d = {0};
    d.quiet = o.quiet;
    time_t start = time(NULL);
    graft_status rc = load_base(&o, &model);
    if (!rc)
        rc = open_idx(data, "train", o.size, o.preprocess, &pool);
    if (!rc)
        rc = open_idx(data, "t10k", o.size, o.preprocess, &test);
    if (!rc)
        rc = graft_dataset_sample_per_class(pool, shots, o.recipe.seed, &shots_ds);
    if (!rc)
        auto_plan_split(&o, shots_ds);
    if (!rc)
        rc = split_or_keep(shots_ds, o.val_split, o.recipe.seed, &train, &val);
    if (!rc && open_idx(data, "train", 56, GRAFT_PREPROCESS_NONE, &thumb_pool) == GRAFT_OK &&
        graft_dataset_sample_per_class(thumb_pool, shots, o.recipe.seed, &thumb_shots) == GRAFT_OK)
        split_or_keep(thumb_shots, o.val_split, o.recipe.seed, &thumb_train, &thumbs);
    int status = CLI_OK;
    if (rc) {
        cli_error("%s", graft_last_error());
        if (strstr(graft_last_error(), "fashion-mnist"))
            cli_error("install it with: apt-get install dataset-fashion-mnist");
        status = CLI_BAD_INPUT;
    } else {
        if (!o.quiet && !o.json)
            printf("Fashion-MNIST, %ld images per class (%lld train, %lld val), %lldx%lld, "
                   "base %s; test set %lld images\n", shots, (long long)graft_dataset_count(train),
                   (long long)(val ? graft_dataset_count(val) : 0), (long long)o.size, (long long)o.size,
                   o.base, (long long)graft_dataset_count(test));
        d.test = test;
        o.recipe.on_phase_end = measure_test;
        o.recipe.user = &d;
        status = run_recipe(&o, model, train, val, NULL, thumbs, NULL);
        if (!o.quiet && status == CLI_OK && o.recipe.fine_tune)
            printf("demo: test accuracy %.4f after phase 1, %.4f after phase 2, in %lld s\n",
                   d.accuracy[1], d.accuracy[2], (long long)(time(NULL) - start));
        else if (!o.quiet && status == CLI_OK)
            printf("demo: test accuracy %.4f (phase 1 only), in %lld s\n", d.accuracy[1],
                   (long long)(time(NULL) - start));
    }
    graft_dataset_free(thumbs);
    if (thumb_train != thumb_shots)
        graft_dataset_free(thumb_train);
    graft_dataset_free(thumb_shots);
    graft_dataset_free(thumb_pool);
    if (train != shots_ds)
        graft_dataset_free(train);
    graft_dataset_free(val);
    graft_dataset_free(shots_ds);
    graft_dataset_free(test);
    graft_dataset_free(pool);
    graft_model_free(model);
    train_options_free(&o);
    return status;
}
