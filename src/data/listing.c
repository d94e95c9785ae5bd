/* Listing a folder tree ROOT/<class>/<image>: classes are the visible
 * subfolders of ROOT, sorted by strcmp as Keras sorts them; a class's images are
 * its files named .jpg/.jpeg/.png (any case) at any depth. Names starting with a
 * dot are skipped, as are other files, silently. Symbolic links are followed;
 * a folder that is its own ancestor (a link loop) is noted and not entered.
 * Entries are visited in strcmp order of their names at every level, so the
 * listing does not depend on the file system's directory order. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/dataset.h"

static graft_status nomem(void)
{
    return graft__fail(GRAFT_E_NOMEM, "out of memory listing the dataset");
}

/* Grows *items (of `size` bytes each) so it holds at least n + 1. */
static int reserve(void **items, int64_t *cap, int64_t n, size_t size)
{
    if (n < *cap)
        return 1;
    int64_t want = *cap ? *cap * 2 : 64;
    size_t bytes;
    if (!graft__mul_size((size_t)want, size, &bytes))
        return 0;
    void *p = graft__realloc(*items, bytes);
    if (!p)
        return 0;
    *items = p;
    *cap = want;
    return 1;
}

graft_status graft__ds_add_entry(graft__ds_listing *l, const char *path, int64_t cls,
                                 const char *error)
{
    if (!reserve((void **)&l->entries, &l->cap_entries, l->n_entries, sizeof *l->entries))
        return nomem();
    graft__ds_entry e = {graft__strdup(path), cls, error ? graft__strdup(error) : NULL};
    if (!e.path || (error && !e.error)) {
        graft__free(e.path);
        graft__free(e.error);
        return nomem();
    }
    l->entries[l->n_entries++] = e;
    return GRAFT_OK;
}

graft_status graft__ds_add_note(graft__ds_listing *l, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (!reserve((void **)&l->notes, &l->cap_notes, l->n_notes, sizeof *l->notes))
        return nomem();
    if (!(l->notes[l->n_notes] = graft__strdup(line)))
        return nomem();
    l->n_notes++;
    return GRAFT_OK;
}

void graft__ds_listing_free(graft__ds_listing *l)
{
    if (!l)
        return;
    for (int64_t i = 0; i < l->n_entries; ++i) {
        graft__free(l->entries[i].path);
        graft__free(l->entries[i].error);
    }
    graft__free(l->entries);
    for (int64_t i = 0; i < l->n_classes; ++i)
        graft__free(l->classes[i]);
    graft__free(l->classes);
    for (int64_t i = 0; i < l->n_notes; ++i)
        graft__free(l->notes[i]);
    graft__free(l->notes);
    *l = (graft__ds_listing){0};
}

int graft__ds_image_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && dot != name &&
           (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0 ||
            strcasecmp(dot, ".png") == 0);
}

char *graft__ds_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = graft__malloc(a + slash + b + 1);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    if (slash)
        p[a] = '/';
    memcpy(p + a + slash, name, b + 1);
    return p;
}

/* ---- reading one folder ---------------------------------------------------------- */

typedef struct names {
    char **v;
    int64_t n, cap;
} names;

static void names_free(names *s)
{
    for (int64_t i = 0; i < s->n; ++i)
        graft__free(s->v[i]);
    graft__free(s->v);
    *s = (names){0};
}

static int by_strcmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The visible names in dir, sorted. A folder that cannot be opened gives
 * GRAFT_E_IO with errno's reason. */
static graft_status read_names(const char *dir, names *out)
{
    *out = (names){0};
    DIR *d = opendir(dir);
    if (!d)
        return graft__fail(GRAFT_E_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    graft_status rc = GRAFT_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno)
                rc = graft__fail(GRAFT_E_IO, "%s: cannot read folder: %s", dir, strerror(errno));
            break;
        }
        if (e->d_name[0] == '.')
            continue; /* ".", "..", and hidden files and folders */
        if (!reserve((void **)&out->v, &out->cap, out->n, sizeof *out->v) ||
            !(out->v[out->n] = graft__strdup(e->d_name))) {
            rc = nomem();
            break;
        }
        out->n++;
    }
    closedir(d);
    if (rc != GRAFT_OK) {
        names_free(out);
        return rc;
    }
    if (out->n > 1)
        qsort(out->v, (size_t)out->n, sizeof *out->v, by_strcmp);
    return GRAFT_OK;
}

/* ---- walking a class folder ------------------------------------------------------ */

typedef struct ancestor {
    dev_t dev;
    ino_t ino;
} ancestor;

typedef struct walk {
    graft__ds_listing *l;
    ancestor stack[GRAFT__DATASET_MAX_DEPTH + 2];
    int depth;
} walk;

