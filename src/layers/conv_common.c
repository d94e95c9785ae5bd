#include "layers/conv_common.h"

#include "core/error.h"

graft_status graft__window_parse(graft__window *w, const json_t *config, const char *kernel_key,
                                 int64_t strides_default, const char *layer)
{
    graft_status rc;
    if ((rc = graft__config_channels_last(config, layer)) ||
        (rc = graft__config_pair(config, kernel_key, w->kernel, 0, layer)) ||
        (rc = graft__config_pair(config, "strides", w->strides, strides_default, layer)) ||
        (rc = graft__config_pair(config, "dilation_rate", w->dilation, 1, layer)) ||
        (rc = graft__config_padding(config, &w->same, layer)))
        return rc;
    if (strides_default == 0 && !json_is_array(json_object_get(config, "strides")) &&
        !json_is_integer(json_object_get(config, "strides"))) {
        w->strides[0] = w->kernel[0];
        w->strides[1] = w->kernel[1];
    }
    for (int i = 0; i < 2; i++)
        if (w->kernel[i] < 1 || w->kernel[i] > 4096 || w->strides[i] < 1 ||
            w->strides[i] > 4096 || w->dilation[i] < 1 || w->dilation[i] > 4096)
            return graft__fail(GRAFT_E_FORMAT, "layer '%s': %s, strides and dilation_rate must "
                               "be between 1 and 4096", layer, kernel_key);
    return GRAFT_OK;
}

graft_status graft__conv_settings_parse(graft__conv_settings *s, const json_t *config,
                                        const char *layer)
{
    graft_status rc;
    if ((rc = graft__window_parse(&s->window, config, "kernel_size", 1, layer)) ||
        (rc = graft__config_bool(config, "use_bias", &s->use_bias, 1, layer)))
        return rc;
    return graft__config_activation(config, &s->act, layer);
}

graft_status graft__window_geom(const graft__window *w, const graft__shape *in, int64_t batch,
                                graft_conv_geom *g, const char *layer)
{
    if (in->rank != 3)
        return graft__fail(GRAFT_E_SHAPE, "layer '%s': expects (H, W, C) input", layer);
    *g = (graft_conv_geom){
        .batch = batch,
        .in_h = in->dim[0],
        .in_w = in->dim[1],
        .in_c = in->dim[2],
        .out_c = in->dim[2],
        .kernel_h = w->kernel[0],
        .kernel_w = w->kernel[1],
        .stride_h = w->strides[0],
        .stride_w = w->strides[1],
        .dilation_h = w->dilation[0],
        .dilation_w = w->dilation[1],
    };
    if (!graft_conv_geom_init(g, w->same))
        return graft__fail(GRAFT_E_SHAPE, "layer '%s': a %lldx%lld window leaves no output on a "
                           "%lldx%lld input", layer, (long long)w->kernel[0],
                           (long long)w->kernel[1], (long long)in->dim[0], (long long)in->dim[1]);
    return GRAFT_OK;
}

graft_conv_geom graft__geom_unpad(graft_conv_geom g, const int64_t *pad)
{
    if (pad) {
        g.in_h -= pad[0] + pad[1];
        g.in_w -= pad[2] + pad[3];
        g.pad_top += pad[0];
        g.pad_left += pad[2];
    }
    return g;
}
