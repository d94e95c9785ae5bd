/* A layer kind is a const ops table; a layer is one instance with its parsed Keras
 * config and its weights (views into the model's flat parameter arena).
 * Everything about one kind (parse, shape, weights, scratch, forward, backward)
 * lives in one file under src/layers/, registered in registry.c. */
#ifndef GRAFT_LAYERS_LAYER_H
#define GRAFT_LAYERS_LAYER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "graft.h"
#include "kernels/activation.h"
#include "kernels/conv.h"

/* Shape of one sample (batch excluded): (H,W,C) for images, (C) for vectors. */
typedef struct graft__shape {
    int rank;
    int64_t dim[GRAFT_MAX_RANK];
} graft__shape;

int64_t graft__shape_elems(const graft__shape *s);
int graft__shape_equal(const graft__shape *a, const graft__shape *b);
/* "(224, 224, 3)"-style text into buf; returns buf. */
const char *graft__shape_str(const graft__shape *s, char *buf, size_t size);

enum { GRAFT__MAX_WEIGHTS = 6 };

typedef struct graft__weight {
    const char *name;     /* Keras weight name: "kernel", "bias", "gamma", ... */
    graft__shape shape;   /* full weight shape (rank up to 4, nothing excluded) */
    int trainable;        /* 0 for state such as BatchNorm moving statistics */
    int64_t offset;       /* in floats, into the model's parameter arena */
    float *data;          /* set once the arena exists */
    int loaded;           /* set by the loader when the file supplied it */
} graft__weight;

typedef struct graft__layer_ops graft__layer_ops;

typedef struct graft__layer {
    char *name;
    const graft__layer_ops *ops;
    void *config;          /* the kind's private parsed config (graft__free'd) */
    json_t *keras_config;  /* the Keras config object, kept to save the model */
    int trainable;
    int n_weights;
    graft__weight weights[GRAFT__MAX_WEIGHTS];
} graft__layer;

typedef struct graft__forward_args {
    int64_t batch;
    int n_inputs;
    const float *const *inputs;     /* each (batch, in_shapes[i]) */
    const graft__shape *in_shapes;
    float *output;                  /* (batch, out_shape) */
    const graft__shape *out_shape;
    void *scratch;                  /* scratch_bytes() bytes, 64-byte aligned */
    int training;                   /* dropout active */
    int batch_stats;                /* BatchNorm normalises with (and updates from) batch statistics */
    void *saved;                    /* saved_bytes() bytes kept for backward (training only) */
    uint64_t seed;                  /* random stream of this node and step (dropout) */
    int logits;                     /* skip the fused softmax: the loss applies it */
    /* Inference fusion (set only for kinds with fold_affine): use these weights
     * instead of the layer's own, then apply `epilogue` in place. */
    const float *folded_kernel, *folded_bias;
    /* Also a ReLU(6) absorbed in training by kinds with absorbs_relu: output is
     * then the ReLU's. */
    graft__activation epilogue;
    /* A ZeroPadding2D absorbed in training by kinds with absorbs_padding:
     * inputs[0] is the tensor before it, in_shapes[0] still the padded shape;
     * top, bottom, left, right. NULL otherwise. */
    const int64_t *in_pad;
    /* Training, a convolution before a BatchNorm on batch statistics (kinds with
     * writes_moments): also its output's per-channel moments, by parts, into
     * moments_out (2 x GRAFT_CONV_TRAIN_PARTS x channels doubles: means, then
     * squared deviations); the BatchNorm gets them as moments_in. */
    double *moments_out;
    const double *moments_in;
    /* Training, a BatchNorm on batch statistics whose output only the next
     * layer reads, and that layer maps itself (its takes_in_map): the
     * BatchNorm writes no output. */
    int output_unused;
    /* That next layer: inputs[0] is the BatchNorm's input, and the layer's own
     * input is this map of it (scale_shift_act; the same in backward). */
    const graft_bn_grad_map *in_map;
} graft__forward_args;

/* Gradients flow backward by accumulation: every d* buffer is added to, never
 * overwritten, so fan-out and several batches sum without extra passes; the
 * trainer zeroes them (or, for a first writer that can, sets `fresh`). A NULL d_inputs[i] or d_weights[w] means that gradient is
 * not wanted (a frozen input branch or a frozen weight) and is not computed. */
