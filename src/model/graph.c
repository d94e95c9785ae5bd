/* Builds graft's graph from a Keras model config: functional models (with
 * inbound_nodes in the Keras 2 or Keras 3 form), sequential ones, and models
 * nested as layers (inlined, so the executor sees one flat graph). */
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

enum { MAX_TENSORS = 64, MAX_OUTPUTS = 8 };

/* One tensor reference in an inbound node: (layer, node index, tensor index). */
typedef struct tensor_ref {
    const char *layer;
    int64_t node_index, tensor_index;
} tensor_ref;

/* What each config layer of the model being built has become, per call. */
typedef struct layer_nodes {
    const char *name;
    const json_t *entry;
    int n_calls;                  /* inbound nodes in the config */
    int built;                    /* calls built so far */
    int (*outputs)[MAX_OUTPUTS];  /* per call: graph node of each output tensor */
} layer_nodes;

static graft_status build_model(graft_model *m, const json_t *entry, const int *outer_inputs,
                                int n_outer, int *outputs, int *n_outputs);

static int is_model_class(const char *cls)
{
    return strcmp(cls, "Model") == 0 || strcmp(cls, "Functional") == 0 ||
           strcmp(cls, "Sequential") == 0;
}

/* Classes whose config carries code or needs code graft refuses to run. */
static int is_code_class(const char *cls)
{
    return strcmp(cls, "Lambda") == 0 || strcmp(cls, "TFOpLambda") == 0 ||
           strcmp(cls, "SlicingOpLambda") == 0;
}

static graft_status grow(void **array, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return GRAFT_OK;
    int cap2 = *cap ? *cap * 2 : 64;
    while (cap2 < need)
        cap2 *= 2;
    void *p = graft__realloc(*array, (size_t)cap2 * elem);
    if (!p)
        return graft__fail(GRAFT_E_NOMEM, "out of memory building the graph");
    *array = p;
    *cap = cap2;
    return GRAFT_OK;
}

static graft_status new_layer(graft_model *m, const char *name, const char *cls,
                              const json_t *config, graft__layer **out)
{
    if (is_code_class(cls))
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': %s layers are refused (graft never "
                           "executes code from a model file)", name, cls);
    const graft__layer_ops *ops = graft__layer_ops_find(cls);
    if (!ops)
        return graft__fail(GRAFT_E_UNSUPPORTED, "layer '%s': unknown layer class '%s'", name, cls);
    graft__layer *layer = graft__calloc(1, sizeof *layer);
    if (!layer || !(layer->name = graft__strdup(name))) {
        graft__free(layer);
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    }
    layer->ops = ops;
    layer->keras_config = json_incref((json_t *)config);
    graft_status rc = grow((void **)&m->layers, &m->layer_capacity, m->n_layers + 1, sizeof *m->layers);
    if (rc) {
        json_decref(layer->keras_config);
        graft__free(layer->name);
        graft__free(layer);
        return rc;
    }
    m->layers[m->n_layers++] = layer;
    int trainable = 1;
    if ((rc = graft__config_bool(config, "trainable", &trainable, 1, name)))
        return rc;
    layer->trainable = trainable;
    *out = layer;
    return ops->parse(layer, config);
}

/* Appends a node applying `layer` to the given nodes and infers its shape. */
static graft_status new_node(graft_model *m, graft__layer *layer, const int *inputs,
                             int n_inputs, int *out)
{
    graft_status rc = grow((void **)&m->nodes, &m->node_capacity, m->n_nodes + 1, sizeof *m->nodes);
    if (rc)
        return rc;
    graft__node *node = &m->nodes[m->n_nodes];
    memset(node, 0, sizeof *node);
    node->layer = layer;
    node->last_use = -1;
    if (n_inputs > 0) {
        node->inputs = graft__calloc((size_t)n_inputs, sizeof(int));
        if (!node->inputs)
            return graft__fail(GRAFT_E_NOMEM, "out of memory");
        memcpy(node->inputs, inputs, sizeof(int) * (size_t)n_inputs);
    }
    node->n_inputs = n_inputs;
    m->n_nodes++;
    graft__shape in_shapes[MAX_TENSORS];
    for (int i = 0; i < n_inputs; i++)
        in_shapes[i] = m->nodes[inputs[i]].shape;
    rc = layer->ops->infer(layer, n_inputs, in_shapes, &node->shape);
    *out = m->n_nodes - 1;
    return rc;
}

/* Collects the tensor references of one inbound node, Keras 2 form
 * [[name, node, tensor, kwargs], ...] or Keras 3 form {"args": [...]} with
 * __keras_tensor__ entries carrying keras_history. */
