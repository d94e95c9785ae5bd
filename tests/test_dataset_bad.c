/* Datasets with bad data: every bad file is skipped with a one-line message
 * naming it and counted; opening fails only when fewer than two classes keep an
 * image; a file that passes the header check at open but fails to decode makes
 * graft_dataset_load fail, naming it. Each case runs with both kinds of checking
 * at open (full decode, headers only). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <omp.h>

#include "data/dataset.h"
#include "graft.h"
#include "test_dataset_util.h"

enum { FULL, HEADERS };

static graft_dataset_options small_options(void)
{
    graft_dataset_options o;
    graft_dataset_options_defaults(&o);
    o.height = 8;
    o.width = 8;
    o.preprocess = GRAFT_PREPROCESS_NONE;
    return o;
}

static graft_status open_mode(int mode, const char *path, graft_dataset **out)
{
    graft_dataset_options o = small_options();
    return graft__dataset_open_ex(path, &o, mode == FULL ? INT64_MAX : 0, out);
}

/* root/a/{1,2}.png and root/b/{1,2}.jpg */
static void two_good_classes(void)
{
    png_at(at("root/a/1.png"), 12, 10, 1);
    png_at(at("root/a/2.png"), 12, 10, 2);
    jpeg_at(at("root/b/1.jpg"), 16, 16, 3);
    jpeg_at(at("root/b/2.jpg"), 16, 16, 4);
}

/* Opens root: the bad file must be skipped, counted and named. */
static void expect_skipped(int mode, const char *name, const char *reason)
{
    graft_dataset *ds = NULL;
    if (open_mode(mode, at("root"), &ds) != GRAFT_OK)
        fail_msg("open (%s): %s", mode == FULL ? "full" : "headers", graft_last_error());
    assert_int_equal(graft_dataset_count(ds), 4);
    assert_int_equal(graft_dataset_class_count(ds), 2);
    const char *first = NULL;
    assert_int_equal(graft_dataset_skipped(ds, &first), 1);
    if (!strstr(first, at("root/%s", name)) || !strstr(first, reason) || strchr(first, '\n'))
        fail_msg("message \"%s\" (want \"%s\" and \"%s\")", first, name, reason);
    assert_int_equal(graft_dataset_message_count(ds), 1);
    assert_string_equal(graft_dataset_message(ds, 0), first);
    for (int64_t i = 0; i < 4; ++i)
        assert_null(strstr(graft_dataset_path(ds, i), name));
    /* what is kept loads */
    float x[4 * 8 * 8 * 3];
    const int64_t idx[4] = {0, 1, 2, 3};
    assert_int_equal(graft_dataset_load(ds, idx, 4, NULL, 0, x, NULL), GRAFT_OK);
    graft_dataset_free(ds);
}

/* Opens root with headers only: the bad file passes, and loading it fails
 * naming it, while the others still load. */
static void expect_load_failure(const char *name, const char *reason)
{
    graft_dataset *ds = NULL;
    assert_int_equal(open_mode(HEADERS, at("root"), &ds), GRAFT_OK);
    assert_int_equal(graft_dataset_count(ds), 5);
    assert_int_equal(graft_dataset_skipped(ds, NULL), 0);
    int64_t bad = -1;
    for (int64_t i = 0; i < 5; ++i)
        if (strstr(graft_dataset_path(ds, i), name))
            bad = i;
    assert_true(bad >= 0);
    float x[5 * 8 * 8 * 3];
    const int64_t all[5] = {0, 1, 2, 3, 4};
    assert_error(graft_dataset_load(ds, all, 5, NULL, 0, x, NULL), GRAFT_E_FORMAT,
                 at("root/%s", name), reason);
    for (int64_t i = 0; i < 5; ++i)
        if (i != bad)
            assert_int_equal(graft_dataset_load(ds, &i, 1, NULL, 0, x, NULL), GRAFT_OK);
    graft_dataset_free(ds);
}

/* ---- files that decode badly ------------------------------------------------------------- */