typedef struct graft__backward_args {
    int64_t batch;
    int n_inputs;
    const float *const *inputs;     /* forward inputs, each (batch, in_shapes[i]) */
    const graft__shape *in_shapes;
    const float *output;            /* forward output (batch, out_shape) */
    const graft__shape *out_shape;
    const float *d_output;          /* (batch, out_shape) */
    float *const *d_inputs;         /* each (batch, in_shapes[i]) or NULL */
    float *const *d_weights;        /* one per layer weight, the weight's shape, or NULL */
    void *scratch;
    int batch_stats;                /* as in the forward call */
    const void *saved;              /* what forward saved */
    uint64_t seed;                  /* as in the forward call */
    int logits;                     /* as in forward: d_output is w.r.t. the logits */
    /* The ReLU(6) absorbed in forward: output and d_output are the ReLU's. */
    graft__activation epilogue;
    /* Bit i set: d_inputs[i] holds stale values to be overwritten, not added to
     * (set only for kinds with writes_fresh_grads; others find it zeroed). */
    unsigned fresh;
    const int64_t *in_pad;          /* as in forward; d_inputs[0] is then unpadded too */
    /* A BatchNorm on batch statistics whose input gradient its input's producer
     * computes itself (that producer's takes_bn_grad): the BatchNorm writes no
     * d_inputs[0] but the map's scale, mg and mgx (3 x channels) here. */
    float *defer_input_grad;
    /* A convolution whose output only such a BatchNorm reads: d_output is the
     * BatchNorm's output gradient; the convolution's own is this map of it and
     * of `output`. */
    const graft_bn_grad_map *d_output_bn;
    /* A layer whose input only a BatchNorm on batch statistics writes (that
     * layer's takes_bn_sums): the BatchNorm's backward sums, taken from
     * d_inputs[0] as it is written. */
    const graft_bn_sums_out *d_input_bn_sums;
    /* That BatchNorm: its sums so taken, to merge instead of its own pass. */
    const graft_bn_sums_out *bn_sums_in;
    /* As in forward: inputs[0] is a BatchNorm's input, mapped by this. */
    const graft_bn_grad_map *in_map;
} graft__backward_args;

struct graft__layer_ops {
    const char *class_name;
    /* Reads the Keras config object; sets layer->config. */
    graft_status (*parse)(graft__layer *layer, const json_t *config);
    /* Checks the input shapes, computes the output shape and (first call) declares
     * the weights with their shapes. Called once per node the layer is applied at. */
    graft_status (*infer)(graft__layer *layer, int n_inputs, const graft__shape *in,
                          graft__shape *out);
    /* Bytes of scratch forward needs for this batch; NULL means none. */
    size_t (*scratch_bytes)(const graft__layer *layer, int n_inputs, const graft__shape *in,
                            const graft__shape *out, int64_t batch);
    void (*forward)(const graft__layer *layer, const graft__forward_args *args);
    /* Bytes forward must keep for backward in training (BatchNorm batch moments);
     * NULL means none. */
    size_t (*saved_bytes)(const graft__layer *layer, const graft__shape *out, int64_t batch);
    /* Accumulates input and weight gradients; NULL for kinds with nothing to learn
     * and no input gradient (InputLayer). Uses the same scratch as forward. */
    void (*backward)(const graft__layer *layer, const graft__backward_args *args);
    /* The activation the kind applies last (softmax lets the loss fuse it); NULL: linear. */
    graft__activation (*output_activation)(const graft__layer *layer);
    /* Folds a following per-channel affine y*mul + add (an inference BatchNorm)
     * into copies of the kernel and bias: kernel (the kernel's size) and bias
     * (output channels). NULL when the kind cannot fold. */
    void (*fold_affine)(const graft__layer *layer, const float *mul, const float *add,
                        float *kernel, float *bias);
    /* The window geometry over an input of this shape and batch (convolution
     * kinds, for executors that run them their own way); NULL for other kinds. */
    graft_conv_geom (*conv_geom)(const graft__layer *layer, const graft__shape *in, int64_t batch);
    /* Backward can take d_output_bn at this input shape (in_pad as in forward)
     * and batch; NULL: never. */
    int (*takes_bn_grad)(const graft__layer *layer, const graft__shape *in,
                         const int64_t *in_pad, int64_t batch);
    /* Forward (with moments_out) and backward can take in_map at this input
     * shape and batch; NULL: never. */
    int (*takes_in_map)(const graft__layer *layer, const graft__shape *in,
                        const int64_t *in_pad, int64_t batch);
    /* Backward can take d_input_bn_sums, the same way; NULL: never. */
    int (*takes_bn_sums)(const graft__layer *layer, const graft__shape *in,
                         const int64_t *in_pad, int64_t batch);
    /* Training may hand the kind a following ReLU or ReLU6 as `epilogue` (forward
     * and backward), saving that layer's passes over memory. */
    int absorbs_relu;
    /* Training may hand the kind the ZeroPadding2D before it as `in_pad`. */
    int absorbs_padding;
    /* Forward honours moments_out (when linear). */
    int writes_moments;
    /* Backward honours `fresh`, so the trainer need not zero those gradients. */
    int writes_fresh_grads;
    /* Backward may write a fresh d_inputs[0] over d_output: the input has the
     * output's shape and each value of d_output is read before that of
     * d_inputs[0] at the same place is written. */
    int backward_in_place;
};

