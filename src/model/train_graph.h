/* Forward and backward passes for training: which nodes run backward, which
 * activations are kept for it, gradient buffers, BatchNorm modes, random streams.
 * The optimiser and the loop over batches live in train/. */
#ifndef GRAFT_MODEL_TRAIN_GRAPH_H
#define GRAFT_MODEL_TRAIN_GRAPH_H

#include "model/model.h"

typedef struct graft__train_graph {
    graft_model *model;
    int64_t max_batch;
    int bn_inference;      /* keep every BatchNorm on its moving statistics */
    char *needs_backward;  /* per node: it learns or a node feeding it does */
    char *pinned;          /* per node: activation kept for backward */
    graft__plan plan;      /* activations (pinned ones live through the pass) */
    float **d_act;         /* per node gradient buffer (a shared slot), NULL when not needed */
    int *first_writer;     /* per node: the consumer whose backward writes d_act first */
    float **grad_slots;    /* the buffers d_act points into, reused along the backward pass */
    int n_grad_slots;
    int *absorbed_by;      /* per node: the BatchNorm that computes this ReLU in training, or -1 */
    int *absorbs;          /* per node: the ReLU this BatchNorm computes, or -1 */
    int *pad_before;       /* per node: the ZeroPadding2D this convolution reads through, or -1 */
    int64_t (*pads)[4];    /* per node: that padding's top, bottom, left, right */
    int *moments_for;      /* per node: the BatchNorm whose batch moments this convolution takes, or -1 */
    double **moments;      /* per BatchNorm so fed: those moments, by parts */
    int *bn_grad_from;     /* per node: the BatchNorm whose input gradient this convolution maps itself, or -1 */
    float **bn_coefs;      /* per BatchNorm so deferred: its map's scale, mg, mgx */
    int *sums_for;         /* per node: the BatchNorm whose backward sums it takes from its input gradient, or -1 */
    int *maps_bn;          /* per node: the BatchNorm whose output it maps from that BatchNorm's input in training, or -1 */
    int *mapped_by;        /* per BatchNorm: the node that so maps its output, or -1 */
    double **bn_sums;      /* per BatchNorm so summed: those sums, by parts */
    void **saved;          /* per node forward-saved state, NULL when none */
    float *grads;          /* same layout as model->params; only trainable parts used */
    int64_t n_grads;
    int first_backward;    /* lowest node that runs backward (n_nodes when none) */
    const float *input;    /* the batch of the last forward */
    int start_node;        /* forward starts after it, its output being `input` */
    int fused_end;         /* frozen prefix run by `fused` from the input (input node: none) */
    graft__plan fused;     /* the inference plan that runs it */
} graft__train_graph;

/* The latest node whose output a feature cache can hold: every node up to it is
 * frozen and deterministic in training (no dropout, no batch statistics) and no
 * later node reads anything before it. The input node when there is none. */
int graft__cache_boundary(const graft_model *model, int bn_inference);
/* The same, restricted to nodes whose output has the given rank (batch
 * excluded), e.g. 3 for a spatial (H, W, C) map; the input node when none. */
int graft__cache_boundary_of_rank(const graft_model *model, int bn_inference, int rank);

/* Makes forward start from node's output (cached features) instead of the input. */
void graft__train_graph_start_at(graft__train_graph *tg, int node);

/* Plans for the model's current trainable flags; call again after changing them. */
graft_status graft__train_graph_init(graft__train_graph *tg, graft_model *model, int64_t max_batch,
                                     int bn_inference);
void graft__train_graph_free(graft__train_graph *tg);

/* Whether weight w of layer l receives gradients (layer trainable and the weight a
 * parameter, not state such as moving statistics). */
int graft__weight_learns(const graft__layer *layer, int w);

/* Forward over a batch; training enables dropout and batch statistics of
 * trainable BatchNorm layers; seed selects this step's random streams;
 * logits_output leaves out the output layer's softmax (the loss fuses it). */
void graft__train_forward(graft__train_graph *tg, const float *input, int64_t batch, int training,
                          uint64_t seed, int logits_output);
/* The final output of the last forward, (batch, output size). */
float *graft__train_output(graft__train_graph *tg);

/* Backward from d(loss)/d(final output); zeroes each activation gradient just
 * before its first writer and ACCUMULATES into tg->grads (the caller zeroes those
 * per step). */
void graft__train_backward(graft__train_graph *tg, const float *d_output, int64_t batch,
                           uint64_t seed, int logits_output);

#endif