static void test_corrupt_jpeg(void **state)
{
    (void)state;
    two_good_classes();
    jpeg_at(at("root/b/corrupt.jpg"), 16, 16, 5);
    size_t size;
    unsigned char *data = read_bytes(at("root/b/corrupt.jpg"), &size);
    size_t dqt = 2;
    while (dqt + 5 < size && !(data[dqt] == 0xFF && data[dqt + 1] == 0xDB))
        ++dqt;
    assert_true(dqt + 5 < size);
    data[dqt + 4] = 0x07; /* quantisation table 7 of 4 */
    write_bytes(at("root/b/corrupt.jpg"), data, size);
    free(data);
    expect_skipped(FULL, "b/corrupt.jpg", "bad JPEG data");
    expect_load_failure("b/corrupt.jpg", "bad JPEG data");

    /* garbage after the signature: even the header check sees it */
    write_bytes(at("root/b/corrupt.jpg"), "\xFF\xD8\xFF\xE0garbage, not segments", 25);
    expect_skipped(FULL, "b/corrupt.jpg", "JPEG");
    expect_skipped(HEADERS, "b/corrupt.jpg", "JPEG");
}

static void test_truncated_png(void **state)
{
    (void)state;
    two_good_classes();
    png_at(at("root/a/half.png"), 64, 64, 6);
    size_t size;
    unsigned char *data = read_bytes(at("root/a/half.png"), &size);
    write_bytes(at("root/a/half.png"), data, size / 2);
    free(data);
    expect_skipped(FULL, "a/half.png", "truncated PNG");
    expect_load_failure("a/half.png", "truncated PNG");

    /* cut inside the signature or the IHDR: the header check sees it */
    write_bytes(at("root/a/half.png"), "\x89PNG\r\n\x1a\n\0\0\0\x0dIHD", 15);
    expect_skipped(HEADERS, "a/half.png", "truncated PNG header");
    expect_skipped(FULL, "a/half.png", "PNG");
}

static void test_truncated_jpeg(void **state)
{
    (void)state;
    two_good_classes();
    jpeg_at(at("root/b/cut.jpg"), 64, 48, 7);
    size_t size;
    unsigned char *data = read_bytes(at("root/b/cut.jpg"), &size);
    write_bytes(at("root/b/cut.jpg"), data, size * 2 / 3);
    expect_skipped(FULL, "b/cut.jpg", "truncated JPEG");
    expect_load_failure("b/cut.jpg", "truncated JPEG");
    write_bytes(at("root/b/cut.jpg"), data, 30); /* before the frame header */
    expect_skipped(HEADERS, "b/cut.jpg", "truncated JPEG");
    free(data);
}

/* ---- files that are not images ------------------------------------------------------------ */

static void test_zero_bytes(void **state)
{
    (void)state;
    two_good_classes();
    write_bytes(at("root/a/empty.png"), "", 0);
    expect_skipped(FULL, "a/empty.png", "file is empty");
    expect_skipped(HEADERS, "a/empty.png", "file is empty");
}

static void test_text_named_png(void **state)
{
    (void)state;
    two_good_classes();
    write_text(at("root/b/notes.png"), "these are my notes, not a picture\n");
    expect_skipped(FULL, "b/notes.png", "not a JPEG or PNG file");
    expect_skipped(HEADERS, "b/notes.png", "not a JPEG or PNG file");
}

/* Tests run as root, so a chmod 000 file stays readable: unreadable entries are
 * a dangling link and a FIFO (which must not block the reader). */
static void test_dangling_link(void **state)
{
    (void)state;
    two_good_classes();
    assert_int_equal(symlink(at("nowhere.jpg"), at("root/b/gone.jpg")), 0);
    expect_skipped(FULL, "b/gone.jpg", "No such file");
    expect_skipped(HEADERS, "b/gone.jpg", "cannot stat");
    /* a dangling link without an image name is ignored, like any other file */
    assert_int_equal(unlink(at("root/b/gone.jpg")), 0);
    assert_int_equal(symlink(at("nowhere"), at("root/b/gone")), 0);
    graft_dataset *ds = NULL;
    assert_int_equal(open_mode(FULL, at("root"), &ds), GRAFT_OK);
    assert_int_equal(graft_dataset_skipped(ds, NULL), 0);
    graft_dataset_free(ds);
}

