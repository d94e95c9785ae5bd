/* Image decoding and graft_image_load. Every input is written here, with libjpeg
 * and libpng, into a fresh temporary directory; nothing binary is committed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#include "core/alloc.h"
#include "data/image.h"
#include "graft.h"

/* ---- scratch files -------------------------------------------------------- */

static char scratch[256];

static const char *at(const char *name)
{
    static char paths[8][512];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", scratch, name);
    return p;
}

static int make_scratch(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/graft-image-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_scratch(void **state)
{
    (void)state;
    DIR *d = opendir(scratch);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            const char *p = at(e->d_name);
            struct stat st;
            if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
                rmdir(p);
            else
                unlink(p);
        }
    }
    if (d)
        closedir(d);
    return rmdir(scratch);
}

static void write_bytes(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)n);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return data;
}

static uint32_t lcg = 12345;
static unsigned rnd(unsigned n)
{
    lcg = lcg * 1664525u + 1013904223u;
    return (lcg >> 8) % n;
}

/* ---- writers ---------------------------------------------------------------- */

static void writer_jpeg_error(j_common_ptr cinfo)
{
    char message[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, message);
    fail_msg("test JPEG writer: %s", message);
}

typedef struct jpeg_spec {
    int width, height, components; /* 1 grey, 3 RGB, 4 CMYK */
    J_COLOR_SPACE stored;         /* JCS_UNKNOWN: libjpeg's default for the input */
    int quality, progressive;
    const unsigned char *app1; /* written as an APP1 marker when set */
    size_t app1_size;
} jpeg_spec;

static void write_jpeg(const char *path, const jpeg_spec *s, const unsigned char *pixels)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    err.error_exit = writer_jpeg_error;
    jpeg_create_compress(&c);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)s->width;
    c.image_height = (JDIMENSION)s->height;
    c.input_components = s->components;
    c.in_color_space = s->components == 1 ? JCS_GRAYSCALE : s->components == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&c);
    if (s->stored != JCS_UNKNOWN)
        jpeg_set_colorspace(&c, s->stored);
    jpeg_set_quality(&c, s->quality, TRUE);
    if (s->progressive)
        jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    if (s->app1)
        jpeg_write_marker(&c, JPEG_APP0 + 1, s->app1, (unsigned)s->app1_size);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)c.next_scanline * s->width * s->components);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    assert_int_equal(fclose(f), 0);
}

static void writer_png_error(png_structp png, png_const_charp message)
{
    (void)png;
    fail_msg("test PNG writer: %s", message);
}

static void writer_png_warning(png_structp png, png_const_charp message)
{
    (void)png;
    (void)message;
}

typedef struct png_spec {
    int width, height, colour, depth, interlace;
    const png_color *palette;
    int n_palette;
    const png_byte *trns_alpha; /* palette alpha */
    int n_trns;
    const png_color_16 *trns_colour; /* grey or RGB colour key */
} png_spec;

static int png_channels(int colour)
{
    switch (colour) {
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB: return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA: return 4;
    default: return 1;
    }
}

/* samples: one uint16_t per sample, row-major, values within the bit depth. */
static void write_png(const char *path, const png_spec *s, const uint16_t *samples)
{
    const int ch = png_channels(s->colour), wide = s->depth == 16;
    const size_t row_bytes = (size_t)s->width * ch * (wide ? 2 : 1);
    unsigned char *bytes = malloc(row_bytes * s->height);
    png_bytep *rows = malloc(sizeof *rows * s->height);
    assert_true(bytes && rows);
    for (size_t i = 0; i < (size_t)s->width * s->height * ch; ++i) {
        if (wide) {
            bytes[2 * i] = (unsigned char)(samples[i] >> 8);
            bytes[2 * i + 1] = (unsigned char)samples[i];
        } else {
            bytes[i] = (unsigned char)samples[i];
        }
    }
    for (int y = 0; y < s->height; ++y)
        rows[y] = bytes + y * row_bytes;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, writer_png_error,
                                              writer_png_warning);
    png_infop info = png_create_info_struct(png);
    png_init_io(png, f);
    png_set_IHDR(png, info, s->width, s->height, s->depth, s->colour,
                 s->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (s->palette)
        png_set_PLTE(png, info, s->palette, s->n_palette);
    if (s->trns_alpha || s->trns_colour)
        png_set_tRNS(png, info, s->trns_alpha, s->n_trns, s->trns_colour);
    png_write_info(png, info);
    if (s->depth < 8)
        png_set_packing(png); /* one sample per byte in, packed in the file */
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    assert_int_equal(fclose(f), 0);
    free(rows);
    free(bytes);
}

/* ---- test images -------------------------------------------------------------- */

/* A smooth RGB picture: JPEG reproduces it closely at high quality. */
static unsigned char *smooth_rgb(int w, int h)
{
    unsigned char *p = malloc((size_t)w * h * 3);
    assert_non_null(p);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            unsigned char *q = p + ((size_t)y * w + x) * 3;
            q[0] = (unsigned char)(40 + 160 * x / (w - 1));
            q[1] = (unsigned char)(40 + 160 * y / (h - 1));
            q[2] = (unsigned char)lround(128 + 60 * sin(6.2831853 * (x + y) / (w + h)));
        }
    return p;
}

