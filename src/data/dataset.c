/* graft_dataset_open and the accessors: which source a path is, checking the
 * listed files, and the store every view shares (see dataset.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/image.h"

void graft_dataset_options_defaults(graft_dataset_options *o)
{
    if (!o)
        return;
    *o = (graft_dataset_options){0};
    o->height = 224;
    o->width = 224;
    o->resize = GRAFT_RESIZE_STRETCH;
    o->preprocess = GRAFT_PREPROCESS_MOBILENET;
    o->cache_bytes = (size_t)1 << 30;
    o->threads = 0;
}

static graft_status check_options(const char *path, const graft_dataset_options *o)
{
    if (o->height < 1 || o->width < 1 || o->height > GRAFT__IMAGE_MAX_SIDE ||
        o->width > GRAFT__IMAGE_MAX_SIDE || o->height * o->width > GRAFT__IMAGE_MAX_PIXELS)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: image size %lldx%lld is out of range", path,
                           (long long)o->width, (long long)o->height);
    if ((unsigned)o->resize > GRAFT_RESIZE_PAD)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: unknown resize mode %d", path,
                           (int)o->resize);
    if ((unsigned)o->preprocess > GRAFT_PREPROCESS_UNIT)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: unknown preprocessing %d", path,
                           (int)o->preprocess);
    if (o->threads < 0)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: thread count %d is negative", path,
                           o->threads);
    return GRAFT_OK;
}

/* ---- the store and views ----------------------------------------------------------- */

static graft_status nomem(const char *path)
{
    return graft__fail(GRAFT_E_NOMEM, "%s: out of memory opening the dataset", path);
}

static void store_free(graft__ds_store *s)
{
    if (!s)
        return;
    if (s->path_block) {
        graft__free(s->path_block);
    } else {
        for (int64_t i = 0; s->paths && i < s->count; ++i)
            graft__free(s->paths[i]);
    }
    graft__free(s->paths);
    graft__free(s->labels);
    for (int64_t c = 0; s->class_names && c < s->n_classes; ++c)
        graft__free(s->class_names[c]);
    graft__free(s->class_names);
    for (int64_t i = 0; i < s->n_messages; ++i)
        graft__free(s->messages[i]);
    graft__free(s->messages);
    graft__free(s->idx_pixels);
    for (int64_t i = 0; s->cache && i < s->count; ++i)
        graft__free(s->cache[i]);
    graft__free(s->cache);
    graft__free(s);
}

graft_status graft__ds_view(graft__ds_store *store, const int64_t *items, int64_t count,
                            graft_dataset **out)
{
    *out = NULL;
    graft_dataset *ds = graft__calloc(1, sizeof *ds);
    if (!ds)
        return graft__fail(GRAFT_E_NOMEM, "out of memory for a dataset");
    if (items) {
        ds->items = graft__calloc(count ? (size_t)count : 1, sizeof *ds->items);
        if (!ds->items) {
            graft__free(ds);
            return graft__fail(GRAFT_E_NOMEM, "out of memory for a dataset of %lld images",
                               (long long)count);
        }
        if (count)
            memcpy(ds->items, items, (size_t)count * sizeof *items);
    }
    ds->store = store;
    ds->count = count;
    __atomic_add_fetch(&store->refs, 1, __ATOMIC_RELAXED);
    *out = ds;
    return GRAFT_OK;
}

void graft_dataset_free(graft_dataset *ds)
{
    if (!ds)
        return;
    for (graft__ds_source *s = ds->sources, *next; s; s = next) {
        next = s->next;
        graft__free(s);
    }
    graft__free(ds->items);
    if (__atomic_sub_fetch(&ds->store->refs, 1, __ATOMIC_ACQ_REL) == 0)
        store_free(ds->store);
    graft__free(ds);
}

static graft_status new_store(const char *path, const graft_dataset_options *o,
                              graft__ds_store **out)
{
    graft__ds_store *s = graft__calloc(1, sizeof *s);
    if (!s)
        return nomem(path);
    s->options = *o;
    s->image_bytes = (size_t)(o->height * o->width * 3);
    s->cache_budget = o->cache_bytes;
    s->first_skipped = "";
    *out = s;
    return GRAFT_OK;
}

