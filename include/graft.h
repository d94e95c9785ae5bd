/* graft: transfer learning for small image datasets, on a CPU.
 *
 * A worked example: load the pretrained base set-up installs, classify a photo.
 *
 *     graft_model *model = NULL;
 *     if (graft_model_load("models/mobilenet_v2", &model) != GRAFT_OK) {
 *         fprintf(stderr, "graft: %s\n", graft_last_error());
 *         return 1;
 *     }
 *     int64_t h, w, c;
 *     graft_model_input_size(model, &h, &w, &c);
 *     float *pixels = malloc(sizeof(float) * h * w * c);          // (H,W,C)
 *     graft_image_load("cat.jpg", h, w, GRAFT_RESIZE_STRETCH,
 *                      GRAFT_PREPROCESS_MOBILENET, pixels);
 *     float probs[1000];                                         // graft_model_output_size()
 *     graft_model_forward(model, pixels, 1, probs);
 *     graft_model_free(model);
 *
 * Conventions: every call returns a graft_status; on failure graft_last_error()
 * gives a one-line message naming the file, layer or value at fault. Tensors are
 * float32, NHWC, batch first. Element counts are int64_t, byte counts size_t.
 * Destructors accept NULL. The library never prints and never exits.
 */
#ifndef GRAFT_H
#define GRAFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GRAFT_VERSION_MAJOR 0
#define GRAFT_VERSION_MINOR 1
#define GRAFT_VERSION_PATCH 0

typedef enum graft_status {
    GRAFT_OK = 0,
    GRAFT_E_INVALID_ARG,  /* a caller's argument is out of range */
    GRAFT_E_IO,           /* a file could not be opened, read or written */
    GRAFT_E_FORMAT,       /* a file's content is malformed or inconsistent */
    GRAFT_E_UNSUPPORTED,  /* well-formed, but graft does not (or will not) run it */
    GRAFT_E_NOMEM,        /* an allocation failed */
    GRAFT_E_SHAPE,        /* tensor shapes do not fit together */
    GRAFT_E_NOT_FOUND,    /* a named layer, weight or file does not exist */
    GRAFT_E_INTERRUPTED   /* stopped on request (SIGINT) */
} graft_status;

/* The message of the last failed call on this thread ("" if none). */
const char *graft_last_error(void);
/* A fixed description of a status code. */
const char *graft_status_str(graft_status rc);

/* ---- allocation hooks ---------------------------------------------------- */

typedef struct graft_allocator {
    void *(*malloc)(size_t bytes);
    void *(*realloc)(void *p, size_t bytes);
    void (*free)(void *p);
} graft_allocator;

/* Replaces the allocator used for every later allocation; NULL restores libc's.
 * Swap only while no graft object is alive. */
void graft_set_allocator(const graft_allocator *allocator);

/* ---- threads --------------------------------------------------------------- */

/* Number of threads compute kernels use (default: all cores). */
void graft_set_threads(int threads);
int graft_threads(void);

/* ---- models ---------------------------------------------------------------- */

typedef struct graft_model graft_model;

/* Loads a TF.js layers model: `path` is its folder (holding model.json) or the
 * model.json file itself. Weights may be float32, int32, float16, or uint8/uint16
 * quantised; they are dequantised to float32 on load. Lambda and custom layers are
 * refused: graft never executes code from a model file. */
graft_status graft_model_load(const char *path, graft_model **out);
void graft_model_free(graft_model *model);

/* Input size of one sample, (H, W, C). */
graft_status graft_model_input_size(const graft_model *model, int64_t *height, int64_t *width,
                                    int64_t *channels);
/* Number of floats the final output holds per sample. */
int64_t graft_model_output_size(const graft_model *model);

#define GRAFT_MAX_RANK 4

typedef struct graft_layer_info {
    const char *name;        /* valid while the model lives */
    const char *class_name;  /* Keras class, e.g. "Conv2D" */
    int rank;                /* rank of one sample's output (batch excluded) */
    int64_t shape[GRAFT_MAX_RANK];
    int64_t params;          /* number of weight values (trainable and not) */
    int64_t trainable_params;
    int trainable;           /* the layer's trainable flag */
    int n_inputs;
    const char *inputs[8];   /* names of the layers feeding it (first 8) */
} graft_layer_info;