static int collect_refs(const json_t *v, tensor_ref *refs, int n, int keras3)
{
    if (json_is_object(v)) {
        const json_t *history = json_object_get(json_object_get(v, "config"), "keras_history");
        if (keras3 && json_is_array(history) && json_array_size(history) == 3) {
            if (n >= MAX_TENSORS)
                return -1;
            refs[n].layer = json_string_value(json_array_get(history, 0));
            refs[n].node_index = json_integer_value(json_array_get(history, 1));
            refs[n].tensor_index = json_integer_value(json_array_get(history, 2));
            return refs[n].layer ? n + 1 : -1;
        }
        const json_t *args = json_object_get(v, "args");
        return args ? collect_refs(args, refs, n, 1) : n;
    }
    if (!json_is_array(v))
        return n;
    if (!keras3 && json_array_size(v) >= 3 && json_is_string(json_array_get(v, 0))) {
        if (n >= MAX_TENSORS)
            return -1;
        refs[n].layer = json_string_value(json_array_get(v, 0));
        refs[n].node_index = json_integer_value(json_array_get(v, 1));
        refs[n].tensor_index = json_integer_value(json_array_get(v, 2));
        return n + 1;
    }
    size_t i;
    const json_t *item;
    json_array_foreach(v, i, item)
    {
        n = collect_refs(item, refs, n, keras3);
        if (n < 0)
            return -1;
    }
    return n;
}

static layer_nodes *find_entry(layer_nodes *table, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0)
            return &table[i];
    return NULL;
}

/* Graph node of a tensor reference, or -1 while its producer is not built. */
static int resolve(layer_nodes *table, int n, const tensor_ref *ref, graft_status *rc)
{
    layer_nodes *src = find_entry(table, n, ref->layer);
    if (!src) {
        *rc = graft__fail(GRAFT_E_FORMAT, "inbound node names unknown layer '%s'", ref->layer);
        return -1;
    }
    if (ref->node_index < 0 || ref->node_index >= src->n_calls || ref->tensor_index < 0 ||
        ref->tensor_index >= MAX_OUTPUTS) {
        *rc = graft__fail(GRAFT_E_FORMAT, "reference to layer '%s' node %lld tensor %lld is out "
                          "of range", ref->layer, (long long)ref->node_index,
                          (long long)ref->tensor_index);
        return -1;
    }
    if (ref->node_index >= src->built)
        return -1;
    int node = src->outputs[ref->node_index][ref->tensor_index];
    if (node < 0)
        *rc = graft__fail(GRAFT_E_FORMAT, "layer '%s' has no output tensor %lld", ref->layer,
                          (long long)ref->tensor_index);
    return node;
}

static const json_t *inbound_calls(const json_t *entry)
{
    const json_t *calls = json_object_get(entry, "inbound_nodes");
    return json_is_array(calls) ? calls : NULL;
}

/* Builds call `k` of a layer whose inputs are the graph nodes `inputs`. */
static graft_status build_call(graft_model *m, layer_nodes *ln, const int *inputs, int n_inputs)
{
    const char *cls = json_string_value(json_object_get(ln->entry, "class_name"));
    const json_t *config = json_object_get(ln->entry, "config");
    int *outs = ln->outputs[ln->built];
    for (int i = 0; i < MAX_OUTPUTS; i++)
        outs[i] = -1;
    graft_status rc;
    if (is_model_class(cls)) {
        int n_out = 0;
        rc = build_model(m, ln->entry, inputs, n_inputs, outs, &n_out);
    } else {
        graft__layer *layer = NULL;
        for (int i = 0; i < m->n_layers; i++)
            if (ln->built > 0 && strcmp(m->layers[i]->name, ln->name) == 0)
                layer = m->layers[i];
        rc = layer ? GRAFT_OK : new_layer(m, ln->name, cls, config, &layer);
        if (!rc)
            rc = new_node(m, layer, inputs, n_inputs, &outs[0]);
        if (rc)
            return rc;
    }
    ln->built++;
    return rc;
}

static graft_status table_init(const json_t *layers, layer_nodes **out, int *n_out)
{
    size_t n = json_array_size(layers);
    layer_nodes *table = graft__calloc(n ? n : 1, sizeof *table);
    if (!table)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    *out = table;
    *n_out = (int)n;
    for (size_t i = 0; i < n; i++) {
        const json_t *entry = json_array_get(layers, i);
        const char *name = json_string_value(json_object_get(entry, "name"));
        if (!name)
            name = json_string_value(json_object_get(json_object_get(entry, "config"), "name"));
        const char *cls = json_string_value(json_object_get(entry, "class_name"));
        if (!name || !cls)
            return graft__fail(GRAFT_E_FORMAT, "layer %zu has no name or class_name", i);
        table[i].name = name;
        table[i].entry = entry;
        const json_t *calls = inbound_calls(entry);
        table[i].n_calls = calls && json_array_size(calls) ? (int)json_array_size(calls) : 1;
        table[i].outputs = graft__calloc((size_t)table[i].n_calls, sizeof *table[i].outputs);
        if (!table[i].outputs)
            return graft__fail(GRAFT_E_NOMEM, "out of memory");
    }
    return GRAFT_OK;
}

