#include "cli/options.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#ifndef GRAFT_DEFAULT_MODELS
#define GRAFT_DEFAULT_MODELS "models"
#endif

const char *default_base(void)
{
    const char *env = getenv("GRAFT_BASE");
    return env && *env ? env : GRAFT_DEFAULT_MODELS "/mobilenet_v2";
}

graft_status load_base(const train_options *o, graft_model **out)
{
    int random = !strcmp(o->base, "random");
    graft_status rc = graft_model_load(random ? default_base() : o->base, out);
    if (!rc && random)
        rc = graft_model_reinitialize(*out, o->recipe.seed ^ 0xba5eull);
    return rc;
}

const char train_options_help[] =
    "model:\n"
    "  --base DIR              pretrained base (default: the MobileNetV2 set-up installs);\n"
    "                          'random': the same architecture with fresh weights (a baseline)\n"
    "  --cut LAYER             feature layer to cut at (default: the last spatial one, e.g. out_relu)\n"
    "  --auto                  choose from the data, printing each choice and its reason: no\n"
    "                          validation split under 200 images per class, the cut by LogME\n"
    "                          (see graft probe), the head's pooling grid by LogME, a\n"
    "                          linear-probe head, fine-tuning of two blocks\n"
    "                          only with validation images and 20+ per class; --no-auto turns it\n"
    "                          off (the demo's default is on); --cut, --val-split, --head-grid,\n"
    "                          --fine-tune-at and --fine-tune-lr given explicitly are kept\n"
    "  --size S                train at SxS pixels (default: the base's input size)\n"
    "  --dropout P             dropout before the new classifier (default 0.2)\n"
    "  --head-grid G           pool the features to GxG and flatten them instead of global\n"
    "                          average pooling (default 1 = global)\n"
    "  --preprocess MODE       mobilenet (default), inception, torch, caffe, none or unit\n"
    "  --resize MODE           stretch (default), crop or pad\n"
    "data:\n"
    "  --val DIR               validation data (default: a stratified split of DATA)\n"
    "  --val-split F           fraction held out for validation (default 0.2; 0 = none:\n"
    "                          train on everything, no early stopping)\n"
    "  --augment LIST          e.g. flip,rotation=0.05,zoom=0.1 (default), or none; keys:\n"
    "                          flip, vflip, rotation, zoom, translate, crop, brightness,\n"
    "                          contrast, saturation, hue, erasing\n"
    "  --mixup ALPHA           mixup with Beta(ALPHA, ALPHA) weights, e.g. 0.2 (default 0 = off)\n"
    "  --cutmix ALPHA          cutmix with Beta(ALPHA, ALPHA) areas, e.g. 1.0 (default 0 = off);\n"
    "                          both on: each batch takes one of them. From cached features\n"
    "                          (a frozen base) they mix the features at the cut\n"
    "  --cache-views K         augmented views cached for frozen layers (default 4)\n"
    "  --cache-float16         keep cached features as float16 (half the memory)\n"
    "phase 1 (frozen base, new head):\n"
    "  --linear-probe          fit the head by L-BFGS on the pooled features, L2 chosen by\n"
    "                          5-fold cross-validation, instead of SGD epochs\n"
    "                          (--no-linear-probe: SGD)\n"
    "  --epochs N              maximum epochs (default 100; early stopping ends it)\n"
    "  --lr X                  learning rate (default 1e-3)\n"
    "  --batch N               batch size (default 32)\n"
    "  --patience N            early-stopping patience on val loss (default 10; 0 = off)\n"
    "phase 2 (fine-tuning):\n"
    "  --no-fine-tune          skip phase 2\n"
    "  --fine-tune-at LAYER    first layer to unfreeze (default: picked and printed)\n"
    "  --fine-tune-epochs N    maximum epochs (default 20, patience 5)\n"
    "  --fine-tune-lr X        learning rate (default 1e-4)\n"
    "  --layer-decay D         per-layer learning-rate decay from the top (default off)\n"
    "both phases:\n"
    "  --optimizer NAME        adam (default), adamw or sgd\n"
    "  --weight-decay X        weight decay (default 0)\n"
    "  --l2-sp X               L2-SP penalty towards the pretrained weights (default 0)\n"
    "  --label-smoothing X     (default 0.1)\n"
    "  --seed N                (default 0): same seed and threads, same model\n"
    "  --threads N             compute threads (default: all cores)\n"
    "  --config FILE.json      the same settings as a JSON object (keys without dashes)\n"
    "output:\n"
    "  --json                  one JSON object per epoch and one at the end\n"
    "  --quiet                 only errors\n"
    "  --force                 replace an existing output folder written by graft\n"
    "                          (OUT is written under a temporary name and renamed at the end)\n";

