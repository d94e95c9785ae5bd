/* IDX files (the MNIST format): a big-endian header, magic 0x00000803 for
 * (n, rows, cols) ubyte images (0x00000804 with a last dimension of 1 or 3 is
 * read as well) and 0x00000801 for n ubyte labels, then the data. zlib reads
 * gzip and raw files alike. The declared size is bounded before anything is
 * allocated, and the buffer grows with the data actually read, so a header that
 * lies costs at most twice what the file holds. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/alloc.h"
#include "core/error.h"
#include "data/dataset.h"

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static gzFile open_gz(const char *path, graft_status *rc)
{
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        *rc = errno ? graft__fail(GRAFT_E_IO, "%s: cannot open: %s", path, strerror(errno))
                    : graft__fail(GRAFT_E_NOMEM, "%s: out of memory opening", path);
        return NULL;
    }
    gzbuffer(f, 1u << 18);
    *rc = GRAFT_OK;
    return f;
}

/* Reads up to n bytes; *got says how many. Fails only on a read error. */
static graft_status read_some(gzFile f, const char *path, unsigned char *buf, size_t n,
                              size_t *got)
{
    *got = 0;
    while (*got < n) {
        size_t want = n - *got > (1u << 24) ? (1u << 24) : n - *got;
        int r = gzread(f, buf + *got, (unsigned)want);
        if (r < 0) {
            int zerr = 0;
            const char *msg = gzerror(f, &zerr);
            return graft__fail(zerr == Z_ERRNO ? GRAFT_E_IO : GRAFT_E_FORMAT, "%s: %s", path,
                               zerr == Z_ERRNO ? strerror(errno) : msg);
        }
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    return GRAFT_OK;
}

int graft__idx_sniff(const char *path)
{
    graft_status rc;
    gzFile f = open_gz(path, &rc);
    if (!f)
        return 0;
    unsigned char m[4];
    int r = gzread(f, m, sizeof m);
    gzclose(f);
    if (r != (int)sizeof m || m[0] != 0 || m[1] != 0 || m[2] != 0x08)
        return 0;
    return m[3] == 3 || m[3] == 4 ? 1 : m[3] == 1 ? 2 : 0;
}

/* Reads `total` bytes of data after the header, growing the buffer as they come. */
static graft_status read_data(gzFile f, const char *path, size_t total, const char *what,
                              unsigned char **out)
{
    size_t cap = total < ((size_t)1 << 26) ? total : (size_t)1 << 26, len = 0;
    unsigned char *buf = graft__malloc(cap);
    if (!buf)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory for %zu bytes of %s", path, cap,
                           what);
    for (;;) {
        size_t got;
        graft_status rc = read_some(f, path, buf + len, cap - len, &got);
        if (rc != GRAFT_OK) {
            graft__free(buf);
            return rc;
        }
        len += got;
        if (len == total)
            break;
        if (len < cap) {
            graft__free(buf);
            return graft__fail(GRAFT_E_FORMAT, "%s: truncated: the header declares %zu bytes of "
                               "%s, the file holds %zu", path, total, what, len);
        }
        size_t want = cap * 2 < total ? cap * 2 : total;
        unsigned char *bigger = graft__realloc(buf, want);
        if (!bigger) {
            graft__free(buf);
            return graft__fail(GRAFT_E_NOMEM, "%s: out of memory for %zu bytes of %s", path,
                               want, what);
        }
        buf = bigger;
        cap = want;
    }
    *out = buf;
    return GRAFT_OK;
}

