/* Reading an image file and handing it to the decoder its magic bytes name. */
#include "data/image.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"

static const unsigned char jpeg_magic[3] = {0xFF, 0xD8, 0xFF};
static const unsigned char png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

static graft_status too_large_file(const char *path)
{
    return graft__fail(GRAFT_E_FORMAT, "%s: file is larger than %zu MiB", path,
                       GRAFT__IMAGE_MAX_FILE >> 20);
}

/* Doubles the buffer; one byte past the limit is allowed so reaching it means
 * the file really is larger. */
static graft_status grow(const char *path, unsigned char **buf, size_t *cap)
{
    if (*cap > GRAFT__IMAGE_MAX_FILE)
        return too_large_file(path);
    size_t want = *cap * 2 > GRAFT__IMAGE_MAX_FILE ? GRAFT__IMAGE_MAX_FILE + 1 : *cap * 2;
    unsigned char *bigger = graft__realloc(*buf, want);
    if (!bigger)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory reading the file", path);
    *buf = bigger;
    *cap = want;
    return GRAFT_OK;
}

/* Reads to end of file rather than trusting st_size, so pipes and files that
 * change underneath still give exactly the bytes read. */
static graft_status read_fd(int fd, const char *path, size_t hint, unsigned char **data,
                            size_t *size)
{
    size_t cap = hint < 65536 ? 65536 : hint + 1, len = 0;
    unsigned char *buf = graft__malloc(cap);
    if (!buf)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory reading the file", path);
    graft_status rc = GRAFT_OK;
    for (;;) {
        if (len == cap && (rc = grow(path, &buf, &cap)) != GRAFT_OK)
            break;
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = graft__fail(GRAFT_E_IO, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (rc != GRAFT_OK) {
        graft__free(buf);
        return rc;
    }
    *data = buf;
    *size = len;
    return GRAFT_OK;
}

static graft_status read_file(const char *path, unsigned char **data, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return graft__fail(GRAFT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    graft_status rc = GRAFT_OK;
    if (fstat(fd, &st) != 0)
        rc = graft__fail(GRAFT_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (S_ISDIR(st.st_mode))
        rc = graft__fail(GRAFT_E_IO, "%s: cannot read: %s", path, strerror(EISDIR));
    else if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > GRAFT__IMAGE_MAX_FILE)
        rc = too_large_file(path);
    else
        rc = read_fd(fd, path, S_ISREG(st.st_mode) ? (size_t)st.st_size : 0, data, size);
    close(fd);
    return rc;
}

graft_status graft__image_decode_memory(const unsigned char *data, size_t size, const char *name,
                                        const graft__decode_want *want, graft__image *out)
{
    *out = (graft__image){0};
    if (size == 0)
        return graft__fail(GRAFT_E_FORMAT, "%s: file is empty", name);
    if (size >= sizeof jpeg_magic && memcmp(data, jpeg_magic, sizeof jpeg_magic) == 0)
        return graft__jpeg_decode(data, size, name, want, out);
    if (size >= sizeof png_magic && memcmp(data, png_magic, sizeof png_magic) == 0)
        return graft__png_decode(data, size, name, out);
    return graft__fail(GRAFT_E_FORMAT, "%s: not a JPEG or PNG file", name);
}

graft_status graft__image_decode_want(const char *path, const graft__decode_want *want,
                                      graft__image *out)
{
    *out = (graft__image){0};
    if (!path)
        return graft__fail(GRAFT_E_INVALID_ARG, "image path is NULL");
    unsigned char *data = NULL;
    size_t size = 0;
    graft_status rc = read_file(path, &data, &size);
    if (rc == GRAFT_OK)
        rc = graft__image_decode_memory(data, size, path, want, out);
    graft__free(data);
    return rc;
}

graft_status graft__image_decode(const char *path, int64_t min_width, int64_t min_height,
                                 graft__image *out)
{
    graft__decode_want want = {min_width, min_height, 0};
    return graft__image_decode_want(path, &want, out);
}

void graft__image_free(graft__image *img)
{
    if (!img)
        return;
    graft__free(img->pixels);
    *img = (graft__image){0};
}

graft_status graft__image_check_size(const char *name, int64_t width, int64_t height)
{
    if (width <= 0 || height <= 0)
        return graft__fail(GRAFT_E_FORMAT, "%s: declared size %lldx%lld is empty", name,
                           (long long)width, (long long)height);
    if (width > GRAFT__IMAGE_MAX_SIDE || height > GRAFT__IMAGE_MAX_SIDE ||
        width * height > GRAFT__IMAGE_MAX_PIXELS)
        return graft__fail(GRAFT_E_FORMAT, "%s: declared size %lldx%lld is too large", name,
                           (long long)width, (long long)height);
    return GRAFT_OK;
}

graft_status graft__image_alloc(graft__image *img, int64_t width, int64_t height,
                                const char *name)
{
    *img = (graft__image){0};
    size_t bytes;
    unsigned char *pixels = NULL;
    if (graft__mul_size((size_t)width * (size_t)height, 3, &bytes))
        pixels = graft__malloc(bytes);
    if (!pixels)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory for a %lldx%lld image", name,
                           (long long)width, (long long)height);
    *img = (graft__image){width, height, 3, pixels};
    return GRAFT_OK;
}

int graft__want_met(const graft__decode_want *want, int64_t width, int64_t height)
{
    if (!want || (want->min_width <= 0 && want->min_height <= 0))
        return 0;
    int wide = width >= want->min_width, tall = height >= want->min_height;
    return want->either ? wide || tall : wide && tall;
}