enum { RED, GREEN, BLUE, WHITE };
static const unsigned char quadrant_rgb[4][3] = {
    {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};

/* Top-left red, top-right green, bottom-left blue, bottom-right white. */
static unsigned char *quadrants(int w, int h)
{
    unsigned char *p = malloc((size_t)w * h * 3);
    assert_non_null(p);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            memcpy(p + ((size_t)y * w + x) * 3, quadrant_rgb[(y >= h / 2) * 2 + (x >= w / 2)], 3);
    return p;
}

/* Which of the quadrant colours the pixel at (x, y) is nearest to. */
static int colour_at(const graft__image *img, int64_t x, int64_t y)
{
    const unsigned char *p = img->pixels + (y * img->width + x) * 3;
    int best = -1, best_d = 1 << 30;
    for (int k = 0; k < 4; ++k) {
        int d = 0;
        for (int c = 0; c < 3; ++c)
            d += (p[c] - quadrant_rgb[k][c]) * (p[c] - quadrant_rgb[k][c]);
        if (d < best_d) {
            best = k;
            best_d = d;
        }
    }
    return best;
}

static void assert_error(graft_status got, graft_status want, const char *name, const char *word)
{
    const char *message = graft_last_error();
    if (got != want || !strstr(message, name) || !strstr(message, word))
        fail_msg("status %d (want %d), message \"%s\" (want \"%s\" and \"%s\")", got, want,
                 message, name, word);
}

static double mean_abs_diff(const unsigned char *a, const unsigned char *b, size_t n, int *max)
{
    double sum = 0;
    *max = 0;
    for (size_t i = 0; i < n; ++i) {
        int d = abs(a[i] - b[i]);
        sum += d;
        *max = d > *max ? d : *max;
    }
    return sum / (double)n;
}

/* ---- PNG ------------------------------------------------------------------------ */

/* What a pixel must decode to, computed in doubles from the PNG's own samples:
 * colour c and alpha a of maximum m composite onto white as a*c + (1-a)*255. */
static void expected_png_pixel(const png_spec *s, const uint16_t *samples, size_t i,
                               unsigned char rgb[3])
{
    const int ch = png_channels(s->colour);
    const uint16_t *p = samples + i * ch;
    double m = (double)((1u << s->depth) - 1), c[3] = {p[0], p[0], p[0]}, a = m;
    if (s->colour == PNG_COLOR_TYPE_RGB || s->colour == PNG_COLOR_TYPE_RGB_ALPHA)
        c[1] = p[1], c[2] = p[2];
    if (s->colour == PNG_COLOR_TYPE_GRAY_ALPHA)
        a = p[1];
    if (s->colour == PNG_COLOR_TYPE_RGB_ALPHA)
        a = p[3];
    if (s->colour == PNG_COLOR_TYPE_PALETTE) {
        const png_color *e = &s->palette[p[0]];
        m = 255, c[0] = e->red, c[1] = e->green, c[2] = e->blue;
        a = p[0] < s->n_trns ? s->trns_alpha[p[0]] : 255;
    }
    const png_color_16 *key = s->trns_colour;
    if (key && s->colour == PNG_COLOR_TYPE_GRAY && p[0] == key->gray)
        a = 0;
    if (key && s->colour == PNG_COLOR_TYPE_RGB && p[0] == key->red && p[1] == key->green &&
        p[2] == key->blue)
        a = 0;
    for (int k = 0; k < 3; ++k)
        rgb[k] = (unsigned char)floor(255.0 * (a * c[k] + (m - a) * m) / (m * m) + 0.5);
}

/* Writes random samples under spec (plus any fixed leading samples), decodes,
 * and compares every pixel with expected_png_pixel(). */
static void check_png(const char *name, const png_spec *s, const uint16_t *fixed, size_t n_fixed)
{
    const size_t n = (size_t)s->width * s->height * png_channels(s->colour);
    uint16_t *samples = malloc(n * sizeof *samples);
    assert_non_null(samples);
    const unsigned range = s->colour == PNG_COLOR_TYPE_PALETTE ? (unsigned)s->n_palette
                                                               : 1u << s->depth;
    for (size_t i = 0; i < n; ++i)
        samples[i] = i < n_fixed ? fixed[i] : (uint16_t)rnd(range);
    write_png(at(name), s, samples);
    graft__image img;
    assert_int_equal(graft__image_decode(at(name), 0, 0, &img), GRAFT_OK);
    assert_int_equal(img.width, s->width);
    assert_int_equal(img.height, s->height);
    assert_int_equal(img.channels, 3);
    for (size_t i = 0; i < (size_t)s->width * s->height; ++i) {
        unsigned char want[3];
        expected_png_pixel(s, samples, i, want);
        if (memcmp(img.pixels + i * 3, want, 3) != 0)
            fail_msg("%s pixel %zu: got %d,%d,%d want %d,%d,%d", name, i, img.pixels[i * 3],
                     img.pixels[i * 3 + 1], img.pixels[i * 3 + 2], want[0], want[1], want[2]);
    }
    graft__image_free(&img);
    free(samples);
}

static void test_png_rgb(void **state)
{
    (void)state;
    png_spec s = {.width = 37, .height = 23, .colour = PNG_COLOR_TYPE_RGB, .depth = 8};
    check_png("rgb.png", &s, NULL, 0);
    s.interlace = 1;
    check_png("rgb_adam7.png", &s, NULL, 0);
    const png_color_16 key = {.red = 10, .green = 20, .blue = 30};
    const uint16_t keyed[] = {10, 20, 30}; /* first pixel transparent via tRNS */
    s.interlace = 0;
    s.trns_colour = &key;
    check_png("rgb_trns.png", &s, keyed, 3);
}

static void test_png_rgba_composites_onto_white(void **state)
{
    (void)state;
    /* Fixed first pixels: transparent, opaque, half, and a mid colour at 1/3. */
    const uint16_t fixed[] = {0, 0, 0, 0, 10, 20, 30, 255, 0, 100, 200, 128, 90, 60, 30, 85};
    png_spec s = {.width = 16, .height = 9, .colour = PNG_COLOR_TYPE_RGB_ALPHA, .depth = 8};
    check_png("rgba.png", &s, fixed, sizeof fixed / sizeof *fixed);
    graft__image img;
    assert_int_equal(graft__image_decode(at("rgba.png"), 0, 0, &img), GRAFT_OK);
    /* By hand: a=0 -> white; a=255 -> colour; a=128: 0 -> 127.0, 100 -> 177.2,
     * 200 -> 227.4; a=85: 90 -> 200, 60 -> 190, 30 -> 180. */
    const unsigned char want[] = {255, 255, 255, 10, 20, 30, 127, 177, 227, 200, 190, 180};
    assert_memory_equal(img.pixels, want, sizeof want);
    graft__image_free(&img);
    s.interlace = 1;
    check_png("rgba_adam7.png", &s, fixed, sizeof fixed / sizeof *fixed);
}

static void test_png_grey(void **state)
{
    (void)state;
    for (int depth = 1; depth <= 8; depth *= 2) {
        png_spec s = {.width = 19, .height = 7, .colour = PNG_COLOR_TYPE_GRAY, .depth = depth};
        check_png("grey.png", &s, NULL, 0);
    }
    const png_color_16 key = {.gray = 3};
    png_spec s = {.width = 19, .height = 7, .colour = PNG_COLOR_TYPE_GRAY, .depth = 4,
                  .trns_colour = &key};
    const uint16_t fixed[] = {3};
    check_png("grey_trns.png", &s, fixed, 1);
}

static void test_png_grey_alpha(void **state)
{
    (void)state;
    const uint16_t fixed[] = {0, 0, 200, 255, 0, 128};
    png_spec s = {.width = 13, .height = 11, .colour = PNG_COLOR_TYPE_GRAY_ALPHA, .depth = 8};
    check_png("grey_alpha.png", &s, fixed, 6);
    s.depth = 16;
    check_png("grey_alpha16.png", &s, NULL, 0);
}

static void test_png_palette(void **state)
{
    (void)state;
    png_color palette[16];
    png_byte alpha[5] = {0, 64, 128, 192, 255};
    for (int i = 0; i < 16; ++i)
        palette[i] = (png_color){(png_byte)(i * 16), (png_byte)(255 - i * 9), (png_byte)(i * 7)};
    png_spec s = {.width = 21, .height = 8, .colour = PNG_COLOR_TYPE_PALETTE, .depth = 8,
                  .palette = palette, .n_palette = 16};
    check_png("palette.png", &s, NULL, 0);
    s.depth = 4;
    check_png("palette4.png", &s, NULL, 0);
    s.trns_alpha = alpha;
    s.n_trns = 5;
    check_png("palette_trns.png", &s, NULL, 0);
}

static void test_png_16_bit(void **state)
{
    (void)state;
    /* v*257 is exactly 8-bit v; the rest are arbitrary 16-bit values. */
    const uint16_t fixed[] = {0, 257 * 128, 65535, 1000, 32767, 32768};
    png_spec s = {.width = 17, .height = 5, .colour = PNG_COLOR_TYPE_RGB, .depth = 16};
    check_png("rgb16.png", &s, fixed, 6);
    graft__image img;
    assert_int_equal(graft__image_decode(at("rgb16.png"), 0, 0, &img), GRAFT_OK);
    const unsigned char want[] = {0, 128, 255, 4, 127, 128};
    assert_memory_equal(img.pixels, want, sizeof want);
    graft__image_free(&img);
    s.colour = PNG_COLOR_TYPE_RGB_ALPHA;
    check_png("rgba16.png", &s, NULL, 0);
    s.colour = PNG_COLOR_TYPE_GRAY;
    s.interlace = 1;
    check_png("grey16_adam7.png", &s, NULL, 0);
}

/* ---- JPEG ------------------------------------------------------------------------- */

static void test_jpeg_close_to_source(void **state)
{
    (void)state;
    const int w = 128, h = 96;
    unsigned char *src = smooth_rgb(w, h);
    for (int progressive = 0; progressive <= 1; ++progressive) {
        jpeg_spec s = {w, h, 3, JCS_UNKNOWN, 95, progressive, NULL, 0};
        write_jpeg(at("smooth.jpg"), &s, src);
        graft__image img;
        assert_int_equal(graft__image_decode(at("smooth.jpg"), 0, 0, &img), GRAFT_OK);
        assert_int_equal(img.width, w);
        assert_int_equal(img.height, h);
        int max;
        double mean = mean_abs_diff(img.pixels, src, (size_t)w * h * 3, &max);
        if (mean > 1.5 || max > 12)
            fail_msg("mean error %.2f, max %d", mean, max);
        graft__image_free(&img);
    }
    free(src);
}

static void expect_size(const char *path, int64_t min_w, int64_t min_h, int64_t w, int64_t h)
{
    graft__image img;
    assert_int_equal(graft__image_decode(path, min_w, min_h, &img), GRAFT_OK);
    if (img.width != w || img.height != h)
        fail_msg("min %lldx%lld: decoded %lldx%lld, want %lldx%lld", (long long)min_w,
                 (long long)min_h, (long long)img.width, (long long)img.height, (long long)w,
                 (long long)h);
    graft__image_free(&img);
}

static void test_jpeg_dct_scaling(void **state)
{
    (void)state;
    unsigned char *src = smooth_rgb(800, 600);
    jpeg_spec s = {800, 600, 3, JCS_UNKNOWN, 90, 0, NULL, 0};
    write_jpeg(at("big.jpg"), &s, src);
    expect_size(at("big.jpg"), 100, 75, 100, 75);   /* 1/8 */
    expect_size(at("big.jpg"), 224, 224, 400, 300); /* 1/2 */
    expect_size(at("big.jpg"), 200, 150, 200, 150); /* 1/4 */
    expect_size(at("big.jpg"), 201, 150, 400, 300);
    expect_size(at("big.jpg"), 0, 0, 800, 600);
    expect_size(at("big.jpg"), 401, 1, 800, 600);
    expect_size(at("big.jpg"), 1000, 1000, 800, 600);

    /* The scaled decode is the picture, not a sample of it: compare with an area
     * average of the full decode. */
    graft__image eighth, full, shrunk;
    assert_int_equal(graft__image_decode(at("big.jpg"), 100, 75, &eighth), GRAFT_OK);
    assert_int_equal(graft__image_decode(at("big.jpg"), 0, 0, &full), GRAFT_OK);
    assert_int_equal(graft__resize_u8(&full, 75, 100, &shrunk), GRAFT_OK);
    int max;
    double mean = mean_abs_diff(eighth.pixels, shrunk.pixels, 100 * 75 * 3, &max);
    if (mean > 1.5 || max > 10)
        fail_msg("1/8 decode vs averaged full decode: mean %.2f, max %d", mean, max);
    graft__image_free(&eighth);
    graft__image_free(&full);
    graft__image_free(&shrunk);
    free(src);
}

static void test_jpeg_grey_to_rgb(void **state)
{
    (void)state;
    const int w = 40, h = 30;
    unsigned char grey[40 * 30];
    for (int i = 0; i < w * h; ++i)
        grey[i] = (unsigned char)(30 + (i % w) * 4 + (i / w) * 2);
    jpeg_spec s = {w, h, 1, JCS_UNKNOWN, 95, 0, NULL, 0};
    write_jpeg(at("grey.jpg"), &s, grey);
    graft__image img;
    assert_int_equal(graft__image_decode(at("grey.jpg"), 0, 0, &img), GRAFT_OK);
    assert_int_equal(img.width, w);
    assert_int_equal(img.height, h);
    for (int i = 0; i < w * h; ++i) {
        const unsigned char *p = img.pixels + i * 3;
        assert_int_equal(p[0], p[1]);
        assert_int_equal(p[1], p[2]);
        assert_in_range(p[0], grey[i] > 4 ? grey[i] - 4 : 0, grey[i] + 4);
    }
    graft__image_free(&img);
}

/* CMYK as Adobe's encoders store it (inverted: 255 = no ink), which libjpeg's
 * compressor marks with an Adobe segment; stored as CMYK and as YCCK (whose
 * chroma is subsampled, hence a smooth picture). With inverted inks c' and k',
 * R = c' k' / 255. */
static void test_jpeg_cmyk(void **state)
{
    (void)state;
    const int w = 48, h = 32;
    unsigned char *inks = smooth_rgb(w, h), *cmyk = malloc((size_t)w * h * 4),
                  *want = malloc((size_t)w * h * 3);
    assert_true(cmyk && want);
    for (int i = 0; i < w * h; ++i) {
        const unsigned k = 155 + 100 * (i % w) / (w - 1);
        for (int c = 0; c < 3; ++c) {
            cmyk[i * 4 + c] = inks[i * 3 + c];
            want[i * 3 + c] = (unsigned char)lround(inks[i * 3 + c] * k / 255.0);
        }
        cmyk[i * 4 + 3] = (unsigned char)k;
    }
    const J_COLOR_SPACE stored[2] = {JCS_CMYK, JCS_YCCK};
    for (int s_i = 0; s_i < 2; ++s_i) {
        jpeg_spec s = {w, h, 4, stored[s_i], 100, 0, NULL, 0};
        write_jpeg(at("cmyk.jpg"), &s, cmyk);
        graft__image img;
        assert_int_equal(graft__image_decode(at("cmyk.jpg"), 0, 0, &img), GRAFT_OK);
        assert_int_equal(img.width, w);
        int max;
        double mean = mean_abs_diff(img.pixels, want, (size_t)w * h * 3, &max);
        if (mean > 1.5 || max > 8)
            fail_msg("CMYK stored as %d: mean error %.2f, max %d", stored[s_i], mean, max);
        graft__image_free(&img);
    }
    free(want);
    free(cmyk);
    free(inks);
}

static void put16(unsigned char *p, unsigned v, int big)
{
    p[big ? 0 : 1] = (unsigned char)(v >> 8);
    p[big ? 1 : 0] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v, int big)
{
    put16(p + (big ? 0 : 2), v >> 16, big);
    put16(p + (big ? 2 : 0), v & 0xFFFF, big);
}

/* An APP1 payload by hand: "Exif\0\0", a TIFF header, and an IFD0 holding one
 * entry, Orientation (0x0112, SHORT, 1 value). */
static size_t exif_blob(unsigned char *b, int orientation, int big)
{
    memcpy(b, "Exif\0\0", 6);
    unsigned char *t = b + 6;
    t[0] = t[1] = big ? 'M' : 'I';
    put16(t + 2, 42, big);
    put32(t + 4, 8, big);     /* IFD0 offset */
    put16(t + 8, 1, big);     /* entries */
    put16(t + 10, 0x0112, big);
    put16(t + 12, 3, big);    /* SHORT */
    put32(t + 14, 1, big);    /* count */
    put16(t + 18, (unsigned)orientation, big);
    put16(t + 20, 0, big);    /* value padding */
    put32(t + 22, 0, big);    /* no next IFD */
    return 6 + 26;
}

/* Where each source quadrant must land, by orientation (worked out by hand from
 * the EXIF definitions: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
 * clockwise, 7 transverse, 8 rotate 90 anticlockwise). Order: TL, TR, BL, BR. */
static const int oriented[9][4] = {
    {0},
    {RED, GREEN, BLUE, WHITE},
    {GREEN, RED, WHITE, BLUE},
    {WHITE, BLUE, GREEN, RED},
    {BLUE, WHITE, RED, GREEN},
    {RED, BLUE, GREEN, WHITE},
    {BLUE, RED, WHITE, GREEN},
    {WHITE, GREEN, BLUE, RED},
    {GREEN, WHITE, RED, BLUE},
};

static void test_jpeg_exif_orientation(void **state)
{
    (void)state;
    const int w = 64, h = 32;
    unsigned char *src = quadrants(w, h), blob[64];
    for (int o = 1; o <= 8; ++o) {
        jpeg_spec s = {w, h, 3, JCS_UNKNOWN, 95, 0, blob, exif_blob(blob, o, o % 2 == 0)};
        write_jpeg(at("oriented.jpg"), &s, src);
        graft__image img;
        assert_int_equal(graft__image_decode(at("oriented.jpg"), 0, 0, &img), GRAFT_OK);
        const int64_t ow = o >= 5 ? h : w, oh = o >= 5 ? w : h;
        assert_int_equal(img.width, ow);
        assert_int_equal(img.height, oh);
        const int got[4] = {colour_at(&img, ow / 4, oh / 4), colour_at(&img, 3 * ow / 4, oh / 4),
                            colour_at(&img, ow / 4, 3 * oh / 4),
                            colour_at(&img, 3 * ow / 4, 3 * oh / 4)};
        if (memcmp(got, oriented[o], sizeof got) != 0)
            fail_msg("orientation %d: quadrants %d %d %d %d, want %d %d %d %d", o, got[0], got[1],
                     got[2], got[3], oriented[o][0], oriented[o][1], oriented[o][2],
                     oriented[o][3]);
        graft__image_free(&img);
    }
    free(src);
}

/* Minimum sizes apply to the upright picture: rotated, 800x600 is 600x800. */
static void test_jpeg_scaling_after_orientation(void **state)
{
    (void)state;
    unsigned char *src = smooth_rgb(800, 600), blob[64];
    jpeg_spec s = {800, 600, 3, JCS_UNKNOWN, 85, 0, blob, exif_blob(blob, 6, 1)};
    write_jpeg(at("rotated.jpg"), &s, src);
    expect_size(at("rotated.jpg"), 75, 100, 75, 100);
    expect_size(at("rotated.jpg"), 100, 100, 150, 200);
    expect_size(at("rotated.jpg"), 0, 0, 600, 800);
    free(src);
}

static void test_jpeg_bad_exif_is_ignored(void **state)
{
    (void)state;
    unsigned char *src = quadrants(16, 8), blob[200];
    memcpy(blob, "Exif\0\0", 6);
    for (size_t i = 6; i < sizeof blob; ++i)
        blob[i] = (unsigned char)rnd(256);
    jpeg_spec s = {16, 8, 3, JCS_UNKNOWN, 90, 0, blob, sizeof blob};
    write_jpeg(at("bad_exif.jpg"), &s, src);
    blob[6] = blob[7] = 'M'; /* valid byte order, nonsense offsets */
    write_jpeg(at("bad_exif2.jpg"), &s, src);
    expect_size(at("bad_exif.jpg"), 0, 0, 16, 8);
    expect_size(at("bad_exif2.jpg"), 0, 0, 16, 8);
    free(src);
}

/* ---- bad input ----------------------------------------------------------------------- */

static void write_valid_jpeg(const char *path)
{
    unsigned char *src = smooth_rgb(64, 48);
    jpeg_spec s = {64, 48, 3, JCS_UNKNOWN, 90, 0, NULL, 0};
    write_jpeg(path, &s, src);
    free(src);
}

static void write_valid_png(const char *path)
{
    uint16_t samples[30 * 20 * 3];
    for (size_t i = 0; i < sizeof samples / sizeof *samples; ++i)
        samples[i] = (uint16_t)rnd(256); /* noise: does not compress, so IDAT is large */
    png_spec s = {.width = 30, .height = 20, .colour = PNG_COLOR_TYPE_RGB, .depth = 8};
    write_png(path, &s, samples);
}

/* Writes the first `keep` bytes of `from` (negative: all but -keep) to `to`. */
static void write_cut(const char *from, const char *to, long keep)
{
    size_t size;
    unsigned char *data = read_bytes(from, &size);
    write_bytes(to, data, keep < 0 ? size - (size_t)-keep : (size_t)keep);
    free(data);
}

static void test_empty_file(void **state)
{
    (void)state;
    write_bytes(at("empty.jpg"), "", 0);
    graft__image img;
    assert_error(graft__image_decode(at("empty.jpg"), 0, 0, &img), GRAFT_E_FORMAT, "empty.jpg",
                 "empty");
    assert_null(img.pixels);
}

static void test_truncated_jpeg(void **state)
{
    (void)state;
    write_valid_jpeg(at("whole.jpg"));
    size_t size;
    free(read_bytes(at("whole.jpg"), &size));
    write_cut(at("whole.jpg"), at("half.jpg"), (long)size / 2);
    write_cut(at("whole.jpg"), at("no_eoi.jpg"), -2);
    write_cut(at("whole.jpg"), at("header_only.jpg"), 20);
    graft__image img;
    assert_error(graft__image_decode(at("half.jpg"), 0, 0, &img), GRAFT_E_FORMAT, "half.jpg",
                 "truncated JPEG");
    assert_null(img.pixels);
    assert_error(graft__image_decode(at("no_eoi.jpg"), 0, 0, &img), GRAFT_E_FORMAT, "no_eoi.jpg",
                 "truncated JPEG");
    assert_error(graft__image_decode(at("header_only.jpg"), 0, 0, &img), GRAFT_E_FORMAT,
                 "header_only.jpg", "truncated JPEG");
    assert_int_equal(graft__image_decode(at("whole.jpg"), 0, 0, &img), GRAFT_OK);
    graft__image_free(&img);
}

static void test_truncated_png(void **state)
{
    (void)state;
    write_valid_png(at("whole.png"));
    size_t size;
    free(read_bytes(at("whole.png"), &size));
    write_cut(at("whole.png"), at("half.png"), (long)size / 2);
    write_cut(at("whole.png"), at("no_iend.png"), -12);
    graft__image img;
    assert_error(graft__image_decode(at("half.png"), 0, 0, &img), GRAFT_E_FORMAT, "half.png",
                 "truncated PNG");
    assert_null(img.pixels);
    assert_error(graft__image_decode(at("no_iend.png"), 0, 0, &img), GRAFT_E_FORMAT,
                 "no_iend.png", "truncated PNG");
}

static void test_corrupt_png_crc(void **state)
{
    (void)state;
    write_valid_png(at("crc.png"));
    size_t size;
    unsigned char *data = read_bytes(at("crc.png"), &size);
    data[16 + 3] ^= 1; /* a bit of IHDR's width, CRC left stale */
    write_bytes(at("crc.png"), data, size);
    free(data);
    graft__image img;
    assert_error(graft__image_decode(at("crc.png"), 0, 0, &img), GRAFT_E_FORMAT, "crc.png",
                 "CRC");
}

static void test_not_an_image(void **state)
{
    (void)state;
    const char text[] = "name,label\ncat.jpg,cat\n";
    write_bytes(at("notes.jpg"), text, sizeof text - 1);
    write_bytes(at("one.png"), "\x89", 1);
    graft__image img;
    assert_error(graft__image_decode(at("notes.jpg"), 0, 0, &img), GRAFT_E_FORMAT, "notes.jpg",
                 "not a JPEG or PNG file");
    assert_error(graft__image_decode(at("one.png"), 0, 0, &img), GRAFT_E_FORMAT, "one.png",
                 "not a JPEG or PNG file");
}

static void test_missing_and_unreadable(void **state)
{
    (void)state;
    graft__image img;
    assert_error(graft__image_decode(at("missing.png"), 0, 0, &img), GRAFT_E_IO, "missing.png",
                 "No such file");
    assert_int_equal(mkdir(at("folder.jpg"), 0700), 0);
    assert_error(graft__image_decode(at("folder.jpg"), 0, 0, &img), GRAFT_E_IO, "folder.jpg",
                 "directory");
    assert_int_equal(graft__image_decode(NULL, 0, 0, &img), GRAFT_E_INVALID_ARG);
}

/* Counts allocations through graft's hooks, records the largest, and can fail
 * the Nth one. */
static size_t largest_alloc;
static long alloc_calls, fail_call = -1;

static int allowed(size_t bytes)
{
    if (alloc_calls++ == fail_call)
        return 0;
    largest_alloc = bytes > largest_alloc ? bytes : largest_alloc;
    return 1;
}
static void *counting_malloc(size_t bytes) { return allowed(bytes) ? malloc(bytes) : NULL; }
static void *counting_realloc(void *p, size_t bytes)
{
    return allowed(bytes) ? realloc(p, bytes) : NULL;
}
static const graft_allocator counting = {counting_malloc, counting_realloc, free};

static void put_chunk(unsigned char **p, const char *type, const unsigned char *data,
                      uint32_t size)
{
    put32(*p, size, 1);
    memcpy(*p + 4, type, 4);
    if (size)
        memcpy(*p + 8, data, size);
    put32(*p + 8 + size, (uint32_t)crc32(crc32(0, *p + 4, 4), data, size), 1);
    *p += 12 + size;
}

/* A PNG by hand whose IHDR claims width x height, with a valid CRC and a token
 * IDAT after it (libpng reads the header up to the first IDAT). */
static size_t craft_png(unsigned char *file, uint32_t width, uint32_t height)
{
    unsigned char ihdr[13] = {0}, *p = file, idat[64];
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    p += 8;
    put32(ihdr, width, 1);
    put32(ihdr + 4, height, 1);
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

/* Offset of the baseline frame header (FF C0: length, precision, height, width). */
static size_t find_sof(const unsigned char *data, size_t size)
{
    size_t sof = 2;
    while (sof + 9 < size && !(data[sof] == 0xFF && data[sof + 1] == 0xC0))
        ++sof;
    assert_true(sof + 9 < size);
    return sof;
}

static void test_absurd_declared_size(void **state)
{
    (void)state;
    unsigned char file[256];
    write_bytes(at("huge.png"), file, craft_png(file, 100000, 100000));
    write_bytes(at("wide.png"), file, craft_png(file, 70000, 1));
    write_bytes(at("many.png"), file, craft_png(file, 20000, 20000));
    graft__image img;
    largest_alloc = 0;
    graft_set_allocator(&counting);
    graft_status rc = graft__image_decode(at("huge.png"), 0, 0, &img);
    graft_set_allocator(NULL);
    assert_error(rc, GRAFT_E_FORMAT, "huge.png", "declared size 100000x100000 is too large");
    assert_true(largest_alloc < (1u << 20)); /* refused before any pixel buffer */
    assert_error(graft__image_decode(at("wide.png"), 0, 0, &img), GRAFT_E_FORMAT, "wide.png",
                 "too large");
    assert_error(graft__image_decode(at("many.png"), 0, 0, &img), GRAFT_E_FORMAT, "many.png",
                 "too large");

    /* A JPEG whose frame header claims 60000x60000. */
    write_valid_jpeg(at("huge.jpg"));
    size_t size;
    unsigned char *data = read_bytes(at("huge.jpg"), &size);
    const size_t sof = find_sof(data, size);
    put16(data + sof + 5, 60000, 1);
    put16(data + sof + 7, 60000, 1);
    write_bytes(at("huge.jpg"), data, size);
    free(data);
    assert_error(graft__image_decode(at("huge.jpg"), 0, 0, &img), GRAFT_E_FORMAT, "huge.jpg",
                 "declared size 60000x60000 is too large");
}

static void test_jpeg_12_bit_unsupported(void **state)
{
    (void)state;
    write_valid_jpeg(at("deep.jpg"));
    size_t size;
    unsigned char *data = read_bytes(at("deep.jpg"), &size);
    data[find_sof(data, size) + 4] = 12; /* sample precision */
    write_bytes(at("deep.jpg"), data, size);
    free(data);
    graft__image img;
    assert_error(graft__image_decode(at("deep.jpg"), 0, 0, &img), GRAFT_E_UNSUPPORTED, "deep.jpg",
                 "precision 12");
}

/* Fails each allocation in turn: every run must end in OK or GRAFT_E_NOMEM with
 * the image left empty (and, under ASan, nothing leaked). Returns how many
 * allocations a successful decode makes. */
static long decode_under_failures(const char *path)
{
    for (fail_call = 0;; ++fail_call) {
        alloc_calls = 0;
        graft__image img;
        graft_set_allocator(&counting);
        graft_status rc = graft__image_decode(path, 0, 0, &img);
        graft_set_allocator(NULL);
        if (alloc_calls <= fail_call) { /* no failure injected: must succeed */
            assert_int_equal(rc, GRAFT_OK);
            graft__image_free(&img);
            break;
        }
        if (rc == GRAFT_OK) {
            graft__image_free(&img);
            continue;
        }
        if (rc != GRAFT_E_NOMEM || img.pixels)
            fail_msg("%s, allocation %ld failed: status %d, \"%s\"", path, fail_call, rc,
                     graft_last_error());
    }
    const long runs = fail_call;
    fail_call = -1;
    return runs;
}

static void test_out_of_memory(void **state)
{
    (void)state;
    png_spec s = {.width = 9, .height = 9, .colour = PNG_COLOR_TYPE_RGB_ALPHA, .depth = 8,
                  .interlace = 1};
    uint16_t samples[9 * 9 * 4] = {0};
    write_png(at("oom.png"), &s, samples);
    /* at least 3 allocations, so failures were really injected */
    assert_true(decode_under_failures(at("oom.png")) >= 3);
    s.interlace = 0;
    s.colour = PNG_COLOR_TYPE_GRAY;
    write_png(at("oom_grey.png"), &s, samples);
    assert_true(decode_under_failures(at("oom_grey.png")) >= 3);
    unsigned char *src = quadrants(16, 8), blob[64];
    jpeg_spec js = {16, 8, 3, JCS_UNKNOWN, 90, 0, blob, exif_blob(blob, 6, 0)};
    write_jpeg(at("oom.jpg"), &js, src);
    assert_true(decode_under_failures(at("oom.jpg")) >= 3);
    free(src);
}

/* ---- graft_image_load ----------------------------------------------------------------- */

static void test_load_png(void **state)
{
    (void)state;
    /* 4x2, left half (10,20,30), right half (250,130,70): stretched to 2x1 the
     * block means are exact, then mobilenet scaling. */
    uint16_t samples[4 * 2 * 3];
    for (int i = 0; i < 8; ++i) {
        const int right = (i % 4) >= 2;
        samples[i * 3] = right ? 250 : 10;
        samples[i * 3 + 1] = right ? 130 : 20;
        samples[i * 3 + 2] = right ? 70 : 30;
    }
    png_spec s = {.width = 4, .height = 2, .colour = PNG_COLOR_TYPE_RGB, .depth = 8};
    write_png(at("halves.png"), &s, samples);
    float out[6];
    assert_int_equal(graft_image_load(at("halves.png"), 1, 2, GRAFT_RESIZE_STRETCH,
                                      GRAFT_PREPROCESS_MOBILENET, out),
                     GRAFT_OK);
    const float want[6] = {10 / 127.5f - 1, 20 / 127.5f - 1, 30 / 127.5f - 1,
                           250 / 127.5f - 1, 130 / 127.5f - 1, 70 / 127.5f - 1};
    for (int i = 0; i < 6; ++i)
        assert_float_equal(out[i], want[i], 1e-5);

    /* PAD to 4x4: the 4x2 picture in rows 1-2, padding black before scaling: -1. */
    float padded[4 * 4 * 3];
    assert_int_equal(graft_image_load(at("halves.png"), 4, 4, GRAFT_RESIZE_PAD,
                                      GRAFT_PREPROCESS_MOBILENET, padded),
                     GRAFT_OK);
    assert_float_equal(padded[0], -1.0f, 1e-6);
    assert_float_equal(padded[4 * 3 * 3 + 11], -1.0f, 1e-6);
    assert_float_equal(padded[4 * 3 + 0], 10 / 127.5f - 1, 1e-5);
}

/* graft_image_load decodes a big JPEG small (1/2 here, as CROP needs 224 both
 * ways): the result must match a full-size decode fitted the same way. */
static void test_load_jpeg_scaled_matches_full(void **state)
{
    (void)state;
    unsigned char *src = smooth_rgb(800, 600);
    jpeg_spec s = {800, 600, 3, JCS_UNKNOWN, 90, 0, NULL, 0};
    write_jpeg(at("photo.jpg"), &s, src);
    free(src);
    const graft_resize_mode modes[3] = {GRAFT_RESIZE_STRETCH, GRAFT_RESIZE_CROP, GRAFT_RESIZE_PAD};
    const size_t bytes = sizeof(float) * 224 * 224 * 3;
    float *fast = malloc(bytes), *slow = malloc(bytes);
    assert_true(fast && slow);
    graft__image full;
    assert_int_equal(graft__image_decode(at("photo.jpg"), 0, 0, &full), GRAFT_OK);
    for (int m = 0; m < 3; ++m) {
        assert_int_equal(graft_image_load(at("photo.jpg"), 224, 224, modes[m],
                                          GRAFT_PREPROCESS_NONE, fast),
                         GRAFT_OK);
        assert_int_equal(graft__image_fit(&full, 224, 224, modes[m], slow), GRAFT_OK);
        double sum = 0;
        for (int i = 0; i < 224 * 224 * 3; ++i)
            sum += fabs(fast[i] - slow[i]);
        if (sum / (224 * 224 * 3) > 0.5)
            fail_msg("mode %d: mean difference %.3f", m, sum / (224 * 224 * 3));
    }
    graft__image_free(&full);
    free(fast);
    free(slow);
}

static void test_load_bad_arguments(void **state)
{
    (void)state;
    float out[12];
    write_valid_png(at("ok.png"));
    assert_int_equal(graft_image_load(NULL, 2, 2, GRAFT_RESIZE_STRETCH, GRAFT_PREPROCESS_NONE, out),
                     GRAFT_E_INVALID_ARG);
    assert_int_equal(graft_image_load(at("ok.png"), 2, 2, GRAFT_RESIZE_STRETCH,
                                      GRAFT_PREPROCESS_NONE, NULL),
                     GRAFT_E_INVALID_ARG);
    assert_error(graft_image_load(at("ok.png"), 0, 2, GRAFT_RESIZE_STRETCH, GRAFT_PREPROCESS_NONE,
                                  out),
                 GRAFT_E_INVALID_ARG, "ok.png", "out of range");
    assert_error(graft_image_load(at("ok.png"), 2, 2, (graft_resize_mode)7, GRAFT_PREPROCESS_NONE,
                                  out),
                 GRAFT_E_INVALID_ARG, "ok.png", "resize mode");
    assert_error(graft_image_load(at("ok.png"), 2, 2, GRAFT_RESIZE_CROP, (graft_preprocess)-1,
                                  out),
                 GRAFT_E_INVALID_ARG, "ok.png", "preprocessing");
    assert_error(graft_image_load(at("gone.jpg"), 2, 2, GRAFT_RESIZE_CROP, GRAFT_PREPROCESS_NONE,
                                  out),
                 GRAFT_E_IO, "gone.jpg", "No such file");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_rgb),
        cmocka_unit_test(test_png_rgba_composites_onto_white),
        cmocka_unit_test(test_png_grey),
        cmocka_unit_test(test_png_grey_alpha),
        cmocka_unit_test(test_png_palette),
        cmocka_unit_test(test_png_16_bit),
        cmocka_unit_test(test_jpeg_close_to_source),
        cmocka_unit_test(test_jpeg_dct_scaling),
        cmocka_unit_test(test_jpeg_grey_to_rgb),
        cmocka_unit_test(test_jpeg_cmyk),
        cmocka_unit_test(test_jpeg_exif_orientation),
        cmocka_unit_test(test_jpeg_scaling_after_orientation),
        cmocka_unit_test(test_jpeg_bad_exif_is_ignored),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_truncated_jpeg),
        cmocka_unit_test(test_truncated_png),
        cmocka_unit_test(test_corrupt_png_crc),
        cmocka_unit_test(test_not_an_image),
        cmocka_unit_test(test_missing_and_unreadable),
        cmocka_unit_test(test_absurd_declared_size),
        cmocka_unit_test(test_jpeg_12_bit_unsupported),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_load_png),
        cmocka_unit_test(test_load_jpeg_scaled_matches_full),
        cmocka_unit_test(test_load_bad_arguments),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