static void test_fifo(void **state)
{
    (void)state;
    two_good_classes();
    assert_int_equal(mkfifo(at("root/a/pipe.png"), 0644), 0);
    expect_skipped(FULL, "a/pipe.png", "not a regular file");
    expect_skipped(HEADERS, "a/pipe.png", "not a regular file");
}

/* Appends a PNG chunk with its CRC. */
static void put_chunk(unsigned char **p, const char *type, const unsigned char *data, uint32_t n)
{
    unsigned char *q = *p;
    put_be32(q, n);
    memcpy(q + 4, type, 4);
    if (n)
        memcpy(q + 8, data, n);
    put_be32(q + 8 + n, (uint32_t)crc32(0, q + 4, n + 4));
    *p = q + 12 + n;
}

/* A PNG whose IHDR declares width x height: valid chunks, a token IDAT. */
static size_t craft_png(unsigned char *file, uint32_t width, uint32_t height)
{
    unsigned char *p = file, ihdr[13] = {0}, idat[64];
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    p += 8;
    put_be32(ihdr, width);
    put_be32(ihdr + 4, height);
    ihdr[8] = 8; /* bit depth */
    ihdr[9] = 2; /* RGB */
    put_chunk(&p, "IHDR", ihdr, 13);
    const unsigned char raw[8] = {0};
    uLongf idat_size = sizeof idat;
    assert_int_equal(compress(idat, &idat_size, raw, sizeof raw), Z_OK);
    put_chunk(&p, "IDAT", idat, (uint32_t)idat_size);
    put_chunk(&p, "IEND", NULL, 0);
    return (size_t)(p - file);
}

static size_t largest_alloc;
static void *counting_malloc(size_t n)
{
    if (n > largest_alloc)
        largest_alloc = n;
    return malloc(n);
}
static void *counting_realloc(void *p, size_t n)
{
    if (n > largest_alloc)
        largest_alloc = n;
    return realloc(p, n);
}
static const graft_allocator counting = {counting_malloc, counting_realloc, free};

static void test_absurd_declared_size(void **state)
{
    (void)state;
    two_good_classes();
    unsigned char file[256];
    write_bytes(at("root/a/huge.png"), file, craft_png(file, 100000, 100000));
    for (int mode = FULL; mode <= HEADERS; ++mode) {
        largest_alloc = 0;
        graft_set_allocator(&counting);
        expect_skipped(mode, "a/huge.png", "declared size 100000x100000 is too large");
        graft_set_allocator(NULL);
        assert_true(largest_alloc < ((size_t)1 << 22));
    }
    assert_int_equal(unlink(at("root/a/huge.png")), 0);

    jpeg_at(at("root/b/huge.jpg"), 16, 16, 8);
    size_t size;
    unsigned char *data = read_bytes(at("root/b/huge.jpg"), &size);
    size_t sof = 2;
    while (sof + 9 < size && !(data[sof] == 0xFF && data[sof + 1] == 0xC0))
        ++sof;
    assert_true(sof + 9 < size);
    data[sof + 5] = data[sof + 7] = 60000 >> 8;
    data[sof + 6] = data[sof + 8] = 60000 & 255;
    write_bytes(at("root/b/huge.jpg"), data, size);
    free(data);
    expect_skipped(FULL, "b/huge.jpg", "declared size 60000x60000 is too large");
    expect_skipped(HEADERS, "b/huge.jpg", "declared size 60000x60000 is too large");
}

/* ---- classes ------------------------------------------------------------------------------ */

