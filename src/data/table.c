/* Listing a CSV or TSV file of "path,label" rows.
 *
 * The separator is a tab for .tsv, a comma for .csv (or a tab when the first
 * line has tabs and no comma). Fields follow RFC 4180: a field in double quotes
 * may hold separators, line breaks and "" for a quote; unquoted fields are
 * trimmed of spaces. CRLF line ends, a UTF-8 byte order mark and blank lines are
 * accepted. The first row is a header when one of its fields is a known column
 * name (path, file, filename, filepath, image; label, class, category, target);
 * a header also picks the columns, which may then come in any order among
 * others. Without one, the path is column 1 and the label column 2. Relative
 * paths are relative to the list's folder. A row without a path or label is
 * skipped and counted like an unreadable file. Labels are class names, sorted
 * by strcmp. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/dataset.h"

static graft_status nomem(void)
{
    return graft__fail(GRAFT_E_NOMEM, "out of memory reading the list");
}

static graft_status read_all(const char *path, char **text, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return graft__fail(GRAFT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 65536, len = 0;
    char *buf = graft__malloc(cap + 1);
    graft_status rc = buf ? GRAFT_OK : nomem();
    while (rc == GRAFT_OK) {
        if (len == cap) {
            if (cap >= GRAFT__DATASET_MAX_LIST) {
                rc = graft__fail(GRAFT_E_FORMAT, "%s: list is larger than %zu MiB", path,
                                 GRAFT__DATASET_MAX_LIST >> 20);
                break;
            }
            char *bigger = graft__realloc(buf, cap * 2 + 1);
            if (!bigger) {
                rc = nomem();
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                rc = graft__fail(GRAFT_E_IO, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (rc != GRAFT_OK) {
        graft__free(buf);
        return rc;
    }
    buf[len] = '\0';
    *text = buf;
    *size = len;
    return GRAFT_OK;
}

/* ---- records ------------------------------------------------------------------- */

enum { MAX_FIELDS = 32 };

typedef struct reader {
    const char *p, *end;
    char sep;
    int64_t line;        /* of the next character */
    char *buf;           /* unescaped fields, NUL-terminated, back to back */
    size_t cap, len;
} reader;

static int put(reader *r, char c)
{
    if (r->len == r->cap) {
        size_t want = r->cap ? r->cap * 2 : 256;
        char *p = graft__realloc(r->buf, want);
        if (!p)
            return 0;
        r->buf = p;
        r->cap = want;
    }
    r->buf[r->len++] = c;
    return 1;
}

typedef enum { REC_END, REC_OK, REC_NOMEM, REC_QUOTE } rec_status;

/* Reads one record: fields[0..*n) point into r->buf (valid until the next
 * call), *line is where the record starts. Extra fields are dropped. */
static rec_status next_record(reader *r, const char **fields, int *n, int64_t *line)
{
    if (r->p >= r->end)
        return REC_END;
    size_t starts[MAX_FIELDS];
    int count = 0;
    r->len = 0;
    *line = r->line;
    for (;;) {
        /* one field */
        size_t start = r->len;
        while (r->p < r->end && (*r->p == ' ' || (*r->p == '\t' && r->sep != '\t')))
            r->p++;
        if (r->p < r->end && *r->p == '"') {
            int64_t opened = r->line;
            r->p++;
            for (;;) {
                if (r->p >= r->end) {
                    *line = opened;
                    return REC_QUOTE;
                }
                char c = *r->p++;
                if (c == '"') {
                    if (r->p < r->end && *r->p == '"')
                        r->p++;
                    else
                        break;
                } else if (c == '\n') {
                    r->line++;
                }
                if (!put(r, c))
                    return REC_NOMEM;
            }
            /* anything after the closing quote up to the separator is kept */
        }
        while (r->p < r->end && *r->p != r->sep && *r->p != '\n') {
            if (!put(r, *r->p))
                return REC_NOMEM;
            r->p++;
        }
        size_t stop = r->len;
        while (stop > start && (r->buf[stop - 1] == ' ' || r->buf[stop - 1] == '\r' ||
                                (r->buf[stop - 1] == '\t' && r->sep != '\t')))
            stop--;
        r->len = stop;
        if (!put(r, '\0'))
            return REC_NOMEM;
        if (count < MAX_FIELDS)
            starts[count++] = start;
        if (r->p < r->end && *r->p == r->sep) {
            r->p++;
            continue;
        }
        if (r->p < r->end) { /* '\n' */
            r->p++;
            r->line++;
        }
        break;
    }
    for (int i = 0; i < count; ++i)
        fields[i] = r->buf + starts[i];
    *n = count;
    return REC_OK;
}

static int is_name(const char *field, const char *const *names)
{
    for (; *names; ++names)
        if (strcasecmp(field, *names) == 0)
            return 1;
    return 0;
}

static const char *const path_names[] = {"path",  "file",       "filename", "file_name",
                                         "filepath", "file_path", "image",   "image_path",
                                         "image_file", "img",     NULL};
static const char *const label_names[] = {"label", "class", "class_name", "category", "target",
                                          NULL};

/* ---- classes --------------------------------------------------------------------- */

typedef struct labels {
    char **names;      /* in order of first appearance */
    int64_t n, cap;
} labels;

/* Index of name among the labels, adding it when new; -1 when out of memory.
 * Linear search keeps the code short; the hash of a name would matter only for
 * lists with thousands of classes. */
