/* The cheap check of an image file at open: signature and declared size, read
 * with a few small preads (a JPEG's segments before its frame header are
 * skipped by their lengths, so a large EXIF block costs nothing). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "data/dataset.h"
#include "data/image.h"

graft_status graft__ds_check_file(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return graft__fail(GRAFT_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return graft__fail(GRAFT_E_IO, "%s: not a regular file", path);
    if (st.st_size == 0)
        return graft__fail(GRAFT_E_FORMAT, "%s: file is empty", path);
    return GRAFT_OK;
}

/* Reads exactly n bytes at off; 0 when the file ends first. */
static int read_at(int fd, unsigned char *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}

static unsigned be16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static graft_status probe_png(int fd, const char *path)
{
    unsigned char h[16]; /* IHDR length, type, width, height */
    if (!read_at(fd, h, sizeof h, 8))
        return graft__fail(GRAFT_E_FORMAT, "%s: truncated PNG header", path);
    if (memcmp(h + 4, "IHDR", 4) != 0)
        return graft__fail(GRAFT_E_FORMAT, "%s: PNG does not start with an IHDR chunk", path);
    return graft__image_check_size(path, (int64_t)be32(h + 8), (int64_t)be32(h + 12));
}

/* Start-of-frame markers: C0..CF but DHT (C4), JPG (C8) and DAC (CC). */
static int is_sof(unsigned m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

static graft_status probe_jpeg(int fd, const char *path)
{
    off_t pos = 2;
    for (int segments = 0; segments < 4096; ++segments) {
        unsigned char m[4];
        if (!read_at(fd, m, 2, pos))
            break;
        if (m[0] != 0xFF)
            return graft__fail(GRAFT_E_FORMAT, "%s: corrupt JPEG: no marker at byte %lld", path,
                               (long long)pos);
        if (m[1] == 0xFF) { /* fill byte */
            pos += 1;
            continue;
        }
        if (m[1] == 0x01 || (m[1] >= 0xD0 && m[1] <= 0xD8)) { /* markers without a length */
            pos += 2;
            continue;
        }
        if (m[1] == 0xD9 || m[1] == 0xDA)
            return graft__fail(GRAFT_E_FORMAT, "%s: corrupt JPEG: no frame header", path);
        if (!read_at(fd, m + 2, 2, pos + 2))
            break;
        unsigned len = be16(m + 2);
        if (len < 2)
            return graft__fail(GRAFT_E_FORMAT, "%s: corrupt JPEG: bad segment length", path);
        if (is_sof(m[1])) {
            unsigned char f[5]; /* precision, height, width */
            if (len < 2 + sizeof f || !read_at(fd, f, sizeof f, pos + 4))
                break;
            return graft__image_check_size(path, (int64_t)be16(f + 3), (int64_t)be16(f + 1));
        }
        pos += 2 + (off_t)len;
    }
    return graft__fail(GRAFT_E_FORMAT, "%s: truncated JPEG header", path);
}

graft_status graft__image_probe(const char *path)
{
    graft_status rc = graft__ds_check_file(path);
    if (rc != GRAFT_OK)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return graft__fail(GRAFT_E_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char magic[8] = {0};
    int whole = read_at(fd, magic, sizeof magic, 0); /* shorter files can still be JPEGs */
    static const unsigned char png[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF)
        rc = probe_jpeg(fd, path);
    else if (whole && memcmp(magic, png, sizeof png) == 0)
        rc = probe_png(fd, path);
    else
        rc = graft__fail(GRAFT_E_FORMAT, "%s: not a JPEG or PNG file", path);
    close(fd);
    return rc;
}