static void test_empty_class_folders(void **state)
{
    (void)state;
    two_good_classes();
    make_dirs(at("root/c"));
    write_text(at("root/d/readme.txt"), "no images here");
    make_dirs(at("root/d/sub"));
    graft_dataset *ds = NULL;
    assert_int_equal(open_mode(FULL, at("root"), &ds), GRAFT_OK);
    assert_int_equal(graft_dataset_class_count(ds), 2);
    assert_string_equal(graft_dataset_class_name(ds, 1), "b");
    assert_int_equal(graft_dataset_count(ds), 4);
    assert_int_equal(graft_dataset_skipped(ds, NULL), 0); /* folders are not files */
    assert_int_equal(graft_dataset_message_count(ds), 2);
    assert_non_null(strstr(graft_dataset_message(ds, 0), at("root/c")));
    assert_non_null(strstr(graft_dataset_message(ds, 0), "class folder has no images"));
    assert_non_null(strstr(graft_dataset_message(ds, 1), at("root/d")));
    graft_dataset_free(ds);
}

static void test_class_of_bad_files(void **state)
{
    (void)state;
    two_good_classes();
    write_text(at("root/c/bad1.png"), "text");
    write_bytes(at("root/c/bad2.jpg"), "", 0);
    for (int mode = FULL; mode <= HEADERS; ++mode) {
        graft_dataset *ds = NULL;
        assert_int_equal(open_mode(mode, at("root"), &ds), GRAFT_OK);
        assert_int_equal(graft_dataset_class_count(ds), 2);
        const char *first;
        assert_int_equal(graft_dataset_skipped(ds, &first), 2);
        assert_non_null(strstr(first, "root/c/bad1.png"));
        assert_int_equal(graft_dataset_message_count(ds), 3);
        assert_non_null(strstr(graft_dataset_message(ds, 1), "root/c/bad2.jpg: file is empty"));
        assert_non_null(strstr(graft_dataset_message(ds, 2), at("root/c")));
        assert_non_null(strstr(graft_dataset_message(ds, 2), "class dropped"));
        graft_dataset_free(ds);
    }
}

static void test_one_class(void **state)
{
    (void)state;
    png_at(at("root/only/1.png"), 4, 4, 1);
    png_at(at("root/only/2.png"), 4, 4, 2);
    graft_dataset *ds = (graft_dataset *)&ds;
    assert_error(graft_dataset_open(at("root"), NULL, &ds), GRAFT_E_FORMAT,
                 "only one class ('only')", "at least two");
    assert_null(ds);

    /* the second class exists, but none of its files is an image */
    write_text(at("root/other/x.png"), "not a picture");
    assert_error(graft_dataset_open(at("root"), NULL, &ds), GRAFT_E_FORMAT,
                 "only one class ('only')", "1 file skipped; first: ");
    assert_error(graft_dataset_open(at("root"), NULL, &ds), GRAFT_E_FORMAT,
                 "root/other/x.png: not a JPEG or PNG file", NULL);

    /* no images at all */
    assert_int_equal(unlink(at("root/only/1.png")), 0);
    assert_int_equal(unlink(at("root/only/2.png")), 0);
    assert_error(graft_dataset_open(at("root"), NULL, &ds), GRAFT_E_FORMAT, "no usable images",
                 NULL);
    /* no class folders */
    make_dirs(at("flat"));
    png_at(at("flat/1.png"), 4, 4, 1);
    assert_error(graft_dataset_open(at("flat"), NULL, &ds), GRAFT_E_FORMAT, "no class folders",
                 NULL);
}

/* ---- lists ------------------------------------------------------------------------------- */