int graft_model_layer_count(const graft_model *model);
graft_status graft_model_layer_info(const graft_model *model, int index, graft_layer_info *info);
/* Index of the layer called `name`, or -1. */
int graft_model_find_layer(const graft_model *model, const char *name);

/* Runs `batch` samples (input: (batch,H,W,C)) through the model in inference mode
 * and writes the final output, (batch, graft_model_output_size()). Memory is planned
 * for the largest batch seen so far; call graft_model_prepare() first to keep
 * allocation out of a timed loop. */
graft_status graft_model_forward(graft_model *model, const float *input, int64_t batch,
                                 float *output);

/* As graft_model_forward, but also (or only) collects the outputs of named layers:
 * outputs[i] receives (batch, shape of layer names[i]). Layers not needed for the
 * requested outputs are not computed. `final_output` may be NULL. */
graft_status graft_model_forward_layers(graft_model *model, const float *input, int64_t batch,
                                        int n_layers, const char *const *names,
                                        float *const *outputs, float *final_output);

/* Plans and allocates memory for batches of up to max_batch samples. */
graft_status graft_model_prepare(graft_model *model, int64_t max_batch);

/* Optional class labels (labels.txt beside model.json), NULL when absent. */
const char *graft_model_label(const graft_model *model, int64_t index);

/* ---- editing ------------------------------------------------------------- */

/* Makes the named layer the output and drops every layer the output no longer
 * needs (the usual transfer-learning cut, e.g. at "out_relu"). */
graft_status graft_model_cut(graft_model *model, const char *layer_name);
/* Appends the classic transfer-learning head: global average pooling (for image
 * features; Flatten for other ranks), dropout (if > 0) and a softmax Dense over
 * `classes`, Glorot-initialised from seed. New layers are trainable. */
graft_status graft_model_add_classifier(graft_model *model, int64_t classes, double dropout,
                                        uint64_t seed);
/* The same head with the image features average-pooled to a grid x grid map and
 * flattened instead of pooled globally (grid <= 1: exactly add_classifier): an
 * AveragePooling2D with pool and stride ceil(H / grid) x ceil(W / grid) and "same"
 * padding, then Flatten. Keeps where things are, which helps when the objects are
 * framed alike; the head then fixes the input size. */
graft_status graft_model_add_grid_classifier(graft_model *model, int64_t classes, double dropout,
                                             int grid, uint64_t seed);
/* Runs the model at another input size (a convolutional base after a cut takes
 * any size); fails, leaving the model as it was, when a layer's weights or shape
 * rules do not allow it (e.g. a Dense after Flatten). */
graft_status graft_model_set_input_size(graft_model *model, int64_t height, int64_t width);
/* Replaces every weight by a fresh Keras-default initialisation (Glorot-uniform
 * kernels, zero biases, identity BatchNorm): the same architecture without what
 * pretraining learned, to measure what transfer buys. */
graft_status graft_model_reinitialize(graft_model *model, uint64_t seed);
/* Replaces the class labels (copied). */
graft_status graft_model_set_labels(graft_model *model, const char *const *labels, int64_t n);

/* Writes the model as a TF.js layers model (model.json + float32 weight shards
 * + labels.txt) that TF.js's loadLayersModel reads unchanged. The folder is
 * written under a temporary name and renamed into place. */
graft_status graft_model_save(const graft_model *model, const char *dir);

/* ---- freezing ------------------------------------------------------------ */

/* Sets every layer's trainable flag. */
void graft_model_set_trainable_all(graft_model *model, int trainable);
/* Freezes the layers before `name` (in graph order) and unfreezes it and every
 * layer after it, as Keras's `for layer in base.layers[:i]: layer.trainable = False`. */
graft_status graft_model_unfreeze_from(graft_model *model, const char *name);
/* Freezes all but the last n layers that have weights. */
graft_status graft_model_unfreeze_last(graft_model *model, int n);
/* Freezes all but the last n blocks; a block ends at a residual Add or a
 * Concatenate, and the layers after the last such merge count as one block. */
graft_status graft_model_unfreeze_last_blocks(graft_model *model, int n);

/* ---- training -------------------------------------------------------------- */

