/* Labelled image datasets behind graft_dataset_*. Internal.
 *
 * Storage. graft_dataset_open builds one graft__ds_store: the kept images'
 * paths and labels, the class names, the messages from opening, the pixels of
 * an IDX file and the RAM cache. Every graft_dataset (the opened one, each split
 * part and sample) is a view: a list of store indices and a counted reference to
 * the store. Views may therefore be freed in any order; the store goes with the
 * last one. Class names live in the store, so graft_dataset_set_class_names on
 * any view renames them for all.
 *
 * Checking at open. A truncated JPEG or PNG only shows itself to a full decode,
 * but decoding every photo of a large folder at open would make opening as slow
 * as an epoch. So: a listing of at most GRAFT__DATASET_FULL_CHECK_MAX files is
 * decoded in full at open, in parallel, and each decoded image, resized to the
 * model size, goes straight into the RAM cache while the budget lasts (the first
 * epoch would decode them anyway). A larger listing gets a header check only
 * (signature and declared size, a few small reads per file); a file that then
 * fails to decode makes graft_dataset_load fail with a message naming it.
 *
 * Cache. Entries are the decoded image fitted to height x width and rounded to
 * uint8 (before augmentation). An uncached load rounds the same way, so results
 * never depend on the budget, the thread count or which thread filled an entry.
 * Slots are filled at most once (compare-and-swap) and never evicted; the budget
 * is reserved atomically before an entry is allocated. IDX datasets are already
 * in RAM as uint8 and are not cached. */
#ifndef GRAFT_DATA_DATASET_H
#define GRAFT_DATA_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "graft.h"

/* Listings up to this many files are decoded in full at open (see above). */
#define GRAFT__DATASET_FULL_CHECK_MAX 5000
/* Folder nesting below a class folder deeper than this is not followed. */
#define GRAFT__DATASET_MAX_DEPTH 64
/* A CSV/TSV list is read whole; larger ones are refused. */
#define GRAFT__DATASET_MAX_LIST ((size_t)1 << 28)
/* IDX: bounds checked before anything is allocated. */
#define GRAFT__IDX_MAX_SIDE 4096
#define GRAFT__IDX_MAX_BYTES ((uint64_t)1 << 33)

typedef struct graft__ds_store {
    int refs;                     /* views alive; updated atomically */
    graft_dataset_options options;
    int64_t count;                /* images kept */
    char **paths;                 /* (count) file, or "file#i" in an IDX file */
    char *path_block;             /* IDX: one allocation behind every paths[i] */
    int32_t *labels;              /* (count) */
    int64_t n_classes;
    char **class_names;           /* (n_classes) */
    char **messages;              /* (n_messages) one line each, from opening */
    int64_t n_messages;
    int64_t skipped;              /* files skipped at open */
    const char *first_skipped;    /* one of messages, or "" */
    unsigned char *idx_pixels;    /* IDX: (count, idx_h, idx_w, idx_c) */
    int64_t idx_h, idx_w, idx_c;
    size_t image_bytes;           /* height * width * 3 */
    size_t cache_budget, cache_used;
    unsigned char **cache;        /* (count) or NULL without a cache */
} graft__ds_store;

/* What graft_dataset_source hands out as `user`: owned by the view. */
typedef struct graft__ds_source {
    struct graft__ds_source *next;
    graft_dataset *dataset;
    graft_augment aug;
    int augment;                  /* aug was given */
} graft__ds_source;

struct graft_dataset {
    graft__ds_store *store;
    int64_t count;
    int64_t *items;               /* (count) store indices; NULL: all of them, in order */
    graft__ds_source *sources;    /* handed out by graft_dataset_source, freed with the view */
};

static inline int64_t graft__ds_item(const graft_dataset *ds, int64_t i)
{
    return ds->items ? ds->items[i] : i;
}

/* As graft_dataset_open, with the full-decode threshold given (0: headers only,
 * INT64_MAX: always decode), so tests reach both kinds of checking. */
graft_status graft__dataset_open_ex(const char *path, const graft_dataset_options *options,
                                    int64_t full_check_max, graft_dataset **out);

/* A view over the given store indices (copied) that takes a store reference. */
graft_status graft__ds_view(graft__ds_store *store, const int64_t *items, int64_t count,
                            graft_dataset **out);

/* ---- listing.c, table.c: what a folder tree or a list names ---------------------- */

typedef struct graft__ds_entry {
    char *path;
    int64_t cls;                  /* index into the listing's classes */
    char *error;                  /* already known to be unusable: why (one line) */
} graft__ds_entry;

typedef struct graft__ds_listing {
    const char *origin;           /* the folder or list opened */
    int folders;                  /* classes are folders (origin/<class>) */
    graft__ds_entry *entries;
    int64_t n_entries, cap_entries;
    char **classes;               /* sorted by strcmp */
    int64_t n_classes;
    char **notes;                 /* messages not about one file (loops, unreadable folders) */
    int64_t n_notes, cap_notes;
} graft__ds_listing;

graft_status graft__ds_list_folder(const char *root, graft__ds_listing *out);
graft_status graft__ds_list_table(const char *list, graft__ds_listing *out);
void graft__ds_listing_free(graft__ds_listing *listing);

/* Appends an entry (path and error copied; error may be NULL). */
graft_status graft__ds_add_entry(graft__ds_listing *l, const char *path, int64_t cls,
                                 const char *error);
/* Appends a printf-formatted note. */
graft_status graft__ds_add_note(graft__ds_listing *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Whether the name ends in .jpg, .jpeg or .png, in any case. */
int graft__ds_image_name(const char *name);
/* "dir/name" (dir "" gives name), or NULL when out of memory. */
char *graft__ds_join(const char *dir, const char *name);

/* ---- probe.c --------------------------------------------------------------------- */

/* The cheap check at open: a regular, non-empty file with a JPEG or PNG
 * signature and a declared size graft__image_check_size accepts. The message
 * names the file, as the decoders' do. */
graft_status graft__image_probe(const char *path);
/* The part of the check every file gets: it exists, is a regular file (a FIFO
 * would block the reader) and is not empty. */
graft_status graft__ds_check_file(const char *path);

/* ---- idx.c ------------------------------------------------------------------------- */

typedef struct graft__idx {
    int64_t count, height, width, channels; /* channels 1 or 3 */
    unsigned char *pixels;        /* (count, height, width, channels) */
    unsigned char *labels;        /* (count) */
} graft__idx;

/* Whether the file (raw or gzip) starts with an IDX magic: 1 images (ubyte, 3
 * or 4 dimensions), 2 labels (ubyte, 1 dimension), 0 neither. */
int graft__idx_sniff(const char *path);
/* Reads an images file and its labels file ("images-idx3" -> "labels-idx1" in
 * the file name; with or without .gz). */
graft_status graft__idx_read(const char *path, graft__idx *out);
void graft__idx_free(graft__idx *idx);

/* ---- dataset_load.c ---------------------------------------------------------------- */

/* Store item i, decoded and fitted to the model size, rounded to integers in
 * 0..255, into out (height, width, 3); from the cache when there, into it when
 * the budget allows. */
graft_status graft__ds_fitted(graft__ds_store *store, int64_t item, float *out);
/* Threads for decoding: options.threads, or OpenMP's default when 0. */
int graft__ds_threads(const graft__ds_store *store);

/* The height and width images are fitted to. */
void graft__dataset_size(const graft_dataset *ds, int64_t *height, int64_t *width);

#endif