static graft_status add_message(graft__ds_store *s, const char *path, const char *line)
{
    char **more = graft__realloc(s->messages, (size_t)(s->n_messages + 1) * sizeof *more);
    if (!more)
        return nomem(path);
    s->messages = more;
    if (!(s->messages[s->n_messages] = graft__strdup(line)))
        return nomem(path);
    s->n_messages++;
    return GRAFT_OK;
}

/* Fails unless two classes have images; the message says what was found. */
static graft_status need_two_classes(const graft__ds_store *s, const char *path)
{
    int64_t with = 0, only = -1;
    int64_t *counts = graft__calloc(s->n_classes ? (size_t)s->n_classes : 1, sizeof *counts);
    if (!counts)
        return nomem(path);
    for (int64_t i = 0; i < s->count; ++i)
        counts[s->labels[i]]++;
    for (int64_t c = 0; c < s->n_classes; ++c)
        if (counts[c] > 0) {
            with++;
            only = c;
        }
    graft__free(counts);
    if (with >= 2)
        return GRAFT_OK;
    char skipped[1200] = "";
    if (s->skipped > 0)
        snprintf(skipped, sizeof skipped, " (%lld file%s skipped; first: %s)",
                 (long long)s->skipped, s->skipped == 1 ? "" : "s", s->first_skipped);
    if (with == 0)
        return graft__fail(GRAFT_E_FORMAT, "%s: no usable images%s", path, skipped);
    return graft__fail(GRAFT_E_FORMAT, "%s: only one class ('%s') has images; a classifier needs "
                       "at least two%s", path, s->class_names[only], skipped);
}

/* ---- folders and lists ---------------------------------------------------------------- */

/* Checks entries [0, s->count) of a store whose paths are the listing's, each
 * in full (decode and fit, filling the cache) or by its header; errors[i] gets
 * the message of a failed one. Running out of memory is no fault of a file: it
 * fails the open (with the first such message in listing order). */
static graft_status check_entries(graft__ds_store *s, const char *path, int full, char **errors)
{
    const int64_t n = s->count;
    int threads = graft__ds_threads(s);
    if (threads > n)
        threads = n > 0 ? (int)n : 1;
    int64_t oom = n; /* first entry that ran out of memory; -1: a buffer of ours */
#pragma omp parallel num_threads(threads)
    {
        float *buf = full ? graft__malloc(s->image_bytes * sizeof(float)) : NULL;
        if (full && !buf) {
#pragma omp critical(graft_dataset_check_oom)
            __atomic_store_n(&oom, -1, __ATOMIC_RELAXED);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n; ++i) {
            if (errors[i] || s->labels[i] < 0 || __atomic_load_n(&oom, __ATOMIC_RELAXED) < i)
                continue;
            graft_status rc = full ? graft__ds_check_file(s->paths[i])
                                   : graft__image_probe(s->paths[i]);
            if (rc == GRAFT_OK && full)
                rc = graft__ds_fitted(s, i, buf);
            if (rc == GRAFT_OK)
                continue;
            errors[i] = graft__strdup(graft_last_error());
            if (rc == GRAFT_E_NOMEM || !errors[i]) {
#pragma omp critical(graft_dataset_check_oom)
                if (i < __atomic_load_n(&oom, __ATOMIC_RELAXED))
                    __atomic_store_n(&oom, i, __ATOMIC_RELAXED);
            }
        }
        graft__free(buf);
    }
    if (oom < 0)
        return nomem(path);
    if (oom < n)
        return errors[oom] ? graft__fail(GRAFT_E_NOMEM, "%s", errors[oom]) : nomem(path);
    return GRAFT_OK;
}