typedef enum graft_optimizer {
    GRAFT_OPTIMIZER_SGD = 0,   /* momentum, Nesterov; weight_decay is coupled L2 */
    GRAFT_OPTIMIZER_ADAM,      /* weight_decay is coupled L2 */
    GRAFT_OPTIMIZER_ADAMW      /* weight_decay is decoupled (Loshchilov & Hutter) */
} graft_optimizer;

typedef enum graft_schedule {
    GRAFT_SCHEDULE_CONSTANT = 0,
    GRAFT_SCHEDULE_STEP,        /* times gamma every step_epochs */
    GRAFT_SCHEDULE_EXPONENTIAL, /* times gamma per epoch, continuously */
    GRAFT_SCHEDULE_COSINE,      /* linear warm-up, then cosine to min_lr */
    GRAFT_SCHEDULE_ONE_CYCLE    /* PyTorch OneCycleLR (cos), learning_rate is the peak */
} graft_schedule;

typedef enum graft_layer_lr {
    GRAFT_LAYER_LR_UNIFORM = 0,
    GRAFT_LAYER_LR_DISCRIMINATIVE, /* fastai slice(lo, hi): geometric from lr*lr_low_ratio up to lr */
    GRAFT_LAYER_LR_DECAY           /* timm layer_decay: lr * decay^(depth from the top) */
} graft_layer_lr;

typedef enum graft_monitor { GRAFT_MONITOR_VAL_LOSS = 0, GRAFT_MONITOR_VAL_ACCURACY } graft_monitor;

typedef struct graft_epoch_metrics {
    int epoch;                   /* 1-based */
    double train_loss, train_accuracy;
    double val_loss, val_accuracy; /* NaN without validation data */
    double learning_rate;        /* at the epoch's last step */
    double seconds, images_per_second;
    int best;                    /* this epoch is the best so far by the monitor */
} graft_epoch_metrics;

/* Called after each epoch; a nonzero return stops training (as early stopping does). */
typedef int (*graft_epoch_callback)(const graft_epoch_metrics *metrics, void *user);
/* Called after each optimiser step with the epoch (from 1), the step within it
 * (from 1), the epoch's step count and the batch loss (progress bars). */
typedef void (*graft_step_callback)(int epoch, int64_t step, int64_t steps, double loss, void *user);

/* Supplies training examples by index; graft shuffles the indices. epoch (from 1)
 * lets a source augment differently each epoch; epoch 0 asks for un-augmented
 * examples (validation, single-view caches). graft_train never runs two fills at
 * once, but with prefetch > 0 the training source's fill runs on a background
 * thread while the calling thread computes (validation and feature-cache fills
 * stay on the calling thread), so fill must not rely on thread-local state. */
typedef struct graft_batch_source {
    int64_t count;
    graft_status (*fill)(void *user, const int64_t *indices, int64_t n, int epoch,
                         float *x /* (n, model input) */, int32_t *labels /* (n) */);
    void *user;
} graft_batch_source;

