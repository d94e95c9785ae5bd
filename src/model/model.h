/* The model: layers, the graph of their applications (nodes) in topological
 * order, the flat parameter arena, and the memory plan of the executor. */
#ifndef GRAFT_MODEL_MODEL_H
#define GRAFT_MODEL_MODEL_H

#include "graft.h"
#include "layers/layer.h"

typedef struct graft__node {
    graft__layer *layer;
    int n_inputs;
    int *inputs;          /* node indices, all smaller than this node's */
    graft__shape shape;   /* output, one sample */
    int last_use;         /* index of the last node reading this output (-1: none) */
} graft__node;

/* An inverted-residual block fused for inference (block.c): its nodes run as
 * one step at node `last`, band by band, from the folded weights. */
typedef struct graft__block {
    int input, last;               /* node read; node whose slot gets the output */
    int expand_node, expand_bn_node, dw_node, dw_bn_node, project_node, project_bn_node;
    int has_expand, residual;
    int64_t x_h, x_w, cin, ce, cout; /* the input's size; ce: the expanded channels */
    graft_conv_geom expand;        /* batch 1, over the unpadded input (1x1 or any conv) */
    graft_conv_geom dw;            /* batch 1, over the unpadded expanded rows */
    graft__activation expand_act, dw_act;
    float *expand_packed;          /* folded (cin -> ce), packed; NULL without expand */
    float *dw_weights;             /* folded (kh, kw, ce) kernel, then (ce) bias */
    float *project_packed;         /* folded (ce -> cout), packed */
    int64_t band_rows, ring_rows;  /* output rows per band; expanded rows kept */
    size_t im2col_floats;          /* of thread_floats, the expand's im2col chunk */
    size_t thread_floats;          /* scratch one thread needs */
    size_t split_floats;           /* scratch all threads share to split an image by
                                      channels (one image's expanded and depthwise
                                      maps); 0: this block does not split */
} graft__block;

/* Matches a block starting at node start (its expand conv or the padding before
 * it, or its depthwise conv or padding when it has no expand stage): fills
 * blk (no weights yet) and the other nodes it swallows (up to 10); 0 if none. */
int graft__block_find(const graft_model *m, int start, graft__block *blk, int *members,
                      int *n_members);
/* Folds and packs the block's weights. */
graft_status graft__block_prepare(const graft_model *m, graft__block *blk);
void graft__block_free(graft__block *blk);
/* Runs the block on (batch, in_h, in_w, cin) x into y over `threads` OpenMP
 * threads, thread t using scratch + t * scratch_stride floats. */
void graft__block_run(const graft__block *blk, int64_t batch, const float *x, float *y,
                      float *scratch, size_t scratch_stride, int threads);

/* A Conv2D with its BatchNorm folded, a ReLU(6) after it and a ZeroPadding2D
 * before it, fused for inference (conv_step.c). */
typedef struct graft__conv_step {
    int input, last, conv_node, bn_node;
    graft_conv_geom g;             /* batch 1, the padding folded in */
    graft__activation act;
    float *packed;                 /* folded kernel and bias, packed */
    size_t thread_floats;          /* scratch one thread needs */
} graft__conv_step;

/* As graft__block_find, for a step starting at a ZeroPadding2D or Conv2D. */
int graft__conv_step_find(const graft_model *m, int start, graft__conv_step *c, int *members,
                          int *n_members);
graft_status graft__conv_step_prepare(const graft_model *m, graft__conv_step *c);
void graft__conv_step_free(graft__conv_step *c);
void graft__conv_step_run(const graft__conv_step *c, int64_t batch, const float *x, float *y,
                          float *scratch, size_t scratch_stride, int threads);

/* Executor state for one maximum batch: every node output gets a slot of the
 * activation arena, reused once its last reader has run. */
typedef struct graft__plan {
    int64_t max_batch;
    int n_slots;
    size_t *slot_bytes;
    float **slot_data;
    int *node_slot;       /* slot of each node's output; -1 for the input node */
    void *scratch;
    size_t scratch_bytes;
    /* Inference fusion: a convolution followed by a BatchNorm (and ReLU) runs as
     * one node with folded weights; elementwise layers run in place. */
    int fused;
    char *skip;           /* computed inside an earlier node */
    char *interior;       /* its output is overwritten by a fused successor */
    float **folded;       /* per node: folded kernel then bias, or NULL */
    int n_folded;         /* entries of folded (the node count) */
    graft__activation *epilogue;
    int *owner;           /* node whose slot holds this node's output (itself if none,
                             -1 inside a fused block: no buffer at all) */
    int n_blocks, n_convs;
    graft__block *blocks;
    graft__conv_step *convs;
    int *block_at;        /* per node: the block it runs in, or -1 */
    int *conv_at;         /* per node: the conv step it runs in, or -1 */
    float *block_scratch; /* block_threads shares of block_stride floats (blocks, convs) */
    size_t block_stride;
    int block_threads;
} graft__plan;

struct graft_model {
    char *path;             /* the model.json it came from */
    int n_layers, layer_capacity;
    graft__layer **layers;  /* owned, in creation order */
    int n_nodes, node_capacity;
    graft__node *nodes;
    int input_node, output_node;
    int64_t n_params;       /* floats in the arena */
    float *params;
    int64_t n_labels;
    char **labels;
    graft__plan plan;        /* fused, for forward */
    graft__plan plain_plan;  /* unfused, when a caller asks for an interior output */
};

/* Builds layers and nodes from a Keras model config (functional or sequential,
 * nested models inlined); declares weights; no weight data yet. */
graft_status graft__graph_build(graft_model *model, const json_t *model_config);
/* Lays out every declared weight in one arena. */
graft_status graft__graph_alloc_params(graft_model *model);
void graft__graph_free(graft_model *model);
graft__layer *graft__graph_find_layer(graft_model *model, const char *name);
/* The single reader of node i, or -1 when it has several, none, or i is the
 * model's output (whose value must be kept). */
int graft__only_reader(const graft_model *model, int i);
/* A ReLU layer without slope or threshold (max 6 or none), or an Activation
 * relu/relu6: its activation, to run inside the layer before it. */
int graft__relu_epilogue(const graft__layer *layer, graft__activation *act);
/* Node i exists (i >= 0) and its layer is of Keras class cls. */
int graft__node_is(const graft_model *model, int i, const char *cls);
/* Creates a layer of a Keras class from its config and applies it once to the
 * given nodes (shape inference and weight declaration included). */
graft_status graft__graph_add_layer(graft_model *model, const char *name, const char *class_name,
                                    const json_t *config, const int *inputs, int n_inputs,
                                    int *node);
void graft__graph_compute_last_use(graft_model *model);

/* Plans and allocates activation slots and scratch for max_batch; nodes marked in
 * pinned (may be NULL) keep their slot to the end of the pass. */
graft_status graft__plan_build(const graft_model *m, graft__plan *plan, int64_t max_batch,
                               const char *pinned);
/* As graft__plan_build, with inference fusion. */
graft_status graft__plan_build_fused(const graft_model *m, graft__plan *plan, int64_t max_batch);
void graft__plan_free(graft__plan *plan);
/* Runs the nodes target depends on through plan (built for at least batch) and
 * copies target's output into dst. The plan must compute target on its own
 * (not skipped, not inside a fused step); later nodes that would overwrite it
 * in place do not run. */
graft_status graft__plan_forward_to(graft_model *m, graft__plan *plan, const float *input,
                                    int64_t batch, int target, float *dst);
/* Scratch bytes node i needs at this batch. */
size_t graft__node_scratch(const graft_model *m, int i, int64_t batch);

#endif
