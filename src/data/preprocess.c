/* Pixel scaling as keras.applications' preprocess_input does it, so features
 * match what the pretrained base saw in training. */
#include <string.h>

#include "core/error.h"
#include "data/image.h"

static const struct {
    const char *name;
    graft_preprocess mode;
} preprocess_names[] = {
    {"mobilenet", GRAFT_PREPROCESS_MOBILENET}, {"inception", GRAFT_PREPROCESS_INCEPTION},
    {"torch", GRAFT_PREPROCESS_TORCH},         {"caffe", GRAFT_PREPROCESS_CAFFE},
    {"none", GRAFT_PREPROCESS_NONE},           {"unit", GRAFT_PREPROCESS_UNIT},
};

static const struct {
    const char *name;
    graft_resize_mode mode;
} resize_names[] = {
    {"stretch", GRAFT_RESIZE_STRETCH},
    {"crop", GRAFT_RESIZE_CROP},
    {"pad", GRAFT_RESIZE_PAD},
};

graft_status graft_preprocess_parse(const char *name, graft_preprocess *out)
{
    for (size_t i = 0; name && i < sizeof preprocess_names / sizeof *preprocess_names; ++i)
        if (strcmp(name, preprocess_names[i].name) == 0) {
            *out = preprocess_names[i].mode;
            return GRAFT_OK;
        }
    return graft__fail(GRAFT_E_INVALID_ARG,
                       "unknown preprocessing '%s' (expected mobilenet, inception, torch, "
                       "caffe, none or unit)",
                       name ? name : "(null)");
}

graft_status graft_resize_mode_parse(const char *name, graft_resize_mode *out)
{
    for (size_t i = 0; name && i < sizeof resize_names / sizeof *resize_names; ++i)
        if (strcmp(name, resize_names[i].name) == 0) {
            *out = resize_names[i].mode;
            return GRAFT_OK;
        }
    return graft__fail(GRAFT_E_INVALID_ARG,
                       "unknown resize mode '%s' (expected stretch, crop or pad)",
                       name ? name : "(null)");
}

/* "torch" mode: ImageNet statistics of RGB in 0..1. */
static void torch(float *x, int64_t n)
{
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    for (int64_t i = 0; i < n; ++i, x += 3)
        for (int c = 0; c < 3; ++c)
            x[c] = (x[c] / 255.0f - mean[c]) / std[c];
}

/* "caffe" mode: BGR order, ImageNet mean (in BGR) subtracted, no scaling. */
static void caffe(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; ++i, x += 3) {
        const float r = x[0], g = x[1], b = x[2];
        x[0] = b - 103.939f;
        x[1] = g - 116.779f;
        x[2] = r - 123.68f;
    }
}

void graft__preprocess(float *pixels, int64_t n_pixels, graft_preprocess mode)
{
    switch (mode) {
    case GRAFT_PREPROCESS_MOBILENET:
    case GRAFT_PREPROCESS_INCEPTION: /* "tf" mode: -1..1 */
        for (int64_t i = 0; i < n_pixels * 3; ++i)
            pixels[i] = pixels[i] / 127.5f - 1.0f;
        break;
    case GRAFT_PREPROCESS_TORCH: torch(pixels, n_pixels); break;
    case GRAFT_PREPROCESS_CAFFE: caffe(pixels, n_pixels); break;
    case GRAFT_PREPROCESS_NONE: break;
    case GRAFT_PREPROCESS_UNIT:
        for (int64_t i = 0; i < n_pixels * 3; ++i)
            pixels[i] /= 255.0f;
        break;
    }
}