typedef struct graft_train_config {
    int epochs;                 /* default 10 */
    int64_t batch_size;         /* default 32 */
    uint64_t seed;              /* shuffles, dropout: same seed and threads, same weights */
    graft_optimizer optimizer;  /* default ADAM */
    double learning_rate;       /* default 1e-3 */
    double momentum;            /* SGD, default 0.9 */
    int nesterov;
    double beta1, beta2, epsilon; /* Adam, default 0.9, 0.999, 1e-7 (Keras) */
    double weight_decay;        /* see graft_optimizer; default 0 */
    double l2_sp;               /* alpha of L2-SP towards the pretrained weights (Li et al. 2018) */
    double l2_new;              /* beta: plain L2 on weights that were not loaded (a new head) */
    double label_smoothing;     /* default 0 */
    const float *class_weights; /* (classes) or NULL: Keras class_weight */
    double clip_norm;           /* global-norm clipping; 0 = off */
    graft_schedule schedule;
    double warmup_epochs, min_lr;
    double step_epochs, gamma;  /* STEP and EXPONENTIAL */
    double pct_start, div_factor, final_div_factor; /* ONE_CYCLE: 0.3, 25, 1e4 */
    graft_layer_lr layer_lr;
    double lr_low_ratio;        /* DISCRIMINATIVE: lowest group gets lr * ratio; default 0.01 */
    double layer_decay;         /* DECAY: default 0.75 */
    int bn_inference;           /* keep every BatchNorm on moving statistics (small data) */
    /* early stopping: patience 0 = off */
    graft_monitor monitor;
    int patience;
    double min_delta;
    int restore_best;           /* default 1 */
    /* reduce learning rate on plateau: patience 0 = off */
    int plateau_patience;
    double plateau_factor;      /* default 0.1 */
    /* Frozen-feature cache: when the layers up to some point are frozen (and
     * deterministic), their output is computed once per example and view, and only
     * the layers above run per epoch. views = 0: off; 1: one un-augmented view;
     * K > 1: K augmented views, epoch e trains on view (e - 1) mod K. */
    int cache_views;
    int cache_float16;          /* store cached features as float16 (half the memory) */
    size_t cache_bytes;         /* RAM budget; beyond it, a memory-mapped temporary file */
    /* Batches prepared ahead by a background thread (fill, then mixing) while the
     * current step computes; 0 = fill synchronously on the calling thread; default
     * -1 = 1 when the machine has a core beyond graft_threads(), else 0 (with both
     * of 2 cores computing, the extra thread cost 3-17% in bench_data). Costs `prefetch` more batch buffers; results are bit-identical
     * either way. The thread's own OpenMP regions (e.g. graft_dataset_load's
     * decoding) use graft_threads() threads, as compute does, unless the
     * dataset's options set its decoding threads. */
    int prefetch;
    /* Batch-level mixing, Beta(alpha, alpha); 0 = off (graft_augment's meaning).
     * The mixed tensor is what the trained layers start from: the input images
     * when nothing below them is cached, else the cached features at the cache
     * boundary (mixup there is manifold mixup; linear layers such as pooling
     * commute with it, so mixing pooled features equals mixing the feature maps).
     * cutmix pastes a box, so with cutmix on the cache holds the last spatial
     * (H, W, C) tensor below the trained layers (e.g. the cut's 7x7 map rather
     * than its pooled vector: more memory) and the box is drawn on that grid, its
     * lambda the exact fraction of cells kept. With both on, each batch uses one
     * of them with probability 1/2. Each batch's draw depends on (seed, epoch,
     * batch), not on threads or prefetch. The loss is then lambda CE(a) +
     * (1 - lambda) CE(b) per example, label smoothing applied to both and each
     * term weighted by its own label's class weight; train_accuracy counts a hit
     * when the top class is the label of larger weight (a on a tie). Validation
     * is never mixed. */
    double mixup, cutmix;
    const char *checkpoint;     /* written atomically at every epoch end; NULL = none */
    int resume;                 /* continue from checkpoint when it exists */
    volatile const int *stop;   /* when it becomes nonzero: finish the step, checkpoint, stop */
    graft_epoch_callback on_epoch;
    graft_step_callback on_step;
    void *user;
} graft_train_config;

void graft_train_config_defaults(graft_train_config *config);

typedef struct graft_train_result {
    int epochs_run;             /* including those before a resume */
    int best_epoch;             /* 1-based, 0 without validation */
    graft_epoch_metrics best;   /* metrics of best_epoch (or the last epoch) */
    graft_epoch_metrics last;
} graft_train_result;

/* Trains the model's trainable layers with softmax cross-entropy (label
 * smoothing, class weights, mixup and cutmix as configured). A final softmax
 * activation is fused into the loss (computed from the logits); a linear final
 * layer is read as logits; other final activations are refused. val may be NULL
 * (no early stopping then). Returns GRAFT_E_INTERRUPTED when *config->stop was raised,
 * after finishing the step and writing the checkpoint (when one is configured). */
graft_status graft_train(graft_model *model, const graft_batch_source *train,
                         const graft_batch_source *val, const graft_train_config *config,
                         graft_train_result *result);

/* ---- images ---------------------------------------------------------------- */

typedef enum graft_resize_mode {
    GRAFT_RESIZE_STRETCH = 0, /* scale each axis to the target, ignoring aspect */
    GRAFT_RESIZE_CROP,        /* scale the short side to fit, centre-crop the long one */
    GRAFT_RESIZE_PAD          /* scale the long side to fit, pad the rest with black */
} graft_resize_mode;