/* Drops classes without images, renumbering labels; one message each. */
static graft_status drop_empty_classes(graft__ds_store *s, graft__ds_listing *l,
                                       const int64_t *listed)
{
    int64_t *counts = graft__calloc(l->n_classes ? (size_t)l->n_classes : 1, sizeof *counts);
    int64_t *remap = graft__calloc(l->n_classes ? (size_t)l->n_classes : 1, sizeof *remap);
    s->class_names = graft__calloc(l->n_classes ? (size_t)l->n_classes : 1,
                                   sizeof *s->class_names);
    graft_status rc = counts && remap && s->class_names ? GRAFT_OK : nomem(l->origin);
    for (int64_t i = 0; rc == GRAFT_OK && i < s->count; ++i)
        counts[s->labels[i]]++;
    for (int64_t c = 0; rc == GRAFT_OK && c < l->n_classes; ++c) {
        if (counts[c] > 0) {
            remap[c] = s->n_classes;
            s->class_names[s->n_classes++] = l->classes[c];
            l->classes[c] = NULL;
            continue;
        }
        remap[c] = -1;
        char line[1024];
        if (l->folders && listed[c] == 0)
            snprintf(line, sizeof line, "%s/%s: class folder has no images; class dropped",
                     l->origin, l->classes[c]);
        else if (l->folders)
            snprintf(line, sizeof line, "%s/%s: none of the class's %lld images could be read; "
                     "class dropped", l->origin, l->classes[c], (long long)listed[c]);
        else
            snprintf(line, sizeof line, "%s: class '%s': none of its %lld images could be read; "
                     "class dropped", l->origin, l->classes[c], (long long)listed[c]);
        rc = add_message(s, l->origin, line);
    }
    for (int64_t i = 0; rc == GRAFT_OK && i < s->count; ++i)
        s->labels[i] = (int32_t)remap[s->labels[i]];
    graft__free(counts);
    graft__free(remap);
    return rc;
}

/* Builds the store from a listing, taking its paths and class names. */
static graft_status from_listing(graft__ds_listing *l, const graft_dataset_options *o,
                                 int64_t full_check_max, graft__ds_store **out)
{
    const char *path = l->origin;
    const int64_t n = l->n_entries;
    const size_t slots = n ? (size_t)n : 1;
    graft__ds_store *s = NULL;
    graft_status rc = new_store(path, o, &s);
    if (rc != GRAFT_OK)
        return rc;
    char **errors = graft__calloc(slots, sizeof *errors);
    int64_t *listed = graft__calloc(l->n_classes ? (size_t)l->n_classes : 1, sizeof *listed);
    s->paths = graft__calloc(slots, sizeof *s->paths);
    s->labels = graft__calloc(slots, sizeof *s->labels);
    /* Room for every message there can be, so moving them in cannot fail. */
    s->messages = graft__calloc((size_t)(l->n_notes + n + l->n_classes) + 1, sizeof *s->messages);
    if (o->cache_bytes >= s->image_bytes)
        s->cache = graft__calloc(slots, sizeof *s->cache);
    if (!errors || !listed || !s->paths || !s->labels || !s->messages ||
        (o->cache_bytes >= s->image_bytes && !s->cache)) {
        graft__free(errors);
        graft__free(listed);
        store_free(s);
        return nomem(path);
    }
    for (int64_t i = 0; i < n; ++i) {
        graft__ds_entry *e = &l->entries[i];
        s->paths[i] = e->path;
        s->labels[i] = (int32_t)e->cls;
        errors[i] = e->error;
        e->path = e->error = NULL;
        if (e->cls >= 0)
            listed[e->cls]++;
    }
    s->count = n;
    rc = check_entries(s, path, n <= full_check_max, errors);

    /* Messages: notes about folders, then skipped files in listing order; the
     * kept entries close up. */
    for (int64_t i = 0; i < l->n_notes; ++i) {
        s->messages[s->n_messages++] = l->notes[i];
        l->notes[i] = NULL;
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (errors[i]) {
            s->messages[s->n_messages++] = errors[i];
            if (s->skipped++ == 0)
                s->first_skipped = errors[i];
            graft__free(s->paths[i]);
            continue;
        }
        s->paths[kept] = s->paths[i];
        s->labels[kept] = s->labels[i];
        if (s->cache) {
            s->cache[kept] = s->cache[i];
            if (kept != i)
                s->cache[i] = NULL;
        }
        kept++;
    }
    s->count = kept;
    graft__free(errors);
    if (rc == GRAFT_OK)
        rc = drop_empty_classes(s, l, listed);
    graft__free(listed);
    if (rc == GRAFT_OK)
        rc = need_two_classes(s, path);
    if (rc != GRAFT_OK) {
        store_free(s);
        return rc;
    }
    *out = s;
    return GRAFT_OK;
}

