/* Image decoding, resizing and preprocessing behind graft_image_load(). Internal.
 *
 * Decoders take the whole file in memory: the magic bytes pick the decoder, and a
 * short read can then only mean truncated data, never a slow device. Every error
 * message starts with the file name the caller gave. */
#ifndef GRAFT_DATA_IMAGE_H
#define GRAFT_DATA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "graft.h"

typedef struct graft__image {
    int64_t width, height;
    int64_t channels;      /* 3 */
    unsigned char *pixels; /* (H,W,3) RGB */
} graft__image;

/* Declared sizes beyond these are refused before any pixel buffer exists: a
 * 100-byte file can claim 4 billion pixels. 2^28 RGB pixels is 768 MiB. */
#define GRAFT__IMAGE_MAX_SIDE 65535
#define GRAFT__IMAGE_MAX_PIXELS ((int64_t)1 << 28)
/* Files are read whole; this bounds what a stray path (/dev/zero) can cost. */
#define GRAFT__IMAGE_MAX_FILE ((size_t)1 << 30)

/* How small a JPEG may be decoded (DCT scaling), in the EXIF-oriented frame.
 * Both minima <= 0 means full size. With `either`, one side reaching its minimum
 * is enough: a PAD fit is scaled by one side only. */
typedef struct graft__decode_want {
    int64_t min_width, min_height;
    int either;
} graft__decode_want;

/* Decodes a JPEG or PNG (chosen by magic bytes) to RGB; JPEGs get their EXIF
 * orientation applied and are decoded at the smallest of 1/8, 1/4, 1/2 whose
 * output is still >= min_width x min_height (0,0 = full size). On failure *out
 * is zeroed. */
graft_status graft__image_decode(const char *path, int64_t min_width, int64_t min_height,
                                 graft__image *out);
graft_status graft__image_decode_want(const char *path, const graft__decode_want *want,
                                      graft__image *out);
/* As above, from bytes already in memory; `name` only labels error messages. */
graft_status graft__image_decode_memory(const unsigned char *data, size_t size, const char *name,
                                        const graft__decode_want *want, graft__image *out);
void graft__image_free(graft__image *img);

/* ---- shared by the decoders ---------------------------------------------- */

/* GRAFT_E_FORMAT "name: declared size WxH is too large" (or empty). */
graft_status graft__image_check_size(const char *name, int64_t width, int64_t height);
/* Allocates img->pixels for a checked size; on failure img stays zeroed. */
graft_status graft__image_alloc(graft__image *img, int64_t width, int64_t height,
                                const char *name);
/* Whether a decode of width x height satisfies `want` (never for full-size wants). */
int graft__want_met(const graft__decode_want *want, int64_t width, int64_t height);

graft_status graft__jpeg_decode(const unsigned char *data, size_t size, const char *name,
                                const graft__decode_want *want, graft__image *out);
graft_status graft__png_decode(const unsigned char *data, size_t size, const char *name,
                               graft__image *out);

/* EXIF orientation (1..8) of an APP1 payload starting "Exif\0\0"; 1 when absent
 * or unreadable. */
int graft__exif_orientation(const unsigned char *data, size_t size);
/* Rewrites img so it displays upright for an EXIF orientation 1..8. */
graft_status graft__image_orient(graft__image *img, int orientation, const char *name);

/* ---- resize.c ------------------------------------------------------------- */

/* Resizes each axis independently: area averaging (exact box filter) where it
 * shrinks, bilinear with half-pixel centres and clamped edges where it grows. */
graft_status graft__resize_f32(const graft__image *src, int64_t out_h, int64_t out_w, float *out);
graft_status graft__resize_u8(const graft__image *src, int64_t out_h, int64_t out_w,
                              graft__image *out);
/* Resizes into out, (out_h, out_w, 3) floats in 0..255, by a graft_resize_mode:
 * CROP covers the target and centre-crops, PAD fits inside it and leaves 0 around. */
graft_status graft__image_fit(const graft__image *src, int64_t out_h, int64_t out_w,
                              graft_resize_mode mode, float *out);
/* The smallest decode a fit to out_h x out_w can use without enlarging. */
void graft__fit_want(graft_resize_mode mode, int64_t out_h, int64_t out_w,
                     graft__decode_want *want);

/* ---- preprocess.c --------------------------------------------------------- */

/* Maps n_pixels RGB pixels in 0..255, in place, to what `mode`'s networks expect. */
void graft__preprocess(float *pixels, int64_t n_pixels, graft_preprocess mode);

#endif