static void test_bad_list_rows(void **state)
{
    (void)state;
    two_good_classes();
    write_text(at("list.csv"), "path,label\n"
                               "root/a/1.png,a\n"
                               "root/a/2.png\n"
                               "root/missing.png,b\n"
                               ",b\n"
                               "root/b/1.jpg,b\n"
                               "root/b/2.jpg,b\n");
    graft_dataset *ds = NULL;
    assert_int_equal(open_mode(FULL, at("list.csv"), &ds), GRAFT_OK);
    assert_int_equal(graft_dataset_count(ds), 3);
    const char *first;
    assert_int_equal(graft_dataset_skipped(ds, &first), 3);
    assert_non_null(strstr(first, "list.csv:3: row without a label"));
    assert_non_null(strstr(graft_dataset_message(ds, 1), "root/missing.png: cannot stat"));
    assert_non_null(strstr(graft_dataset_message(ds, 2), "list.csv:5: row without a path"));
    graft_dataset_free(ds);

    write_text(at("open.csv"), "root/a/1.png,a\n\"root/b/1.jpg,b\n");
    assert_error(graft_dataset_open(at("open.csv"), NULL, &ds), GRAFT_E_FORMAT, "open.csv:2",
                 "never closed");
    write_text(at("none.csv"), "path,label\n\n");
    assert_error(graft_dataset_open(at("none.csv"), NULL, &ds), GRAFT_E_FORMAT, "none.csv",
                 "names no images");
}

/* ---- failures at load ----------------------------------------------------------------------- */

static void test_load_names_first_failure(void **state)
{
    (void)state;
    two_good_classes();
    png_at(at("root/a/3.png"), 12, 10, 9);
    jpeg_at(at("root/b/3.jpg"), 16, 16, 10);
    graft_dataset_options o = small_options();
    o.cache_bytes = 0;
    graft_dataset *ds = NULL;
    assert_int_equal(graft__dataset_open_ex(at("root"), &o, 0, &ds), GRAFT_OK);
    assert_int_equal(unlink(at("root/a/3.png")), 0);
    assert_int_equal(unlink(at("root/b/3.jpg")), 0);
    /* indices: a good one, b/3.jpg (5), a/3.png (2), good ones */
    const int64_t idx[6] = {0, 5, 2, 1, 3, 4};
    float x[6 * 8 * 8 * 3];
    const int before = omp_get_max_threads();
    for (int threads = 1; threads <= 2; ++threads) {
        omp_set_num_threads(threads);
        assert_error(graft_dataset_load(ds, idx, 6, NULL, 0, x, NULL), GRAFT_E_IO,
                     "root/b/3.jpg: cannot open", "No such file");
    }
    omp_set_num_threads(before);
    graft_dataset_free(ds);
}

/* ---- IDX --------------------------------------------------------------------------------- */