/* The kind for a Keras class name, or NULL. */
const graft__layer_ops *graft__layer_ops_find(const char *class_name);

/* Declares weight i of a layer (called from infer). Fails when a second node of a
 * shared layer needs different shapes. */
graft_status graft__layer_declare_weight(graft__layer *layer, int index, const char *name,
                                         const graft__shape *shape, int trainable);

/* Largest dimension and element count graft accepts for any tensor, so absurd
 * shapes in a file are refused before anything is allocated. */
#define GRAFT__MAX_DIM ((int64_t)1 << 24)
#define GRAFT__MAX_ELEMS ((int64_t)1 << 31)

/* Builds a shape from dims, refusing absurd values; ctx names the layer in errors. */
graft_status graft__shape_make(graft__shape *s, int rank, const int64_t *dims, const char *ctx);

/* ---- config helpers shared by the kinds (layers/config.c) ---- */

/* Reads an int pair such as kernel_size [3,3] (or a bare int, meaning both). */
graft_status graft__config_pair(const json_t *config, const char *key, int64_t out[2],
                                int64_t fallback, const char *layer);
graft_status graft__config_bool(const json_t *config, const char *key, int *out, int fallback,
                                const char *layer);
graft_status graft__config_double(const json_t *config, const char *key, double *out,
                                  double fallback, const char *layer);
/* "same" -> 1, "valid" -> 0; "causal" and others are refused. */
graft_status graft__config_padding(const json_t *config, int *same, const char *layer);
/* Refuses data_format channels_first: graft is NHWC throughout. */
graft_status graft__config_channels_last(const json_t *config, const char *layer);

/* Reads config["activation"] (a string, or null meaning linear). */
graft_status graft__config_activation(const json_t *config, graft__activation *out,
                                      const char *layer);
/* Applies the activation in place over (rows, cols); softmax runs along cols.
 * Threads over rows with OpenMP. */
void graft__activation_apply(graft__activation act, float *x, int64_t rows, int64_t cols);

/* Gradient through a fused activation (Conv2D, Dense, ...): returns a buffer
 * holding dy * f'(.) (buf, written, not accumulated) or dy itself when linear.
 * pre is the pre-activation when the layer kept it, else NULL (then f' comes
 * from the output y). */
const float *graft__activation_grad(graft__activation act, const float *pre, const float *y,
                                    const float *dy, float *buf, int64_t rows, int64_t cols);

/* dst[j] += sum over rows of src[r, j], accumulated in double in row order, so
 * the result does not depend on the thread count. */
void graft__sum_rows(float *dst /* (cols) */, const float *src /* (rows, cols) */, int64_t rows,
                     int64_t cols);

/* The per-channel multiplier and offset an inference BatchNorm applies, into
 * mul and add (channels each); 0 when the layer is not a BatchNormalization. */
int graft__batch_norm_affine(const graft__layer *layer, float *mul, float *add);

/* Into pad (top, bottom, left, right) the zeros a ZeroPadding2D layer adds;
 * 0 when the layer is not one. */
int graft__zero_padding_amounts(const graft__layer *layer, int64_t pad[4]);

/* Into *act, the plain activation (relu or relu6) a ReLU layer computes; 0 when
 * the layer is not a ReLU or has a slope or threshold no activation names. */
int graft__relu_as_activation(const graft__layer *layer, graft__activation *act);

/* dst[i] += src[i] over n floats, threaded. */
void graft__accumulate(float *dst, const float *src, int64_t n);

#endif
