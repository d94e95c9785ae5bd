/* Random augmentation of one image (graft_augment's per-image fields), and
 * batch-level mixup and cutmix. Internal.
 *
 * Every random value comes from core/random.h's counter-based generator, each
 * operation from its own stream derived from the image's seed: an image's draw
 * depends only on (seed, the graft_augment fields), never on threads or order,
 * and turning one operation on does not change what another one draws.
 *
 * One image goes through, in this order:
 *   1. random-resized-crop (torchvision), the crop scaled back to (h, w);
 *   2. horizontal flip, vertical flip (Keras RandomFlip, each with p = 1/2);
 *   3. rotation about the centre, positive counter-clockwise (RandomRotation);
 *   4. zoom about the centre, one factor for both axes (RandomZoom with
 *      width_factor None), factor > 1 zooms out;
 *   5. translation, positive right / down (RandomTranslation);
 * all composed into ONE inverse affine map, so the image is resampled once,
 * bilinearly, with Keras's 'reflect' fill: d c b a | a b c d | d c b a, i.e.
 * reflection about the outer edge of the last pixel, which repeats that pixel.
 * (The crop never exceeds the image, so bilinear needs no antialiasing there;
 * a zoom out by up to 2 is sampled as Keras does, without it either.)
 *   6. brightness (add), contrast (about each channel's mean over the image),
 *      saturation (mix with the pixel's 0.299/0.587/0.114 grey), hue (rotated in
 *      HSV, as torchvision's adjust_hue and tf.image.adjust_hue: value and HSV
 *      saturation kept, so red turned half a turn is cyan), each followed by a
 *      clamp to [0, 255]; without colour operations nothing is clamped;
 *   7. random erasing (Zhong et al. 2017, as torchvision's RandomErasing) with
 *      per-pixel noise uniform in [0, 255].
 *
 * Coordinates: pixel (x, y) covers [x, x+1) x [y, y+1) and has its centre at
 * (x + 0.5, y + 0.5); the image centre is (w/2, h/2). */
#ifndef GRAFT_DATA_AUGMENT_H
#define GRAFT_DATA_AUGMENT_H

#include <stdint.h>

#include "graft.h"

/* GRAFT_E_INVALID_ARG naming the first field out of range (or NaN); NULL is valid.
 * Ranges: rotation, zoom, translate, crop_scale, brightness, contrast, saturation,
 * erasing in [0, 1]; hue in [0, 0.5]; mixup, cutmix >= 0 and finite. */
graft_status graft__augment_check(const graft_augment *aug);

/* Whether graft__augment_image leaves every image untouched: aug is NULL or all
 * of its per-image fields are 0. mixup and cutmix are batch-level and do not
 * count here (see graft__mixup_batch). */
int graft__augment_is_identity(const graft_augment *aug);

/* Augments img, (h, w, 3) RGB in 0..255, in place; seed fully determines the draw.
 * A NULL or identity aug returns GRAFT_OK without touching img. Fails with
 * GRAFT_E_INVALID_ARG for out-of-range fields or sizes, GRAFT_E_NOMEM when the
 * resampling buffer cannot be allocated (img is then unchanged). */
graft_status graft__augment_image(const graft_augment *aug, uint64_t seed,
                                  float *img /* (h, w, 3) RGB in 0..255 */, int64_t h, int64_t w);

/* ---- the two halves of graft__augment_image, exposed for tests ------------- */

/* One image's drawn parameters; the defaults (graft__augment_params_identity)
 * change nothing. */
typedef struct graft__augment_params {
    int crop;                     /* take the crop below and scale it to (h, w) */
    int64_t crop_x, crop_y;       /* top-left pixel of the crop */
    int64_t crop_w, crop_h;
    int flip_horizontal, flip_vertical;
    double angle;                 /* radians, positive = counter-clockwise */
    double zoom;                  /* 1 = none; the sampled area per axis, so > 1 zooms out */
    double shift_x, shift_y;      /* pixels; positive moves the content right / down */
    double brightness;            /* added, in 0..255 units */
    double contrast;              /* factor about the per-channel mean, 1 = none */
    double saturation;            /* chroma factor, 1 = none, 0 = grey */
    double hue;                   /* turns (1 = 360 degrees) */
    int erase;                    /* overwrite the box below with noise */
    int64_t erase_x, erase_y, erase_w, erase_h;
    uint64_t erase_seed;          /* the noise's stream */
} graft__augment_params;

void graft__augment_params_identity(graft__augment_params *p);

/* Validates aug (graft__augment_check) and h, w, then draws p for an (h, w) image.
 * A NULL aug draws the identity. */
graft_status graft__augment_draw(const graft_augment *aug, uint64_t seed, int64_t h, int64_t w,
                                 graft__augment_params *p);