static void table_free(layer_nodes *table, int n)
{
    for (int i = 0; table && i < n; i++)
        graft__free(table[i].outputs);
    graft__free(table);
}

/* Input layers named in config["input_layers"], in order. */
static int input_position(const json_t *config, const char *name)
{
    const json_t *list = json_object_get(config, "input_layers");
    size_t i;
    const json_t *item;
    /* Keras 3 writes a single input as [name, 0, 0] instead of [[name, 0, 0]]. */
    if (json_is_array(list) && json_is_string(json_array_get(list, 0)))
        return strcmp(json_string_value(json_array_get(list, 0)), name) == 0 ? 0 : -1;
    json_array_foreach(list, i, item)
    {
        const char *n = json_string_value(json_array_get(item, 0));
        if (n && strcmp(n, name) == 0)
            return (int)i;
    }
    return -1;
}

static graft_status build_input(graft_model *m, layer_nodes *ln, const json_t *model_config,
                                const int *outer_inputs, int n_outer)
{
    if (outer_inputs) {
        int pos = input_position(model_config, ln->name);
        if (pos < 0 || pos >= n_outer)
            return graft__fail(GRAFT_E_FORMAT, "nested model input '%s' is not connected",
                               ln->name);
        for (int i = 0; i < MAX_OUTPUTS; i++)
            ln->outputs[0][i] = -1;
        ln->outputs[0][0] = outer_inputs[pos];
        ln->built = 1;
        return GRAFT_OK;
    }
    if (m->input_node >= 0)
        return graft__fail(GRAFT_E_UNSUPPORTED, "models with more than one input are not "
                           "supported (second input '%s')", ln->name);
    graft_status rc = build_call(m, ln, NULL, 0);
    if (!rc)
        m->input_node = ln->outputs[0][0];
    return rc;
}

static graft_status read_outputs(const json_t *config, layer_nodes *table, int n, int *outputs,
                                 int *n_outputs)
{
    tensor_ref refs[MAX_TENSORS];
    const json_t *list = json_object_get(config, "output_layers");
    int k = collect_refs(list, refs, 0, 0);
    if (k <= 0 || k > MAX_OUTPUTS)
        return graft__fail(GRAFT_E_FORMAT, "output_layers is missing or malformed");
    for (int i = 0; i < k; i++) {
        graft_status rc = GRAFT_OK;
        outputs[i] = resolve(table, n, &refs[i], &rc);
        if (rc)
            return rc;
        if (outputs[i] < 0)
            return graft__fail(GRAFT_E_FORMAT, "output layer '%s' is not reachable from the "
                               "inputs", refs[i].layer);
    }
    *n_outputs = k;
    return GRAFT_OK;
}

/* One pass over the layers, building every call whose inputs exist. */
static graft_status functional_pass(graft_model *m, layer_nodes *table, int n,
                                    const json_t *config, const int *outer_inputs, int n_outer,
                                    int *progress)
{
    for (int i = 0; i < n; i++) {
        layer_nodes *ln = &table[i];
        const char *cls = json_string_value(json_object_get(ln->entry, "class_name"));
        const json_t *calls = inbound_calls(ln->entry);
        if (strcmp(cls, "InputLayer") == 0 && (!calls || !json_array_size(calls))) {
            if (!ln->built) {
                graft_status rc = build_input(m, ln, config, outer_inputs, n_outer);
                if (rc)
                    return rc;
                *progress = 1;
            }
            continue;
        }
        while (ln->built < ln->n_calls && calls) {
            tensor_ref refs[MAX_TENSORS];
            int k = collect_refs(json_array_get(calls, (size_t)ln->built), refs, 0, 0);
            if (k <= 0)
                return graft__fail(GRAFT_E_FORMAT, "layer '%s': malformed inbound_nodes",
                                   ln->name);
            int inputs[MAX_TENSORS], ready = 1;
            for (int j = 0; j < k && ready; j++) {
                graft_status rc = GRAFT_OK;
                inputs[j] = resolve(table, n, &refs[j], &rc);
                if (rc)
                    return graft__fail_prefix(rc, "layer '%s'", ln->name);
                ready = inputs[j] >= 0;
            }
            if (!ready)
                break;
            graft_status rc = build_call(m, ln, inputs, k);
            if (rc)
                return rc;
            *progress = 1;
        }
    }
    return GRAFT_OK;
}

