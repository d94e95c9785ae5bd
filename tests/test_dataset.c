/* Datasets: each source kind, class order, splits and samples, class weights,
 * loading, the RAM cache and thread-count independence. Every input is written
 * here into a fresh temporary folder. Bad data is in test_dataset_bad.c. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <omp.h>

#include "core/alloc.h"
#include "data/dataset.h"
#include "data/image.h"
#include "graft.h"
#include "test_dataset_util.h"

static graft_dataset_options opts(int64_t h, int64_t w, graft_preprocess pre)
{
    graft_dataset_options o;
    graft_dataset_options_defaults(&o);
    o.height = h;
    o.width = w;
    o.preprocess = pre;
    return o;
}

static graft_dataset *open_ok(const char *path, const graft_dataset_options *o)
{
    graft_dataset *ds = NULL;
    graft_status rc = graft_dataset_open(path, o, &ds);
    if (rc != GRAFT_OK)
        fail_msg("open %s: %s", path, graft_last_error());
    return ds;
}

static void assert_class_names(const graft_dataset *ds, int n, const char *const *names)
{
    assert_int_equal(graft_dataset_class_count(ds), n);
    for (int c = 0; c < n; ++c)
        assert_string_equal(graft_dataset_class_name(ds, c), names[c]);
    assert_null(graft_dataset_class_name(ds, n));
    assert_null(graft_dataset_class_name(ds, -1));
}

/* ---- folder trees ------------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    graft_dataset_options o;
    memset(&o, 0x55, sizeof o);
    graft_dataset_options_defaults(&o);
    assert_int_equal(o.height, 224);
    assert_int_equal(o.width, 224);
    assert_int_equal(o.resize, GRAFT_RESIZE_STRETCH);
    assert_int_equal(o.preprocess, GRAFT_PREPROCESS_MOBILENET);
    assert_true(o.cache_bytes == (size_t)1 << 30);
    assert_int_equal(o.threads, 0);
}

static void test_folder_tree(void **state)
{
    (void)state;
    png_at(at("root/cat/a.png"), 8, 6, 1);
    png_at(at("root/cat/b.PNG"), 8, 6, 2);
    jpeg_at(at("root/cat/sub/deeper/c.jpg"), 16, 12, 3);
    write_text(at("root/cat/notes.txt"), "not an image, ignored");
    write_text(at("root/cat/.hidden.png"), "hidden: never looked at");
    png_at(at("root/.hidden_class/x.png"), 8, 6, 4);
    jpeg_at(at("root/dog/2.JPG"), 8, 8, 5);
    jpeg_at(at("root/dog/1.jpeg"), 8, 8, 6);
    png_at(at("root/Bird/z.png"), 4, 4, 7);
    write_text(at("root/README.txt"), "files at the top belong to no class");
    png_at(at("root/stray.png"), 4, 4, 8);

    graft_dataset_options o = opts(8, 8, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("root"), &o);
    const char *names[] = {"Bird", "cat", "dog"}; /* strcmp: capitals first */
    assert_class_names(ds, 3, names);
    assert_int_equal(graft_dataset_count(ds), 6);
    const char *paths[] = {"root/Bird/z.png", "root/cat/a.png", "root/cat/b.PNG",
                           "root/cat/sub/deeper/c.jpg", "root/dog/1.jpeg", "root/dog/2.JPG"};
    const int labels[] = {0, 1, 1, 1, 2, 2};
    for (int i = 0; i < 6; ++i) {
        assert_string_equal(graft_dataset_path(ds, i), at("%s", paths[i]));
        assert_int_equal(graft_dataset_label(ds, i), labels[i]);
    }
    assert_null(graft_dataset_path(ds, 6));
    assert_int_equal(graft_dataset_label(ds, -1), -1);
    int64_t counts[3];
    graft_dataset_class_counts(ds, counts);
    assert_int_equal(counts[0], 1);
    assert_int_equal(counts[1], 3);
    assert_int_equal(counts[2], 2);
    const char *first = NULL;
    assert_int_equal(graft_dataset_skipped(ds, &first), 0);
    assert_string_equal(first, "");
    assert_int_equal(graft_dataset_message_count(ds), 0);
    graft_dataset_free(ds);
}