static graft_status read_images(const char *path, graft__idx *out)
{
    graft_status rc;
    gzFile f = open_gz(path, &rc);
    if (!f)
        return rc;
    unsigned char h[20] = {0};
    size_t got;
    rc = read_some(f, path, h, 4, &got);
    if (rc == GRAFT_OK && (got < 4 || h[0] || h[1] || h[2] != 0x08 || (h[3] != 3 && h[3] != 4)))
        rc = graft__fail(GRAFT_E_FORMAT, "%s: not an IDX images file (magic %02x%02x%02x%02x, "
                         "expected 00000803)", path, h[0], h[1], h[2], h[3]);
    const int dims = h[3];
    if (rc == GRAFT_OK && (rc = read_some(f, path, h + 4, 4u * (unsigned)dims, &got)) == GRAFT_OK &&
        got < 4u * (unsigned)dims)
        rc = graft__fail(GRAFT_E_FORMAT, "%s: truncated IDX header", path);
    if (rc == GRAFT_OK) {
        uint64_t n = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
        uint64_t ch = dims == 4 ? be32(h + 16) : 1;
        if (n == 0 || rows == 0 || cols == 0 || rows > GRAFT__IDX_MAX_SIDE ||
            cols > GRAFT__IDX_MAX_SIDE || (ch != 1 && ch != 3) ||
            n * rows * cols * ch > GRAFT__IDX_MAX_BYTES)
            rc = graft__fail(GRAFT_E_FORMAT, "%s: declared size %llu images of %llux%llux%llu is "
                             "empty or too large", path, (unsigned long long)n,
                             (unsigned long long)rows, (unsigned long long)cols,
                             (unsigned long long)ch);
        else {
            *out = (graft__idx){(int64_t)n, (int64_t)rows, (int64_t)cols, (int64_t)ch, NULL, NULL};
            rc = read_data(f, path, (size_t)(n * rows * cols * ch), "pixels", &out->pixels);
        }
    }
    gzclose(f);
    return rc;
}

static graft_status read_labels(const char *path, graft__idx *out)
{
    graft_status rc;
    gzFile f = open_gz(path, &rc);
    if (!f)
        return rc;
    unsigned char h[8];
    size_t got;
    rc = read_some(f, path, h, sizeof h, &got);
    if (rc == GRAFT_OK && (got < sizeof h || be32(h) != 0x00000801))
        rc = graft__fail(GRAFT_E_FORMAT, "%s: not an IDX labels file (expected magic 00000801)",
                         path);
    if (rc == GRAFT_OK && be32(h + 4) != (uint64_t)out->count)
        rc = graft__fail(GRAFT_E_FORMAT, "%s: %lu labels for %lld images", path,
                         (unsigned long)be32(h + 4), (long long)out->count);
    if (rc == GRAFT_OK)
        rc = read_data(f, path, (size_t)out->count, "labels", &out->labels);
    gzclose(f);
    return rc;
}

static int regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The labels file beside an images file: the file name with "images-idx3"
 * (or "images.idx3") replaced, with the same, added or removed .gz. */
static graft_status labels_path(const char *path, char **out)
{
    static const char *const from[] = {"images-idx3", "images.idx3"};
    static const char *const to[] = {"labels-idx1", "labels.idx1"};
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *hit = NULL;
    int which = 0;
    for (int i = 0; i < 2 && !hit; ++i)
        if ((hit = strstr(base, from[i])))
            which = i;
    if (!hit)
        return graft__fail(GRAFT_E_NOT_FOUND, "%s: cannot find the labels file: the name has no "
                           "'images-idx3' to replace with 'labels-idx1'", path);
    size_t len = strlen(path), at = (size_t)(hit - path), k = strlen(from[which]);
    char *p = graft__malloc(len + 4);
    if (!p)
        return graft__fail(GRAFT_E_NOMEM, "%s: out of memory", path);
    memcpy(p, path, at);
    memcpy(p + at, to[which], k);
    memcpy(p + at + k, path + at + k, len - at - k + 1);
    if (regular_file(p)) {
        *out = p;
        return GRAFT_OK;
    }
    int gz = len > 3 && strcmp(p + len - 3, ".gz") == 0;
    char first[1024];
    snprintf(first, sizeof first, "%s", p);
    if (gz)
        p[len - 3] = '\0';
    else
        memcpy(p + len, ".gz", 4);
    if (regular_file(p)) {
        *out = p;
        return GRAFT_OK;
    }
    graft__free(p);
    return graft__fail(GRAFT_E_NOT_FOUND, "%s: labels file %s not found", path, first);
}

graft_status graft__idx_read(const char *path, graft__idx *out)
{
    *out = (graft__idx){0};
    char *lpath = NULL;
    graft_status rc = labels_path(path, &lpath);
    if (rc == GRAFT_OK)
        rc = read_images(path, out);
    if (rc == GRAFT_OK)
        rc = read_labels(lpath, out);
    graft__free(lpath);
    if (rc != GRAFT_OK)
        graft__idx_free(out);
    return rc;
}

void graft__idx_free(graft__idx *idx)
{
    if (!idx)
        return;
    graft__free(idx->pixels);
    graft__free(idx->labels);
    *idx = (graft__idx){0};
}