void train_options_defaults(train_options *o)
{
    memset(o, 0, sizeof *o);
    graft_recipe_defaults(&o->recipe);
    o->base = default_base();
    o->val_split = 0.2;
    snprintf(o->optimizer, sizeof o->optimizer, "adam");
}

void train_options_free(train_options *o)
{
    json_decref(o->config_root);
    o->config_root = NULL;
    json_decref(o->auto_choices);
    o->auto_choices = NULL;
}

static int parse_double(const char *opt, const char *text, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = text ? strtod(text, &end) : 0.0;
    if (!text || errno || *end) {
        cli_error("%s needs a number, got '%s'", opt, text ? text : "");
        return 0;
    }
    *out = v;
    return 1;
}

static int set_optimizer(train_options *o, const char *name)
{
    graft_optimizer opt;
    if (!strcmp(name, "adam"))
        opt = GRAFT_OPTIMIZER_ADAM;
    else if (!strcmp(name, "adamw"))
        opt = GRAFT_OPTIMIZER_ADAMW;
    else if (!strcmp(name, "sgd"))
        opt = GRAFT_OPTIMIZER_SGD;
    else {
        cli_error("--optimizer: unknown optimizer '%s' (adam, adamw or sgd)", name);
        return 0;
    }
    o->recipe.phase1.optimizer = o->recipe.phase2.optimizer = opt;
    snprintf(o->optimizer, sizeof o->optimizer, "%s", name);
    return 1;
}

/* "flip,rotation=0.1,zoom=0.2" or "none": the per-image augmentations. Mixup
 * and cutmix have their own options and are kept, whatever the order. */
static int parse_augment(graft_augment *a, const char *text)
{
    const double mixup = a->mixup, cutmix = a->cutmix;
    memset(a, 0, sizeof *a);
    a->mixup = mixup;
    a->cutmix = cutmix;
    if (!strcmp(text, "none"))
        return 1;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    for (char *save = NULL, *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        double v = 1.0;
        if (eq) {
            *eq = '\0';
            if (!parse_double("--augment", eq + 1, &v))
                return 0;
        }
        if (!strcmp(item, "flip")) a->flip_horizontal = v != 0.0;
        else if (!strcmp(item, "vflip")) a->flip_vertical = v != 0.0;
        else if (!strcmp(item, "rotation")) a->rotation = v;
        else if (!strcmp(item, "zoom")) a->zoom = v;
        else if (!strcmp(item, "translate")) a->translate = v;
        else if (!strcmp(item, "crop")) a->crop_scale = v;
        else if (!strcmp(item, "brightness")) a->brightness = v;
        else if (!strcmp(item, "contrast")) a->contrast = v;
        else if (!strcmp(item, "saturation")) a->saturation = v;
        else if (!strcmp(item, "hue")) a->hue = v;
        else if (!strcmp(item, "erasing")) a->erasing = v;
        else {
            cli_error("--augment: unknown augmentation '%s'", item);
            return 0;
        }
    }
    return 1;
}