/* The inverse map of p's geometric part, from output to source coordinates:
 *   src_x = m[0] X + m[1] Y + m[2],  src_y = m[3] X + m[4] Y + m[5],
 * (X, Y) a point of the output, both in the continuous coordinates above. The
 * exact identity {1, 0, 0, 0, 1, 0} when p changes no geometry. */
void graft__augment_matrix(const graft__augment_params *p, int64_t h, int64_t w, double m[6]);

/* out (h, w, 3) = src sampled through m: output pixel (x, y) reads src bilinearly
 * at m(x + 0.5, y + 0.5) - 0.5 in pixel indices, taps outside the image reflected
 * as Keras's 'reflect'. A coordinate within 1e-9 of a pixel centre reads that
 * pixel alone, so exact quarter turns and integer shifts copy pixels bit-exact
 * although cos(pi/2) != 0. h, w > 0; out must not overlap src. */
void graft__augment_apply_affine(const float *src, int64_t h, int64_t w, const double m[6],
                                 float *out);

/* Applies a drawn p to img (h, w, 3) in place: the geometric part (skipped when
 * its matrix is the identity), then colour, then erasing. GRAFT_E_NOMEM leaves
 * img unchanged. */
graft_status graft__augment_apply(const graft__augment_params *p, float *img, int64_t h,
                                  int64_t w);

/* ---- batch level: mixup and cutmix ------------------------------------------ */

/* Over a batch x (n, h, w, 3) of images already preprocessed, with integer labels
 * (n) in [0, classes): one lambda ~ Beta(alpha, alpha) for the batch and a seeded
 * permutation pairing sample i with partner[i] (as the papers' reference code).
 * soft_targets (n, classes) receives lambda * onehot(labels[i]) + (1 - lambda) *
 * onehot(labels[partner[i]]). alpha = 0 is off: x unchanged, one-hot targets.
 * Mixing is in place: besides n indices only one image (cutmix: one box) of
 * scratch is allocated, as the permutation's cycles are followed. Which of the
 * two a batch gets when both are on is the caller's choice.
 *
 * mixup (Zhang et al. 2018): x[i] = lambda x[i] + (1 - lambda) x[partner[i]].
 * cutmix (Yun et al. 2019): a box of area fraction about 1 - lambda, centred
 * uniformly and clipped to the image, is pasted from x[partner[i]] (the same box
 * for the whole batch); lambda then becomes the exact fraction of pixels kept. */
graft_status graft__mixup_batch(float *x /* (n, h, w, 3) */, const int32_t *labels /* (n) */,
                                int64_t n, int64_t h, int64_t w, int64_t classes, double alpha,
                                uint64_t seed, float *soft_targets /* (n, classes) */);
graft_status graft__cutmix_batch(float *x /* (n, h, w, 3) */, const int32_t *labels /* (n) */,
                                 int64_t n, int64_t h, int64_t w, int64_t classes, double alpha,
                                 uint64_t seed, float *soft_targets /* (n, classes) */);

/* The same mixing for training, on any tensor with c channels per pixel (images,
 * or feature maps at a cut; a feature vector is h = w = 1, c = its length), with
 * the pairing reported as labels instead of dense targets: partner_labels[i] =
 * labels[partner[i]] and *lambda is the weight each sample keeps of its own label
 * (mixup: the Beta draw; cutmix: the exact fraction of pixels kept). Labels are
 * not range-checked (the loss does that). Same draw as the functions above for
 * the same seed. */
typedef enum graft__mix_kind { GRAFT__MIX_MIXUP = 0, GRAFT__MIX_CUTMIX } graft__mix_kind;

graft_status graft__mix_batch(graft__mix_kind kind, float *x /* (n, h, w, c) */,
                              const int32_t *labels /* (n) */, int64_t n, int64_t h, int64_t w,
                              int64_t c, double alpha, uint64_t seed,
                              int32_t *partner_labels /* (n) */, double *lambda);

/* What the mixing functions above draw for a seed, exposed for tests. partner has n
 * entries. The cutmix box is [x0, x1) x [y0, y1), possibly empty. */
typedef struct graft__cutmix_box {
    int64_t x0, y0, x1, y1;
    double lambda; /* the fraction of each image kept */
} graft__cutmix_box;

graft_status graft__mixup_draw(int64_t n, double alpha, uint64_t seed, int64_t *partner,
                               double *lambda);
graft_status graft__cutmix_draw(int64_t n, int64_t h, int64_t w, double alpha, uint64_t seed,
                                int64_t *partner, graft__cutmix_box *box);

/* Gamma(shape, 1), shape > 0, by Marsaglia and Tsang (2000), shapes below 1
 * boosted as Gamma(shape + 1) U^(1/shape); normals by Box-Muller. Beta(a, b) as
 * X / (X + Y) from two independent Gamma draws, computed from their logarithms
 * so tiny shapes cannot give 0/0. Deterministic in seed. */
double graft__gamma_sample(double shape, uint64_t seed);
double graft__beta_sample(double a, double b, uint64_t seed);

#endif