/* keras.applications meanings */
typedef enum graft_preprocess {
    GRAFT_PREPROCESS_MOBILENET = 0, /* x/127.5 - 1 ("tf" mode; inception uses the same) */
    GRAFT_PREPROCESS_INCEPTION,     /* identical to MOBILENET */
    GRAFT_PREPROCESS_TORCH,         /* x/255, minus ImageNet mean, over ImageNet std */
    GRAFT_PREPROCESS_CAFFE,         /* RGB->BGR, minus ImageNet mean in 0..255 */
    GRAFT_PREPROCESS_NONE,          /* raw 0..255 */
    GRAFT_PREPROCESS_UNIT           /* x/255 in 0..1 (what nsfwjs feeds its models) */
} graft_preprocess;

/* Parses "mobilenet", "inception", "torch", "caffe", "none" or "unit". */
graft_status graft_preprocess_parse(const char *name, graft_preprocess *out);
graft_status graft_resize_mode_parse(const char *name, graft_resize_mode *out);

/* Decodes a JPEG or PNG (by content, not extension), applies EXIF orientation,
 * converts to RGB (grey replicated, alpha composited onto white), resizes to
 * height x width (area averaging when shrinking, bilinear when enlarging) and
 * preprocesses into out, (height, width, 3) floats. */
graft_status graft_image_load(const char *path, int64_t height, int64_t width,
                              graft_resize_mode resize, graft_preprocess preprocess, float *out);

/* ---- augmentation ------------------------------------------------------------ */

/* Random augmentation of one image, different for every (seed, epoch, image);
 * meanings follow the Keras preprocessing layers where one exists. Zero means off.
 * Geometric ones run on the resized image, with Keras's default fill mode (reflect)
 * and bilinear interpolation; colour ones on 0..255 values before preprocessing. */
typedef struct graft_augment {
    int flip_horizontal, flip_vertical;   /* RandomFlip: each with probability 1/2 */
    double rotation;      /* RandomRotation factor: angle uniform in [-f, f] * 2*pi */
    double zoom;          /* RandomZoom factor: each axis scaled by 1 + u, u in [-f, f]
                           * (positive zooms out, as Keras's height_factor) */
    double translate;     /* RandomTranslation factor: shift up to f * size per axis */
    double crop_scale;    /* random-resized-crop: area fraction uniform in [crop_scale, 1],
                           * aspect ratio log-uniform in [3/4, 4/3] (torchvision); 0 = off */
    double brightness;    /* RandomBrightness factor: add u * 255, u in [-f, f] */
    double contrast;      /* RandomContrast factor: (x - mean) * (1 + u) + mean, u in [-f, f] */
    double saturation;    /* scale chroma by 1 + u, u in [-f, f] */
    double hue;           /* rotate hue by u * 360 degrees, u in [-f, f] */
    double erasing;       /* random erasing (Zhong et al.) with this probability */
    double mixup;         /* batch level: Beta(alpha, alpha) mixing; 0 = off */
    double cutmix;        /* batch level: Beta(alpha, alpha) box mixing; 0 = off.
                           * Both act in graft_train (see graft_train_config);
                           * graft_dataset_load and its source ignore them, and the
                           * recipe copies them into both phases. */
} graft_augment;

/* ---- datasets ------------------------------------------------------------------ */

typedef struct graft_dataset graft_dataset;

typedef struct graft_dataset_options {
    int64_t height, width;        /* size every image is resized to (the model input) */
    graft_resize_mode resize;
    graft_preprocess preprocess;
    size_t cache_bytes;           /* keep decoded, resized images (uint8) in RAM up to this
                                   * budget; default 1 GiB, 0 = decode every time. Images
                                   * are rounded to uint8 either way, so the budget never
                                   * changes a result. */
    int threads;                  /* decoding threads, 0 = graft_threads() */
} graft_dataset_options;

void graft_dataset_options_defaults(graft_dataset_options *options);

