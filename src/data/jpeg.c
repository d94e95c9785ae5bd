/* JPEG decoding through libjpeg(-turbo), with DCT-domain downscaling.
 *
 * libjpeg reports errors by calling error_exit, whose default prints and exits;
 * ours longjmps back to decode_job(), and its caller, which owns every resource
 * through the jpeg_job it passed down, releases them. */
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h uses FILE and size_t without including them */
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/image.h"

/* Progressive files can hold any number of scans, each a pass over the whole
 * image: a small hostile file can take minutes. Real encoders emit about 10. */
enum { MAX_SCANS = 500 };

typedef struct jpeg_failure {
    struct jpeg_error_mgr pub; /* first: libjpeg hands back a pointer to it */
    jmp_buf jump;
    int truncated, too_many_scans;
    char message[JMSG_LENGTH_MAX];
} jpeg_failure;

typedef struct jpeg_job {
    struct jpeg_decompress_struct cinfo;
    jpeg_failure failure;
    struct jpeg_progress_mgr progress;
    const char *name;
    const graft__decode_want *want;
    int orientation;
    unsigned char *cmyk_row;
    graft__image img;
} jpeg_job;

static void on_error(j_common_ptr cinfo)
{
    jpeg_failure *failure = (jpeg_failure *)cinfo->err;
    failure->pub.format_message(cinfo, failure->message);
    longjmp(failure->jump, 1);
}

/* When the data ends early libjpeg only warns and pads with a fake end marker,
 * which would hand back a half-grey picture: here that is an error. Warnings
 * about corrupt data it recovered from pass, as they do in every viewer. */
static void on_message(j_common_ptr cinfo, int level)
{
    jpeg_failure *failure = (jpeg_failure *)cinfo->err;
    if (level >= 0)
        return;
    if (failure->pub.msg_code == JWRN_JPEG_EOF) {
        failure->truncated = 1;
        longjmp(failure->jump, 1);
    }
    failure->pub.num_warnings++;
}

static void silent(j_common_ptr cinfo) { (void)cinfo; }

static void on_progress(j_common_ptr cinfo)
{
    j_decompress_ptr dinfo = (j_decompress_ptr)cinfo;
    jpeg_failure *failure = (jpeg_failure *)cinfo->err;
    if (dinfo->input_scan_number > MAX_SCANS) {
        failure->too_many_scans = 1;
        longjmp(failure->jump, 1);
    }
}

static graft_status failure_status(const jpeg_job *job)
{
    const jpeg_failure *failure = &job->failure;
    if (failure->truncated)
        return graft__fail(GRAFT_E_FORMAT, "%s: truncated JPEG data", job->name);
    if (failure->too_many_scans)
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: JPEG has more than %d scans", job->name,
                           MAX_SCANS);
    switch (failure->pub.msg_code) {
    case JERR_OUT_OF_MEMORY:
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory decoding JPEG", job->name);
    case JERR_BAD_PRECISION: /* 12-bit JPEGs: valid, but this libjpeg decodes 8-bit only */
    case JERR_NOT_COMPILED:
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: unsupported JPEG (%s)", job->name,
                           failure->message);
    case JERR_IMAGE_TOO_BIG:
        return graft__fail(GRAFT_E_FORMAT, "%s: declared size %ux%u is too large", job->name,
                           job->cinfo.image_width, job->cinfo.image_height);
    default:
        return graft__fail(GRAFT_E_FORMAT, "%s: bad JPEG data (%s)", job->name, failure->message);
    }
}

static int orientation_of(j_decompress_ptr cinfo)
{
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
            memcmp(m->data, "Exif\0\0", 6) == 0)
            return graft__exif_orientation(m->data, m->data_length);
    return 1;
}

static graft_status set_colour(jpeg_job *job)
{
    j_decompress_ptr cinfo = &job->cinfo;
    switch (cinfo->jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
    case JCS_RGB:
        cinfo->out_color_space = JCS_RGB;
        return GRAFT_OK;
    case JCS_CMYK:
    case JCS_YCCK: /* libjpeg goes no further than CMYK; cmyk_to_rgb() does the rest */
        cinfo->out_color_space = JCS_CMYK;
        return GRAFT_OK;
    default:
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: unsupported JPEG colour space (%d components)",
                           job->name, cinfo->num_components);
    }
}

/* The smallest of 1/8, 1/4, 1/2 that still meets the want, compared in the
 * upright frame (orientations 5-8 swap the axes); full size otherwise. */
