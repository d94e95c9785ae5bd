/* Saves a model in the TF.js layers-model format: the graph as one flat Keras
 * functional model (nested models were inlined on load), float32 weights in
 * 4 MiB shards, and labels.txt. Each file is written to a temporary name,
 * fsync'ed and renamed; model.json goes last, so a reader never sees it
 * pointing at shards that are not there yet. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

enum { SHARD_BYTES = 4 << 20 };

static int call_index(const graft_model *m, int node)
{
    int k = 0;
    for (int i = 0; i < node; i++)
        k += m->nodes[i].layer == m->nodes[node].layer;
    return k;
}

static json_t *inbound_nodes(const graft_model *m, const graft__layer *layer)
{
    json_t *calls = json_array();
    for (int i = 0; i < m->n_nodes; i++) {
        if (m->nodes[i].layer != layer || m->nodes[i].n_inputs == 0)
            continue;
        json_t *call = json_array();
        for (int k = 0; k < m->nodes[i].n_inputs; k++) {
            int src = m->nodes[i].inputs[k];
            json_array_append_new(call, json_pack("[s,i,i,{}]", m->nodes[src].layer->name,
                                                  call_index(m, src), 0));
        }
        json_array_append_new(calls, call);
    }
    return calls;
}

static json_t *layer_entry(const graft_model *m, const graft__layer *layer)
{
    json_t *config = layer->keras_config ? json_deep_copy(layer->keras_config) : json_object();
    json_object_set_new(config, "name", json_string(layer->name));
    json_object_set_new(config, "trainable", json_boolean(layer->trainable));
    return json_pack("{s:s,s:s,s:o,s:o}", "name", layer->name, "class_name",
                     layer->ops->class_name, "config", config, "inbound_nodes",
                     inbound_nodes(m, layer));
}

static json_t *topology(const graft_model *m)
{
    json_t *layers = json_array();
    for (int i = 0; i < m->n_layers; i++)
        json_array_append_new(layers, layer_entry(m, m->layers[i]));
    json_t *config = json_pack("{s:s,s:o,s:[[s,i,i]],s:[[s,i,i]]}", "name", "graft_model",
                               "layers", layers, "input_layers",
                               m->nodes[m->input_node].layer->name, 0, 0, "output_layers",
                               m->nodes[m->output_node].layer->name,
                               call_index(m, m->output_node), 0);
    return json_pack("{s:s,s:s,s:{s:s,s:o}}", "keras_version", "2.2.4", "backend", "tensorflow",
                     "model_config", "class_name", "Model", "config", config);
}

static graft_status write_file(const char *dir, const char *name, const void *data, size_t bytes)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return graft__fail(GRAFT_E_IO, "%s: %s", tmp, strerror(errno));
    int ok = fwrite(data, 1, bytes, f) == bytes && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        err = ok ? errno : err;
        unlink(tmp);
        return graft__fail(GRAFT_E_IO, "%s: cannot write: %s", path, strerror(err));
    }
    return GRAFT_OK;
}

/* All weights in layer order, as one little-endian float32 stream. */
static size_t weight_bytes(const graft_model *m)
{
    size_t total = 0;
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++)
            total += sizeof(float) * (size_t)graft__shape_elems(&m->layers[i]->weights[w].shape);
    return total;
}

static graft_status write_weights(const graft_model *m, const char *dir, json_t *manifest)
{
    size_t total = weight_bytes(m), at = 0;
    unsigned char *buf = graft__malloc(total ? total : 1);
    if (!buf)
        return graft__fail(GRAFT_E_NOMEM, "out of memory saving weights");
    json_t *specs = json_array();
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++) {
            const graft__weight *wt = &m->layers[i]->weights[w];
            size_t bytes = sizeof(float) * (size_t)graft__shape_elems(&wt->shape);
            memcpy(buf + at, wt->data, bytes);
            at += bytes;
            json_t *shape = json_array();
            for (int d = 0; d < wt->shape.rank; d++)
                json_array_append_new(shape, json_integer(wt->shape.dim[d]));
            char name[512];
            snprintf(name, sizeof name, "%s/%s", m->layers[i]->name, wt->name);
            json_array_append_new(specs, json_pack("{s:s,s:o,s:s}", "name", name, "shape", shape,
                                                   "dtype", "float32"));
        }
    size_t shards = total ? (total + SHARD_BYTES - 1) / SHARD_BYTES : 1;
    json_t *paths = json_array();
    graft_status rc = GRAFT_OK;
    for (size_t s = 0; s < shards && !rc; s++) {
        char name[64];
        snprintf(name, sizeof name, "group1-shard%zuof%zu.bin", s + 1, shards);
        size_t start = s * SHARD_BYTES, len = total - start < SHARD_BYTES ? total - start : SHARD_BYTES;
        rc = write_file(dir, name, buf + start, total ? len : 0);
        json_array_append_new(paths, json_string(name));
    }
    json_array_append_new(manifest, json_pack("{s:o,s:o}", "paths", paths, "weights", specs));
    graft__free(buf);
    return rc;
}

static graft_status write_labels(const graft_model *m, const char *dir)
{
    if (m->n_labels == 0)
        return GRAFT_OK;
    size_t bytes = 0;
    for (int64_t i = 0; i < m->n_labels; i++)
        bytes += strlen(m->labels[i]) + 1;
    char *text = graft__malloc(bytes + 1), *p = text;
    if (!text)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < m->n_labels; i++)
        p += sprintf(p, "%s\n", m->labels[i]);
    graft_status rc = write_file(dir, "labels.txt", text, bytes);
    graft__free(text);
    return rc;
}

graft_status graft_model_save(const graft_model *m, const char *dir)
{
    if (!m || !dir)
        return graft__fail(GRAFT_E_INVALID_ARG, "graft_model_save: model and folder are required");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return graft__fail(GRAFT_E_IO, "%s: %s", dir, strerror(errno));
    json_t *manifest = json_array();
    graft_status rc = write_weights(m, dir, manifest);
    if (!rc)
        rc = write_labels(m, dir);
    json_t *root = json_pack("{s:s,s:s,s:n,s:o,s:o}", "format", "layers-model", "generatedBy",
                             "graft 0.1.0", "convertedBy", "modelTopology", topology(m),
                             "weightsManifest", manifest);
    char *text = rc ? NULL : json_dumps(root, JSON_COMPACT);
    if (!rc && !text)
        rc = graft__fail(GRAFT_E_NOMEM, "out of memory writing model.json");
    if (!rc)
        rc = write_file(dir, "model.json", text, strlen(text));
    free(text);
    json_decref(root);
    return rc;
}