/* ---- IDX ------------------------------------------------------------------------------- */

static graft_status from_idx(const char *path, const graft_dataset_options *o,
                             graft__ds_store **out)
{
    graft__idx idx;
    graft_status rc = graft__idx_read(path, &idx);
    if (rc != GRAFT_OK)
        return rc;
    graft__ds_store *s = NULL;
    if ((rc = new_store(path, o, &s)) != GRAFT_OK) {
        graft__idx_free(&idx);
        return rc;
    }
    const int64_t n = idx.count;
    s->count = n;
    s->idx_pixels = idx.pixels;
    s->idx_h = idx.height;
    s->idx_w = idx.width;
    s->idx_c = idx.channels;
    idx.pixels = NULL;
    /* Every "path#i" in one block: 60000 small allocations would cost more than
     * the strings. */
    const size_t stride = strlen(path) + 1 + 20 + 1;
    s->paths = graft__calloc((size_t)n, sizeof *s->paths);
    s->path_block = graft__calloc((size_t)n, stride);
    s->labels = graft__calloc((size_t)n, sizeof *s->labels);
    if (!s->paths || !s->path_block || !s->labels)
        rc = nomem(path);
    int max_label = 0;
    for (int64_t i = 0; rc == GRAFT_OK && i < n; ++i) {
        s->paths[i] = s->path_block + (size_t)i * stride;
        snprintf(s->paths[i], stride, "%s#%lld", path, (long long)i);
        s->labels[i] = idx.labels[i];
        if (idx.labels[i] > max_label)
            max_label = idx.labels[i];
    }
    graft__idx_free(&idx);
    /* Labels are class indices as they stand: "0".."max"; a class without
     * images keeps its number. */
    if (rc == GRAFT_OK) {
        s->class_names = graft__calloc((size_t)max_label + 1, sizeof *s->class_names);
        if (!s->class_names)
            rc = nomem(path);
    }
    for (int c = 0; rc == GRAFT_OK && c <= max_label; ++c) {
        char name[16];
        snprintf(name, sizeof name, "%d", c);
        if (!(s->class_names[c] = graft__strdup(name)))
            rc = nomem(path);
        else
            s->n_classes++;
    }
    if (rc == GRAFT_OK)
        rc = need_two_classes(s, path);
    if (rc != GRAFT_OK) {
        store_free(s);
        return rc;
    }
    *out = s;
    return GRAFT_OK;
}

/* ---- opening ----------------------------------------------------------------------------- */

static int list_name(const char *path)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    return dot && (!slash || dot > slash) &&
           (strcasecmp(dot, ".csv") == 0 || strcasecmp(dot, ".tsv") == 0);
}

graft_status graft__dataset_open_ex(const char *path, const graft_dataset_options *options,
                                    int64_t full_check_max, graft_dataset **out)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_open: %s is NULL",
                           path ? "out" : "path");
    graft_dataset_options o;
    if (options)
        o = *options;
    else
        graft_dataset_options_defaults(&o);
    graft_status rc = check_options(path, &o);
    if (rc != GRAFT_OK)
        return rc;
    struct stat st;
    if (stat(path, &st) != 0)
        return graft__fail(errno == ENOENT ? GRAFT_E_NOT_FOUND : GRAFT_E_IO, "%s: cannot stat: %s",
                           path, strerror(errno));
    graft__ds_store *s = NULL;
    if (S_ISDIR(st.st_mode) || (S_ISREG(st.st_mode) && list_name(path))) {
        graft__ds_listing l;
        rc = S_ISDIR(st.st_mode) ? graft__ds_list_folder(path, &l) : graft__ds_list_table(path, &l);
        if (rc != GRAFT_OK)
            return rc;
        rc = from_listing(&l, &o, full_check_max, &s);
        graft__ds_listing_free(&l);
    } else if (!S_ISREG(st.st_mode)) {
        return graft__fail(GRAFT_E_IO, "%s: not a folder or a regular file", path);
    } else {
        int kind = graft__idx_sniff(path);
        if (kind == 1)
            rc = from_idx(path, &o, &s);
        else if (kind == 2)
            rc = graft__fail(GRAFT_E_INVALID_ARG, "%s: an IDX labels file; open the images file "
                             "beside it", path);
        else
            rc = graft__fail(GRAFT_E_FORMAT, "%s: neither a folder, a .csv/.tsv list nor an IDX "
                             "images file", path);
    }
    if (rc != GRAFT_OK)
        return rc;
    rc = graft__ds_view(s, NULL, s->count, out);
    if (rc != GRAFT_OK)
        store_free(s);
    return rc;
}