/* One option by name with its value (from argv or from --config). */
static int apply(train_options *o, const char *name, const char *value)
{
    graft_recipe *r = &o->recipe;
    double d = 0.0;
    long l = 0;
#define NUMBER(field) (parse_double(name, value, &d) ? ((field) = d, 1) : -1)
#define COUNT(field) (cli_parse_positive(name, value, &l) ? ((field) = (int)l, 1) : -1)
    if (!strcmp(name, "--base")) return (o->base = value) ? 1 : -1;
    if (!strcmp(name, "--val")) return (o->val = value) ? 1 : -1;
    if (!strcmp(name, "--cut"))
        return value ? (snprintf(o->cut, sizeof o->cut, "%s", value), r->cut = o->cut,
                        o->cut_set = 1) : -1;
    if (!strcmp(name, "--fine-tune-at"))
        return value ? (snprintf(o->fine_tune_at, sizeof o->fine_tune_at, "%s", value),
                        r->fine_tune_at = o->fine_tune_at, o->fine_tune_at_set = 1) : -1;
    if (!strcmp(name, "--size")) return cli_parse_positive(name, value, &l) ? (o->size = l, 1) : -1;
    if (!strcmp(name, "--dropout")) return NUMBER(r->dropout);
    if (!strcmp(name, "--val-split")) {
        if (!parse_double(name, value, &d))
            return -1;
        if (!(d >= 0.0 && d < 1.0)) {
            cli_error("--val-split needs a fraction in [0, 1), got '%s'", value);
            return -1;
        }
        o->val_split = d;
        o->val_split_set = 1;
        return 1;
    }
    if (!strcmp(name, "--cache-views")) return COUNT(r->cache_views);
    if (!strcmp(name, "--head-grid")) return (o->head_grid_set = 1, COUNT(r->head_grid));
    if (!strcmp(name, "--epochs")) return COUNT(r->phase1.epochs);
    if (!strcmp(name, "--lr")) return NUMBER(r->phase1.learning_rate);
    if (!strcmp(name, "--patience")) return COUNT(r->phase1.patience);
    if (!strcmp(name, "--fine-tune-epochs"))
        return (o->fine_tune_epochs_set = 1, COUNT(r->phase2.epochs));
    if (!strcmp(name, "--fine-tune-lr"))
        return (o->fine_tune_lr_set = 1, NUMBER(r->phase2.learning_rate));
    if (!strcmp(name, "--seed"))
        return cli_parse_positive(name, value, &l) ? (r->seed = (uint64_t)l, 1) : -1;
    if (!strcmp(name, "--threads")) return cli_parse_positive(name, value, &o->threads) ? 1 : -1;
    if (!strcmp(name, "--batch")) {
        if (!cli_parse_positive(name, value, &l) || l < 1)
            return -1;
        r->phase1.batch_size = r->phase2.batch_size = l;
        return 1;
    }
    if (!strcmp(name, "--layer-decay")) {
        if (!parse_double(name, value, &d))
            return -1;
        r->phase2.layer_lr = GRAFT_LAYER_LR_DECAY;
        r->phase2.layer_decay = d;
        return 1;
    }
    if (!strcmp(name, "--weight-decay") || !strcmp(name, "--l2-sp") ||
        !strcmp(name, "--label-smoothing")) {
        if (!parse_double(name, value, &d))
            return -1;
        double *f1 = !strcmp(name, "--weight-decay") ? &r->phase1.weight_decay
                     : !strcmp(name, "--l2-sp")      ? &r->phase1.l2_sp
                                                     : &r->phase1.label_smoothing;
        double *f2 = !strcmp(name, "--weight-decay") ? &r->phase2.weight_decay
                     : !strcmp(name, "--l2-sp")      ? &r->phase2.l2_sp
                                                     : &r->phase2.label_smoothing;
        *f1 = *f2 = d;
        return 1;
    }
    if (!strcmp(name, "--mixup") || !strcmp(name, "--cutmix")) {
        if (!parse_double(name, value, &d))
            return -1;
        if (!(d >= 0.0 && isfinite(d))) {
            cli_error("%s needs an alpha >= 0, got '%s'", name, value);
            return -1;
        }
        *(!strcmp(name, "--mixup") ? &r->augment.mixup : &r->augment.cutmix) = d;
        return 1;
    }
    if (!strcmp(name, "--optimizer")) return value && set_optimizer(o, value) ? 1 : -1;
    if (!strcmp(name, "--augment")) return value && parse_augment(&r->augment, value) ? 1 : -1;
    if (!strcmp(name, "--preprocess"))
        return value && graft_preprocess_parse(value, &o->preprocess) == GRAFT_OK
                   ? 1 : (cli_error("--preprocess: %s", graft_last_error()), -1);
    if (!strcmp(name, "--resize"))
        return value && graft_resize_mode_parse(value, &o->resize) == GRAFT_OK
                   ? 1 : (cli_error("--resize: %s", graft_last_error()), -1);
#undef NUMBER
#undef COUNT
    return 0;
}