static void test_bad_idx(void **state)
{
    (void)state;
    graft_dataset *ds = (graft_dataset *)&ds;
    const unsigned char labels[4] = {0, 1, 0, 1};
    const uint32_t ldims[1] = {4};
    write_idx(at("x-labels-idx1-ubyte"), 1, ldims, labels, 4);
    unsigned char px[64] = {0};

    /* declared sizes refused before anything is allocated */
    const uint32_t huge[3][3] = {{4, 5000, 5000}, {100000, 4096, 4096}, {0, 28, 28}};
    for (int i = 0; i < 3; ++i) {
        write_idx(at("x-images-idx3-ubyte"), 3, huge[i], px, sizeof px);
        largest_alloc = 0;
        graft_set_allocator(&counting);
        graft_status rc = graft_dataset_open(at("x-images-idx3-ubyte"), NULL, &ds);
        graft_set_allocator(NULL);
        assert_error(rc, GRAFT_E_FORMAT, "x-images-idx3-ubyte", "empty or too large");
        assert_true(largest_alloc < ((size_t)1 << 20));
    }
    /* truncated data, raw and gzip */
    const uint32_t four[3] = {4, 4, 4};
    write_idx(at("x-images-idx3-ubyte"), 3, four, px, 50);
    assert_error(graft_dataset_open(at("x-images-idx3-ubyte"), NULL, &ds), GRAFT_E_FORMAT,
                 "truncated", "64 bytes of pixels");
    write_idx(at("z-images-idx3-ubyte.gz"), 3, four, px, 50);
    write_idx(at("z-labels-idx1-ubyte.gz"), 1, ldims, labels, 4);
    assert_error(graft_dataset_open(at("z-images-idx3-ubyte.gz"), NULL, &ds), GRAFT_E_FORMAT,
                 "z-images-idx3-ubyte.gz", "truncated");
    write_bytes(at("h-images-idx3-ubyte"), "\0\0\x08\x03\0\0", 6);
    write_idx(at("h-labels-idx1-ubyte"), 1, ldims, labels, 4);
    assert_error(graft_dataset_open(at("h-images-idx3-ubyte"), NULL, &ds), GRAFT_E_FORMAT,
                 "h-images-idx3-ubyte", "truncated IDX header");

    /* labels: missing, wrong count, wrong magic, short */
    write_idx(at("y-images-idx3-ubyte"), 3, four, px, 64);
    assert_error(graft_dataset_open(at("y-images-idx3-ubyte"), NULL, &ds), GRAFT_E_NOT_FOUND,
                 "y-labels-idx1-ubyte", "not found");
    const uint32_t three[1] = {3};
    write_idx(at("y-labels-idx1-ubyte"), 1, three, labels, 3);
    assert_error(graft_dataset_open(at("y-images-idx3-ubyte"), NULL, &ds), GRAFT_E_FORMAT,
                 "3 labels for 4 images", NULL);
    write_idx(at("y-labels-idx1-ubyte"), 3, four, px, 64);
    assert_error(graft_dataset_open(at("y-images-idx3-ubyte"), NULL, &ds), GRAFT_E_FORMAT,
                 "y-labels-idx1-ubyte", "not an IDX labels file");
    write_idx(at("y-labels-idx1-ubyte"), 1, ldims, labels, 2);
    assert_error(graft_dataset_open(at("y-images-idx3-ubyte"), NULL, &ds), GRAFT_E_FORMAT,
                 "y-labels-idx1-ubyte", "truncated");
    /* one class only */
    const unsigned char same[4] = {3, 3, 3, 3};
    write_idx(at("y-labels-idx1-ubyte"), 1, ldims, same, 4);
    assert_error(graft_dataset_open(at("y-images-idx3-ubyte"), NULL, &ds), GRAFT_E_FORMAT,
                 "only one class ('3')", NULL);

    /* names */
    write_idx(at("pixels.idx"), 3, four, px, 64);
    assert_error(graft_dataset_open(at("pixels.idx"), NULL, &ds), GRAFT_E_NOT_FOUND, "pixels.idx",
                 "images-idx3");
    assert_error(graft_dataset_open(at("x-labels-idx1-ubyte"), NULL, &ds), GRAFT_E_INVALID_ARG,
                 "labels file", "images file");
    assert_null(ds);
}

/* ---- out of memory ------------------------------------------------------------------------- */

static long alloc_count, fail_at;
static void *failing_malloc(size_t n)
{
    return __atomic_fetch_add(&alloc_count, 1, __ATOMIC_RELAXED) == fail_at ? NULL : malloc(n);
}
static void *failing_realloc(void *p, size_t n)
{
    return __atomic_fetch_add(&alloc_count, 1, __ATOMIC_RELAXED) == fail_at ? NULL
                                                                            : realloc(p, n);
}
static const graft_allocator failing = {failing_malloc, failing_realloc, free};

typedef graft_status (*operation)(void);

/* Runs op with the 1st, 2nd, ... allocation failing until it runs without a
 * failure: every run must succeed (a failure absorbed, as a cache entry not
 * kept) or return GRAFT_E_NOMEM with a message; ASan checks for leaks.
 * Returns how many allocations op makes. */
static long under_failures(operation op)
{
    for (fail_at = 0;; ++fail_at) {
        alloc_count = 0;
        graft_set_allocator(&failing);
        graft_status rc = op();
        graft_set_allocator(NULL);
        if (rc != GRAFT_OK && rc != GRAFT_E_NOMEM)
            fail_msg("allocation %ld failing: status %d, %s", fail_at, rc, graft_last_error());
        if (rc == GRAFT_E_NOMEM && !*graft_last_error())
            fail_msg("allocation %ld failing: no message", fail_at);
        if (rc == GRAFT_OK && alloc_count <= fail_at)
            return alloc_count;
        assert_true(fail_at < 100000);
    }
}