/* Opens labelled images from:
 *  - a folder tree ROOT/<class>/<image> (classes sorted by name with strcmp, as
 *    Keras's image_dataset_from_directory; images in nested folders of a class count
 *    too; only .jpg/.jpeg/.png names, any case; hidden names skipped; symbolic links
 *    followed, loops not);
 *  - a .csv or .tsv list of "path,label" rows (paths relative to the list; a header
 *    row such as "path,label" is allowed and may name the columns; RFC 4180 quoting;
 *    labels are class names, sorted with strcmp);
 *  - an IDX images file (MNIST/Fashion-MNIST format, raw or .gz) whose labels file
 *    sits beside it (name with "images-idx3" replaced by "labels-idx1"); grey images
 *    become RGB, classes are "0".."max label" until graft_dataset_set_class_names.
 * options may be NULL for the defaults. Files are checked at open: up to 5000 are
 * decoded in full (in parallel, filling the cache); more get a header check only,
 * and a file that then fails to decode fails graft_dataset_load, naming it.
 * Unreadable, corrupt or empty image files are skipped, counted and reported by
 * graft_dataset_skipped(); folder and list classes left without images are dropped
 * (graft_dataset_message() says so); opening fails with GRAFT_E_FORMAT only when
 * fewer than two classes have images. */
graft_status graft_dataset_open(const char *path, const graft_dataset_options *options,
                                graft_dataset **out);
void graft_dataset_free(graft_dataset *dataset);

int64_t graft_dataset_count(const graft_dataset *dataset);
/* Classes of the opened dataset; a split part or sample has the same classes. */
int64_t graft_dataset_class_count(const graft_dataset *dataset);
/* NULL when out of range; valid until the names are set again. */
const char *graft_dataset_class_name(const graft_dataset *dataset, int64_t class_index);
/* Renames the n == class_count classes (copied), for the opened dataset and every
 * part or sample of it alike. */
graft_status graft_dataset_set_class_names(graft_dataset *dataset, const char *const *names,
                                           int64_t n);
/* -1 when out of range. */
int32_t graft_dataset_label(const graft_dataset *dataset, int64_t index);
/* The image's file (or "file#index" inside an IDX file); NULL when out of range. */
const char *graft_dataset_path(const graft_dataset *dataset, int64_t index);
/* Images per class, (class_count) entries. */
void graft_dataset_class_counts(const graft_dataset *dataset, int64_t *counts);
/* Classes with fewer than min_count images (5 is a sensible warning threshold:
 * too few to learn from and to validate on): how many, and their indices into
 * classes (room for class_count entries) when it is not NULL. */
int64_t graft_dataset_small_classes(const graft_dataset *dataset, int64_t min_count,
                                    int64_t *classes);
/* Files skipped as unreadable, and the message of the first one ("" if none). */
int64_t graft_dataset_skipped(const graft_dataset *dataset, const char **first_message);
/* Every message from opening, one line each naming the file or folder and the
 * reason: skipped files, dropped classes, link loops, unreadable folders. */
int64_t graft_dataset_message_count(const graft_dataset *dataset);
const char *graft_dataset_message(const graft_dataset *dataset, int64_t index);

/* Stratified, seeded split (0 < val_fraction < 1): each class contributes
 * round(fraction * its count) images to val, at least one when it has two or more
 * and never all of them. Same dataset and seed, same split. Both parts keep the
 * parent's order. Parts and samples share storage with the parent, counted: they
 * may be freed in any order. */
graft_status graft_dataset_split(const graft_dataset *dataset, double val_fraction, uint64_t seed,
                                 graft_dataset **train, graft_dataset **val);
/* The first k images of each class in a seeded shuffle (all of a class with fewer);
 * a larger k with the same seed gives a superset. */
graft_status graft_dataset_sample_per_class(const graft_dataset *dataset, int64_t k, uint64_t seed,
                                            graft_dataset **out);
/* Keras/sklearn 'balanced' weights: total / (classes present * count of the class);
 * 0 for a class without images. (class_count) entries. */
graft_status graft_dataset_class_weights(const graft_dataset *dataset, float *weights);

/* Decodes, resizes, augments (aug may be NULL) and preprocesses images
 * indices[0..n) into x (n, height, width, 3), labels into labels (may be NULL);
 * in parallel, the result independent of the thread count. seed selects the
 * augmentation draw (graft_train passes the epoch); each image's draw depends on
 * seed and the image, not its place in the batch. mixup and cutmix are batch
 * level and not applied here. A file that cannot be decoded fails the call with a
 * message naming it. */
graft_status graft_dataset_load(graft_dataset *dataset, const int64_t *indices, int64_t n,
                                const graft_augment *aug, uint64_t seed, float *x,
                                int32_t *labels);

