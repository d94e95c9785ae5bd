/* Window settings shared by the convolution and pooling kinds. */
#ifndef GRAFT_LAYERS_CONV_COMMON_H
#define GRAFT_LAYERS_CONV_COMMON_H

#include "kernels/conv.h"
#include "layers/layer.h"

typedef struct graft__window {
    int64_t kernel[2], strides[2], dilation[2];
    int same;
} graft__window;

/* What every convolution kind reads: its window, use_bias and the activation. */
typedef struct graft__conv_settings {
    graft__window window;
    int use_bias;
    graft__activation act;
} graft__conv_settings;

graft_status graft__conv_settings_parse(graft__conv_settings *s, const json_t *config,
                                        const char *layer);

/* Reads kernel_key (kernel_size or pool_size), strides (default: strides_default,
 * or the kernel when strides_default is 0), dilation_rate and padding. */
graft_status graft__window_parse(graft__window *w, const json_t *config, const char *kernel_key,
                                 int64_t strides_default, const char *layer);

/* Geometry for an (H, W, C) input; out_c is left for the caller. */
/* The geometry g (over a padded input) moved onto the unpadded input: pad
 * top, bottom, left, right become window padding. */
graft_conv_geom graft__geom_unpad(graft_conv_geom g, const int64_t *pad);
graft_status graft__window_geom(const graft__window *w, const graft__shape *in, int64_t batch,
                                graft_conv_geom *g, const char *layer);

#endif