static int64_t check_mode;
static const char *check_path;
static int64_t want_count;

static graft_status open_and_free(void)
{
    graft_dataset_options o = small_options();
    graft_dataset *ds = NULL;
    graft_status rc = graft__dataset_open_ex(check_path, &o, check_mode, &ds);
    if (rc == GRAFT_OK)
        assert_int_equal(graft_dataset_count(ds), want_count);
    else
        assert_null(ds);
    graft_dataset_free(ds);
    return rc;
}

static graft_dataset *victim;

static graft_status use_dataset(void)
{
    graft_dataset *train = NULL, *val = NULL, *sample = NULL;
    graft_status rc = graft_dataset_split(victim, 0.5, 3, &train, &val);
    if (rc == GRAFT_OK)
        rc = graft_dataset_sample_per_class(train, 1, 3, &sample);
    float w[2], x[2 * 8 * 8 * 3];
    if (rc == GRAFT_OK)
        rc = graft_dataset_class_weights(sample, w);
    const int64_t idx[2] = {0, 1};
    if (rc == GRAFT_OK)
        rc = graft_dataset_load(val, idx, 2, NULL, 0, x, NULL);
    if (rc == GRAFT_OK) {
        graft_batch_source src = graft_dataset_source(train, NULL);
        rc = src.fill ? src.fill(src.user, idx, 2, 1, x, NULL) : GRAFT_E_NOMEM;
    }
    const char *names[2] = {"one", "two"};
    if (rc == GRAFT_OK)
        rc = graft_dataset_set_class_names(victim, names, 2);
    graft_dataset_free(sample);
    graft_dataset_free(train);
    graft_dataset_free(val);
    return rc;
}

static void test_out_of_memory(void **state)
{
    (void)state;
    const int before = omp_get_max_threads();
    omp_set_num_threads(1);
    two_good_classes();
    write_text(at("root/b/bad.png"), "text");
    make_dirs(at("root/c"));
    assert_int_equal(symlink("..", at("root/a/up")), 0);
    write_text(at("list.csv"), "path,label\nroot/a/1.png,a\nroot/b/1.jpg,b\nroot/b/x.png\n");
    const unsigned char labels[4] = {0, 1, 1, 0};
    write_idx_pair(at("t-images-idx3-ubyte.gz"), at("t-labels-idx1-ubyte.gz"), 4, 8, 8, labels);

    check_path = at("root");
    want_count = 4;
    check_mode = INT64_MAX;
    assert_true(under_failures(open_and_free) > 10);
    check_mode = 0;
    assert_true(under_failures(open_and_free) > 10);
    check_path = at("list.csv");
    want_count = 2;
    assert_true(under_failures(open_and_free) > 5);
    check_path = at("t-images-idx3-ubyte.gz");
    want_count = 4;
    assert_true(under_failures(open_and_free) > 5);

    graft_dataset_options o = small_options();
    o.cache_bytes = 0;
    assert_int_equal(graft_dataset_open(at("root"), &o, &victim), GRAFT_OK);
    assert_true(under_failures(use_dataset) > 10);
    graft_dataset_free(victim);
    omp_set_num_threads(before);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup(name, fresh_scratch)
    const struct CMUnitTest tests[] = {
        T(test_corrupt_jpeg),
        T(test_truncated_png),
        T(test_truncated_jpeg),
        T(test_zero_bytes),
        T(test_text_named_png),
        T(test_dangling_link),
        T(test_fifo),
        T(test_absurd_declared_size),
        T(test_empty_class_folders),
        T(test_class_of_bad_files),
        T(test_one_class),
        T(test_bad_list_rows),
        T(test_load_names_first_failure),
        T(test_bad_idx),
        T(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