int train_options_parse(train_options *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--no-fine-tune")) {
        o->recipe.fine_tune = 0;
        return 1;
    }
    if (!strcmp(a, "--json")) {
        o->json = 1;
        return 1;
    }
    if (!strcmp(a, "--quiet")) {
        o->quiet = 1;
        return 1;
    }
    if (!strcmp(a, "--linear-probe") || !strcmp(a, "--no-linear-probe")) {
        o->recipe.linear_probe = !strcmp(a, "--linear-probe");
        return 1;
    }
    if (!strcmp(a, "--auto") || !strcmp(a, "--no-auto")) {
        o->auto_recipe = !strcmp(a, "--auto");
        return 1;
    }
    if (!strcmp(a, "--force")) {
        o->force = 1;
        return 1;
    }
    if (!strcmp(a, "--cache-float16")) {
        o->recipe.phase1.cache_float16 = o->recipe.phase2.cache_float16 = 1;
        return 1;
    }
    if (!strcmp(a, "--config")) {
        if (*i + 1 >= argc) {
            cli_error("--config needs a file");
            return -1;
        }
        (*i)++;
        return train_options_load_json(o, argv[*i]) ? 1 : -1;
    }
    const char *value = *i + 1 < argc ? argv[*i + 1] : NULL;
    int r = apply(o, a, value);
    if (r == 1)
        (*i)++;
    if (r < 0 && !value)
        cli_error("%s needs a value", a);
    return r;
}

/* The "augment" object config.json holds, as --augment would give it. */
static int augment_from_json(graft_augment *a, const json_t *obj, const char *path)
{
    char text[512] = "";
    size_t used = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (json_is_boolean(v) && json_is_true(v))
            used += (size_t)snprintf(text + used, sizeof text - used, "%s%s", used ? "," : "", key);
        else if (json_is_number(v) && json_number_value(v) != 0.0)
            used += (size_t)snprintf(text + used, sizeof text - used, "%s%s=%.17g", used ? "," : "",
                                     key, json_number_value(v));
        else if (!json_is_boolean(v) && !json_is_number(v)) {
            cli_error("%s: augment.%s must be a number or true/false", path, key);
            return 0;
        }
        if (used >= sizeof text)
            return 0;
    }
    return parse_augment(a, used ? text : "none");
}

int train_options_load_json(train_options *o, const char *path)
{
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!json_is_object(root)) {
        cli_error("%s: line %d: %s", path, err.line, root ? "not a JSON object" : err.text);
        json_decref(root);
        return 0;
    }
    const char *key;
    json_t *v;
    int ok = 1;
    json_object_foreach(root, key, v)
    {
        if (!strcmp(key, "auto_choices") || !strcmp(key, "linear_probe_l2"))
            continue; /* what a run chose, written for the reader; a rerun chooses again */
        char name[128], value[512];
        const char *text = value;
        snprintf(name, sizeof name, "--%s", key);
        for (char *p = name + 2; *p; p++)
            *p = *p == '_' ? '-' : *p;
        if (json_is_string(v))
            text = json_string_value(v); /* lives as long as root, which is kept */
        else if (json_is_integer(v))
            snprintf(value, sizeof value, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v))
            snprintf(value, sizeof value, "%.17g", json_real_value(v));
        else if (json_is_boolean(v) && !strcmp(key, "fine_tune")) {
            o->recipe.fine_tune = json_is_true(v);
            continue;
        } else if (json_is_boolean(v) && !strcmp(key, "auto")) {
            o->auto_recipe = json_is_true(v);
            continue;
        } else if (json_is_boolean(v) && !strcmp(key, "linear_probe")) {
            o->recipe.linear_probe = json_is_true(v);
            continue;
        } else if (json_is_boolean(v) && !strcmp(key, "cache_float16")) {
            o->recipe.phase1.cache_float16 = o->recipe.phase2.cache_float16 = json_is_true(v);
            continue;
        } else if (json_is_object(v) && !strcmp(key, "augment")) {
            if (!augment_from_json(&o->recipe.augment, v, path)) {
                ok = 0;
                break;
            }
            continue;
        } else {
            cli_error("%s: '%s' has an unsupported value type", path, key);
            ok = 0;
            break;
        }
        if (json_is_string(v) && !*text)
            continue; /* an empty string means "not set" (e.g. fine_tune_at without phase 2) */
        int r = apply(o, name, text);
        if (r == 0)
            cli_error("%s: unknown setting '%s'", path, key);
        if (r != 1) {
            ok = 0;
            break;
        }
    }
    /* Option strings point into the JSON: keep it until train_options_free. */
    if (ok) {
        json_decref(o->config_root);
        o->config_root = root;
    } else {
        json_decref(root);
    }
    return ok;
}