static void choose_scale(jpeg_job *job)
{
    j_decompress_ptr cinfo = &job->cinfo;
    const int swap = job->orientation >= 5;
    for (unsigned denom = 8; denom >= 2; denom /= 2) {
        cinfo->scale_num = 1;
        cinfo->scale_denom = denom;
        jpeg_calc_output_dimensions(cinfo);
        int64_t w = swap ? cinfo->output_height : cinfo->output_width;
        int64_t h = swap ? cinfo->output_width : cinfo->output_height;
        if (graft__want_met(job->want, w, h))
            return;
    }
    cinfo->scale_num = 1;
    cinfo->scale_denom = 1;
}

/* Adobe's encoders (nearly all CMYK JPEGs) store the inks inverted, 255 = none. */
static void cmyk_to_rgb(const unsigned char *cmyk, unsigned char *rgb, int64_t width,
                        int inverted)
{
    for (int64_t x = 0; x < width; ++x, cmyk += 4, rgb += 3) {
        unsigned k = inverted ? cmyk[3] : 255u - cmyk[3];
        for (int c = 0; c < 3; ++c) {
            unsigned ink = inverted ? cmyk[c] : 255u - cmyk[c];
            rgb[c] = (unsigned char)((ink * k + 127) / 255);
        }
    }
}

static graft_status read_pixels(jpeg_job *job)
{
    j_decompress_ptr cinfo = &job->cinfo;
    const int64_t w = cinfo->output_width, h = cinfo->output_height;
    graft_status rc = graft__image_alloc(&job->img, w, h, job->name);
    if (rc != GRAFT_OK)
        return rc;
    const int cmyk = cinfo->out_color_space == JCS_CMYK;
    if (cmyk && !(job->cmyk_row = graft__malloc((size_t)w * 4)))
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory decoding JPEG", job->name);
    while (cinfo->output_scanline < cinfo->output_height) {
        unsigned char *row = job->img.pixels + (size_t)cinfo->output_scanline * (size_t)w * 3;
        JSAMPROW into = cmyk ? job->cmyk_row : row;
        if (jpeg_read_scanlines(cinfo, &into, 1) != 1)
            return graft__fail(GRAFT_E_FORMAT, "%s: truncated JPEG data", job->name);
        if (cmyk)
            cmyk_to_rgb(job->cmyk_row, row, w, cinfo->saw_Adobe_marker);
    }
    return GRAFT_OK;
}

/* Everything up to the first pixel: reads the header, checks the declared size
 * before libjpeg allocates for it, picks colour conversion and scale. */
static graft_status prepare(jpeg_job *job)
{
    j_decompress_ptr cinfo = &job->cinfo;
    jpeg_read_header(cinfo, TRUE);
    graft_status rc = graft__image_check_size(job->name, cinfo->image_width, cinfo->image_height);
    if (rc == GRAFT_OK)
        rc = set_colour(job);
    if (rc != GRAFT_OK)
        return rc;
    job->orientation = orientation_of(cinfo);
    choose_scale(job);
    return GRAFT_OK;
}

static graft_status decode_steps(jpeg_job *job, const unsigned char *data, size_t size)
{
    jpeg_create_decompress(&job->cinfo);
    job->cinfo.progress = &job->progress; /* after create, which zeroes cinfo */
    jpeg_mem_src(&job->cinfo, data, (unsigned long)size);
    jpeg_save_markers(&job->cinfo, JPEG_APP0 + 1, 0xFFFF);
    graft_status rc = prepare(job);
    if (rc != GRAFT_OK)
        return rc;
    jpeg_start_decompress(&job->cinfo);
    rc = read_pixels(job);
    if (rc != GRAFT_OK)
        return rc;
    /* Reads on to the end marker, so a file cut after the last scan is caught. */
    jpeg_finish_decompress(&job->cinfo);
    return GRAFT_OK;
}

/* Kept apart from decode_steps() so no local of this frame changes between
 * setjmp and longjmp. */
static graft_status decode_job(jpeg_job *job, const unsigned char *data, size_t size)
{
    if (setjmp(job->failure.jump))
        return failure_status(job);
    return decode_steps(job, data, size);
}

graft_status graft__jpeg_decode(const unsigned char *data, size_t size, const char *name,
                                const graft__decode_want *want, graft__image *out)
{
    jpeg_job job;
    memset(&job, 0, sizeof job); /* a zeroed cinfo is safe to destroy if create never ran */
    job.name = name;
    job.want = want;
    job.cinfo.err = jpeg_std_error(&job.failure.pub);
    job.failure.pub.error_exit = on_error;
    job.failure.pub.emit_message = on_message;
    job.failure.pub.output_message = silent;
    job.progress.progress_monitor = on_progress;
    graft_status rc = decode_job(&job, data, size);
    jpeg_destroy_decompress(&job.cinfo);
    graft__free(job.cmyk_row);
    if (rc == GRAFT_OK)
        rc = graft__image_orient(&job.img, job.orientation, name);
    if (rc != GRAFT_OK)
        graft__image_free(&job.img);
    *out = job.img;
    return rc;
}