static void test_folder_links(void **state)
{
    (void)state;
    png_at(at("root/a/1.png"), 4, 4, 1);
    png_at(at("elsewhere/bees/1.png"), 4, 4, 2);
    png_at(at("elsewhere/bees/2.png"), 4, 4, 3);
    png_at(at("elsewhere/one.png"), 4, 4, 4);
    /* a class folder that is a link, a linked file, and a loop back up */
    assert_int_equal(symlink(at("elsewhere/bees"), at("root/b")), 0);
    assert_int_equal(symlink(at("elsewhere/one.png"), at("root/a/linked.png")), 0);
    assert_int_equal(symlink("..", at("root/a/up")), 0);
    make_dirs(at("root/a/deep"));
    assert_int_equal(symlink("../../a", at("root/a/deep/again")), 0);

    graft_dataset_options o = opts(4, 4, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("root"), &o);
    const char *names[] = {"a", "b"};
    assert_class_names(ds, 2, names);
    assert_int_equal(graft_dataset_count(ds), 4);
    assert_string_equal(graft_dataset_path(ds, 0), at("root/a/1.png"));
    assert_string_equal(graft_dataset_path(ds, 1), at("root/a/linked.png"));
    assert_string_equal(graft_dataset_path(ds, 2), at("root/b/1.png"));
    assert_int_equal(graft_dataset_skipped(ds, NULL), 0);
    /* root/a/up -> root is a folder on the way down; so is root/a/deep/again -> a */
    assert_int_equal(graft_dataset_message_count(ds), 2);
    assert_non_null(strstr(graft_dataset_message(ds, 0), "root/a/deep/again"));
    assert_non_null(strstr(graft_dataset_message(ds, 0), "loop"));
    assert_non_null(strstr(graft_dataset_message(ds, 1), "root/a/up"));
    assert_null(graft_dataset_message(ds, 2));
    graft_dataset_free(ds);
}

/* ---- lists ------------------------------------------------------------------------------ */

static void test_csv(void **state)
{
    (void)state;
    png_at(at("imgs/a.png"), 4, 4, 1);
    png_at(at("imgs/with, comma.png"), 4, 4, 2);
    png_at(at("imgs/b.png"), 4, 4, 3);
    jpeg_at(at("abs/c.jpg"), 8, 8, 4);
    char text[2048];
    snprintf(text, sizeof text,
             "\xEF\xBB\xBFpath,label\r\n"
             "../imgs/a.png,dog\r\n"
             "\"../imgs/with, comma.png\",cat\r\n"
             "  ../imgs/b.png , cat \r\n"
             "\r\n"
             "%s,\"dog\"\r\n",
             at("abs/c.jpg"));
    write_text(at("lists/train.csv"), text);

    graft_dataset_options o = opts(4, 4, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("lists/train.csv"), &o);
    const char *names[] = {"cat", "dog"};
    assert_class_names(ds, 2, names);
    assert_int_equal(graft_dataset_count(ds), 4);
    assert_string_equal(graft_dataset_path(ds, 0), at("lists/../imgs/a.png"));
    assert_string_equal(graft_dataset_path(ds, 1), at("lists/../imgs/with, comma.png"));
    assert_string_equal(graft_dataset_path(ds, 2), at("lists/../imgs/b.png"));
    assert_string_equal(graft_dataset_path(ds, 3), at("abs/c.jpg"));
    const int labels[] = {1, 0, 0, 1};
    for (int i = 0; i < 4; ++i)
        assert_int_equal(graft_dataset_label(ds, i), labels[i]);
    assert_int_equal(graft_dataset_skipped(ds, NULL), 0);
    graft_dataset_free(ds);

    /* A header may name the columns, in any order, among others; quotes escape. */
    write_text(at("lists/cols.CSV"), "Class,note,File\n"
                                     "cat,\"says \"\"hi\"\", twice\",../imgs/a.png\n"
                                     "dog,,../imgs/b.png\n");
    ds = open_ok(at("lists/cols.CSV"), &o);
    assert_class_names(ds, 2, names);
    assert_string_equal(graft_dataset_path(ds, 0), at("lists/../imgs/a.png"));
    assert_int_equal(graft_dataset_label(ds, 0), 0);
    assert_int_equal(graft_dataset_label(ds, 1), 1);
    graft_dataset_free(ds);
}

static void test_tsv(void **state)
{
    (void)state;
    png_at(at("data/imgs/a.png"), 4, 4, 1);
    png_at(at("data/imgs/b c.png"), 4, 4, 2);
    png_at(at("data/imgs/d.png"), 4, 4, 3);
    /* no header; a tab separates, spaces belong to the fields */
    write_text(at("data/list.tsv"), "imgs/a.png\tbig cat\n"
                                    "imgs/b c.png\tant\n"
                                    "imgs/d.png\tbig cat");
    graft_dataset_options o = opts(4, 4, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("data/list.tsv"), &o);
    const char *names[] = {"ant", "big cat"};
    assert_class_names(ds, 2, names);
    assert_int_equal(graft_dataset_count(ds), 3);
    assert_string_equal(graft_dataset_path(ds, 1), at("data/imgs/b c.png"));
    assert_int_equal(graft_dataset_label(ds, 0), 1);
    assert_int_equal(graft_dataset_label(ds, 1), 0);
    assert_int_equal(graft_dataset_label(ds, 2), 1);
    graft_dataset_free(ds);

    /* A .csv whose first line has tabs and no comma is read as tab-separated. */
    write_text(at("data/tabs.csv"), "imgs/a.png\tx\nimgs/d.png\ty\n");
    ds = open_ok(at("data/tabs.csv"), &o);
    assert_int_equal(graft_dataset_count(ds), 2);
    graft_dataset_free(ds);
}

/* ---- IDX ---------------------------------------------------------------------------------- */

