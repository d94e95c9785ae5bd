/* Per-image augmentation (graft_augment). Internal. */
#ifndef GRAFT_DATA_AUGMENT_H
#define GRAFT_DATA_AUGMENT_H

#include <stdint.h>

#include "graft.h"

/* Augments one (h, w, 3) image of 0..255 floats in place; the draw depends only on seed. */
graft_status graft__augment_image(const graft_augment *aug, uint64_t seed, float *img /* (h,w,3) in 0..255 */, int64_t h, int64_t w);

#endif
