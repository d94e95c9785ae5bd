/* PNG decoding through libpng, to 8-bit RGB with alpha composited onto white.
 *
 * libpng's default error handler prints before it longjmps, so ours records the
 * message and longjmps itself, back into decode_job(); every resource lives in
 * the png_job its caller owns and frees. libpng's own allocations go through
 * graft's allocator hooks, so a failing allocator exercises those paths too. */
#include <png.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/image.h"

typedef struct png_job {
    const unsigned char *data;
    size_t size, pos;
    const char *name;
    int truncated, out_of_memory;
    char message[200];
    png_structp png;
    png_infop info;
    unsigned char *buffer;  /* one row, or the whole image when interlaced */
    png_bytep *rows;        /* interlaced only */
    graft__image img;
} png_job;

static void on_error(png_structp png, png_const_charp message)
{
    png_job *job = png_get_error_ptr(png);
    snprintf(job->message, sizeof job->message, "%s", message);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp message)
{
    (void)png;
    (void)message;
}

static png_voidp on_malloc(png_structp png, png_alloc_size_t bytes)
{
    void *p = graft__malloc(bytes);
    if (!p)
        ((png_job *)png_get_mem_ptr(png))->out_of_memory = 1;
    return p;
}

static void on_free(png_structp png, png_voidp p)
{
    (void)png;
    graft__free(p);
}

static void on_read(png_structp png, png_bytep into, size_t bytes)
{
    png_job *job = png_get_io_ptr(png);
    if (bytes > job->size - job->pos) {
        job->truncated = 1;
        png_error(png, "unexpected end of data");
    }
    memcpy(into, job->data + job->pos, bytes);
    job->pos += bytes;
}

static graft_status failure_status(const png_job *job)
{
    if (job->truncated)
        return graft__fail(GRAFT_E_FORMAT, "%s: truncated PNG data", job->name);
    if (job->out_of_memory)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory decoding PNG", job->name);
    return graft__fail(GRAFT_E_FORMAT, "%s: bad PNG data (%s)", job->name, job->message);
}

/* Asks libpng for RGB or RGBA at 8 or 16 bits; returns the number of passes.
 * 16-bit samples are kept so compositing rounds once, in convert_row(). */
static int set_transforms(png_job *job, int colour, int depth)
{
    png_structp png = job->png;
    if (colour == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (colour == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, job->info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    if (colour == PNG_COLOR_TYPE_GRAY || colour == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    return png_set_interlace_handling(png);
}

/* RGB(A) samples with maximum m (255 or 65535, big-endian) to 8-bit RGB:
 * out = 255 * (a*c + (m-a)*m) / m^2, rounded to nearest, which for opaque or
 * alpha-less pixels is 255*c/m. */
static void convert_row(const unsigned char *in, unsigned char *out, int64_t width,
                        int channels, int depth)
{
    const uint64_t m = depth == 16 ? 65535 : 255;
    const int step = depth == 16 ? 2 : 1;
    for (int64_t x = 0; x < width; ++x, out += 3) {
        uint64_t s[4];
        for (int c = 0; c < channels; ++c, in += step)
            s[c] = step == 2 ? (uint64_t)in[0] << 8 | in[1] : in[0];
        const uint64_t a = channels == 4 ? s[3] : m;
        for (int c = 0; c < 3; ++c) {
            const uint64_t num = 255 * (a * s[c] + (m - a) * m), den = m * m;
            out[c] = (unsigned char)((2 * num + den) / (2 * den));
        }
    }
}

static graft_status out_of_memory(const png_job *job)
{
    return graft__fail(GRAFT_E_NOMEM, "%s: out of memory decoding PNG", job->name);
}

/* Non-interlaced rows are converted as they arrive, so only one raw row is held;
 * Adam7 refines rows over 7 passes and needs the whole raw image. */
static graft_status read_rows(png_job *job, int passes, int channels, int depth)
{
    const size_t row_bytes = png_get_rowbytes(job->png, job->info);
    const int64_t w = job->img.width, h = job->img.height;
    const int direct = channels == 3 && depth == 8 && passes == 1;
    size_t bytes = row_bytes;
    if (passes > 1 && !graft__mul_size(row_bytes, (size_t)h, &bytes))
        return out_of_memory(job);
    if (!direct && !(job->buffer = graft__malloc(bytes)))
        return out_of_memory(job);
    if (passes > 1 && !(job->rows = graft__calloc((size_t)h, sizeof *job->rows)))
        return out_of_memory(job);
    for (int64_t y = 0; passes > 1 && y < h; ++y)
        job->rows[y] = job->buffer + (size_t)y * row_bytes;
    if (passes > 1)
        png_read_image(job->png, job->rows);
    for (int64_t y = 0; y < h; ++y) {
        unsigned char *out = job->img.pixels + (size_t)(y * w * 3);
        if (direct)
            png_read_row(job->png, out, NULL);
        else if (passes == 1)
            png_read_row(job->png, job->buffer, NULL);
        if (!direct)
            convert_row(passes > 1 ? job->rows[y] : job->buffer, out, w, channels, depth);
    }
    return GRAFT_OK;
}

static graft_status decode_steps(png_job *job)
{
    png_set_read_fn(job->png, job, on_read);
    /* Lift libpng's 1M-pixel side limit so graft's own check (and message) applies. */
    png_set_user_limits(job->png, 0x7fffffff, 0x7fffffff);
    png_read_info(job->png, job->info);
    png_uint_32 w, h;
    int depth, colour;
    png_get_IHDR(job->png, job->info, &w, &h, &depth, &colour, NULL, NULL, NULL);
    graft_status rc = graft__image_check_size(job->name, w, h);
    if (rc != GRAFT_OK)
        return rc;
    const int passes = set_transforms(job, colour, depth);
    png_read_update_info(job->png, job->info);
    rc = graft__image_alloc(&job->img, w, h, job->name);
    if (rc == GRAFT_OK)
        rc = read_rows(job, passes, png_get_channels(job->png, job->info),
                       png_get_bit_depth(job->png, job->info));
    if (rc != GRAFT_OK)
        return rc;
    /* Reads on to IEND, so a file cut after the image data is caught. */
    png_read_end(job->png, NULL);
    return GRAFT_OK;
}

/* Kept apart from decode_steps() so no local of this frame changes between
 * setjmp and longjmp. */
static graft_status decode_job(png_job *job)
{
    if (setjmp(png_jmpbuf(job->png)))
        return failure_status(job);
    return decode_steps(job);
}

graft_status graft__png_decode(const unsigned char *data, size_t size, const char *name,
                               graft__image *out)
{
    png_job job;
    memset(&job, 0, sizeof job);
    job.data = data;
    job.size = size;
    job.name = name;
    job.png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, &job, on_error, on_warning, &job,
                                       on_malloc, on_free);
    if (job.png)
        job.info = png_create_info_struct(job.png);
    graft_status rc = job.info ? decode_job(&job) : out_of_memory(&job);
    png_destroy_read_struct(job.png ? &job.png : NULL, job.info ? &job.info : NULL, NULL);
    graft__free(job.buffer);
    graft__free(job.rows);
    if (rc != GRAFT_OK)
        graft__image_free(&job.img);
    *out = job.img;
    return rc;
}