static void check_idx(const char *images, int n, int rows, int cols, const unsigned char *labels)
{
    graft_dataset_options o = opts(rows, cols, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(images, &o);
    assert_int_equal(graft_dataset_count(ds), n);
    const char *names[] = {"0", "1", "2"};
    assert_class_names(ds, 3, names);
    char want[1100];
    snprintf(want, sizeof want, "%s#%d", images, n - 1);
    assert_string_equal(graft_dataset_path(ds, n - 1), want);
    int64_t idx[16];
    for (int i = 0; i < n; ++i)
        idx[i] = n - 1 - i; /* reversed: the batch follows the indices */
    float *x = malloc(sizeof(float) * n * rows * cols * 3);
    int32_t got[16];
    assert_int_equal(graft_dataset_load(ds, idx, n, NULL, 0, x, got), GRAFT_OK);
    for (int k = 0; k < n; ++k) {
        const int i = (int)idx[k];
        assert_int_equal(got[k], labels[i]);
        for (int y = 0; y < rows; ++y)
            for (int xx = 0; xx < cols; ++xx)
                for (int ch = 0; ch < 3; ++ch)
                    assert_true(x[(((size_t)k * rows + y) * cols + xx) * 3 + ch] ==
                                (float)pixel_value(i, y, xx));
    }
    free(x);
    graft_dataset_free(ds);
}

static void test_idx(void **state)
{
    (void)state;
    const unsigned char labels[5] = {2, 0, 1, 2, 0};
    write_idx_pair(at("raw-images-idx3-ubyte"), at("raw-labels-idx1-ubyte"), 5, 3, 4, labels);
    check_idx(at("raw-images-idx3-ubyte"), 5, 3, 4, labels);
    write_idx_pair(at("gz-images-idx3-ubyte.gz"), at("gz-labels-idx1-ubyte.gz"), 5, 3, 4, labels);
    check_idx(at("gz-images-idx3-ubyte.gz"), 5, 3, 4, labels);
    /* labels compressed, images not; and the other way round */
    write_idx_pair(at("m1-images-idx3-ubyte"), at("m1-labels-idx1-ubyte.gz"), 5, 3, 4, labels);
    check_idx(at("m1-images-idx3-ubyte"), 5, 3, 4, labels);
    write_idx_pair(at("m2-images-idx3-ubyte.gz"), at("m2-labels-idx1-ubyte"), 5, 3, 4, labels);
    check_idx(at("m2-images-idx3-ubyte.gz"), 5, 3, 4, labels);

    /* names */
    graft_dataset_options o = opts(3, 4, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("raw-images-idx3-ubyte"), &o);
    const char *fashion[] = {"T-shirt/top", "Trouser", "Pullover"};
    assert_int_equal(graft_dataset_set_class_names(ds, fashion, 3), GRAFT_OK);
    assert_class_names(ds, 3, fashion);
    assert_error(graft_dataset_set_class_names(ds, fashion, 2), GRAFT_E_INVALID_ARG, "2 names",
                 "3 classes");
    assert_class_names(ds, 3, fashion);
    graft_dataset_free(ds);
}

static void test_idx_rgb(void **state)
{
    (void)state;
    /* (n, rows, cols, 3): colour IDX, as some exports write */
    unsigned char px[2 * 2 * 2 * 3];
    for (int i = 0; i < (int)sizeof px; ++i)
        px[i] = (unsigned char)(i * 10);
    const uint32_t dims[4] = {2, 2, 2, 3}, ldims[1] = {2};
    const unsigned char labels[2] = {1, 0};
    write_idx(at("c-images-idx3-ubyte"), 4, dims, px, sizeof px);
    write_idx(at("c-labels-idx1-ubyte"), 1, ldims, labels, 2);
    graft_dataset_options o = opts(2, 2, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("c-images-idx3-ubyte"), &o);
    float x[24];
    const int64_t idx[2] = {0, 1};
    assert_int_equal(graft_dataset_load(ds, idx, 2, NULL, 0, x, NULL), GRAFT_OK);
    for (int i = 0; i < 24; ++i)
        assert_true(x[i] == (float)px[i]);
    graft_dataset_free(ds);
}

/* ---- splits and samples ------------------------------------------------------------------- */

/* An IDX dataset of 1x1 images with counts[c] images of class c, the classes
 * interleaved (round robin) so that no class sits in one block. */
static graft_dataset *counted(const char *name, const int *counts, int k)
{
    unsigned char labels[256];
    int left[16], n = 0;
    memcpy(left, counts, sizeof(int) * (size_t)k);
    for (int more = 1; more;) {
        more = 0;
        for (int c = 0; c < k; ++c)
            if (left[c] > 0) {
                labels[n++] = (unsigned char)c;
                left[c]--;
                more = 1;
            }
    }
    char images[64], lab[64];
    snprintf(images, sizeof images, "%s-images-idx3-ubyte", name);
    snprintf(lab, sizeof lab, "%s-labels-idx1-ubyte", name);
    write_idx_pair(at("%s", images), at("%s", lab), n, 1, 1, labels);
    graft_dataset_options o = opts(1, 1, GRAFT_PREPROCESS_NONE);
    return open_ok(at("%s", images), &o);
}

/* The parent position of each image of a part ("file#i" names it). */
static int64_t position(const graft_dataset *part, int64_t i)
{
    const char *hash = strrchr(graft_dataset_path(part, i), '#');
    assert_non_null(hash);
    return strtoll(hash + 1, NULL, 10);
}

static void expect_counts(const graft_dataset *ds, int k, const int *want)
{
    int64_t counts[16];
    graft_dataset_class_counts(ds, counts);
    for (int c = 0; c < k; ++c)
        if (counts[c] != want[c])
            fail_msg("class %d: %lld images, want %d", c, (long long)counts[c], want[c]);
}

/* Writes the parent positions of a part into out; checks they ascend. */
static int64_t positions(const graft_dataset *part, int64_t *out)
{
    const int64_t n = graft_dataset_count(part);
    for (int64_t i = 0; i < n; ++i) {
        out[i] = position(part, i);
        if (i > 0)
            assert_true(out[i] > out[i - 1]);
    }
    return n;
}

static void check_split(const graft_dataset *ds, double f, uint64_t seed, const int *val_want,
                        const int *counts, int k)
{
    graft_dataset *train = NULL, *val = NULL;
    assert_int_equal(graft_dataset_split(ds, f, seed, &train, &val), GRAFT_OK);
    int train_want[16];
    for (int c = 0; c < k; ++c)
        train_want[c] = counts[c] - val_want[c];
    expect_counts(val, k, val_want);
    expect_counts(train, k, train_want);
    /* disjoint and covering */
    const int64_t n = graft_dataset_count(ds);
    int seen[256] = {0};
    int64_t pos[256];
    int64_t nv = positions(val, pos);
    for (int64_t i = 0; i < nv; ++i)
        seen[pos[i]]++;
    int64_t nt = positions(train, pos);
    for (int64_t i = 0; i < nt; ++i)
        seen[pos[i]]++;
    assert_int_equal(nv + nt, n);
    for (int64_t i = 0; i < n; ++i)
        assert_int_equal(seen[i], 1);
    /* labels follow the images */
    for (int64_t i = 0; i < nv; ++i)
        assert_int_equal(graft_dataset_label(val, i), graft_dataset_label(ds, position(val, i)));
    graft_dataset_free(train);
    graft_dataset_free(val);
}

static void test_split_stratified(void **state)
{
    (void)state;
    const int counts[4] = {10, 7, 2, 1};
    graft_dataset *ds = counted("s", counts, 4);
    assert_int_equal(graft_dataset_count(ds), 20);
    /* round(f * count); at least one from a class of two or more; never all */
    check_split(ds, 0.2, 1, (const int[]){2, 1, 1, 0}, counts, 4);
    check_split(ds, 0.5, 7, (const int[]){5, 4, 1, 0}, counts, 4);
    check_split(ds, 0.15, 3, (const int[]){2, 1, 1, 0}, counts, 4); /* 1.5 rounds up */
    check_split(ds, 0.9, 2, (const int[]){9, 6, 1, 0}, counts, 4);
    check_split(ds, 0.01, 2, (const int[]){1, 1, 1, 0}, counts, 4);

    graft_dataset *t = NULL, *v = NULL;
    assert_error(graft_dataset_split(ds, 0.0, 1, &t, &v), GRAFT_E_INVALID_ARG, "fraction", NULL);
    assert_error(graft_dataset_split(ds, 1.0, 1, &t, &v), GRAFT_E_INVALID_ARG, "fraction", NULL);
    assert_error(graft_dataset_split(ds, NAN, 1, &t, &v), GRAFT_E_INVALID_ARG, "fraction", NULL);
    assert_null(t);
    assert_null(v);
    graft_dataset_free(ds);
}

static void val_positions(const graft_dataset *ds, uint64_t seed, int64_t *out, int64_t *n)
{
    graft_dataset *train = NULL, *val = NULL;
    assert_int_equal(graft_dataset_split(ds, 0.3, seed, &train, &val), GRAFT_OK);
    *n = positions(val, out);
    graft_dataset_free(train);
    graft_dataset_free(val);
}

static void test_split_seeded(void **state)
{
    (void)state;
    const int counts[3] = {12, 9, 6};
    graft_dataset *ds = counted("seeded", counts, 3);
    int64_t a[64], b[64], n_a, n_b;
    val_positions(ds, 42, a, &n_a);
    val_positions(ds, 42, b, &n_b);
    assert_int_equal(n_a, n_b);
    assert_memory_equal(a, b, sizeof(int64_t) * (size_t)n_a);
    /* other seeds give other splits (the sizes stay) */
    int differ = 0;
    for (uint64_t seed = 43; seed < 48; ++seed) {
        val_positions(ds, seed, b, &n_b);
        assert_int_equal(n_b, n_a);
        differ += memcmp(a, b, sizeof(int64_t) * (size_t)n_a) != 0;
    }
    assert_true(differ >= 4);
    graft_dataset_free(ds);
}

static void test_subsets_share_storage(void **state)
{
    (void)state;
    const int counts[2] = {6, 6};
    graft_dataset *ds = counted("share", counts, 2);
    graft_dataset *train, *val, *train2, *val2;
    assert_int_equal(graft_dataset_split(ds, 0.5, 1, &train, &val), GRAFT_OK);
    assert_int_equal(graft_dataset_split(train, 0.34, 2, &train2, &val2), GRAFT_OK);
    expect_counts(val2, 2, (const int[]){1, 1});
    /* counted references: the parent may go first */
    const char *names[] = {"even", "odd"};
    assert_int_equal(graft_dataset_set_class_names(val2, names, 2), GRAFT_OK);
    graft_dataset_free(ds);
    graft_dataset_free(train);
    assert_string_equal(graft_dataset_class_name(val, 1), "odd");
    float x[3];
    int32_t label = -1;
    const int64_t zero = 0;
    assert_int_equal(graft_dataset_load(train2, &zero, 1, NULL, 0, x, &label), GRAFT_OK);
    assert_int_equal(label, graft_dataset_label(train2, 0));
    assert_true(x[0] == (float)pixel_value((int)position(train2, 0), 0, 0));
    graft_dataset_free(val2);
    graft_dataset_free(train2);
    graft_dataset_free(val);
}

static void test_sample_per_class(void **state)
{
    (void)state;
    const int counts[4] = {10, 7, 2, 1};
    graft_dataset *ds = counted("k", counts, 4);
    graft_dataset *s3, *s3b, *s2, *all, *other;
    assert_int_equal(graft_dataset_sample_per_class(ds, 3, 5, &s3), GRAFT_OK);
    expect_counts(s3, 4, (const int[]){3, 3, 2, 1});
    assert_int_equal(graft_dataset_sample_per_class(ds, 3, 5, &s3b), GRAFT_OK);
    int64_t a[32], b[32];
    int64_t na = positions(s3, a), nb = positions(s3b, b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, sizeof(int64_t) * (size_t)na);
    /* a smaller k with the same seed is a subset */
    assert_int_equal(graft_dataset_sample_per_class(ds, 2, 5, &s2), GRAFT_OK);
    expect_counts(s2, 4, (const int[]){2, 2, 2, 1});
    nb = positions(s2, b);
    for (int64_t i = 0; i < nb; ++i) {
        int found = 0;
        for (int64_t j = 0; j < na; ++j)
            found |= a[j] == b[i];
        assert_true(found);
    }
    assert_int_equal(graft_dataset_sample_per_class(ds, 100, 5, &all), GRAFT_OK);
    assert_int_equal(graft_dataset_count(all), 20);
    int differ = 0;
    for (uint64_t seed = 6; seed < 10; ++seed) {
        assert_int_equal(graft_dataset_sample_per_class(ds, 3, seed, &other), GRAFT_OK);
        nb = positions(other, b);
        differ += memcmp(a, b, sizeof(int64_t) * (size_t)na) != 0;
        graft_dataset_free(other);
    }
    assert_true(differ >= 3);
    assert_error(graft_dataset_sample_per_class(ds, 0, 5, &other), GRAFT_E_INVALID_ARG, "k = 0",
                 NULL);
    graft_dataset_free(s3);
    graft_dataset_free(s3b);
    graft_dataset_free(s2);
    graft_dataset_free(all);
    graft_dataset_free(ds);
}

static void test_class_weights(void **state)
{
    (void)state;
    const int counts[4] = {10, 7, 2, 1};
    graft_dataset *ds = counted("w", counts, 4);
    float w[4];
    assert_int_equal(graft_dataset_class_weights(ds, w), GRAFT_OK);
    /* 20 / (4 * count) */
    assert_float_equal(w[0], 0.5, 1e-6);
    assert_float_equal(w[1], 20.0 / 28.0, 1e-6);
    assert_float_equal(w[2], 2.5, 1e-6);
    assert_float_equal(w[3], 5.0, 1e-6);

    /* A class without images gets 0 and does not count among the classes. */
    const int gap[3] = {3, 0, 1};
    graft_dataset *g = counted("gap", gap, 3);
    assert_int_equal(graft_dataset_class_count(g), 3);
    float wg[3];
    assert_int_equal(graft_dataset_class_weights(g, wg), GRAFT_OK);
    assert_float_equal(wg[0], 4.0 / 6.0, 1e-6);
    assert_float_equal(wg[1], 0.0, 0.0);
    assert_float_equal(wg[2], 2.0, 1e-6);
    graft_dataset_free(g);

    /* small classes */
    int64_t small[4];
    assert_int_equal(graft_dataset_small_classes(ds, 5, small), 2);
    assert_int_equal(small[0], 2);
    assert_int_equal(small[1], 3);
    assert_int_equal(graft_dataset_small_classes(ds, 8, NULL), 3);
    assert_int_equal(graft_dataset_small_classes(ds, 1, small), 0);
    graft_dataset_free(ds);
}

/* ---- loading ------------------------------------------------------------------------------- */

static void test_load_identity(void **state)
{
    (void)state;
    const int w = 5, h = 4;
    unsigned char *pa = picture(w, h, 1), *pb = picture(w, h, 2);
    write_png(at("root/a/x.png"), w, h, pa);
    write_png(at("root/b/y.png"), w, h, pb);
    const graft_resize_mode modes[3] = {GRAFT_RESIZE_STRETCH, GRAFT_RESIZE_CROP,
                                        GRAFT_RESIZE_PAD};
    float x[2 * 4 * 5 * 3];
    int32_t labels[2];
    const int64_t idx[2] = {1, 0};
    for (int m = 0; m < 3; ++m) {
        graft_dataset_options o = opts(h, w, GRAFT_PREPROCESS_NONE);
        o.resize = modes[m];
        graft_dataset *ds = open_ok(at("root"), &o);
        assert_int_equal(graft_dataset_load(ds, idx, 2, NULL, 0, x, labels), GRAFT_OK);
        assert_int_equal(labels[0], 1);
        assert_int_equal(labels[1], 0);
        for (int i = 0; i < w * h * 3; ++i) {
            assert_true(x[i] == (float)pb[i]);
            assert_true(x[w * h * 3 + i] == (float)pa[i]);
        }
        graft_dataset_free(ds);
    }
    /* preprocessing applied after */
    graft_dataset_options o = opts(h, w, GRAFT_PREPROCESS_MOBILENET);
    graft_dataset *ds = open_ok(at("root"), &o);
    assert_int_equal(graft_dataset_load(ds, idx, 2, NULL, 0, x, NULL), GRAFT_OK);
    for (int i = 0; i < w * h * 3; ++i)
        assert_float_equal(x[i], pb[i] / 127.5 - 1.0, 1e-6);
    graft_dataset_free(ds);
    o.preprocess = GRAFT_PREPROCESS_CAFFE;
    ds = open_ok(at("root"), &o);
    assert_int_equal(graft_dataset_load(ds, idx, 1, NULL, 0, x, NULL), GRAFT_OK);
    assert_float_equal(x[0], pb[2] - 103.939, 1e-3); /* BGR, minus the ImageNet mean */
    graft_dataset_free(ds);
    free(pa);
    free(pb);
}

/* A resizing load is graft_image_load's result rounded to integers, then preprocessed. */
static void test_load_resized(void **state)
{
    (void)state;
    jpeg_at(at("root/a/big.jpg"), 200, 150, 1);
    png_at(at("root/b/tall.png"), 30, 70, 2);
    const graft_resize_mode modes[3] = {GRAFT_RESIZE_STRETCH, GRAFT_RESIZE_CROP,
                                        GRAFT_RESIZE_PAD};
    enum { H = 24, W = 32, N = H * W * 3 };
    for (int m = 0; m < 3; ++m) {
        graft_dataset_options o = opts(H, W, GRAFT_PREPROCESS_TORCH);
        o.resize = modes[m];
        graft_dataset *ds = open_ok(at("root"), &o);
        for (int64_t i = 0; i < 2; ++i) {
            float got[N], want[N];
            assert_int_equal(graft_dataset_load(ds, &i, 1, NULL, 0, got, NULL), GRAFT_OK);
            assert_int_equal(graft_image_load(graft_dataset_path(ds, i), H, W, modes[m],
                                              GRAFT_PREPROCESS_NONE, want),
                             GRAFT_OK);
            for (int j = 0; j < N; ++j)
                want[j] = floorf(want[j] + 0.5f);
            graft__preprocess(want, H * W, GRAFT_PREPROCESS_TORCH);
            for (int j = 0; j < N; ++j)
                if (got[j] != want[j])
                    fail_msg("mode %d image %lld value %d: %g, want %g", m, (long long)i, j,
                             got[j], want[j]);
        }
        graft_dataset_free(ds);
    }
}

/* Six JPEGs of different sizes in two classes. */
static void six_jpegs(void)
{
    for (int i = 0; i < 6; ++i)
        jpeg_at(at("root/%c/%d.jpg", i % 2 ? 'b' : 'a', i), 40 + 13 * i, 30 + 7 * i, i);
}

static float *load_all(graft_dataset *ds, int64_t n, int64_t per, const int64_t *idx)
{
    float *x = malloc(sizeof(float) * (size_t)(n * per));
    assert_non_null(x);
    if (graft_dataset_load(ds, idx, n, NULL, 0, x, NULL) != GRAFT_OK)
        fail_msg("load: %s", graft_last_error());
    return x;
}

static void test_cache(void **state)
{
    (void)state;
    six_jpegs();
    const int64_t per = 16 * 16 * 3, idx[8] = {5, 0, 3, 3, 1, 2, 4, 0};
    graft_dataset_options o = opts(16, 16, GRAFT_PREPROCESS_MOBILENET);

    /* small listing: decoded at open, all cached */
    graft_dataset *ds = open_ok(at("root"), &o);
    assert_int_equal(ds->store->cache_used, 6 * per);
    float *first = load_all(ds, 8, per, idx), *second = load_all(ds, 8, per, idx);
    assert_memory_equal(first, second, sizeof(float) * 8 * per);
    graft_dataset_free(ds);

    /* budget 0: no cache, the same values */
    o.cache_bytes = 0;
    ds = open_ok(at("root"), &o);
    assert_null(ds->store->cache);
    float *uncached = load_all(ds, 8, per, idx);
    assert_memory_equal(first, uncached, sizeof(float) * 8 * per);
    graft_dataset_free(ds);

    /* a budget for two and a half images holds two */
    o.cache_bytes = (size_t)(per * 5 / 2);
    ds = open_ok(at("root"), &o);
    assert_int_equal(ds->store->cache_used, 2 * per);
    float *partial = load_all(ds, 8, per, idx);
    assert_int_equal(ds->store->cache_used, 2 * per);
    assert_memory_equal(first, partial, sizeof(float) * 8 * per);
    graft_dataset_free(ds);

    /* checked by header only: filled on first use */
    o.cache_bytes = (size_t)1 << 20;
    assert_int_equal(graft__dataset_open_ex(at("root"), &o, 0, &ds), GRAFT_OK);
    assert_int_equal(ds->store->cache_used, 0);
    float *lazy = load_all(ds, 8, per, idx);
    assert_int_equal(ds->store->cache_used, 6 * per);
    float *lazy2 = load_all(ds, 8, per, idx);
    assert_memory_equal(first, lazy, sizeof(float) * 8 * per);
    assert_memory_equal(first, lazy2, sizeof(float) * 8 * per);
    graft_dataset_free(ds);
    free(first);
    free(second);
    free(uncached);
    free(partial);
    free(lazy);
    free(lazy2);
}

static void test_threads_independent(void **state)
{
    (void)state;
    for (int i = 0; i < 12; ++i)
        jpeg_at(at("root/%c/%02d.jpg", 'a' + i % 3, i), 50 + 11 * i, 40 + 5 * i, i);
    const int64_t per = 20 * 24 * 3;
    int64_t idx[30];
    for (int k = 0; k < 30; ++k)
        idx[k] = (k * 7) % 12;
    const int before = omp_get_max_threads();
    for (int budget = 0; budget <= 1; ++budget) {
        graft_dataset_options o = opts(20, 24, GRAFT_PREPROCESS_INCEPTION);
        o.resize = GRAFT_RESIZE_CROP;
        o.cache_bytes = budget ? (size_t)1 << 20 : 0;
        graft_dataset *one, *two;
        omp_set_num_threads(1);
        assert_int_equal(graft__dataset_open_ex(at("root"), &o, 0, &one), GRAFT_OK);
        float *x1 = load_all(one, 30, per, idx);
        omp_set_num_threads(2);
        assert_int_equal(graft__dataset_open_ex(at("root"), &o, 0, &two), GRAFT_OK);
        float *x2 = load_all(two, 30, per, idx);
        assert_memory_equal(x1, x2, sizeof(float) * 30 * per);
        /* options.threads overrides OpenMP's default */
        graft_dataset_free(two);
        o.threads = 2;
        omp_set_num_threads(1);
        assert_int_equal(graft__dataset_open_ex(at("root"), &o, INT64_MAX, &two), GRAFT_OK);
        float *x3 = load_all(two, 30, per, idx);
        assert_memory_equal(x1, x3, sizeof(float) * 30 * per);
        graft_dataset_free(one);
        graft_dataset_free(two);
        free(x1);
        free(x2);
        free(x3);
    }
    omp_set_num_threads(before);
}

static void test_batch_source(void **state)
{
    (void)state;
    six_jpegs();
    graft_dataset_options o = opts(8, 8, GRAFT_PREPROCESS_UNIT);
    graft_dataset *ds = open_ok(at("root"), &o), *train, *val;
    assert_int_equal(graft_dataset_split(ds, 0.34, 9, &train, &val), GRAFT_OK);
    graft_batch_source src = graft_dataset_source(train, NULL);
    assert_int_equal(src.count, graft_dataset_count(train));
    assert_non_null(src.fill);
    const int64_t idx[3] = {3, 0, 2};
    float a[3 * 8 * 8 * 3], b[3 * 8 * 8 * 3];
    int32_t la[3], lb[3];
    assert_int_equal(src.fill(src.user, idx, 3, 4, a, la), GRAFT_OK);
    assert_int_equal(graft_dataset_load(train, idx, 3, NULL, 4, b, lb), GRAFT_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(la, lb, sizeof la);
    for (int k = 0; k < 3; ++k)
        assert_int_equal(la[k], graft_dataset_label(train, idx[k]));
    /* a second source on the same view; both freed with it */
    graft_batch_source vsrc = graft_dataset_source(val, NULL);
    assert_int_equal(vsrc.count, graft_dataset_count(val));
    graft_batch_source none = graft_dataset_source(NULL, NULL);
    assert_int_equal(none.count, 0);
    assert_null(none.fill);
    graft_dataset_free(ds);
    graft_dataset_free(train);
    graft_dataset_free(val);
}

static void test_load_arguments(void **state)
{
    (void)state;
    six_jpegs();
    graft_dataset_options o = opts(8, 8, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(at("root"), &o);
    float x[2 * 8 * 8 * 3];
    const int64_t bad[2] = {0, 6}, neg = -1;
    assert_error(graft_dataset_load(ds, bad, 2, NULL, 0, x, NULL), GRAFT_E_INVALID_ARG, "index 6",
                 "6 images");
    assert_error(graft_dataset_load(ds, &neg, 1, NULL, 0, x, NULL), GRAFT_E_INVALID_ARG,
                 "index -1", NULL);
    assert_error(graft_dataset_load(ds, bad, 1, NULL, 0, NULL, NULL), GRAFT_E_INVALID_ARG, "x",
                 NULL);
    assert_error(graft_dataset_load(ds, bad, -1, NULL, 0, x, NULL), GRAFT_E_INVALID_ARG,
                 "negative", NULL);
    assert_error(graft_dataset_load(NULL, bad, 1, NULL, 0, x, NULL), GRAFT_E_INVALID_ARG, "NULL",
                 NULL);
    assert_int_equal(graft_dataset_load(ds, NULL, 0, NULL, 0, NULL, NULL), GRAFT_OK);
    /* an all-zero augmentation is no augmentation */
    graft_augment none;
    memset(&none, 0, sizeof none);
    float y[8 * 8 * 3];
    assert_int_equal(graft_dataset_load(ds, bad, 1, &none, 3, x, NULL), GRAFT_OK);
    assert_int_equal(graft_dataset_load(ds, bad, 1, NULL, 0, y, NULL), GRAFT_OK);
    assert_memory_equal(x, y, sizeof y);
    graft_dataset_free(ds);
}

static void test_open_arguments(void **state)
{
    (void)state;
    six_jpegs();
    graft_dataset *ds = (graft_dataset *)&ds;
    graft_dataset_options o = opts(8, 8, GRAFT_PREPROCESS_NONE);
    assert_error(graft_dataset_open(NULL, &o, &ds), GRAFT_E_INVALID_ARG, "path", NULL);
    assert_null(ds);
    assert_error(graft_dataset_open(at("root"), &o, NULL), GRAFT_E_INVALID_ARG, "out", NULL);
    assert_error(graft_dataset_open(at("nowhere"), &o, &ds), GRAFT_E_NOT_FOUND, "nowhere",
                 "No such file");
    write_text(at("notes.txt"), "hello");
    assert_error(graft_dataset_open(at("notes.txt"), &o, &ds), GRAFT_E_FORMAT, "notes.txt",
                 "neither");
    o.height = 0;
    assert_error(graft_dataset_open(at("root"), &o, &ds), GRAFT_E_INVALID_ARG, "root",
                 "out of range");
    o = opts(8, 8, GRAFT_PREPROCESS_NONE);
    o.resize = (graft_resize_mode)9;
    assert_error(graft_dataset_open(at("root"), &o, &ds), GRAFT_E_INVALID_ARG, "resize", NULL);
    o = opts(8, 8, (graft_preprocess)-2);
    assert_error(graft_dataset_open(at("root"), &o, &ds), GRAFT_E_INVALID_ARG, "preprocessing",
                 NULL);
    /* NULL options: the defaults */
    assert_int_equal(graft_dataset_open(at("root"), NULL, &ds), GRAFT_OK);
    assert_int_equal(ds->store->options.height, 224);
    graft_dataset_free(ds);
    graft_dataset_free(NULL);
    assert_int_equal(graft_dataset_count(NULL), 0);
}

/* ---- Fashion-MNIST, when installed (Debian dataset-fashion-mnist) ----------------------- */

#define FASHION "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"

static void test_fashion_mnist(void **state)
{
    (void)state;
    if (access(FASHION, R_OK) != 0) {
        skip();
        return;
    }
    graft_dataset_options o = opts(28, 28, GRAFT_PREPROCESS_NONE);
    graft_dataset *ds = open_ok(FASHION, &o);
    assert_int_equal(graft_dataset_count(ds), 10000);
    assert_int_equal(graft_dataset_class_count(ds), 10);
    const int first[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
    for (int i = 0; i < 10; ++i)
        assert_int_equal(graft_dataset_label(ds, i), first[i]);
    int64_t counts[10];
    graft_dataset_class_counts(ds, counts);
    for (int c = 0; c < 10; ++c)
        assert_int_equal(counts[c], 1000);
    /* image 1, against the file read independently */
    unsigned char raw[16 + 2 * 784];
    gzFile f = gzopen(FASHION, "rb");
    assert_non_null(f);
    assert_int_equal(gzread(f, raw, sizeof raw), (int)sizeof raw);
    gzclose(f);
    float x[28 * 28 * 3];
    const int64_t one = 1;
    assert_int_equal(graft_dataset_load(ds, &one, 1, NULL, 0, x, NULL), GRAFT_OK);
    for (int p = 0; p < 784; ++p)
        for (int c = 0; c < 3; ++c)
            assert_true(x[p * 3 + c] == (float)raw[16 + 784 + p]);
    graft_dataset_free(ds);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup(name, fresh_scratch)
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_folder_tree),
        T(test_folder_links),
        T(test_csv),
        T(test_tsv),
        T(test_idx),
        T(test_idx_rgb),
        T(test_split_stratified),
        T(test_split_seeded),
        T(test_subsets_share_storage),
        T(test_sample_per_class),
        T(test_class_weights),
        T(test_load_identity),
        T(test_load_resized),
        T(test_cache),
        T(test_threads_independent),
        T(test_batch_source),
        T(test_load_arguments),
        T(test_open_arguments),
        T(test_fashion_mnist),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
