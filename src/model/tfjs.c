/* Loader for the TF.js layers-model format: model.json (Keras topology plus a
 * weights manifest) and binary shards. Weights may be float32, int32, float16,
 * or uint8/uint16 quantised (value = min + q * scale, computed as TF.js does). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

typedef enum weight_encoding { ENC_F32, ENC_I32, ENC_F16, ENC_U8, ENC_U16 } weight_encoding;

typedef struct manifest_weight {
    const char *name;
    graft__shape shape;
    int64_t elems;
    weight_encoding encoding;
    double min, scale;   /* for ENC_U8 / ENC_U16 */
} manifest_weight;

static size_t encoding_bytes(weight_encoding e)
{
    switch (e) {
    case ENC_F16: case ENC_U16: return 2;
    case ENC_U8: return 1;
    default: return 4;
    }
}

/* IEEE half to float, subnormals included. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {
            exp = 127 - 14;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void decode_values(const manifest_weight *w, const unsigned char *src, float *dst)
{
    for (int64_t i = 0; i < w->elems; i++) {
        switch (w->encoding) {
        case ENC_F32: {
            float v;
            memcpy(&v, src + 4 * i, 4);
            dst[i] = v;
            break;
        }
        case ENC_I32: {
            int32_t v;
            memcpy(&v, src + 4 * i, 4);
            dst[i] = (float)v;
            break;
        }
        case ENC_F16: {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = half_to_float(v);
            break;
        }
        case ENC_U8:
            /* TF.js evaluates q * scale + min in double, then stores float32. */
            dst[i] = (float)(src[i] * w->scale + w->min);
            break;
        case ENC_U16: {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = (float)(v * w->scale + w->min);
            break;
        }
        }
    }
}

static graft_status parse_manifest_weight(const json_t *spec, manifest_weight *w, const char *file)
{
    w->name = json_string_value(json_object_get(spec, "name"));
    const json_t *shape = json_object_get(spec, "shape");
    const char *dtype = json_string_value(json_object_get(spec, "dtype"));
    if (!w->name || !json_is_array(shape) || !dtype)
        return graft__fail(GRAFT_E_FORMAT, "%s: a weights manifest entry lacks name, shape or "
                           "dtype", file);
    int64_t dims[GRAFT_MAX_RANK];
    size_t rank = json_array_size(shape);
    if (rank > GRAFT_MAX_RANK)
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: weight '%s' has rank %zu", file, w->name, rank);
    for (size_t i = 0; i < rank; i++) {
        const json_t *d = json_array_get(shape, i);
        dims[i] = json_is_integer(d) ? json_integer_value(d) : -1;
    }
    char ctx[512];
    if (snprintf(ctx, sizeof ctx, "%s: weight '%s'", file, w->name) >= (int)sizeof ctx)
        ctx[sizeof ctx - 1] = '\0';
    graft_status rc = graft__shape_make(&w->shape, (int)rank, dims, ctx);
    if (rc)
        return rc;
    w->elems = graft__shape_elems(&w->shape);
    const json_t *quant = json_object_get(spec, "quantization");
    if (quant) {
        const char *qtype = json_string_value(json_object_get(quant, "dtype"));
        if (qtype && strcmp(qtype, "float16") == 0) {
            w->encoding = ENC_F16;
            return GRAFT_OK;
        }
        if (!qtype || (strcmp(qtype, "uint8") && strcmp(qtype, "uint16")))
            return graft__fail(GRAFT_E_UNSUPPORTED, "%s: weight '%s' has unsupported "
                               "quantization dtype '%s'", file, w->name, qtype ? qtype : "?");
        const json_t *min = json_object_get(quant, "min"), *scale = json_object_get(quant, "scale");
        if (!json_is_number(min) || !json_is_number(scale))
            return graft__fail(GRAFT_E_FORMAT, "%s: weight '%s': quantization lacks min or scale",
                               file, w->name);
        w->min = json_number_value(min);
        w->scale = json_number_value(scale);
        w->encoding = strcmp(qtype, "uint8") == 0 ? ENC_U8 : ENC_U16;
        return GRAFT_OK;
    }
    if (strcmp(dtype, "float32") == 0)
        w->encoding = ENC_F32;
    else if (strcmp(dtype, "int32") == 0)
        w->encoding = ENC_I32;
    else if (strcmp(dtype, "float16") == 0)
        w->encoding = ENC_F16;
    else
        return graft__fail(GRAFT_E_UNSUPPORTED, "%s: weight '%s' has unsupported dtype '%s'", file,
                           w->name, dtype);
    return GRAFT_OK;
}