/* A graft_batch_source over the dataset with this augmentation (copied; NULL = none);
 * its fill passes the epoch as graft_dataset_load's seed. Valid while the dataset
 * lives. Out of memory gives count 0 and fill NULL (graft_last_error() says why). */
graft_batch_source graft_dataset_source(graft_dataset *dataset, const graft_augment *aug);

/* ---- the transfer-learning recipe ------------------------------------------------ */

/* The seed's two-phase recipe: cut the base at a feature layer, add a new head
 * (pooling -> dropout -> softmax dense), train the head with the base frozen
 * (phase 1, from the frozen-feature cache), then unfreeze the top of the base and
 * fine-tune at a lower learning rate with BatchNorm kept in inference mode
 * (phase 2). Early stopping restores the best weights of each phase. */
typedef struct graft_recipe {
    const char *cut;             /* NULL: the last layer with a spatial (H, W, C) output */
    double dropout;              /* default 0.2 */
    graft_augment augment;       /* default flip_horizontal, rotation 0.05, zoom 0.1 */
    int cache_views;             /* augmented views cached for frozen layers; default 4
                                  * (1 when augmentation is off) */
    int head_grid;               /* default 1: global average pooling; G >= 2: the
                                  * features average-pooled to G x G and flattened
                                  * (graft_model_add_grid_classifier) */
    int linear_probe;            /* default 0. 1: phase 1 fits the head's Dense layer by
                                  * L-BFGS on the pooled features of the un-augmented
                                  * training images (L2 chosen by k-fold cross-validation
                                  * of the held-out cross-entropy) instead of phase1's
                                  * SGD epochs */
    graft_train_config phase1;   /* default: Adam 1e-3, up to 100 epochs, patience 10 on val
                                  * loss, label smoothing 0.1 */
    int fine_tune;               /* default 1 */
    const char *fine_tune_at;    /* NULL: the recipe picks the block start about a third
                                  * of the way down from the cut */
    graft_train_config phase2;   /* default: Adam 1e-4 (10x lower), up to 20 epochs, patience 5,
                                  * BatchNorm frozen */
    uint64_t seed;               /* head initialisation; also copied into both phases */
    /* Called after each phase with the model as trained so far (e.g. to measure
     * a held-out set); a nonzero return stops the recipe there. */
    int (*on_phase_end)(int phase, graft_model *model, void *user);
    void *user;
} graft_recipe;

void graft_recipe_defaults(graft_recipe *recipe);

typedef struct graft_recipe_result {
    char cut[128], fine_tune_at[128]; /* what the recipe used ("" when no phase 2) */
    graft_train_result phase1, phase2;
    int phase2_run;
    double head_l2;                   /* the L2 the linear probe chose (0 without it) */
} graft_recipe_result;

/* Runs the recipe on `model` (modified in place: cut, head added, trained). The
 * datasets must have been opened at the size the model will run at (the recipe
 * sets the model's input size to the train dataset's). val may be NULL. */
graft_status graft_recipe_run(graft_model *model, graft_dataset *train, graft_dataset *val,
                              const graft_recipe *recipe, graft_recipe_result *result);

/* The layer the recipe cuts at when none is given, and the fine-tune start it
 * picks above a cut (written into buf). */
graft_status graft_recipe_default_cut(const graft_model *model, char *buf, size_t size);
graft_status graft_recipe_default_fine_tune_at(const graft_model *model, char *buf, size_t size);

/* ---- evaluation ------------------------------------------------------------------- */

typedef struct graft_evaluation {
    int64_t count, classes;
    double accuracy, top5_accuracy, loss;
    int32_t *predicted;          /* (count) */
    float *probability;          /* (count) probability of the predicted class */
    float *true_probability;     /* (count) probability of the true class */
    int64_t *confusion;          /* (classes, classes): row = true, column = predicted */
} graft_evaluation;

/* Predicts every image of the dataset (un-augmented); tta averages the
 * probabilities of the image and its horizontal mirror. */
graft_status graft_evaluate(graft_model *model, graft_dataset *dataset, int64_t batch, int tta,
                            graft_evaluation *out);
void graft_evaluation_free(graft_evaluation *evaluation);

#ifdef __cplusplus
}
#endif

#endif
