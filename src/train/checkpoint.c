/* Checkpoints: everything graft_train needs to continue a run exactly, written
 * to a temporary file, fsync'ed and renamed so a crash never leaves half a file.
 * Layout (little-endian, this machine's struct layout): magic, version, run
 * identity (parameter count, batch size, seed), the loop state, the epoch
 * history, then the arrays, and a CRC-32 of all that precedes it. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/alloc.h"
#include "core/error.h"
#include "train/fit.h"

static const char magic[8] = "GRAFTCKP";
enum { CHECKPOINT_VERSION = 1 };

typedef struct checkpoint_header {
    char magic[8];
    uint32_t version, flags;  /* flags: 1 m2, 2 w0, 4 best */
    int64_t n_params, batch_size;
    uint64_t seed;
    int32_t n_history, pad;
    graft__fit_state state;
} checkpoint_header;

typedef struct sink {
    FILE *f;
    uLong crc;
    int ok;
} sink;

static void put(sink *s, const void *p, size_t bytes)
{
    if (s->ok && fwrite(p, 1, bytes, s->f) != bytes)
        s->ok = 0;
    s->crc = crc32(s->crc, p, (uInt)bytes);
}

static uint32_t header_flags(const graft__fit *f)
{
    return (f->m2 ? 1u : 0u) | (f->w0 ? 2u : 0u) | (f->best ? 4u : 0u);
}

static void write_body(const graft__fit *f, sink *s)
{
    checkpoint_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, magic, sizeof magic);
    h.version = CHECKPOINT_VERSION;
    h.flags = header_flags(f);
    h.n_params = f->model->n_params;
    h.batch_size = f->cfg.batch_size;
    h.seed = f->cfg.seed;
    h.n_history = f->n_history;
    h.state = f->state;
    size_t np = sizeof(float) * (size_t)f->model->n_params;
    put(s, &h, sizeof h);
    put(s, f->history, sizeof *f->history * (size_t)f->n_history);
    put(s, f->model->params, np);
    put(s, f->m1, np);
    if (f->m2)
        put(s, f->m2, np);
    if (f->w0)
        put(s, f->w0, np);
    if (f->best)
        put(s, f->best, np);
}

/* fsync of the folder makes the rename itself durable. */
static void sync_folder(const char *path)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

graft_status graft__checkpoint_write(const graft__fit *f, const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return graft__fail(GRAFT_E_INVALID_ARG, "%s: path too long", path);
    sink s = {fopen(tmp, "wb"), crc32(0L, Z_NULL, 0), 1};
    if (!s.f)
        return graft__fail(GRAFT_E_IO, "%s: %s", tmp, strerror(errno));
    write_body(f, &s);
    uint32_t crc = (uint32_t)s.crc;
    if (s.ok && fwrite(&crc, sizeof crc, 1, s.f) != 1)
        s.ok = 0;
    int err = errno;
    if (fflush(s.f) != 0 || fsync(fileno(s.f)) != 0)
        s.ok = 0, err = errno;
    if (fclose(s.f) != 0)
        s.ok = 0, err = errno;
    if (!s.ok || rename(tmp, path) != 0) {
        err = s.ok ? errno : err;
        unlink(tmp);
        return graft__fail(GRAFT_E_IO, "%s: cannot write checkpoint: %s", path, strerror(err));
    }
    sync_folder(path);
    return GRAFT_OK;
}

typedef struct source {
    FILE *f;
    uLong crc;
    int ok;
} source;

static void get(source *s, void *p, size_t bytes)
{
    if (s->ok && fread(p, 1, bytes, s->f) != bytes)
        s->ok = 0;
    if (s->ok)
        s->crc = crc32(s->crc, p, (uInt)bytes);
}

static graft_status check_header(const graft__fit *f, const checkpoint_header *h, const char *path)
{
    if (memcmp(h->magic, magic, sizeof magic) != 0 || h->version != CHECKPOINT_VERSION)
        return graft__fail(GRAFT_E_FORMAT, "%s: not a graft checkpoint (or another version)", path);
    if (h->n_params != f->model->n_params || h->batch_size != f->cfg.batch_size ||
        h->seed != f->cfg.seed || h->flags != header_flags(f))
        return graft__fail(GRAFT_E_FORMAT, "%s: written by a different model or training "
                           "configuration (parameters, batch size, seed or optimiser differ)", path);
    if (h->n_history < 0 || h->n_history > f->cfg.epochs || h->state.epoch != h->n_history)
        return graft__fail(GRAFT_E_FORMAT, "%s: holds %d epochs but this run has %d", path,
                           h->n_history, f->cfg.epochs);
    return GRAFT_OK;
}

/* Reads into scratch copies first, so a bad file leaves the model untouched. */
graft_status graft__checkpoint_read(graft__fit *f, const char *path)
{
    source s = {fopen(path, "rb"), crc32(0L, Z_NULL, 0), 1};
    if (!s.f)
        return errno == ENOENT ? GRAFT_E_NOT_FOUND
                               : graft__fail(GRAFT_E_IO, "%s: %s", path, strerror(errno));
    checkpoint_header h;
    get(&s, &h, sizeof h);
    graft_status rc = s.ok ? check_header(f, &h, path)
                           : graft__fail(GRAFT_E_FORMAT, "%s: truncated checkpoint", path);
    size_t np = sizeof(float) * (size_t)f->model->n_params;
    float *params = rc ? NULL : graft__malloc_aligned(np ? np : 1);
    if (!rc && !params)
        rc = graft__fail(GRAFT_E_NOMEM, "out of memory reading %s", path);
    if (!rc) {
        get(&s, f->history, sizeof *f->history * (size_t)h.n_history);
        get(&s, params, np);
        get(&s, f->m1, np);
        if (f->m2)
            get(&s, f->m2, np);
        if (f->w0)
            get(&s, f->w0, np);
        if (f->best)
            get(&s, f->best, np);
        uint32_t stored = 0, computed = (uint32_t)s.crc;
        if (s.ok && fread(&stored, sizeof stored, 1, s.f) != 1)
            s.ok = 0;
        if (!s.ok || stored != computed || fgetc(s.f) != EOF)
            rc = graft__fail(GRAFT_E_FORMAT, "%s: truncated or corrupt checkpoint", path);
    }
    fclose(s.f);
    if (!rc) {
        memcpy(f->model->params, params, np);
        f->state = h.state;
        f->n_history = h.n_history;
    }
    graft__free_aligned(params);
    return rc;
}
