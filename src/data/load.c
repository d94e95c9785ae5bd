/* graft_image_load: decode, orient, resize, preprocess. */
#include "core/error.h"
#include "data/image.h"

static graft_status check_args(const char *path, int64_t height, int64_t width,
                               graft_resize_mode resize, graft_preprocess preprocess,
                               const float *out)
{
    if (!path || !out)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_image_load: %s is NULL",
                           path ? "output buffer" : "path");
    if (height <= 0 || width <= 0 || height > GRAFT__IMAGE_MAX_SIDE ||
        width > GRAFT__IMAGE_MAX_SIDE)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: target size %lldx%lld is out of range",
                           path, (long long)width, (long long)height);
    if ((unsigned)resize > GRAFT_RESIZE_PAD)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: unknown resize mode %d", path, (int)resize);
    if ((unsigned)preprocess > GRAFT_PREPROCESS_UNIT)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: unknown preprocessing %d", path,
                           (int)preprocess);
    return GRAFT_OK;
}

graft_status graft_image_load(const char *path, int64_t height, int64_t width,
                              graft_resize_mode resize, graft_preprocess preprocess, float *out)
{
    graft_status rc = check_args(path, height, width, resize, preprocess, out);
    if (rc != GRAFT_OK)
        return rc;
    /* JPEGs decode no larger than the fit needs: a 12 MP photo for a 224x224
     * input decodes at 1/4 or 1/8 of the work. */
    graft__decode_want want;
    graft__fit_want(resize, height, width, &want);
    graft__image img;
    rc = graft__image_decode_want(path, &want, &img);
    if (rc != GRAFT_OK)
        return rc;
    rc = graft__image_fit(&img, height, width, resize, out);
    graft__image_free(&img);
    if (rc != GRAFT_OK)
        return graft__fail_prefix(rc, "%s", path);
    graft__preprocess(out, height * width, preprocess);
    return GRAFT_OK;
}
