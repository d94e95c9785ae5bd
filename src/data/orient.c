/* EXIF orientation: phones store the sensor's pixels as shot and record in EXIF
 * how to turn them upright; models were trained on upright pictures. */
#include <libexif/exif-data.h>
#include <limits.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/image.h"

/* libexif allocates through its own malloc: its allocator callbacks carry no
 * context, so an allocation failure could not be told apart from a missing tag.
 * An unreadable or missing orientation means "as stored", as in every viewer. */
int graft__exif_orientation(const unsigned char *data, size_t size)
{
    if (size > UINT_MAX)
        return 1;
    ExifData *exif = exif_data_new();
    if (!exif)
        return 1;
    /* Reading only: keep libexif from "fixing" (adding default tags to) the data. */
    exif_data_unset_option(exif, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION);
    exif_data_load_data(exif, data, (unsigned int)size);
    int orientation = 1;
    ExifEntry *entry = exif_content_get_entry(exif->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
    if (entry && entry->format == EXIF_FORMAT_SHORT && entry->components >= 1 && entry->data &&
        entry->size >= 2) {
        int value = exif_get_short(entry->data, exif_data_get_byte_order(exif));
        if (value >= 1 && value <= 8)
            orientation = value;
    }
    exif_data_unref(exif);
    return orientation;
}

/* Every orientation is an optional transpose followed by optional flips of the
 * source axes: output (x, y) reads source (u, v) = swap ? (y, x) : (x, y), with
 * u mirrored when flip_x and v mirrored when flip_y. Indexed by orientation. */
static const struct {
    unsigned char swap, flip_x, flip_y;
} transforms[9] = {
    {0, 0, 0}, {0, 0, 0}, {0, 1, 0}, {0, 1, 1}, {0, 0, 1},
    {1, 0, 0}, {1, 0, 1}, {1, 1, 1}, {1, 1, 0},
};

static void remap(const graft__image *src, graft__image *dst, int orientation)
{
    const int64_t w = src->width, h = src->height;
    const int swap = transforms[orientation].swap;
    const int flip_x = transforms[orientation].flip_x, flip_y = transforms[orientation].flip_y;
    for (int64_t y = 0; y < dst->height; ++y) {
        unsigned char *out = dst->pixels + y * dst->width * 3;
        for (int64_t x = 0; x < dst->width; ++x, out += 3) {
            int64_t u = swap ? y : x, v = swap ? x : y;
            if (flip_x)
                u = w - 1 - u;
            if (flip_y)
                v = h - 1 - v;
            const unsigned char *in = src->pixels + (v * w + u) * 3;
            out[0] = in[0];
            out[1] = in[1];
            out[2] = in[2];
        }
    }
}

graft_status graft__image_orient(graft__image *img, int orientation, const char *name)
{
    if (orientation <= 1 || orientation > 8)
        return GRAFT_OK;
    const int swap = transforms[orientation].swap;
    graft__image turned;
    graft_status rc = graft__image_alloc(&turned, swap ? img->height : img->width,
                                         swap ? img->width : img->height, name);
    if (rc != GRAFT_OK)
        return rc;
    remap(img, &turned, orientation);
    graft__image_free(img);
    *img = turned;
    return GRAFT_OK;
}