static graft_status build_functional(graft_model *m, const json_t *config, const int *outer_inputs,
                                     int n_outer, int *outputs, int *n_outputs)
{
    layer_nodes *table = NULL;
    int n = 0;
    graft_status rc = table_init(json_object_get(config, "layers"), &table, &n);
    int progress = 1;
    while (!rc && progress) {
        progress = 0;
        rc = functional_pass(m, table, n, config, outer_inputs, n_outer, &progress);
    }
    if (!rc)
        rc = read_outputs(config, table, n, outputs, n_outputs);
    table_free(table, n);
    return rc;
}

/* A synthetic InputLayer for a Sequential whose first layer carries batch_input_shape. */
static graft_status sequential_input(graft_model *m, const json_t *first)
{
    const json_t *config = json_object_get(first, "config");
    const json_t *shape = json_object_get(config, "batch_input_shape");
    if (!shape)
        return graft__fail(GRAFT_E_FORMAT, "sequential model declares no input shape");
    json_t *input_config = json_pack("{s:O}", "batch_input_shape", shape);
    if (!input_config)
        return graft__fail(GRAFT_E_NOMEM, "out of memory");
    const char *first_name = json_string_value(json_object_get(config, "name"));
    char name[256];
    snprintf(name, sizeof name, "%s_input", first_name ? first_name : "sequential");
    graft__layer *layer = NULL;
    graft_status rc = new_layer(m, name, "InputLayer", input_config, &layer);
    json_decref(input_config);
    if (!rc)
        rc = new_node(m, layer, NULL, 0, &m->input_node);
    return rc;
}

static graft_status build_sequential(graft_model *m, const json_t *config, const int *outer_inputs,
                                     int n_outer, int *outputs, int *n_outputs)
{
    const json_t *layers = json_is_array(config) ? config : json_object_get(config, "layers");
    if (!json_is_array(layers) || json_array_size(layers) == 0)
        return graft__fail(GRAFT_E_FORMAT, "sequential model has no layers");
    int current = outer_inputs ? outer_inputs[0] : -1;
    graft_status rc = GRAFT_OK;
    size_t i;
    const json_t *entry;
    json_array_foreach(layers, i, entry)
    {
        const char *cls = json_string_value(json_object_get(entry, "class_name"));
        const json_t *lconfig = json_object_get(entry, "config");
        const char *name = json_string_value(json_object_get(lconfig, "name"));
        if (!name)
            name = json_string_value(json_object_get(entry, "name"));
        if (!cls || !name)
            return graft__fail(GRAFT_E_FORMAT, "sequential layer %zu has no class_name or name", i);
        if (strcmp(cls, "InputLayer") == 0 && current >= 0)
            continue;
        layer_nodes ln = {name, entry, 1, 0, NULL};
        int outs[1][MAX_OUTPUTS];
        ln.outputs = outs;
        /* A nested model first (as TF.js saves Teachable Machine models) brings its
         * own InputLayer. */
        if (current < 0 && is_model_class(cls) && !json_object_get(lconfig, "batch_input_shape")) {
            if ((rc = build_call(m, &ln, NULL, 0)))
                return rc;
            current = outs[0][0];
            continue;
        }
        if (current < 0 && strcmp(cls, "InputLayer") != 0) {
            if ((rc = sequential_input(m, entry)))
                return rc;
            current = m->input_node;
        }
        if (strcmp(cls, "InputLayer") == 0) {
            if ((rc = build_call(m, &ln, NULL, 0)))
                return rc;
            m->input_node = current = outs[0][0];
            continue;
        }
        if ((rc = build_call(m, &ln, &current, 1)))
            return rc;
        current = outs[0][0];
    }
    outputs[0] = current;
    *n_outputs = 1;
    return GRAFT_OK;
}

static graft_status build_model(graft_model *m, const json_t *entry, const int *outer_inputs,
                                int n_outer, int *outputs, int *n_outputs)
{
    const char *cls = json_string_value(json_object_get(entry, "class_name"));
    const json_t *config = json_object_get(entry, "config");
    if (!cls || !config)
        return graft__fail(GRAFT_E_FORMAT, "model config has no class_name or config");
    if (strcmp(cls, "Sequential") == 0)
        return build_sequential(m, config, outer_inputs, n_outer, outputs, n_outputs);
    if (strcmp(cls, "Model") == 0 || strcmp(cls, "Functional") == 0)
        return build_functional(m, config, outer_inputs, n_outer, outputs, n_outputs);
    return graft__fail(GRAFT_E_UNSUPPORTED, "model class '%s' is not supported", cls);
}