/* Joins dir and a manifest path, refusing paths that could leave the model folder. */
static graft_status shard_path(const char *dir, const char *rel, const char *file, char *out,
                               size_t size)
{
    if (rel[0] == '/' || strstr(rel, "..") || strchr(rel, '\\'))
        return graft__fail(GRAFT_E_FORMAT, "%s: shard path '%s' leaves the model folder", file, rel);
    if ((size_t)snprintf(out, size, "%s/%s", dir, rel) >= size)
        return graft__fail(GRAFT_E_FORMAT, "%s: shard path '%s' is too long", file, rel);
    char real_dir[PATH_MAX], real_shard[PATH_MAX];
    if (!realpath(out, real_shard))
        return graft__fail(GRAFT_E_IO, "%s: %s", out, strerror(errno));
    if (!realpath(dir, real_dir))
        return graft__fail(GRAFT_E_IO, "%s: %s", dir, strerror(errno));
    size_t n = strlen(real_dir);
    if (strncmp(real_shard, real_dir, n) != 0 || real_shard[n] != '/')
        return graft__fail(GRAFT_E_FORMAT, "%s: shard path '%s' leaves the model folder", file, rel);
    return GRAFT_OK;
}

/* Reads all shards of one group into one buffer of exactly `expected` bytes. */
static graft_status read_group(const json_t *paths, const char *dir, const char *file,
                               int group, size_t expected, unsigned char **out)
{
    char path[PATH_MAX];
    size_t total = 0;
    size_t i;
    const json_t *p;
    json_array_foreach(paths, i, p)
    {
        struct stat st;
        const char *rel = json_string_value(p);
        if (!rel)
            return graft__fail(GRAFT_E_FORMAT, "%s: group %d has a non-string shard path", file, group);
        graft_status rc = shard_path(dir, rel, file, path, sizeof path);
        if (rc)
            return rc;
        if (stat(path, &st) != 0)
            return graft__fail(GRAFT_E_IO, "%s: %s", path, strerror(errno));
        total += (size_t)st.st_size;
    }
    if (total != expected)
        return graft__fail(GRAFT_E_FORMAT, "%s: weight group %d: shards hold %zu bytes but the "
                           "manifest describes %zu", file, group, total, expected);
    unsigned char *buf = graft__malloc(expected);
    if (!buf)
        return graft__fail(GRAFT_E_NOMEM, "out of memory for %zu weight bytes", expected);
    size_t at = 0;
    json_array_foreach(paths, i, p)
    {
        shard_path(dir, json_string_value(p), file, path, sizeof path);
        FILE *f = fopen(path, "rb");
        if (!f) {
            graft__free(buf);
            return graft__fail(GRAFT_E_IO, "%s: %s", path, strerror(errno));
        }
        size_t got = fread(buf + at, 1, expected - at, f);
        int more = fgetc(f) != EOF;
        fclose(f);
        at += got;
        if (more || (i + 1 == json_array_size(paths) && at != expected)) {
            graft__free(buf);
            return graft__fail(GRAFT_E_IO, "%s: shard changed size while reading", path);
        }
    }
    *out = buf;
    return GRAFT_OK;
}

/* Finds the layer a manifest name belongs to: "a/b/layer/kernel" names layer
 * "a/b/layer", else "b/layer", else "layer" (nested models prefix their scope). */
static graft__weight *match_weight(graft_model *m, const char *full, graft__layer **layer_out)
{
    const char *slash = strrchr(full, '/');
    if (!slash)
        return NULL;
    const char *wname = slash + 1;
    char scope[512];
    size_t len = (size_t)(slash - full);
    if (len >= sizeof scope)
        return NULL;
    memcpy(scope, full, len);
    scope[len] = '\0';
    for (const char *s = scope; s; s = strchr(s, '/') ? strchr(s, '/') + 1 : NULL) {
        graft__layer *layer = graft__graph_find_layer(m, s);
        if (!layer)
            continue;
        for (int i = 0; i < layer->n_weights; i++)
            if (strcmp(layer->weights[i].name, wname) == 0) {
                *layer_out = layer;
                return &layer->weights[i];
            }
    }
    return NULL;
}

static graft_status load_group(graft_model *m, const json_t *group, int index, const char *dir,
                               const char *file)
{
    const json_t *paths = json_object_get(group, "paths");
    const json_t *specs = json_object_get(group, "weights");
    if (!json_is_array(paths) || !json_is_array(specs))
        return graft__fail(GRAFT_E_FORMAT, "%s: weight group %d lacks paths or weights", file, index);
    size_t n = json_array_size(specs), expected = 0;
    manifest_weight *ws = graft__calloc(n ? n : 1, sizeof *ws);
    if (!ws)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    graft_status rc = GRAFT_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = parse_manifest_weight(json_array_get(specs, i), &ws[i], file);
        if (!rc)
            expected += (size_t)ws[i].elems * encoding_bytes(ws[i].encoding);
    }
    unsigned char *buf = NULL;
    if (!rc)
        rc = read_group(paths, dir, file, index, expected, &buf);
    size_t at = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        graft__layer *layer = NULL;
        graft__weight *w = match_weight(m, ws[i].name, &layer);
        if (!w) {
            rc = graft__fail(GRAFT_E_FORMAT, "%s: weight '%s' belongs to no layer of the model",
                             file, ws[i].name);
        } else if (!graft__shape_equal(&w->shape, &ws[i].shape)) {
            char a[96], b[96];
            rc = graft__fail(GRAFT_E_SHAPE, "%s: layer '%s' weight '%s': the file has shape %s, "
                             "the layer needs %s", file, layer->name, w->name,
                             graft__shape_str(&ws[i].shape, a, sizeof a),
                             graft__shape_str(&w->shape, b, sizeof b));
        } else {
            decode_values(&ws[i], buf + at, w->data);
            w->loaded = 1;
        }
        at += (size_t)ws[i].elems * encoding_bytes(ws[i].encoding);
    }
    graft__free(buf);
    graft__free(ws);
    return rc;
}