static int on_stack(const walk *w, const struct stat *st)
{
    for (int i = 0; i < w->depth; ++i)
        if (w->stack[i].dev == st->st_dev && w->stack[i].ino == st->st_ino)
            return 1;
    return 0;
}

static graft_status walk_folder(walk *w, const char *dir, const struct stat *dir_st, int64_t cls);

static graft_status visit(walk *w, const char *path, const char *name, int64_t cls)
{
    struct stat st;
    char why[1024];
    if (stat(path, &st) != 0) {
        /* A dangling link or a vanished entry: only worth a word when it looks
         * like an image. */
        if (!graft__ds_image_name(name))
            return GRAFT_OK;
        snprintf(why, sizeof why, "%s: cannot stat: %s", path, strerror(errno));
        return graft__ds_add_entry(w->l, path, cls, why);
    }
    if (S_ISDIR(st.st_mode)) {
        if (on_stack(w, &st))
            return graft__ds_add_note(w->l, "%s: link loop back to a parent folder; not followed",
                                      path);
        if (w->depth > GRAFT__DATASET_MAX_DEPTH)
            return graft__ds_add_note(w->l, "%s: nested deeper than %d folders; not read", path,
                                      GRAFT__DATASET_MAX_DEPTH);
        return walk_folder(w, path, &st, cls);
    }
    if (!graft__ds_image_name(name))
        return GRAFT_OK;
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, sizeof why, "%s: not a regular file", path);
        return graft__ds_add_entry(w->l, path, cls, why);
    }
    return graft__ds_add_entry(w->l, path, cls, NULL);
}

static graft_status walk_folder(walk *w, const char *dir, const struct stat *dir_st, int64_t cls)
{
    names list;
    graft_status rc = read_names(dir, &list);
    if (rc == GRAFT_E_IO) /* an unreadable subfolder loses its images, not the dataset */
        return graft__ds_add_note(w->l, "%s", graft_last_error());
    if (rc != GRAFT_OK)
        return rc;
    w->stack[w->depth++] = (ancestor){dir_st->st_dev, dir_st->st_ino};
    for (int64_t i = 0; i < list.n && rc == GRAFT_OK; ++i) {
        char *path = graft__ds_join(dir, list.v[i]);
        rc = path ? visit(w, path, list.v[i], cls) : nomem();
        graft__free(path);
    }
    w->depth--;
    names_free(&list);
    return rc;
}

graft_status graft__ds_list_folder(const char *root, graft__ds_listing *out)
{
    *out = (graft__ds_listing){.origin = root, .folders = 1};
    struct stat root_st;
    if (stat(root, &root_st) != 0)
        return graft__fail(GRAFT_E_IO, "%s: cannot stat: %s", root, strerror(errno));
    names top;
    graft_status rc = read_names(root, &top);
    if (rc != GRAFT_OK)
        return rc;
    /* Classes: the subfolders (links to folders included). Files directly in
     * ROOT belong to no class and are ignored, as Keras ignores them. */
    out->classes = graft__calloc(top.n ? (size_t)top.n : 1, sizeof *out->classes);
    if (!out->classes)
        rc = nomem();
    char **dirs = graft__calloc(top.n ? (size_t)top.n : 1, sizeof *dirs);
    struct stat *sts = graft__calloc(top.n ? (size_t)top.n : 1, sizeof *sts);
    if (!dirs || !sts)
        rc = nomem();
    for (int64_t i = 0; i < top.n && rc == GRAFT_OK; ++i) {
        char *path = graft__ds_join(root, top.v[i]);
        if (!path) {
            rc = nomem();
            break;
        }
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            sts[out->n_classes] = st;
            dirs[out->n_classes] = path;
            out->classes[out->n_classes++] = top.v[i];
            top.v[i] = NULL;
        } else {
            graft__free(path);
        }
    }
    /* The class folders, in order: entries come out grouped by class. */
    walk *w = rc == GRAFT_OK ? graft__calloc(1, sizeof *w) : NULL;
    if (rc == GRAFT_OK && !w)
        rc = nomem();
    if (w) {
        w->l = out;
        w->stack[w->depth++] = (ancestor){root_st.st_dev, root_st.st_ino};
    }
    for (int64_t c = 0; c < out->n_classes && rc == GRAFT_OK; ++c)
        rc = walk_folder(w, dirs[c], &sts[c], c);
    graft__free(w);
    for (int64_t c = 0; dirs && c < out->n_classes; ++c)
        graft__free(dirs[c]);
    graft__free(dirs);
    graft__free(sts);
    names_free(&top);
    if (rc == GRAFT_OK && out->n_classes == 0)
        rc = graft__fail(GRAFT_E_FORMAT, "%s: no class folders (expected %s/<class>/<image>)",
                         root, root);
    if (rc != GRAFT_OK)
        graft__ds_listing_free(out);
    return rc;
}