graft_status graft_dataset_open(const char *path, const graft_dataset_options *options,
                                graft_dataset **out)
{
    return graft__dataset_open_ex(path, options, GRAFT__DATASET_FULL_CHECK_MAX, out);
}

/* ---- accessors ----------------------------------------------------------------------------- */

int64_t graft_dataset_count(const graft_dataset *ds) { return ds ? ds->count : 0; }

int64_t graft_dataset_class_count(const graft_dataset *ds)
{
    return ds ? ds->store->n_classes : 0;
}

const char *graft_dataset_class_name(const graft_dataset *ds, int64_t c)
{
    if (!ds || c < 0 || c >= ds->store->n_classes)
        return NULL;
    return ds->store->class_names[c];
}

graft_status graft_dataset_set_class_names(graft_dataset *ds, const char *const *names, int64_t n)
{
    if (!ds || !names)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_set_class_names: %s is NULL",
                           ds ? "names" : "dataset");
    graft__ds_store *s = ds->store;
    if (n != s->n_classes)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_set_class_names: %lld names for "
                           "%lld classes", (long long)n, (long long)s->n_classes);
    char **fresh = graft__calloc((size_t)n, sizeof *fresh);
    graft_status rc = fresh ? GRAFT_OK
                            : graft__fail(GRAFT_E_NOMEM, "graft_dataset_set_class_names: out of "
                                          "memory");
    for (int64_t c = 0; rc == GRAFT_OK && c < n; ++c) {
        if (!names[c])
            rc = graft__fail(GRAFT_E_INVALID_ARG, "graft_dataset_set_class_names: name %lld is "
                             "NULL", (long long)c);
        else if (!(fresh[c] = graft__strdup(names[c])))
            rc = graft__fail(GRAFT_E_NOMEM, "graft_dataset_set_class_names: out of memory");
    }
    if (rc != GRAFT_OK) {
        for (int64_t c = 0; fresh && c < n; ++c)
            graft__free(fresh[c]);
        graft__free(fresh);
        return rc;
    }
    for (int64_t c = 0; c < n; ++c)
        graft__free(s->class_names[c]);
    graft__free(s->class_names);
    s->class_names = fresh;
    return GRAFT_OK;
}

int32_t graft_dataset_label(const graft_dataset *ds, int64_t i)
{
    if (!ds || i < 0 || i >= ds->count)
        return -1;
    return ds->store->labels[graft__ds_item(ds, i)];
}

const char *graft_dataset_path(const graft_dataset *ds, int64_t i)
{
    if (!ds || i < 0 || i >= ds->count)
        return NULL;
    return ds->store->paths[graft__ds_item(ds, i)];
}

int64_t graft_dataset_skipped(const graft_dataset *ds, const char **first_message)
{
    if (first_message)
        *first_message = ds ? ds->store->first_skipped : "";
    return ds ? ds->store->skipped : 0;
}

int64_t graft_dataset_message_count(const graft_dataset *ds)
{
    return ds ? ds->store->n_messages : 0;
}

const char *graft_dataset_message(const graft_dataset *ds, int64_t i)
{
    if (!ds || i < 0 || i >= ds->store->n_messages)
        return NULL;
    return ds->store->messages[i];
}