static graft_status load_weights(graft_model *m, const json_t *manifest, const char *dir,
                                 const char *file)
{
    if (!json_is_array(manifest))
        return graft__fail(GRAFT_E_FORMAT, "%s: weightsManifest is missing", file);
    size_t i;
    const json_t *group;
    json_array_foreach(manifest, i, group)
    {
        graft_status rc = load_group(m, group, (int)i + 1, dir, file);
        if (rc)
            return rc;
    }
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < m->layers[l]->n_weights; w++)
            if (!m->layers[l]->weights[w].loaded)
                return graft__fail(GRAFT_E_FORMAT, "%s: missing weight '%s/%s'", file,
                                   m->layers[l]->name, m->layers[l]->weights[w].name);
    return GRAFT_OK;
}

/* labels.txt beside model.json: one class name per line, optional. */
static graft_status load_labels(graft_model *m, const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/labels.txt", dir) >= (int)sizeof path)
        return GRAFT_OK;
    FILE *f = fopen(path, "r");
    if (!f)
        return GRAFT_OK;
    char line[1024];
    graft_status rc = GRAFT_OK;
    while (!rc && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char **grown = graft__realloc(m->labels, sizeof(char *) * (size_t)(m->n_labels + 1));
        if (!grown) {
            rc = graft__fail(GRAFT_E_NOMEM, "out of memory");
            break;
        }
        m->labels = grown;
        m->labels[m->n_labels] = graft__strdup(line);
        if (!m->labels[m->n_labels])
            rc = graft__fail(GRAFT_E_NOMEM, "out of memory");
        else
            m->n_labels++;
    }
    fclose(f);
    return rc;
}

static graft_status resolve_paths(const char *path, char *file, char *dir, size_t size)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return graft__fail(GRAFT_E_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        snprintf(dir, size, "%s", path);
        if ((size_t)snprintf(file, size, "%s/model.json", path) >= size)
            return graft__fail(GRAFT_E_INVALID_ARG, "%s: path too long", path);
        if (stat(file, &st) != 0)
            return graft__fail(GRAFT_E_IO, "%s: %s", file, strerror(errno));
        return GRAFT_OK;
    }
    snprintf(file, size, "%s", path);
    snprintf(dir, size, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, size, ".");
    return GRAFT_OK;
}

static graft_status load_json(const char *file, json_t **out)
{
    json_error_t err;
    *out = json_load_file(file, JSON_REJECT_DUPLICATES, &err);
    if (!*out)
        return graft__fail(GRAFT_E_FORMAT, "%s: line %d: %s", file, err.line, err.text);
    return GRAFT_OK;
}

static graft_status load_into(graft_model *m, const char *file, const char *dir)
{
    json_t *root = NULL;
    graft_status rc = load_json(file, &root);
    if (rc)
        return rc;
    const json_t *topology = json_object_get(root, "modelTopology");
    const json_t *config = json_object_get(topology, "model_config");
    if (!config)
        config = topology;
    if (!json_is_object(config))
        rc = graft__fail(GRAFT_E_FORMAT, "%s: no modelTopology (is this a TF.js layers model?)",
                         file);
    if (!rc && (rc = graft__graph_build(m, config)))
        graft__fail_prefix(rc, "%s", file);
    if (!rc)
        rc = graft__graph_alloc_params(m);
    if (!rc)
        rc = load_weights(m, json_object_get(root, "weightsManifest"), dir, file);
    if (!rc)
        rc = load_labels(m, dir);
    json_decref(root);
    return rc;
}

graft_status graft_model_load(const char *path, graft_model **out)
{
    if (!path || !out)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_load: path and out are required");
    *out = NULL;
    char file[PATH_MAX], dir[PATH_MAX];
    graft_status rc = resolve_paths(path, file, dir, sizeof file);
    if (rc)
        return rc;
    graft_model *m = graft__calloc(1, sizeof *m);
    if (!m || !(m->path = graft__strdup(file))) {
        graft__free(m);
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    }
    rc = load_into(m, file, dir);
    if (rc) {
        graft_model_free(m);
        return rc;
    }
    *out = m;
    return GRAFT_OK;
}