graft_status graft__graph_add_layer(graft_model *m, const char *name, const char *class_name,
                                    const json_t *config, const int *inputs, int n_inputs,
                                    int *node)
{
    graft__layer *layer = NULL;
    graft_status rc = new_layer(m, name, class_name, config, &layer);
    return rc ? rc : new_node(m, layer, inputs, n_inputs, node);
}

/* Marks each node's last reader so the executor can recycle its memory. */
void graft__graph_compute_last_use(graft_model *m)
{
    for (int i = 0; i < m->n_nodes; i++)
        m->nodes[i].last_use = -1;
    for (int i = 0; i < m->n_nodes; i++)
        for (int k = 0; k < m->nodes[i].n_inputs; k++)
            m->nodes[m->nodes[i].inputs[k]].last_use = i;
}

graft_status graft__graph_build(graft_model *m, const json_t *model_config)
{
    m->input_node = -1;
    int outputs[MAX_OUTPUTS], n_outputs = 0;
    graft_status rc = build_model(m, model_config, NULL, 0, outputs, &n_outputs);
    if (rc)
        return rc;
    if (m->input_node < 0)
        return graft__fail(GRAFT_E_FORMAT, "model has no input layer");
    if (n_outputs != 1)
        return graft__fail(GRAFT_E_UNSUPPORTED, "models with %d outputs are not supported",
                           n_outputs);
    m->output_node = outputs[0];
    graft__graph_compute_last_use(m);
    return GRAFT_OK;
}

graft__layer *graft__graph_find_layer(graft_model *m, const char *name)
{
    for (int i = 0; i < m->n_layers; i++)
        if (strcmp(m->layers[i]->name, name) == 0)
            return m->layers[i];
    return NULL;
}

graft_status graft__graph_alloc_params(graft_model *m)
{
    int64_t total = 0;
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++) {
            graft__weight *wt = &m->layers[i]->weights[w];
            wt->offset = total;
            total += graft__shape_elems(&wt->shape);
            if (total > GRAFT__MAX_ELEMS)
                return graft__fail(GRAFT_E_FORMAT, "model declares more than %lld weights",
                                   (long long)GRAFT__MAX_ELEMS);
        }
    m->params = graft__malloc_aligned(sizeof(float) * (size_t)(total ? total : 1));
    if (!m->params)
        return graft__fail(GRAFT_E_NOMEM, "out of memory for %lld weights", (long long)total);
    m->n_params = total;
    for (int i = 0; i < m->n_layers; i++)
        for (int w = 0; w < m->layers[i]->n_weights; w++)
            m->layers[i]->weights[w].data = m->params + m->layers[i]->weights[w].offset;
    return GRAFT_OK;
}

void graft__graph_free(graft_model *m)
{
    for (int i = 0; i < m->n_nodes; i++)
        graft__free(m->nodes[i].inputs);
    graft__free(m->nodes);
    for (int i = 0; i < m->n_layers; i++) {
        graft__free(m->layers[i]->config);
        json_decref(m->layers[i]->keras_config);
        graft__free(m->layers[i]->name);
        graft__free(m->layers[i]);
    }
    graft__free(m->layers);
    graft__free_aligned(m->params);
    m->nodes = NULL;
    m->layers = NULL;
    m->params = NULL;
    m->n_nodes = m->n_layers = 0;
}

int graft__only_reader(const graft_model *m, int i)
{
    int reader = -1, n = 0;
    if (i == m->output_node)
        return -1;
    for (int j = i + 1; j < m->n_nodes; j++)
        for (int k = 0; k < m->nodes[j].n_inputs; k++)
            if (m->nodes[j].inputs[k] == i) {
                reader = j;
                n++;
            }
    return n == 1 ? reader : -1;
}

int graft__node_is(const graft_model *m, int i, const char *cls)
{
    return i >= 0 && !strcmp(m->nodes[i].layer->ops->class_name, cls);
}

int graft__relu_epilogue(const graft__layer *layer, graft__activation *act)
{
    if (!strcmp(layer->ops->class_name, "Activation") && layer->ops->output_activation) {
        graft__activation a = layer->ops->output_activation(layer);
        if (a == GRAFT__ACT_RELU || a == GRAFT__ACT_RELU6) {
            *act = a;
            return 1;
        }
        return 0;
    }
    return graft__relu_as_activation(layer, act);
}