static json_t *augment_json(const graft_augment *a)
{
    return json_pack("{s:b,s:b,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "flip", a->flip_horizontal,
                     "vflip", a->flip_vertical, "rotation", a->rotation, "zoom", a->zoom,
                     "translate", a->translate, "crop", a->crop_scale, "brightness", a->brightness,
                     "contrast", a->contrast, "saturation", a->saturation, "hue", a->hue,
                     "erasing", a->erasing);
}

json_t *train_options_to_json(const train_options *o, const graft_recipe_result *res)
{
    const graft_recipe *r = &o->recipe;
    json_t *j = json_pack("{s:s,s:s,s:I,s:f,s:f,s:o,s:i,s:i,s:f,s:I,s:i}", "base", o->base, "cut",
                          res->cut, "size", (json_int_t)o->size, "dropout", r->dropout, "val_split",
                          o->val_split, "augment", augment_json(&r->augment), "cache_views",
                          r->cache_views, "epochs", r->phase1.epochs, "lr",
                          r->phase1.learning_rate, "batch", (json_int_t)r->phase1.batch_size,
                          "patience", r->phase1.patience);
    json_object_set_new(j, "fine_tune", json_boolean(r->fine_tune));
    json_object_set_new(j, "fine_tune_at", json_string(res->fine_tune_at));
    json_object_set_new(j, "fine_tune_epochs", json_integer(r->phase2.epochs));
    json_object_set_new(j, "fine_tune_lr", json_real(r->phase2.learning_rate));
    json_object_set_new(j, "optimizer", json_string(o->optimizer));
    json_object_set_new(j, "weight_decay", json_real(r->phase1.weight_decay));
    json_object_set_new(j, "l2_sp", json_real(r->phase1.l2_sp));
    json_object_set_new(j, "label_smoothing", json_real(r->phase1.label_smoothing));
    json_object_set_new(j, "mixup", json_real(r->augment.mixup));
    json_object_set_new(j, "cutmix", json_real(r->augment.cutmix));
    json_object_set_new(j, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(j, "cache_float16", json_boolean(r->phase1.cache_float16));
    json_object_set_new(j, "auto", json_boolean(o->auto_recipe));
    json_object_set_new(j, "head_grid", json_integer(r->head_grid > 1 ? r->head_grid : 1));
    json_object_set_new(j, "linear_probe", json_boolean(r->linear_probe));
    if (r->linear_probe)
        json_object_set_new(j, "linear_probe_l2", json_real(res->head_l2));
    if (o->auto_choices)
        json_object_set(j, "auto_choices", o->auto_choices);
    if (o->val)
        json_object_set_new(j, "val", json_string(o->val));
    if (r->phase2.layer_lr == GRAFT_LAYER_LR_DECAY)
        json_object_set_new(j, "layer_decay", json_real(r->phase2.layer_decay));
    static const char *const preprocess[] = {"mobilenet", "inception", "torch", "caffe", "none",
                                             "unit"};
    static const char *const resize[] = {"stretch", "crop", "pad"};
    json_object_set_new(j, "preprocess", json_string(preprocess[o->preprocess]));
    json_object_set_new(j, "resize", json_string(resize[o->resize]));
    return j;
}