static int64_t label_index(labels *s, const char *name)
{
    for (int64_t i = s->n - 1; i >= 0; --i)
        if (strcmp(s->names[i], name) == 0)
            return i;
    if (s->n == s->cap) {
        int64_t want = s->cap ? s->cap * 2 : 16;
        char **p = graft__realloc(s->names, (size_t)want * sizeof *p);
        if (!p)
            return -1;
        s->names = p;
        s->cap = want;
    }
    if (!(s->names[s->n] = graft__strdup(name)))
        return -1;
    return s->n++;
}

typedef struct ranked {
    const char *name;
    int64_t first;
} ranked;

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ranked *)a)->name, ((const ranked *)b)->name);
}

/* Moves the labels into out->classes sorted, and renumbers the entries. */
static graft_status sort_classes(labels *s, graft__ds_listing *out)
{
    ranked *r = graft__calloc(s->n ? (size_t)s->n : 1, sizeof *r);
    int64_t *rank = graft__calloc(s->n ? (size_t)s->n : 1, sizeof *rank);
    out->classes = graft__calloc(s->n ? (size_t)s->n : 1, sizeof *out->classes);
    if (!r || !rank || !out->classes) {
        graft__free(r);
        graft__free(rank);
        return nomem();
    }
    for (int64_t i = 0; i < s->n; ++i)
        r[i] = (ranked){s->names[i], i};
    qsort(r, (size_t)s->n, sizeof *r, by_name);
    for (int64_t i = 0; i < s->n; ++i) {
        rank[r[i].first] = i;
        out->classes[i] = s->names[r[i].first];
    }
    out->n_classes = s->n;
    for (int64_t e = 0; e < out->n_entries; ++e)
        if (out->entries[e].cls >= 0)
            out->entries[e].cls = rank[out->entries[e].cls];
    graft__free(s->names);
    *s = (labels){0};
    graft__free(r);
    graft__free(rank);
    return GRAFT_OK;
}

/* ---- the list ---------------------------------------------------------------------- */

static char separator_for(const char *path, const char *text, size_t size)
{
    const char *dot = strrchr(path, '.');
    if (dot && strcasecmp(dot, ".tsv") == 0)
        return '\t';
    const char *eol = memchr(text, '\n', size);
    size_t first = eol ? (size_t)(eol - text) : size;
    if (memchr(text, '\t', first) && !memchr(text, ',', first))
        return '\t';
    return ',';
}

/* The list's folder with a trailing slash ("" for a bare file name). */
static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) + 1 : 0;
    char *d = graft__malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = '\0';
    }
    return d;
}

static graft_status add_row(graft__ds_listing *out, labels *classes, const char *folder,
                            const char *list, int64_t line, const char *path, const char *label)
{
    char why[1024];
    if (!*path || !*label) {
        snprintf(why, sizeof why, "%s:%lld: row without %s; skipped", list, (long long)line,
                 *path ? "a label" : "a path");
        /* The row still counts as a skipped file; it has no class to belong to. */
        return graft__ds_add_entry(out, *path ? path : list, -1, why);
    }
    int64_t cls = label_index(classes, label);
    if (cls < 0)
        return nomem();
    char *full = path[0] == '/' ? graft__strdup(path) : graft__ds_join(folder, path);
    if (!full)
        return nomem();
    graft_status rc = graft__ds_add_entry(out, full, cls, NULL);
    graft__free(full);
    return rc;
}

graft_status graft__ds_list_table(const char *list, graft__ds_listing *out)
{
    *out = (graft__ds_listing){.origin = list, .folders = 0};
    char *text = NULL;
    size_t size = 0;
    graft_status rc = read_all(list, &text, &size);
    if (rc != GRAFT_OK)
        return rc;
    char *folder = folder_of(list);
    if (!folder) {
        graft__free(text);
        return nomem();
    }
    const char *start = text;
    if (size >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        start += 3;
    reader r = {start, text + size, separator_for(list, start, size - (size_t)(start - text)), 1,
                NULL, 0, 0};
    labels classes = {0};
    int path_col = 0, label_col = 1, first = 1;
    const char *fields[MAX_FIELDS];
    int n = 0;
    int64_t line = 0;
    for (;;) {
        rec_status s = next_record(&r, fields, &n, &line);
        if (s == REC_END)
            break;
        if (s == REC_NOMEM) {
            rc = nomem();
            break;
        }
        if (s == REC_QUOTE) {
            rc = graft__fail(GRAFT_E_FORMAT, "%s:%lld: quoted field is never closed", list,
                             (long long)line);
            break;
        }
        if (n == 1 && fields[0][0] == '\0')
            continue; /* blank line */
        if (first) {
            first = 0;
            int header = 0, pc = -1, lc = -1;
            for (int i = 0; i < n; ++i) {
                if (pc < 0 && is_name(fields[i], path_names))
                    pc = i, header = 1;
                else if (lc < 0 && is_name(fields[i], label_names))
                    lc = i, header = 1;
            }
            if (header) {
                path_col = pc >= 0 ? pc : (lc == 0 ? 1 : 0);
                label_col = lc >= 0 ? lc : (path_col == 1 ? 0 : 1);
                continue;
            }
        }
        rc = add_row(out, &classes, folder, list, line, path_col < n ? fields[path_col] : "",
                     label_col < n ? fields[label_col] : "");
        if (rc != GRAFT_OK)
            break;
    }
    graft__free(r.buf);
    graft__free(text);
    graft__free(folder);
    if (rc == GRAFT_OK)
        rc = sort_classes(&classes, out);
    for (int64_t i = 0; i < classes.n; ++i)
        graft__free(classes.names[i]);
    graft__free(classes.names);
    if (rc == GRAFT_OK && out->n_entries == 0)
        rc = graft__fail(GRAFT_E_FORMAT, "%s: the list names no images", list);
    if (rc != GRAFT_OK)
        graft__ds_listing_free(out);
    return rc;
}
