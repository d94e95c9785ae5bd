/* Helpers shared by the dataset tests: a scratch folder, and writers for every
 * input (PNG and JPEG with libpng and libjpeg, IDX by hand, raw or gzip). Nothing
 * binary is committed. Include after <cmocka.h>, with _GNU_SOURCE defined before
 * any header (nftw's flags). */
#ifndef GRAFT_TEST_DATASET_UTIL_H
#define GRAFT_TEST_DATASET_UTIL_H

#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#define UNUSED __attribute__((unused))

/* ---- scratch folder ---------------------------------------------------------------- */

static char scratch[256];

/* scratch/<printf path>, in one of 16 rotating buffers. */
UNUSED static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
UNUSED static const char *at(const char *fmt, ...)
{
    static char paths[16][1024];
    static int next;
    char *p = paths[next++ % 16];
    int used = snprintf(p, sizeof paths[0], "%s/", scratch);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p + used, sizeof paths[0] - (size_t)used, fmt, ap);
    va_end(ap);
    return p;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Empties and removes the scratch folder (links are removed, not followed). */
UNUSED static int remove_scratch(void **state)
{
    (void)state;
    return nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

UNUSED static int make_scratch(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/graft-dataset-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

/* A fresh, empty scratch folder for one test. */
UNUSED static int fresh_scratch(void **state)
{
    if (scratch[0])
        remove_scratch(state);
    return make_scratch(state);
}

/* mkdir -p of a path below scratch. */
UNUSED static void make_dirs(const char *path)
{
    char p[1024];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + strlen(scratch) + 1; *s; ++s)
        if (*s == '/') {
            *s = '\0';
            mkdir(p, 0755);
            *s = '/';
        }
    mkdir(p, 0755);
}

/* Creates the folders above path. */
UNUSED static void make_parent(const char *path)
{
    char p[1024];
    snprintf(p, sizeof p, "%s", path);
    char *slash = strrchr(p, '/');
    if (slash && slash > p + strlen(scratch)) {
        *slash = '\0';
        make_dirs(p);
    }
}

UNUSED static void write_bytes(const char *path, const void *data, size_t size)
{
    make_parent(path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (size)
        assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

UNUSED static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

UNUSED static unsigned char *read_bytes(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)n + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return data;
}

/* ---- pictures ------------------------------------------------------------------------ */

/* A w x h RGB picture, different for every tag; smooth enough for JPEG. */
UNUSED static unsigned char *picture(int w, int h, int tag)
{
    unsigned char *p = malloc((size_t)w * h * 3);
    assert_non_null(p);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            unsigned char *q = p + ((size_t)y * w + x) * 3;
            q[0] = (unsigned char)((x * 255 / (w > 1 ? w - 1 : 1) + 37 * tag) & 255);
            q[1] = (unsigned char)((y * 255 / (h > 1 ? h - 1 : 1) + 91 * tag) & 255);
            q[2] = (unsigned char)((x * y + 53 * tag) & 255);
        }
    return p;
}

static void png_error_fn(png_structp png, png_const_charp message)
{
    (void)png;
    fail_msg("test PNG writer: %s", message);
}

UNUSED static void write_png(const char *path, int w, int h, const unsigned char *rgb)
{
    make_parent(path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, png_error_fn, NULL);
    png_infop info = png_create_info_struct(png);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; ++y)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    assert_int_equal(fclose(f), 0);
}

static void jpeg_error_fn(j_common_ptr cinfo)
{
    char message[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, message);
    fail_msg("test JPEG writer: %s", message);
}

UNUSED static void write_jpeg(const char *path, int w, int h, const unsigned char *rgb)
{
    make_parent(path);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    err.error_exit = jpeg_error_fn;
    jpeg_create_compress(&c);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 92, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    assert_int_equal(fclose(f), 0);
}

/* Small valid images, different for every tag. */
UNUSED static void png_at(const char *path, int w, int h, int tag)
{
    unsigned char *p = picture(w, h, tag);
    write_png(path, w, h, p);
    free(p);
}

UNUSED static void jpeg_at(const char *path, int w, int h, int tag)
{
    unsigned char *p = picture(w, h, tag);
    write_jpeg(path, w, h, p);
    free(p);
}

/* ---- IDX ----------------------------------------------------------------------------- */

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* An IDX file: magic 0x0000080<ndims>, dims, then `size` data bytes (which may
 * disagree with the dims, to make bad files); gzip when the name ends in .gz. */
UNUSED static void write_idx(const char *path, int ndims, const uint32_t *dims,
                             const unsigned char *data, size_t size)
{
    make_parent(path);
    unsigned char head[4 + 4 * 4];
    put_be32(head, 0x00000800u | (uint32_t)ndims);
    for (int i = 0; i < ndims; ++i)
        put_be32(head + 4 + 4 * i, dims[i]);
    const size_t n_head = 4 + 4 * (size_t)ndims;
    const size_t len = strlen(path);
    if (len > 3 && strcmp(path + len - 3, ".gz") == 0) {
        gzFile f = gzopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(gzwrite(f, head, (unsigned)n_head), (int)n_head);
        if (size)
            assert_int_equal(gzwrite(f, data, (unsigned)size), (int)size);
        assert_int_equal(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(head, 1, n_head, f), n_head);
        if (size)
            assert_int_equal(fwrite(data, 1, size, f), size);
        assert_int_equal(fclose(f), 0);
    }
}

/* An IDX pair of n grey rows x cols images with these labels; pixel (i, y, x)
 * is pixel_value(i, y, x). */
UNUSED static unsigned char pixel_value(int i, int y, int x)
{
    return (unsigned char)((i * 31 + y * 7 + x * 13) & 255);
}

UNUSED static void write_idx_pair(const char *images, const char *labels_path, int n, int rows,
                                  int cols, const unsigned char *labels)
{
    unsigned char *px = malloc((size_t)n * rows * cols);
    assert_non_null(px);
    for (int i = 0; i < n; ++i)
        for (int y = 0; y < rows; ++y)
            for (int x = 0; x < cols; ++x)
                px[((size_t)i * rows + y) * cols + x] = pixel_value(i, y, x);
    const uint32_t dims[3] = {(uint32_t)n, (uint32_t)rows, (uint32_t)cols};
    write_idx(images, 3, dims, px, (size_t)n * rows * cols);
    const uint32_t ldims[1] = {(uint32_t)n};
    write_idx(labels_path, 1, ldims, labels, (size_t)n);
    free(px);
}

/* ---- assertions ------------------------------------------------------------------------ */

/* The status, and a one-line message holding every given word. */
UNUSED static void assert_error(graft_status got, graft_status want, const char *word1,
                                const char *word2)
{
    const char *message = graft_last_error();
    if (got != want || (word1 && !strstr(message, word1)) || (word2 && !strstr(message, word2)) ||
        strchr(message, '\n'))
        fail_msg("status %d (want %d), message \"%s\" (want \"%s\" and \"%s\")", got, want,
                 message, word1 ? word1 : "", word2 ? word2 : "");
}

#endif
