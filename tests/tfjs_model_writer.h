/* Writes a TF.js layers model folder (model.json plus one float32 shard, w.bin)
 * from a test, so the test can build exactly the model it means to check.
 *
 *     tmw_weights w;
 *     tmw_weights_init(&w);
 *     json_t *layers = json_array();
 *     json_array_append_new(layers, tmw_input_layer("input_1", 3, (int64_t[]){8, 8, 3}));
 *     json_array_append_new(layers, tmw_layer("Conv2D", "x", json_pack("{s:i,s:i}", "filters",
 *                           4, "kernel_size", 3), TMW_INPUTS("input_1")));
 *     tmw_add_weight(&w, "x/kernel", kernel, 4, (int64_t[]){3, 3, 3, 4});
 *     tmw_add_weight(&w, "x/bias", bias, 1, (int64_t[]){4});
 *     tmw_write(dir, tmw_functional("m", layers, "input_1", "x"), 1, &w);
 *
 * Layers use the Keras 2 form TF.js reads: {"class_name", "name", "config",
 * "inbound_nodes": [[["input_1", 0, 0, {}], ...]]}. Functions taking a json_t
 * argument steal its reference. Everything returns 0 or NULL on failure. */
#ifndef GRAFT_TESTS_TFJS_MODEL_WRITER_H
#define GRAFT_TESTS_TFJS_MODEL_WRITER_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A NULL-terminated list of inbound layer names, each meaning (name, node 0, tensor 0). */
#define TMW_INPUTS(...) ((const char *const[]){__VA_ARGS__, NULL})

typedef struct tmw_weights {
    json_t *specs;        /* the manifest group's "weights" entries */
    unsigned char *bytes; /* the shard's content */
    size_t len, cap;
} tmw_weights;

static inline void tmw_weights_init(tmw_weights *w)
{
    w->specs = json_array();
    w->bytes = NULL;
    w->len = w->cap = 0;
}

static inline void tmw_weights_free(tmw_weights *w)
{
    json_decref(w->specs);
    free(w->bytes);
    w->specs = NULL;
    w->bytes = NULL;
    w->len = w->cap = 0;
}

/* Appends a float32 weight of the given shape (data holds the product of dims floats). */
static inline int tmw_add_weight(tmw_weights *w, const char *name, const float *data, int rank,
                                 const int64_t *dims)
{
    json_t *shape = json_array();
    size_t count = 1;
    for (int i = 0; i < rank; i++) {
        json_array_append_new(shape, json_integer(dims[i]));
        count *= (size_t)dims[i];
    }
    size_t bytes = count * sizeof(float);
    if (w->len + bytes > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + bytes)
            cap *= 2;
        unsigned char *grown = realloc(w->bytes, cap);
        if (!grown) {
            json_decref(shape);
            return 0;
        }
        w->bytes = grown;
        w->cap = cap;
    }
    memcpy(w->bytes + w->len, data, bytes);
    w->len += bytes;
    return json_array_append_new(w->specs, json_pack("{s:s,s:o,s:s}", "name", name, "shape", shape,
                                                     "dtype", "float32")) == 0;
}

/* One inbound node: [[name, 0, 0, {}], ...] for a NULL-terminated list of names. */
static inline json_t *tmw_inbound_node(const char *const *inputs)
{
    json_t *node = json_array();
    for (int i = 0; inputs[i]; i++)
        json_array_append_new(node, json_pack("[s,i,i,{}]", inputs[i], 0, 0));
    return node;
}

/* A layer entry; `inputs` NULL gives "inbound_nodes": [] (an InputLayer, or a layer of a
 * Sequential). More calls of a shared layer can be appended to "inbound_nodes" later. */
static inline json_t *tmw_layer(const char *cls, const char *name, json_t *config,
                                const char *const *inputs)
{
    if (!config)
        config = json_object();
    json_object_set_new(config, "name", json_string(name));
    json_t *nodes = json_array();
    if (inputs)
        json_array_append_new(nodes, tmw_inbound_node(inputs));
    return json_pack("{s:s,s:s,s:o,s:o}", "class_name", cls, "name", name, "config", config,
                     "inbound_nodes", nodes);
}

/* A layer of a Sequential: {"class_name", "config"} only, as Keras writes it. */
static inline json_t *tmw_seq_layer(const char *cls, const char *name, json_t *config)
{
    if (!config)
        config = json_object();
    json_object_set_new(config, "name", json_string(name));
    return json_pack("{s:s,s:o}", "class_name", cls, "config", config);
}

/* [null, dims...] */
static inline json_t *tmw_batch_shape(int rank, const int64_t *dims)
{
    json_t *shape = json_array();
    json_array_append_new(shape, json_null());
    for (int i = 0; i < rank; i++)
        json_array_append_new(shape, json_integer(dims[i]));
    return shape;
}

static inline json_t *tmw_input_layer(const char *name, int rank, const int64_t *dims)
{
    return tmw_layer("InputLayer", name,
                     json_pack("{s:o,s:s,s:b}", "batch_input_shape", tmw_batch_shape(rank, dims),
                               "dtype", "float32", "sparse", 0),
                     NULL);
}

/* {"class_name": "Model", "config": {name, layers, input_layers, output_layers}} */
static inline json_t *tmw_functional(const char *name, json_t *layers, const char *input,
                                     const char *output)
{
    return json_pack("{s:s,s:{s:s,s:o,s:[[s,i,i]],s:[[s,i,i]]}}", "class_name", "Model", "config",
                     "name", name, "layers", layers, "input_layers", input, 0, 0, "output_layers",
                     output, 0, 0);
}

/* {"class_name": "Sequential", "config": {name, layers}} */
static inline json_t *tmw_sequential(const char *name, json_t *layers)
{
    return json_pack("{s:s,s:{s:s,s:o}}", "class_name", "Sequential", "config", "name", name,
                     "layers", layers);
}

/* Writes dir/model.json and dir/w.bin. wrap = 1 puts the model config under
 * modelTopology.model_config (as the Python converter does), wrap = 0 makes it the
 * modelTopology itself (as TF.js's model.save does). */
static inline int tmw_write(const char *dir, json_t *model_config, int wrap, const tmw_weights *w)
{
    char path[4096];
    json_t *topology = wrap ? json_pack("{s:o}", "model_config", model_config) : model_config;
    json_t *root = json_pack("{s:s,s:s,s:o,s:[{s:[s],s:O}]}", "format", "layers-model",
                             "generatedBy", "graft tests", "modelTopology", topology,
                             "weightsManifest", "paths", "w.bin", "weights", w->specs);
    if (!root)
        return 0;
    int ok = snprintf(path, sizeof path, "%s/model.json", dir) < (int)sizeof path &&
             json_dump_file(root, path, JSON_INDENT(1)) == 0;
    json_decref(root);
    if (!ok || snprintf(path, sizeof path, "%s/w.bin", dir) >= (int)sizeof path)
        return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    ok = fwrite(w->bytes ? (const void *)w->bytes : "", 1, w->len, f) == w->len;
    return fclose(f) == 0 && ok;
}

/* Removes what tmw_write wrote, then the folder. */
static inline void tmw_remove(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/model.json", dir) < (int)sizeof path)
        unlink(path);
    if (snprintf(path, sizeof path, "%s/w.bin", dir) < (int)sizeof path)
        unlink(path);
    rmdir(dir);
}

#endif
